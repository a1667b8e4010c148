"""DDP for `train fit`: joining the process group torchrun describes, and the module it wraps."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class TrainForward(nn.Module):
    """The module DDP wraps: one forward per prompt mode, returning logits (and, `with_iou`, the
    IoU head's predictions)."""

    def __init__(self, model: nn.Module, prompt: str):
        super().__init__()
        self.model = model
        self.prompt = prompt

    def forward(self, images: torch.Tensor, points: torch.Tensor | None = None,
                point_labels: torch.Tensor | None = None, boxes: torch.Tensor | None = None,
                use_box: torch.Tensor | None = None, embeddings: torch.Tensor | None = None,
                with_iou: bool = False):
        if self.prompt == "none":
            return self.model.forward_promptless(images)
        return self.model(images, points, point_labels, boxes=boxes, use_box=use_box, embeddings=embeddings,
                          with_iou=with_iou)


def setup_distributed(device_kind: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # Under torchrun even one process joins a group (NCCL on a GPU) and trains through DDP: the
    # code path of N GPUs, checkable on a one-GPU machine (bench/gpu_check.py).
    if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return DistInfo()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local, initialised_here=True)


def in_process_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def wrap_for_training(model: nn.Module, prompt: str, device: torch.device) -> nn.Module:
    """The forward the loop calls: TrainForward, inside DDP when a process group is up."""
    forward: nn.Module = TrainForward(model, prompt)
    if in_process_group():
        # find_unused_parameters: the IoU head and box/mask prompt embeddings get no gradient.
        forward = DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None,
                                          find_unused_parameters=True)
    return forward


def barrier(di: DistInfo) -> None:
    if di.world_size > 1:
        dist.barrier()


def sum_over_ranks(t: torch.Tensor, di_world: int) -> None:
    """In place: the sum of `t` over all ranks (no-op for one process)."""
    if di_world > 1:
        dist.all_reduce(t)
