"""Shared helpers for tests: run the CLI in-process, generate data in real on-disk formats."""
from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from qdnn_cli.cli import app

runner = CliRunner()


def qdnn(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def qdnn_process(*args, env=None, timeout=600):
    """``qdnn`` in a process of its own (the environment's, plus ``env``): ``exit_code`` and
    ``output`` (stdout then stderr) as :func:`qdnn` gives them."""
    import os
    import subprocess
    import sys
    from types import SimpleNamespace

    cli = str(Path(sys.executable).with_name("qdnn"))
    proc = subprocess.run([cli, *[str(a) for a in args]], env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)
    return SimpleNamespace(exit_code=proc.returncode, output=proc.stdout + proc.stderr)


def affine_reference(x, bits):
    """The formula: round(clamp(x,0,1)·n)·s with n = 2^k-1 and step s = 1/n (float32)."""
    import torch

    n = 2**bits - 1
    s = torch.tensor(1.0 / n, dtype=torch.float32, device=x.device)
    return torch.round(torch.clamp(x, 0, 1) * n) * s


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_cifar100(root: Path, n_train=200, n_test=100, classes=100, seed=0) -> Path:
    """The official CIFAR-100 python layout: pickled dicts with bytes-like keys as in the archive."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)

    def batch(n):
        labels = rng.integers(0, classes, n).tolist()
        # class-dependent mean colour so a model can learn something
        base = (np.array(labels)[:, None] * 37 % 256).astype(np.uint8)
        data = np.clip(base + rng.integers(0, 60, (n, 3072)), 0, 255).astype(np.uint8)
        return {"filenames": [f"img{i}.png" for i in range(n)], "fine_labels": labels,
                "coarse_labels": [x // 5 for x in labels], "data": data, "batch_label": "generated"}

    for name, n in (("train", n_train), ("test", n_test)):
        with open(folder / name, "wb") as f:
            pickle.dump(batch(n), f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{i:03d}" for i in range(classes)],
                     "coarse_label_names": [f"super{i}" for i in range(20)]}, f, protocol=2)
    return root


def write_folder_tree(root: Path, classes=3, per_class=(12, 4), size=16, splits=("train", "val"), seed=0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in zip(splits, per_class):
        for c in range(classes):
            d = root / split / f"cls{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = np.clip(rng.normal(60 + 70 * c, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    return root
