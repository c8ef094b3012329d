"""Attack a whole dataset in batches: a generator for the GUI and a plain function.

Following STYLE.md habit 4 (the stardist-napari pattern): :func:`iter_attack_dataset`
yields progress and returns the result (the GUI drains it in a worker, tests drain it
directly); :func:`attack_dataset` drains it, reporting to an optional tqdm-like object
or callback.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from napari_cryoguard._progress import drain
from napari_cryoguard.attacks.base import AttackResult, _model_device, make_attack
from napari_cryoguard.errors import CryoGuardError

__all__ = ["AttackProgress", "attack_dataset", "iter_attack_dataset"]


class AttackProgress(NamedTuple):
    """Progress of :func:`iter_attack_dataset`: samples attacked so far and in total."""

    done: int
    total: int


def _resolve_device(device: str | torch.device | None, model: nn.Module) -> torch.device:
    try:
        from napari_cryoguard.device import resolve_device
    except ImportError:  # pragma: no cover - device.py is part of the package
        return _model_device(model) if device in (None, "auto") else torch.device(device)
    return resolve_device(device)


def iter_attack_dataset(
    model: nn.Module,
    volumes: Any,
    labels: Any,
    name: str,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = "auto",
    indices: Sequence[int] | np.ndarray | None = None,
    **params: Any,
) -> Generator[AttackProgress, None, AttackResult]:
    """Attack ``volumes`` batch by batch, yielding :class:`AttackProgress` after each batch.

    Parameters
    ----------
    model
        Classifier returning logits (N, C). Moved to ``device`` for the call and moved
        back afterwards; its train/eval mode and weights are untouched.
    volumes
        (N, D, H, W) or (N, 1, D, H, W) numpy array (or tensor, or memory map); only
        the rows of one batch are converted to float32 at a time.
    labels
        (N,) true labels (target labels with ``targeted=True``).
    name
        Attack name (``available_attacks()``).
    batch_size
        Samples per batch.
    device
        ``"auto"`` (CUDA > MPS > CPU), ``"cpu"``, ``"cuda"`` ... (see
        ``napari_cryoguard.device.resolve_device``).
    indices
        Attack only these rows (in this order); ``result.indices`` records them.
    **params
        The attack's parameters (validated before any work).

    Returns
    -------
    AttackResult
        All batches concatenated, tensors on the CPU (via ``StopIteration.value`` /
        ``yield from``).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise CryoGuardError(f"batch_size must be a positive integer, got {batch_size!r}")
    attack = make_attack(name, **params)
    n_all = len(volumes)
    lab = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
    if lab.shape[0] != n_all:
        raise CryoGuardError(f"{n_all} volumes but {lab.shape[0]} labels")
    if indices is None:
        idx = np.arange(n_all)
    else:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -n_all or idx.max() >= n_all):
            raise CryoGuardError(f"indices out of range for {n_all} volumes")
        idx = np.where(idx < 0, idx + n_all, idx)
    total = int(idx.size)
    if total == 0:
        raise CryoGuardError("no subtomograms to attack")
    dev = _resolve_device(device, model)
    home = _model_device(model)
    model.to(dev)
    results: list[AttackResult] = []
    try:
        for start in range(0, total, batch_size):
            rows = idx[start : start + batch_size]
            if isinstance(volumes, torch.Tensor):
                xb = volumes[torch.as_tensor(rows)]
            else:
                xb = np.asarray(volumes[rows], dtype=np.float32)
            res = attack(model, xb, lab[rows]).to("cpu")
            res.indices = rows.copy()
            results.append(res)
            yield AttackProgress(min(start + batch_size, total), total)
    finally:
        if home != dev:
            model.to(home)
    return AttackResult.concatenate(results)


def attack_dataset(
    model: nn.Module,
    volumes: Any,
    labels: Any,
    name: str,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = "auto",
    indices: Sequence[int] | np.ndarray | None = None,
    progress: Any = None,
    **params: Any,
) -> AttackResult:
    """Attack a whole dataset in batches; see :func:`iter_attack_dataset`.

    ``progress``: a tqdm-like object (``update(n)`` is called with the samples done in
    each batch) or a callable ``progress(done, total)``.

    Example
    -------
    >>> res = attack_dataset(model, volumes, labels, "fgsm", eps=0.03, device="cpu")  # doctest: +SKIP
    >>> res.summary()["accuracy_after"]  # doctest: +SKIP
    """
    gen = iter_attack_dataset(
        model,
        volumes,
        labels,
        name,
        batch_size=batch_size,
        device=device,
        indices=indices,
        **params,
    )
    return drain(gen, progress)
