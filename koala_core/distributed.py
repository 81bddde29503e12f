"""Data-parallel training on an existing launcher: ``torchrun`` or ``accelerate launch``.

Both start N copies of ``koala train`` with ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` set (and the
rendezvous address); :func:`workers` joins them into one torch.distributed group (NCCL on CUDA,
gloo on CPU). Every worker draws the same global batch from the same seeded generator, splits it
into ``micro_batches`` chunks and runs its own share of them; DDP averages the gradients. So a run
on N workers computes exactly what one process computes with ``--micro-batches N`` (gradient
accumulation over the same chunks), and a run resumes on any number of workers that divides
``micro_batches``. Only rank 0 evaluates, shows progress and writes checkpoints and train state.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from .errors import ConfigError


@dataclass(frozen=True)
class Workers:
    """This process's place among the training workers (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def device_for(self, device: str) -> str:
        """This worker's device: its own GPU (``cuda:LOCAL_RANK``) when several share a machine."""
        return f"cuda:{self.local_rank}" if self.distributed and device.startswith("cuda") else device

    def share(self, micro_batches: int) -> range:
        """The micro-batch indices this worker runs (a contiguous block of the global batch)."""
        if micro_batches % self.world:
            raise ConfigError(f"train: {self.world} workers need --micro-batches divisible by "
                              f"{self.world} (got {micro_batches}); e.g. --micro-batches {self.world}")
        per = micro_batches // self.world
        return range(self.rank * per, (self.rank + 1) * per)

    def wrap(self, module: torch.nn.Module):
        """``module`` under DDP (gradients averaged over the workers), or as it is."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        import inspect

        device_ids = [module_device(module).index] if module_device(module).type == "cuda" else None
        # buffers (draft vocabulary, LM-head rows) are identical on every worker: synced once at
        # most, never per forward (torch 2.13 renamed the switch)
        params = inspect.signature(DistributedDataParallel).parameters
        quiet = ({"forward_sync_buffers": False} if "forward_sync_buffers" in params
                 else {"broadcast_buffers": False})
        return DistributedDataParallel(module, device_ids=device_ids, **quiet)

    def from_main(self, value: float, device=None) -> float:
        """Rank 0's ``value`` on every worker (e.g. the share of a time budget spent, which each
        worker's own clock would read a little differently: the learning rate and the stop must be
        the same everywhere)."""
        if not self.distributed:
            return value
        t = self._scalars([value], device)
        torch.distributed.broadcast(t, src=0)
        return float(t.item())

    def mean(self, values: list[float], device=None) -> list[float]:
        """The mean of each of ``values`` over the workers (as they are in one process)."""
        if not self.distributed:
            return values
        t = self._scalars(values, device)
        torch.distributed.all_reduce(t)
        return (t / self.world).tolist()

    @staticmethod
    def _scalars(values: list[float], device) -> torch.Tensor:
        """``values`` as a float64 tensor where the backend can send it (NCCL: the GPU)."""
        nccl = device is not None and torch.distributed.get_backend() == "nccl"
        return torch.tensor(values, dtype=torch.float64, device=device if nccl else "cpu")

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Every worker's ``t`` (any number of rows, the same trailing shape) concatenated in
        rank order, on every worker (``t`` on this worker's device: gloo on CPU, NCCL on CUDA)."""
        if not self.distributed:
            return t
        rows = torch.tensor([t.shape[0]], device=t.device)
        counts = [torch.zeros_like(rows) for _ in range(self.world)]
        torch.distributed.all_gather(counts, rows)
        sizes = [int(c.item()) for c in counts]
        padded = t.new_zeros((max(sizes), *t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        torch.distributed.all_gather(parts, padded)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers of ``module`` on every worker."""
        if self.distributed:
            for t in [*module.parameters(), *module.buffers()]:
                torch.distributed.broadcast(t.data, src=0)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def module_device(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def no_sync(model, last: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-batch of a worker's share."""
    if last or not hasattr(model, "no_sync"):
        return nullcontext()
    return model.no_sync()


def workers(device: str | torch.device = "cpu") -> Workers:
    """Join the workers a launcher started (``WORLD_SIZE`` > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Workers()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    dist = torch.distributed
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; run one process")
    if not dist.is_initialized():
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Workers(rank, world, local)
