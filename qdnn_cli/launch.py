"""Launchers for groups of runs (``ablate``, ``sweep-bits``, ``reproduce``, ``multirun``).

* ``local`` (default): one run after another in this process.
* ``parallel --jobs N``: N runs at once on this machine, each its own ``qdnn train``
  process; on a GPU machine they share the GPUs round-robin over ``CUDA_VISIBLE_DEVICES``
  (a CIFAR ResNet-20 step is launch-bound, so runs overlap well); on a CPU the cores are
  split between them (``trainer.num_threads``).
* ``packed --jobs N``: N runs at a time in this process as one computation: every layer
  of the N models runs as one grouped convolution over runs × bit modes, each run with
  its own weights, data, optimizer and run directory (:mod:`qdnn_cli.engine.pack`).
  Runs that differ in architecture, batch size or quantizer go to different packs.
* ``slurm``: one job per run through submitit (the scheduler is SLURM's, not ours). A
  job that reaches its time limit is requeued by submitit's checkpointing protocol and
  resumes from its run directory's checkpoint. Multi-GPU jobs get torchrun's
  environment from submitit. ``QDNN_SUBMITIT_CLUSTER=local`` runs the same path with
  submitit's local executor (what the tests do).

Every run writes to its own directory, so a group can always be re-launched: finished
runs are skipped and interrupted ones resume, whatever launcher ran them before.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .words import count

LAUNCHERS = ("local", "parallel", "packed", "slurm")


class LaunchError(RuntimeError):
    """Some runs of a group failed (each run's own log says why)."""


@dataclass
class LaunchOptions:
    name: str = "local"
    jobs: int = 1
    partition: str | None = None
    gpus_per_node: int = 0
    nodes: int = 1
    timeout_min: int = 24 * 60
    slurm: dict = field(default_factory=dict)   # extra submitit slurm_* parameters

    def check(self) -> None:
        if self.name not in LAUNCHERS:
            raise ValueError(f"--launcher {self.name!r}: choose one of {', '.join(LAUNCHERS)}")
        if self.jobs < 1 or self.nodes < 1 or self.gpus_per_node < 0 or self.timeout_min < 1:
            raise ValueError("--jobs, --nodes and --timeout-min must be positive, --gpus-per-node >= 0")


def parse_slurm_options(items: list[str]) -> dict:
    """``--slurm key=value`` (repeatable) → submitit's ``slurm_<key>`` parameters."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--slurm {item!r}: give key=value, e.g. --slurm mem_gb=64")
        k, v = item.split("=", 1)
        out[k if k.startswith("slurm_") else f"slurm_{k}"] = int(v) if v.isdigit() else v
    return out


# ----------------------------------------------------------------------------- parallel
def _gpu_ids() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable CUDA: a CPU machine
        return []


def run_parallel(experiment: str, plans: list[tuple[str, list[str]]], group: Path, jobs: int, console) -> None:
    """N ``qdnn train`` processes at once. SIGTERM/SIGUSR1 to this process reaches every
    child (each saves a mid-epoch checkpoint and exits 75); it waits for them, starts no
    more, and stops with :class:`RunInterrupted` (exit 75): the same command resumes."""
    from .engine.interrupt import RunInterrupted, StopSignals

    with StopSignals() as stop:
        _run_parallel(experiment, plans, group, jobs, console, stop)
    if stop.requested:
        raise RunInterrupted(f"stopped on signal {stop.requested}: the runs started saved where they were; "
                             "run the same command again to resume")


def _run_parallel(experiment, plans, group: Path, jobs: int, console, stop) -> None:
    import signal

    gpus = _gpu_ids()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    queue, running, failed, done = list(enumerate(plans)), {}, [], 0
    forwarded = False
    while queue or running:
        if stop.requested and not forwarded:
            for proc in running:
                proc.send_signal(signal.SIGTERM)
            queue, forwarded = [], True
            console.print(f"signal {stop.requested}: asked {len(running)} running runs to save and stop")
        while queue and len(running) < jobs:
            i, (leaf, overrides) = queue.pop(0)
            slot = next(s for s in range(jobs) if s not in {v[1] for v in running.values()})
            env = dict(os.environ)
            extra = ["trainer.progress=false"]
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
            elif not any(o.startswith("trainer.num_threads=") for o in overrides):
                extra.append(f"trainer.num_threads={threads}")
            (group / leaf).mkdir(parents=True, exist_ok=True)
            log = open(group / leaf / "launch.log", "a")
            proc = subprocess.Popen([sys.executable, "-m", "qdnn_cli.cli", "train", experiment, *overrides, *extra],
                                    stdout=log, stderr=subprocess.STDOUT, env=env)
            log.close()
            running[proc] = (leaf, slot)
            given = [o.split("=", 1)[1] for o in overrides + extra if o.startswith("trainer.num_threads=")]
            where = f"GPU {env['CUDA_VISIBLE_DEVICES']}" if gpus else f"{given[-1]} CPU threads"
            console.print(f"[{i + 1}/{len(plans)}] {leaf}: started (pid {proc.pid}, {where})")
        for proc in [p for p in running if p.poll() is not None]:
            leaf, _ = running.pop(proc)
            done += 1
            if proc.returncode not in (0, 75):  # 75: stopped on a signal, resumable
                failed.append(leaf)
            state = ("finished" if proc.returncode == 0 else "stopped, resumable" if proc.returncode == 75
                     else f"failed (exit {proc.returncode})")
            console.print(f"{leaf}: {state} [{done}/{len(plans)} done]")
        time.sleep(0.2)
    if failed:
        raise LaunchError(f"{len(failed)} of {count(len(plans), 'run')} failed: "
                          + ", ".join(f"{leaf} (see {group / leaf / 'launch.log'})" for leaf in failed))


# ----------------------------------------------------------------------------- packed
def run_packed(experiment: str, plans: list[tuple[str, list[str]]], group: Path, size: int, console,
               on_results=None) -> None:
    """Train ``plans`` in packs of up to ``size`` runs that can share one (same
    architecture, batch, quantizer, data shape), in plan order within each kind."""
    from .engine.interrupt import early_signals

    with early_signals():  # a SIGTERM before a pack's first step still stops it resumably
        _run_packed(experiment, plans, group, size, console, on_results)


def _run_packed(experiment, plans, group: Path, size: int, console, on_results) -> None:
    from .config import compose, make_run_dir
    from .engine.interrupt import RunInterrupted
    from .engine.pack import pack_key, run_pack

    kinds: dict[tuple, list] = {}
    for leaf, overrides in plans:
        cfg = compose(experiment, overrides)
        kinds.setdefault(pack_key(cfg), []).append((leaf, overrides, cfg))
    packs = [runs[i:i + size] for runs in kinds.values() for i in range(0, len(runs), size)]
    failed = []
    for k, pack in enumerate(packs, 1):
        leaves = [leaf for leaf, _, _ in pack]
        console.rule(f"pack {k}/{len(packs)}: {', '.join(leaves)}")
        made = [make_run_dir(cfg, group, leaf) for leaf, _, cfg in pack]
        dirs = [d for d, _ in made]
        _print_pack_config(console, [cfg for _, _, cfg in pack], leaves)
        try:
            results, diverged = run_pack([cfg for _, _, cfg in pack], dirs, [ov for _, ov, _ in pack], leaves,
                                         console, [new for _, new in made])
        except RunInterrupted:
            raise
        except Exception as e:  # noqa: BLE001 - one failed pack: report it, train the others
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            failed.append(f"pack {k} ({', '.join(leaves)}): {message}")
            console.print(f"pack {k}: failed: {message}")
            continue
        for leaf, run_dir, result in zip(leaves, dirs, results):
            if on_results is not None and result:
                on_results(leaf, run_dir, result)
        failed += [f"{leaf} diverged ({why.split(';')[0]}; see {group / leaf / 'status.json'})"
                   for leaf, why in diverged]
    if failed:
        raise LaunchError("not every run finished: " + "; ".join(failed))


def _print_pack_config(console, cfgs: list, leaves: list[str]) -> None:
    """The first run's config in full, and for each other run what differs from it."""
    from omegaconf import OmegaConf

    from .engine import _flatten

    console.rule(f"config of {leaves[0]}")
    console.print(OmegaConf.to_yaml(cfgs[0], resolve=True).rstrip(), markup=False)
    first = _flatten(OmegaConf.to_container(cfgs[0], resolve=True))
    for leaf, cfg in zip(leaves[1:], cfgs[1:]):
        flat = _flatten(OmegaConf.to_container(cfg, resolve=True))
        diffs = [f"{k}={flat.get(k)!r}" for k in sorted(set(first) | set(flat))
                 if first.get(k) != flat.get(k) and k != "out_dir"]
        console.print(f"{leaf}: as {leaves[0]}, except {', '.join(diffs) if diffs else 'nothing'}", markup=False)
    console.rule()


# ----------------------------------------------------------------------------- submitit
class TrainJob:
    """What one SLURM job runs: ``train(experiment, overrides)`` for one run directory
    (the command layer passes its ``train_one``; launchers sit below the commands and
    import none of them). Follows submitit's checkpointing protocol: on a time-limit
    signal it asks to be requeued as itself, and the requeued job resumes from the run
    directory's checkpoint. ``train`` is pickled by reference: a module-level function."""

    def __init__(self, experiment: str, overrides: list[str], train, distributed: bool = False):
        self.experiment, self.overrides, self.train, self.distributed = experiment, list(overrides), train, distributed

    def __call__(self) -> dict:
        if self.distributed:  # torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR, ...) from SLURM's
            import submitit

            # every task sees all the node's GPUs and picks LOCAL_RANK's, as under torchrun
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        _, results = self.train(self.experiment, self.overrides, quiet_config=True)
        return {m: r["top1"] for m, r in (results or {}).items()}

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(TrainJob(self.experiment, self.overrides, self.train,
                                                           self.distributed))


def make_executor(folder: Path, opts: LaunchOptions):
    import shutil

    import submitit

    cluster = os.environ.get("QDNN_SUBMITIT_CLUSTER")
    if cluster is None and shutil.which("sbatch") is None:
        raise ValueError("--launcher slurm: no SLURM on this machine (sbatch not found); "
                         "QDNN_SUBMITIT_CLUSTER=local runs the same path locally")
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    tasks = max(1, opts.gpus_per_node)
    params = {"timeout_min": opts.timeout_min, "nodes": opts.nodes, "tasks_per_node": tasks}
    if executor.cluster == "slurm":
        params.update({"slurm_partition": opts.partition, "gpus_per_node": opts.gpus_per_node or None,
                       **opts.slurm})
        params = {k: v for k, v in params.items() if v is not None}
    executor.update_parameters(**params)
    return executor


def run_submitit(experiment: str, plans: list[tuple[str, list[str]]], group: Path, opts: LaunchOptions,
                 console, train, wait: bool = True) -> list:
    executor = make_executor(group / ".submitit", opts)
    distributed = opts.nodes * max(1, opts.gpus_per_node) > 1
    jobs = []
    for leaf, overrides in plans:
        job = executor.submit(TrainJob(experiment, overrides, train, distributed))
        (group / leaf).mkdir(parents=True, exist_ok=True)
        (group / leaf / "job.json").write_text(json.dumps({"job_id": str(job.job_id), "launcher": executor.cluster}))
        console.print(f"{leaf}: submitted as job {job.job_id} ({executor.cluster})")
        jobs.append((leaf, job))
    if not wait:
        return [j for _, j in jobs]
    failed = []
    for leaf, job in jobs:
        try:
            job.result()
            console.print(f"{leaf}: finished (job {job.job_id})")
        except Exception as e:  # noqa: BLE001 - a failed job: report it, keep the others
            failed.append(f"{leaf} (job {job.job_id}: {str(e).strip().splitlines()[-1] if str(e).strip() else e})")
    if failed:
        raise LaunchError(f"{len(failed)} of {len(jobs)} jobs failed: " + "; ".join(failed))
    return [j for _, j in jobs]
