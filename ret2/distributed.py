"""Where this process stands in a `torchrun` / `accelerate launch` job, and the few collective steps the
evaluation and indexing commands need (rank 0 of 1 when run plainly)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .model import default_device
from .options import available_cores, default_num_workers  # noqa: F401 - light, shared with the commands


@dataclass(frozen=True)
class Dist:
    """This process's place in a `torchrun` / `accelerate launch` job (rank 0 of 1 when run plainly)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    started_here: bool = False  # whether we initialised the process group (and so destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None) -> tuple[Dist, torch.device]:
    """Read `RANK` / `WORLD_SIZE` / `LOCAL_RANK`; when several processes run, initialise the process group (nccl on
    CUDA, gloo on CPU) unless it is, and give each rank its own GPU. Returns the job's layout and this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(device or default_device())
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    started = False
    if world_size > 1 and not dist.is_initialized():
        # Ranks wait at barriers while others read or encode pools: hours on the full benchmark.
        cuda = device.type == "cuda"
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=6), device_id=device if cuda else None)
        started = True
    return Dist(rank, world_size, local_rank, started), device


def barrier(job: Dist) -> None:
    if job.world_size > 1:
        dist.barrier()


@contextlib.contextmanager
def main_first(job: Dist) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. filling the `datasets` cache), then the other ranks."""
    if not job.is_main:
        barrier(job)
    yield
    if job.is_main:
        barrier(job)


def finish(job: Dist) -> None:
    """Tear down a process group this process started. Every rank meets at a barrier first: a rank that destroys its
    group while a peer has already exited can block for ever in gloo's teardown (issue 28: rank 1 hung in a futex on
    a closed store socket after rank 0 had gone)."""
    if job.started_here:
        if job.world_size > 1:
            dist.barrier()
        dist.destroy_process_group()
