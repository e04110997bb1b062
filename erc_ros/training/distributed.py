"""Distributed data parallel glue: the same training code runs alone or under ``torchrun``.

``torchrun --nproc_per_node=N -m erc_ros train ...`` sets RANK/WORLD_SIZE/MASTER_ADDR; we
initialise the process group (NCCL on GPUs, gloo on CPU), wrap the trainable module in
``DistributedDataParallel`` (gradients averaged across ranks, so weights stay identical) and
give each rank its own slice of the batches.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, backend: str | None = None) -> "DistContext":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_initialized():
            backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
            dist.init_process_group(backend)
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def wrap(self, module: nn.Module) -> nn.Module:
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(module)  # broadcasts rank 0's parameters and buffers at construction

    def broadcast_module(self, module: nn.Module) -> None:
        """Make every parameter and buffer equal to rank 0's (also the parts a stage does
        not train, e.g. the audio/video encoders during the text stage)."""
        if not self.active:
            return
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()
