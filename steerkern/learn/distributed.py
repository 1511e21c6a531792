"""Sharding a learning run across ``torchrun`` processes (torch.distributed, any backend).

Outside ``torchrun`` (no process group) everything runs in one process. Work is split into whole
units that a single process would run the same way (ReFT-r1: chunks of concepts trained
together; DiffMean: batches of examples), so the gathered result equals a one-process run.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size): (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def my_share(units: list) -> list[int]:
    """Indices of the units this rank runs: contiguous blocks, as AxBench partitions concepts."""
    rank, size = world()
    per_rank, extra = divmod(len(units), size)
    start = rank * per_rank + min(rank, extra)
    return list(range(start, start + per_rank + (rank < extra)))


def gather(results: dict) -> dict:
    """The union of every rank's ``{unit: result}``, on every rank."""
    rank, size = world()
    if size == 1:
        return results
    everyone = [None] * size
    dist.all_gather_object(everyone, results)
    merged = {}
    for part in everyone:
        merged.update(part)
    return merged


def sum_all(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the ranks (in place), for accumulators each rank filled in part."""
    if world()[1] > 1:
        dist.all_reduce(tensor)
    return tensor
