"""Scale-out under torchrun: RANK / WORLD_SIZE from the environment, gloo on CPU, NCCL on GPU.

Rank 0 holds the data dir lock, plans the run and broadcasts the work list; every rank embeds the
videos at positions rank, rank + W, ... of the list sorted by video id (deterministic sharding) and
writes them to the shared cache; rank 0 then commits the other ranks' videos from the cache and
publishes one index version. The data dir must be on a filesystem all nodes see (as the videos must).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

T = TypeVar("T")
# rank 0 plans (hashing new files) and finally publishes while the others wait: allow a long time
_TIMEOUT = timedelta(hours=12)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job; world_size 1 means no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of a list already sorted by video id."""
        return list(items[self.rank::self.world_size])

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj`, in rank order, on rank 0 (None elsewhere)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun job described by the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)  # NCCL object collectives run on the current device
    else:
        # CPU ranks on one node share its cores; each would otherwise start one thread per core
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cpus // max(1, local_world)))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=_TIMEOUT)
    logger.info("rank %d of %d (local %d, %s)", rank, world_size, local_rank, dist.get_backend())
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank)


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["DistContext", "init_distributed", "shutdown_distributed"]
