"""Small-image data sets as one uint8 tensor on the training device.

Random crop (zero padding), horizontal flip and normalisation run on that device for a
whole batch at once — no per-image Python work, no worker processes. The order and the
augmentation of epoch ``e`` depend only on ``(seed, e)``, so a run resumed at an epoch
boundary sees exactly the batches an uninterrupted run would.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Augment:
    crop_padding: int = 0
    flip: bool = False


def random_crop_flip(images: torch.Tensor, padding: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Batch version of torchvision's RandomCrop(size, padding) + RandomHorizontalFlip.

    ``images``: (B, C, H, W) uint8. Offsets are uniform on [0, 2·padding] per image, like
    ``RandomCrop.get_params``; each image is flipped with probability 1/2.
    The random draws come from ``gen`` on the CPU so they do not depend on the device.
    """
    b, c, h, w = images.shape
    device = images.device
    out = images
    if padding > 0:
        padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(device, non_blocking=True)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(device, non_blocking=True)
        rows = (oy[:, None] + torch.arange(h, device=device))[:, None, :, None]  # B,1,H,1
        cols = (ox[:, None] + torch.arange(w, device=device))[:, None, None, :]  # B,1,1,W
        bidx = torch.arange(b, device=device)[:, None, None, None]
        cidx = torch.arange(c, device=device)[None, :, None, None]
        out = padded[bidx, cidx, rows, cols]
    if flip:
        mask = (torch.rand(b, generator=gen) < 0.5).to(device, non_blocking=True)
        out = torch.where(mask[:, None, None, None], out.flip(3), out)
    return out


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

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

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
        order = order.to(self.device)
        total = order.numel()
        stop = total - total % self.batch_size if self.drop_last else total
        for start in range(0, stop, self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self.images.index_select(0, idx)
            if self.augment.crop_padding or self.augment.flip:
                x = random_crop_flip(x, self.augment.crop_padding, self.augment.flip, gen)
            x = (x.float() - self.mean) * self.inv_std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels.index_select(0, idx)
