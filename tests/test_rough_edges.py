"""What a new user hit, each reproduced and fixed: reports and status over untidy folders,
signals to groups, run directories of one second, config inspection, small-data search,
and one-line answers to bad input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import tiny_overrides
from helpers import qdnn, read_csv

QDNN = str(Path(sys.executable).with_name("qdnn"))


def _train(out, *extra):
    r = qdnn("train", "quickstart", *tiny_overrides(out, "trainer.epochs=1", "quant.bits=[2,32]", *extra))
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("runs") / "seed0")


def _rows(report_md: str) -> list[str]:
    return [line for line in report_md.splitlines() if line.startswith("| quantizable")]


# ----------------------------------------------------------------------------- report
def test_a_copy_of_a_run_in_another_folder_counts_once(tmp_path, one_run):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(one_run, a / "run")
    shutil.copytree(one_run, b / "run")
    r = qdnn("report", a, b, "--out", tmp_path / "t.md", "--no-costs")
    assert r.exit_code == 0, r.output
    assert "skipped" in r.output and "the same run as" in r.output
    row = _rows((tmp_path / "t.md").read_text())[0]
    assert "| 1 " in row and "±" not in row  # one seed, no spread of a run with itself


def test_one_seed_shows_no_spread_and_the_logger_does_not_split_a_variant(tmp_path, one_run):
    shutil.copytree(one_run, tmp_path / "g" / "seed0")
    other = tmp_path / "g" / "seed1"
    shutil.copytree(one_run, other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["seed"], cfg["logger"] = 1, "tensorboard"  # another seed, another logger: the same variant
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = read_csv(other / "metrics.csv")
    for row in rows:
        row["top1"] = str(float(row["top1"]) + 1.0)
    with open(other / "metrics.csv", "w") as f:
        f.write(",".join(rows[0]) + "\n" + "".join(",".join(r.values()) + "\n" for r in rows))
    res = read_csv(other / "results.csv")
    with open(other / "results.csv", "w") as f:
        f.write(",".join(res[0]) + "\n" + "".join(
            ",".join(str(float(v) + 1.0) if k == "top1" else v for k, v in r.items()) + "\n" for r in res))
    assert qdnn("report", tmp_path / "g", "--out", tmp_path / "t.md", "--no-costs").exit_code == 0
    rows = _rows((tmp_path / "t.md").read_text())
    assert len(rows) == 1 and "| 2 " in rows[0] and "±" in rows[0]
    assert qdnn("report", tmp_path / "g" / "seed0", "--out", tmp_path / "one.md", "--no-costs").exit_code == 0
    assert "±" not in _rows((tmp_path / "one.md").read_text())[0]


@pytest.mark.parametrize("damage", ["config", "results"])
def test_a_damaged_run_is_skipped_with_one_warning_naming_its_file(tmp_path, one_run, damage):
    shutil.copytree(one_run, tmp_path / "g" / "good")
    bad = tmp_path / "g" / "bad"
    shutil.copytree(one_run, bad)
    (bad / "metrics.csv").write_text((bad / "metrics.csv").read_text() + "1,32,val\n")  # not a copy any more
    name = "config.yaml" if damage == "config" else "results.csv"
    text = (bad / name).read_text()
    (bad / name).write_text(text[: len(text) // 2] + ("\n  - [" if damage == "config" else "\n4,9"))
    for command in (["report", tmp_path / "g", "--no-costs"], ["status", tmp_path / "g"]):
        r = qdnn(*command)
        assert r.exit_code == 0, r.output
        warnings = [line for line in r.output.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1 and str(bad / name) in warnings[0], r.output
        assert "Traceback" not in r.output


# ----------------------------------------------------------------------------- status
def test_status_tells_a_killed_run_from_a_running_one(tmp_path, one_run):
    run = tmp_path / "run"
    shutil.copytree(one_run, run)
    state = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**state, "state": "running"}))
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, pathlib; from qdnn_cli.engine.checkpoint import RunLock\n"
        f"RunLock(pathlib.Path({str(run)!r})).acquire(); pathlib.Path({str(ready)!r}).write_text('1')\n"
        "while True: time.sleep(1)")])
    try:
        deadline = time.time() + 120
        while not ready.exists():  # not a race: waits for the holder to hold the lock
            assert time.time() < deadline and holder.poll() is None
            time.sleep(0.05)
        r = qdnn("status", run)
        assert r.exit_code == 0 and "running" in r.output and "interrupted" not in r.output, r.output
    finally:
        holder.kill()
        holder.wait()
    r = qdnn("status", run)  # the process is gone (kill -9): nobody holds the lock
    assert r.exit_code == 0 and "interrupted" in r.output, r.output


# ----------------------------------------------------------------------------- signals
def test_sigterm_to_the_parallel_launcher_reaches_its_runs_and_exits_75(tmp_path):
    from qdnn_cli.engine.interrupt import PAUSE_AT_ENV, RESUMABLE_EXIT

    group = tmp_path / "g"
    log = open(tmp_path / "launcher.log", "w")
    args = tiny_overrides(group, "trainer.epochs=2", "quant.bits=[2,32]", "data.train_size=64",
                          "trainer.batch_size=16")
    proc = subprocess.Popen([QDNN, "ablate", "quickstart", "--launcher", "parallel", "--jobs", "2", *args],
                            env={**os.environ, PAUSE_AT_ENV: "1:2"}, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while len(list(group.glob("*/.paused"))) < 2:  # both children wait at their pause for a signal
        assert time.time() < deadline and proc.poll() is None, (tmp_path / "launcher.log").read_text()
        time.sleep(0.05)
    pids = [int(p.read_text()) for p in group.glob("*/.paused")]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == RESUMABLE_EXIT, (tmp_path / "launcher.log").read_text()
    log.close()
    for pid in pids:  # every child has exited (no orphan still training under pid 1)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    for leaf in ("full", "no_consistency"):
        status = json.loads((group / leaf / "status.json").read_text())
        assert status["state"] == "stopped" and "signal" in status["message"], status
    r = qdnn("ablate", "quickstart", "--launcher", "parallel", "--jobs", "2", *args)  # resumes and finishes
    assert r.exit_code == 0, r.output
    assert all(json.loads((d / "status.json").read_text())["state"] == "finished" for d in group.iterdir()
               if (d / "status.json").exists())


def test_sigterm_while_the_run_is_being_built_stops_it_resumably(tmp_path, monkeypatch):
    import qdnn_cli.config as config
    from qdnn_cli.engine.interrupt import RESUMABLE_EXIT

    compose = config.compose

    def compose_then_signal(*a, **kw):  # the signal lands in the seconds before training
        cfg = compose(*a, **kw)
        os.kill(os.getpid(), signal.SIGTERM)
        return cfg
    def unhandled(signum, frame):  # what a default handler would do: kill the run with nothing written
        raise AssertionError("SIGTERM was not caught by the command")
    monkeypatch.setattr(config, "compose", compose_then_signal)
    previous = signal.signal(signal.SIGTERM, unhandled)
    out = tmp_path / "r"
    try:
        r = qdnn("train", "quickstart", *tiny_overrides(out))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert r.exit_code == RESUMABLE_EXIT, r.output
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "stopped" and "before training" in status["message"]
    monkeypatch.setattr(config, "compose", compose)
    assert qdnn("train", "quickstart", *tiny_overrides(out)).exit_code == 0  # the same command starts it


# ----------------------------------------------------------------------------- run directories
def test_two_runs_started_in_one_second_get_their_own_directories(tmp_path, monkeypatch):
    from qdnn_cli import config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config.time, "strftime", lambda fmt, *a: "20261130-120000")
    cfg = config.compose("quickstart", [])
    (a, fresh_a), (b, fresh_b) = config.make_run_dir(cfg), config.make_run_dir(cfg)
    assert a != b and fresh_a and fresh_b and a.is_dir() and b.is_dir()
    assert b.name == "20261130-120000-2"


def test_cuda_without_a_gpu_leaves_no_empty_run_directory(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "r"
    r = qdnn("train", "quickstart", *tiny_overrides(out, "trainer.device=cuda"))
    assert r.exit_code == 2 and "no CUDA device" in r.output
    assert not out.exists()


# ----------------------------------------------------------------------------- config and help
def test_qdnn_config_prints_the_composed_config_and_trains_nothing(tmp_path):
    r = qdnn("config", "quickstart", "trainer.epochs=7", f"out_dir={tmp_path / 'never'}")
    assert r.exit_code == 0, r.output
    cfg = yaml.safe_load(r.output)
    assert cfg["trainer"]["epochs"] == 7 and cfg["name"] == "quickstart"
    assert not (tmp_path / "never").exists()


def test_a_misspelt_key_gets_a_suggestion():
    r = qdnn("train", "quickstart", "trainer.epoch=3")
    assert r.exit_code == 2 and "did you mean 'trainer.epochs'?" in r.output
    r = qdnn("config", "quickstart", "quant.bitz=[2]")
    assert r.exit_code == 2 and "did you mean 'quant.bits'?" in r.output


def test_every_command_help_shows_an_example():
    from qdnn_cli.cli import app

    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert len(names) >= 10
    for name in names:
        r = qdnn(name, "--help")
        assert r.exit_code == 0 and "Example: qdnn" in r.output, name


# ----------------------------------------------------------------------------- search on small data
def test_search_with_its_defaults_runs_on_a_quickstart_model(tmp_path):
    run = tmp_path / "qs"
    r = qdnn("train", "quickstart", "trainer.epochs=1", "trainer.progress=false", "trainer.device=cpu", f"out_dir={run}")
    assert r.exit_code == 0, r.output
    r = qdnn("search", run, "--budget-bops", "3-bit", "--candidates", "4", "--device", "cpu")
    assert r.exit_code == 0, r.output
    summary = json.loads(next(run.glob("search-*/summary.json")).read_text())
    assert "of 2000 asked" in json.dumps(summary) or "re-ranked on" in json.dumps(summary)


# ----------------------------------------------------------------------------- one-line answers
def test_a_plain_pickle_is_refused_without_torch_warnings(tmp_path):
    import pickle

    path = tmp_path / "plain.pt"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    r = subprocess.run([QDNN, "eval", str(path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: refusing"), lines


def test_negative_calibration_and_unknown_bits_are_named(one_run):
    r = qdnn("eval", one_run, "--calibrate-bn", "-1")
    assert r.exit_code == 2 and "--calibrate-bn -1" in r.output and ">= 0" in r.output
    r = qdnn("sweep-bits", "quickstart", "--bits", "2,99")
    assert r.exit_code == 2 and "'99' is not a bit mode" in r.output
