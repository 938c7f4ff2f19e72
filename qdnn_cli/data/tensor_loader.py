"""Small-image data sets as one uint8 tensor on the training device.

Random crop (zero padding), horizontal flip and normalisation run on that device for
chunks of whole batches at once — no per-image Python work, no worker processes. The
order and the augmentation of epoch ``e`` depend only on ``(seed, e)``, so a run resumed
at an epoch boundary sees exactly the batches an uninterrupted run would.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Augment:
    crop_padding: int = 0
    flip: bool = False


def draw_crop_flip(n: int, padding: int, flip: bool, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random crop offsets (n, 2) uniform on [0, 2·padding], like ``RandomCrop.get_params``,
    and flip flags (n,) with probability 1/2 (None without ``flip``), drawn on the CPU
    from ``gen`` so they do not depend on the device."""
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=gen)
    flips = torch.rand(n, generator=gen) < 0.5 if flip else None
    return offsets, flips


def crop_flip(images: torch.Tensor, padding: int, offsets: torch.Tensor, flips: torch.Tensor | None) -> torch.Tensor:
    """Crop every image of (B, C, H, W) ``images`` from its zero-padded copy at ``offsets``
    (B, 2: row, column) and mirror those with ``flips`` — one gather, one select, no loop."""
    b, c, h, w = images.shape
    device = images.device
    out = images
    if padding > 0:
        padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
        rows = (offsets[:, 0:1] + torch.arange(h, device=device))[:, None, :, None]  # B,1,H,1
        cols = (offsets[:, 1:2] + torch.arange(w, device=device))[:, None, None, :]  # B,1,1,W
        bidx = torch.arange(b, device=device)[:, None, None, None]
        cidx = torch.arange(c, device=device)[None, :, None, None]
        out = padded[bidx, cidx, rows, cols]
    if flips is not None:
        out = torch.where(flips[:, None, None, None], out.flip(3), out)
    return out


def random_crop_flip(images: torch.Tensor, padding: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Batch version of torchvision's RandomCrop(size, padding) + RandomHorizontalFlip
    on (B, C, H, W) uint8 ``images``, with the draws of :func:`draw_crop_flip`."""
    offsets, flips = draw_crop_flip(images.shape[0], padding, flip, gen)
    return crop_flip(images, padding, offsets.to(images.device), flips.to(images.device) if flips is not None else None)


# float32 images prepared per chunk (crop, flip, normalise): about 32 MiB, i.e. 21 CIFAR
# batches of 128; batches are views of their chunk
CHUNK_BYTES = 32 * 2**20


class TensorBatches:
    """Iterates ``(x, y)`` batches of a uint8 image tensor kept on ``device``.

    ``x`` comes out float32, normalised, optionally channels_last. With
    ``shuffle`` the order is a seeded permutation per epoch (call :meth:`set_epoch`).
    ``rank``/``world`` split every epoch's permutation into disjoint shards for
    data-parallel training (each rank gets ``batch_size`` images per step).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, mean, std,
                 device: torch.device, shuffle: bool, augment: Augment | None = None, seed: int = 0,
                 drop_last: bool = False, channels_last: bool = False, rank: int = 0, world: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.augment = augment or Augment()
        self.seed = seed
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.rank, self.world = rank, world
        c = images.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, c, 1, 1) * 255
        self.inv_std = 1.0 / (torch.tensor(std, dtype=torch.float32, device=device).view(1, c, 1, 1) * 255)
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, batches: int) -> None:
        """The next pass starts at batch ``batches`` of the epoch (a mid-epoch resume):
        the same batches the whole pass would have given from there."""
        self.start_batch = batches

    @property
    def num_images(self) -> int:
        return int(self.labels.shape[0])

    def __len__(self) -> int:
        n = self.num_images // self.world
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _generator(self) -> torch.Generator:
        gen = torch.Generator()
        gen.manual_seed(self.seed * 1_000_003 + self.epoch)
        return gen

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def __iter__(self):
        gen = self._generator()
        n = self.num_images
        if self.shuffle:
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        if self.world > 1:
            # training: every rank the same number of steps (the remainder is dropped);
            # evaluation: every image exactly once, counts summed across ranks afterwards
            if self.shuffle:
                order = order[: (n // self.world) * self.world]
            order = order[self.rank::self.world].contiguous()
        total = order.numel()
        aug = self.augment
        augment = bool(aug.crop_padding or aug.flip)
        if augment:
            # the whole epoch's draws in one host->device copy: no per-batch transfers or syncs
            offsets, flips = draw_crop_flip(total, aug.crop_padding, aug.flip, gen)
            offsets = self._to_device(offsets)
            flips = self._to_device(flips) if flips is not None else None
        order = self._to_device(order)
        stop = total - total % self.batch_size if self.drop_last else total
        first, self.start_batch = self.start_batch * self.batch_size, 0
        image_bytes = 4 * max(1, math.prod(self.images.shape[1:]))  # as float32
        chunk = self.batch_size * max(1, CHUNK_BYTES // (self.batch_size * image_bytes))
        # a chunk of whole batches is prepared at once: on a GPU each batch would otherwise
        # cost ~15 small kernel launches of host time, which a CUDA-graph step makes visible
        for c0 in range(first, stop, chunk):
            sl = slice(c0, min(stop, c0 + chunk))
            idx = order[sl]
            x = self.images.index_select(0, idx)
            if augment:
                x = crop_flip(x, aug.crop_padding, offsets[sl], flips[sl] if flips is not None else None)
            x = (x.float() - self.mean) * self.inv_std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = self.labels.index_select(0, idx)
            for start in range(0, x.shape[0], self.batch_size):
                yield x[start:start + self.batch_size], y[start:start + self.batch_size]
