"""Rank handling for `torchrun --nproc_per_node=N` (DDP): the one place that knows whether there are other ranks.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; without WORLD_SIZE > 1 this process is rank 0 of 1 and every
helper answers for it or does nothing, so the training loop reads the same either way (after EDM's
torch_utils/distributed.py). Collectives (`broadcast_path`, `barrier`, `rank_drift`) must be called on every rank.

Example:
    >>> init("cpu"), get_rank(), get_world_size(), is_main()
    (None, 0, 1, True)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist


def init(device_type: str) -> None:
    """Joins the process group torchrun set up (nccl for cuda, gloo on the CPU); nothing in a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if _active() else 0


def get_world_size() -> int:
    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    """Whether this process writes the run's files (rank 0)."""
    return get_rank() == 0


def device(device_type: str) -> torch.device:
    """This process's device: with cuda the GPU of its LOCAL_RANK, else the CPU."""
    if device_type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def wrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module that training calls: DDP over `module` (gradients averaged across ranks), or `module` itself."""
    return torch.nn.parallel.DistributedDataParallel(module) if _active() else module


def broadcast_path(path: Path | None) -> Path:
    """Rank 0's `path` on every rank (the run directory, which only rank 0 creates)."""
    if not _active():
        return path
    holder = [str(path) if path is not None else ""]
    dist.broadcast_object_list(holder, src=0)
    return Path(holder[0])


def barrier() -> None:
    """Waits for every rank (so that none tears the group down while rank 0 still writes: gloo aborts it)."""
    if _active():
        dist.barrier()


def rank_drift(module: torch.nn.Module) -> float:
    """Largest |p - p_rank0| over all parameters and ranks (0 when DDP keeps the replicas identical)."""
    drift = torch.zeros(())
    for p in module.parameters():
        ref = p.detach().clone()
        dist.broadcast(ref, src=0)
        drift = torch.maximum(drift, (p.detach() - ref).abs().max().cpu())
    dist.all_reduce(drift, op=dist.ReduceOp.MAX)
    return float(drift)


def teardown() -> None:
    """Leaves the process group `init` joined; nothing in a single process."""
    if _active():
        dist.destroy_process_group()
