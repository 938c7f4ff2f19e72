"""Large-image class folders (ImageNet): a DataLoader with worker processes, pinned memory
and persistent workers; standard ImageNet transforms (RandomResizedCrop + flip for
training, resize to 256/224 of the crop then centre crop for evaluation).

Exact resume: the order of epoch e is a permutation seeded by (seed, epoch), sharded by
rank, and every image's augmentation is drawn from a generator seeded by (seed, epoch,
rank, position in the epoch) — a pure function of those, whichever worker decodes it
and however many workers there are. So a run resumed after an epoch, or mid-epoch from
batch k (:meth:`StreamBatches.skip`), sees exactly the batches the uninterrupted run saw.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class _FileDataset(Dataset):
    def __init__(self, files, labels, transform):
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, item):
        from PIL import Image

        i, sample_seed = item
        with Image.open(self.files[i]) as im:
            im = im.convert("RGB")
            # torchvision's random transforms draw from torch's global generator: seed it for
            # this image alone, without disturbing the process's own stream
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed)
                return self.transform(im), int(self.labels[i])


class _EpochOrder(Sampler):
    """Yields (image index, augmentation seed) for one rank's share of epoch ``epoch``."""

    def __init__(self, n: int, shuffle: bool, seed: int, rank: int, world: int):
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world
        self.epoch, self.start = 0, 0

    def order(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        idx = torch.randperm(self.n, generator=gen) if self.shuffle else torch.arange(self.n)
        if self.world > 1:
            if self.shuffle:  # training: the same number of steps on every rank
                idx = idx[: (self.n // self.world) * self.world]
            idx = idx[self.rank::self.world]
        return idx

    def __iter__(self):
        start, self.start = self.start, 0  # a skip applies to one pass only
        base = ((self.seed * 1_000_003 + self.epoch) * 1_009 + self.rank) * 10_000_019
        order = self.order().tolist()
        for pos in range(start, len(order)):
            yield order[pos], (base + pos) % (2**63 - 1)

    def __len__(self):
        return len(self.order())


class StreamBatches:
    def __init__(self, files, labels, batch_size, size, mean, std, device, train, seed, workers,
                 channels_last=False, rank=0, world=1):
        from torchvision import transforms as T

        if train:
            tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
        else:
            tf = T.Compose([T.Resize(int(round(size * 256 / 224))), T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])
        self.dataset = _FileDataset(files, labels.tolist(), tf)
        self.device = device
        self.channels_last = channels_last
        self.batch_size = batch_size
        self.sampler = _EpochOrder(len(files), train, seed, rank, world)
        self.loader = DataLoader(self.dataset, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
                                 pin_memory=device.type == "cuda", persistent_workers=workers > 0, drop_last=False)
        self.num_images = len(files)

    def set_epoch(self, epoch):
        self.sampler.epoch = epoch

    def skip(self, batches: int) -> None:
        """The next pass starts at batch ``batches`` (images before it are not decoded)."""
        self.sampler.start = batches * self.batch_size

    def __len__(self):
        return -(-len(self.sampler.order()) // self.batch_size)

    def __iter__(self):
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)
