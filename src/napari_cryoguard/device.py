"""Pick the compute device, mixed precision, and batched inference with OOM fallback.

Device order for ``"auto"``: CUDA, then Apple MPS, then CPU (DESIGN.md, layout).
Inference is offered twice over, following the stardist-napari pattern named in
STYLE.md: :func:`iter_predict` is a generator that yields progress and returns the
probabilities (the GUI runs it in a worker, tests drain it), and :func:`predict`
drains it for you, reporting to an optional tqdm-like object or callback.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Generator, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from napari_cryoguard._progress import drain
from napari_cryoguard.errors import CryoGuardError

__all__ = [
    "PredictProgress",
    "autocast_context",
    "is_out_of_memory",
    "iter_predict",
    "predict",
    "resolve_device",
]


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Turn a device name into a ``torch.device`` that exists on this machine.

    Parameters
    ----------
    name
        ``"auto"`` (or None): CUDA if available, else Apple MPS, else CPU.
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a ``torch.device`` are
        honoured as given.

    Raises
    ------
    CryoGuardError
        An unparseable name, or an explicit device that is not available (e.g.
        ``"cuda"`` on a machine without a GPU, ``"cuda:1"`` with one GPU).
    """
    if name is None or (isinstance(name, str) and name.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = name if isinstance(name, torch.device) else torch.device(str(name).strip().lower())
    except (RuntimeError, ValueError) as exc:
        raise CryoGuardError(
            f"unknown device {name!r}; use 'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps'"
        ) from exc
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CryoGuardError(f"device {name!r} requested but CUDA is not available here")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise CryoGuardError(
                f"device {name!r} requested but only {count} CUDA device(s) are visible"
            )
        return dev
    if dev.type == "mps":
        if not _mps_available():
            raise CryoGuardError(f"device {name!r} requested but Apple MPS is not available here")
        return dev
    raise CryoGuardError(
        f"device type {dev.type!r} is not supported; use 'auto', 'cpu', 'cuda' or 'mps'"
    )


def autocast_context(
    device: torch.device | str, enabled: bool
) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision (float16 autocast) on CUDA when ``enabled``; a no-op elsewhere."""
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if enabled and dev.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a CUDA (or MPS) out-of-memory error."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class PredictProgress(NamedTuple):
    """Progress of :func:`iter_predict`: samples done, total, current batch size."""

    done: int
    total: int
    batch_size: int


def _as_batch(volumes: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = volumes if isinstance(volumes, torch.Tensor) else torch.from_numpy(np.asarray(volumes))
    if x.dim() == 4:
        x = x.unsqueeze(1)
    if x.dim() != 5 or x.shape[1] != 1:
        raise CryoGuardError(
            f"expected subtomograms of shape (N, D, H, W) or (N, 1, D, H, W), got {tuple(x.shape)}"
        )
    if not (
        x.is_floating_point()
        or x.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
    ):
        raise CryoGuardError(f"subtomograms must be numeric, got dtype {x.dtype}")
    return x.detach()


def _model_device(model: nn.Module) -> torch.device | None:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


def iter_predict(
    model: nn.Module,
    volumes: np.ndarray | torch.Tensor,
    *,
    device: str | torch.device = "auto",
    batch_size: int = 64,
    amp: bool = False,
    on_oom: Callable[[int], None] | None = None,
) -> Generator[PredictProgress, None, np.ndarray]:
    """Class probabilities for a stack of subtomograms, as a generator yielding progress.

    Parameters
    ----------
    model
        A classifier returning logits (N, C).
    volumes
        (N, D, H, W) or (N, 1, D, H, W), numpy or tensor; converted to float32.
    device
        See :func:`resolve_device`. The model is moved there for the call and moved
        back to where it was afterwards.
    batch_size
        Samples per forward pass. On an out-of-memory error the batch is halved and
        retried (a ``RuntimeWarning`` and ``on_oom(new_batch_size)``), down to 1;
        an OOM at batch size 1 raises ``CryoGuardError``.
    amp
        float16 autocast, on CUDA only (:func:`autocast_context`).

    Yields
    ------
    PredictProgress
        After each batch.

    Returns
    -------
    numpy.ndarray
        Softmax probabilities (N, C) float32 (via ``StopIteration.value`` / ``yield from``).

    Notes
    -----
    Each batch runs under ``torch.inference_mode()`` with the model in eval mode; the
    model's previous train/eval mode (and device) is restored when the generator
    finishes or is closed. Inference mode is entered per batch, never held across a
    ``yield``, so the caller's code between steps runs with autograd as usual.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise CryoGuardError(f"batch_size must be a positive integer, got {batch_size!r}")
    x = _as_batch(volumes)
    cube = getattr(model, "cube", None)
    if cube is not None and tuple(x.shape[2:]) != (cube, cube, cube):
        raise CryoGuardError(
            f"the model was built for {cube}^3 subtomograms, got {'x'.join(map(str, x.shape[2:]))}"
        )
    dev = resolve_device(device)
    n = int(x.shape[0])
    num_classes = getattr(model, "num_classes", None)
    out: np.ndarray | None = (
        np.empty((n, int(num_classes)), dtype=np.float32) if num_classes is not None else None
    )
    if n == 0:
        if out is None:
            raise CryoGuardError("no subtomograms to classify")
        return out

    was_training = model.training
    home = _model_device(model)
    model.to(dev)
    model.eval()
    try:
        start, bs = 0, batch_size
        while start < n:
            chunk = x[start : start + bs]
            try:
                probs = _forward_probs(model, chunk, dev, amp)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                reason = f"{type(exc).__name__}: {exc}"
                del exc
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                if bs == 1:
                    raise CryoGuardError(
                        f"out of memory on {dev} even with batch size 1; use a smaller model, "
                        f"or the cpu device ({reason})"
                    ) from None
                bs = max(1, bs // 2)
                warnings.warn(
                    f"out of memory on {dev}; retrying with batch size {bs}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                if on_oom is not None:
                    on_oom(bs)
                continue
            if out is None:
                out = np.empty((n, probs.shape[1]), dtype=np.float32)
            out[start : start + probs.shape[0]] = probs
            start += probs.shape[0]
            yield PredictProgress(start, n, bs)
    finally:
        if home is not None and home != dev:
            model.to(home)
        model.train(was_training)
    return out


def _forward_probs(
    model: nn.Module, chunk: torch.Tensor, dev: torch.device, amp: bool
) -> np.ndarray:
    with torch.inference_mode():
        batch = chunk.to(dev, dtype=torch.float32, non_blocking=True)
        with autocast_context(dev, amp):
            logits = model(batch)
        if logits.dim() != 2:
            raise CryoGuardError(f"the model returned shape {tuple(logits.shape)}, expected (N, C)")
        return torch.softmax(logits.float(), dim=1).cpu().numpy()


def predict(
    model: nn.Module,
    volumes: np.ndarray | torch.Tensor,
    *,
    device: str | torch.device = "auto",
    batch_size: int = 64,
    amp: bool = False,
    progress: Any = None,
    on_oom: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Class probabilities (N, C) float32 for a stack of subtomograms.

    Same arguments as :func:`iter_predict`, plus ``progress``: either a tqdm-like
    object (its ``update(n)`` is called with the samples done in each batch; set its
    ``total`` yourself) or a callable ``progress(done, total)``.
    """
    gen: Iterator[PredictProgress] = iter_predict(
        model, volumes, device=device, batch_size=batch_size, amp=amp, on_oom=on_oom
    )
    return drain(gen, progress)
