"""How strongly each bit mode pulls on the shared weights: per-mode gradient norms of
the quantized layers' weights, and each mode's gradient's cosine with full precision's.

Joint training sums the modes' losses, so the shared weights follow the sum of their
gradients; if the quantized modes' gradients are larger than full precision's (DoReFa's
weight transform differentiates through tanh and a division by max|tanh W|), mode 32
gets a small share of each step. Reads a run's checkpoint (or builds a fresh model with
``--fresh`` for a given ``quant.weight_scale``) and a few training batches; train-mode BN,
cross-entropy per mode, no update.

    python scripts/mode_gradients.py runs/fp_gap/seed0/sum/checkpoint.pt --batches 4
    python scripts/mode_gradients.py runs/fp_gap/seed0/sum/checkpoint.pt --fresh quant.weight_scale=mean_abs
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from qdnn_cli.data import build_data
from qdnn_cli.loaded_run import load_checkpoint_model
from qdnn_cli.quant import QuantSpec
from qdnn_cli.models import build_model
from qdnn_cli.quant import quantized_layers, set_bit_mode, sort_modes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. quant.weight_scale=mean_abs")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--fresh", action="store_true", help="a freshly initialised model of the run's config")
    a = ap.parse_args()
    torch.manual_seed(0)
    run = load_checkpoint_model(a.checkpoint, set(), a.overrides, "cpu")
    cfg, model, modes = run.cfg, run.model, sort_modes(run.trained, descending=True)
    if a.fresh:
        model = build_model(run.checkpoint["model_name"], QuantSpec.from_config(cfg.quant), int(run.checkpoint["num_classes"]),
                            int(run.checkpoint["in_channels"]), **dict(cfg.model.get("kwargs") or {}))
    model.train()
    data = build_data(cfg.data, int(cfg.trainer.batch_size), 256, torch.device("cpu"), int(cfg.seed))
    shared = [m.weight for m in quantized_layers(model).values()]
    grads = {m: torch.zeros(sum(p.numel() for p in shared)) for m in modes}
    batch_norms = {m: 0.0 for m in modes}  # mean of the per-batch norms (the mean gradient's norm shrinks with noise)
    for i, (x, y) in enumerate(data.train):
        if i == a.batches:
            break
        for m in modes:
            set_bit_mode(model, m)
            g = torch.autograd.grad(F.cross_entropy(model(x), y), shared)
            flat = torch.cat([t.flatten() for t in g])
            grads[m] += flat / a.batches
            batch_norms[m] += flat.norm().item() / a.batches
    fp = grads[modes[0]]
    what = "fresh model" if a.fresh else f"{a.checkpoint} (epoch {run.checkpoint.get('epoch')})"
    print(f"{what}, quant.weight_scale={cfg.quant.get('weight_scale', 'none')}, {a.batches} batches of "
          f"{cfg.trainer.batch_size}, {len(shared)} quantized layers' weights")
    print(f"{'mode':>6} {'|grad|':>10} {'/ FP':>7} {'batch |g|':>10} {'/ FP':>7}   cosine of mean gradients with "
          + " ".join(f"{m:>6}" for m in modes))
    for m in modes:
        cos = " ".join(f"{F.cosine_similarity(grads[m], grads[o], dim=0).item():6.3f}" for o in modes)
        print(f"{m:>6} {grads[m].norm().item():10.4g} {grads[m].norm().item() / fp.norm().item():7.2f} "
              f"{batch_norms[m]:10.4g} {batch_norms[m] / batch_norms[modes[0]]:7.2f}   {' ' * 29}{cos}")


if __name__ == "__main__":
    main()
