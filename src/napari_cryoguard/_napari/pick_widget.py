"""The "Pick particles" dock widget: DoG picking and subtomogram extraction.

The widget wires controls to the core: picking is
:func:`napari_cryoguard.picking.iter_pick_particles` (a generator yielding progress),
the polarity choice :func:`napari_cryoguard.picking.choose_polarity`, the preview
:func:`napari_cryoguard.picking.dog_preview` and extraction
:func:`napari_cryoguard.picking.extract_subtomograms`, each in a napari thread worker.
Only layer updates run on the Qt thread. Errors (a 2D image, a volume with NaNs, a cube
that does not fit) show as napari notifications and in the status line.

The main input is the particle diameter in Angstrom, which is what a biologist knows;
the DoG's sigma1 is derived from it (``sigma1 = diameter / (2 sqrt(3) voxel size)``,
see :func:`~napari_cryoguard.picking.sigma_from_diameter`) and shown, and can be set
directly under *advanced parameters*. The other defaults, choices and help texts are
:class:`~napari_cryoguard.picking.DoGParams`'s, the picker's one declaration of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FloatSpinBox,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)

from napari_cryoguard._napari._layers import (
    PICKS_LAYER,
    SUBTOMOGRAMS_LAYER,
    apply_stepwise,
    iter_add_layer,
    iter_prepare_dims,
    voxel_size_of,
)
from napari_cryoguard._napari._layout import DockWidget, Group, status_label
from napari_cryoguard._napari._picks import connect_pick_selection, iter_picks_layer
from napari_cryoguard._napari._warmup import schedule_warm_up
from napari_cryoguard._napari._workers import show_error, start_worker
from napari_cryoguard.layerdata import POLARITY_KEY, inverted_note, protein_is_dark
from napari_cryoguard.params import fields_of
from napari_cryoguard.picking.extract import BORDER_MODES
from napari_cryoguard.picking.params import (
    PAPER_CUBE,
    PAPER_SIGMA1,
    POLARITIES,
    DoGParams,
    border_note,
)
from napari_cryoguard.picking.polarity import POLARITY_WORDS

if TYPE_CHECKING:
    import napari

#: Default particle diameter (A): the sample data's particles (radii 7-11 voxels at 10 A)
#: give sigma1 = 4.9 voxels, about :data:`~napari_cryoguard.picking.SIMULATED_SIGMA1`.
DEFAULT_DIAMETER = 170.0

#: the picker's defaults and help texts (DoGParams declares them once)
_DEFAULTS = DoGParams()
_HELP = {f.name: f.help for f in fields_of(DoGParams)}
#: the widget starts at polarity "auto", not the core's "bright" (which suits the
#: simulator): a tomogram just opened has not been looked at yet
WIDGET_POLARITY = "auto"
#: polarity choices (DoGParams's) as the user sees them in the viewer -> the core's value
POLARITY_CHOICES = [("auto (try both)", WIDGET_POLARITY),
                    *((POLARITY_WORDS[v], v) for v in POLARITIES if v != WIDGET_POLARITY)]


def _pick_job(data, polarity: str, params: dict):
    """Worker body: choose the polarity when asked to, then pick; returns (picks, choice)."""
    from napari_cryoguard.picking import choose_polarity, iter_pick_particles

    choice = None
    if polarity == "auto":
        choice = choose_polarity(data, params["sigma1"], params["k"],
                                 voxel_size=params["voxel_size"], border=params["border"],
                                 min_distance=params["min_distance"])
        polarity = choice.polarity
    picks = yield from iter_pick_particles(data, polarity=polarity, **params)
    return picks, polarity, choice


def _extract_job(data, coords, **kwargs):
    """Worker body: the cubes and the display range of the first one (napari would
    otherwise compute contrast limits on the Qt thread)."""
    from napari_cryoguard.picking import extract_subtomograms

    sub = extract_subtomograms(data, coords, **kwargs)
    return sub, _limits(sub.volumes[0]) if len(sub.volumes) else (0.0, 1.0)


def _limits(vol) -> tuple[float, float]:
    lo, hi = float(np.min(vol)), float(np.max(vol))
    return lo, hi if hi > lo else lo + 1.0


def _preview_job(data, polarity: str, sigma1: float, k: float):
    """Worker body: the binned DoG with the particles' sign positive, and its display range."""
    from napari_cryoguard.picking import dog_preview
    from napari_cryoguard.picking.polarity import polarity_from_dog

    response, b = dog_preview(data, sigma1, k, polarity="bright")
    choice = None
    if polarity == "auto":
        choice = polarity_from_dog(response, b, sigma1)
        polarity = choice.polarity
    if polarity == "dark":
        np.negative(response, out=response)
    lim = float(np.percentile(np.abs(response), 99.9)) or 1.0
    return response, b, lim, polarity, choice


class PickWidget(DockWidget):
    """Difference-of-Gaussian particle picking, then extraction of subtomogram cubes.

    "Pick" writes the ``picks`` Points layer (a ``score`` feature per pick, drawn out of
    slice with the particle diameter as size); "Preview DoG" shows ``<tomogram> DoG``
    with the picked sign bright; "Extract subtomograms" makes the ``subtomograms`` Image
    layer (N, D, H, W) from the current ``picks``. Parameters mirror
    :func:`~napari_cryoguard.picking.pick_particles`; k defaults to the RAT paper's 1.1.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)

    def _build(self) -> None:
        viewer = self._viewer
        from napari_cryoguard._napari._state import state_for

        self._state = state_for(viewer)
        self.image = create_widget(annotation="napari.layers.Image", label="tomogram")
        self.diameter = FloatSpinBox(
            value=DEFAULT_DIAMETER, min=1.0, max=100_000.0, step=10.0,
            label="particle diameter (Å)",
            tooltip="diameter of the particles in Angstrom; the DoG's sigma1 is derived from "
                    "it (sigma1 = diameter / (2 sqrt(3) voxel size)) and the picks are drawn "
                    "this size")
        self.polarity = ComboBox(
            choices=POLARITY_CHOICES, value=WIDGET_POLARITY, label="protein looks",
            tooltip="how particles look in the viewer: white (bright) or black (dark); auto "
                    "tries both and keeps the sign whose best peaks stand out more")
        self.sigma_info = status_label("")
        # ---------------------------------------------------------- advanced
        self.sigma1 = FloatSpinBox(
            value=0.0, min=0.0, max=500.0, step=0.5, label="sigma1 (voxels)",
            tooltip="0 = derived from the particle diameter; otherwise the DoG's smaller "
                    f"sigma in voxels (RAT paper: {PAPER_SIGMA1})")
        self.k = FloatSpinBox(value=_DEFAULTS.k, min=1.01, max=10.0, step=0.05, label="k",
                              tooltip=_HELP["k"])
        self.threshold = FloatSpinBox(
            value=_DEFAULTS.threshold, min=-50.0, max=1000.0, step=0.25, label="threshold",
            tooltip=_HELP["threshold"])
        self.min_distance = FloatSpinBox(
            value=0.0, min=0.0, max=1000.0, step=1.0, label="min distance",
            tooltip=_HELP["min_distance"] + "; 0 = automatic (2 * sigma1)")
        self.max_picks = SpinBox(value=0, min=0, max=10_000_000, label="max picks",
                                 tooltip=_HELP["max_picks"] + "; 0 = no limit")
        self.border = SpinBox(value=_DEFAULTS.border_voxels, min=0, max=10_000, label="border",
                              tooltip=_HELP["border"])
        self.bin = SpinBox(value=0, min=0, max=64, label="bin",
                           tooltip="bin the volume by this factor before filtering; "
                                   "0 = automatic (sigma1 / 1.6)")
        self.advanced = Group("advanced parameters", [
            self.sigma1, self.k, self.threshold, self.min_distance, self.max_picks,
            self.border, self.bin])
        self.preview_button = PushButton(text="Preview DoG")
        self.pick_button = PushButton(text="Pick")
        self.progress = ProgressBar(value=0, min=0, max=100, label="progress")
        self.cube = SpinBox(value=PAPER_CUBE, min=4, max=512, label="cube size")
        self.normalize = CheckBox(value=True, text="normalise per sample")
        self.border_mode = ComboBox(choices=list(BORDER_MODES), value=BORDER_MODES[0],
                                    label="at border")
        self.extract_button = PushButton(text="Extract subtomograms")
        self.status = status_label("")
        self.selection = status_label("")
        self.body.extend([
            self.image, self.diameter, self.polarity, self.sigma_info, self.advanced,
            self.preview_button, self.pick_button, self.progress, self.cube, self.normalize,
            self.border_mode, self.extract_button, self.status, self.selection,
        ])
        self.pick_button.changed.connect(self.run_pick)
        self.preview_button.changed.connect(self.run_preview)
        self.extract_button.changed.connect(self.run_extract)
        for w in (self.image, self.diameter, self.sigma1):
            w.changed.connect(self._update_sigma_info)
        connect_pick_selection(viewer, self._on_select)
        schedule_warm_up(viewer)  # shaders and glyphs built at idle, not at the first result
        self._update_sigma_info()

    # ------------------------------------------------------------------ parameters
    def reset_choices(self, *_) -> None:
        super().reset_choices()
        if self.built:
            self._update_sigma_info()

    def voxel_size(self) -> float:
        layer = self.image.value
        return voxel_size_of(layer) if layer is not None else 1.0

    def sigma_voxels(self) -> float:
        """sigma1 in voxels: the override when set, else derived from the diameter."""
        from napari_cryoguard.picking import sigma_from_diameter

        if float(self.sigma1.value) > 0:
            return float(self.sigma1.value)
        return sigma_from_diameter(float(self.diameter.value), self.voxel_size())

    def _update_sigma_info(self, *_) -> None:
        voxel = self.voxel_size()
        s = self.sigma_voxels()
        if float(self.sigma1.value) > 0:
            text = f"sigma1 = {s:.2f} voxels (set under advanced parameters)"
        else:
            text = (f"sigma1 = {s:.2f} voxels, from {float(self.diameter.value):g} Å at "
                    f"{voxel:g} Å/voxel (sigma1 = diameter / (2√3 · voxel size))")
        if self.image.value is not None and voxel == 1.0:
            text += "; the layer has no voxel size, 1 Å is assumed"
        self.sigma_info.value = text

    def pick_parameters(self) -> dict:
        """The keyword arguments for :func:`pick_particles` (polarity apart) from the form,
        checked by :class:`~napari_cryoguard.picking.DoGParams`."""
        params = DoGParams(
            sigma1=self.sigma_voxels(), k=float(self.k.value), sigma_unit="voxel",
            threshold=float(self.threshold.value),
            min_distance=float(self.min_distance.value) or None,
            max_picks=int(self.max_picks.value) or None, border=int(self.border.value))
        kwargs = {f.name: getattr(params, f.name) for f in fields_of(DoGParams, skip=["polarity"])}
        return dict(kwargs, voxel_size=self.voxel_size(),
                    bin_factor=int(self.bin.value) or "auto")

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
            self.show_failure(ValueError("open a tomogram first: there is no image layer to "
                                         "pick in"))
        return layer

    # ------------------------------------------------------------------ picking
    def run_pick(self) -> None:
        """Pick particles in the selected tomogram in a worker thread."""
        layer = self._layer_or_error()
        if layer is None:
            return
        self.status.value = "picking..."
        self.progress.value = 0
        self._start(_pick_job, layer.data, self.polarity.value, self.pick_parameters(),
                    on_yield=self._on_progress,
                    on_return=lambda result, layer=layer: self._on_picked(result, layer))

    def _on_progress(self, value) -> None:
        done, total = value
        self.progress.value = int(100 * done / max(total, 1))

    def _on_picked(self, result, layer) -> None:
        from napari_cryoguard.picking import POLARITY_WORDS

        picks, polarity, choice = result
        picks.tomo_names = np.array([layer.name] * len(picks))
        how = f"auto chose {choice.describe()}" if choice is not None else POLARITY_WORDS[polarity]
        thin = border_note(layer.data.shape, int(self.border.value),
                           option="'border' under advanced parameters")
        if thin:
            how += f"; {thin}"

        # how protein looks in this tomogram: every later cube cut from it (Extract,
        # Classify from picks, Attack) is inverted to protein white when it is black
        layer.metadata = {**(layer.metadata or {}), POLARITY_KEY: polarity}

        def done(_layer) -> None:
            self._state.set_tomogram(layer.name)
            self.progress.value = 100
            self.status.value = f"{len(picks)} picks in {layer.name}; {how}"

        # a new Points layer is added over a few event-loop turns (never one long freeze)
        apply_stepwise(self, iter_picks_layer(self._viewer, picks, layer,
                                              diameter=float(self.diameter.value)),
                       on_done=done)

    def _on_select(self, index: int) -> None:
        """A pick was clicked: say which, with its score and position."""
        if PICKS_LAYER not in self._viewer.layers:
            return
        layer = self._viewer.layers[PICKS_LAYER]
        if not 0 <= index < len(layer.data):
            return
        feats = layer.features
        score = f", score {float(feats['score'].iloc[index]):.2f}" if "score" in feats else ""
        z, y, x = np.asarray(layer.data[index])[-3:]
        self.selection.value = f"pick {index}{score} at z {z:.0f}, y {y:.0f}, x {x:.0f} voxels"

    # ------------------------------------------------------------------ DoG preview
    def run_preview(self) -> None:
        """Compute the DoG response (binned as the picker does) as ``<tomogram> DoG``."""
        layer = self._layer_or_error()
        if layer is None:
            return
        self.status.value = "computing DoG..."
        self._start(_preview_job, layer.data, self.polarity.value, self.sigma_voxels(),
                    float(self.k.value),
                    on_return=lambda result, layer=layer: self._on_preview(result, layer))

    def _on_preview(self, result, layer) -> None:
        from napari_cryoguard.picking import POLARITY_WORDS

        response, bin_factor, lim, polarity, choice = result
        name = f"{layer.name} DoG"
        scale = np.asarray(layer.scale[-3:]) * bin_factor
        translate = (np.asarray(layer.translate[-3:])
                     + (bin_factor - 1) / 2 * np.asarray(layer.scale[-3:]))
        props = dict(scale=scale, translate=translate, contrast_limits=(-lim, lim),
                     metadata={"polarity": polarity, "bin_factor": int(bin_factor)})
        if name in self._viewer.layers and self._viewer.layers[name].ndim == 3:
            existing = self._viewer.layers[name]
            existing.data = response
            for key, value in props.items():
                setattr(existing, key, value)
            existing.visible = True
        else:
            if name in self._viewer.layers:
                self._viewer.layers.remove(name)
            self._viewer.add_image(response, name=name, colormap="twilight_shifted",
                                   blending="additive", opacity=0.6, **props)
        word = POLARITY_WORDS[polarity].split(" (")[0]
        how = f" (auto chose {choice.describe()})" if choice is not None else ""
        self.status.value = (f"DoG preview (binned x{bin_factor}): bright = what is picked, "
                             f"{word}{how}")

    # ------------------------------------------------------------------ extraction
    def run_extract(self) -> None:
        """Extract cubes around the ``picks`` layer's points into ``subtomograms``."""

        layer = self._layer_or_error()
        if layer is None:
            return
        if PICKS_LAYER not in self._viewer.layers:
            self.show_failure(ValueError("there is no 'picks' layer: pick particles first"))
            return
        coords = np.array(self._viewer.layers[PICKS_LAYER].data)[:, -3:]
        if self.polarity.value != WIDGET_POLARITY:  # told: it holds for the cubes too
            layer.metadata = {**(layer.metadata or {}), POLARITY_KEY: self.polarity.value}
        invert = protein_is_dark(layer.metadata)
        self.status.value = "extracting..."
        self._start(_extract_job, layer.data, coords, size=int(self.cube.value),
                    normalize=bool(self.normalize.value), border=self.border_mode.value,
                    invert=invert,
                    on_return=lambda out, layer=layer: self._on_extracted(*out, layer=layer))

    def _on_extracted(self, sub, limits=None, *, layer) -> None:
        if len(sub.volumes) == 0:
            if SUBTOMOGRAMS_LAYER in self._viewer.layers:
                self._viewer.layers.remove(SUBTOMOGRAMS_LAYER)
            self.status.value = f"no cubes extracted ({sub.n_skipped} skipped at the border)"
            return
        scale = (1.0, *layer.scale[-3:])
        metadata = {"index": np.asarray(sub.index), "n_skipped": int(sub.n_skipped),
                    "normalized": bool(sub.normalized), "tomogram": layer.name,
                    "voxel_size": voxel_size_of(layer), "inverted": bool(sub.inverted)}
        lo, hi = limits if limits is not None else _limits(sub.volumes[0])
        existing = (self._viewer.layers[SUBTOMOGRAMS_LAYER]
                    if SUBTOMOGRAMS_LAYER in self._viewer.layers else None)
        status = (f"{len(sub.volumes)} subtomograms of {sub.size}^3 "
                  f"({sub.n_skipped} skipped at the border)")
        if sub.inverted:
            status += "; " + inverted_note(layer.name)
        if existing is not None and existing.ndim == 4 and existing.rgb is False:
            existing.data = sub.volumes
            if not np.allclose(existing.scale, scale):
                existing.scale = scale
            existing.metadata = metadata
            existing.contrast_limits = (lo, hi)
            self.status.value = status
            return
        from napari.layers import Image

        def steps():
            if existing is not None:
                self._viewer.layers.remove(SUBTOMOGRAMS_LAYER)
                yield "removed"
            new = Image(sub.volumes, name=SUBTOMOGRAMS_LAYER, scale=scale, colormap="gray",
                        metadata=metadata, contrast_limits=(lo, hi))
            yield "layer"  # napari's layer object (10-20 ms), apart from the dims' change
            # the first 4-D layer: its dims slider a turn before the append
            yield from iter_prepare_dims(self._viewer, new)
            yield from iter_add_layer(self._viewer, new)

        apply_stepwise(self, steps(), on_done=lambda _: setattr(self.status, "value", status))
