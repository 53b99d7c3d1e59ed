"""DDP helpers for the trainers (torchrun: gloo on CPU, nccl on GPUs). Pure torch.distributed,
no ComfyUI import; with one process every helper is a no-op."""
from __future__ import annotations

import os
from typing import Iterable

import torch


def ddp_info() -> tuple[int, int]:
    """(rank, world size) of this process (1 process without torchrun)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def ddp_init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Join torchrun's process group (WORLD_SIZE > 1); nccl on GPUs, gloo otherwise."""
    import torch.distributed as dist
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return ddp_info()


def ddp_broadcast_(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    import torch.distributed as dist
    if ddp_info()[1] > 1:
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data, src)


def ddp_average_grads_(params: Iterable[torch.Tensor]) -> None:
    """All-reduce and average gradients over ranks (what DistributedDataParallel does)."""
    import torch.distributed as dist
    rank, world = ddp_info()
    if world == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(world)


def ddp_mean(value: float) -> float:
    import torch.distributed as dist
    rank, world = ddp_info()
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item() / world)
