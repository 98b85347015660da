"""Joining PyTorch's process group when a command runs under ``torchrun``: training (DDP) and batch generation
(each process takes its shard of the rows)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device, timeout: timedelta | None = None) -> DistInfo:
    """Join the process group when started by ``torchrun`` (WORLD_SIZE > 1): NCCL on CUDA, else gloo.

    ``timeout``: how long a collective (a barrier) may wait for the slowest process; batch generation, whose
    shards finish minutes or hours apart, gives a long one.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        kwargs = {} if timeout is None else {"timeout": timeout}
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", **kwargs)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info
