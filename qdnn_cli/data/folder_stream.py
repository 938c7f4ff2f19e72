"""Large-image class folders (ImageNet): a DataLoader with worker processes, pinned memory
and persistent workers; standard ImageNet transforms (RandomResizedCrop + flip for
training, resize to 256/224 of the crop then centre crop for evaluation)."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


class _FileDataset(Dataset):
    def __init__(self, files, labels, transform):
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("RGB")), int(self.labels[i])


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
        self.sampler = None
        if world > 1:
            from torch.utils.data.distributed import DistributedSampler

            self.sampler = DistributedSampler(self.dataset, world, rank, shuffle=train, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        self.loader = DataLoader(
            self.dataset, batch_size=batch_size, shuffle=train and self.sampler is None, sampler=self.sampler,
            num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
            drop_last=False, generator=gen,
        )
        self.num_images = len(files)

    def set_epoch(self, epoch):
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)
