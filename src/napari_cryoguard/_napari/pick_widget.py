"""The "Pick particles" dock widget: DoG picking and subtomogram extraction.

The widget only wires callbacks: picking is :func:`napari_cryoguard.picking.iter_pick_particles`
(a generator yielding progress) run in a napari thread worker; extraction is
:func:`napari_cryoguard.picking.extract_subtomograms`, also off the Qt thread. Errors
(a volume with NaNs, a cube that does not fit) show as napari notifications.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)

from napari_cryoguard._napari._common import (
    PICKS_LAYER,
    SUBTOMOGRAMS_LAYER,
    set_picks_layer,
    show_error,
    start_worker,
    voxel_size_of,
)

if TYPE_CHECKING:
    import napari


class PickWidget(Container):
    """Difference-of-Gaussian particle picking, then extraction of subtomogram cubes.

    Parameters mirror :func:`~napari_cryoguard.picking.pick_particles` (RAT paper IV.A
    defaults sigma1 = 7.0 voxels, k = 1.1). "Pick" writes the ``picks`` Points layer with
    a ``score`` feature; "Preview DoG" adds ``<tomogram> DoG``; "Extract" makes the
    ``subtomograms`` Image layer (N, D, H, W) from the current ``picks``.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._worker = None
        self.image = create_widget(annotation="napari.layers.Image", label="tomogram")
        self.sigma1 = FloatSpinBox(value=7.0, min=0.1, max=500.0, step=0.5, label="sigma1",
                                   tooltip="smaller Gaussian sigma (RAT paper: 7.0)")
        self.k = FloatSpinBox(value=1.1, min=1.01, max=10.0, step=0.05, label="k",
                              tooltip="sigma2 = k * sigma1 (RAT paper: 1.1)")
        self.sigma_unit = ComboBox(choices=["voxel", "angstrom"], value="voxel", label="sigma unit")
        self.threshold = FloatSpinBox(value=3.0, min=-50.0, max=1000.0, step=0.25, label="threshold",
                                      tooltip="z-score: keep peaks with DoG >= mean + threshold * std")
        self.min_distance = FloatSpinBox(value=0.0, min=0.0, max=1000.0, step=1.0,
                                         label="min distance",
                                         tooltip="voxels between picks; 0 = automatic from sigma1")
        self.max_picks = SpinBox(value=0, min=0, max=10_000_000, label="max picks",
                                 tooltip="0 = no limit")
        self.border = SpinBox(value=14, min=0, max=10_000, label="border",
                              tooltip="exclude picks closer than this to the edge (voxels)")
        self.polarity = ComboBox(choices=["bright", "dark"], value="bright", label="polarity",
                                 tooltip="bright: density convention (simulator); dark: raw tomograms")
        self.preview_button = PushButton(text="Preview DoG")
        self.pick_button = PushButton(text="Pick")
        self.progress = ProgressBar(value=0, min=0, max=100, label="progress")
        self.cube = SpinBox(value=28, min=4, max=512, label="cube size")
        self.normalize = CheckBox(value=True, text="normalise per sample")
        self.border_mode = ComboBox(choices=["skip", "pad"], value="skip", label="at border")
        self.extract_button = PushButton(text="Extract subtomograms")
        self.status = Label(value="")
        self.extend([
            self.image, self.sigma1, self.k, self.sigma_unit, self.threshold, self.min_distance,
            self.max_picks, self.border, self.polarity, self.preview_button, self.pick_button,
            self.progress, self.cube, self.normalize, self.border_mode, self.extract_button,
            self.status,
        ])
        self.pick_button.changed.connect(self.run_pick)
        self.preview_button.changed.connect(self.run_preview)
        self.extract_button.changed.connect(self.run_extract)

    # ------------------------------------------------------------------ parameters
    def pick_parameters(self) -> dict:
        """The keyword arguments for :func:`pick_particles` from the form."""
        layer = self.image.value
        return dict(
            sigma1=float(self.sigma1.value), k=float(self.k.value),
            sigma_unit=self.sigma_unit.value,
            voxel_size=voxel_size_of(layer) if layer is not None else 1.0,
            threshold=float(self.threshold.value),
            min_distance=float(self.min_distance.value) or None,
            max_picks=int(self.max_picks.value) or None,
            border=float(self.border.value), polarity=self.polarity.value,
        )

    def _start(self, fn, *args, on_return, on_yield=None, **kwargs) -> None:
        start_worker(self, fn, *args, on_return=on_return, on_yield=on_yield,
                     buttons=(self.pick_button, self.preview_button, self.extract_button),
                     **kwargs)

    def show_failure(self, exc: BaseException) -> None:
        """Show an error in the widget and as a napari notification."""
        self.status.value = f"error: {exc}"
        self.progress.value = 0
        show_error(exc)

    def _layer_or_error(self):
        layer = self.image.value
        if layer is None:
            show_error(ValueError("open a tomogram first (no image layer selected)"))
        return layer

    # ------------------------------------------------------------------ picking
    def run_pick(self) -> None:
        """Pick particles in the selected tomogram in a worker thread."""
        from napari_cryoguard.picking import iter_pick_particles

        layer = self._layer_or_error()
        if layer is None:
            return
        self.status.value = "picking..."
        self.progress.value = 0
        self._start(iter_pick_particles, layer.data, **self.pick_parameters(),
                    on_yield=self._on_progress,
                    on_return=lambda picks, layer=layer: self._on_picked(picks, layer))

    def _on_progress(self, value) -> None:
        done, total = value
        self.progress.value = int(100 * done / max(total, 1))

    def _on_picked(self, picks, layer) -> None:
        picks.tomo_names = np.array([layer.name] * len(picks))
        set_picks_layer(self._viewer, picks, layer)
        self.progress.value = 100
        self.status.value = f"{len(picks)} picks in {layer.name}"

    # ------------------------------------------------------------------ DoG preview
    def run_preview(self) -> None:
        """Compute the DoG response (binned as the picker does) as ``<tomogram> DoG``."""
        from napari_cryoguard.picking import dog_preview

        layer = self._layer_or_error()
        if layer is None:
            return
        p = self.pick_parameters()
        self.status.value = "computing DoG..."
        self._start(dog_preview, layer.data, sigma1=p["sigma1"], k=p["k"],
                    sigma_unit=p["sigma_unit"], voxel_size=p["voxel_size"],
                    polarity=p["polarity"],
                    on_return=lambda result, layer=layer: self._on_preview(result, layer))

    def _on_preview(self, result, layer) -> None:
        response, bin_factor = result
        name = f"{layer.name} DoG"
        scale = np.asarray(layer.scale[-3:]) * bin_factor
        translate = np.asarray(layer.translate[-3:]) + (bin_factor - 1) / 2 * np.asarray(layer.scale[-3:])
        if name in self._viewer.layers:
            self._viewer.layers.remove(name)
        lim = float(np.percentile(np.abs(response), 99.9)) or 1.0
        self._viewer.add_image(response, name=name, scale=scale, translate=translate,
                               colormap="twilight_shifted", contrast_limits=(-lim, lim),
                               blending="additive", visible=True, opacity=0.6)
        self.status.value = f"DoG preview (binned x{bin_factor})"

    # ------------------------------------------------------------------ extraction
    def run_extract(self) -> None:
        """Extract cubes around the ``picks`` layer's points into ``subtomograms``."""
        from napari_cryoguard.picking import extract_subtomograms

        layer = self._layer_or_error()
        if layer is None:
            return
        if PICKS_LAYER not in self._viewer.layers:
            show_error(ValueError("no 'picks' layer: pick particles first"))
            return
        coords = np.asarray(self._viewer.layers[PICKS_LAYER].data)[:, -3:]
        self.status.value = "extracting..."
        self._start(extract_subtomograms, layer.data, coords, size=int(self.cube.value),
                    normalize=bool(self.normalize.value), border=self.border_mode.value,
                    on_return=lambda sub, layer=layer: self._on_extracted(sub, layer))

    def _on_extracted(self, sub, layer) -> None:
        if SUBTOMOGRAMS_LAYER in self._viewer.layers:
            self._viewer.layers.remove(SUBTOMOGRAMS_LAYER)
        if len(sub.volumes) == 0:
            self.status.value = f"no cubes extracted ({sub.n_skipped} skipped at the border)"
            return
        scale = (1.0, *layer.scale[-3:])
        self._viewer.add_image(
            sub.volumes, name=SUBTOMOGRAMS_LAYER, scale=scale, colormap="gray",
            metadata={"index": np.asarray(sub.index), "n_skipped": int(sub.n_skipped),
                      "normalized": bool(sub.normalized), "tomogram": layer.name,
                      "voxel_size": voxel_size_of(layer)},
        )
        self.status.value = (f"{len(sub.volumes)} subtomograms of {sub.size}^3 "
                             f"({sub.n_skipped} skipped at the border)")
