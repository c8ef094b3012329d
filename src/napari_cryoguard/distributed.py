"""``cryoguard classify`` and ``cryoguard attack`` under ``torchrun --nproc_per_node N``.

torchrun starts N copies of the same command with ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` set. Each rank takes a contiguous share of whole batches of the
subtomograms (:func:`rank_rows`; batches are cut exactly as in a single process, so
every forward pass sees the same inputs and the predictions match a one-process run),
streams its results to a part file beside the output, and rank 0 joins the parts in
rank order into the one output file (:func:`join_parts`), so memory stays bounded by a
batch on every rank. Small per-sample numbers (counts, the attack summary) are gathered
on rank 0 through ``torch.distributed`` (``gloo`` on CPU, ``nccl`` on CUDA, one GPU per
rank by ``LOCAL_RANK``). Only rank 0 logs and prints the ``--json`` line.

Without ``WORLD_SIZE`` > 1 everything here is a no-op: one process, rank 0 of 1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_cryoguard.errors import CryoGuardError

__all__ = ["Session", "join_parts", "part_path", "rank_rows", "session", "world"]


def world() -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun's environment (``(0, 1)`` outside it)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError as exc:
        raise CryoGuardError(f"RANK/WORLD_SIZE are not integers: {exc}") from None
    if size < 1 or not 0 <= rank < size:
        raise CryoGuardError(f"RANK={rank} does not fit WORLD_SIZE={size}")
    return rank, size


@dataclass
class Session:
    """This process's place in a (possibly one-process) run."""

    rank: int = 0
    size: int = 1
    device: str = "auto"

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` in rank order, on every rank (``[obj]`` in one process)."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` in rank order on rank 0, None elsewhere."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out


def _rank_device(device: str) -> str:
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device in ("cuda", "auto"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{local % max(torch.cuda.device_count(), 1)}"
        return "cpu" if device == "auto" else device
    return device


@contextlib.contextmanager
def session(device: str = "auto") -> Iterator[Session]:
    """Join the torchrun process group (when ``WORLD_SIZE`` > 1) for the ``with`` block.

    The device of each rank: ``cuda:<LOCAL_RANK>`` for ``auto``/``cuda`` when CUDA is
    present (backend ``nccl``), else the CPU (backend ``gloo``); an explicit device such
    as ``cpu`` is kept. The group is left again at the end.
    """
    rank, size = world()
    if size == 1:
        yield Session(0, 1, device)
        return
    import torch.distributed as dist

    dev = _rank_device(device)
    created = False
    if not dist.is_initialized():
        backend = "nccl" if dev.startswith("cuda") else "gloo"
        if dev.startswith("cuda"):
            import torch

            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
        created = True
    try:
        yield Session(rank, size, dev)
    finally:
        if created:
            dist.destroy_process_group()


def rank_rows(n: int, batch_size: int, rank: int, size: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of rank ``rank``: a contiguous share of whole batches.

    The ``ceil(n / batch_size)`` batches are split as evenly as possible in rank order,
    so the batches (and thus every forward pass) are those of a one-process run.
    """
    n_batches = -(-int(n) // int(batch_size))
    b0 = rank * n_batches // size
    b1 = (rank + 1) * n_batches // size
    return min(b0 * batch_size, n), min(b1 * batch_size, n)


def part_path(out: str | os.PathLike, rank: int, size: int) -> Path:
    """Where rank ``rank`` streams its share of ``out`` (a hidden file beside it)."""
    out = Path(out)
    return out.with_name(f".{out.stem}.rank{rank}of{size}.part{out.suffix}")


def join_parts(parts: Sequence[Path], out: str | os.PathLike, *,
               metadata: str | None = None, block_rows: int = 256) -> Path:
    """Join the ranks' part files (in rank order) into ``out`` and delete them.

    ``.csv``: the header once, then every part's rows. ``.npz``: every member's rows
    concatenated, copied block by block from memory maps of the parts (uncompressed),
    ``metadata`` (a JSON string) replacing the parts' ``metadata``. Written atomically.
    """
    out = Path(out)
    parts = [Path(p) for p in parts]
    if out.suffix.lower() == ".csv":
        from napari_cryoguard._atomic import atomic_output

        with atomic_output(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as dst:
            for i, part in enumerate(parts):
                with open(part, newline="", encoding="utf-8") as src:
                    header = src.readline()
                    if i == 0:
                        dst.write(header)
                    shutil.copyfileobj(src, dst, 2**20)
    else:
        import zipfile

        from napari_cryoguard.data import NpzWriter, _map_member, release_pages

        with NpzWriter(out) as w:
            for part in parts:
                with zipfile.ZipFile(part) as zf:
                    names = [i.filename for i in zf.infolist()]
                for name in names:
                    key = name[:-4]
                    if key == "metadata":
                        continue
                    arr = _map_member(part, name)
                    if arr.dtype.kind == "U" or arr.ndim == 0:
                        w.append(key, np.array(arr))
                        continue
                    for lo in range(0, len(arr), block_rows):
                        w.append(key, np.array(arr[lo:lo + block_rows]))
                        release_pages(arr)
                    del arr
            if metadata is not None:
                w.set("metadata", np.array(metadata))
    for part in parts:
        with contextlib.suppress(OSError):
            part.unlink()
    return out
