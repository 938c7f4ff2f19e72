"""Top-1 of the same random per-layer bit configurations on several trained runs: what
``trainer.mode_sampling=mixed`` buys mixed configurations (and what it costs the uniform
modes, read from each run's results.csv). Each configuration gives every quantized layer
a weight and an activation bit-width drawn from the run's trained modes below 32;
evaluated on the run's validation split with the trained BN, then with BN statistics
re-estimated from ``--calibrate`` training batches.

    python scripts/mixed_configs_eval.py runs/mixed_train/seed0/all runs/mixed_train/seed0/mixed --configs 6
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import pandas as pd
import torch

from qdnn_cli.data import build_data
from qdnn_cli.engine.evaluation import bn_state, calibrate_bn, evaluate, load_bn_state
from qdnn_cli.loaded_run import load_checkpoint_model, run_costs
from qdnn_cli.engine.step import random_config
from qdnn_cli.quant import FULL_PRECISION, quantized_layers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--configs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calibrate", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    rows = []
    for run_dir in a.runs:
        run = load_checkpoint_model(run_dir / "checkpoint.pt", set(), [], "cpu")
        t = run.cfg.trainer
        data = build_data(run.cfg.data, int(t.batch_size), int(t.eval_batch_size), run.device, int(run.cfg.seed))
        low = [m for m in run.trained if m != FULL_PRECISION]
        gen = random.Random(a.seed)  # the same configurations for every run
        names = list(quantized_layers(run.model))
        for i in range(a.configs):
            cfg = random_config(names, low, gen)
            gbops = run_costs(run, cfg)["bops"] / 1e9
            trained_bn = evaluate(run.model, data.val, [cfg])[cfg]["top1"]
            before = bn_state(run.model)
            torch.manual_seed(a.seed)
            calibrate_bn(run.model, data.train, cfg, a.calibrate)
            calibrated = evaluate(run.model, data.val, [cfg])[cfg]["top1"]
            load_bn_state(run.model, before)
            rows.append({"run": str(run_dir), "config": i, "gbops": round(gbops, 4), "top1_trained_bn": trained_bn,
                         "top1_calibrated_bn": calibrated})
            print(f"{run_dir} config {i}: {trained_bn:.2f} (trained BN), {calibrated:.2f} (calibrated)", flush=True)
    df = pd.DataFrame(rows)
    print(df.groupby("run")[["top1_trained_bn", "top1_calibrated_bn"]].mean().round(2).to_string())
    if a.out:
        df.to_csv(a.out, index=False)


if __name__ == "__main__":
    main()
