"""Launchers: several runs at once, SLURM jobs through submitit (its local executor here),
requeue after a time-limit signal, Hydra-style multirun, qdnn status."""
import os

import pytest
import yaml

from conftest import tiny_overrides
from helpers import qdnn, qdnn_process, read_csv


def _cfg(run):
    return yaml.safe_load((run / "config.yaml").read_text())


def test_parallel_launcher_runs_the_grid_two_at_a_time(tmp_path):
    group = tmp_path / "abl"
    r = qdnn("ablate", "quickstart", "--launcher", "parallel", "--jobs", "2", *tiny_overrides(group, "trainer.epochs=1"))
    assert r.exit_code == 0, r.output
    runs = sorted(p.name for p in group.iterdir() if p.is_dir())
    assert runs == sorted(["full", "no_consistency", "shared_bn", "no_consistency_shared_bn"])
    threads = max(1, (os.cpu_count() or 1) // 2)
    for leaf in runs:
        assert (group / leaf / "results.csv").exists()
        assert _cfg(group / leaf)["trainer"]["num_threads"] == threads  # the cores are split between runs
    assert r.output.count("started (pid") == 4 and "[4/4 done]" in r.output


def test_submitit_path_runs_a_grid_and_status_lists_it(tmp_path, monkeypatch):
    monkeypatch.setenv("QDNN_SUBMITIT_CLUSTER", "local")
    group = tmp_path / "sweep"
    r = qdnn("sweep-bits", "quickstart", "--bits", "2,32", "--launcher", "slurm", *tiny_overrides(group, "trainer.epochs=1"))
    assert r.exit_code == 0, r.output
    for leaf in ("dedicated_2", "dedicated_32"):
        assert (group / leaf / "results.csv").exists()
        assert yaml.safe_load((group / leaf / "job.json").read_text())["launcher"] == "local"
    s = qdnn("status", group)
    assert s.exit_code == 0, s.output
    assert s.output.count("finished") == 2 and "1/1" in s.output


# Float comparison, exact: the job and the straight run are `qdnn` processes at one thread (`one_thread`): each sum
# has one order in both
@pytest.mark.numerics
def test_a_requeued_job_resumes_to_the_same_numbers(tmp_path, monkeypatch, one_thread):
    from qdnn_cli.launch import LaunchOptions, TrainJob, make_executor

    common = ["quant.bits=[2,32]", "trainer.epochs=3"]
    straight, job_run = tmp_path / "straight", tmp_path / "job"
    assert qdnn_process("train", "quickstart", *tiny_overrides(straight, *common)).exit_code == 0
    monkeypatch.setenv("QDNN_SUBMITIT_CLUSTER", "local")
    # the job waits in epoch 2 until its time-limit signal arrives (SLURM's, here submitit's
    # local stand-in, 45 s before a 1-minute limit); submitit then requeues it, and the new
    # job resumes from the run directory. However slow the machine, every attempt ends
    # either finished or requeued: the numbers cannot depend on the timing.
    monkeypatch.setenv("QDNN_TEST_PAUSE_AT", "2:2")
    executor = make_executor(tmp_path / ".submitit", LaunchOptions("slurm"))
    executor.update_parameters(timeout_min=1)
    executor._executor.update_parameters(signal_delay_s=45)  # the local executor's own knob
    from qdnn_cli.commands import train_one

    job = executor.submit(TrainJob("quickstart", tiny_overrides(job_run, *common), train_one))
    job.result()
    keep = ("epoch", "mode", "split", "loss", "top1", "top5", "lr")
    strip = lambda rows: [{k: x[k] for k in keep} for x in rows]  # noqa: E731
    assert strip(read_csv(straight / "metrics.csv")) == strip(read_csv(job_run / "metrics.csv"))
    assert (job_run / ".paused").exists()
    log = "".join(p.read_text() for p in (tmp_path / ".submitit").glob("*_log.*"))
    assert "Requeued" in log and "resumed from" in log


def test_multirun_sweeps_the_cartesian_product(tmp_path):
    group = tmp_path / "mr"
    r = qdnn("multirun", "quickstart", "optim.lr=0.05,0.1", "quant.bits=[2,32],[4,32]",
             *tiny_overrides(group, "trainer.epochs=1"))
    assert r.exit_code == 0, r.output
    runs = sorted(p.name for p in group.iterdir() if p.is_dir())
    assert runs == sorted(f"optim.lr-{lr}_quant.bits-{b}" for lr in ("0.05", "0.1") for b in ("2+32", "4+32"))
    cfg = _cfg(group / "optim.lr-0.1_quant.bits-4+32")
    assert cfg["optim"]["lr"] == 0.1 and cfg["quant"]["bits"] == [4, 32]
    r = qdnn("multirun", "quickstart", *tiny_overrides(tmp_path / "none"))
    assert r.exit_code == 2 and "sweep at least one key" in r.output


def test_slurm_without_slurm_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("QDNN_SUBMITIT_CLUSTER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    r = qdnn("sweep-bits", "quickstart", "--bits", "2", "--launcher", "slurm", *tiny_overrides(tmp_path / "s"))
    assert r.exit_code == 2 and "no SLURM on this machine" in r.output
    r = qdnn("ablate", "quickstart", "--launcher", "cloud", *tiny_overrides(tmp_path / "a"))
    assert r.exit_code == 2 and "--launcher 'cloud'" in r.output
