"""The "Classify" dock widget: bundled or file model, device, progress, results on ``picks``.

Classification runs :func:`napari_cryoguard.classify.iter_classify` in a napari thread
worker. Results become features of the ``picks`` layer (``class``, ``p_<class>`` per
class, ``confidence``), colour the points by class with a legend, and the selected
particle's probabilities show in a small table with bars. "Reconstruct" puts
``particle <i>`` and, for models with an autoencoder branch, ``reconstruction <i>``
side by side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    ComboBox,
    ProgressBar,
    PushButton,
    SpinBox,
    Table,
    create_widget,
)

from napari_cryoguard._napari._common import (
    FILE_CHOICE,
    PICKS_LAYER,
    SUBTOMOGRAMS_LAYER,
    ModelPicker,
    apply_predictions,
    apply_stepwise,
    class_colors,
    connect_pick_selection,
    iter_particle_layers,
    particle_cube,
    particle_source,
    schedule_warm_up,
    show_error,
    start_worker,
)
from napari_cryoguard._napari._labels import NONE, LabelsChoice
from napari_cryoguard._napari._layout import DockWidget, Group, status_label
from napari_cryoguard.errors import CryoGuardError

if TYPE_CHECKING:
    import napari

__all__ = ["FILE_CHOICE", "ClassifyWidget", "layer_picks_for", "extraction_size", "domain_line"]


def layer_picks_for(image_layer, picks_layer) -> dict:
    """The picks of ``picks_layer`` that belong to ``image_layer``, in its voxels (main thread).

    Rows are matched by tomogram name (a ``tomo_name`` feature per point, else the layer's
    ``metadata["tomo_name"]``) with :meth:`~napari_cryoguard.io.Picks.for_tomogram`, and
    converted from the picks layer's ``metadata["voxel_size"]`` to the image layer's
    voxel size with :meth:`~napari_cryoguard.io.Picks.at_voxel_size`.

    Returns
    -------
    dict
        ``coords`` (ZYX voxels of the image), ``rows`` (indices into the picks layer),
        ``notes`` (what was matched or converted) and ``voxel_size`` (the image's).
    """
    from napari_cryoguard._napari._common import voxel_size_of
    from napari_cryoguard.io import Picks

    data = np.asarray(picks_layer.data, dtype=float)[:, -3:]
    n = len(data)
    meta = picks_layer.metadata or {}
    feats = picks_layer.features
    names = None
    if "tomo_name" in getattr(feats, "columns", ()) and len(feats) == n:
        names = np.asarray(feats["tomo_name"]).astype(str)
    elif meta.get("tomo_name"):
        names = np.array([str(meta["tomo_name"])] * n)
    image_vs = voxel_size_of(image_layer)
    picks = Picks(coords=data, tomo_names=names, features={"_row": np.arange(n)},
                  voxel_size=float(meta.get("voxel_size", image_vs)),
                  notes=[str(x) for x in meta.get("notes", [])])
    source = f"the {picks_layer.name!r} layer"
    picks = picks.for_tomogram(image_layer.name, source=source).at_voxel_size(image_vs,
                                                                             source=source)
    return {"coords": picks.coords, "rows": np.asarray(picks.features["_row"], dtype=np.int64),
            "notes": list(picks.notes), "voxel_size": image_vs}


def extraction_size(loaded, voxel_size: float | None) -> int:
    """Cube edge to cut at ``voxel_size`` so that it covers the model's field of view.

    The model's cube when the voxel sizes agree within 1 % or either is unknown; else
    ``ceil(cube * model voxel size / voxel size)`` (at least 4), which
    :func:`~napari_cryoguard.classify.prepare_volumes` then resamples to the model's cube.
    """
    import math

    from napari_cryoguard.classify import VOXEL_SIZE_RTOL

    mvs = loaded.voxel_size
    if voxel_size is None or mvs is None or abs(voxel_size - mvs) <= VOXEL_SIZE_RTOL * mvs:
        return loaded.cube
    return max(4, math.ceil(loaded.cube * mvs / float(voxel_size)))


def particle_voxels(viewer, image_layer) -> dict:
    """What a single pick's cube needs to be cut at the right place (main thread).

    ``scale`` turns the picks layer's voxel indices into the image's (picks layer
    ``metadata["voxel_size"]`` / image voxel size) and ``voxel_size`` is the image's.
    """
    from napari_cryoguard._napari._common import voxel_size_of

    if image_layer is None or PICKS_LAYER not in viewer.layers:
        return {}
    vs = voxel_size_of(image_layer)
    picks_vs = float((viewer.layers[PICKS_LAYER].metadata or {}).get("voxel_size", vs))
    return {"scale": picks_vs / vs, "voxel_size": vs}


def particle_for_model(source: dict, loaded, notes: list[str] | None = None) -> np.ndarray:
    """A pick's cube as the model takes it (worker): cut at the image's voxels, covering
    the model's field of view, resampled to its voxel size and cube when they differ."""
    from napari_cryoguard.classify import prepare_volumes

    src = dict(source)
    scale = float(src.get("scale", 1.0))
    if src.get("center") is not None and abs(scale - 1.0) > 1e-4:
        src["center"] = np.asarray(src["center"], dtype=float) * scale
        if notes is not None:
            notes.append(f"converted the pick from the picks layer's voxels to the image's "
                         f"(x {scale:g})")
    vs = src.get("voxel_size")
    vol = particle_cube(src, extraction_size(loaded, vs))
    return prepare_volumes(loaded, vol[None], True, voxel_size=vs, notes=notes)[0]


def domain_line(notes, warnings) -> str:
    """The resampling notes and domain warnings as a suffix for a result line."""
    parts = [*notes, *(f"warning: {w}" for w in warnings)]
    return "".join(f"; {p}" for p in parts)


def classify_job(picker, spec: str, source: dict, device: str, batch_size: int):
    """Worker job: load the model, get the cubes (extracting picks if needed), classify.

    Picks are those of the tomogram at hand in its voxels (:func:`layer_picks_for`),
    cut so as to cover the model's field of view and resampled to the model's voxel size
    when it differs. Yields ``(done, total)``; returns ``(predictions, pick index, loaded
    model)``; ``predictions.notes`` carries the guards' notes and the resampling, and
    ``predictions.warnings`` the domain warnings.
    """
    from napari_cryoguard.classify import domain_warnings, iter_classify
    from napari_cryoguard.picking import extract_subtomograms

    loaded = picker.load(spec)
    voxel_size = source.get("voxel_size")
    if source["kind"] == "stack":
        volumes = np.asarray(source["data"], dtype=np.float32)
        normalized, index = source["normalized"], source["index"]
    else:
        size = extraction_size(loaded, voxel_size)
        sub = extract_subtomograms(source["volume"], source["coords"], size=size,
                                   normalize=True)
        if len(sub.volumes) == 0:
            raise CryoGuardError(f"no pick lies far enough inside the tomogram for a {size}^3 cube")
        volumes, normalized = sub.volumes, True
        index = np.asarray(source["rows"])[np.asarray(sub.index, dtype=np.int64)]
    # picks are cut to the model's field of view, so only a stack's cube can differ
    warnings = domain_warnings(loaded, voxel_size=voxel_size, normalized=normalized,
                               cube=None if source["kind"] == "picks" else volumes.shape[1])
    preds = yield from iter_classify(loaded, volumes, normalized=normalized, device=device,
                                     batch_size=batch_size, voxel_size=voxel_size)
    preds.notes = [*source.get("notes", []), *preds.notes]
    preds.warnings = warnings
    return preds, index, loaded


def reconstruct_job(picker, spec: str, source: dict) -> dict:
    """Worker job: the pick's cube and, for an autoencoding model, its reconstruction."""
    import torch

    loaded = picker.load(spec)
    vol = particle_for_model(source, loaded)
    i = source["index"]
    layers = {f"particle {i}": vol}
    if loaded.has_decoder:
        with torch.inference_mode():
            rec = loaded.model.reconstruct(torch.from_numpy(vol[None, None]))
        layers[f"reconstruction {i}"] = rec[0, 0].cpu().numpy()
    lo, hi = float(vol.min()), float(vol.max())
    styles = {name: {"contrast_limits": (lo, hi if hi > lo else lo + 1.0)} for name in layers}
    return {"layers": layers, "styles": styles, "loaded": loaded, "center": source["center"]}


class ClassifyWidget(DockWidget):
    """Classify the ``subtomograms`` layer, or the ``picks`` of a tomogram extracted on the fly."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        self._worker = None
        self.loaded = None  # the LoadedModel last used
        self.picker = ModelPicker(viewer)
        self.model, self.checkpoint = self.picker.widgets
        self.device = ComboBox(choices=["auto", "cpu", "cuda", "mps"], value="auto", label="device")
        self.source = ComboBox(choices=["subtomograms layer", "picks of tomogram"],
                               value="subtomograms layer", label="classify")
        self.image = create_widget(annotation="napari.layers.Image", label="tomogram")
        self.batch_size = SpinBox(value=32, min=1, max=4096, label="batch size")
        self.labels = LabelsChoice(viewer, label="labels")
        self.more = Group("options", [self.device, self.batch_size])
        self.run_button = PushButton(text="Classify")
        self.progress = ProgressBar(value=0, min=0, max=100, label="progress")
        self.legend = status_label()
        self.index = SpinBox(value=0, min=0, max=0, label="particle",
                             tooltip="clicking a point of 'picks' selects it")
        self.table = Table(value={"class": [], "probability": [], "": []})
        self.table.native.setMaximumHeight(170)
        self.reconstruct_button = PushButton(text="Reconstruct")
        self.status = status_label()
        self.body.extend([self.model, self.checkpoint, self.source, self.image, self.labels.combo,
                          self.more, self.run_button, self.progress, self.status, self.legend,
                          self.index, self.table, self.reconstruct_button])
        self.run_button.changed.connect(self.run_classify)
        self.reconstruct_button.changed.connect(self.run_reconstruct)
        self.index.changed.connect(self.show_probabilities)
        connect_pick_selection(viewer, self._on_select)
        schedule_warm_up(viewer)  # shaders and glyphs built at idle, not at the first result

    # ------------------------------------------------------------------ model
    def model_spec(self) -> str:
        """The model to load: a bundled name or the checkpoint file's path."""
        return self.picker.spec()

    def set_checkpoint(self, path) -> None:
        """Select a checkpoint file (used by the Train widget's "use this model")."""
        self.picker.set_checkpoint(path)

    # ------------------------------------------------------------------ classify
    def _source(self) -> dict:
        """What to classify (references only; the cubes are read in the worker)."""
        if self.source.value == "subtomograms layer":
            if SUBTOMOGRAMS_LAYER not in self._viewer.layers:
                raise CryoGuardError("no 'subtomograms' layer: extract subtomograms first, "
                                     "or classify the picks of a tomogram")
            layer = self._viewer.layers[SUBTOMOGRAMS_LAYER]
            meta = layer.metadata
            vs = meta.get("voxel_size")
            return {"kind": "stack", "data": layer.data, "normalized": bool(meta.get("normalized", False)),
                    "index": np.asarray(meta.get("index", np.arange(len(layer.data)))),
                    "voxel_size": None if vs is None else float(vs)}
        if PICKS_LAYER not in self._viewer.layers or self.image.value is None:
            raise CryoGuardError("classifying picks needs a 'picks' layer and a tomogram")
        guarded = layer_picks_for(self.image.value, self._viewer.layers[PICKS_LAYER])
        return {"kind": "picks", "volume": self.image.value.data, **guarded}

    def run_classify(self) -> None:
        """Load the model and classify in a worker thread."""
        try:
            spec = self.picker.spec()
            source = self._source()
        except Exception as exc:  # a user-caused problem: notify, never crash napari
            self._fail(exc)
            return
        name = self.picker.display_name
        self.status.value = f"classifying with {name}..."
        self.progress.value = 0
        start_worker(
            self, classify_job, self.picker, spec, source, self.device.value,
            int(self.batch_size.value),
            on_yield=lambda v: setattr(self.progress, "value", int(100 * v[0] / max(v[1], 1))),
            on_return=lambda out: self._on_classified(out[0], out[1], out[2], name),
            buttons=(self.run_button, self.reconstruct_button))

    def show_failure(self, exc: BaseException) -> None:
        """Show an error in the widget and as a napari notification."""
        self.status.value = f"error: {exc}"
        self.progress.value = 0
        show_error(exc)

    _fail = show_failure

    def _on_classified(self, preds, index, loaded=None, name: str = "") -> None:
        self.progress.value = 100
        self.predictions = preds
        if loaded is not None:
            self.loaded = loaded
        note = ""
        if PICKS_LAYER in self._viewer.layers:
            layer = self._viewer.layers[PICKS_LAYER]
            # the labels to compare with, read before the predictions overwrite 'class'
            try:
                labels = self.labels.resolve() if self.labels.combo.value != NONE else None
            except CryoGuardError:
                labels = None
            apply_predictions(layer, preds, index)
            self.index.max = max(len(layer.data) - 1, 0)
            if labels is not None and not labels.predictions:
                true = labels.names[np.asarray(index)]
                known = true != ""
                if known.any():
                    acc = float(np.mean(np.asarray(preds.predicted_names)[known] == true[known]))
                    note = (f"; accuracy {acc:.3f} on {int(known.sum())} picks against "
                            f"{labels.source}")
        self.legend.value = self._legend_html(preds.class_names, preds)
        self.status.value = (f"classified {len(preds.probabilities)} subtomograms with {name}{note}"
                             + domain_line(getattr(preds, "notes", []),
                                           getattr(preds, "warnings", [])))
        self.show_probabilities()
    @staticmethod
    def _legend_html(names, preds) -> str:
        colors = class_colors(len(names))
        counts = np.bincount(preds.predicted, minlength=len(names))
        rows = []
        for c, rgba, k in zip(names, colors, counts, strict=True):
            hexc = "#" + "".join(f"{int(255 * v):02x}" for v in rgba[:3])
            rows.append(f"<span style='color:{hexc}'>&#9632;</span> {c} ({k})")
        return "<br>".join(rows)

    # ------------------------------------------------------------------ selection
    def _on_select(self, index: int) -> None:
        if PICKS_LAYER in self._viewer.layers:
            self.index.max = max(len(self._viewer.layers[PICKS_LAYER].data) - 1, 0)
        self.index.value = int(index)

    def show_probabilities(self, *_):
        """Fill the table with the selected particle's class probabilities (and bars)."""
        if PICKS_LAYER not in self._viewer.layers:
            return
        feats = self._viewer.layers[PICKS_LAYER].features
        cols = [c for c in feats.columns if c.startswith("p_")]
        i = int(self.index.value)
        if not cols or i >= len(feats):
            return
        probs = [float(feats[c].iloc[i]) for c in cols]
        self.table.value = {
            "class": [c[2:] for c in cols],
            "probability": [f"{p:.3f}" if np.isfinite(p) else "n/a" for p in probs],
            "": ["█" * int(round(20 * p)) if np.isfinite(p) else "" for p in probs],
        }

    # ------------------------------------------------------------------ reconstruction
    def run_reconstruct(self) -> None:
        """Show ``particle <i>`` and, for an autoencoding model, ``reconstruction <i>``
        beside the particle, in a worker (the model is loaded there)."""
        i = int(self.index.value)
        try:
            spec = self.picker.spec()
            source = particle_source(self._viewer, i, self.image.value)
            source.update(particle_voxels(self._viewer, self.image.value))
        except Exception as exc:
            self._fail(exc)
            return
        self.status.value = f"reconstructing particle {i}..."
        start_worker(self, reconstruct_job, self.picker, spec, source,
                     on_return=lambda out: self._on_reconstructed(out, i),
                     buttons=(self.run_button, self.reconstruct_button))

    def _on_reconstructed(self, out: dict, i: int) -> None:
        self.loaded = out["loaded"]
        anchor = self._viewer.layers[PICKS_LAYER] if PICKS_LAYER in self._viewer.layers else self.image.value
        apply_stepwise(self, iter_particle_layers(
            self._viewer, out["layers"], image_layer=anchor, center=out["center"],
            styles=out["styles"], frames=f"particle {i} frames"))
        if self.loaded.has_decoder:
            self.status.value = f"particle {i} and its reconstruction by {self.loaded.source}, beside it"
        else:
            self.status.value = (f"{self.loaded.source} has no autoencoder branch: showing the "
                                 "particle only")
