"""Helpers shared by the dock widgets: layer lookup, pick layers, error display."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import napari

PICKS_LAYER = "picks"
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
