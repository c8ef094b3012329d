"""The model picker shared by the widgets (bundled weights, known checkpoints, a file), and
the device choice."""

from __future__ import annotations

from napari_cryoguard._napari._workers import quiet_gc, thaw_gc

FILE_CHOICE = "checkpoint file..."
#: what a device field offers (:func:`napari_cryoguard.device.resolve_device` takes them)
DEVICES = ("auto", "cpu", "cuda", "mps")


def device_combo():
    """The ``device`` combo box of the widgets (``auto``: CUDA, then MPS, then the CPU)."""
    from magicgui.widgets import ComboBox

    return ComboBox(choices=list(DEVICES), value="auto", label="device")


def model_display_name(spec) -> str:
    """How results name a model: the bundled name, or ``run folder/file`` of a checkpoint."""
    from pathlib import Path

    p = Path(str(spec))
    if p.suffix != ".safetensors":
        return str(spec)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def chosen_file(edit, what: str = "a file"):
    """The path in a FileEdit, or a :class:`CryoGuardError` saying "choose ..." when empty.

    magicgui turns an empty field into ``Path(".")`` (the working directory); that is
    never what the user meant.
    """
    from pathlib import Path

    from napari_cryoguard.errors import CryoGuardError

    raw = getattr(getattr(edit, "line_edit", None), "value", None)  # what the user typed
    value = edit.value if raw is None else raw
    text = "" if value is None else str(value).strip()
    # magicgui fills an empty field with the working directory: that is "nothing chosen"
    if text in ("", ".") or Path(text).expanduser().resolve() == Path.cwd().resolve():
        raise CryoGuardError(f"choose {what} first (the {edit.label} field is empty)")
    path = Path(text).expanduser()
    if path.is_dir():
        raise CryoGuardError(f"{path} is a folder: choose {what}")
    return path


class ModelPicker:
    """A model combo box plus a checkpoint file field, shared by the widgets of a viewer.

    Choices: the bundled weights, every checkpoint the viewer's widgets know (trained
    runs, files chosen before; see :mod:`._state`), and *checkpoint file...*. "Use model"
    in the Train widget selects a checkpoint in every picker of the viewer, also in
    widgets opened later. :meth:`spec` is what :func:`napari_cryoguard.classify.load_model`
    takes; :meth:`load` (call it from a worker: a large checkpoint takes seconds) caches
    the loaded model until the choice changes.
    """

    def __init__(self, viewer=None) -> None:
        from magicgui.widgets import ComboBox, FileEdit

        from napari_cryoguard._napari._state import state_for

        self.state = state_for(viewer) if viewer is not None else None
        self.model = ComboBox(choices=self._choices, label="model")
        self.checkpoint = FileEdit(mode="r", filter="*.safetensors", label="checkpoint")
        self._cache = None
        self._sync_visibility()
        self.model.changed.connect(self._changed)
        self.checkpoint.changed.connect(self._changed)
        if viewer is not None:
            # quiet_gc froze the objects of the time; a removed layer must be collectable
            viewer.layers.events.removed.connect(thaw_gc)
        if self.state is not None:
            self.state.models_changed.connect(self._models_changed)
            self.state.model_selected.connect(self.select)
            if self.state.selected_model:
                self.select(self.state.selected_model)

    def _choices(self, widget=None) -> list:
        from pathlib import Path

        from napari_cryoguard.models import bundled_models

        out = [(name, name) for name in bundled_models()]
        for spec in (self.state.models if self.state is not None else []):
            if spec not in dict(out).values():
                p = Path(spec)
                out.append((f"{p.parent.name}/{p.name}" if p.parent.name else p.name, spec))
        out.append((FILE_CHOICE, FILE_CHOICE))
        return out

    def _models_changed(self) -> None:
        value = self.model.value
        self.model.reset_choices()
        if value in [v for _, v in self._choices()]:
            self.model.value = value

    @property
    def widgets(self) -> list:
        return [self.model, self.checkpoint]

    def _sync_visibility(self) -> None:
        self.checkpoint.visible = self.model.value == FILE_CHOICE

    def _changed(self, *_) -> None:
        self._sync_visibility()
        self._cache = None

    def spec(self) -> str:
        """The chosen model: a bundled name or a checkpoint path (raises when none)."""
        if self.model.value == FILE_CHOICE:
            return str(chosen_file(self.checkpoint, "a checkpoint file (.safetensors)"))
        return str(self.model.value)

    @property
    def display_name(self) -> str:
        """How results name the model: the bundled name, or ``run folder/file``."""
        try:
            spec = self.spec()
        except Exception:  # noqa: BLE001 - no model chosen yet
            return "(no model)"
        return model_display_name(spec)

    def select(self, spec) -> None:
        """Select ``spec`` (a bundled name or a checkpoint path) in this picker."""
        spec = str(spec)
        self.model.reset_choices()
        if spec in [v for _, v in self._choices()]:
            self.model.value = spec
        else:
            self.model.value = FILE_CHOICE
            self.checkpoint.value = spec
        self._cache = None
        self._sync_visibility()

    def set_checkpoint(self, path) -> None:
        """Make ``path`` known to the viewer's pickers and select it here."""
        if self.state is not None:
            self.state.add_model(str(path))
        self.select(path)

    def load(self, spec: str | None = None):
        """The chosen model as a :class:`~napari_cryoguard.classify.LoadedModel` (cached)."""
        from napari_cryoguard.classify import load_model

        spec = self.spec() if spec is None else spec
        cache = self._cache
        if cache is None or cache.source != spec:
            with quiet_gc():  # the first load imports torch: ~10^5 long-lived objects
                cache = self._cache = load_model(spec, device="cpu")
        return cache
