"""Where images come from: CIFAR (torchvision's files), class folders, scikit-learn's
digits (offline quickstart) and synthetic patterns. Each small-image source returns
uint8 tensors (N, C, H, W) and int64 labels; large-image folders return file lists.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class DataError(InputError):
    """A data set that cannot be used as configured (missing, empty, malformed)."""


@dataclass
class Split:
    images: torch.Tensor | None  # uint8 N,C,H,W for in-memory sets
    labels: torch.Tensor         # int64 N
    files: list[str] = field(default_factory=list)  # for large-image folders


@dataclass
class Source:
    train: Split
    val: Split
    classes: list[str]
    in_channels: int
    image_size: int
    mean: tuple
    std: tuple
    in_memory: bool = True


# ----------------------------------------------------------------------------- CIFAR
# The official "python version" archives, as torchvision downloads and extracts them.
CIFAR_LAYOUT = {
    "cifar10": {"folder": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "meta": "batches.meta", "names": "label_names", "labels": "labels"},
    "cifar100": {"folder": "cifar-100-python", "train": ["train"], "test": ["test"], "meta": "meta",
                 "names": "fine_label_names", "labels": "fine_labels"},
}


def _read_cifar_batch(path: Path, labels_key: str) -> tuple[np.ndarray, list]:
    import pickle

    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = list(entry[labels_key])
    except (OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError, TypeError) as e:
        raise DataError(f"cannot read CIFAR file {path}: {type(e).__name__} (truncated or not a CIFAR batch)") from None
    if len(labels) != len(data):
        raise DataError(f"CIFAR file {path} has {len(data)} images but {len(labels)} labels")
    return data, labels


def fetch_cifar(name: str, root: str, download: bool) -> Path:
    """``<root>/<folder>/`` of the official CIFAR python archive, downloaded through
    torchvision first when it is absent and ``download`` is on."""
    layout = CIFAR_LAYOUT[name]
    rootp = Path(root).expanduser()
    folder = rootp / layout["folder"]
    if not folder.is_dir():
        if not download:
            raise DataError(f"{name} not found: expected {folder}/ (the extracted official python archive); "
                            "put it there or set data.download=true when online")
        from torchvision import datasets

        cls = datasets.CIFAR100 if name == "cifar100" else datasets.CIFAR10
        try:
            cls(str(rootp), train=True, download=True)
        except Exception as e:  # offline: URLError/OSError; a bad archive: RuntimeError
            raise DataError(
                f"{name} could not be downloaded into {rootp} ({type(e).__name__}); if this machine is offline, "
                f"put the extracted '{layout['folder']}/' folder under {rootp} by hand"
            ) from None
    return folder


def load_cifar(name: str, root: str, download: bool) -> Source:
    """Parse the official CIFAR python batches under ``<root>/<folder>/``; download them
    first through torchvision when they are absent and ``download`` is on."""
    layout = CIFAR_LAYOUT[name]
    folder = fetch_cifar(name, root, download)
    meta_path = folder / layout["meta"]
    import pickle

    try:
        with open(meta_path, "rb") as f:
            classes = list(pickle.load(f, encoding="latin1")[layout["names"]])
    except (OSError, EOFError, KeyError, pickle.UnpicklingError) as e:
        raise DataError(f"cannot read CIFAR class names from {meta_path}: {type(e).__name__}") from None

    def split(files) -> Split:
        parts = [_read_cifar_batch(folder / f, layout["labels"]) for f in files]
        images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        labels = torch.tensor([lab for p in parts for lab in p[1]], dtype=torch.int64)
        return Split(images, labels)

    train, test = split(layout["train"]), split(layout["test"])
    bad = int(max(train.labels.max(), test.labels.max()))
    if bad >= len(classes):
        raise DataError(f"{name} labels go up to {bad} but {meta_path} names {len(classes)} classes")
    mean, std = CIFAR_STATS[name]
    return Source(train, test, classes, 3, 32, mean, std)


# ----------------------------------------------------------------------------- folders
def list_classes(split_dir: Path) -> list[str]:
    """Class folder names in label order (sorted)."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_files(split_dir: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    """(image paths, labels) of a split folder, in the order the loaders index them."""
    files, labels = [], []
    for label, cname in enumerate(classes):
        cdir = split_dir / cname
        if not cdir.is_dir():
            continue
        found = sorted(str(p) for p in cdir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"class folder {cdir} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += found
        labels += [label] * len(found)
    return files, labels


def _decode(path: str, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read image {path}: {type(e).__name__}") from None
    return arr if arr.ndim == 3 else arr[:, :, None]


def _decode_all(files: list[str], channels: int) -> torch.Tensor:
    first = _decode(files[0], channels)
    out = np.empty((len(files),) + first.shape, dtype=np.uint8)
    out[0] = first
    for i, f in enumerate(files[1:], 1):
        arr = _decode(f, channels)
        if arr.shape != first.shape:
            raise DataError(
                f"image {f} is {arr.shape[1]}x{arr.shape[0]} but {files[0]} is {first.shape[1]}x{first.shape[0]}: "
                "in-memory folders need one image size"
            )
        out[i] = arr
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _cache_path(files: list[str], channels: int) -> Path:
    h = hashlib.sha1()
    h.update(str(channels).encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}".encode())
    base = Path(os.environ.get("QDNN_CACHE", Path.home() / ".cache" / "qdnn"))
    return base / f"folder-{h.hexdigest()[:20]}.pt"


def decode_cached(files: list[str], channels: int) -> torch.Tensor:
    """Decode once; later runs on the same unchanged files read one tensor file."""
    path = _cache_path(files, channels)
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception:
            pass  # a damaged cache is rebuilt below
    images = _decode_all(files, channels)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(images, tmp)
        os.replace(tmp, path)
    except OSError:
        pass  # caching is an optimisation only
    return images


def check_folder(root: str, train_split: str, val_split: str) -> tuple[Path, Path]:
    """The two split folders of a folder data set, or a DataError naming what is missing."""
    rootp = Path(root).expanduser()
    if not rootp.is_dir():
        raise DataError(f"data.root {rootp} does not exist: expected <root>/{train_split}/<class>/*.png")
    tdir, vdir = rootp / train_split, rootp / val_split
    for d, key in ((tdir, "train_split"), (vdir, "val_split")):
        if not d.is_dir():
            have = ", ".join(sorted(p.name for p in rootp.iterdir() if p.is_dir())) or "nothing"
            raise DataError(f"split folder {d} does not exist (data.{key}); {rootp} holds: {have}")
    return tdir, vdir


def load_folder(root: str, train_split: str, val_split: str, channels: int, max_in_memory_size: int,
                stats: tuple | None) -> Source:
    tdir, vdir = check_folder(root, train_split, val_split)
    classes = list_classes(tdir)
    if not classes:
        raise DataError(f"{tdir} has no class folders: expected {tdir}/<class>/*.png")
    extra = sorted(set(list_classes(vdir)) - set(classes))
    if extra:
        raise DataError(f"{vdir} has classes not in {tdir}: {', '.join(extra[:5])}")
    tfiles, tlabels = list_files(tdir, classes)
    vfiles, vlabels = list_files(vdir, classes)
    if not vfiles:
        raise DataError(f"{vdir} has no images")
    from PIL import Image

    try:
        with Image.open(tfiles[0]) as im:
            w, h = im.size
    except Exception as e:
        raise DataError(f"cannot read image {tfiles[0]}: {type(e).__name__}") from None
    in_memory = max(w, h) <= max_in_memory_size
    mean, std = stats if stats else ((0.5,) * channels, (0.25,) * channels)
    if in_memory:
        train = Split(decode_cached(tfiles, channels), torch.tensor(tlabels))
        val = Split(decode_cached(vfiles, channels), torch.tensor(vlabels))
        if train.images.shape[2:] != val.images.shape[2:]:
            raise DataError(f"train images are {tuple(train.images.shape[2:])} but val images are {tuple(val.images.shape[2:])}")
        if stats is None:  # per-channel statistics of the training images
            f = train.images.float() / 255
            mean = tuple(f.mean(dim=(0, 2, 3)).tolist())
            std = tuple(f.std(dim=(0, 2, 3)).tolist())
        return Source(train, val, classes, channels, int(train.images.shape[2]), mean, std, True)
    mean, std = stats if stats else IMAGENET_STATS
    return Source(Split(None, torch.tensor(tlabels), tfiles), Split(None, torch.tensor(vlabels), vfiles),
                  classes, channels, max(w, h), mean, std, in_memory=False)


# ----------------------------------------------------------------------------- digits
def load_digits(seed: int = 0, val_fraction: float = 0.2) -> Source:
    """scikit-learn's 8×8 handwritten digits (1,797 real images, shipped inside the package)."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    images = torch.from_numpy((d.images * (255.0 / 16.0)).round().astype(np.uint8))[:, None]
    labels = torch.from_numpy(d.target.astype(np.int64))
    val_idx = stratified_subset(labels, val_fraction, seed + 7)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[val_idx] = False
    train_idx = mask.nonzero().squeeze(1)
    f = images[train_idx].float() / 255
    return Source(Split(images[train_idx], labels[train_idx]), Split(images[val_idx], labels[val_idx]),
                  [str(i) for i in range(10)], 1, 8, (f.mean().item(),), (f.std().item(),))


# ----------------------------------------------------------------------------- synthetic
def make_synthetic(num_classes: int, train_size: int, val_size: int, image_size: int, channels: int,
                   seed: int = 0) -> Source:
    """Class templates plus noise: learnable, deterministic, no files."""
    gen = torch.Generator().manual_seed(seed + 12345)
    templates = torch.rand(num_classes, channels, image_size, image_size, generator=gen) * 255

    def split(n, offset):
        g = torch.Generator().manual_seed(seed + offset)
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=g)]
        noise = torch.randn(n, channels, image_size, image_size, generator=g) * 60
        imgs = (templates[labels] + noise).clamp(0, 255).to(torch.uint8)
        return Split(imgs, labels)

    return Source(split(train_size, 1), split(val_size, 2), [f"class{i}" for i in range(num_classes)],
                  channels, image_size, (0.5,) * channels, (0.25,) * channels)


# ----------------------------------------------------------------------------- subsets
def stratified_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices of a class-balanced random subset: round(fraction·n_c) (≥ 1) per class."""
    if not 0 < fraction <= 1:
        raise DataError(f"data.train_fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return torch.arange(len(labels))
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero().squeeze(1)
        k = max(1, int(round(fraction * len(idx))))
        keep.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
    return torch.sort(torch.cat(keep)).values
