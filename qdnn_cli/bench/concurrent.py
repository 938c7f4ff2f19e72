"""``python -m qdnn_cli.bench.concurrent``: aggregate training throughput of 1, 2, 4 ...
quantizable runs at once on one machine (``--launcher parallel``'s case).

Each count starts that many real ``qdnn train`` processes side by side (ResNet-20, all
five modes, an in-memory CIFAR-sized synthetic set), on the GPU when there is one (all
sharing it) or splitting the CPU cores between them. A run's rate is its training
images over its last epoch's seconds; the aggregate is their sum, set beside the single
run's. On a GPU, where a CIFAR step is launch-bound, several runs should add throughput
almost linearly; on a CPU they share the same cores.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(count: int, images: int, epochs: int, extra: list[str], cuda: bool) -> dict:
    threads = max(1, (os.cpu_count() or 1) // count)
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        started = time.perf_counter()
        for i in range(count):
            args = ["cifar100", "data=synthetic", f"data.train_size={images}", "data.val_size=500", "data.image_size=32",
                    "data.num_classes=100", "data.crop_padding=4", f"trainer.epochs={epochs}", "trainer.progress=false",
                    f"seed={i}", f"out_dir={Path(tmp) / str(i)}", *extra]
            if not cuda:
                args.append(f"trainer.num_threads={threads}")
            procs.append(subprocess.Popen([sys.executable, "-m", "qdnn_cli.cli", "train", *args],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        errors = [p.communicate()[1] for p in procs]
        wall = time.perf_counter() - started
        rates = []
        for i, p in enumerate(procs):
            if p.returncode:
                raise RuntimeError(f"run {i} of {count} failed: {errors[i].strip().splitlines()[-1:]}")
            with open(Path(tmp) / str(i) / "metrics.csv", newline="") as f:
                rows = [r for r in csv.DictReader(f) if r["split"] == "train" and int(r["epoch"]) == epochs]
            rates.append(images / float(rows[0]["epoch_seconds"]))
    return {"runs": count, "aggregate_images_per_s": sum(rates), "per_run_images_per_s": rates, "wall_s": wall}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="1,2", help="comma-separated counts of concurrent runs")
    p.add_argument("--images", type=int, default=2560, help="training images per epoch and run")
    p.add_argument("--epochs", type=int, default=2, help="epochs per run (the last one is timed)")
    p.add_argument("--train-args", default="", help="extra overrides for every run, e.g. 'trainer.amp=bf16'")
    args = p.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    extra = args.train_args.split()
    results, base = [], None
    for count in (int(c) for c in args.runs.split(",")):
        r = measure(count, args.images, args.epochs, extra, cuda)
        base = base or r["aggregate_images_per_s"] / r["runs"]
        r["speedup_vs_one_run"] = r["aggregate_images_per_s"] / base
        results.append(r)
        print(f"{count} concurrent run(s) on {'the GPU' if cuda else f'{os.cpu_count()} CPU cores'}: aggregate "
              f"{r['aggregate_images_per_s']:.1f} images/s (x{r['speedup_vs_one_run']:.2f} of one run), per run "
              + ", ".join(f"{x:.1f}" for x in r["per_run_images_per_s"]) + f"; wall {r['wall_s']:.0f} s", flush=True)
    return results


if __name__ == "__main__":
    main()
