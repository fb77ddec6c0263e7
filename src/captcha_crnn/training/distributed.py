"""Data-parallel training across processes and machines, started by torchrun.

torchrun (``python -m torch.distributed.run``) starts one process per GPU (or per CPU share) and
sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE plus the rendezvous address; the process
group is initialised from those (``env://``), NCCL on CUDA and Gloo on the CPU. Every rank draws the
same epoch permutation (same seed) and trains on its own shard of it; DistributedDataParallel
averages the gradients. Without those variables (or with WORLD_SIZE=1) everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's place in the job. `device` is where collectives' tensors live."""

    rank: int = 0  # of all processes (RANK)
    world: int = 1  # processes in all (WORLD_SIZE)
    local_rank: int = 0  # on this machine (LOCAL_RANK): the first one decodes the cache
    local_world: int = 1  # processes on this machine: they share its cores
    device: str = "cpu"
    owns_group: bool = False  # initialised here, so destroyed here

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env() -> Dist:
    """The job layout torchrun put in the environment (a single process when it is absent)."""
    env = os.environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return Dist()
    world = int(env["WORLD_SIZE"])
    return Dist(rank=int(env["RANK"]), world=world, local_rank=int(env.get("LOCAL_RANK", 0)),
                local_world=int(env.get("LOCAL_WORLD_SIZE", world)))


def setup(device: str) -> tuple[Dist, str]:
    """Join the process group when launched by torchrun; return the layout and this rank's device."""
    d = from_env()
    if not d.enabled:
        return d, device
    if device.startswith("cuda"):
        torch.cuda.set_device(d.local_rank)
        device, backend = f"cuda:{d.local_rank}", "nccl"
    else:
        backend = "gloo"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend)  # env:// rendezvous: MASTER_ADDR/PORT, RANK, WORLD_SIZE
    comm = device if backend == "nccl" else "cpu"
    return Dist(d.rank, d.world, d.local_rank, d.local_world, comm, owns), device


def shutdown(d: Dist) -> None:
    """Leave the process group if setup() created it."""
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def threads_per_process(d: Dist) -> int:
    """This process's share of the machine's CPU cores."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // max(1, d.local_world))


def shard(order: list[int], rank: int, world: int) -> list[int]:
    """Rank's share of an epoch's permutation: every world-th index, the order wrapped round to pad
    it to a multiple of world so that every rank gets the same number of images (and steps)."""
    if world == 1:
        return list(order)
    total = -(-len(order) // world) * world
    padded = [order[i % len(order)] for i in range(total)]
    return padded[rank::world]


def broadcast_float(value: float, d: Dist) -> float:
    """Rank 0's value on every rank (clock readings, so decisions that depend on time agree)."""
    if not d.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=d.device)
    dist.broadcast(t, src=0)
    return float(t.item())


def all_sum(values: list[float], d: Dist) -> list[float]:
    """Element-wise sums over all ranks."""
    if not d.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather(obj: Any, d: Dist) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, d: Dist) -> Any:
    """Rank 0's `obj` (picklable) on every rank."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=torch.device(d.device))
    return box[0]


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def average_buffers(model: torch.nn.Module, d: Dist) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over the ranks.

    Each rank's statistics follow its own shard (DDP only re-sends rank 0's at each forward), so
    before validation they are averaged: every rank then reads with the same model, the saved one.
    """
    if not d.enabled:
        return
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b.div_(d.world)


def wrap(model: torch.nn.Module, d: Dist, device: str) -> torch.nn.Module:
    """The module to train with: DistributedDataParallel around `model` when there are several ranks."""
    if not d.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.device(device).index] if device.startswith("cuda") else None
    return DistributedDataParallel(model, device_ids=ids)
