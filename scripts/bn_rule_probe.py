"""Which BN a layer raised above its neighbours should use: for every third quantized
layer, its weights raised from 3 to 4 and to 8 bits (the rest at uniform 3-bit), the KL
divergence from the full-precision mode on 4,000 held-out training images, BN statistics
re-estimated from 10 training batches, with (a) qdnn's rule — the BN after a layer is
that of the layer's own bits — and (b) every BN that of mode 3. Printed: each change's
KL minus that of uniform 3-bit under the same rule.

    python scripts/bn_rule_probe.py runs/small_budget/seed1/full/checkpoint.pt
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from qdnn_cli.data import build_holdout
from qdnn_cli.engine.evaluation import bn_state, load_bn_state
from qdnn_cli.loaded_run import load_checkpoint_model
from qdnn_cli.quant import BitConfig, BitSpecificBN, LayerBits
from qdnn_cli.quant.mixed import apply_bits, quantized_layers
from qdnn_cli.search import reference_logprobs


def select(model, config: BitConfig, bn_mode) -> None:
    """The configuration's bits; every BN forced to ``bn_mode`` unless it is None."""
    apply_bits(model, config)
    if bn_mode is not None:
        for module in model.modules():
            if isinstance(module, BitSpecificBN):
                module.set_mode(bn_mode)


@torch.no_grad()
def kl_after_calibration(model, config, bn_mode, calib, images, reference, trained_bn) -> float:
    select(model, config, bn_mode)
    bns = [m.bn[m._key] for m in model.modules() if isinstance(m, BitSpecificBN)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average, as qdnn's calibrate_bn
    model.train()
    for i, (x, _) in enumerate(calib):
        if i >= 10:
            break
        model(x)
    for bn in bns:
        bn.momentum = 0.1
    model.eval()
    select(model, config, bn_mode)
    kl, n = 0.0, 0
    for (x, y), ref in zip(images, reference, strict=True):
        logp = F.log_softmax(model(x).float(), dim=1)
        kl += F.kl_div(logp, ref, log_target=True, reduction="sum").item()
        n += y.numel()
    load_bn_state(model, trained_bn)
    return kl / n


def main() -> None:
    torch.set_num_threads(2)
    run = load_checkpoint_model(Path(sys.argv[1]), set(), [], "cpu")
    model, cfg = run.model, run.cfg
    t = cfg.trainer
    calib, images, _, _ = build_holdout(cfg.data, int(cfg.seed), int(t.batch_size), int(t.eval_batch_size),
                                        run.device, 4000, 0)
    trained_bn = bn_state(model)
    reference = reference_logprobs(model, images, 32)

    def kl(config, bn_mode=None):
        return kl_after_calibration(model, config, bn_mode, calib, images, reference, trained_bn)

    uniform = BitConfig(LayerBits(3, 3))
    own0, three0 = kl(uniform), kl(uniform, 3)
    print(f"uniform 3: own-bits BN {own0:.4f}  all BN of mode 3 {three0:.4f}")
    for name in list(quantized_layers(model))[1::3]:
        for w in (4, 8):
            raised = BitConfig(LayerBits(3, 3), ((name, LayerBits(w, 3)),))
            print(f"{name} w{w}a3: own-bits BN {kl(raised) - own0:+.4f}   BN of mode 3 {kl(raised, 3) - three0:+.4f}",
                  flush=True)


if __name__ == "__main__":
    main()
