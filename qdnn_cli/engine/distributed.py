"""Data-parallel training on PyTorch's own process groups (``torchrun``).

Why not ``DistributedDataParallel``: a quantizable step runs one forward/backward per bit
mode, and each mode leaves the other modes' Bit-Specific BN (and PACT/LSQ) parameters
unused. DDP's reducer fires per backward and either errors on unused parameters or,
with ``find_unused_parameters``, adds a graph traversal per mode and still reduces
partial gradients. We instead accumulate every mode's gradients locally and all-reduce
them once per optimizer step, in a few large flat buckets — the same number of bytes as
one DDP step, B times fewer collectives than per-mode syncing, and exact.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

BUCKET_BYTES = 25 * 1024 * 1024


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_name: str) -> "DistContext":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
        if use_cuda:
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
        return cls(rank, world, local)

    def all_ok(self, ok: bool) -> bool:
        """True on every rank only if ``ok`` is true on every rank."""
        if not self.enabled:
            return ok
        flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def broadcast_model(self, model: torch.nn.Module) -> None:
        """Start every rank from rank 0's parameters and buffers."""
        if not self.enabled:
            return
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)

    def broadcast_buffers(self, model: torch.nn.Module) -> None:
        """BN running statistics are per process; use rank 0's everywhere (as DDP does)."""
        if not self.enabled:
            return
        for b in model.buffers():
            dist.broadcast(b.data, src=0)

    def average_gradients(self, params) -> None:
        """All-reduce (mean) the accumulated gradients of all modes, bucketed."""
        if not self.enabled:
            return
        grads = []
        for p in params:
            if p.grad is None:  # a parameter no sampled mode used: contribute zeros so ranks agree
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        bucket, size = [], 0
        for g in grads:
            bucket.append(g)
            size += g.numel() * g.element_size()
            if size >= BUCKET_BYTES:
                self._reduce_bucket(bucket)
                bucket, size = [], 0
        if bucket:
            self._reduce_bucket(bucket)

    def _reduce_bucket(self, grads):
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n

    def sum_tensor(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t)
        return t

    def shutdown(self):
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
