"""One state shared by the plugin's widgets of a viewer: models, labels, the current tomogram.

napari docks every plugin widget with its own ``PublicOnlyProxy`` of the viewer, so two
widgets of one viewer never hold the same viewer object. The state is therefore found
through the object the proxies wrap (``proxy.__wrapped__``, a public dunder of the
proxy), and lives as long as that viewer. Widgets opened later read what is already
there (a model trained before they were opened is selected in them too).

Qt-free apart from psygnal signals; nothing here touches the widgets directly.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path

from psygnal import Signal

_STATES: dict[int, ViewerState] = {}


def _unwrap(viewer):
    """The viewer object behind napari's proxies (itself when it is not a proxy)."""
    for _ in range(8):
        inner = getattr(viewer, "__wrapped__", None)
        if inner is None or inner is viewer:
            break
        viewer = inner
    return viewer


@dataclass
class ViewerState:
    """What the widgets of one viewer share.

    Attributes
    ----------
    models
        Checkpoint files made available to every model picker (trained runs, files
        chosen once), newest last.
    selected_model
        The model "Use model" chose: every picker of the viewer selects it, also those
        opened later.
    tomogram
        Name of the Image layer the user picked in last (the default tomogram of the
        other widgets).
    """

    models: list[str] = field(default_factory=list)
    selected_model: str | None = None
    tomogram: str | None = None

    # emitted with the spec (bundled name or checkpoint path) to select everywhere
    model_selected = Signal(str)
    # emitted when the list of available models changed
    models_changed = Signal()
    # emitted with the layer name when a widget chose a tomogram
    tomogram_changed = Signal(str)

    def add_model(self, spec: str | Path) -> str:
        """Make ``spec`` (a checkpoint path or bundled name) available to every picker."""
        spec = str(spec)
        if spec not in self.models:
            self.models.append(spec)
            self.models_changed.emit()
        return spec

    def select_model(self, spec: str | Path) -> str:
        """Select ``spec`` in every model picker of the viewer (now and later)."""
        spec = self.add_model(spec)
        self.selected_model = spec
        self.model_selected.emit(spec)
        return spec

    def set_tomogram(self, name: str | None) -> None:
        if name and name != self.tomogram:
            self.tomogram = name
            self.tomogram_changed.emit(name)


def state_for(viewer) -> ViewerState:
    """The :class:`ViewerState` of ``viewer`` (a napari viewer or a proxy of one)."""
    real = _unwrap(viewer)
    key = id(real)
    state = _STATES.get(key)
    if state is None:
        state = _STATES[key] = ViewerState()
        try:
            weakref.finalize(real, _STATES.pop, key, None)
        except TypeError:  # not weak-referenceable: keep it for the process
            pass
    return state
