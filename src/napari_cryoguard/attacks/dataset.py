"""Attack a whole dataset in batches: a generator for the GUI and a plain function.

Following STYLE.md habit 4 (the stardist-napari pattern): :func:`iter_attack_dataset`
yields progress and returns the result (the GUI drains it in a worker, tests drain it
directly); :func:`attack_dataset` drains it, reporting to an optional tqdm-like object
or callback.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from napari_cryoguard._progress import drain
from napari_cryoguard.attacks.base import AttackResult, make_attack
from napari_cryoguard.attacks.ops import model_device
from napari_cryoguard.errors import CryoGuardError

__all__ = ["AttackProgress", "AttackResultWriter", "attack_dataset", "iter_attack_dataset"]


class AttackProgress(NamedTuple):
    """Progress of :func:`iter_attack_dataset`: samples attacked so far and in total."""

    done: int
    total: int


def _resolve_device(device: str | torch.device | None, model: nn.Module) -> torch.device:
    try:
        from napari_cryoguard.device import resolve_device
    except ImportError:  # pragma: no cover - device.py is part of the package
        return model_device(model) if device in (None, "auto") else torch.device(device)
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
    on_batch: Callable[[AttackResult], Any] | None = None,
    keep_inputs: bool = True,
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
    on_batch
        Called with each batch's :class:`AttackResult` (on the CPU, ``indices`` set),
        e.g. :meth:`AttackResultWriter.add` to stream results to a file.
    keep_inputs
        With ``False`` the returned result keeps every per-sample field but ``x_adv``
        and ``perturbation`` (zero-width there), so memory is bounded by a batch plus a
        few numbers per sample; ``summary()`` is unchanged.
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
    home = model_device(model)
    model.to(dev)
    results: list[AttackResult] = []
    small: dict | None = None
    try:
        for start in range(0, total, batch_size):
            rows = idx[start : start + batch_size]
            if isinstance(volumes, torch.Tensor):
                xb = volumes[torch.as_tensor(rows)]
            else:
                xb = np.asarray(volumes[rows], dtype=np.float32)
            res = attack(model, xb, lab[rows]).to("cpu")
            res.indices = rows.copy()
            if on_batch is not None:
                on_batch(res)
            if keep_inputs:
                results.append(res)
            else:
                small = _store_small(small, res, start, total)
            yield AttackProgress(min(start + batch_size, total), total)
    finally:
        if home != dev:
            model.to(home)
    if not keep_inputs:
        return _small_result(small, idx)
    return AttackResult.concatenate(results)


def _store_small(small: dict | None, res: AttackResult, start: int, total: int) -> dict:
    """Copy a batch's per-sample numbers (all but x_adv and perturbation) into arrays of
    the whole run, allocated once: many small tensors kept per batch would fragment the
    heap between the batches' large ones, and memory would grow with the data set."""
    fields = [k for k in AttackResult._PER_SAMPLE if k not in ("x_adv", "perturbation")]
    values = {k: getattr(res, k) for k in fields}
    if res.margins is not None:
        values["margins"] = res.margins
    values.update({f"extra:{k}": v for k, v in res.extras.items()})
    if small is None:
        small = {
            "first": res,
            "steps": res.steps,
            "rows": 0,
            "arrays": {
                k: torch.empty((total, *v.shape[1:]), dtype=v.dtype) for k, v in values.items()
            },
        }
    for k, v in values.items():
        small["arrays"][k][start : start + len(v)] = v
    small["steps"] = max(small["steps"], res.steps)
    small["rows"] = start + len(res)
    return small


def _small_result(small: dict, idx: np.ndarray) -> AttackResult:
    arrays, first = small["arrays"], small["first"]
    n = small["rows"]
    empty = first.x_adv.new_empty((n, *([0] * (first.x_adv.dim() - 1))))
    return dataclasses.replace(
        first,
        x_adv=empty,
        perturbation=empty.clone(),
        **{k: arrays[k][:n] for k in AttackResult._PER_SAMPLE if k in arrays},
        margins=arrays["margins"][:n] if "margins" in arrays else None,
        extras={k[6:]: v[:n] for k, v in arrays.items() if k.startswith("extra:")},
        steps=small["steps"],
        indices=idx[:n].copy(),
    )


def attack_dataset(
    model: nn.Module, volumes: Any, labels: Any, name: str, *, progress: Any = None, **kwargs: Any
) -> AttackResult:
    """Attack a whole dataset in batches; see :func:`iter_attack_dataset`, whose keywords
    (``batch_size``, ``device``, ``indices``, ``on_batch``, ``keep_inputs`` and the
    attack's parameters) it takes.

    ``progress``: a tqdm-like object (``update(n)`` is called with the samples done in
    each batch) or a callable ``progress(done, total)``.

    Example
    -------
    >>> res = attack_dataset(model, volumes, labels, "fgsm", eps=0.03, device="cpu")  # doctest: +SKIP
    >>> res.summary()["accuracy_after"]  # doctest: +SKIP
    """
    return drain(iter_attack_dataset(model, volumes, labels, name, **kwargs), progress)


class AttackResultWriter:
    """Stream an attack's batches into one ``.npz`` result file.

    Members: every per-sample array of :meth:`AttackResult.numpy` (``x_adv``,
    ``perturbation``, ``labels``, ``pred_before`` ...), ``indices`` and a JSON
    ``metadata`` string given to :meth:`close`; the same file as saving the
    concatenated result at once, with memory bounded by one batch
    (:class:`napari_cryoguard.data.NpzWriter`, written atomically on close).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        from napari_cryoguard.data import NpzWriter

        path = Path(path)
        if path.suffix.lower() != ".npz":
            raise CryoGuardError(f"attack results are written as .npz, got {path.name}")
        self._npz = NpzWriter(path)
        self.n = 0

    @property
    def path(self) -> Path:
        return self._npz.path

    def add(self, res: AttackResult) -> None:
        """Append one batch (its per-sample arrays and ``indices``)."""
        for key, value in res.numpy().items():
            if isinstance(value, np.ndarray):
                self._npz.append(key, value)
        if res.indices is not None:
            self._npz.append("indices", np.asarray(res.indices))
        self.n += len(res)

    def close(self, metadata: dict) -> Path:
        """Write ``metadata`` (JSON, non-JSON values as text) and rename the file into place."""
        self._npz.set("metadata", np.array(json.dumps(metadata, default=str)))
        return self._npz.close()

    def abort(self) -> None:
        self._npz.abort()
