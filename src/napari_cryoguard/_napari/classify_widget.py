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
    Container,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
    Table,
    create_widget,
)

from napari_cryoguard._napari._common import (
    FILE_CHOICE,
    MODEL_CONSUMERS,
    PICKS_LAYER,
    SUBTOMOGRAMS_LAYER,
    ModelPicker,
    apply_predictions,
    class_colors,
    particle_cube,
    show_error,
    start_worker,
)

if TYPE_CHECKING:
    import napari

__all__ = ["FILE_CHOICE", "ClassifyWidget"]


class ClassifyWidget(Container):
    """Classify the ``subtomograms`` layer, or the ``picks`` of a tomogram extracted on the fly."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._worker = None
        self.loaded = None  # the LoadedModel last used
        self.picker = ModelPicker()
        self.model, self.checkpoint = self.picker.widgets
        self.device = ComboBox(choices=["auto", "cpu", "cuda", "mps"], value="auto", label="device")
        self.source = ComboBox(choices=["subtomograms layer", "picks of tomogram"],
                               value="subtomograms layer", label="classify")
        self.image = create_widget(annotation="napari.layers.Image", label="tomogram")
        self.batch_size = SpinBox(value=32, min=1, max=4096, label="batch size")
        self.run_button = PushButton(text="Classify")
        self.progress = ProgressBar(value=0, min=0, max=100, label="progress")
        self.legend = Label(value="")
        self.index = SpinBox(value=0, min=0, max=0, label="particle")
        self.table = Table(value={"class": [], "probability": [], "": []})
        self.reconstruct_button = PushButton(text="Reconstruct")
        self.status = Label(value="")
        self.extend([self.model, self.checkpoint, self.device, self.source, self.image,
                     self.batch_size, self.run_button, self.progress, self.legend, self.index,
                     self.table, self.reconstruct_button, self.status])
        self.run_button.changed.connect(self.run_classify)
        self.reconstruct_button.changed.connect(self.run_reconstruct)
        self.index.changed.connect(self.show_probabilities)
        viewer.layers.selection.events.active.connect(self._connect_picks_selection)
        MODEL_CONSUMERS.add(self)

    # ------------------------------------------------------------------ model
    def model_spec(self) -> str:
        """The model to load: a bundled name or the checkpoint file's path."""
        return self.picker.spec()

    def set_checkpoint(self, path) -> None:
        """Select a checkpoint file (used by the Train widget's "use this model")."""
        self.picker.set_checkpoint(path)

    # ------------------------------------------------------------------ classify
    def _volumes_for_classification(self, cube: int):
        """(volumes, normalized, pick indices) from the chosen source."""
        from napari_cryoguard.picking import extract_subtomograms

        if self.source.value == "subtomograms layer":
            if SUBTOMOGRAMS_LAYER not in self._viewer.layers:
                raise ValueError("no 'subtomograms' layer: extract subtomograms first, "
                                 "or classify the picks of a tomogram")
            layer = self._viewer.layers[SUBTOMOGRAMS_LAYER]
            meta = layer.metadata
            index = np.asarray(meta.get("index", np.arange(len(layer.data))))
            return np.asarray(layer.data), bool(meta.get("normalized", False)), index
        if PICKS_LAYER not in self._viewer.layers or self.image.value is None:
            raise ValueError("classifying picks needs a 'picks' layer and a tomogram")
        coords = np.asarray(self._viewer.layers[PICKS_LAYER].data)[:, -3:]
        sub = extract_subtomograms(self.image.value.data, coords, size=cube, normalize=True)
        return sub.volumes, True, np.asarray(sub.index)

    def run_classify(self) -> None:
        """Load the model and classify in a worker thread."""
        device = self.device.value
        try:
            loaded = self.picker.load()
            volumes, normalized, index = self._volumes_for_classification(loaded.cube)
        except Exception as exc:  # a user-caused problem: notify, never crash napari
            self._fail(exc)
            return
        self.loaded = loaded
        from napari_cryoguard.classify import iter_classify

        self.status.value = f"classifying {len(volumes)} subtomograms..."
        self.progress.value = 0
        start_worker(
            self, iter_classify, loaded, volumes, normalized=normalized, device=device,
            batch_size=int(self.batch_size.value),
            on_yield=lambda v: setattr(self.progress, "value", int(100 * v[0] / max(v[1], 1))),
            on_return=lambda preds: self._on_classified(preds, index),
            buttons=(self.run_button, self.reconstruct_button))

    def show_failure(self, exc: BaseException) -> None:
        """Show an error in the widget and as a napari notification."""
        self.status.value = f"error: {exc}"
        self.progress.value = 0
        show_error(exc)

    _fail = show_failure

    def _on_classified(self, preds, index) -> None:
        self.progress.value = 100
        self.predictions = preds
        acc = None
        if PICKS_LAYER in self._viewer.layers:
            layer = self._viewer.layers[PICKS_LAYER]
            acc = apply_predictions(layer, preds, index)
            self.index.max = max(len(layer.data) - 1, 0)
        self.legend.value = self._legend_html(preds.class_names, preds)
        note = f": accuracy {acc:.3f} against the picks' true_class" if acc is not None else ""
        self.status.value = f"classified {len(preds.probabilities)} subtomograms{note}"
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
    def _connect_picks_selection(self, event=None) -> None:
        if PICKS_LAYER in self._viewer.layers:
            layer = self._viewer.layers[PICKS_LAYER]
            try:
                layer.selected_data.events.items_changed.disconnect(self._on_select)
            except (TypeError, RuntimeError, ValueError):
                pass
            layer.selected_data.events.items_changed.connect(self._on_select)

    def _on_select(self, event=None) -> None:
        layer = self._viewer.layers[PICKS_LAYER]
        sel = sorted(layer.selected_data)
        if sel:
            self.index.max = max(len(layer.data) - 1, 0)
            self.index.value = int(sel[0])

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
    def particle_volume(self, i: int) -> np.ndarray:
        """The normalised cube of pick ``i`` at the model's size."""
        cube = self.loaded.cube if self.loaded is not None else 28
        return particle_cube(self._viewer, i, cube, self.image.value)

    def run_reconstruct(self) -> None:
        """Show ``particle <i>`` and, for an autoencoding model, ``reconstruction <i>``."""
        from napari_cryoguard._napari._common import show_particle_layers

        i = int(self.index.value)
        try:
            self.loaded = self.picker.load()
            vol = self.particle_volume(i)
            layers = {f"particle {i}": vol}
            if self.loaded.has_decoder:
                import torch

                with torch.inference_mode():
                    rec = self.loaded.model.reconstruct(torch.from_numpy(vol[None, None]))
                layers[f"reconstruction {i}"] = rec[0, 0].cpu().numpy()
            else:
                self.status.value = f"{self.loaded.source} has no autoencoder branch: showing the particle only"
        except Exception as exc:
            self._fail(exc)
            return
        show_particle_layers(self._viewer, layers)
