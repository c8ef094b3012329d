"""The "Classify" dock widget: bundled or file model, device, progress, results on ``picks``.

Classification runs :func:`napari_cryoguard.classify.iter_classify` in a napari thread
worker. Results become features of the ``picks`` layer (``class``, ``p_<class>`` per
class, ``confidence``), colour the points by class with a legend, and the selected
particle's probabilities show in a small table with bars. "Reconstruct" puts
``particle <i>`` and, for models with an autoencoder branch, ``reconstruction <i>``
side by side.

The jobs are :func:`napari_cryoguard.interactive.classify_job` and
:func:`~napari_cryoguard.interactive.reconstruct_job`; the picks' features come from
:func:`napari_cryoguard.layerdata.prediction_update`.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, ProgressBar, PushButton, SpinBox, Table, create_widget

from napari_cryoguard._napari._labels import NONE, LabelsChoice
from napari_cryoguard._napari._layers import PICKS_LAYER, SUBTOMOGRAMS_LAYER, apply_stepwise
from napari_cryoguard._napari._layout import DockWidget, Group, status_label
from napari_cryoguard._napari._models import FILE_CHOICE, ModelPicker, device_combo
from napari_cryoguard._napari._particles import iter_particle_layers
from napari_cryoguard._napari._picks import (
    PickIndex,
    apply_predictions,
    pick_particle,
    tomogram_picks,
)
from napari_cryoguard._napari._warmup import schedule_warm_up
from napari_cryoguard._napari._workers import show_error, start_worker
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.interactive import classify_job, domain_line, reconstruct_job
from napari_cryoguard.layerdata import accuracy_note, class_colors

if TYPE_CHECKING:
    import napari

__all__ = ["FILE_CHOICE", "ClassifyWidget"]


class ClassifyWidget(DockWidget):
    """Classify the ``subtomograms`` layer, or the ``picks`` of a tomogram extracted on the fly."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)

    def _build(self) -> None:
        viewer = self._viewer
        self.loaded = None  # the LoadedModel last used
        self.picker = ModelPicker(viewer)
        self.model, self.checkpoint = self.picker.widgets
        self.device = device_combo()
        self.source = ComboBox(choices=["subtomograms layer", "picks of tomogram"],
                               value="subtomograms layer", label="classify")
        self.image = create_widget(annotation="napari.layers.Image", label="tomogram")
        self.batch_size = SpinBox(value=32, min=1, max=4096, label="batch size")
        self.labels = LabelsChoice(viewer, label="labels")
        self.more = Group("options", [self.device, self.batch_size])
        self.run_button = PushButton(text="Classify")
        self.progress = ProgressBar(value=0, min=0, max=100, label="progress")
        self.legend = status_label()
        self.pick = PickIndex(viewer, follow_count=True)
        self.index = self.pick.spin
        self.table = Table(value={"class": [], "probability": [], "": []})
        self.table.native.setMaximumHeight(170)
        self._fit_table()
        self.reconstruct_button = PushButton(text="Reconstruct")
        self.status = status_label()
        self.body.extend([self.model, self.checkpoint, self.source, self.image, self.labels.combo,
                          self.more, self.run_button, self.progress, self.status, self.legend,
                          self.index, self.table, self.reconstruct_button])
        self.run_button.changed.connect(self.run_classify)
        self.reconstruct_button.changed.connect(self.run_reconstruct)
        self.index.changed.connect(self.show_probabilities)
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
        guarded = tomogram_picks(self._viewer, self.image.value, "classifying picks")
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
            self, classify_job, partial(self.picker.load, spec), source, self.device.value,
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
            self.pick.fit()
            note = accuracy_note(labels, preds.predicted_names, index)
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

    def _fit_table(self) -> None:
        """Class and probability as wide as their text, the bars take the rest; no row
        numbers (the class names say which row is which)."""
        from qtpy.QtWidgets import QHeaderView

        table = self.table.native
        table.verticalHeader().setVisible(False)
        header = table.horizontalHeader()
        mode = QHeaderView.ResizeMode
        for column, how in enumerate((mode.ResizeToContents, mode.ResizeToContents,
                                      mode.Stretch)):
            if column < header.count():
                header.setSectionResizeMode(column, how)

    # ------------------------------------------------------------------ selection
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
            "": ["█" * int(round(10 * p)) if np.isfinite(p) else "" for p in probs],
        }
        self._fit_table()  # a new value makes new columns

    # ------------------------------------------------------------------ reconstruction
    def run_reconstruct(self) -> None:
        """Show ``particle <i>`` and, for an autoencoding model, ``reconstruction <i>``
        beside the particle, in a worker (the model is loaded there)."""
        i = int(self.index.value)
        try:
            spec = self.picker.spec()
            source = pick_particle(self._viewer, i, self.image.value)
        except Exception as exc:
            self._fail(exc)
            return
        self.status.value = f"reconstructing particle {i}..."
        start_worker(self, reconstruct_job, partial(self.picker.load, spec), source,
                     on_return=lambda out: self._on_reconstructed(out, i),
                     buttons=(self.run_button, self.reconstruct_button))

    def _on_reconstructed(self, out: dict, i: int) -> None:
        self.loaded = out["loaded"]
        anchor = self._viewer.layers[PICKS_LAYER] if PICKS_LAYER in self._viewer.layers else self.image.value
        apply_stepwise(self, iter_particle_layers(
            self._viewer, out["layers"], image_layer=anchor, center=out["center"],
            styles=out["styles"], frames=f"particle {i} frames"))
        if self.loaded.has_decoder:
            self.status.value = (f"particle {i} and its reconstruction by {self.loaded.source}, "
                                 f"beside it" + out.get("domain", ""))
        else:
            self.status.value = (f"{self.loaded.source} has no autoencoder branch: showing the "
                                 "particle only")
