"""The inputs of an evaluation: the dataset, the models, the sample selection, and the
content hashes that key the resumable cells of ``state.json``.

Used by :func:`napari_cryoguard.evaluate.run.evaluate` and by the reproduction driver
(which keys its trained checkpoints with the same :func:`sha`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.evaluate.metrics import json_clean

__all__ = [
    "EvalModel",
    "as_dataset",
    "domain_warnings",
    "load_models",
    "model_fingerprint",
    "select_rows",
    "sha",
    "slug",
]


@dataclass
class EvalModel:
    """A model under evaluation: display name, the loaded model, a hash of its weights
    (the cells' key) and whether it was in training mode when given."""

    name: str
    loaded: Any  # LoadedModel
    fingerprint: str
    was_training: bool


def sha(*parts: Any) -> str:
    """A content hash of ``parts`` (arrays by dtype, shape and bytes, the rest as sorted
    JSON). It keys the cells of ``state.json`` and the reproduction's checkpoints and
    parts: changing it makes every stored result look new."""
    h = hashlib.sha1()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str(p.dtype).encode())
            h.update(str(p.shape).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        elif isinstance(p, bytes):
            h.update(p)
        else:
            h.update(json.dumps(json_clean(p), sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()


def model_fingerprint(model: nn.Module, meta: dict) -> str:
    """A hash of a model's weights, class names and class."""
    h = hashlib.sha1()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu").contiguous().numpy().tobytes())
    h.update(json.dumps(meta.get("class_names"), default=str).encode())
    h.update(type(model).__name__.encode())
    return h.hexdigest()


def as_dataset(data: Any) -> Any:
    """A labelled :class:`~napari_cryoguard.data.SubtomogramDataset` from a path, a dataset
    or a simulated dataset (a clear error for anything else or for no labels)."""
    from napari_cryoguard.data import SubtomogramDataset, load_dataset

    if isinstance(data, str | os.PathLike):
        ds = load_dataset(data)
        ds.meta = {**ds.meta, "_source": str(data)}
    elif isinstance(data, SubtomogramDataset):
        ds = data
    elif hasattr(data, "volumes") and hasattr(data, "labels"):
        params = dict(getattr(data, "params", {}) or {})
        ds = SubtomogramDataset(
            volumes=np.asarray(data.volumes, dtype=np.float32),
            labels=np.asarray(data.labels),
            class_names=list(getattr(data, "class_names", None) or []) or None,
            voxel_size=float(getattr(data, "voxel_size", 1.0)),
            normalized=bool(params.get("normalize", True)),
            meta={"simulated": params} if params else {},
        )
    else:
        raise CryoGuardError(
            f"cannot evaluate on a {type(data).__name__}: give a dataset path (.npz), a "
            "SubtomogramDataset or a simulated dataset"
        )
    if ds.labels is None or not (np.asarray(ds.labels) >= 0).any():
        raise CryoGuardError(
            "the dataset has no labels: robustness evaluation needs labelled subtomograms "
            "(the clean accuracy must be known)"
        )
    return ds


def load_models(
    entries: Sequence[Any],
    names: Sequence[str] | None,
    cube: int,
    class_names: Sequence[str] | None,
) -> list[EvalModel]:
    """The models of ``entries`` (checkpoint paths, bundled names, ``LoadedModel`` or
    ``nn.Module`` objects) with unique display names (``names`` or the file stems)."""
    from napari_cryoguard.classify import LoadedModel, load_model

    if not entries:
        raise CryoGuardError("no models to evaluate")
    if names is not None and len(names) != len(entries):
        raise CryoGuardError(f"{len(names)} names for {len(entries)} models")
    out: list[EvalModel] = []
    used: set[str] = set()
    for i, entry in enumerate(entries):
        if isinstance(entry, LoadedModel):
            loaded, default = entry, Path(str(entry.source)).stem or f"model{i + 1}"
        elif isinstance(entry, nn.Module):
            # a bare module is assumed to use the dataset's classes, in its order
            loaded = LoadedModel(
                model=entry,
                metadata={
                    "cube": int(getattr(entry, "cube", cube)),
                    "class_names": list(class_names) if class_names else None,
                },
                source=type(entry).__name__,
            )
            default = f"model{i + 1}"
        else:
            loaded = load_model(entry, device="cpu")
            default = Path(str(entry)).stem if str(entry).endswith(".safetensors") else str(entry)
        name = str(names[i]) if names is not None else default
        base, k = name, 2
        while name in used:
            name, k = f"{base}-{k}", k + 1
        used.add(name)
        was_training = any(m.training for m in loaded.model.modules())
        out.append(
            EvalModel(name, loaded, model_fingerprint(loaded.model, loaded.metadata), was_training)
        )
    return out


def domain_warnings(models: Sequence[EvalModel], ds) -> dict[str, list[str]]:
    """Per model: how the dataset lies outside what it was trained on (voxel size, cube,
    normalisation), so robustness numbers on foreign data are read as such."""
    from napari_cryoguard.classify import domain_warnings as warnings_of

    return {m.name: warnings_of(m.loaded, voxel_size=ds.voxel_size, cube=ds.cube,
                                    normalized=ds.normalized) for m in models}


def select_rows(labels: np.ndarray, max_samples: int | None, seed: int) -> np.ndarray:
    """Rows with known labels; with ``max_samples`` a seeded, class-balanced subset (sorted)."""
    known = np.flatnonzero(labels >= 0)
    if max_samples is None or max_samples >= known.size:
        return known
    if max_samples < 1:
        raise CryoGuardError(f"max_samples must be >= 1, got {max_samples}")
    rng = np.random.default_rng([int(seed), 0xE7A1])
    perm = rng.permutation(known)
    lab = labels[perm]
    rank = np.zeros(perm.size, dtype=np.int64)
    for c in np.unique(lab):
        pos = np.flatnonzero(lab == c)
        rank[pos] = np.arange(pos.size)
    order = np.lexsort((lab, rank))  # round robin over the classes
    return np.sort(perm[order[:max_samples]])


def slug(text: str) -> str:
    """``text`` as a file-name part."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"
