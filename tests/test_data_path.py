"""Device-side augmentation matches torchvision's RandomCrop(padding) + RandomHorizontalFlip."""
import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency, chisquare

from qdnn_cli.data import Augment, TensorBatches, random_crop_flip, stratified_subset
from qdnn_cli.engine.step import sample_modes


def _coordinate_image(size=32):
    """channel 0 = row + 1, channel 1 = column + 1, so every crop reveals its offset."""
    rows = torch.arange(size).view(size, 1).expand(size, size) + 1
    cols = torch.arange(size).view(1, size).expand(size, size) + 1
    return torch.stack([rows, cols, torch.zeros(size, size, dtype=torch.long)]).to(torch.uint8)


def _params(out, pad=4):
    """(oy, ox, flipped) of a crop of the coordinate image."""
    r, c1, c2 = int(out[0, 16, 16]), int(out[1, 16, 16]), int(out[1, 16, 17])
    flipped = c2 < c1
    oy = r - 1 - 16 + pad
    ox = (c1 - 1 - 16 + pad) if not flipped else (c1 - 1 - 15 + pad)
    return oy, ox, flipped


def test_crop_flip_distribution_matches_torchvision():
    from torchvision import transforms as T

    img = _coordinate_image()
    n = 8000
    batch = img.unsqueeze(0).expand(n, -1, -1, -1).contiguous()
    ours = random_crop_flip(batch, 4, True, torch.Generator().manual_seed(0))
    ours_params = [_params(o) for o in ours]

    torch.manual_seed(0)
    tv = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])
    tv_params = [_params(tv(img)) for _ in range(n)]

    def table(params):
        counts = np.zeros((9, 9, 2))
        for oy, ox, f in params:
            counts[oy, ox, int(f)] += 1
        return counts

    a, b = table(ours_params), table(tv_params)
    assert a.sum() == n  # every crop is a valid RandomCrop(padding=4) window
    # uniform over the 81 offsets and both flips, like torchvision's get_params
    assert chisquare(a.reshape(-1)).pvalue > 1e-3
    assert abs(a[:, :, 1].sum() / n - 0.5) < 0.03
    # and the same distribution as torchvision's (homogeneity test)
    assert chi2_contingency(np.stack([a.reshape(-1), b.reshape(-1)])).pvalue > 1e-3


def test_crops_equal_torchvision_crop_of_padded_image():
    import torchvision.transforms.functional as TF

    img = torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)
    coord = _coordinate_image()
    batch = torch.stack([coord, img]).repeat(50, 1, 1, 1)  # coordinate images at even positions
    out = random_crop_flip(batch, 4, True, torch.Generator().manual_seed(3))
    for o in out[::2]:
        oy, ox, f = _params(o)
        expected = TF.crop(TF.pad(coord, [4]), oy, ox, 32, 32)
        assert torch.equal(o, TF.hflip(expected) if f else expected)


def test_tensor_batches_keep_labels_aligned_and_cover_each_epoch():
    n = 100
    labels = torch.arange(n) % 7
    images = (labels * 30).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, 16, 16).contiguous()
    loader = TensorBatches(images, labels, 16, (0.0,) * 3, (1 / 255,) * 3, torch.device("cpu"), shuffle=True,
                           augment=Augment(crop_padding=2, flip=True), seed=1)
    seen = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        ys = []
        for x, y in loader:
            # the centre pixel is never padding: its value encodes the label
            assert torch.equal(x[:, 0, 8, 8].round().long(), y * 30)
            ys.append(y)
        seen.append(torch.cat(ys))
        assert sorted(seen[-1].tolist()) == sorted(labels.tolist())
    assert not torch.equal(seen[0], seen[1])  # reshuffled per epoch
    loader.set_epoch(0)
    assert torch.equal(torch.cat([y for _, y in loader]), seen[0])  # and reproducible


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_chunked_batches_equal_batch_by_batch_preparation(monkeypatch, drop_last, channels_last):
    """Batches are cut from chunks prepared at once; they must be the very batches a
    batch-at-a-time loader gives (same crops, flips, order, layout, last partial batch)."""
    from qdnn_cli.data import tensor_loader

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (203, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (203,), generator=g)

    def batches(chunk_bytes):
        monkeypatch.setattr(tensor_loader, "CHUNK_BYTES", chunk_bytes)
        loader = TensorBatches(images, labels, 16, (0.5,) * 3, (0.25,) * 3, torch.device("cpu"), shuffle=True,
                               augment=Augment(crop_padding=2, flip=True), seed=3, drop_last=drop_last,
                               channels_last=channels_last)
        loader.set_epoch(2)
        return list(loader)

    one_by_one, chunked = batches(1), batches(5 * 16 * 3 * 8 * 8 * 4)  # chunks of 5 batches
    assert len(chunked) == len(one_by_one) == (12 if drop_last else 13)
    for (xa, ya), (xb, yb) in zip(one_by_one, chunked):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        if channels_last:
            assert xb.is_contiguous(memory_format=torch.channels_last)


def test_stratified_subset_is_class_balanced():
    labels = torch.arange(1000) % 10
    idx = stratified_subset(labels, 0.2, seed=0)
    assert len(idx) == 200
    assert torch.bincount(labels[idx]).tolist() == [20] * 10
    assert torch.equal(idx, stratified_subset(labels, 0.2, seed=0))


def test_sandwich_visits_every_mode_and_always_the_extremes():
    import random

    modes = [32, 8, 4, 3, 2]
    rng = random.Random(0)
    picks = [sample_modes(modes, "sandwich", 1, rng) for _ in range(30)]
    assert all(p[0] == 32 and p[-1] == 2 and len(p) == 3 for p in picks)
    assert all(p == sorted(p, reverse=True) for p in picks)
    assert {m for p in picks for m in p} == set(modes)
    assert sample_modes(modes, "all", 1, rng) == modes


def test_subset_seed_fixes_the_training_subset_across_run_seeds(tmp_path):
    from omegaconf import OmegaConf

    from helpers import write_folder_tree
    from qdnn_cli.data import build_data

    root = write_folder_tree(tmp_path / "tree", classes=4, per_class=(20, 2), size=8)

    def subset(run_seed, subset_seed):
        d = OmegaConf.create({"name": "folder", "root": str(root), "train_split": "train", "val_split": "val",
                              "in_channels": 3, "train_fraction": 0.25, "subset_seed": subset_seed,
                              "crop_padding": 0, "flip": False, "max_in_memory_size": 64,
                              "mean": None, "std": None})
        return build_data(d, 8, 8, torch.device("cpu"), seed=run_seed).train.images

    # default: the run's seed picks the subset, so seeds 0 and 1 train on different images
    assert not torch.equal(subset(0, None), subset(1, None))
    # a fixed subset seed: both runs see the very same 5 images per class, whatever their seed
    fixed = subset(0, 7)
    assert fixed.shape[0] == 20 and torch.equal(fixed, subset(1, 7))
    assert torch.equal(subset(7, None), fixed)


# Float comparison, allclose on the normalisation: the same uint8 images through the same elementwise maths
@pytest.mark.numerics
def test_device_data_ships_the_subset_and_rebuilds_the_same_training_data(tmp_path):
    """scripts/device_data.py: pack the images a run with train_fraction / subset_seed uses,
    unpack them elsewhere with placeholders for the rest: the run sees the same subset,
    labels, validation split and normalisation as on the full tree."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from omegaconf import OmegaConf

    from helpers import write_folder_tree
    from qdnn_cli.data import build_data

    script = Path(__file__).resolve().parents[1] / "scripts" / "device_data.py"
    full = write_folder_tree(tmp_path / "full", classes=3, per_class=(10, 3), size=8)
    packed = tmp_path / "ship" / "tree"
    subprocess.run([sys.executable, str(script), "pack", str(full), str(packed), "--fraction", "0.3",
                    "--subset-seed", "5"], check=True, capture_output=True)
    zipped = packed.with_suffix(".zip")
    assert zipped.is_file() and not packed.exists()
    moved = tmp_path / "device" / "tree"
    moved.parent.mkdir()
    zipped.rename(moved.with_suffix(".zip"))
    out = subprocess.run([sys.executable, str(script), "fill", str(moved)], check=True, capture_output=True,
                         text=True).stdout.split()
    overrides = dict(o.split("=", 1) for o in out)
    assert overrides["data.subset_seed"] == "5" and overrides["data.train_fraction"] == "0.3"
    stats = json.loads((moved / "stats.json").read_text())
    assert stats["shipped_train_images"] == 9 and stats["train_images"] == 30  # 3 of 10 per class

    def data(root, mean=None, std=None):
        d = OmegaConf.create({"name": "folder", "root": str(root), "train_split": "train", "val_split": "val",
                              "in_channels": 3, "train_fraction": 0.3, "subset_seed": 5, "crop_padding": 0,
                              "flip": False, "max_in_memory_size": 64, "mean": mean, "std": std})
        return build_data(d, 4, 4, torch.device("cpu"), seed=0)

    a, b = data(full), data(moved, stats["mean"], stats["std"])
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.train.labels, b.train.labels)
    assert torch.equal(a.val.images, b.val.images)
    (xa, ya), (xb, yb) = next(iter(a.train)), next(iter(b.train))
    assert torch.allclose(xa, xb) and torch.equal(ya, yb)  # same normalisation too


def test_device_data_in_parts_refuses_to_fill_until_every_part_arrived(tmp_path):
    """--parts 2: the whole split in two archives (one per device call); fill with only
    the first is one error line, with both the tree equals the original."""
    import subprocess
    import sys
    from pathlib import Path

    from omegaconf import OmegaConf

    from helpers import write_folder_tree
    from qdnn_cli.data import build_data

    script = Path(__file__).resolve().parents[1] / "scripts" / "device_data.py"
    full = write_folder_tree(tmp_path / "full", classes=3, per_class=(10, 3), size=8)
    packed = tmp_path / "ship" / "tree"
    subprocess.run([sys.executable, str(script), "pack", str(full), str(packed), "--fraction", "1", "--parts", "2"],
                   check=True, capture_output=True)
    parts = [packed.parent / f"tree.part{k}of2.zip" for k in (1, 2)]
    assert all(p.is_file() for p in parts) and not packed.with_suffix(".zip").exists()
    moved = tmp_path / "device" / "tree"
    moved.parent.mkdir()
    parts[0].rename(moved.parent / parts[0].name)  # the first call carries part 1 only
    r = subprocess.run([sys.executable, str(script), "fill", str(moved)], capture_output=True, text=True)
    assert r.returncode != 0 and "part(s) [2] of 2 have not arrived" in r.stderr and "Traceback" not in r.stderr
    (moved.parent / parts[0].name).unlink()  # the second call carries part 2 only; part 1 stays unpacked
    parts[1].rename(moved.parent / parts[1].name)
    out = subprocess.run([sys.executable, str(script), "fill", str(moved)], check=True, capture_output=True,
                         text=True).stdout.split()
    overrides = dict(o.split("=", 1) for o in out)

    def data(root, mean=None, std=None):
        d = OmegaConf.create({"name": "folder", "root": str(root), "train_split": "train", "val_split": "val",
                              "in_channels": 3, "train_fraction": 1.0, "subset_seed": 0, "crop_padding": 0,
                              "flip": False, "max_in_memory_size": 64, "mean": mean, "std": std})
        return build_data(d, 4, 4, torch.device("cpu"), seed=0)

    a = data(full)
    b = data(moved, *(OmegaConf.create(f"x: {overrides[k]}").x for k in ("data.mean", "data.std")))
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.train.labels, b.train.labels)
    assert torch.equal(a.val.images, b.val.images) and len(a.train.labels) == 30
