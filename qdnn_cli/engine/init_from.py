"""``model.init_from``: start a run from another run's trained weights.

LSQ, PACT and most quantization-aware training start from a trained full-precision model.
The source may be a plain FP run, a dedicated run or a quantizable run (a run directory
or a checkpoint file). Its weights are copied; every mode's BN of the new model starts
from the source's most precise BN (the FP mode's for a quantizable source); quantizer
parameters (PACT clip levels, LSQ steps) of bit-widths the source trained are copied,
others start as in a fresh run. The schedule, optimizer and epochs are the new run's own.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..errors import InputError
from ..quant.transfer import expand_state, keep_bn_of_mode, top_mode
from .checkpoint import safe_load


class InitSourceError(InputError):
    """A ``model.init_from`` that cannot start this run."""


def source_checkpoint(source: str) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "checkpoint.pt").is_file():
            raise InitSourceError(f"model.init_from={source}: {path} holds no checkpoint.pt (is it a qdnn run?)")
        return path / "checkpoint.pt"
    if not path.exists():
        raise InitSourceError(f"model.init_from={source}: no such run directory or checkpoint")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_source(cfg) -> Path:
    """The source's checkpoint, after the checks that need no data: it is a qdnn checkpoint
    of the same architecture (and width)."""
    source = str(cfg.model.init_from)
    path = source_checkpoint(source)
    ck = safe_load(path)
    if "model" not in ck or "model_name" not in ck:
        raise InitSourceError(f"model.init_from={source}: {path} is not a qdnn training checkpoint")
    if ck["model_name"] != cfg.model.name:
        raise InitSourceError(f"model.init_from={source} is a {ck['model_name']} run; this run builds "
                              f"{cfg.model.name}: start from a run of the same architecture")
    theirs = dict((ck.get("config") or {}).get("model", {}).get("kwargs") or {})
    ours = dict(cfg.model.get("kwargs") or {})
    if theirs != ours:
        raise InitSourceError(f"model.init_from={source} was built with model.kwargs={theirs}, this run with {ours}")
    return path


def init_model_from(model: torch.nn.Module, path: Path, num_classes: int, in_channels: int) -> dict:
    """Copy the source's weights into ``model``; returns the source checkpoint's summary."""
    ck = safe_load(path)
    if int(ck.get("num_classes", -1)) != num_classes or int(ck.get("in_channels", -1)) != in_channels:
        raise InitSourceError(f"model.init_from: {path} was trained on {ck.get('num_classes')} classes of "
                              f"{ck.get('in_channels')}-channel images, this run has {num_classes} of "
                              f"{in_channels}-channel images")
    top = top_mode(ck["model"])
    state = ck["model"] if top is None else keep_bn_of_mode(ck["model"], top)
    target = model.state_dict()
    mapped = expand_state(state, target.keys())
    for key in target:  # private BN statistics share one γ, β: the source's top BN's
        if key not in mapped and key.endswith((".weight", ".bias")) and top is not None:
            base, field = key.rsplit(".", 1)
            for slot in (str(top), "shared"):
                if f"{base}.bn.{slot}.{field}" in state:
                    mapped[key] = state[f"{base}.bn.{slot}.{field}"]
                    break
    for key in target:  # PACT / LSQ parameters the source lacks (an FP source has none): as in a fresh run
        if key not in mapped and (".alpha." in key or ".step." in key):
            mapped[key] = target[key]
    missing = [k for k in target if k not in mapped and not k.startswith("_qdnn.")]
    if missing:
        raise InitSourceError(f"model.init_from: {path} does not fit this model (e.g. no {missing[0]})")
    for key, value in mapped.items():
        if key in target and value.shape != target[key].shape:
            raise InitSourceError(f"model.init_from: {path} does not fit this model ({key}: "
                                  f"{tuple(value.shape)} against {tuple(target[key].shape)})")
    model.load_state_dict({k: v for k, v in mapped.items() if k in target}, strict=False)
    return {"epoch": ck.get("epoch"), "modes": top}
