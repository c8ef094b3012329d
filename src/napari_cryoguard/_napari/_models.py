"""The model picker shared by the widgets (bundled weights, known checkpoints, a file), the
device choice, and torch loaded off the Qt thread (:func:`when_torch_ready`)."""

from __future__ import annotations

import sys
import threading

from napari_cryoguard._napari._workers import quiet_gc, thaw_gc

FILE_CHOICE = "checkpoint file..."
#: what a device field offers (:func:`napari_cryoguard.device.resolve_device` takes them)
DEVICES = ("auto", "cpu", "cuda", "mps")


#: the registries the widgets' choices and forms come from (each imports torch)
TORCH_MODULES = ("napari_cryoguard.models", "napari_cryoguard.defenses",
                 "napari_cryoguard.attacks", "napari_cryoguard.classify")
# torch's shared libraries, loaded first by calling the C library's dlopen through ctypes,
# which releases the GIL during the call; Python's own loading of an extension module
# (and ctypes.CDLL) holds it: 170-250 ms of frozen event loop for libtorch_cpu alone
_TORCH_LIBS = ("libtorch_global_deps.so", "libc10.so", "libtorch_cpu.so", "libtorch.so",
               "libtorch_python.so")
_LOADED = threading.Event()  # the background import has finished (or failed)
_LOAD_LOCK = threading.Lock()
_LOADER: list = []  # the background thread, once started


def _imported(name: str) -> bool:
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    return module is not None and not getattr(spec, "_initializing", False)


def torch_ready() -> bool:
    """Whether torch is imported (and so the registries can be imported on the Qt thread
    without the long wait of torch's own import)."""
    if _LOADED.is_set():
        return True
    if _LOADER:  # the background import runs: its modules may be half made
        return False
    return _imported("torch")


def _preload_torch_libs() -> None:
    """dlopen torch's libraries with the GIL released (Linux; elsewhere nothing): the
    import that follows finds them loaded."""
    import ctypes
    import importlib.util
    import os

    if not sys.platform.startswith("linux"):
        return
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return
    libc = ctypes.CDLL(None)  # its functions are called with the GIL released
    dlopen = libc.dlopen
    dlopen.restype = ctypes.c_void_p
    dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib = os.path.join(os.path.dirname(spec.origin), "lib")
    for name in _TORCH_LIBS:
        path = os.path.join(lib, name)
        if os.path.exists(path):
            dlopen(os.fsencode(path), os.RTLD_NOW | os.RTLD_GLOBAL)  # NULL: the import tries


def _load_torch() -> None:
    import importlib

    try:
        with quiet_gc():  # ~10^5 long-lived objects: kept out of the collector's full passes
            try:
                _preload_torch_libs()
            except (OSError, AttributeError):  # no dlopen there: the import loads them
                pass
            for name in TORCH_MODULES:
                importlib.import_module(name)
    except Exception:  # noqa: BLE001 - the widget's own import shows the error later
        pass
    finally:
        _LOADED.set()


def load_torch_in_background(delay_ms: int | None = None) -> None:
    """Start importing torch and the registries in a background thread (once).

    ``delay_ms``: start it that long from now, from the Qt event loop (after the docking
    that asked for it has been laid out and painted: the import competes with the Qt
    thread for the GIL while it runs).
    """
    if delay_ms is not None:
        from qtpy.QtCore import QTimer

        QTimer.singleShot(int(delay_ms), _load_after_warm_up)
        return
    with _LOAD_LOCK:
        if _LOADER or torch_ready():
            return
        thread = threading.Thread(target=_load_torch, name="cryoguard-torch-import", daemon=True)
        _LOADER.append(thread)
        thread.start()


#: how long after a widget asks for torch its background import starts (ms)
LOAD_DELAY_MS = 1000
#: how long the import waits for a running warm-up of the visuals (ms) before it starts anyway
WARM_UP_WAIT_MS = 20_000


def _load_after_warm_up(waited_ms: int = 0) -> None:
    """Start the import once no viewer's warm-up (:mod:`._warmup`) runs: both compete
    for the GIL, and a warm-up step stretched by the import stalls the event loop."""
    from napari_cryoguard._napari import _warmup

    running = _warmup._WARMED - _warmup._WARM_DONE
    if running and waited_ms < WARM_UP_WAIT_MS:
        from qtpy.QtCore import QTimer

        QTimer.singleShot(200, lambda: _load_after_warm_up(waited_ms + 200))
        return
    load_torch_in_background()


def when_torch_ready(parent, callback, poll_ms: int = 30) -> bool:
    """Call ``callback()`` on the Qt thread once torch is imported.

    Already imported (torch by anyone; the registries then take ~60 ms more): called
    now, returns True. Otherwise torch and the registries are imported in a background
    thread (:func:`load_torch_in_background`, ``LOAD_DELAY_MS`` later and after a running
    warm-up of the visuals) and a QTimer owned by ``parent`` (a QWidget) calls
    ``callback`` when that has finished (returns False). Widgets build their choice
    lists and parameter forms there, so docking never waits 1-2 s for torch on the Qt
    thread.
    """
    if torch_ready():
        callback()
        return True
    load_torch_in_background(LOAD_DELAY_MS)
    from qtpy.QtCore import QTimer

    timer = QTimer(parent)
    timer.setInterval(poll_ms)

    def check() -> None:
        if _LOADED.is_set():
            timer.stop()
            timer.deleteLater()
            callback()

    timer.timeout.connect(check)
    timer.start()
    return False


def bundled_model_names() -> list[str]:
    """The bundled weights' names (``models.checkpoint.bundled_models``), read from the
    package's ``data/weights`` folder without importing torch when it is not loaded."""
    checkpoint = sys.modules.get("napari_cryoguard.models.checkpoint")
    if checkpoint is not None and torch_ready():
        return checkpoint.bundled_models()
    weights = _weights_dir()
    if not weights.is_dir():
        return []
    return sorted(p.name[: -len(".safetensors")] for p in weights.glob("*.safetensors"))


def _weights_dir():
    """``models.checkpoint.WEIGHTS_DIR``, found without importing torch."""
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "data" / "weights"


def bundled_weights_path(name: str):
    """The file of the bundled weights ``name`` (without importing torch)."""
    return _weights_dir() / f"{name}.safetensors"


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


def checkpoint_choices(specs, taken) -> list[tuple[str, str]]:
    """``(label, spec)`` combo choices for the checkpoints ``specs`` not already among the
    choices ``taken``; a checkpoint is labelled ``run folder/file``."""
    from pathlib import Path

    seen = {v for _, v in taken}
    out = []
    for spec in specs:
        if spec not in seen:
            p = Path(spec)
            out.append((f"{p.parent.name}/{p.name}" if p.parent.name else p.name, spec))
            seen.add(spec)
    return out


def refresh_keeping(combo, choices) -> None:
    """Recompute ``combo``'s choices, keeping its value when it is still offered."""
    value = combo.value
    combo.reset_choices()
    if value in [v for _, v in choices()]:
        combo.value = value


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
        out = [(name, name) for name in bundled_model_names()]
        out += checkpoint_choices(self.state.models if self.state is not None else [], out)
        out.append((FILE_CHOICE, FILE_CHOICE))
        return out

    def _models_changed(self) -> None:
        refresh_keeping(self.model, self._choices)

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
