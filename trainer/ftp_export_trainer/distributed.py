"""torch.distributed helpers: a no-op single process unless launched under torchrun.

Every rank runs the same deterministic pipeline; only work is sharded (GA fitness, router
gradients) and results are gathered so that all ranks hold identical state. Rank 0 writes.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup(device: str) -> None:
    """Initialise the process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
        if device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def shard(n: int) -> list[int]:
    """The item indices of ``range(n)`` this rank handles (round robin)."""
    return list(range(rank(), n, world()))


def gather_items(n: int, mine: dict[int, torch.Tensor], like: torch.Tensor) -> list[torch.Tensor]:
    """Each rank computed ``mine`` = {index: tensor shaped like ``like``} for its :func:`shard`;
    return the full ordered list on every rank (exact values: a sum where each slot has one writer)."""
    out = torch.zeros((n,) + tuple(like.shape), dtype=like.dtype, device=like.device)
    for i, t in mine.items():
        out[i] = t
    if world() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return list(out.unbind(0))


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_gather_object(obj: object) -> list[object]:
    """Every rank's ``obj``, in rank order."""
    if world() == 1:
        return [obj]
    box: list[object] = [None] * world()
    dist.all_gather_object(box, obj)
    return box
