"""Data-parallel training across processes with torch.distributed (DDP): gloo on CPUs, NCCL on GPUs.

`torchrun --nproc-per-node N -m opensd.cli train lora ...` starts N copies of the command; each
finds its rank in the environment torchrun sets. `--batch-size` stays the GLOBAL batch: every rank
draws the same global batch (the dataset's order and each step's noise depend only on the seed and
the step) and takes its own rows of it, so a run continues on any number of processes, and one
process with the whole batch computes the same gradients. A rank's loss is its rows' mean times
(its rows x ranks / batch rows), so DDP's average over ranks is the mean over the whole batch even
when a batch does not split evenly; a rank whose share is empty runs one row at weight 0, keeping
in step with the others. Only rank 0 writes the run's state, samples and the trained file."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Parallel:
    """This process's place among `world` training processes."""
    rank: int
    world: int
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, n: int) -> tuple[slice, float]:
        """This rank's rows of a global batch of `n`, and the weight of their mean loss."""
        lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
        if hi == lo:
            return slice(0, 1), 0.0
        return slice(lo, hi), (hi - lo) * self.world / n

    def wrap(self, model: nn.Module, loss_fn) -> nn.Module:
        """`model` (the trained parameters) in DDP, called as (batch, step) -> this rank's loss."""
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        return DistributedDataParallel(_Loss(model, loss_fn), device_ids=[device] if device.type == "cuda" else None,
                                       broadcast_buffers=False, find_unused_parameters=True)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The average of `value` over the ranks (the whole batch's loss)."""
        value = value.detach().clone()
        dist.all_reduce(value)
        return value / self.world

    def barrier(self) -> None:
        dist.barrier()


class _Loss(nn.Module):
    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch, step: int) -> torch.Tensor:
        return self.loss_fn(self.model, batch, step)


def main_first(parallel: Parallel | None, fn):
    """fn() on rank 0 first (it writes a cache or a record), then on the other ranks (they read it)."""
    if parallel is not None and not parallel.main:
        parallel.barrier()
    out = fn()
    if parallel is not None and parallel.main:
        parallel.barrier()
    return out


def start(device: str) -> tuple[Parallel | None, str]:
    """Join the process group torchrun describes (None for a single process) and this rank's device
    (cuda -> cuda:LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None, device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Parallel(dist.get_rank(), world, local), device


def finish() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
