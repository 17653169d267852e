"""Data parallelism: the process group ``torchrun`` sets up, and the few collectives the loop needs.

``torchrun --nproc_per_node N ...`` starts N copies of a program and tells each its ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` through environment variables. Started without torchrun, a
program is one process of a world of one, and every function here is a cheap no-op.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["World", "all_reduce_mean", "any_rank", "barrier", "init_distributed", "shutdown_distributed", "world"]


@dataclass(frozen=True)
class World:
    """Which process this is: ``rank`` of ``size``, ``local_rank`` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, evaluates and writes checkpoints; the others only train."""
        return self.rank == 0


def world() -> World:
    """This process's place in the running process group (a world of one without one)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return World()


def init_distributed(device_type: str) -> World:
    """Join the process group torchrun announced (nccl on CUDA, gloo on the CPU); a no-op without torchrun.

    On CUDA, each process takes the GPU of its local rank.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return World()
    if not (dist.is_available() and dist.is_initialized()):
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
            if local_rank >= torch.cuda.device_count():
                raise ValueError(
                    f"process {local_rank} of this machine has no GPU of its own: it has {torch.cuda.device_count()}"
                    " GPU(s). Start one process per GPU (torchrun --nproc_per_node <number of GPUs>), or train on"
                    " the CPU (--device cpu)."
                )
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
    return world()


def shutdown_distributed() -> None:
    """Leave the process group (after every process has arrived here)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process has arrived here."""
    if world().size > 1:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over all processes (``value`` itself in a world of one)."""
    if world().size == 1:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / world().size


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every process if ``flag`` is true on any of them (so that all stop together)."""
    if world().size == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
