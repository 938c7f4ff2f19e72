"""Ship a class-folder data set's *used* images to a GPU machine that cannot read it.

The device tool carries at most 64 MiB, and ``cifar100-dev`` is ~200 MB of PNGs. A run
with ``data.train_fraction=F data.subset_seed=S`` trains on a stratified subset that
depends only on the sorted file names and their classes, so shipping that subset plus
the validation split, and recreating every other training file name as a placeholder
image on arrival, gives the device the very same training subset, labels, order and
validation split. The training images' per-channel statistics (which the placeholders
would change) are computed here over the whole tree and passed as ``data.mean`` /
``data.std``.

    python scripts/device_data.py pack ../shared/data/cifar100-dev .gpu/cifar100-dev --fraction 0.45 --subset-seed 0
    python scripts/device_data.py fill .gpu/cifar100-dev      # on the device; prints the overrides

``pack`` writes one uncompressed zip (``<dst>.zip``: 25k small files would cost the
transfer more than their bytes); ``fill`` unpacks it into ``<dst>``.

The whole training split (98 MB of PNGs + 11 MB of val/) is more than one call carries:
``pack --parts 2`` writes ``<dst>.part1of2.zip`` (val/ and about half the training
images) and ``<dst>.part2of2.zip`` (the rest), byte-balanced. On the device, ``unpack``
extracts whatever parts a call carried (a warm machine keeps them), and ``fill`` refuses
to run until every part has arrived: a missing part would otherwise train on placeholders.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from qdnn_cli.data.sources import (IMAGE_SUFFIXES, decode_cached, list_classes, list_files,
                                   stratified_subset)

MANIFEST, STATS, PLACEHOLDER = "train_files.txt", "stats.json", ".placeholder.png"


def pack(src: Path, dst: Path, fraction: float, subset_seed: int, train: str, val: str, parts: int = 1) -> None:
    classes = list_classes(src / train)
    files, labels = list_files(src / train, classes)
    keep = stratified_subset(torch.tensor(labels), fraction, subset_seed).tolist()
    images = decode_cached(files, 3).float() / 255  # statistics of the whole training split
    stats = {"mean": images.mean(dim=(0, 2, 3)).tolist(), "std": images.std(dim=(0, 2, 3)).tolist(),
             "train_fraction": fraction, "subset_seed": subset_seed, "train_split": train, "val_split": val,
             "source": str(src), "train_images": len(files), "shipped_train_images": len(keep), "parts": parts}
    rel = [os.path.relpath(f, src) for f in files]
    val_files = [os.path.relpath(f, src) for f in sorted((src / val).rglob("*")) if f.is_file()]
    # byte-balanced parts; val/ goes with part 1
    shares = [[] for _ in range(parts)]
    load = [sum((src / f).stat().st_size for f in val_files)] + [0] * (parts - 1)
    for i in keep:
        k = load.index(min(load))
        shares[k].append(rel[i])
        load[k] += (src / rel[i]).stat().st_size
    dst.parent.mkdir(parents=True, exist_ok=True)
    for k, share in enumerate(shares, 1):
        archive = dst.with_suffix(".zip") if parts == 1 else dst.parent / f"{dst.name}.part{k}of{parts}.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:  # PNGs are compressed already
            for f in share + (val_files if k == 1 else []):
                z.write(src / f, f)
            z.writestr(MANIFEST, "\n".join(rel) + "\n")
            z.writestr(STATS, json.dumps(stats, indent=1))
            z.writestr(f".part{k}", "")
        print(f"{archive}: {len(share)} of {len(files)} training images{f' + {val}/' if k == 1 else ''}, "
              f"{archive.stat().st_size / 2**20:.1f} MiB")


def unpack(dst: Path) -> None:
    """Extract every archive of ``dst`` this call carried (one zip, or parts)."""
    archives = sorted(dst.parent.glob(f"{dst.name}.part*of*.zip"))
    if dst.with_suffix(".zip").is_file():
        if dst.exists():
            shutil.rmtree(dst)
        archives.append(dst.with_suffix(".zip"))
    for archive in archives:
        with zipfile.ZipFile(archive) as z:
            z.extractall(dst)
        print(f"{archive}: unpacked into {dst}", file=sys.stderr)


def fill(dst: Path) -> None:
    from PIL import Image

    unpack(dst)
    stats = json.loads((dst / STATS).read_text())
    missing = [k for k in range(1, int(stats.get("parts", 1)) + 1) if int(stats.get("parts", 1)) > 1
               and not (dst / f".part{k}").exists()]
    if missing:
        sys.exit(f"error: {dst}: part(s) {missing} of {stats['parts']} have not arrived; carry "
                 f"{dst.name}.part<k>of{stats['parts']}.zip in a call while the machine is warm")
    placeholder = dst / PLACEHOLDER
    # a PNG under any image name: the loaders decode by content, and never train on it
    with Image.open(next(p for p in (dst / stats["val_split"]).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)) as im:
        size = im.size
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(placeholder)
    made = 0
    for rel in (dst / MANIFEST).read_text().split():
        path = dst / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.link(placeholder, path)
            made += 1
    print(f"{dst}: {made} placeholders for the training images not shipped", file=sys.stderr)
    mean = ",".join(repr(v) for v in stats["mean"])
    std = ",".join(repr(v) for v in stats["std"])
    print(f"data=folder data.root={dst.resolve()} data.train_fraction={stats['train_fraction']} "
          f"data.subset_seed={stats['subset_seed']} data.mean=[{mean}] data.std=[{std}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--fraction", type=float, required=True)
    p.add_argument("--subset-seed", type=int, default=0)
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--parts", type=int, default=1, help="archives to split the images into (one per device call)")
    for name in ("fill", "unpack"):
        sub.add_parser(name).add_argument("dst", type=Path)
    a = ap.parse_args()
    if a.cmd == "pack":
        pack(a.src, a.dst, a.fraction, a.subset_seed, a.train_split, a.val_split, a.parts)
    elif a.cmd == "unpack":
        unpack(a.dst)
    else:
        fill(a.dst)


if __name__ == "__main__":
    main()
