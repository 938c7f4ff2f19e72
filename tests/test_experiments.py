import csv
import io
import json

import pandas as pd
import pytest
import yaml

from conftest import tiny_overrides
from helpers import qdnn, read_csv


def _cfg(run_dir):
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def test_ablate_grid_runs_every_variant_with_its_config(tmp_path):
    group = tmp_path / "abl"
    r = qdnn("ablate", "quickstart", *tiny_overrides(group, "trainer.epochs=1"))
    assert r.exit_code == 0, r.output
    runs = {p.name: _cfg(p) for p in group.iterdir() if p.is_dir()}
    assert set(runs) == {"full", "no_consistency", "shared_bn", "no_consistency_shared_bn"}
    flags = {k: (c["loss"]["consistency"], c["quant"]["bit_specific_bn"]) for k, c in runs.items()}
    assert flags == {"full": (True, True), "no_consistency": (False, True), "shared_bn": (True, False),
                     "no_consistency_shared_bn": (False, False)}
    assert all((group / k / "results.csv").exists() for k in runs)


def test_ablate_single_flag_trains_that_variant_only(tmp_path):
    group = tmp_path / "abl"
    r = qdnn("ablate", "quickstart", "--no-consistency", *tiny_overrides(group, "trainer.epochs=1"))
    assert r.exit_code == 0, r.output
    assert [p.name for p in group.iterdir() if p.is_dir()] == ["no_consistency"]
    assert _cfg(group / "no_consistency")["loss"]["consistency"] is False


def test_sweep_bits_trains_one_dedicated_model_per_bit(tmp_path):
    group = tmp_path / "sweep"
    r = qdnn("sweep-bits", "quickstart", "--bits", "2,4,32", *tiny_overrides(group, "trainer.epochs=1"))
    assert r.exit_code == 0, r.output
    cfgs = {p.name: _cfg(p) for p in group.iterdir() if p.is_dir()}
    assert {k: (c["trainer"]["kind"], c["quant"]["bits"]) for k, c in cfgs.items()} == {
        "dedicated_2": ("dedicated", [2]), "dedicated_4": ("dedicated", [4]), "dedicated_32": ("dedicated", [32])}
    assert [r["mode"] for r in read_csv(group / "dedicated_4" / "results.csv")] == ["4"]


def test_sweep_rejects_bad_bits(tmp_path):
    r = qdnn("sweep-bits", "quickstart", "--bits", "0,4", *tiny_overrides(tmp_path / "s"))
    assert r.exit_code == 2 and "each 1-8, 32 or wXaY" in r.output


# ----------------------------------------------------------------------------- report fixtures
def make_run(path, top1: dict, kind="quantizable", seed=0, consistency=True, bsbn=True, state="finished", epoch=3,
             epochs=3, lr=0.1, fraction=1.0, name="fixture", trainer=None):
    path.mkdir(parents=True)
    bits = sorted(top1)
    cfg = {"name": name, "seed": seed, "model": {"name": "tiny", "kwargs": {"width": 8}},
           "data": {"name": "synthetic", "train_fraction": fraction},
           "quant": {"bits": bits, "bit_specific_bn": bsbn, "weight": "dorefa", "act": "dorefa",
                     "quantize_first_last": False, "quantize_shortcut": False},
           "loss": {"consistency": consistency, "target": "fp", "weight": 1.0},
           "optim": {"lr": lr},
           "trainer": {"kind": kind, "epochs": epochs, "mode_sampling": "all", "device": f"dev{seed}", **(trainer or {})}}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    (path / "status.json").write_text(json.dumps({"state": state, "epoch": epoch, "epochs": epochs}))
    (path / "data_info.json").write_text(json.dumps({"num_classes": 10, "in_channels": 1, "image_size": 8}))
    with open(path / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "mode", "split", "loss", "top1", "top5"])
        for m, v in top1.items():
            w.writerow([epoch, m, "val", 1.0, v, 100])
    if state == "finished":
        with open(path / "results.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["mode", "top1", "top5", "loss"])
            for m, v in top1.items():
                w.writerow([m, v, 100, 1.0])


@pytest.fixture
def fixture_runs(tmp_path):
    root = tmp_path / "runs"
    make_run(root / "s0" / "full", {32: 70.0, 4: 68.0, 2: 60.0}, seed=0)
    make_run(root / "s1" / "full", {32: 72.0, 4: 70.0, 2: 62.0}, seed=1)
    make_run(root / "s0" / "noc", {32: 69.0, 4: 66.0, 2: 55.0}, consistency=False)
    make_run(root / "s0" / "d32", {32: 71.0}, kind="dedicated")
    make_run(root / "s0" / "d4", {4: 67.0}, kind="dedicated")
    make_run(root / "s0" / "d2", {2: 58.0}, kind="dedicated")
    make_run(root / "s2" / "full", {32: 10.0, 4: 9.0, 2: 5.0}, seed=2, state="running", epoch=1)
    return root


def _markdown_rows(output):
    lines = [x for x in output.splitlines() if x.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[x.strip() for x in line.strip("|").split("|")] for line in lines[2:]]
    return header, rows


def test_report_markdown_cells_mean_std_difference_and_incomplete(fixture_runs):
    r = qdnn("report", fixture_runs, "--no-costs")
    assert r.exit_code == 0, r.output
    header, body = _markdown_rows(r.output)
    assert header == ["variant", "budget", "seeds", "FP", "4-bit", "2-bit"]
    rows = {c[0]: c for c in body}
    assert rows["quantizable"][1:] == ["3 ep", "2", "71.00 ± 1.41", "69.00 ± 1.41", "61.00 ± 1.41"]
    assert rows["quantizable (no consistency)"][2:] == ["1", "69.00", "66.00", "55.00"]
    # three dedicated runs of one seed: one row, one seed
    assert rows["dedicated"][1:] == ["3 ep", "1", "71.00", "67.00", "58.00"]
    assert rows["quantizable − dedicated"][3:] == ["+0.00", "+2.00", "+3.00"]
    incomplete = [k for k in rows if "interrupted: epoch 1/3" in k]  # "running", but no process holds it
    assert len(incomplete) == 1 and rows[incomplete[0]][3:] == ["10.00", "9.00", "5.00"]


def test_report_never_averages_runs_of_other_budgets_or_recipes(tmp_path):
    root = tmp_path / "runs"
    make_run(root / "short_s0", {32: 20.0, 2: 10.0}, seed=0, epochs=4, epoch=4)
    make_run(root / "short_s1", {32: 22.0, 2: 12.0}, seed=1, epochs=4, epoch=4)
    make_run(root / "long_s0", {32: 70.0, 2: 60.0}, seed=0, epochs=200, epoch=200)
    make_run(root / "half_s0", {32: 40.0, 2: 30.0}, seed=0, epochs=4, epoch=4, fraction=0.5)
    make_run(root / "lr_s0", {32: 30.0, 2: 20.0}, seed=0, epochs=4, epoch=4, lr=0.05)
    make_run(root / "ded_s0", {2: 9.0}, kind="dedicated", seed=0, epochs=4, epoch=4)
    make_run(root / "ded_s1", {2: 11.0}, kind="dedicated", seed=1, epochs=4, epoch=4)
    r = qdnn("report", root, "--no-costs")
    assert r.exit_code == 0, r.output
    header, body = _markdown_rows(r.output)
    rows = {(c[0], c[1]): c[2:] for c in body}
    assert rows[("quantizable", "4 ep")] == ["2", "21.00 ± 1.41", "11.00 ± 1.41"]
    assert rows[("quantizable", "200 ep")] == ["1", "70.00", "60.00"]
    assert rows[("quantizable", "4 ep, 0.5 of train")] == ["1", "40.00", "30.00"]
    # a recipe change is a variant of its own, named by what differs
    assert rows[("quantizable (optim.lr=0.05)", "4 ep")] == ["1", "30.00", "20.00"]
    assert rows[("dedicated", "4 ep")] == ["2", "—", "10.00 ± 1.41"]
    # the difference row pairs runs of the same budget only
    assert rows[("quantizable − dedicated", "4 ep")][2] == "+1.00"
    assert not any(k[0] == "quantizable − dedicated" and k[1] != "4 ep" for k in rows)


def test_report_averages_seeds_that_differ_only_in_how_they_ran(tmp_path):
    # mid-epoch checkpoints and thread counts change where a run can resume and how fast
    # it goes, not what it learns: the seeds are one variant
    root = tmp_path / "runs"
    make_run(root / "s0", {32: 20.0, 2: 10.0}, seed=0, trainer={"checkpoint_every_minutes": 5.0, "num_threads": 1})
    make_run(root / "s1", {32: 22.0, 2: 12.0}, seed=1, trainer={"checkpoint_every_minutes": None, "num_threads": 2})
    r = qdnn("report", root, "--no-costs")
    assert r.exit_code == 0, r.output
    header, body = _markdown_rows(r.output)
    assert [c[:3] for c in body] == [["quantizable", "3 ep", "2"]]


def test_report_names_variants_against_the_experiment_defaults(tmp_path):
    root = tmp_path / "runs"
    for leaf, extra in (("full", []), ("pact", ["quant.act=pact"])):
        assert qdnn("train", "quickstart", *tiny_overrides(root / leaf, "trainer.epochs=1", *extra)).exit_code == 0
    r = qdnn("report", root, "--no-costs")
    assert r.exit_code == 0, r.output
    header, body = _markdown_rows(r.output)
    assert sorted(c[0] for c in body) == ["quantizable", "quantizable (quant.act=pact)"]
    # what every run shares against quickstart's defaults is said once, above the table
    assert "All runs:" in r.output and "data.name=synthetic" in r.output and "model.kwargs.width=8" in r.output


def test_report_csv_parses_back_and_markdown_file(fixture_runs, tmp_path):
    out = tmp_path / "t.csv"
    r = qdnn("report", fixture_runs, "--format", "csv", "--out", out)
    assert r.exit_code == 0, r.output
    rows = {row["variant"]: row for row in csv.DictReader(io.StringIO(out.read_text()))}
    assert float(rows["quantizable"]["FP"]) == 71.0 and float(rows["quantizable"]["FP_std"]) == pytest.approx(1.4142, abs=1e-4)
    assert float(rows["quantizable − dedicated"]["2-bit"]) == 3.0
    assert rows["quantizable"]["finished"] == "True"
    assert any(k.startswith("quantizable [interrupted") and v["finished"] == "False" for k, v in rows.items())
    # cost rows: BOPs shrink with bits, size too
    assert float(rows["BOPs (G)"]["2-bit"]) < float(rows["BOPs (G)"]["4-bit"]) < float(rows["BOPs (G)"]["FP"])
    assert float(rows["model size (MB)"]["2-bit"]) < float(rows["model size (MB)"]["FP"])
    md = tmp_path / "t.md"
    assert qdnn("report", fixture_runs, "--out", md).exit_code == 0
    assert md.read_text().splitlines()[0].startswith("| variant")


def test_report_reference_rows_and_plot_png(fixture_runs, tmp_path):
    ref = tmp_path / "reference.csv"
    ref.write_text("source,variant,FP,4-bit,2-bit\npaper,Q-DNN,73.0,71.5,65.0\n")
    png = tmp_path / "plot.png"
    r = qdnn("report", fixture_runs, "--reference", ref, "--plot", png)
    assert r.exit_code == 0, r.output
    assert "reference: Q-DNN (paper)" in r.output and "71.50" in r.output
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] > 400 and im.size[1] > 300


def test_report_without_runs_is_one_line(tmp_path):
    r = qdnn("report", tmp_path)
    assert r.exit_code == 2 and "no qdnn runs" in r.output


# ----------------------------------------------------------------------------- eval
def test_eval_untrained_mode_needs_calibration(tmp_path):
    run = tmp_path / "run"
    assert qdnn("train", "quickstart", *tiny_overrides(run, "trainer.kind=dedicated", "quant.bits=[4]",
                                                       "trainer.epochs=1")).exit_code == 0
    refused = qdnn("eval", run, "--bits", "2,4", "--device", "cpu")
    assert refused.exit_code == 2 and "[2] were never trained" in refused.output and "--calibrate-bn" in refused.output
    ok = qdnn("eval", run, "--bits", "2,4", "--calibrate-bn", "2", "--device", "cpu")
    assert ok.exit_code == 0, ok.output
    (csv_path,) = run.glob("eval-checkpoint-*.csv")
    rows = {r["mode"]: r for r in read_csv(csv_path)}
    assert rows["2"]["calibrated"] == "True" and rows["2"]["calibration_batches"] == "2"
    assert rows["4"]["calibrated"] == "False" and rows["4"]["trained"] == "True"
    # the trained mode evaluates exactly as during training
    assert float(rows["4"]["top1"]) == float(read_csv(run / "results.csv")[0]["top1"])


# Float comparison, exact kernels, rel 1e-6: the same evaluation of the same statistics, once for two modes and
# once for one
@pytest.mark.numerics
def test_recalibrate_trained_gives_a_shared_bn_model_statistics_per_mode(tmp_path):
    """A shared-BN model evaluated with statistics re-estimated per mode: each mode's number
    equals a one-mode evaluation's (one mode's statistics never reach another's), and
    differs from the shared statistics it trained with."""
    run = tmp_path / "run"
    assert qdnn("train", "quickstart", *tiny_overrides(run, "quant.bit_specific_bn=false", "quant.bits=[3,32]",
                                                       "trainer.epochs=1")).exit_code == 0
    refused = qdnn("eval", run, "--recalibrate-trained", "--device", "cpu")
    assert refused.exit_code == 2 and "--calibrate-bn" in refused.output
    rows = {}
    for bits in ("3,32", "3", "32"):
        r = qdnn("eval", run, "--bits", bits, "--calibrate-bn", "2", "--recalibrate-trained", "--device", "cpu")
        assert r.exit_code == 0, r.output
        (csv_path,) = run.glob("eval-checkpoint-*.csv")
        rows[bits] = {x["mode"]: x for x in read_csv(csv_path)}
        csv_path.unlink()
    both = rows["3,32"]
    assert all(both[m]["calibrated"] == "True" and both[m]["trained"] == "True" for m in ("3", "32"))
    for m in ("3", "32"):
        assert float(both[m]["loss"]) == pytest.approx(float(rows[m][m]["loss"]), rel=1e-6)
    # and the re-estimated statistics are not the trained ones
    trained = {x["mode"]: x for x in read_csv(run / "results.csv")}
    assert all(abs(float(both[m]["loss"]) - float(trained[m]["loss"])) > 1e-6 for m in ("3", "32"))


def test_calibration_changes_only_the_calibrated_mode_statistics():
    import torch

    from qdnn_cli.data import TensorBatches
    from qdnn_cli.engine.evaluation import calibrate_bn
    from qdnn_cli.models import build_model
    from qdnn_cli.quant import QuantSpec

    net = build_model("tiny", QuantSpec((2, 4, 32)), 4, 3, width=8).eval()
    before = {k: v.clone() for k, v in net.state_dict().items() if "running_mean" in k}
    loader = TensorBatches(torch.randint(0, 255, (64, 3, 8, 8), dtype=torch.uint8), torch.zeros(64, dtype=torch.long),
                           16, (0.5,) * 3, (0.25,) * 3, torch.device("cpu"), shuffle=False)
    assert calibrate_bn(net, loader, 2, batches=3) == 3
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".bn.2." in k for k in changed)


# ----------------------------------------------------------------------------- reproduce
def test_reproduce_skips_finished_runs_on_second_call(tmp_path):
    args = ["reproduce", "quickstart", *[o for o in tiny_overrides(tmp_path / "unused", "trainer.epochs=1",
                                                                    "quant.bits=[2,32]")],
            "--runs-dir", tmp_path / "runs", "--report-dir", tmp_path / "report"]
    first = qdnn(*args)
    assert first.exit_code == 0, first.output
    runs = sorted(p.name for p in (tmp_path / "runs" / "seed0").iterdir())
    assert runs == sorted(["full", "no_consistency", "shared_bn", "no_consistency_shared_bn", "dedicated_2", "dedicated_32"])
    for name in ("results.md", "results.csv", "results.png"):
        assert (tmp_path / "report" / name).exists()
    stamp = (tmp_path / "runs" / "seed0" / "full" / "checkpoint.pt").stat().st_mtime_ns
    second = qdnn(*args)
    assert second.exit_code == 0, second.output
    assert second.output.count("finished already, skipped") == 6
    assert (tmp_path / "runs" / "seed0" / "full" / "checkpoint.pt").stat().st_mtime_ns == stamp


def test_reference_names_resolve_from_qdnn_not_from_the_current_directory(fixture_runs, tmp_path, monkeypatch):
    """`--reference imagenet` is the table shipped with qdnn (the paper's one surviving
    number, as quoted by Huang et al. 2025), whatever folder the command runs in."""
    decoy = tmp_path / "cwd" / "experiments" / "imagenet"
    decoy.mkdir(parents=True)
    (decoy / "reference.csv").write_text("source,variant,FP\nnot this one,decoy,1.00\n")
    monkeypatch.chdir(tmp_path / "cwd")
    r = qdnn("report", fixture_runs, "--reference", "imagenet", "--no-costs")
    assert r.exit_code == 0, r.output
    assert "reference: Q-DNN" in r.output and "68.60" in r.output and "62.91" in r.output
    assert "decoy" not in r.output
    r = qdnn("report", fixture_runs, "--reference", "nope", "--no-costs")
    assert r.exit_code == 2 and "no reference table 'nope'" in r.output and "imagenet" in r.output


def test_budget_curves_follow_each_variant_over_epochs(tmp_path):
    """`qdnn report --plot-budget`: quantizable against dedicated at 8 / 16 / 32 epochs,
    seeds averaged per budget, most and least precise mode."""
    from qdnn_cli.report import budget_curves, collect, find_runs

    root = tmp_path / "runs"
    for epochs, q, d in ((8, 30.0, 20.0), (16, 40.0, 33.0), (32, 50.0, 47.0)):
        for seed in (0, 1):
            make_run(root / f"q{epochs}_{seed}", {32: q + 5 + seed, 2: q + seed}, seed=seed, epochs=epochs, epoch=epochs)
            make_run(root / f"d{epochs}_{seed}", {2: d + seed}, kind="dedicated", seed=seed, epochs=epochs, epoch=epochs)
    long, _ = collect(find_runs([root]))
    curves = budget_curves(long)
    assert [p[:2] for p in curves[("quantizable", 2)]] == [(8, 30.5), (16, 40.5), (32, 50.5)]
    assert [p[:2] for p in curves[("dedicated", 2)]] == [(8, 20.5), (16, 33.5), (32, 47.5)]
    assert curves[("quantizable", 32)][0][3] == 2  # two seeds behind each point
    r = qdnn("report", root, "--no-costs", "--plot-budget", tmp_path / "budget.png")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    budgets = [line.split("|")[2].strip() for line in r.output.splitlines() if line.startswith("| quantizable  ")]
    assert budgets == ["8 ep", "16 ep", "32 ep"]  # numbers in a budget sort as numbers
    # equal compute: the two-mode quantizable run of e epochs made 2e passes over each image
    by_passes = budget_curves(long, axis="passes")
    assert [p[:2] for p in by_passes[("quantizable", 2)]] == [(16, 30.5), (32, 40.5), (64, 50.5)]
    assert [p[0] for p in by_passes[("dedicated", 2)]] == [8, 16, 32]
    r = qdnn("report", root, "--no-costs", "--plot-budget", tmp_path / "passes.png", "--budget-axis", "passes")
    assert r.exit_code == 0 and (tmp_path / "passes.png").exists(), r.output
    r = qdnn("report", root, "--no-costs", "--plot-budget", tmp_path / "x.png", "--budget-axis", "hours")
    assert r.exit_code == 2 and "--budget-axis 'hours'" in r.output and not (tmp_path / "x.png").exists()


def test_convergence_table_applies_the_one_point_rule_per_mode(tmp_path):
    """`qdnn report --convergence`: each variant's gain per mode from one budget to the next,
    over the seeds run at both; converged only when every mode gains < 1 point."""
    from qdnn_cli.report import collect, find_runs
    from qdnn_cli.report.table import convergence_table

    root = tmp_path / "runs"
    # quantizable: 8 → 16 gains 5 points; 16 → 32 gains 0.5 at FP but 1.5 at 2 bits (seed mean)
    for epochs, fp, low in ((8, 40.0, 30.0), (16, 45.0, 35.0), (32, 45.5, 36.5)):
        for seed in (0, 1):
            make_run(root / f"q{epochs}_{seed}", {32: fp + seed, 2: low + seed}, seed=seed, epochs=epochs, epoch=epochs)
    # dedicated: seed 1 only at 64 epochs: the step is paired on seed 0 alone
    make_run(root / "d32_0", {2: 20.0}, kind="dedicated", seed=0, epochs=32, epoch=32)
    make_run(root / "d64_0", {2: 20.4}, kind="dedicated", seed=0, epochs=64, epoch=64)
    make_run(root / "d64_1", {2: 30.0}, kind="dedicated", seed=1, epochs=64, epoch=64)
    long, _ = collect(find_runs([root]))
    steps = convergence_table(long).set_index(["variant", "from"])
    q8, q16, d32 = steps.loc[("quantizable", 8)], steps.loc[("quantizable", 16)], steps.loc[("dedicated", 32)]
    assert (q8["to"], q8[32], q8[2], q8["converged"]) == (16, 5.0, 5.0, False)
    assert (q16[32], q16[2], q16["converged"]) == (pytest.approx(0.5), pytest.approx(1.5), False)
    assert (d32["to"], d32["seeds"], d32[2], d32["converged"]) == (64, 1, pytest.approx(0.4), True)
    assert pd.isna(d32[32])  # a mode the variant never trained is no gain
    out = tmp_path / "convergence.csv"
    r = qdnn("report", root, "--no-costs", "--convergence", out)
    assert r.exit_code == 0, r.output
    (printed,) = [line for line in r.output.splitlines() if "32 → 64 ep" in line]
    assert printed.startswith("| dedicated ") and "| +0.40 " in printed and printed.rstrip(" |").endswith("yes")
    rows = read_csv(out)
    assert [(row["variant"], row["from"], row["converged"]) for row in rows] == [
        ("quantizable", "8", "False"), ("quantizable", "16", "False"), ("dedicated", "32", "True")]
    assert float(rows[1]["2-bit"]) == pytest.approx(1.5)
    single = tmp_path / "single"
    make_run(single / "q8", {32: 40.0}, epochs=8, epoch=8)
    r = qdnn("report", single, "--convergence", tmp_path / "none.md")
    assert r.exit_code == 2 and "no variant has finished runs at two budgets" in r.output
    assert not (tmp_path / "none.md").exists()


def test_convergence_judges_only_steps_that_double_the_schedule(tmp_path):
    """The rule is about doublings: 256 → 384 epochs adding < 1 point says nothing. Such a
    step is listed unjudged, and the doubling that ends at the same budget is listed and
    judged (here it fails the rule the two half steps would each have passed)."""
    from qdnn_cli.report import collect, find_runs
    from qdnn_cli.report.table import convergence_table, convergence_text

    root = tmp_path / "runs"
    for epochs, low in ((256, 25.0), (384, 25.6), (512, 26.2)):
        make_run(root / f"d{epochs}", {2: low}, kind="dedicated", seed=0, epochs=epochs, epoch=epochs)
    long, _ = collect(find_runs([root]))
    steps = convergence_table(long)
    assert [(r["from"], r["to"], r["converged"]) for _, r in steps.iterrows()] == [
        (256, 384, None), (256, 512, False), (384, 512, None)]
    assert steps["epochs_ratio"].tolist() == pytest.approx([1.5, 2.0, 512 / 384])
    doubling = steps[(steps["from"] == 256) & (steps["to"] == 512)].iloc[0]
    assert doubling[2] == pytest.approx(1.2)  # 25.0 → 26.2
    shown = convergence_text(steps, "markdown")
    assert "— (epochs ×1.5: not a doubling)" in shown and "yes" not in shown


def test_convergence_pairs_seeds_per_mode(tmp_path):
    """Dedicated models train one mode each, so one budget's seeds differ by mode: at 128
    epochs seed 0 trained only 4 bits and seed 1 only 2 bits, at 256 seed 0 only 2 bits. The
    2-bit step is then unpaired (seed 1 → seed 0), not dropped because the seed the two
    budgets share never trained that mode."""
    from qdnn_cli.report import collect, find_runs
    from qdnn_cli.report.table import convergence_table, convergence_text

    root = tmp_path / "runs"
    make_run(root / "d128_4_s0", {4: 22.0}, kind="dedicated", seed=0, epochs=128, epoch=128)
    make_run(root / "d128_2_s1", {2: 24.0}, kind="dedicated", seed=1, epochs=128, epoch=128)
    make_run(root / "d128_2_s2", {2: 26.0}, kind="dedicated", seed=2, epochs=128, epoch=128)
    make_run(root / "d256_2_s0", {2: 27.5}, kind="dedicated", seed=0, epochs=256, epoch=256)
    make_run(root / "d256_2_s2", {2: 26.5}, kind="dedicated", seed=2, epochs=256, epoch=256)
    long, _ = collect(find_runs([root]))
    (step,) = [r for _, r in convergence_table(long).iterrows()]
    assert (step["from"], step["to"], step["seeds"], bool(step["paired"])) == (128, 256, 1, True)
    assert step[2] == pytest.approx(0.5) and pd.isna(step[4])  # seed 2 alone: 26.0 → 26.5
    assert step["converged"] is True
    make_run(root / "d256_4_s1", {4: 25.0}, kind="dedicated", seed=1, epochs=256, epoch=256)
    long, _ = collect(find_runs([root]))
    (step,) = [r for _, r in convergence_table(long).iterrows()]
    assert step[4] == pytest.approx(3.0) and step["seeds"] == "4-bit: 1 → 1, 2-bit: 1"  # seed 0 → seed 1
    assert not step["paired"] and step["converged"] is None  # a 3-point gain, but across seeds: unjudged
    shown = convergence_text(convergence_table(long), "markdown")
    assert "(unpaired)" in shown and "— (unpaired: other seeds)" in shown


def test_report_counts_seeds_per_mode_where_the_modes_ran_different_seeds(tmp_path):
    """Dedicated models of one budget train one mode each: 4 bits with seeds 0 and 1, 2 bits
    with seed 1 alone. The row must not say "2 seeds" over a 2-bit cell of one."""
    from qdnn_cli.report import build_table, collect, find_runs

    root = tmp_path / "runs"
    make_run(root / "d4_s0", {4: 22.0}, kind="dedicated", seed=0, epochs=128, epoch=128)
    make_run(root / "d4_s1", {4: 24.0}, kind="dedicated", seed=1, epochs=128, epoch=128)
    make_run(root / "d2_s1", {2: 25.0}, kind="dedicated", seed=1, epochs=128, epoch=128)
    make_run(root / "q_s0", {4: 30.0, 2: 28.0}, seed=0, epochs=128, epoch=128)
    make_run(root / "q_s1", {4: 32.0, 2: 29.0}, seed=1, epochs=128, epoch=128)
    long, _ = collect(find_runs([root]))
    _, table = build_table(long)
    rows = table[table["row"] == "result"].set_index("variant")
    assert rows.loc["dedicated", "seeds"] == "4-bit: 2, 2-bit: 1"
    assert rows.loc["quantizable", "seeds"] == 2  # every mode the same seeds: one number
    assert rows.loc["dedicated", 4] == 23.0 and rows.loc["dedicated", "4_std"] == pytest.approx(2 ** 0.5)
    assert pd.isna(rows.loc["dedicated", "2_std"])  # one seed: no spread
    r = qdnn("report", root, "--no-costs")
    assert r.exit_code == 0, r.output
    header, body = _markdown_rows(r.output)
    shown = {row[0]: dict(zip(header, row)) for row in body}
    assert shown["dedicated"]["seeds"] == "4-bit: 2, 2-bit: 1" and shown["dedicated"]["2-bit"] == "25.00"


def test_budget_modes_choose_the_curves_and_refuse_a_mode_no_run_has(tmp_path):
    """The dedicated 4-bit model is neither the most nor the least precise mode, so the
    default picture leaves it out; --budget-modes draws it."""
    from qdnn_cli.report import budget_curves, collect, find_runs

    root = tmp_path / "runs"
    for epochs in (64, 128):
        make_run(root / f"q{epochs}", {32: 40.0, 4: 38.0, 2: 35.0}, epochs=epochs, epoch=epochs)
        make_run(root / f"d{epochs}", {4: 20.0 + epochs / 64}, kind="dedicated", epochs=epochs, epoch=epochs)
    long, _ = collect(find_runs([root]))
    assert ("dedicated", 4) not in budget_curves(long)
    assert [p[:2] for p in budget_curves(long, [4])[("dedicated", 4)]] == [(64, 21.0), (128, 22.0)]
    png = tmp_path / "b.png"
    r = qdnn("report", root, "--no-costs", "--plot-budget", png, "--budget-modes", "FP,4-bit")
    assert r.exit_code == 0 and png.read_bytes()[:4] == b"\x89PNG", r.output
    for bad, said in (("0", "'0' is not a bit mode"), ("8", "no finished run has 8-bit"), (",", "name one mode")):
        out = tmp_path / f"bad{bad}.png"
        r = qdnn("report", root, "--no-costs", "--plot-budget", out, "--budget-modes", bad)
        assert r.exit_code == 2 and said in r.output and "Traceback" not in r.output and not out.exists(), r.output
    r = qdnn("report", root, "--no-costs", "--budget-modes", "4")
    assert r.exit_code == 2 and "--plot-budget" in r.output


def test_convergence_steps_over_a_budget_the_mode_skipped(tmp_path):
    """The dedicated 4-bit model ran 128 and 384 epochs, the 2-bit one 128, 256 and 384: the
    4-bit step is 128 → 384 (judged: it triples), not lost between the 2-bit model's steps."""
    from qdnn_cli.report import collect, find_runs
    from qdnn_cli.report.table import convergence_table

    root = tmp_path / "runs"
    for epochs, two in ((128, 24.0), (256, 25.5), (384, 26.0)):
        make_run(root / f"d{epochs}_2", {2: two}, kind="dedicated", epochs=epochs, epoch=epochs)
    for epochs, four in ((128, 23.0), (384, 25.0)):
        make_run(root / f"d{epochs}_4", {4: four}, kind="dedicated", epochs=epochs, epoch=epochs)
    long, _ = collect(find_runs([root]))
    steps = {(r["from"], r["to"]): r for _, r in convergence_table(long).iterrows()}
    assert sorted(steps) == [(128, 256), (128, 384), (256, 384)]
    assert steps[(128, 384)][4] == pytest.approx(2.0) and pd.isna(steps[(128, 384)][2])
    assert steps[(128, 384)]["converged"] is False  # +2 over a tripling
    assert steps[(128, 256)][2] == pytest.approx(1.5) and pd.isna(steps[(128, 256)][4])
    assert steps[(256, 384)]["converged"] is None  # ×1.5: not a doubling, and no 192 to double from


def test_budget_plot_keeps_long_legends_inside_the_picture(tmp_path):
    """Many variants with long names: the legend below the axes must not be cut at the
    picture's edges (it was, with two columns and a fixed canvas)."""
    import numpy as np
    from PIL import Image

    from qdnn_cli.report.table import plot_budget

    names = [f"quantizable (started from a trained run, optim.lr=0.01, variant number {i})" for i in range(6)]
    curves = {(name, mode): [(64, 20.0 + i, float("nan"), 1), (128, 22.0 + i, 0.5, 2)]
              for i, name in enumerate(names) for mode in (32, 2)}
    png = tmp_path / "long.png"
    plot_budget(curves, png, axis="passes")
    with Image.open(png) as im:
        pixels = np.asarray(im.convert("L"))
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    assert border.min() == 255, "something is drawn on the picture's edge: the legend is clipped"
    # The legend takes room below the axes, not from them: the picture grows with it.
    short = tmp_path / "short.png"
    plot_budget(dict(list(curves.items())[:2]), short, axis="passes")
    with Image.open(short) as few, Image.open(png) as many:
        rows_added = 10  # one column of 12 labels against one of 2
        assert many.height - few.height >= rows_added * 7 * 120 / 72, "the axes shrank to make room for the legend"


def test_budget_plot_marks_the_seed_count_where_a_curve_mixes_seed_sets(tmp_path):
    """A curve of one-seed means with a two-seed mean in the middle bends there for the
    seeds, not the training: each of its points carries its count. A curve whose points
    all average the same seeds carries none."""
    from qdnn_cli.report.table import plot_budget, seed_count_marks

    mixed = [(144, 31.44, float("nan"), 1), (224, 32.22, 0.93, 2), (384, 31.54, float("nan"), 1)]
    even = [(128, 23.28, float("nan"), 1), (256, 25.38, float("nan"), 1)]
    assert seed_count_marks(even) == []
    assert seed_count_marks(mixed) == [(144, 31.44, "n=1"), (224, 32.22, "n=2"), (384, 31.54, "n=1")]
    drawn = plot_budget({("quantizable (FP start)", 32): mixed, ("dedicated", 2): even},
                        tmp_path / "b.png", axis="passes")
    assert sorted(drawn) == sorted(seed_count_marks(mixed))
    assert (tmp_path / "b.png").stat().st_size > 0


def test_budget_curves_of_different_variants_never_share_a_colour():
    """Twelve variants: matplotlib's default cycle gave the 11th the 1st's colour, so two
    variants read as one curve. A variant's modes share its colour and differ by marker."""
    from qdnn_cli.report.table import budget_curve_styles

    variants = [f"quantizable (variant {i})" for i in range(11)] + ["dedicated"]
    keys = [(v, m) for v in variants for m in (32, "w2a4", 2)]
    styles = budget_curve_styles(keys)
    colours = {v: styles[(v, 32)]["color"] for v in variants}
    assert len(set(colours.values())) == len(variants)
    for v in variants:
        assert styles[(v, 2)]["color"] == styles[(v, "w2a4")]["color"] == colours[v]
        assert styles[(v, 32)]["marker"] != styles[(v, 2)]["marker"]  # the most precise mode stands out
    assert styles[("dedicated", 2)]["linestyle"] != styles[(variants[0], 2)]["linestyle"]
    # a variant that ran one mode only wears that mode's marker, not the FP mode's circle
    alone = budget_curve_styles(keys + [("dedicated (FP start)", 2)])
    assert alone[("dedicated (FP start)", 2)]["marker"] == alone[("dedicated", 2)]["marker"] != alone[("dedicated", 32)]["marker"]


@pytest.mark.parametrize("trainer, passes", [
    ({"kind": "dedicated", "epochs": 40}, 40),
    ({"kind": "quantizable", "epochs": 8}, 40),                                      # 5 modes every step
    ({"kind": "quantizable", "epochs": 8, "mode_sampling": "sandwich", "sandwich_k": 1}, 24),
    ({"kind": "quantizable", "epochs": 8, "mode_sampling": "mixed", "mixed_k": 2}, 56),
    ({"kind": "quantizable", "epochs": 8, "fp_warmup_epochs": 2}, 2 + 6 * 5),       # FP alone first
])
def test_passes_count_the_forward_backward_passes_over_each_image(trainer, passes):
    from qdnn_cli.report.collect import passes_of
    assert passes_of({"trainer": trainer, "quant": {"bits": [2, 3, 4, 8, 32]}}) == passes


def test_reproduce_of_a_side_grid_reports_beside_its_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # experiments/<name> would be created here if the report went there
    r = qdnn("reproduce", "quickstart", *tiny_overrides(tmp_path / "unused", "trainer.epochs=1", "quant.bits=[2,32]"),
             "--grid", "budget", "--runs-dir", tmp_path / "runs")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "runs" / "results.md").exists() and (tmp_path / "runs" / "results.csv").exists()
    assert not (tmp_path / "experiments").exists()


def test_report_says_when_a_mean_holds_one_seed_run_twice(tmp_path):
    """The same seed and variant run on two machines (rounding differs, so the numbers do):
    one seed in the table, their mean, and one warning naming both runs; dedicated models of
    one seed at different bit-widths are no repeat."""
    root = tmp_path / "runs"
    make_run(root / "cpu_a" / "full", {32: 70.0, 2: 60.0}, seed=0)
    make_run(root / "cpu_b" / "full", {32: 72.0, 2: 58.0}, seed=0)
    make_run(root / "cpu_a" / "d32", {32: 71.0}, kind="dedicated")
    make_run(root / "cpu_a" / "d2", {2: 55.0}, kind="dedicated")
    r = qdnn("report", root, "--no-costs")
    assert r.exit_code == 0, r.output
    rows = {c[0]: c for c in _markdown_rows(r.output)[1]}
    assert rows["quantizable"][1:] == ["3 ep", "1", "71.00", "59.00"]
    warnings = [line for line in r.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, r.output
    assert "seed 0 ran 2 times" in warnings[0] and "cpu_a" in warnings[0] and "cpu_b" in warnings[0]


def test_passes_of_a_run_started_from_another_count_the_source(tmp_path, capsys):
    """An FP start's budget is the FP model's passes plus its own: the equal-passes axis."""
    import yaml

    from qdnn_cli.report.collect import passes_of
    source = tmp_path / "fp64"
    source.mkdir()
    (source / "config.yaml").write_text(yaml.safe_dump({"trainer": {"kind": "dedicated", "epochs": 64},
                                                          "quant": {"bits": [32]}}))
    started = {"trainer": {"kind": "quantizable", "epochs": 8}, "quant": {"bits": [2, 3, 4, 8, 32]},
               "model": {"init_from": str(source)}}
    assert passes_of(started) == 64 + 40
    started["model"]["init_from"] = str(source / "checkpoint.pt")  # a checkpoint file: its run's config
    assert passes_of(started) == 64 + 40
    started["model"]["init_from"] = str(tmp_path / "gone")
    assert passes_of(started) == 40
    assert "gone" in capsys.readouterr().err


def _train_eval(run_dir, top1: dict, calibrated=()):
    """What ``qdnn eval RUN --split train`` leaves in a run: top-1 per mode on the training images."""
    with open(run_dir / "eval-checkpoint-train-20260101-000000.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["mode", "top1", "top5", "loss", "trained", "calibrated", "split"])
        for m, v in top1.items():
            w.writerow([m, v, 100, 0.1, m not in calibrated, m in calibrated, "train"])


def test_compare_pairs_seeds_mode_by_mode_with_the_train_val_gaps(tmp_path):
    """The difference is the mean of the per-seed differences over the seeds both sides
    ran (seed 2 of the left side has no partner and stays out); the gaps likewise."""
    root = tmp_path / "runs"
    left = {0: {32: 40.0, 4: 30.0, 2: 28.0}, 1: {32: 42.0, 4: 31.0, 2: 29.0}, 2: {32: 50.0, 4: 50.0, 2: 50.0}}
    for seed, top1 in left.items():
        make_run(root / f"full_seed{seed}", top1, seed=seed, epochs=64, epoch=64)
        _train_eval(root / f"full_seed{seed}", {m: v + 30 for m, v in top1.items()})
    right = {(0, 4): 25.0, (1, 4): 24.0, (0, 2): 27.0, (1, 2): 26.0}
    for (seed, bits), v in right.items():
        make_run(root / f"ded_seed{seed}_{bits}", {bits: v}, kind="dedicated", seed=seed, epochs=384, epoch=384)
        _train_eval(root / f"ded_seed{seed}_{bits}", {bits: 99.0})
    out = tmp_path / "cmp.csv"
    r = qdnn("compare", f"{root}/full_seed*", f"{root}/ded_seed*", "--out", out)
    assert r.exit_code == 0, r.output
    rows = {row["mode"]: row for row in read_csv(out)}
    assert sorted(rows) == ["2-bit", "4-bit"]  # the sides share no FP mode
    assert float(rows["4-bit"]["difference"]) == pytest.approx(((30 - 25) + (31 - 24)) / 2)
    assert rows["4-bit"]["per_seed"] == "+5.00 +7.00" and rows["4-bit"]["seeds"] == "0 1"
    assert float(rows["2-bit"]["left"]) == pytest.approx(28.5) and float(rows["2-bit"]["right"]) == pytest.approx(26.5)
    # gaps: left 30 in every seed; right 99 - 26.5 on average at 2 bits
    assert float(rows["2-bit"]["gap_difference"]) == pytest.approx(30 - (99 - 26.5))
    header, cells = _markdown_rows(qdnn("compare", f"{root}/full_seed*", f"{root}/ded_seed*").output)
    assert header[:4] == ["mode", "left", "right", "left − right"] and cells[0][3] == "**+6.00**"


def test_compare_says_unpaired_and_refuses_sides_it_cannot_compare(tmp_path):
    root = tmp_path / "runs"
    make_run(root / "a0", {32: 40.0, 2: 30.0}, seed=0)
    make_run(root / "b1", {32: 38.0, 2: 31.0}, seed=1, consistency=False)
    make_run(root / "b2", {32: 36.0, 2: 33.0}, seed=2, consistency=False, state="running", epoch=1)
    make_run(root / "c0", {32: 38.0, 2: 31.0}, seed=0, lr=0.01)
    make_run(root / "d0", {8: 20.0}, seed=0, kind="dedicated")
    _train_eval(root / "a0", {32: 90.0, 2: 80.0}, calibrated=(32,))  # FP's BN re-estimated: no gap to compare
    _train_eval(root / "b1", {32: 90.0, 2: 80.0})
    r = qdnn("compare", root / "a0", f"{root}/b*")
    assert r.exit_code == 0 and "left out 1 unfinished run" in r.output, r.output
    _, cells = _markdown_rows(r.output)
    assert cells[0][:5] == ["FP", "40.00", "38.00", "**+2.00**", "unpaired"] and cells[0][6:] == ["—"] * 3
    assert cells[1][3:] == ["**-1.00**", "unpaired", "0 against 1", "50.00", "49.00", "+1.00"]
    assert "left out 1 unfinished run" in r.output
    for args, said in (((root / "a0", f"{root}/nothing*"), "nothing matches"),
                       ((root / "a0", root / "missing"), "does not exist"),
                       ((root / "a0", f"{root}/[bc]*"), "holds 2 variants or budgets"),
                       ((root / "a0", root / "d0"), "share no bit mode"),
                       ((f"{root}/a*", root), "both sides hold"),
                       ((root / "a0", root / "c0", "--format", "xml"), "choose markdown or csv")):
        r = qdnn("compare", *args)
        assert r.exit_code == 2 and said in r.output and "Traceback" not in r.output, (said, r.output)
