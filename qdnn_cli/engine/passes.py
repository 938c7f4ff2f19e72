"""Passes per training image: the budget axis on which runs of different kinds compare.

A run's passes are its epochs times the modes one step trains (a dedicated run: one; a
quantizable run: every mode, or what its sampling picks), the full-precision warm-up
epochs counting one each. A run started from another (``model.init_from``) adds its
source's passes: the number recorded in its own config when it started
(``model.init_passes``), or, for a run from before that was recorded, the number read
from the source's ``config.yaml`` if the source is still there.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import yaml

from .step import modes_per_step

MAX_CHAIN = 8  # longer chains of starts than any real one: a loop of copied run folders


def own_passes(cfg: dict) -> int:
    """The passes of this run's own schedule, without its source's."""
    t = cfg["trainer"]
    epochs = int(t["epochs"])
    if t.get("kind") == "dedicated":
        return epochs
    per_step = modes_per_step(len(cfg["quant"]["bits"]), t.get("mode_sampling", "all"), int(t.get("sandwich_k", 1)),
                              int(t.get("mixed_k", 2)))
    warm = min(int(t.get("fp_warmup_epochs") or 0), epochs)
    return warm + (epochs - warm) * per_step


def source_passes(source: str, warn: Optional[Callable[[str], None]] = None, _depth: int = 0) -> Optional[int]:
    """All passes behind the weights of ``source`` (a run directory or a checkpoint file
    in one), read from its ``config.yaml``; None (and one ``warn`` line) when unreadable."""
    path = Path(source).expanduser()
    cfg_path = (path if path.is_dir() else path.parent) / "config.yaml"
    try:
        if _depth >= MAX_CHAIN:
            raise ValueError("too many model.init_from links")
        cfg = yaml.safe_load(cfg_path.read_text())
        return run_passes(cfg, warn, _depth + 1)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError) as e:
        if warn is not None:
            warn(f"model.init_from={source}: its passes are not counted ({type(e).__name__}: {cfg_path} unreadable)")
        return None


def run_passes(cfg: dict, warn: Optional[Callable[[str], None]] = None, _depth: int = 0) -> int:
    """The run's passes per training image, its source's included (see the module's doc)."""
    model = cfg.get("model") or {}
    source = model.get("init_from")
    if not source:
        return own_passes(cfg)
    recorded = model.get("init_passes")
    if recorded is not None:
        return own_passes(cfg) + int(recorded)
    return own_passes(cfg) + (source_passes(str(source), warn, _depth) or 0)
