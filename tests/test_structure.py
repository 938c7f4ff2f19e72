"""The codebase's seams: registries feed validation, grids are config files, failures
leave no litter, internal errors are told apart from input errors."""
import json

import pytest
import yaml

from conftest import tiny_overrides
from helpers import qdnn, read_csv


def _one_error_line(result):
    lines = [x for x in result.output.strip().splitlines() if x.strip()]
    return len(lines) >= 1 and lines[-1].startswith("error:") and "Traceback" not in result.output


# ----------------------------------------------------------------------------- registries
def test_a_new_registry_entry_is_accepted_without_touching_config(tmp_path, monkeypatch):
    from qdnn_cli.models import MODELS
    from qdnn_cli.models.resnets import TinyNet

    r = qdnn("train", "quickstart", *tiny_overrides(tmp_path / "refused", "model.name=my_net"))
    assert r.exit_code == 2 and "model.name='my_net' is not allowed" in r.output
    monkeypatch.setitem(MODELS, "my_net", TinyNet)  # what adding a model to the registry does
    r = qdnn("train", "quickstart", *tiny_overrides(tmp_path / "run", "model.name=my_net", "trainer.epochs=1"))
    assert r.exit_code == 0, r.output
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]["name"] == "my_net"


def test_every_registered_quantizer_is_accepted(tmp_path):
    # pact is a registered weight quantizer (DoReFa weights, as in AdaBits): no longer refused
    r = qdnn("train", "quickstart", *tiny_overrides(tmp_path / "run", "quant.weight=pact", "quant.act=pact",
                                                    "trainer.epochs=1"))
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("override, message", [
    ("data.train_fraction=abc", "data.train_fraction: Value 'abc' of type 'str' could not be converted to Float"),
    ("trainer.epochs=many", "trainer.epochs: Value 'many' of type 'str' could not be converted to Integer"),
    ("data.trian_fraction=0.5", "unknown override key 'data.trian_fraction'"),
    ("sched.name=linear", "sched.name='linear' is not allowed: choose one of cosine, onecycle, step, constant"),
    ("trainer.stop_after=0", "trainer.stop_after must be a positive integer or null"),
])
def test_typed_config_refuses_wrong_types_and_keys_in_one_line(tmp_path, override, message):
    r = qdnn("train", "quickstart", *tiny_overrides(tmp_path / "r", override))
    assert r.exit_code == 2 and _one_error_line(r) and message in r.output, r.output
    assert not (tmp_path / "r").exists()


def test_eval_overrides_are_validated_like_train(tmp_path):
    run = tmp_path / "run"
    assert qdnn("train", "quickstart", *tiny_overrides(run, "trainer.epochs=1")).exit_code == 0
    typo = qdnn("eval", run, "data.trian_fraction=0.5", "--device", "cpu")
    assert typo.exit_code == 2 and _one_error_line(typo) and "unknown override key 'data.trian_fraction'" in typo.output
    bad = qdnn("eval", run, "quant.act=nope", "--device", "cpu")
    assert bad.exit_code == 2 and "quant.act='nope' is not allowed" in bad.output
    ok = qdnn("eval", run, "trainer.eval_batch_size=7", "--device", "cpu")
    assert ok.exit_code == 0, ok.output
    assert not list(run.glob(".*.tmp"))


# ----------------------------------------------------------------------------- grids
def test_a_variant_is_added_by_writing_a_grid_file(tmp_path):
    grid = tmp_path / "mine.yaml"
    grid.write_text("include: [ablation]\nvariants:\n  next_target: [loss.target=next]\n")
    group = tmp_path / "g"
    r = qdnn("ablate", "quickstart", "--grid", grid, "--no-consistency", *tiny_overrides(group, "trainer.epochs=1"))
    assert r.exit_code == 0, r.output
    assert [p.name for p in group.iterdir()] == ["no_consistency"]
    from qdnn_cli.commands import load_grid

    assert load_grid(str(grid))["next_target"] == ["loss.target=next"]
    assert list(load_grid(str(grid))) == ["full", "no_consistency", "shared_bn", "no_consistency_shared_bn",
                                          "next_target"]
    assert load_grid("reproduce", [2, 32])["dedicated_2"] == ["trainer.kind=dedicated", "quant.bits=[2]"]


def test_unknown_grid_and_variant_are_one_line(tmp_path):
    r = qdnn("ablate", "quickstart", "--grid", "nope", *tiny_overrides(tmp_path / "g"))
    assert r.exit_code == 2 and _one_error_line(r) and "no grid 'nope'" in r.output and "ablation" in r.output


# ----------------------------------------------------------------------------- failures
def test_missing_data_leaves_no_run_folder_and_prints_no_config(tmp_path):
    out = tmp_path / "run"
    r = qdnn("train", "quickstart", "data=folder", f"data.root={tmp_path / 'nowhere'}", "trainer.device=cpu",
             f"out_dir={out}")
    assert r.exit_code == 2 and _one_error_line(r) and "does not exist" in r.output
    assert "trainer:" not in r.output  # the config listing comes only once the data is there
    assert not out.exists()


def test_failure_in_an_existing_run_folder_marks_it_failed(tmp_path):
    import shutil

    from helpers import write_folder_tree

    tree = write_folder_tree(tmp_path / "tree", classes=2, per_class=(8, 4), size=8)
    run = tmp_path / "run"
    common = ["data=folder", f"data.root={tree}", "model=tiny", "model.kwargs.width=8", "trainer.device=cpu",
              "trainer.progress=false", "trainer.batch_size=8", f"out_dir={run}"]
    assert qdnn("train", "quickstart", *common, "trainer.epochs=1").exit_code == 0
    shutil.rmtree(tree)  # the data goes missing before the run is extended
    r = qdnn("train", "quickstart", "--extend-epochs", *common, "trainer.epochs=2")
    assert r.exit_code == 2 and _one_error_line(r) and "does not exist" in r.output
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "does not exist" in status["message"] and status["epoch"] == 1
    assert (run / "results.csv").exists() and (run / "checkpoint.pt").exists()  # finished work stays


def test_internal_error_exits_1_with_the_traceback_in_the_run_folder(tmp_path, monkeypatch):
    from qdnn_cli.engine.loop import Trainer

    def broken_step(self, *a, **k):
        raise RuntimeError("an engine bug")

    monkeypatch.setattr(Trainer, "train_step", broken_step)
    run = tmp_path / "run"
    r = qdnn("train", "quickstart", *tiny_overrides(run))
    assert r.exit_code == 1 and _one_error_line(r)
    assert "RuntimeError: an engine bug (unexpected; traceback in" in r.output
    log = (run / "error.log").read_text()
    assert "Traceback" in log and "an engine bug" in log and "broken_step" in log
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "an engine bug" in status["message"]


def test_results_csv_has_no_constant_columns(tmp_path):
    run = tmp_path / "run"
    assert qdnn("train", "quickstart", *tiny_overrides(run)).exit_code == 0
    rows = read_csv(run / "results.csv")
    assert list(rows[0]) == ["mode", "top1", "top5", "loss", "best_top1", "epochs"]
    assert not list(run.glob(".*.tmp"))  # every file was renamed into place


def test_eval_of_a_checkpoint_saved_before_newer_config_keys(tmp_path):
    import torch

    run = tmp_path / "run"
    assert qdnn("train", "quickstart", *tiny_overrides(run, "trainer.epochs=1")).exit_code == 0
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    for group, key in (("loss", "reduction"), ("loss", "fp_weight"), ("quant", "weight_scale"), ("sched", "interval")):
        del ck["config"][group][key]  # as a run saved by an older qdnn
    torch.save(ck, run / "old.pt")
    r = qdnn("eval", run / "old.pt", "--device", "cpu")
    assert r.exit_code == 0, r.output


def test_resuming_with_other_epochs_is_refused_unless_extended(tmp_path):
    run = tmp_path / "run"
    assert qdnn("train", "quickstart", *tiny_overrides(run, "trainer.epochs=2", "trainer.stop_after=1")).exit_code == 0
    before = (run / "metrics.csv").read_text()
    r = qdnn("train", "quickstart", *tiny_overrides(run, "trainer.epochs=3"))
    assert r.exit_code == 2 and _one_error_line(r)
    assert "trainer.epochs=2, this one asks for 3" in r.output and "--extend-epochs" in r.output
    assert (run / "metrics.csv").read_text() == before
    r = qdnn("train", "quickstart", "--extend-epochs", *tiny_overrides(run, "trainer.epochs=3"))
    assert r.exit_code == 0, r.output
    assert read_csv(run / "results.csv")[0]["epochs"] == "3"
    assert [x["epoch"] for x in read_csv(run / "metrics.csv")][-1] == "3"


def test_tensorboard_logger_writes_what_metrics_csv_holds(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert qdnn("train", "quickstart", *tiny_overrides(run, "logger=tensorboard", "quant.bits=[2,32]")).exit_code == 0
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"val/top1/FP", "val/top1/2-bit", "train/loss/FP", "train/images_per_s/2-bit", "lr"} <= tags
    rows = [x for x in read_csv(run / "metrics.csv") if x["split"] == "val" and x["mode"] == "2"]
    events = acc.Scalars("val/top1/2-bit")
    assert [e.step for e in events] == [1, 2]
    assert [e.value for e in events] == pytest.approx([float(x["top1"]) for x in rows], rel=1e-6)
    r = qdnn("train", "quickstart", *tiny_overrides(tmp_path / "bad", "logger=wandb"))
    assert r.exit_code == 2 and "logger='wandb' is not allowed" in r.output


# ----------------------------------------------------------------------------- import structure
def test_imports_run_down_the_floors_with_no_circle():
    """scripts/import_graph.py: every module imports from its own floor or lower ones
    (docs/architecture.md draws it), and no two parts import each other."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "import_graph.py"
    spec = importlib.util.spec_from_file_location("import_graph", path)
    graph_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(graph_mod)
    graph = graph_mod.unit_graph()
    assert {"quant", "engine", "config", "cli", "commands", "search"} <= set(graph)
    for u in graph:
        graph_mod.floor_of(u)  # every part of qdnn_cli sits on a floor
    assert graph_mod.violations(graph) == []
    assert graph["quant"] <= {"errors"}  # the quantization library knows nothing of training
    # the check catches what it should: an import from the engine up into the commands
    assert graph_mod.violations({**graph, "engine": graph["engine"] | {"commands"}})
    # the picture in docs/architecture.md is this graph (regenerate: scripts/import_graph.py --mermaid)
    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    assert graph_mod.mermaid(graph) in doc
