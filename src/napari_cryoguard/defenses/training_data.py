"""Training data: the dataset a run trains on, its validation split and the batches' rows.

:func:`as_training_dataset` accepts a ``.npz`` path, a
:class:`~napari_cryoguard.data.SubtomogramDataset` or a simulated dataset and checks it can
train a classifier; :func:`split_indices` is the deterministic class-stratified
train/validation split (0.2 as the 80/20 split of RAT section IV.B and CB3D section 3);
:class:`TrainRows` hands whole batches to the ``DataLoader``; :func:`parse_simulate_spec`
reads a ``--simulate`` spec and :func:`stored_data` finds the data a checkpoint was
trained on (for ``--resume`` without ``--data``).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.params import parse_value

__all__ = ["TrainRows", "as_training_dataset", "parse_simulate_spec", "split_indices",
           "stored_data"]


def split_indices(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic class-stratified train/validation split.

    Each class keeps ``round(val_fraction * n_c)`` samples for validation (at least
    one, and at most ``n_c - 1``, when ``val_fraction > 0`` and ``n_c >= 2``);
    unlabelled samples (-1) always train.

    Returns
    -------
    (train_index, val_index)
        Sorted int64 row indices.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([int(seed), 0x5B1])
    train: list[np.ndarray] = [np.flatnonzero(labels < 0)]
    val: list[np.ndarray] = []
    for c in np.unique(labels[labels >= 0]):
        rows = rng.permutation(np.flatnonzero(labels == c))
        k = 0
        if val_fraction > 0 and len(rows) >= 2:
            k = min(len(rows) - 1, max(1, int(round(val_fraction * len(rows)))))
        val.append(rows[:k])
        train.append(rows[k:])
    tr = np.sort(np.concatenate(train)).astype(np.int64)
    va = np.sort(np.concatenate(val)).astype(np.int64) if val else np.zeros(0, np.int64)
    return tr, va


def as_training_dataset(data: Any) -> tuple[Any, dict[str, Any]]:
    """A :class:`~napari_cryoguard.data.SubtomogramDataset` and a description of it."""
    from napari_cryoguard.data import SubtomogramDataset, load_dataset

    if isinstance(data, (str, os.PathLike)):
        ds = load_dataset(data)
        info: dict[str, Any] = {"path": str(Path(data).resolve())}
    elif isinstance(data, SubtomogramDataset):
        ds = data
        info = {"in_memory": True, **({"meta": ds.meta} if ds.meta else {})}
    elif hasattr(data, "volumes") and hasattr(data, "labels"):  # SimulatedDataset
        params = dict(getattr(data, "params", {}) or {})
        ds = SubtomogramDataset(
            volumes=data.volumes,
            labels=data.labels,
            class_names=getattr(data, "class_names", None),
            voxel_size=float(getattr(data, "voxel_size", 1.0)),
            normalized=bool(params.get("normalize", True)),
            meta={"simulated": params} if params else {},
        )
        info = {"simulated": params} if params else {"in_memory": True}
    else:
        raise CryoGuardError(
            f"cannot train on a {type(data).__name__}: give a dataset path, a "
            "SubtomogramDataset or a simulated dataset"
        )
    if ds.labels is None:
        raise CryoGuardError("the dataset has no labels; training needs labelled subtomograms")
    if len(ds) < 2:
        raise CryoGuardError(f"the dataset has {len(ds)} subtomogram(s); training needs >= 2")
    if ds.num_classes < 2:
        raise CryoGuardError(
            f"the dataset has {ds.num_classes} class(es); a classifier needs at least 2"
        )
    if not (ds.labels >= 0).any():
        raise CryoGuardError("every sample of the dataset is unlabelled (-1)")
    if "path" not in info:  # load_dataset has checked a file already
        from napari_cryoguard.data import require_finite

        require_finite(ds.volumes, "the training subtomograms")
    info.update(n=len(ds), cube=ds.cube, num_classes=ds.num_classes)
    return ds, info


class TrainRows(torch.utils.data.Dataset):
    """Training rows of the dataset; ``ds[list_of_positions]`` returns a whole batch."""

    def __init__(self, volumes: torch.Tensor, labels: torch.Tensor, rows: np.ndarray) -> None:
        self.volumes = volumes
        self.labels = labels
        self.rows = torch.as_tensor(rows, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = self.rows[torch.as_tensor(positions, dtype=torch.int64)]
        return self.volumes[idx].unsqueeze(1), self.labels[idx], idx


def _split_top(spec: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in spec:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


_SIM_ALIASES = {"tilt": "tilt_range", "n": "n_per_class", "defocus": "defocus_um"}


def parse_simulate_spec(spec: str) -> dict[str, Any]:
    """``"n_per_class=50,snr=0.1,tilt=60,cube=28,seed=1"`` -> keyword arguments.

    ``tilt`` means ``tilt_range``; ``classes`` takes a JSON list or names joined by
    ``+``. Keys are checked against :func:`simulate_subtomograms`'s signature.
    """
    from napari_cryoguard.simulate import simulate_subtomograms

    valid = [
        p.name
        for p in inspect.signature(simulate_subtomograms).parameters.values()
        if p.name != "progress"
    ]
    kw: dict[str, Any] = {}
    for item in _split_top(spec):
        key, sep, raw = item.partition("=")
        key = _SIM_ALIASES.get(key.strip(), key.strip())
        if not sep or key not in valid:
            raise CryoGuardError(
                f"bad --simulate item {item!r}; use key=value with keys: "
                f"{', '.join(valid)} (tilt = tilt_range)"
            )
        value = parse_value(raw)
        if key == "classes" and isinstance(value, str):
            value = [c for c in value.replace(";", "+").split("+") if c]
        kw[key] = value
    return kw


def stored_data(
    resume: str, stored: Mapping[str, Any]
) -> tuple[str | None, dict[str, Any] | None]:
    """The training data a checkpoint names: (dataset path, None) or (None, simulation)."""
    training = stored.get("training")
    info = training.get("dataset") if isinstance(training, Mapping) else None
    if isinstance(info, Mapping):
        path = info.get("path")
        if isinstance(path, str) and path:
            if not Path(path).is_file():
                raise CryoGuardError(
                    f"{resume} was trained on {path}, which is no longer there; "
                    "give the data with --data DATASET"
                )
            return path, None
        sim = info.get("simulated")
        if isinstance(sim, Mapping) and sim:
            return None, dict(sim)
    raise CryoGuardError(
        f"{resume} does not say where its training data is (it was in memory); "
        "give it with --data DATASET or --simulate SPEC"
    )

