"""Find run directories and collect them into one pandas DataFrame, a row per run × mode.

Each run is described by its own saved config: the keys that define what was trained
(quantizers, loss, BN, model, data, recipe) become its *variant* — named by what differs
from its experiment's defaults — and its *budget* (epochs, data fraction). Keys that
only say how or where it ran (device, threads, paths, progress) are left out, so runs
that differ only in those are the same variant.
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pandas as pd
import yaml

from ..errors import InputError
from ..quant import mode_from_label, parse_mode

# keys that do not change what a run measures
NON_VARIANT = ("name", "seed", "out_dir", "logger", "data.root", "data.download", "data.workers", "trainer.device",
               "trainer.progress", "trainer.num_threads", "trainer.log_every", "trainer.eval_every",
               "trainer.stop_after", "trainer.eval_batch_size", "trainer.compile", "trainer.compile_scope", "trainer.mode_batch",
               "trainer.channels_last", "trainer.max_steps_per_epoch", "trainer.kind", "model.init_sha256",
               "trainer.checkpoint_every_minutes", "model.init_passes")
BUDGET = ("trainer.epochs", "data.train_fraction")
# readable names for the differences people ablate most
FRIENDLY = {
    ("loss.consistency", False): "no consistency",
    ("quant.bit_specific_bn", False): "shared BN",
    ("quant.bn", "shared"): "shared BN",
    ("quant.bn", "private_stats"): "private BN statistics",
    ("loss.target", "next"): "next-mode target",
    ("trainer.mode_sampling", "sandwich"): "sandwich sampling",
    ("model.init_from", "a trained run"): "started from a trained run",
}


@dataclass
class RunRecord:
    path: Path
    name: str            # experiment name
    kind: str            # quantizable | dedicated
    seed: int
    modes: list[int]
    state: str           # finished | running | stopped | failed | unknown
    epoch: int
    epochs: int
    top1: dict[int, float] = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state == "finished"


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + ".") if v else {key: "{}"})  # values must be hashable
        else:
            out[key] = tuple(v) if isinstance(v, list) else v
    return out


@lru_cache(maxsize=None)
def experiment_defaults(name: str, data_name: str | None = None) -> dict | None:
    """Flattened config of ``qdnn train <name>`` with no overrides (with ``data=<data_name>``
    when the run used another data group); None if it is no experiment."""
    from omegaconf import OmegaConf

    from ..config import ConfigError, compose, conf_dir, experiments

    if name not in experiments():
        return None
    extra = [f"data={data_name}"] if data_name and (conf_dir() / "data" / f"{data_name}.yaml").is_file() else []
    try:
        return flatten(OmegaConf.to_container(compose(name, extra), resolve=False))
    except ConfigError:  # e.g. data.root is required (???): compare what is there
        cfg = compose(name, extra + ["data.root=unset"])
        return flatten(OmegaConf.to_container(cfg, resolve=False))


class DamagedRun(InputError):
    """A run directory whose files cannot be read (truncated config, cut CSV)."""


def _process_gone(path: Path) -> bool:
    """True when no process holds the run directory's lock: a run whose status still
    says "running" was killed (kill -9, a lost node) without a word."""
    import fcntl
    import os

    from ..engine.checkpoint import RunLock

    lock = path / ".lock"
    if not lock.is_file() or str(lock.resolve()) in RunLock._held:  # ours: running in this process
        return not lock.is_file()
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held by a live process
        return False
    finally:
        os.close(fd)  # (this also drops the probe's own lock)
    return True


def read_run(path: Path) -> RunRecord | None:
    """The run in ``path`` (None if it holds no config.yaml); a :class:`DamagedRun` names
    the file that cannot be read."""
    cfg_path = path / "config.yaml"
    if not cfg_path.is_file():
        return None
    try:
        return _read_run(path, cfg_path)
    except DamagedRun:
        raise
    except (yaml.YAMLError, KeyError, ValueError, TypeError, AttributeError) as e:  # the config's keys or YAML
        detail = str(e).strip().splitlines()[0][:80] if str(e).strip() else ""
        raise DamagedRun(f"{cfg_path}: cannot be read ({type(e).__name__}{': ' + detail if detail else ''})") from None


def _csv_rows(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            if None in r or None in r.values():  # a cut line: fewer or more fields than the header
                raise ValueError("a line has the wrong number of fields")
        return rows
    except (ValueError, csv.Error) as e:
        raise DamagedRun(f"{path}: cannot be read ({e})") from None


def _read_run(path: Path, cfg_path: Path) -> RunRecord:
    cfg = yaml.safe_load(cfg_path.read_text())
    if not isinstance(cfg, dict) or not isinstance(cfg.get("trainer"), dict) or "quant" not in cfg:
        raise DamagedRun(f"{cfg_path}: cannot be read (not a whole qdnn run config)")
    status = {}
    if (path / "status.json").is_file():
        try:
            status = json.loads((path / "status.json").read_text())
        except json.JSONDecodeError:
            status = {}
    state = status.get("state", "unknown")
    if state == "running" and _process_gone(path):
        state = "interrupted"  # killed without a word: resumable from its last checkpoint
    top1: dict = {}
    epoch = int(status.get("epoch", 0))
    results = path / "results.csv"
    if state == "finished" and results.is_file():
        try:
            top1 = {parse_mode(r["mode"]): float(r["top1"]) for r in _csv_rows(results)}
        except (KeyError, ValueError) as e:
            raise DamagedRun(f"{results}: cannot be read ({type(e).__name__}: {e})") from None
    elif (path / "metrics.csv").is_file():  # incomplete: last evaluated epoch
        try:
            rows = [r for r in _csv_rows(path / "metrics.csv") if r["split"] == "val"]
        except KeyError as e:
            raise DamagedRun(f"{path / 'metrics.csv'}: cannot be read (no column {e})") from None
        if rows:
            epoch = max(int(r["epoch"]) for r in rows)
            top1 = {parse_mode(r["mode"]): float(r["top1"]) for r in rows if int(r["epoch"]) == epoch}
        if state == "finished":
            state = "unknown"
    return RunRecord(path, cfg.get("name", "custom"), cfg["trainer"]["kind"], int(cfg.get("seed", 0)),
                     list(cfg["quant"]["bits"]), state, epoch, int(cfg["trainer"]["epochs"]), top1, cfg)


def _warn(message: str) -> None:
    import sys

    print(f"warning: {message}", file=sys.stderr)


def _identity(path: Path) -> bytes:
    """What makes two run directories one run: the same config and the same metrics."""
    import hashlib

    h = hashlib.sha256()
    for name in ("config.yaml", "metrics.csv"):
        f = path / name
        h.update(f.read_bytes() if f.is_file() else b"-")
    return h.digest()


def find_runs(paths, warn=_warn) -> list[RunRecord]:
    """Every run directory (a folder with config.yaml) at or under the given paths. A
    damaged one, or a copy of a run already found (same config and metrics), is skipped
    with one ``warn`` line naming it."""
    seen, identities, runs = set(), {}, []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        candidates = [p] if (p / "config.yaml").is_file() else sorted(c.parent for c in p.rglob("config.yaml"))
        for c in candidates:
            c = c.resolve()
            if c in seen:
                continue
            seen.add(c)
            identity = _identity(c)
            if identity in identities:
                warn(f"skipped {c}: the same run as {identities[identity]} (identical config.yaml and metrics.csv)")
                continue
            try:
                rec = read_run(c)
            except DamagedRun as e:
                warn(f"skipped a damaged run: {e}")
                continue
            if rec is not None:
                identities[identity] = c
                runs.append(rec)
    return runs


def _variant_keys(run: RunRecord) -> dict:
    flat = {k: v for k, v in flatten(run.config).items() if not k.startswith(NON_VARIANT) and k not in BUDGET}
    if run.kind == "dedicated":  # its one bit-width is the column, not the variant
        flat.pop("quant.bits", None)
    if flat.get("model.init_from"):  # which run (one per seed) is not the variant; starting from one is
        flat["model.init_from"] = "a trained run"
    if flat.get("quant.bn") is not None:  # quant.bn decides; bit_specific_bn is its older spelling
        flat.pop("quant.bit_specific_bn", None)
    return flat


def _defaults(name: str, runs: list[RunRecord]) -> dict:
    """The experiment's defaults; for a config that is no experiment of this qdnn, the
    most common value of each key among its runs."""
    data_names = {r.config.get("data", {}).get("name") for r in runs if r.name == name}
    known = experiment_defaults(name, data_names.pop() if len(data_names) == 1 else None)
    if known is not None:  # the data group's own defaults, but another data set is still said
        return {**known, "data.name": experiment_defaults(name)["data.name"]}
    counts: dict = {}
    for r in runs:
        if r.name == name:
            for k, v in _variant_keys(r).items():
                counts.setdefault(k, Counter())[v] += 1
    return {k: c.most_common(1)[0][0] for k, c in counts.items()}


def _differences(run: RunRecord, defaults: dict) -> dict:
    """Variant keys of ``run`` whose values differ from ``defaults``."""
    return {k: v for k, v in _variant_keys(run).items() if defaults.get(k, object()) != v}


def _describe(key: str, value) -> str:
    if (key, value) in FRIENDLY:
        return FRIENDLY[(key, value)]
    if isinstance(value, tuple):
        value = "[" + ",".join(map(str, value)) + "]"
    return f"{key}={value}"


def _searched_rows(run: RunRecord, variant: str, budget: str) -> list[dict]:
    """``qdnn search`` results saved beside the run's checkpoint: the searched
    configuration's validation top-1, in the column of the uniform mode whose cost was
    the budget (``--budget-bops 3-bit`` lands under "3-bit")."""
    rows = []
    for summary_path in sorted(run.path.glob("search-*/summary.json")):
        try:
            summary = json.loads(summary_path.read_text())
            mode = mode_from_label(summary["budget"])
            top1 = float(summary["val"][0]["top1"])
        except (ValueError, KeyError, IndexError, json.JSONDecodeError):
            continue  # a budget that is no mode, or an unfinished search
        kind = "BOPs" if summary.get("budget_kind") == "bops" else "size"
        rows.append({"experiment": run.name, "kind": run.kind, "variant": f"{variant}, searched per-layer bits "
                     f"(at the mode's {kind})", "budget": budget, "seed": run.seed, "state": "finished",
                     "finished": run.finished, "epoch": run.epoch, "epochs": run.epochs,
                     "passes": passes_of(run.config), "path": str(summary_path.parent),
                     "run": run.path.name, "mode": mode, "top1": top1})
    return rows


def budget_of(cfg: dict) -> str:
    epochs = cfg["trainer"]["epochs"]
    fraction = float(cfg.get("data", {}).get("train_fraction", 1.0))
    return f"{epochs} ep" + ("" if fraction == 1 else f", {fraction:g} of train")


def passes_of(cfg: dict) -> int:
    """Forward/backward passes over each training image in the whole run, a source's
    (``model.init_from``) included: :func:`qdnn_cli.engine.passes.run_passes`. A source
    that is gone, in a run from before its passes were recorded, counts nothing, and is said once."""
    from ..engine.passes import run_passes

    return run_passes(cfg, _warn_once)


_warn_once = lru_cache(maxsize=None)(_warn)  # one line per missing source, not per mode row


def collect(runs: list[RunRecord]) -> tuple[pd.DataFrame, list[str]]:
    """One row per run × evaluated mode: experiment, kind, variant, budget, seed, state,
    finished, epoch, epochs, passes (:func:`passes_of`), path, mode, top1. Also the differences from the defaults
    that every run shares (stated once, not in every variant name)."""
    defaults = {name: _defaults(name, runs) for name in {r.name for r in runs}}
    diffs = [_differences(r, defaults[r.name]) for r in runs]
    shared = set(diffs[0].items()) if diffs else set()
    for d in diffs[1:]:
        shared &= set(d.items())
    experiments = {r.name for r in runs}
    records = []
    for run, diff in zip(runs, diffs):
        notes = [_describe(k, v) for k, v in sorted(diff.items()) if (k, v) not in shared]
        variant = run.kind + (f" ({', '.join(notes)})" if notes else "")
        if len(experiments) > 1:
            variant = f"{run.name}: {variant}"
        for mode, top1 in run.top1.items():
            records.append({"experiment": run.name, "kind": run.kind, "variant": variant,
                            "budget": budget_of(run.config), "seed": run.seed, "state": run.state,
                            "finished": run.finished, "epoch": run.epoch, "epochs": run.epochs,
                            "passes": passes_of(run.config),
                            "path": str(run.path), "run": run.path.name, "mode": mode, "top1": float(top1)})
        records += _searched_rows(run, variant, budget_of(run.config))
    columns = ["experiment", "kind", "variant", "budget", "seed", "state", "finished", "epoch", "epochs", "passes",
               "path", "run", "mode", "top1"]
    return pd.DataFrame.from_records(records, columns=columns), [_describe(k, v) for k, v in sorted(shared)]
