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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from napari_cryoguard._atomic import StreamingWriter
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

    @property
    def voxel_size(self) -> float | None:
        """The voxel size in Angstrom the model was trained at (None when unknown)."""
        vs = self.metadata.get("voxel_size")
        return None if vs is None else float(vs)


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


#: Voxel sizes within this relative difference count as the same (no resampling).
VOXEL_SIZE_RTOL = 0.01


def _differs(a: float, b: float) -> bool:
    return abs(a - b) > VOXEL_SIZE_RTOL * b


def resample_volumes(volumes: np.ndarray, voxel_size: float, target_voxel_size: float,
                     cube: int, batch_size: int = 64) -> np.ndarray:
    """Resample cubes at ``voxel_size`` to ``cube``^3 cubes at ``target_voxel_size``.

    Trilinear interpolation (``torch.nn.functional.grid_sample``) on the grid of the
    output voxel centres: output voxel ``j`` lies ``(j - cube // 2) * target`` Angstrom
    from the particle, which is input voxel ``D // 2 + (j - cube // 2) * target /
    voxel_size`` (the particle sits at index ``D // 2`` of a ``D``^3 cube, as
    :func:`~napari_cryoguard.picking.extract_subtomograms` cuts it). Output voxels
    outside the input cube are 0 (the mean of normalised data). Coarser data (e.g. 40 A
    for a 10 A model) are interpolated and hold no detail finer than their own Nyquist
    limit; finer data are sampled without an anti-alias filter, so prefer extracting at
    the model's voxel size. Works in batches of ``batch_size`` cubes.
    """
    import torch
    import torch.nn.functional as F

    v = np.asarray(volumes, dtype=np.float32)
    n, d = len(v), v.shape[1]
    step = float(target_voxel_size) / float(voxel_size)
    pos = d // 2 + (np.arange(cube) - cube // 2) * step  # input voxel index per output voxel
    norm = (2.0 * pos / (d - 1) - 1.0) if d > 1 else np.zeros(cube)
    gz, gy, gx = np.meshgrid(norm, norm, norm, indexing="ij")
    grid = torch.from_numpy(np.stack([gx, gy, gz], axis=-1).astype(np.float32))[None]
    out = np.empty((n, cube, cube, cube), dtype=np.float32)
    for lo in range(0, n, batch_size):
        x = torch.from_numpy(np.ascontiguousarray(v[lo:lo + batch_size]))[:, None]
        g = grid.expand(len(x), -1, -1, -1, -1)
        y = F.grid_sample(x, g, mode="bilinear", padding_mode="zeros", align_corners=True)
        out[lo:lo + batch_size] = y[:, 0].numpy()
    return out


def domain_warnings(loaded: LoadedModel, *, voxel_size: float | None = None,
                    cube: int | None = None, normalized: bool | None = None) -> list[str]:
    """Sentences on how the inputs lie outside what the model was trained on.

    Compares the data's voxel size (Angstrom), cube edge (voxels) and normalisation
    with the checkpoint's ``voxel_size``, ``cube`` and ``normalization``. An empty list
    means nothing is known to differ. Results of classify, attack and evaluate carry
    these under ``"warnings"`` so a confident class on foreign data is not mistaken
    for a finding.
    """
    out: list[str] = []
    model_vs = loaded.voxel_size
    if model_vs is None:
        out.append("model's training voxel size unknown: the checkpoint does not say at which "
                   "voxel size it was trained, so the data's voxel size could not be checked")
    elif voxel_size is None:
        out.append(f"the data's voxel size is unknown; the model was trained at {model_vs:g} A")
    elif _differs(float(voxel_size), model_vs):
        out.append(
            f"the data are at {float(voxel_size):g} A but the model was trained at "
            f"{model_vs:g} A: the inputs lie outside its training domain, so its classes "
            "and probabilities are not a finding"
            + (f" (resampled data hold no detail finer than {2 * float(voxel_size):g} A)"
               if float(voxel_size) > model_vs else ""))
    if cube is not None and int(cube) != loaded.cube:
        out.append(f"the subtomograms are {int(cube)}^3 voxels but the model was trained on "
                   f"{loaded.cube}^3")
    if normalized is not None and loaded.normalization == "none" and normalized:
        out.append("the model was trained on unnormalised subtomograms but these are normalised "
                   "(zero mean, unit variance)")
    return out


def prepare_volumes(loaded: LoadedModel, volumes: np.ndarray, normalized: bool, *,
                    voxel_size: float | None = None, resample: bool = True,
                    notes: list[str] | None = None) -> np.ndarray:
    """Check the cubes fit the model, resample them to its voxel size, normalise.

    Parameters
    ----------
    voxel_size
        The subtomograms' voxel size in Angstrom. When it and the model's training voxel
        size are known and differ by more than 1 % (``VOXEL_SIZE_RTOL``), the cubes are
        resampled to the model's voxel size and cube (:func:`resample_volumes`), or,
        with ``resample=False``, refused.
    notes
        A list that receives a sentence for each conversion made ("resampled 40 A ->
        10 A ...").

    Raises
    ------
    CryoGuardError
        When the subtomograms are not (N, D, D, D) cubes, hold non-finite values, are at
        another voxel size with ``resample=False``, or are at the model's voxel size
        but not of its cube size.
    """
    v = np.asarray(volumes, dtype=np.float32)
    if v.ndim == 5 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim != 4 or len(set(v.shape[1:])) != 1:
        raise CryoGuardError(f"subtomograms must be a stack of cubes (N, D, D, D), got shape {v.shape}")
    if not np.isfinite(v).all():
        bad = ~np.isfinite(v).reshape(len(v), -1).all(axis=1)
        first = np.flatnonzero(bad)[:5].tolist()
        raise CryoGuardError(
            f"the subtomograms contain NaN or infinite values ({int(bad.sum())} of {len(v)} "
            f"cubes, first at rows {first})")
    model_vs = loaded.voxel_size
    if voxel_size is not None and model_vs is not None and _differs(float(voxel_size), model_vs):
        if not resample:
            raise CryoGuardError(
                f"the subtomograms are at {float(voxel_size):g} A but the model {loaded.source!r} "
                f"was trained at {model_vs:g} A; allow resampling or extract them at "
                f"{model_vs:g} A")
        if loaded.normalization == "zscore" and not normalized:
            v = zscore(v)
        d = v.shape[1]
        v = resample_volumes(v, float(voxel_size), model_vs, loaded.cube)
        if notes is not None:
            notes.append(
                f"resampled {float(voxel_size):g} A -> {model_vs:g} A (trilinear): {d}^3 cubes "
                f"({d * float(voxel_size):g} A wide) became the model's {loaded.cube}^3 "
                f"({loaded.cube * model_vs:g} A wide)")
        if loaded.normalization == "zscore":
            v = zscore(v)
        return v
    if v.shape[1] != loaded.cube:
        raise CryoGuardError(
            f"the model {loaded.source!r} takes {loaded.cube}^3 cubes but the subtomograms are "
            f"{v.shape[1]}^3: extract them again with size {loaded.cube}")
    if loaded.normalization == "zscore" and not normalized:
        v = zscore(v)
    return v


@dataclass
class Predictions:
    """Per-sample class probabilities and predicted classes.

    ``notes`` says what was converted on the way (e.g. "resampled 40 A -> 10 A ...");
    ``warnings`` holds :func:`domain_warnings` where the caller filled them in.
    """

    probabilities: np.ndarray
    class_names: list[str]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

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
                  device: str = "auto", batch_size: int = 32, amp: bool = False,
                  voxel_size: float | None = None,
                  resample: bool = True) -> Generator[tuple[int, int], None, Predictions]:
    """Classify a stack, yielding ``(done, total)`` after each batch; returns Predictions.

    ``voxel_size`` (Angstrom) and ``resample`` are passed to :func:`prepare_volumes`;
    ``Predictions.notes`` says when the cubes were resampled.
    """
    from napari_cryoguard.device import iter_predict

    notes: list[str] = []
    v = prepare_volumes(loaded, volumes, normalized, voxel_size=voxel_size,
                        resample=resample, notes=notes)
    gen = iter_predict(loaded.model, v, device=device, batch_size=batch_size, amp=amp)
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            probs = stop.value
            break
        yield (step.done, step.total)
    return Predictions(probabilities=np.asarray(probs, dtype=np.float32),
                       class_names=loaded.class_names, notes=notes)


def classify(loaded: LoadedModel, volumes: np.ndarray, **kwargs) -> Predictions:
    """Classify a stack of subtomograms; see :func:`iter_classify`."""
    from napari_cryoguard._progress import drain

    return drain(iter_classify(loaded, volumes, **kwargs))


class PredictionWriter(StreamingWriter):
    """Write predictions as CSV block by block (what :func:`write_predictions` writes).

    Columns: ``index, predicted, predicted_name, p_<class>...``, then ``label,
    label_name`` when ``with_labels`` and ``z, y, x`` when ``with_coords``. Rows go to
    a temporary file beside ``path`` that replaces it atomically on :meth:`close`; an
    exception inside ``with`` leaves any earlier file as it was. Memory is one block.
    """

    def __init__(self, path: str | os.PathLike, class_names: list[str], *,
                 with_labels: bool = False, with_coords: bool = False) -> None:
        from napari_cryoguard._atomic import atomic_output

        self.path = Path(path)
        if self.path.suffix.lower() != ".csv":
            raise CryoGuardError(f"predictions are written as .csv, got {self.path.name}")
        self.class_names = list(class_names)
        self.with_labels, self.with_coords = bool(with_labels), bool(with_coords)
        header = ["index", "predicted", "predicted_name"]
        header += [f"p_{c}" for c in self.class_names]
        if self.with_labels:
            header += ["label", "label_name"]
        if self.with_coords:
            header += ["z", "y", "x"]
        self._ctx = atomic_output(self.path)
        tmp = self._ctx.__enter__()
        try:
            self._fh = open(tmp, "w", newline="")  # noqa: SIM115 - closed in close()
        except BaseException as exc:
            self._ctx.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._w = csv.writer(self._fh)
        self._w.writerow(header)
        self.n = 0

    def write(self, probabilities, labels=None, coords=None, start: int | None = None) -> None:
        """Write the rows of one block; ``index`` counts on from the rows written."""
        i0 = self.n if start is None else int(start)
        names = self.class_names
        for j, p in enumerate(np.asarray(probabilities)):
            k = int(p.argmax())
            row = [i0 + j, k, names[k], *(repr(float(q)) for q in p)]
            if self.with_labels:
                lab = int(labels[j])
                row += [lab, names[lab] if 0 <= lab < len(names) else ""]
            if self.with_coords:
                row += [repr(float(c)) for c in coords[j]]
            self._w.writerow(row)
        self.n = i0 + len(probabilities)

    def close(self) -> Path:
        self._fh.close()
        self._ctx.__exit__(None, None, None)
        return self.path

    def abort(self) -> None:
        import sys

        self._fh.close()
        exc = sys.exc_info()[1] or CryoGuardError("prediction writing aborted")
        try:
            self._ctx.__exit__(type(exc), exc, exc.__traceback__)
        except BaseException:  # the context re-raises what it was given
            pass


def write_predictions(path: str | os.PathLike, preds: Predictions, labels=None, coords=None) -> Path:
    """Write predictions as CSV: ``index, predicted, predicted_name, p_<class>...``.

    Columns ``label``/``label_name`` are added when true labels are known and ``z, y, x``
    when coordinates are; the file is written to a temporary name and renamed
    (:class:`PredictionWriter` writes the same file block by block).
    """
    with PredictionWriter(path, preds.class_names, with_labels=labels is not None,
                          with_coords=coords is not None) as w:
        w.write(preds.probabilities, labels, coords)
    return w.path


class PreparedVolumes:
    """Rows of a (memory-mapped) stack, prepared for a model when they are read.

    ``prepared[rows]`` is :func:`prepare_volumes` of ``volumes[rows]`` (checked,
    resampled to the model's voxel size, normalised), so attacks and classification can
    stream through a data set in batches without a prepared copy of all of it; the
    pages of a memory map are released after each read. ``notes`` collects each
    distinct conversion sentence.
    """

    def __init__(self, loaded: LoadedModel, volumes, normalized: bool, *,
                 voxel_size: float | None = None, resample: bool = True) -> None:
        self.loaded, self.volumes = loaded, volumes
        self.normalized, self.voxel_size, self.resample = bool(normalized), voxel_size, resample
        self.notes: list[str] = []
        n = len(volumes)
        if n:  # check the first cube now, so a misfit is refused before long work
            self[np.arange(1)]
        self.shape = (n, loaded.cube, loaded.cube, loaded.cube)

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, rows) -> np.ndarray:
        from napari_cryoguard.data import release_pages

        if isinstance(rows, slice):
            raw = np.array(self.volumes[rows], dtype=np.float32)
        else:
            raw = np.array(self.volumes[np.asarray(rows)], dtype=np.float32)
        release_pages(self.volumes)
        notes: list[str] = []
        out = prepare_volumes(self.loaded, raw, self.normalized, voxel_size=self.voxel_size,
                              resample=self.resample, notes=notes)
        for note in notes:
            if note not in self.notes:
                self.notes.append(note)
        return out


class ClassifyBatch(NamedTuple):
    """One step of :func:`iter_classify_batches`: progress and the block's result."""

    done: int
    total: int
    start: int
    probabilities: np.ndarray


def iter_classify_batches(loaded: LoadedModel, batches, total: int, *,
                          normalized: bool = True, device: str = "auto", batch_size: int = 32,
                          amp: bool = False, voxel_size: float | None = None,
                          resample: bool = True,
                          notes: list[str] | None = None) -> Generator[ClassifyBatch, None, int]:
    """Classify blocks of subtomograms as they arrive, yielding each block's result.

    Parameters
    ----------
    batches
        An iterable of (n_i, D, D, D) arrays (e.g. :func:`napari_cryoguard.data.iter_rows`
        blocks of a memory-mapped dataset, or cubes extracted on the fly); each is
        prepared (:func:`prepare_volumes`) and run in forward passes of ``batch_size``.
    total
        The number of subtomograms expected (for progress).
    notes
        Receives each distinct conversion sentence.

    Yields
    ------
    ClassifyBatch
        ``(done, total, start, probabilities)`` per block; memory is bounded by a block.
        With blocks of ``batch_size`` rows the probabilities equal those of
        :func:`iter_classify` on the whole stack.

    Returns
    -------
    int
        The number of subtomograms classified.
    """
    from napari_cryoguard.device import iter_predict

    done = 0
    for block in batches:
        if isinstance(block, tuple):  # (start, rows) from iter_rows
            block = block[1]
        block_notes: list[str] = []
        v = prepare_volumes(loaded, block, normalized, voxel_size=voxel_size,
                            resample=resample, notes=block_notes)
        if notes is not None:
            notes.extend(n for n in block_notes if n not in notes)
        if len(v) == 0:
            continue
        gen = iter_predict(loaded.model, v, device=device, batch_size=batch_size, amp=amp)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                probs = np.asarray(stop.value, dtype=np.float32)
                break
        start, done = done, done + len(v)
        yield ClassifyBatch(done, max(int(total), done), start, probs)
    return done


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
