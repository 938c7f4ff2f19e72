"""Crash safety, safe checkpoint loading and every bad input answered with one line."""
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from helpers import qdnn, qdnn_process, read_csv, write_folder_tree
from qdnn_cli.engine.checkpoint import CheckpointError, RunLock, atomic_save, safe_load
from qdnn_cli.engine.loop import KILL_AT_ENV

QDNN = str(Path(sys.executable).with_name("qdnn"))


def _one_error_line(result):
    lines = [x for x in result.output.strip().splitlines() if x.strip()]
    return len(lines) >= 1 and lines[-1].startswith("error:") and "Traceback" not in result.output


# ----------------------------------------------------------------------------- kill -9
# Float comparison, exact: every run is a `qdnn` process at one thread (`one_thread`), so each sum
# has one order in both
@pytest.mark.numerics
def test_kill_9_mid_epoch_then_resume_equals_uninterrupted(tmp_path, one_thread):
    common = ["data.train_size=768", "trainer.batch_size=16", "trainer.epochs=3", "model.kwargs.width=16",
              "quant.bits=[2,32]"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert qdnn_process("train", "quickstart", *tiny_overrides(straight, *common)).exit_code == 0

    # the engine's fault hook kills the process with SIGKILL after step 20 of epoch 2:
    # mid-epoch on any machine, however fast (no sleep races the run)
    env = {**os.environ, KILL_AT_ENV: "2:20"}
    proc = subprocess.run([QDNN, "train", "quickstart", *tiny_overrides(killed, *common)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "results.csv").exists()
    assert safe_load(killed / "checkpoint.pt")["epoch"] == 1  # the last finished epoch, readable
    assert [r["epoch"] for r in read_csv(killed / "metrics.csv")][-1] == "1"

    r = qdnn_process("train", "quickstart", *tiny_overrides(killed, *common))
    assert r.exit_code == 0, r.output
    keep = ("epoch", "mode", "split", "loss", "top1", "top5", "lr")
    strip = lambda rows: [{k: x[k] for k in keep} for x in rows]
    assert strip(read_csv(straight / "metrics.csv")) == strip(read_csv(killed / "metrics.csv"))
    a, b = safe_load(straight / "checkpoint.pt")["model"], safe_load(killed / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- atomic writes
def test_atomic_save_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_save({"epoch": 1, "w": torch.ones(3)}, path)

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(CheckpointError, match="disk is full; the previous checkpoint.pt is intact"):
        atomic_save({"epoch": 2}, path)
    monkeypatch.undo()
    assert safe_load(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left behind


# ----------------------------------------------------------------------------- safe loading
class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_malicious_checkpoint_is_refused_and_executes_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Evil(str(marker))}, evil)
    with pytest.raises(CheckpointError, match="refusing"):
        safe_load(evil)
    r = qdnn("eval", evil)
    assert r.exit_code == 2 and _one_error_line(r) and "refusing" in r.output
    assert not marker.exists()


def test_truncated_and_foreign_checkpoints_are_one_line(tmp_path):
    run = tmp_path / "run"
    assert qdnn("train", "quickstart", *tiny_overrides(run, "trainer.epochs=1")).exit_code == 0
    data = (run / "checkpoint.pt").read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: len(data) // 2])
    foreign = tmp_path / "foreign.pt"
    foreign.write_text("hello, not a checkpoint")
    readme = tmp_path / "README.md"
    readme.write_text("# notes\n")
    for path, says in ((trunc, "not a readable checkpoint"), (foreign, "is not a checkpoint"),
                       (readme, "is not a checkpoint")):
        r = qdnn("eval", path)
        assert r.exit_code == 2 and _one_error_line(r) and says in r.output, r.output
        assert "pickled" not in r.output
    # a corrupt checkpoint in a run directory stops resumption with the same message
    (run / "checkpoint.pt").write_bytes(data[:100])
    r = qdnn("train", "quickstart", "--extend-epochs", *tiny_overrides(run, "trainer.epochs=2"))
    assert r.exit_code == 2 and "not a readable checkpoint" in r.output


# ----------------------------------------------------------------------------- NaN
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    # epoch 1 trains normally, then the step schedule multiplies the lr by 1e30
    r = qdnn("train", "quickstart", *tiny_overrides(run, "trainer.epochs=3", "sched.name=step",
                                                    "sched.milestones=[1]", "sched.gamma=1e30"))
    assert r.exit_code == 2, r.output
    assert _one_error_line(r) and "loss became" in r.output.strip().splitlines()[-1]
    assert "epoch 2" in r.output and "last good checkpoint (epoch 1)" in r.output
    assert safe_load(run / "checkpoint.pt")["epoch"] == 1
    assert '"failed"' in (run / "status.json").read_text()


# ----------------------------------------------------------------------------- lock
def test_second_writer_is_refused_while_a_run_holds_the_directory(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):
        r = qdnn("train", "quickstart", *tiny_overrides(run))
        assert r.exit_code == 2 and "is in use by pid" in r.output
    assert not (run / "config.yaml").exists()  # nothing written by the refused run
    assert qdnn("train", "quickstart", *tiny_overrides(run, "trainer.epochs=1")).exit_code == 0


# ----------------------------------------------------------------------------- bad inputs
def test_resume_from_a_run_of_another_model_is_refused(tmp_path):
    run = tmp_path / "run"
    assert qdnn("train", "quickstart", *tiny_overrides(run, "trainer.epochs=1")).exit_code == 0
    before = (run / "metrics.csv").read_text()
    other = [o for o in tiny_overrides(run) if not o.startswith("model")] + ["model=resnet20"]
    r = qdnn("train", "quickstart", *other)
    assert r.exit_code == 2 and "model.name='tiny'" in r.output and "another out_dir" in r.output
    assert (run / "metrics.csv").read_text() == before  # nothing lost


def test_resuming_a_run_saved_before_a_key_existed_compares_the_old_behaviour(tmp_path):
    """A run saved by an older qdnn lacks loss.top_weight: it trained with the schema's 1,
    so today's default 4 is a different loss, refused; asking for 1 resumes it."""
    import yaml

    run = tmp_path / "run"
    assert qdnn("train", "quickstart", *tiny_overrides(run, "trainer.epochs=1")).exit_code == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["loss"].pop("top_weight") == 4.0  # today's default
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    before = (run / "metrics.csv").read_text()
    r = qdnn("train", "quickstart", *tiny_overrides(run, "trainer.epochs=1"))
    assert r.exit_code == 2 and "loss.top_weight=1.0" in r.output and "loss.top_weight=4.0" in r.output
    assert (run / "metrics.csv").read_text() == before  # nothing lost
    r = qdnn("train", "quickstart", *tiny_overrides(run, "trainer.epochs=1", "loss.top_weight=1"))
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("case,needle", [
    ("missing_root", "does not exist"),
    ("empty_class", "has no images"),
    ("unreadable", "cannot read image"),
    ("mixed_sizes", "in-memory folders need one image size"),
    ("too_small_for_model", "needs images of at least 64px"),
    ("missing_split", "split folder"),
])
def test_bad_data_inputs_are_one_line(tmp_path, case, needle):
    root = tmp_path / "tree"
    extra = []
    if case != "missing_root":
        write_folder_tree(root, classes=2, per_class=(4, 2), size=8)
    if case == "empty_class":
        (root / "train" / "cls9").mkdir()
    elif case == "unreadable":
        (root / "train" / "cls0" / "0.png").write_bytes(b"not a png")
    elif case == "mixed_sizes":
        from PIL import Image

        Image.new("RGB", (12, 12)).save(root / "train" / "cls1" / "big.png")
    elif case == "too_small_for_model":
        extra = ["model=resnet18"]
    elif case == "missing_split":
        extra = ["data.val_split=test"]
    r = qdnn("train", "quickstart", "data=folder", f"data.root={root}", "trainer.epochs=1", "trainer.device=cpu",
             "trainer.progress=false", f"out_dir={tmp_path / 'run'}", *extra)
    assert r.exit_code == 2 and _one_error_line(r) and needle in r.output, r.output


# ----------------------------------------------------------------------------- mid-epoch
def _stream_tree(root):
    # 72 px images: above data.max_in_memory_size (64), so they stream through the DataLoader
    return write_folder_tree(root, classes=3, per_class=(24, 6), size=72)


def _stream_overrides(tree, out, *extra):
    return ["data=folder", f"data.root={tree}", "data.image_size=32", "model=tiny", "model.kwargs.width=8",
            "quant.bits=[2,32]", "trainer.epochs=2", "trainer.batch_size=8", "trainer.eval_batch_size=18",
            "trainer.device=cpu", "trainer.progress=false", f"out_dir={out}", *extra]


# Float comparison, exact: all three runs are `qdnn` processes at one thread (OMP_NUM_THREADS=1), so each
# sum has one order in all of them. (Not the one_thread fixture: a process whose thread count changed
# after OpenMP started must not fork DataLoader workers; it crashed here.)
@pytest.mark.numerics
def test_streamed_data_kill_9_mid_epoch_resumes_to_exactly_the_same_numbers(tmp_path):
    tree = _stream_tree(tmp_path / "tree")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    one = {**os.environ, "OMP_NUM_THREADS": "1"}

    def train(*overrides, env=one):
        return subprocess.run([QDNN, "train", "quickstart", *overrides], env=env, capture_output=True, text=True,
                              timeout=600)
    assert train(*_stream_overrides(tree, straight, "data.workers=0")).returncode == 0
    # 72 images / batch 8 = 9 steps per epoch; a checkpoint after every step, killed after step 5
    # of epoch 2 before its checkpoint (the last one is after step 4), with 2 loader workers
    # this time: the batches cannot depend on the workers
    common = _stream_overrides(tree, killed, "data.workers=2", "trainer.checkpoint_every_minutes=1e-9")
    proc = train(*common, env={**one, KILL_AT_ENV: "2:5"})
    assert proc.returncode == -signal.SIGKILL
    ck = safe_load(killed / "checkpoint.pt")
    assert ck["epoch"] == 1 and ck["position"]["step"] == 4
    proc = train(*common)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "step 4 of epoch 2" in proc.stdout
    keep = ("epoch", "mode", "split", "loss", "top1", "top5", "lr", "images")
    strip = lambda rows: [{k: x[k] for k in keep} for x in rows]  # noqa: E731
    assert strip(read_csv(straight / "metrics.csv")) == strip(read_csv(killed / "metrics.csv"))
    a, b = safe_load(straight / "checkpoint.pt")["model"], safe_load(killed / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# Float comparison, exact: as the kill -9 test above (every run a process at one thread)
@pytest.mark.numerics
def test_sigterm_writes_a_mid_epoch_checkpoint_and_exits_resumably(tmp_path, one_thread):
    import time

    from qdnn_cli.engine.interrupt import PAUSE_AT_ENV, RESUMABLE_EXIT

    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    common = ["data.train_size=96", "trainer.batch_size=16", "trainer.epochs=3", "quant.bits=[2,32]"]
    assert qdnn_process("train", "quickstart", *tiny_overrides(straight, *common)).exit_code == 0
    proc = subprocess.Popen([QDNN, "train", "quickstart", *tiny_overrides(stopped, *common)],
                            env={**os.environ, PAUSE_AT_ENV: "2:3"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (stopped / ".paused").exists():  # not a race: the run cannot get past its pause
        assert time.time() < deadline and proc.poll() is None, "the run never reached its pause"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # what SLURM sends before a time limit
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == RESUMABLE_EXIT, err
    assert "stopped on signal" in err and "epoch 2, step 3" in err
    ck = safe_load(stopped / "checkpoint.pt")
    assert ck["epoch"] == 1 and ck["position"]["step"] == 3
    assert '"stopped"' in (stopped / "status.json").read_text()
    r = qdnn_process("train", "quickstart", *tiny_overrides(stopped, *common))
    assert r.exit_code == 0, r.output
    keep = ("epoch", "mode", "split", "loss", "top1", "top5", "lr")
    strip = lambda rows: [{k: x[k] for k in keep} for x in rows]  # noqa: E731
    assert strip(read_csv(straight / "metrics.csv")) == strip(read_csv(stopped / "metrics.csv"))
