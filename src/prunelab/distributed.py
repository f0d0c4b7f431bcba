"""Data-parallel runs under torchrun: set up and tear down the process group from the
environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

`train.fit` does the rest: when a process group is initialised it wraps the model in
DistributedDataParallel and each rank takes `[rank::world]` of every global batch.

    torchrun --nproc_per_node 8 -m prunelab train --width 1.0 --batch-size 512 ...
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .evaluation import resolve_device


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def launched_by_torchrun() -> bool:
    """True when this process is one of several started by torchrun."""
    return env_world_size() > 1


def init_from_env(
    device: str = "auto", backend: str | None = None
) -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes; return (rank, world size, this rank's device).

    NCCL on CUDA (LOCAL_RANK picks the GPU, so 8 processes on one node use GPUs 0..7),
    gloo on the CPU; `device` is one of auto, cpu, cuda, cuda:N. Without torchrun
    (WORLD_SIZE unset or 1) no group is created and the result is (0, 1, device), so callers
    can use it unconditionally.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    asked = resolve_device(device)  # unknown names are a one-line error naming the choices
    use_cuda = asked.type == "cuda"
    if use_cuda:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = asked
    world = env_world_size()
    if world <= 1:
        return 0, 1, dev
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if use_cuda else {}  # binds NCCL to the GPU: no guessing
        dist.init_process_group(backend=backend or ("nccl" if use_cuda else "gloo"), **kwargs)
    return dist.get_rank(), dist.get_world_size(), dev


def cleanup() -> None:
    """Leave the process group (a no-op when none was created), so the process exits cleanly."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    """True on rank 0, or when not distributed: the one process that prints and writes files."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (a no-op when not distributed), e.g. before reading rank 0's file."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
