"""Classification of subtomograms with a checkpoint or bundled weights (Qt-free).

One place resolves a model specification (``default``, ``cb3d-default``, ``ae-default``
or a ``.safetensors`` path), checks that the data fit it (cube size, normalisation) and
runs batched inference through :func:`napari_cryoguard.device.iter_predict`. The CLI's
``cryoguard classify`` and the napari "Classify" widget are thin layers over it.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_cryoguard.errors import CryoGuardError


@dataclass
class LoadedModel:
    """A classifier ready to use, with what its checkpoint says about it."""

    model: Any
    metadata: dict
    source: str

    @property
    def cube(self) -> int:
        return int(self.metadata.get("cube", getattr(self.model, "cube", 28)))

    @property
    def class_names(self) -> list[str]:
        names = self.metadata.get("class_names")
        if names:
            return [str(n) for n in names]
        return [f"class {i}" for i in range(int(self.model.num_classes))]

    @property
    def has_decoder(self) -> bool:
        return hasattr(self.model, "reconstruct")

    @property
    def normalization(self) -> str:
        return str(self.metadata.get("normalization", "zscore"))


def load_model(spec: str | os.PathLike, device: str = "cpu") -> LoadedModel:
    """Load bundled weights by name, or a checkpoint file by path.

    Parameters
    ----------
    spec
        ``"default"`` (= ``"cb3d-default"``), ``"cb3d-default"``, ``"ae-default"``, or the
        path of a ``.safetensors`` checkpoint written by ``cryoguard train``.
    """
    from napari_cryoguard.models import bundled_models, load_checkpoint, load_default

    text = str(spec)
    if text in ("default", *bundled_models()) or (text.endswith("-default") and not Path(text).exists()):
        model, meta = load_default(text, device=device)
    else:
        model, meta = load_checkpoint(Path(text), device=device)
    model.eval()
    return LoadedModel(model=model, metadata=meta, source=text)


def zscore(volumes: np.ndarray) -> np.ndarray:
    """Per-sample zero-mean, unit-variance normalisation (constant samples become zero)."""
    v = np.asarray(volumes, dtype=np.float32)
    axes = tuple(range(1, v.ndim))
    mean = v.mean(axis=axes, keepdims=True)
    std = v.std(axis=axes, keepdims=True)
    return ((v - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


def prepare_volumes(loaded: LoadedModel, volumes: np.ndarray, normalized: bool) -> np.ndarray:
    """Check the cube fits the model and normalise as its checkpoint says.

    Raises
    ------
    CryoGuardError
        When the subtomograms are not (N, D, D, D) cubes of the model's size.
    """
    v = np.asarray(volumes, dtype=np.float32)
    if v.ndim == 5 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim != 4 or len(set(v.shape[1:])) != 1:
        raise CryoGuardError(f"subtomograms must be a stack of cubes (N, D, D, D), got shape {v.shape}")
    if v.shape[1] != loaded.cube:
        raise CryoGuardError(
            f"the model {loaded.source!r} takes {loaded.cube}^3 cubes but the subtomograms are "
            f"{v.shape[1]}^3: extract them again with size {loaded.cube}")
    if not np.isfinite(v).all():
        raise CryoGuardError("the subtomograms contain NaN or infinite values")
    if loaded.normalization == "zscore" and not normalized:
        v = zscore(v)
    return v


@dataclass
class Predictions:
    """Per-sample class probabilities and predicted classes."""

    probabilities: np.ndarray
    class_names: list[str]

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def predicted_names(self) -> list[str]:
        return [self.class_names[i] for i in self.predicted]

    def accuracy(self, labels) -> float | None:
        """Accuracy against ``labels`` (samples labelled -1 are ignored)."""
        if labels is None:
            return None
        labels = np.asarray(labels)
        known = labels >= 0
        if not known.any():
            return None
        return float((self.predicted[known] == labels[known]).mean())


def iter_classify(loaded: LoadedModel, volumes: np.ndarray, *, normalized: bool = True,
                  device: str = "auto", batch_size: int = 32,
                  amp: bool = False) -> Generator[tuple[int, int], None, Predictions]:
    """Classify a stack, yielding ``(done, total)`` after each batch; returns Predictions."""
    from napari_cryoguard.device import iter_predict

    v = prepare_volumes(loaded, volumes, normalized)
    gen = iter_predict(loaded.model, v, device=device, batch_size=batch_size, amp=amp)
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            probs = stop.value
            break
        yield (step.done, step.total)
    return Predictions(probabilities=np.asarray(probs, dtype=np.float32),
                       class_names=loaded.class_names)


def classify(loaded: LoadedModel, volumes: np.ndarray, **kwargs) -> Predictions:
    """Classify a stack of subtomograms; see :func:`iter_classify`."""
    from napari_cryoguard._progress import drain

    return drain(iter_classify(loaded, volumes, **kwargs))


def write_predictions(path: str | os.PathLike, preds: Predictions, labels=None, coords=None) -> Path:
    """Write predictions as CSV: ``index, predicted, predicted_name, p_<class>...``.

    Columns ``label``/``label_name`` are added when true labels are known and ``z, y, x``
    when coordinates are; the file is written to a temporary name and renamed.
    """
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise CryoGuardError(f"predictions are written as .csv, got {path.name}")
    header = ["index", "predicted", "predicted_name"]
    header += [f"p_{c}" for c in preds.class_names]
    if labels is not None:
        header += ["label", "label_name"]
    if coords is not None:
        header += ["z", "y", "x"]
    from napari_cryoguard._atomic import atomic_output

    with atomic_output(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for i, p in enumerate(preds.probabilities):
            row = [i, int(p.argmax()), preds.class_names[int(p.argmax())], *(repr(float(q)) for q in p)]
            if labels is not None:
                lab = int(labels[i])
                row += [lab, preds.class_names[lab] if 0 <= lab < len(preds.class_names) else ""]
            if coords is not None:
                row += [repr(float(c)) for c in coords[i]]
            w.writerow(row)
    return path


def align_labels(labels, data_class_names, model_class_names) -> np.ndarray | None:
    """Map a dataset's labels onto the model's class indices by class name.

    A dataset without class names is assumed to share the model's order. Labels of
    classes the model does not know become -1 (ignored by :meth:`Predictions.accuracy`).
    """
    if labels is None:
        return None
    labels = np.asarray(labels, dtype=np.int64)
    if not data_class_names:
        return labels
    lookup = {n: i for i, n in enumerate(model_class_names)}
    table = np.array([lookup.get(str(n), -1) for n in data_class_names] + [-1], dtype=np.int64)
    return np.where(labels >= 0, table[np.clip(labels, 0, len(table) - 1)], -1)
