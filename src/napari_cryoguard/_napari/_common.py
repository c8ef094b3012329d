"""Helpers shared by the dock widgets: layer lookup, pick layers, error display."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import napari

import weakref

PICKS_LAYER = "picks"
#: Classify and Attack widgets alive (the Train widget hands them finished checkpoints)
MODEL_CONSUMERS: weakref.WeakSet = weakref.WeakSet()
SUBTOMOGRAMS_LAYER = "subtomograms"


def show_error(exc: BaseException) -> None:
    """Show an error as a napari notification (never raise into Qt's event loop)."""
    from napari.utils.notifications import show_error as _show

    _show(str(exc))


def voxel_size_of(layer) -> float:
    """Voxel size in Angstrom of an image layer: its metadata, else its last scale entry."""
    meta = getattr(layer, "metadata", None) or {}
    if "voxel_size" in meta:
        return float(meta["voxel_size"])
    return float(layer.scale[-1])


def set_picks_layer(viewer: napari.viewer.Viewer, picks, image_layer, name: str = PICKS_LAYER, **kwargs):
    """Add or replace the Points layer ``name`` showing ``picks`` over ``image_layer``.

    Coordinates are the picks' ZYX voxel indices; the layer takes the image's scale and
    translate so that points sit on the particles in physical units. Scores (and any
    features of the picks) become layer features.
    """
    import pandas as pd

    features = pd.DataFrame(index=np.arange(len(picks)))
    if picks.scores is not None:
        features["score"] = picks.scores
    names = picks.class_of()
    if names is not None:
        features["class"] = pd.Categorical(names, categories=list(picks.class_names))
    for key, values in picks.features.items():
        features[key] = values
    scale = tuple(image_layer.scale[-3:])
    translate = tuple(image_layer.translate[-3:])
    metadata = {"voxel_size": voxel_size_of(image_layer), "tomo_name": image_layer.name,
                "class_names": list(picks.class_names or [])}
    style = dict(size=kwargs.pop("size", 14), symbol=kwargs.pop("symbol", "disc"),
                 border_color=kwargs.pop("border_color", "yellow"),
                 face_color=kwargs.pop("face_color", "transparent"),
                 border_width=kwargs.pop("border_width", 0.12),
                 projection_mode=kwargs.pop("projection_mode", "all"))
    if name in viewer.layers:
        viewer.layers.remove(name)
    layer = viewer.add_points(picks.coords.reshape(-1, 3), name=name, features=features,
                              scale=scale, translate=translate, metadata=metadata,
                              **style, **kwargs)
    return layer


def class_colors(n: int) -> np.ndarray:
    """``n`` distinct RGBA colours (tab10, then tab20), one per class."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return np.array([cmap(i % cmap.N) for i in range(n)], dtype=np.float32)


def show_particle_layers(viewer, layers: dict, gap: int = 4, **kwargs) -> list:
    """Add or replace single-particle Image layers, laid side by side along X.

    ``layers`` maps names (``particle <i>``, ``reconstruction <i>``, ``adversarial <i>``,
    ...) to (D, H, W) cubes; a layer of the same name is replaced, not piled up. Cubes
    are placed one cube + ``gap`` voxels apart so they can be compared at a glance.
    ``kwargs`` maps a name to extra ``add_image`` keywords (colormap, contrast limits).
    """
    out = []
    for j, (name, vol) in enumerate(layers.items()):
        extra = dict(kwargs.get(name, {}))
        if name in viewer.layers:
            viewer.layers.remove(name)
        shift = j * (vol.shape[-1] + gap)
        extra.setdefault("colormap", "gray")
        out.append(viewer.add_image(np.asarray(vol, dtype=np.float32), name=name,
                                    translate=(0, 0, shift), **extra))
    return out


class Failure:
    """A user-caused error (:class:`CryoGuardError`) carried back from a worker thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"Failure({self.error!r})"


def guarded(fn, *args, **kwargs):
    """Run ``fn`` (a function or a generator function) inside a worker, as a generator.

    Progress values a generator yields pass through; its return value (or the function's)
    is returned. A :class:`~napari_cryoguard.CryoGuardError` — bad input the user can fix —
    comes back as a :class:`Failure` for the widget to show as a notification, instead of
    an exception in the Qt event loop. Anything else is a bug and propagates.
    """
    import inspect

    from napari_cryoguard.errors import CryoGuardError

    try:
        result = fn(*args, **kwargs)
        if inspect.isgenerator(result):
            result = yield from result
        return result
    except CryoGuardError as exc:
        return Failure(exc)


def start_worker(widget, fn, *args, on_return, on_yield=None, buttons=(), **kwargs):
    """Start ``guarded(fn, ...)`` in a napari thread worker and wire it to ``widget``.

    ``buttons`` are disabled while it runs; ``on_return`` gets the result, while a
    :class:`Failure` goes to ``widget.show_failure``. The worker is kept as
    ``widget._worker`` (tests and Cancel use it).
    """
    from napari.qt.threading import create_worker

    worker = create_worker(guarded, fn, *args, _start_thread=False, **kwargs)

    def returned(result):
        if isinstance(result, Failure):
            widget.show_failure(result.error)
        else:
            on_return(result)

    def finished():
        for b in buttons:
            b.enabled = True

    if on_yield is not None:
        worker.yielded.connect(on_yield)
    worker.returned.connect(returned)
    worker.errored.connect(widget.show_failure)
    worker.finished.connect(finished)
    for b in buttons:
        b.enabled = False
    widget._worker = worker
    worker.start()
    return worker


FILE_CHOICE = "checkpoint file..."


def _model_choices(widget=None) -> list[str]:
    from napari_cryoguard.models import bundled_models

    return [*bundled_models(), FILE_CHOICE]


class ModelPicker:
    """A bundled-weights combo box plus a checkpoint file field, shared by the widgets.

    ``widgets`` are added to the owning container; :meth:`spec` is what
    :func:`napari_cryoguard.classify.load_model` takes; :meth:`load` caches the loaded
    model until the choice changes.
    """

    def __init__(self) -> None:
        from magicgui.widgets import ComboBox, FileEdit

        self.model = ComboBox(choices=_model_choices, label="model")
        self.checkpoint = FileEdit(mode="r", filter="*.safetensors", label="checkpoint")
        self.checkpoint.visible = self.model.value == FILE_CHOICE
        self.model.changed.connect(self._changed)
        self.checkpoint.changed.connect(self._changed)
        self._cache = None

    @property
    def widgets(self) -> list:
        return [self.model, self.checkpoint]

    def _changed(self, *_) -> None:
        self.checkpoint.visible = self.model.value == FILE_CHOICE
        self._cache = None

    def spec(self) -> str:
        if self.model.value == FILE_CHOICE:
            return str(self.checkpoint.value)
        return str(self.model.value)

    def set_checkpoint(self, path) -> None:
        """Select a checkpoint file (the Train widget's "use this model" button)."""
        self.model.reset_choices()
        self.model.value = FILE_CHOICE
        self.checkpoint.value = path
        self._cache = None

    def load(self):
        """The chosen model as a :class:`~napari_cryoguard.classify.LoadedModel` (cached)."""
        from napari_cryoguard.classify import load_model

        spec = self.spec()
        if self._cache is None or self._cache.source != spec:
            self._cache = load_model(spec, device="cpu")
        return self._cache


def particle_cube(viewer, i: int, cube: int, image_layer=None) -> np.ndarray:
    """The normalised ``cube``^3 volume of pick ``i``.

    Taken from the ``subtomograms`` layer when it holds pick ``i`` at that size, else
    extracted from ``image_layer`` around the ``picks`` layer's point ``i`` (padded at
    the border). Raises ``ValueError`` when neither is available.
    """
    from napari_cryoguard.classify import zscore
    from napari_cryoguard.picking import extract_subtomograms

    if SUBTOMOGRAMS_LAYER in viewer.layers:
        layer = viewer.layers[SUBTOMOGRAMS_LAYER]
        index = list(np.asarray(layer.metadata.get("index", np.arange(len(layer.data)))))
        if i in index and layer.data.shape[-1] == cube:
            vol = np.asarray(layer.data[index.index(i)], dtype=np.float32)
            return vol if layer.metadata.get("normalized") else zscore(vol[None])[0]
    if PICKS_LAYER not in viewer.layers or image_layer is None:
        raise ValueError("select a tomogram and a pick (or extract subtomograms) first")
    points = np.asarray(viewer.layers[PICKS_LAYER].data)
    if not 0 <= i < len(points):
        raise ValueError(f"there is no pick {i} (the picks layer has {len(points)} points)")
    sub = extract_subtomograms(image_layer.data, points[i : i + 1, -3:], size=cube, border="pad")
    if len(sub.volumes) == 0:
        raise ValueError(f"pick {i} lies outside the tomogram")
    return sub.volumes[0]


def apply_predictions(layer, preds, index) -> float | None:
    """Write classification results to a picks Points layer and colour it by class.

    Features: ``class`` (predicted name; empty for picks not classified, e.g. skipped at
    the border), ``confidence`` and ``p_<class>`` per class; points coloured with
    :func:`class_colors`. Returns the accuracy against a ``true_class`` feature when the
    layer has one (picks without a true class are ignored), else ``None``.
    """
    import pandas as pd

    names = list(preds.class_names)
    n = len(layer.data)
    index = np.asarray(index, dtype=np.int64)
    feats = layer.features.copy()
    probs = np.full((n, len(names)), np.nan, dtype=np.float32)
    probs[index] = preds.probabilities
    predicted = np.array([""] * n, dtype=object)
    predicted[index] = preds.predicted_names
    feats["class"] = pd.Categorical(predicted.astype(str), categories=[*names, ""])
    feats["confidence"] = np.nanmax(np.where(np.isnan(probs), -1, probs), axis=1)
    for j, c in enumerate(names):
        feats[f"p_{c}"] = probs[:, j]
    layer.features = feats
    colors = class_colors(len(names))
    rgba = np.tile([0.6, 0.6, 0.6, 1.0], (n, 1))
    pred_idx = np.full(n, -1)
    pred_idx[index] = preds.predicted
    rgba[pred_idx >= 0] = colors[pred_idx[pred_idx >= 0]]
    layer.border_color = rgba
    face = rgba.copy()
    face[:, 3] = 0.3  # translucent fill: the particle stays visible under its pick
    layer.face_color = face
    layer.metadata["class_names"] = names
    if "true_class" not in feats.columns:
        return None
    true = np.asarray(feats["true_class"]).astype(str)[index]
    known = np.isin(true, names)
    if not known.any():
        return None
    return float(np.mean(np.asarray(preds.predicted_names)[known] == true[known]))
