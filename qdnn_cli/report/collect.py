"""Find run directories and describe each: variant, seed, state, per-mode top-1."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class RunRecord:
    path: Path
    name: str            # experiment name
    variant: str         # e.g. "quantizable", "dedicated", "quantizable (no consistency)"
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


def variant_of(cfg: dict) -> str:
    """A readable name for what a run was, derived from its config only."""
    kind = cfg["trainer"]["kind"]
    if kind == "dedicated":  # one model per bit-width; together they fill one row
        return "dedicated"
    notes = []
    if not cfg["loss"]["consistency"] or not cfg["loss"].get("weight", 1.0):
        notes.append("no consistency")
    if not cfg["quant"]["bit_specific_bn"]:
        notes.append("shared BN")
    if cfg["loss"]["consistency"] and cfg["loss"].get("target") == "next":
        notes.append("next-mode target")
    if cfg["quant"].get("act", "dorefa") != "dorefa" or cfg["quant"].get("weight", "dorefa") != "dorefa":
        notes.append(f"{cfg['quant']['weight']}/{cfg['quant']['act']}")
    if cfg["trainer"].get("mode_sampling", "all") != "all":
        notes.append(f"{cfg['trainer']['mode_sampling']} sampling")
    return "quantizable" + (f" ({', '.join(notes)})" if notes else "")


def read_run(path: Path) -> RunRecord | None:
    cfg_path = path / "config.yaml"
    if not cfg_path.is_file():
        return None
    cfg = yaml.safe_load(cfg_path.read_text())
    status = {}
    if (path / "status.json").is_file():
        try:
            status = json.loads((path / "status.json").read_text())
        except json.JSONDecodeError:
            status = {}
    state = status.get("state", "unknown")
    top1: dict[int, float] = {}
    epoch = int(status.get("epoch", 0))
    results = path / "results.csv"
    if state == "finished" and results.is_file():
        with open(results, newline="") as f:
            top1 = {int(r["mode"]): float(r["top1"]) for r in csv.DictReader(f)}
    elif (path / "metrics.csv").is_file():  # incomplete: last evaluated epoch
        with open(path / "metrics.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["split"] == "val"]
        if rows:
            epoch = max(int(r["epoch"]) for r in rows)
            top1 = {int(r["mode"]): float(r["top1"]) for r in rows if int(r["epoch"]) == epoch}
        if state == "finished":
            state = "unknown"
    return RunRecord(path, cfg.get("name", "custom"), variant_of(cfg), cfg["trainer"]["kind"], int(cfg.get("seed", 0)),
                     list(cfg["quant"]["bits"]), state, epoch, int(cfg["trainer"]["epochs"]), top1, cfg)


def find_runs(paths) -> list[RunRecord]:
    """Every run directory (a folder with config.yaml) at or under the given paths."""
    seen, runs = set(), []
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
            rec = read_run(c)
            if rec is not None:
                runs.append(rec)
    return runs
