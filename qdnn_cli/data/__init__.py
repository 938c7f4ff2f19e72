"""Data: ``build_data(data_cfg, ...)`` returns train/val batch iterables on the device.

Small images (CIFAR, digits, synthetic, folders of ≤ ``max_in_memory_size`` px) are held
as one uint8 tensor on the training device (:class:`TensorBatches`); large-image folders
(ImageNet) stream through a DataLoader with workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .sources import (
    CIFAR_STATS, DataError, Source, check_folder, fetch_cifar, load_cifar, load_digits, load_folder, make_synthetic,
    stratified_subset,
)
from .tensor_loader import Augment, TensorBatches, random_crop_flip

def _cifar(d, seed: int) -> Source:
    return load_cifar(d.name, d.root, bool(d.download))


def _folder(d, seed: int) -> Source:
    stats = None
    if d.get("mean") is not None and d.get("std") is not None:
        stats = (tuple(d.mean), tuple(d.std))
    return load_folder(d.root, d.train_split, d.val_split, int(d.get("in_channels", 3)),
                       int(d.get("max_in_memory_size", 64)), stats)


def _synthetic(d, seed: int) -> Source:
    return make_synthetic(int(d.num_classes), int(d.train_size), int(d.val_size), int(d.image_size),
                          int(d.get("in_channels", 3)), seed)


# data.name -> loader of the data config; adding a data set is one entry here (and a
# conf/data/*.yaml)
DATA_SOURCES: dict[str, Callable[..., Source]] = {
    "cifar100": _cifar,
    "cifar10": _cifar,
    "folder": _folder,
    "digits": lambda d, seed: load_digits(seed),
    "synthetic": _synthetic,
}


@dataclass
class DataBundle:
    train: object
    val: object
    num_classes: int
    in_channels: int
    image_size: int
    classes: list
    num_train: int
    num_val: int


def load_source(d, seed: int) -> Source:
    if d.name not in DATA_SOURCES:
        raise DataError(f"unknown data.name {d.name!r}: choose one of {', '.join(DATA_SOURCES)}")
    return DATA_SOURCES[d.name](d, seed)


def ensure_available(d) -> None:
    """Make sure ``build_data`` will find the data, cheaply: a folder data set's split folders
    exist; a CIFAR archive is there, or is downloaded now (once, before any run of a group
    creates its directory). Checks nothing else (a damaged file is found when loading)."""
    if d.name not in DATA_SOURCES:
        raise DataError(f"unknown data.name {d.name!r}: choose one of {', '.join(DATA_SOURCES)}")
    if d.name in ("cifar10", "cifar100"):
        fetch_cifar(d.name, d.root, bool(d.download))
    elif d.name == "folder":
        check_folder(d.root, d.train_split, d.val_split)


def subset_seed(d, seed: int) -> int:
    """The seed that picks the training subset (``data.train_fraction`` < 1): the run's
    seed unless ``data.subset_seed`` fixes one, so that runs of several seeds can share one
    subset and differ only in initialisation, order and augmentation."""
    fixed = d.get("subset_seed", None)
    return seed if fixed is None else int(fixed)


def build_data(d, batch_size: int, eval_batch_size: int, device: torch.device, seed: int,
               channels_last: bool = False, rank: int = 0, world: int = 1, workers: int = 4) -> DataBundle:
    src = load_source(d, seed)
    fraction = float(d.get("train_fraction", 1.0))
    train = src.train
    if fraction != 1:
        idx = stratified_subset(train.labels, fraction, subset_seed(d, seed))
        if src.in_memory:
            train = type(train)(train.images[idx], train.labels[idx])
        else:
            train = type(train)(None, train.labels[idx], [train.files[i] for i in idx.tolist()])
    num_classes = len(src.classes)
    aug = Augment(int(d.get("crop_padding", 0)), bool(d.get("flip", False)))
    if src.in_memory:
        tr = TensorBatches(train.images, train.labels, batch_size, src.mean, src.std, device, shuffle=True,
                           augment=aug, seed=seed, drop_last=False, channels_last=channels_last,
                           rank=rank, world=world)
        va = TensorBatches(src.val.images, src.val.labels, eval_batch_size, src.mean, src.std, device,
                           shuffle=False, channels_last=channels_last, rank=rank, world=world)
    else:
        from .folder_stream import StreamBatches

        size = int(d.get("image_size", 224))
        tr = StreamBatches(train.files, train.labels, batch_size, size, src.mean, src.std, device, True,
                           seed, workers, channels_last, rank, world)
        va = StreamBatches(src.val.files, src.val.labels, eval_batch_size, size, src.mean, src.std, device,
                           False, seed, workers, channels_last)
    return DataBundle(tr, va, num_classes, src.in_channels, src.image_size if src.in_memory else int(d.get("image_size", 224)),
                      src.classes, int(train.labels.numel()), int(src.val.labels.numel()))


def build_trained_images(d, eval_batch_size: int, device: torch.device, seed: int) -> TensorBatches:
    """The images a run trained on (its ``data.train_fraction`` subset), in order, with
    neither augmentation nor shuffling: the training side of a train/validation gap."""
    src = load_source(d, seed)
    if not src.in_memory:
        raise DataError("evaluating on the training images needs an in-memory data set (CIFAR-sized images)")
    fraction = float(d.get("train_fraction", 1.0))
    labels = src.train.labels
    idx = stratified_subset(labels, fraction, subset_seed(d, seed)) if fraction != 1 else torch.arange(len(labels))
    return TensorBatches(src.train.images[idx], labels[idx], eval_batch_size, src.mean, src.std, device,
                         shuffle=False)


def build_holdout(d, seed: int, batch_size: int, eval_batch_size: int, device: torch.device,
                  n_images: int, n_rerank: int = 0) -> tuple[TensorBatches, TensorBatches, TensorBatches | None, str]:
    """For post-training searches: (training batches as in training, for BN
    re-calibration; a held-out slice of the *training split* of about ``n_images``,
    stratified; a second slice of about ``n_rerank`` images disjoint from the first, or
    None; what the slices are). The slices are the part of the training split the run
    did not train on (``data.train_fraction`` < 1); with the whole split trained on, they
    are slices of the training images themselves, and the description says so. The
    validation split is never touched."""
    src = load_source(d, seed)
    if not src.in_memory:
        raise DataError("a search needs an in-memory data set (CIFAR-sized images); this one streams from disk")
    labels = src.train.labels
    fraction = float(d.get("train_fraction", 1.0))
    trained = stratified_subset(labels, fraction, subset_seed(d, seed)) if fraction != 1 else torch.arange(len(labels))
    rest = torch.ones(len(labels), dtype=torch.bool)
    rest[trained] = False
    pool = rest.nonzero().squeeze(1) if fraction != 1 else torch.arange(len(labels))
    what = ("held out: training-split images outside the run's training subset" if fraction != 1
            else "not held out: the run trained on the whole training split, so the slice is part of it")
    if len(pool) == 0:
        raise DataError("no training-split images are left to search on")
    asked = n_images
    if n_rerank > 0 and n_images + n_rerank > len(pool):  # a small data set: share what there is
        n_images = max(1, len(pool) * n_images // (n_images + n_rerank))
        n_rerank = max(1, len(pool) - n_images)
    take = stratified_subset(labels[pool], min(1.0, n_images / len(pool)), seed + 1)
    idx = pool[take]
    aug = Augment(int(d.get("crop_padding", 0)), bool(d.get("flip", False)))
    calib = TensorBatches(src.train.images[trained], labels[trained], batch_size, src.mean, src.std, device,
                          shuffle=True, augment=aug, seed=seed)

    def batches(i):
        return TensorBatches(src.train.images[i], labels[i], eval_batch_size, src.mean, src.std, device, shuffle=False)

    rerank, described = None, f"{len(idx)} images{'' if len(idx) >= asked else f' (of {asked} asked)'}, {what}"
    if n_rerank > 0:
        left = torch.ones(len(labels), dtype=torch.bool)
        left[trained] = fraction == 1  # the whole split trained on: any image not in the first slice
        left[idx] = False
        rest2 = left.nonzero().squeeze(1)
        if len(rest2) == 0:
            raise DataError("no training-split images are left for a second (re-ranking) slice: lower --search-images")
        idx2 = rest2[stratified_subset(labels[rest2], min(1.0, n_rerank / len(rest2)), seed + 2)]
        rerank = batches(idx2)
        described += f"; re-ranked on {len(idx2)} other images"
    return calib, batches(idx), rerank, described


__all__ = ["build_data", "ensure_available", "build_holdout", "build_trained_images", "DataBundle", "DataError", "TensorBatches", "Augment", "random_crop_flip",
           "stratified_subset", "CIFAR_STATS", "DATA_SOURCES"]
