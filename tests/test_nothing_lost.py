"""Nothing a user finished is lost: export never deletes a run, packs with an FP warm-up
train and resume anywhere, launchers refuse a bad grid before writing anything, and a
run's history of invocations is kept."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_overrides
from helpers import qdnn, read_csv

QDNN = str(Path(sys.executable).with_name("qdnn"))


def _error_line(result) -> str:
    lines = [x for x in result.output.strip().splitlines() if x.strip()]
    assert lines and lines[-1].startswith("error:") and "Traceback" not in result.output, result.output
    return lines[-1]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two finished tiny runs side by side in one parent folder."""
    parent = tmp_path_factory.mktemp("lost") / "group"
    for leaf in ("run1", "run2"):
        r = qdnn("train", "quickstart", *tiny_overrides(parent / leaf, "quant.bits=[4,32]", "trainer.epochs=1"))
        assert r.exit_code == 0, r.output
    return parent


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- export never deletes a run
def test_export_force_never_replaces_a_run_or_its_parent(two_runs):
    pytest.importorskip("onnxruntime")
    run1, run2 = two_runs / "run1", two_runs / "run2"
    before = {d: _files(d) for d in (run1, run2)}
    for out in (run1, two_runs):
        r = qdnn("export", run1, "--out", out, "--force", "--images", "16")
        assert r.exit_code == 2, r.output
        assert "holds the run being exported" in _error_line(r)
    # a folder holding some other run is no export either
    r = qdnn("export", run1, "--out", run2, "--force", "--images", "16")
    assert r.exit_code == 2 and "holds a qdnn run" in _error_line(r)
    # a folder of the user's that is no earlier export
    other = two_runs.parent / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    r = qdnn("export", run1, "--out", other, "--force", "--images", "16")
    assert r.exit_code == 2 and "no export.json" in _error_line(r)
    assert (other / "todo.txt").read_text() == "keep me"
    assert {d: _files(d) for d in (run1, run2)} == before
    # an earlier export is what --force replaces
    out = two_runs.parent / "deploy"
    assert qdnn("export", run1, "--out", out, "--images", "16").exit_code == 0
    first = json.loads((out / "export.json").read_text())["written"]
    r = qdnn("export", run1, "--out", out, "--images", "16")
    assert r.exit_code == 2 and "--force" in _error_line(r)
    r = qdnn("export", run1, "--out", out, "--images", "16", "--force")
    assert r.exit_code == 0, r.output
    assert (out / "export.json").is_file() and json.loads((out / "export.json").read_text())["written"] >= first
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # as every other output, not mkdtemp's 0700


def test_bench_export_on_a_run_points_at_its_export_folder(two_runs):
    pytest.importorskip("onnxruntime")
    r = qdnn("bench-export", two_runs / "run2")
    line = _error_line(r)
    assert r.exit_code == 2 and f"--out {two_runs / 'run2' / 'export'}" in line, line


def test_a_run_still_training_is_not_exported_without_force(two_runs, tmp_path):
    pytest.importorskip("onnxruntime")
    from qdnn_cli.engine.checkpoint import RunLock

    lock = RunLock(two_runs / "run2").acquire()  # as a training process holds it
    try:
        r = qdnn("export", two_runs / "run2", "--out", tmp_path / "x", "--images", "16")
        assert r.exit_code == 2 and "still training" in _error_line(r)
        assert not (tmp_path / "x").exists()
        r = qdnn("export", two_runs / "run2", "--out", tmp_path / "y", "--images", "16", "--force")
        assert r.exit_code == 0 and "warning" in r.output and (tmp_path / "y" / "export.json").is_file(), r.output
    finally:
        lock.release()


def test_exporting_a_configuration_leaves_the_trained_modes_as_trained(two_runs, tmp_path):
    """--calibrate-bn re-estimates what the configuration needs, after the trained modes
    are exported: the 4-bit file is the same with or without the configuration beside it."""
    pytest.importorskip("onnxruntime")
    import onnx

    run = two_runs / "run1"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("default: w4a4\nlayers:\n  conv2: w4a4\n")  # the trained 4-bit mode's bit-widths only
    alone, beside = tmp_path / "alone", tmp_path / "beside"
    assert qdnn("export", run, "--modes", "4", "--out", alone, "--images", "16").exit_code == 0
    r = qdnn("export", run, "--modes", "4", "--config", cfg, "--calibrate-bn", "2", "--out", beside, "--images", "16")
    assert r.exit_code == 0, r.output
    weights = lambda p: {i.name: onnx.numpy_helper.to_array(i).tobytes() for i in onnx.load(p).graph.initializer}  # noqa: E731
    assert weights(alone / "4bit.onnx") == weights(beside / "4bit.onnx")
    summary = json.loads((beside / "export.json").read_text())
    assert summary["calibrated_modes"] == [] and summary["calibrated_config"] is True


# ----------------------------------------------------------------------------- FP warm-up in packs
def test_a_pack_with_an_fp_warmup_trains_and_each_run_resumes_alone(tmp_path):
    group = tmp_path / "g"
    common = [*tiny_overrides(group, "quant.bits=[2,32]", "trainer.epochs=3", "trainer.fp_warmup_epochs=1")]
    r = qdnn("multirun", "quickstart", "--launcher", "packed", "--jobs", "2", *common, "trainer.stop_after=2",
             "seed=0,1")
    assert r.exit_code == 0, r.output
    for seed in (0, 1):
        ck = torch.load(group / f"seed-{seed}" / "checkpoint.pt", weights_only=False)
        assert ck["epoch"] == 2
        assert not any(g.get("fused") for g in ck["optimizer"]["param_groups"])  # momentum appears late: unfused
    # a checkpoint a pack wrote with the fused update resumes under the local launcher too
    ck_path = group / "seed-0" / "checkpoint.pt"
    ck = torch.load(ck_path, weights_only=False)
    for g in ck["optimizer"]["param_groups"]:
        g["fused"], g["foreach"] = True, False
    torch.save(ck, ck_path)
    r = qdnn("multirun", "quickstart", *common, "seed=0,1")
    assert r.exit_code == 0, r.output
    for seed in (0, 1):
        assert json.loads((group / f"seed-{seed}" / "status.json").read_text())["state"] == "finished"


# ----------------------------------------------------------------------------- invocations are kept
def test_resuming_keeps_what_was_typed_and_a_finished_run_says_so(tmp_path):
    run = tmp_path / "run"
    r = qdnn("train", "quickstart", *tiny_overrides(run, "trainer.epochs=2", "trainer.stop_after=1"))
    assert r.exit_code == 0, r.output
    first_config = (run / "config.yaml").read_text()
    # (a resumable key that is not trainer.num_threads: this process's thread count must not
    # change, or a later test's forked DataLoader worker crashes pytest)
    r = qdnn("train", "quickstart", *tiny_overrides(run, "trainer.epochs=2", "trainer.log_every=5"))
    assert r.exit_code == 0 and "resumed from" in r.output, r.output
    assert "trainer.stop_after=1" in yaml.safe_load((run / "overrides.yaml").read_text())
    assert (run / "config.yaml").read_text() == first_config
    r = qdnn("train", "quickstart", *tiny_overrides(run, "trainer.epochs=2"))
    assert r.exit_code == 0 and "finished already" in r.output and "resumed from" not in r.output, r.output
    history = yaml.safe_load((run / "invocations.yaml").read_text())
    assert [h["resumed"] for h in history] == [False, True, True]
    assert "trainer.stop_after=1" in history[0]["overrides"] and "trainer.log_every=5" in history[1]["overrides"]
    # --extend-epochs moves the horizon: config.yaml says the run's epochs now
    r = qdnn("train", "quickstart", "--extend-epochs", *tiny_overrides(run, "trainer.epochs=3"))
    assert r.exit_code == 0, r.output
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["epochs"] == 3


def test_mode_batch_may_change_between_a_run_and_its_resumption(tmp_path):
    run = tmp_path / "run"
    common = tiny_overrides(run, "quant.bits=[2,32]", "trainer.epochs=2")
    assert qdnn("train", "quickstart", *common, "trainer.stop_after=1").exit_code == 0
    r = qdnn("train", "quickstart", *common, "trainer.mode_batch=true")
    assert r.exit_code == 0 and "resumed from" in r.output, r.output


# ----------------------------------------------------------------------------- launchers refuse first
@pytest.mark.parametrize("launcher", ["local", "parallel", "packed"])
def test_a_bad_run_in_a_grid_is_one_line_and_nothing_is_written(tmp_path, launcher):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"variants": {"good": [], "bad": ["trainer.amp=fp16"]}}))
    group = tmp_path / "g"
    r = qdnn("ablate", "quickstart", "--grid", grid, "--launcher", launcher, *tiny_overrides(group))
    line = _error_line(r)
    assert r.exit_code == 2 and "run bad" in line and "trainer.amp=fp16" in line, line
    assert not group.exists()


@pytest.mark.parametrize("launcher", ["local", "packed"])
def test_missing_data_is_refused_before_any_run_folder_exists(tmp_path, launcher):
    group = tmp_path / "sweep"
    r = qdnn("sweep-bits", "cifar100", "--bits", "2,32", "--launcher", launcher, f"out_dir={group}",
             f"data.root={tmp_path / 'nowhere'}", "data.download=false", "trainer.device=cpu")
    assert r.exit_code == 2 and "cifar100 not found" in _error_line(r)
    assert not group.exists()


def test_a_compiled_pack_with_sandwich_sampling_is_refused_up_front(tmp_path):
    group = tmp_path / "g"
    r = qdnn("ablate", "quickstart", "--launcher", "packed", *tiny_overrides(group, "trainer.compile=true",
                                                                              "trainer.mode_sampling=sandwich"))
    line = _error_line(r)
    assert r.exit_code == 2 and "trainer.compile" in line and "unexpected" not in line
    assert not group.exists()


def test_a_malformed_grid_and_a_string_entry(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("variants:\n  a: [trainer.epochs=1\n  b: []\n")
    r = qdnn("ablate", "quickstart", "--grid", bad, *tiny_overrides(tmp_path / "g"))
    assert r.exit_code == 2 and "not valid YAML" in _error_line(r)
    one = tmp_path / "one.yaml"
    one.write_text("variants:\n  short: trainer.epochs=1\n")
    r = qdnn("ablate", "quickstart", "--grid", one, *tiny_overrides(tmp_path / "g"))
    assert r.exit_code == 0, r.output
    assert yaml.safe_load((tmp_path / "g" / "short" / "config.yaml").read_text())["trainer"]["epochs"] == 1


def test_one_diverging_run_in_a_pack_leaves_the_others_finished_and_printed(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"variants": {"healthy": [], "wild": ["optim.lr=1e12"]}}))
    group = tmp_path / "g"
    r = qdnn("ablate", "quickstart", "--grid", grid, "--launcher", "packed", "--jobs", "2",
             *tiny_overrides(group, "trainer.epochs=2"))
    assert r.exit_code == 1, r.output
    line = _error_line(r)
    assert "wild diverged" in line and "unexpected" not in line, line
    assert "healthy: final validation accuracy" in r.output  # its table was printed
    assert json.loads((group / "healthy" / "status.json").read_text())["state"] == "finished"
    assert json.loads((group / "wild" / "status.json").read_text())["state"] == "failed"


def test_packs_say_what_they_train_and_compile_is_a_pack_key(tmp_path):
    from qdnn_cli.config import compose
    from qdnn_cli.engine.pack import pack_key

    base = tiny_overrides(tmp_path / "x")
    assert pack_key(compose("quickstart", base)) != pack_key(compose("quickstart", [*base, "trainer.compile=true"]))
    group = tmp_path / "g"
    r = qdnn("multirun", "quickstart", "--launcher", "packed", *tiny_overrides(group, "trainer.epochs=2",
                                                                                "trainer.stop_after=1"), "seed=0,1")
    assert r.exit_code == 0, r.output
    assert "config of seed-0" in r.output and "seed-1: as seed-0, except seed=1" in r.output
    assert "seed-0: epoch 1/2" in r.output  # each run's validation line
    assert r.output.count("stopped after epoch 1 of 2") == 2


# ----------------------------------------------------------------------------- what a user sees
def test_help_keeps_brackets_and_whole_sentences():
    r = qdnn("--help")
    assert "qdnn[export]" in r.output
    r = qdnn("export", "--help")
    assert "pip install 'qdnn[export]'" in r.output


def test_unknown_keys_get_did_you_mean_and_a_plus_adds_nothing():
    for override, hint in (("epochs=3", "trainer.epochs"), ("modle=tiny", "'model'"), ("+foo=1", "foo")):
        r = qdnn("config", "quickstart", override)
        line = _error_line(r)
        assert r.exit_code == 2 and "unknown override key" in line and hint in line, line


def test_bn_kind_and_its_older_spelling_never_contradict():
    r = qdnn("config", "quickstart", "quant.bn=shared", "quant.bit_specific_bn=true")
    assert r.exit_code == 2 and "contradicts" in _error_line(r)
    r = qdnn("config", "quickstart", "quant.bn=private_stats")
    assert r.exit_code == 0 and yaml.safe_load(r.output)["quant"]["bit_specific_bn"] is False


def test_status_names_runs_relative_to_the_group(tmp_path):
    group = tmp_path / "a_rather_long_group_folder_name"
    assert qdnn("train", "quickstart", *tiny_overrides(group / "no_consistency_shared_bn", "trainer.epochs=1")).exit_code == 0
    r = qdnn("status", group)
    assert r.exit_code == 0 and "no_consistency_shared_bn" in r.output and str(tmp_path) not in r.output
    assert "1 run" in r.output and "1 runs" not in r.output


def test_report_format_follows_the_file_name_and_an_empty_reference_is_said(two_runs, tmp_path):
    r = qdnn("report", two_runs, "--out", tmp_path / "t.csv", "--no-costs")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "t.csv").read_text().splitlines()[0].count(",") >= 3  # CSV, not a markdown table
    assert not (tmp_path / "t.csv").read_text().startswith("|")
    empty = tmp_path / "ref.csv"
    empty.write_text("source,variant,2-bit,FP\n")
    r = qdnn("report", two_runs, "--reference", empty, "--no-costs")
    assert r.exit_code == 0 and "nothing added" in r.output, r.output


def test_sigterm_while_qdnn_starts_is_resumable_75(tmp_path):
    marker = tmp_path / "started"
    from qdnn_cli.startup import PAUSE_AT_START_ENV

    proc = subprocess.Popen([QDNN, "train", "quickstart", *tiny_overrides(tmp_path / "run")],
                            env={**os.environ, PAUSE_AT_START_ENV: str(marker)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not marker.exists():  # not a race: qdnn waits at its start for the signal
        assert time.time() < deadline and proc.poll() is None, "qdnn never reached its start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- model.init_from
@pytest.fixture(scope="module")
def fp_source(tmp_path_factory):
    """A plain full-precision tiny run: what a quantizable run starts from."""
    out = tmp_path_factory.mktemp("init") / "fp"
    r = qdnn("train", "quickstart", *tiny_overrides(out, "trainer.kind=dedicated", "quant.bits=[32]", "seed=5"))
    assert r.exit_code == 0, r.output
    return out


# Float comparison, exact: the same weights through the same kernels and memory layout
@pytest.mark.numerics
def test_a_run_started_from_an_fp_run_is_that_model_in_its_fp_mode(fp_source, tmp_path):
    """Before the first step the FP mode computes exactly what the source computes; every
    quantized mode's BN starts from the source's BN; config.yaml names the source and its hash."""
    from qdnn_cli.config import compose
    from qdnn_cli.engine.init_from import file_sha256
    from qdnn_cli.engine.loop import Trainer
    from qdnn_cli.loaded_run import load_checkpoint_model
    from qdnn_cli.quant import set_bit_mode

    cfg = compose("quickstart", tiny_overrides(tmp_path / "q", f"model.init_from={fp_source}", "quant.bits=[2,4,32]"))
    (tmp_path / "q").mkdir()
    trainer = Trainer(cfg, tmp_path / "q")
    trainer.setup()
    source = load_checkpoint_model(fp_source / "checkpoint.pt", set(), device_name="cpu").model
    x = torch.randn(16, 3, 8, 8)
    model = trainer.model.eval()
    set_bit_mode(model, 32)
    with torch.no_grad():
        # exact: the same weights through the same kernels (the trainer's memory layout)
        if trainer.channels_last:
            source.to(memory_format=torch.channels_last)
        ours, theirs = model(x), source(x)
        assert torch.equal(ours, theirs)
    state = model.state_dict()
    for key, value in source.state_dict().items():
        if ".bn.32." in key:
            assert torch.equal(state[key.replace(".bn.32.", ".bn.2.")], value), key
    assert cfg.model.init_sha256 == file_sha256(fp_source / "checkpoint.pt")


# Float comparison, exact: one process, the same kernels in the same order
@pytest.mark.numerics
def test_an_initialised_run_resumes_to_the_numbers_of_an_uninterrupted_one(fp_source, tmp_path):
    common = [f"model.init_from={fp_source}", "quant.bits=[2,32]", "trainer.epochs=2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    r = qdnn("train", "quickstart", *tiny_overrides(straight, *common))
    assert r.exit_code == 0 and "initialised from" in r.output, r.output
    assert qdnn("train", "quickstart", *tiny_overrides(resumed, *common, "trainer.stop_after=1")).exit_code == 0
    r = qdnn("train", "quickstart", *tiny_overrides(resumed, *common))
    assert r.exit_code == 0 and "resumed from" in r.output and "initialised from" not in r.output, r.output
    # exact: the same kernels in the same order in one process
    strip = lambda rows: [(x["epoch"], x["mode"], x["split"], x["loss"], x["top1"]) for x in rows]  # noqa: E731
    assert strip(read_csv(straight / "metrics.csv")) == strip(read_csv(resumed / "metrics.csv"))
    saved = yaml.safe_load((straight / "config.yaml").read_text())["model"]
    assert saved["init_from"] == str(fp_source) and len(saved["init_sha256"]) == 64


def test_a_started_run_keeps_its_sources_passes_when_the_source_is_gone(fp_source, tmp_path, capsys):
    """config.yaml records the passes behind the source's weights, so the report's
    equal-passes axis holds for a run whose source was moved or deleted (a copy under raw/)."""
    import shutil

    from qdnn_cli.report.collect import passes_of

    source = tmp_path / "source"
    shutil.copytree(fp_source, source)
    started = tmp_path / "started"
    r = qdnn("train", "quickstart", *tiny_overrides(started, f"model.init_from={source}", "quant.bits=[2,32]",
                                                     "trainer.epochs=1"))
    assert r.exit_code == 0, r.output
    shutil.rmtree(source)
    cfg = yaml.safe_load((started / "config.yaml").read_text())
    assert cfg["model"]["init_passes"] == 2  # the source: a dedicated run of 2 epochs
    assert passes_of(cfg) == 2 + 1 * 2       # and its own: one epoch of two modes
    assert "not counted" not in capsys.readouterr().err
    del cfg["model"]["init_passes"]          # a run from before the passes were recorded
    assert passes_of(cfg) == 2 and "not counted" in capsys.readouterr().err


def test_a_bad_init_source_is_one_line_and_nothing_is_written(fp_source, tmp_path):
    cases = [([f"model.init_from={tmp_path / 'nowhere'}"], "no such run"),
             ([f"model.init_from={fp_source}", "model.kwargs.width=16"], "model.kwargs"),
             ([f"model.init_from={fp_source}", "data.num_classes=5"], "4 classes"),
             ([f"model.init_from={fp_source}", "model=resnet20"], "is a tiny run")]
    for i, (extra, says) in enumerate(cases):
        out = tmp_path / f"run{i}"
        base = [o for o in tiny_overrides(out) if not (o.startswith("model") and "model=resnet20" in extra)]
        r = qdnn("train", "quickstart", *base, *extra)
        assert r.exit_code == 2 and says in _error_line(r), (extra, r.output)
        assert not out.exists(), extra


def test_eval_on_the_training_images_gives_the_other_side_of_the_gap(two_runs):
    """--split train evaluates the images the run trained on (its subset, un-augmented):
    the same numbers as evaluating those images by hand, and a one-line error for a bad split."""
    from qdnn_cli.config import load_run_config
    from qdnn_cli.data import build_trained_images
    from qdnn_cli.engine.evaluation import evaluate
    from qdnn_cli.loaded_run import load_checkpoint_model

    run = two_runs / "run2"
    r = qdnn("eval", run, "--split", "train", "--device", "cpu")
    assert r.exit_code == 0 and "training images" in r.output, r.output
    (csv_path,) = run.glob("eval-checkpoint-train-*.csv")
    rows = {x["mode"]: x for x in read_csv(csv_path)}
    assert {x["split"] for x in rows.values()} == {"train"}
    cfg = load_run_config(run)
    images = build_trained_images(cfg.data, 48, torch.device("cpu"), int(cfg.seed))
    assert sum(len(y) for _, y in images) == 96  # data.train_size of the tiny run
    model = load_checkpoint_model(run / "checkpoint.pt", set(), device_name="cpu").model
    expected = evaluate(model, images, [4, 32])
    for m in (4, 32):
        assert float(rows[str(m)]["top1"]) == pytest.approx(expected[m]["top1"], abs=1e-4)  # same kernels, same batches
    r = qdnn("eval", run, "--split", "test")
    assert r.exit_code == 2 and "--split" in _error_line(r)


def test_a_run_that_fails_in_the_local_launcher_leaves_the_others_training(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("variants:\n  wild: [optim.lr=1e12]\n  healthy: []\n")  # the failing run first
    group = tmp_path / "g"
    r = qdnn("ablate", "quickstart", "--grid", grid, *tiny_overrides(group, "trainer.epochs=2"))
    assert r.exit_code == 1, r.output
    line = _error_line(r)
    assert "1 of 2 runs failed: wild" in line and "unexpected" not in line, line
    assert "final validation accuracy" in r.output  # the healthy run's table
    assert json.loads((group / "healthy" / "status.json").read_text())["state"] == "finished"
