"""DistributedDataParallel helpers for the training loop.

``cryoguard train`` runs unchanged under ``torchrun --nproc_per_node K``: torchrun
sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`init_distributed` then joins
the process group (backend ``nccl`` on CUDA, ``gloo`` on CPU), each rank trains on
its shard of every epoch (``DistributedSampler``), metrics are summed across ranks
with :func:`all_reduce_sum`, and only rank 0 writes checkpoints and events (with every
rank's random-generator states, gathered by :func:`gather_objects`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from napari_cryoguard.errors import CryoGuardError

__all__ = [
    "DistContext",
    "all_reduce_max",
    "all_reduce_sum",
    "barrier",
    "env_world_size",
    "gather_objects",
    "init_distributed",
    "shutdown_distributed",
]


@dataclass
class DistContext:
    """Where this process sits in a (possibly single-process) run.

    Attributes
    ----------
    rank, world_size, local_rank
        From torchrun's environment; 0, 1, 0 without it.
    device
        The device this rank trains on (``cuda:<local_rank>`` under DDP on GPUs).
    owns_group
        True when :func:`init_distributed` created the process group (and
        :func:`shutdown_distributed` should destroy it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        """True with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the one that writes files and events)."""
        return self.rank == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def init_distributed(device: str | torch.device = "auto") -> DistContext:
    """Join the torchrun process group if there is one, and pick this rank's device.

    Parameters
    ----------
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``... (see
        :func:`napari_cryoguard.device.resolve_device`). Under DDP a CUDA device
        becomes ``cuda:<LOCAL_RANK>``.

    Returns
    -------
    DistContext
    """
    from napari_cryoguard.device import resolve_device

    world = env_world_size()
    dev = resolve_device(device)
    if world == 1 and not (dist.is_available() and dist.is_initialized()):
        return DistContext(device=dev)
    if not dist.is_available():
        raise CryoGuardError("WORLD_SIZE > 1 but torch.distributed is not available here")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
    elif dev.type == "mps":
        raise CryoGuardError("distributed training is not supported on Apple MPS; use CPU or CUDA")
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        owns = True
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=dev,
        owns_group=owns,
    )


def shutdown_distributed(ctx: DistContext) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if ctx.owns_group and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (a no-op in a single process)."""
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(ctx: DistContext, values: Sequence[float]) -> list[float]:
    """Sum a few numbers across ranks (float64); returns them unchanged in one process."""
    if not ctx.distributed:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def all_reduce_max(ctx: DistContext, value: float) -> float:
    """Maximum of one number across ranks (used to agree on cancellation)."""
    if not ctx.distributed:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def gather_objects(ctx: DistContext, obj: object) -> list | None:
    """Every rank's ``obj`` (picklable), in rank order, on rank 0; None on the others.

    Used to store each rank's random-generator states in the one state file rank 0
    writes, so a mid-epoch resume continues every rank's stream exactly. In one
    process: ``[obj]``.
    """
    if not ctx.distributed:
        return [obj]
    out: list | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def _comm_device(ctx: DistContext) -> torch.device:
    # nccl reduces CUDA tensors only; gloo CPU tensors
    return ctx.device if ctx.device.type == "cuda" else torch.device("cpu")
