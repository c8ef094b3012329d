"""The "Train" dock widget: robust training in a background process, followed live.

Start checks every parameter first (the model, defense and recipe dataclasses are built
here, so a bad value is refused at once as a notification), prepares the data in a
worker (the ``subtomograms`` layer with explicit labels, or a dataset file that is read
to check it) and launches ``cryoguard train`` as a separate process
(:class:`~napari_cryoguard.runs.TrainRun`). A Qt timer reads its JSON-lines events: a
progress bar per step, an ETA from the step timing, the loss of every step and the
accuracies per epoch in a small plot that is redrawn only when new events arrived.
Cancel stops the process within one step and leaves one checkpoint; the state line
says how the run ended. "Use model" selects the run's checkpoint in every Classify,
Attack and Evaluate widget of the viewer, also in those opened later.

The model size defaults to ``small (CPU-friendly)`` on a CPU and ``paper`` on a CUDA
GPU (:data:`~napari_cryoguard.models.registry.SIZE_PRESETS`); the model form shows the
preset's values and stays editable. After an ``ima`` run the per-sample margins become
the ``margins`` Points layer (size and colour by margin, at the picks' positions when
the data came from them) with a histogram here that stays; "Export margins" writes the
picks with a ``margin`` column.

The recipe controls take their defaults and choices from
:class:`napari_cryoguard.recipe.Recipe`. Starting a run is
:func:`napari_cryoguard.interactive.start_training_run` (the ``subtomograms`` layer's
dataset built by :func:`napari_cryoguard.layerdata.labelled_dataset`), reading the
margins :func:`~napari_cryoguard.interactive.margins_job`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)

from napari_cryoguard._napari._forms import DataclassForm
from napari_cryoguard._napari._labels import LabelsChoice, subtomogram_stack
from napari_cryoguard._napari._layers import PICKS_LAYER, apply_stepwise
from napari_cryoguard._napari._layout import DockWidget, Group, button_row, status_label
from napari_cryoguard._napari._models import (
    FILE_CHOICE,
    bundled_model_names,
    bundled_weights_path,
    checkpoint_choices,
    chosen_file,
    device_combo,
    refresh_keeping,
    torch_ready,
    when_torch_ready,
)
from napari_cryoguard._napari._state import state_for
from napari_cryoguard._napari._workers import import_quietly, show_error, start_worker
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.interactive import margins_job, start_training_run
from napari_cryoguard.layerdata import margin_features
from napari_cryoguard.params import fields_of
from napari_cryoguard.recipe import DEFAULT_LR, Recipe

if TYPE_CHECKING:
    import napari

MARGINS_LAYER = "margins"
SOURCES = ("simulated dataset", "subtomograms layer", "dataset file")
#: height of the plot canvas (px): small enough for a 800 px screen
PLOT_HEIGHT = 210


# the choices shown until torch and the registries are imported (off the Qt thread, ~1 s
# after docking; see _models.when_torch_ready): the defaults only
DEFAULT_MODEL = "cb3d"
DEFAULT_DEFENSE = "standard"
SIZE_BEFORE_TORCH = "small (CPU-friendly)"  # models.registry.default_size_preset on a CPU


def _model_names(widget=None) -> list[str]:
    if not torch_ready():
        return [DEFAULT_MODEL]
    from napari_cryoguard.models import available_models

    return available_models()


#: the "start from" choice of a run with freshly initialised weights
SCRATCH = "scratch (new weights)"


def _defense_names(widget=None) -> list[str]:
    if not torch_ready():
        return [DEFAULT_DEFENSE]
    from napari_cryoguard.defenses import available_defenses

    return available_defenses()


def _size_names(widget=None) -> list[str]:
    if not torch_ready():
        return [SIZE_BEFORE_TORCH]
    from napari_cryoguard.models.registry import SIZE_PRESETS

    return list(SIZE_PRESETS)


# ---------------------------------------------------------------------- plots


# axes boxes (figure fractions): loss on top, accuracy (and margins) below
_LOSS_BOX = (0.17, 0.63, 0.79, 0.33)
_ACC_BOX = (0.17, 0.15, 0.79, 0.31)
_ACC_HALF_BOX = (0.17, 0.15, 0.36, 0.31)
_HIST_BOX = (0.62, 0.15, 0.34, 0.31)
ACC_KEYS = ("train_acc", "val_acc", "robust_acc")


class _Plots:
    """Loss per step (top); accuracies per epoch and, after IMA, the margins (bottom).

    The figure is a plain Agg figure rendered in a background thread (a redraw takes
    tens of milliseconds, too long for the Qt thread); the finished image is shown in a
    QLabel. The artists are made once and updated in place; :meth:`show` renders only
    when what it is asked to show changed, and a request arriving while a render runs
    is rendered next (only the newest).
    """

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from qtpy.QtCore import QTimer

        from napari_cryoguard._napari._layout import plot_label

        self.canvas = plot_label(PLOT_HEIGHT)
        self.figure = None  # made by the first render, in the render thread (matplotlib's
        # import and the figure take 0.3-0.6 s: not on the Qt thread at docking)
        self.margins: np.ndarray | None = None
        self.draws = 0  # renders started
        self._key = None
        self._pending = None  # the newest request not rendered yet
        self._future = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cryoguard-plot")
        self._poll = QTimer(self.canvas)
        self._poll.setInterval(20)
        self._poll.timeout.connect(self._collect)
        self.canvas.destroyed.connect(lambda *_: self._pool.shutdown(wait=False))

    @property
    def busy(self) -> bool:
        """A render is running or waiting."""
        return self._future is not None or self._pending is not None

    def show(self, run, margins: np.ndarray | None) -> bool:
        """Render ``run`` (and its margins) when they changed; returns whether it will."""
        key = (None if run is None else (run.name, run.version),
               None if margins is None else id(margins))
        if key == self._key:
            return False
        self._key = key
        data = None
        if run is not None:  # plain copies: the render thread never touches the run
            data = {"loss": run.loss_series(), "val_loss": run.series("val_loss"),
                    "spe": max(run.steps_per_epoch, 1),
                    "acc": {k: run.series(k) for k in ACC_KEYS}}
        width = self.canvas.width() if self.canvas.width() >= 200 else 340
        self._pending = (data, margins, width, self.canvas.devicePixelRatioF())
        self._submit()
        return True

    def _submit(self) -> None:
        if self._future is not None or self._pending is None:
            return
        request, self._pending = self._pending, None
        self.draws += 1
        self._future = self._pool.submit(self._render, *request)
        self._poll.start()

    def _collect(self) -> None:
        if self._future is None or not self._future.done():
            return
        future, self._future = self._future, None
        if self._pending is None:
            self._poll.stop()
        try:
            rgba, ratio = future.result()
        except Exception:  # noqa: BLE001 - a plot that fails to render must not take napari down
            rgba = None
        if rgba is not None:
            from napari_cryoguard._napari._layout import show_rgba

            show_rgba(self.canvas, rgba, ratio)
        self._submit()

    def _build_figure(self) -> None:
        """The figure and its artists, made once (in the render thread)."""
        import_quietly("matplotlib.backends.backend_agg", "matplotlib.figure",
                       "matplotlib.ticker")
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        figure = Figure(figsize=(3.4, PLOT_HEIGHT / 100), dpi=100)
        FigureCanvasAgg(figure)
        self.ax_loss = figure.add_axes(_LOSS_BOX)
        self.ax_acc = figure.add_axes(_ACC_BOX)
        self.ax_hist = figure.add_axes(_HIST_BOX)
        self.ax_hist.set_visible(False)
        (self.step_line,) = self.ax_loss.plot([], [], "-", lw=0.9, label="train (step)")
        (self.val_line,) = self.ax_loss.plot([], [], "o--", ms=3, label="val (epoch)")
        self.acc_lines = {}
        for key, style in zip(ACC_KEYS, ("o-", "o--", "o:"), strict=True):
            (self.acc_lines[key],) = self.ax_acc.plot([], [], style, ms=3,
                                                      label=key.replace("_acc", ""))
        self.ax_loss.set_ylabel("loss", fontsize=7)
        self.ax_loss.set_xlabel("step", fontsize=7, labelpad=1)
        self.ax_acc.set_ylabel("accuracy", fontsize=7)
        self.ax_acc.set_xlabel("epoch", fontsize=7, labelpad=1)
        self.ax_acc.set_ylim(0, 1.02)
        for ax in (self.ax_loss, self.ax_acc, self.ax_hist):
            ax.tick_params(labelsize=6, pad=1)
        for ax in (self.ax_loss, self.ax_acc):
            ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        self.figure = figure

    def _render(self, data, margins, width, ratio):
        """Update the artists and rasterise the figure (in the render thread)."""
        if self.figure is None:
            self._build_figure()
        dpi = 100 * ratio
        self.figure.set_dpi(dpi)
        self.figure.set_size_inches(width / 100, PLOT_HEIGHT / 100)
        if data is not None:
            self.step_line.set_data(*data["loss"])
            ex, ev = data["val_loss"]
            self.val_line.set_data([e * data["spe"] for e in ex], ev)
            for key, line in self.acc_lines.items():
                line.set_data(*data["acc"][key])
            for ax, lines in ((self.ax_loss, (self.step_line, self.val_line)),
                              (self.ax_acc, tuple(self.acc_lines.values()))):
                ax.relim()
                ax.autoscale_view(scalex=True, scaley=ax is self.ax_loss)
                shown = [line for line in lines if len(line.get_xdata())]
                if shown:  # a legend of the curves there are (no "robust" when it is off)
                    ax.legend(handles=shown, fontsize=6, loc="best", framealpha=0.6)
                elif ax.get_legend() is not None:
                    ax.get_legend().remove()
        self._draw_margins(margins)
        self.figure.canvas.draw()
        return np.array(self.figure.canvas.buffer_rgba()), ratio

    def _draw_margins(self, margins: np.ndarray | None) -> None:
        if margins is self.margins:
            return
        self.margins = margins
        self.ax_hist.clear()
        if margins is None:
            self.ax_hist.set_visible(False)
            self.ax_acc.set_position(_ACC_BOX)
            return
        self.ax_acc.set_position(_ACC_HALF_BOX)
        self.ax_hist.set_visible(True)
        self.ax_hist.hist(margins, bins=20, color="tab:purple")
        self.ax_hist.set_xlabel("IMA margin", fontsize=7, labelpad=1)
        self.ax_hist.set_ylabel("samples", fontsize=7, labelpad=1)
        self.ax_hist.tick_params(labelsize=6, pad=1)

    @property
    def histogram_shown(self) -> bool:
        if self.figure is None:
            return False
        return bool(self.ax_hist.get_visible() and self.ax_hist.patches)


# ---------------------------------------------------------------------- the widget


class TrainWidget(DockWidget):
    """Train a classifier with a defense in a background ``cryoguard train`` process."""

    def __init__(self, viewer: napari.viewer.Viewer, runs_dir: str | Path | None = None) -> None:
        super().__init__(viewer)
        self.runs_dir = runs_dir

    def _build(self) -> None:
        viewer = self._viewer
        from qtpy.QtCore import QTimer

        self.runs: dict[str, object] = {}
        self.margins_by_run: dict[str, np.ndarray] = {}
        self._notes: dict[str, str] = {}  # what the info line adds per run (the labels used)
        self._pending_note = ""
        self.last_margins: np.ndarray | None = None
        # data
        self.source = ComboBox(choices=SOURCES, value=SOURCES[0], label="data")
        self.per_class = SpinBox(value=50, min=2, max=100_000, label="per class")
        self.snr = FloatSpinBox(value=0.1, min=0.001, max=100.0, step=0.01, label="SNR")
        self.tilt = FloatSpinBox(value=60.0, min=1.0, max=90.0, step=5.0, label="tilt +-")
        self.cube = SpinBox(value=28, min=16, max=128, label="cube")
        self.simulation = Group("simulation", [self.per_class, self.snr, self.tilt, self.cube])
        self.labels = LabelsChoice(viewer)
        self.dataset = FileEdit(mode="r", filter="*.npz", label="dataset")
        # model and defense
        self.init = ComboBox(choices=self._init_choices, value=SCRATCH, label="start from",
                             tooltip="new weights, or a trained model to fine-tune (e.g. "
                                     "with a defense): its architecture and weights are used")
        self.init_file = FileEdit(mode="r", filter="*.safetensors", label="checkpoint")
        self.init_file.visible = False
        self.model = ComboBox(choices=_model_names, value=DEFAULT_MODEL, label="model")
        self.size = ComboBox(choices=_size_names, value=_size_names()[0], label="size",
                             tooltip="small: quick on a CPU; paper: the papers' widths (a GPU)")
        self.model_form = DataclassForm()
        self.model_group = Group("model parameters", [self.model_form])
        self.defense = ComboBox(choices=_defense_names, value=DEFAULT_DEFENSE, label="defense")
        self.defense_form = DataclassForm()
        self.defense_group = Group("defense parameters", [self.defense_form])
        # recipe: the defaults are the Recipe dataclass's
        recipe = {f.name: f for f in fields_of(Recipe)}
        self.epochs = SpinBox(value=recipe["epochs"].default, min=1, max=100_000, label="epochs")
        self.batch_size = SpinBox(value=recipe["batch_size"].default, min=1, max=4096,
                                  label="batch size")
        self.optimizer = ComboBox(choices=list(recipe["optimizer"].choices),
                                  value=recipe["optimizer"].default, label="optimizer")
        self.lr = LineEdit(value="", label="learning rate",
                           tooltip="empty: the optimizer's default ("
                                   + ", ".join(f"{v:g} {k}" for k, v in DEFAULT_LR.items()) + ")")
        self.robust_every = SpinBox(value=recipe["robust_every"].default, min=0, max=1000,
                                    label="robust every",
                                    tooltip="robust validation accuracy (PGD) every n epochs; "
                                            "0 = off")
        self.device = device_combo()
        self.keep_state = CheckBox(value=False, label="resumable",
                                   tooltip="also keep the optimizer state beside the checkpoint "
                                           "(a second file) to resume the run exactly")
        self.recipe_group = Group("training recipe", [self.batch_size, self.optimizer, self.lr,
                                                      self.robust_every, self.device,
                                                      self.keep_state])
        # runs
        self.start_button = PushButton(text="Start training")
        # choices from a callable: napari's reset_choices (on every layer change) keeps them
        self.run_list = ComboBox(choices=self._run_names, label="runs")
        self.progress = ProgressBar(value=0, min=0, max=100, label="progress")
        self.info = status_label()
        self.cancel_button = PushButton(text="Cancel run")
        self.use_button = PushButton(text="Use model in Classify / Attack / Evaluate")
        self.export_button = PushButton(text="Export margins as STAR...",
                                        tooltip="the picks with their IMA margins")
        self.plots = _Plots()
        buttons = button_row(self.cancel_button, self.export_button)
        self.body.extend([self.source, self.simulation, self.labels.combo, self.dataset,
                          self.init, self.init_file, self.model, self.size, self.model_group,
                          self.defense,
                          self.defense_group, self.epochs, self.recipe_group, self.start_button,
                          self.run_list, self.progress, self.info, buttons, self.use_button])
        self.add_native(self.plots.canvas)
        self.cancel_button.enabled = False
        self.use_button.enabled = False
        self._source_changed()
        self.source.changed.connect(self._source_changed)
        self.model.changed.connect(self._set_model_form)
        self.size.changed.connect(self._set_model_form)
        self.init.changed.connect(self._init_changed)
        self.init_file.changed.connect(self._init_changed)
        state_for(viewer).models_changed.connect(self._init_models_changed)
        self.defense.changed.connect(self._set_defense_form)
        self.start_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.use_button.changed.connect(self.use_model)
        self.export_button.changed.connect(self.export_margins)
        self.run_list.changed.connect(lambda *_: self.refresh())
        self._timer = QTimer(self.native)
        self._timer.setInterval(300)
        self._timer.timeout.connect(self.refresh)
        when_torch_ready(self.native, self._torch_ready)  # the model and defense forms

    # ------------------------------------------------------------------ forms
    def _torch_ready(self) -> None:
        """The full model, size and defense lists and their forms (torch is imported)."""
        from napari_cryoguard.models.registry import default_size_preset

        for combo in (self.model, self.size, self.defense):
            combo.reset_choices()
        with self.size.changed.blocked():
            self.size.value = default_size_preset("auto")
        self._set_model_form()
        self._set_defense_form()

    def _ensure_forms(self) -> None:
        if self.model_form.params_cls is None or self.defense_form.params_cls is None:
            self._torch_ready()  # asked before the background import finished

    def _set_model_form(self, *_) -> None:
        """The model's form at the chosen size (the preset's values, still editable)."""
        from napari_cryoguard.models import model_params_class
        from napari_cryoguard.models.registry import size_preset

        self.model_form.set_params_cls(model_params_class(self.model.value))
        for key, value in size_preset(self.size.value, self.model.value).items():
            w = getattr(self.model_form, key)
            w.value = json.dumps(list(value)) if isinstance(w, LineEdit) else value

    def _set_defense_form(self, *_) -> None:
        from napari_cryoguard.defenses import defense_params_class

        self.defense_form.set_params_cls(defense_params_class(self.defense.value))

    # ------------------------------------------------------------------ start from
    def _init_choices(self, widget=None) -> list:
        """New weights, the bundled weights, every checkpoint the viewer knows (trained
        runs, files chosen in any widget), or a file."""
        out = [(SCRATCH, SCRATCH)]
        out += [(name, str(bundled_weights_path(name))) for name in bundled_model_names()]
        known = [s for s in state_for(self._viewer).models if s.endswith(".safetensors")]
        out += checkpoint_choices(known, out)
        out.append((FILE_CHOICE, FILE_CHOICE))
        return out

    def _init_models_changed(self) -> None:
        refresh_keeping(self.init, self._init_choices)

    def init_checkpoint(self) -> Path | None:
        """The checkpoint the run starts from, or ``None`` for new weights."""
        if self.init.value == SCRATCH:
            return None
        if self.init.value == FILE_CHOICE:
            return chosen_file(self.init_file, "a checkpoint file (.safetensors) to start from")
        return Path(self.init.value)

    def _init_meta(self) -> dict | None:
        path = self.init_checkpoint()
        if path is None:
            return None
        from napari_cryoguard._checkpoint_header import read_checkpoint_metadata

        return read_checkpoint_metadata(path)  # the JSON header, no torch: a millisecond

    def _init_changed(self, *_) -> None:
        """Starting from a checkpoint, the model is the checkpoint's: shown, not editable."""
        self.init_file.visible = self.init.value == FILE_CHOICE
        try:
            meta = self._init_meta()
        except CryoGuardError as exc:
            if self.init.value != FILE_CHOICE or str(self.init_file.value) not in ("", "."):
                self.show_failure(exc)
            meta = None
        if meta is not None:
            arch = str(meta.get("arch", ""))
            name = next((c for c in self.model.choices if c.replace("-", "_") == arch), None)
            if name is not None and name != self.model.value:
                self.model.value = name
        for w in (self.model, self.size, self.model_group):
            w.enabled = meta is None

    def _source_changed(self, *_) -> None:
        self.simulation.visible = self.source.value == SOURCES[0]
        self.labels.combo.visible = self.source.value == SOURCES[1]
        self.dataset.visible = self.source.value == SOURCES[2]

    @staticmethod
    def _changed_params(form: DataclassForm) -> dict:
        """Only the fields that differ from the dataclass defaults (a shorter command)."""
        defaults = {f.name: f.default for f in fields_of(form.params_cls)}
        out = {}
        for k, v in form.values().items():
            d = defaults.get(k)
            if isinstance(d, tuple) and isinstance(v, (list, tuple)):
                if tuple(v) == d:
                    continue
            elif v == d:
                continue
            out[k] = list(v) if isinstance(v, tuple) else v
        return out

    def settings(self) -> dict:
        """The run's settings, every parameter checked (raises :class:`CryoGuardError`).

        The model, defense and recipe dataclasses are built here, so a value they refuse
        (``eps=-5``) is reported now rather than by the training process later.
        """
        from napari_cryoguard.defenses.base import make_defense_params
        from napari_cryoguard.models.registry import make_params

        self._ensure_forms()
        init_meta = self._init_meta()
        if init_meta is None:
            make_params(self.model.value, **self.model_form.values())
        make_defense_params(self.defense.value, **self.defense_form.values())
        text = str(self.lr.value).strip()
        try:
            lr = float(text) if text else None
        except ValueError:
            raise CryoGuardError(f"the learning rate must be a number or empty, not {text!r}") from None
        Recipe(epochs=int(self.epochs.value), batch_size=int(self.batch_size.value),
               optimizer=self.optimizer.value, lr=lr, robust_every=int(self.robust_every.value))
        model = self.model.value
        model_params = self._changed_params(self.model_form)
        if init_meta is not None:
            model = str(init_meta["arch"])
            model_params = {}
            cube = int(init_meta.get("cube", 0))
            if self.source.value == SOURCES[0] and cube and cube != int(self.cube.value):
                raise CryoGuardError(f"{self.init.current_choice} takes {cube}^3 subtomograms: "
                                     f"set cube to {cube} under simulation")
        settings = dict(model=model, defense=self.defense.value,
                        model_params=model_params,
                        defense_params=self._changed_params(self.defense_form),
                        epochs=int(self.epochs.value), batch_size=int(self.batch_size.value),
                        lr=lr, optimizer=self.optimizer.value, device=self.device.value,
                        robust_every=int(self.robust_every.value), step_interval=0.0,
                        save_state=bool(self.keep_state.value))
        if init_meta is not None:
            settings["init"] = str(self.init_checkpoint())
        if self.source.value == SOURCES[0]:
            settings["simulate"] = {"n_per_class": int(self.per_class.value),
                                    "snr": float(self.snr.value),
                                    "tilt": float(self.tilt.value), "cube": int(self.cube.value)}
        return settings

    # ------------------------------------------------------------------ runs
    def start(self) -> None:
        """Check the parameters, then prepare the data and launch the run in a worker."""
        source = self.source.value
        kwargs = {}
        try:
            settings = self.settings()
            if source == SOURCES[1]:
                labels = self.labels.resolve()
                kwargs = {"stack": subtomogram_stack(self._viewer, "training"), "labels": labels}
            elif source == SOURCES[2]:
                kwargs = {"dataset_path": chosen_file(self.dataset, "a dataset file (.npz)")}
        except CryoGuardError as exc:
            self.show_failure(exc)
            return
        note = ""
        if "init" in settings:
            note = (f"; starting from {self.init.current_choice} (its {settings['model']} "
                    "model and weights)")
        if source == SOURCES[1]:
            note += f"; labels: {labels.source}"
            if labels.predictions:
                note += " - chosen explicitly: the model learns to agree with itself"
        self._pending_note = note
        self.info.value = "preparing the run..." + note
        start_worker(self, start_training_run, self.runs_dir,
                     f"{self.model.value}-{self.defense.value}", settings, **kwargs,
                     on_return=self._started,
                     buttons=(self.start_button,))

    def _run_names(self, widget=None) -> list[str]:
        return list(getattr(self, "runs", {}))

    def _started(self, run) -> None:
        self.runs[run.name] = run
        self._notes[run.name] = self._pending_note
        self.run_list.reset_choices()
        self.run_list.value = run.name
        self._timer.start()
        self.refresh()

    def show_failure(self, exc: BaseException) -> None:
        """Show an error in the widget and as a napari notification."""
        self.info.value = f"error: {exc}"
        show_error(exc)

    def current_run(self):
        return self.runs.get(self.run_list.value) if self.run_list.value else None

    def refresh(self) -> None:
        """Poll the running runs; redraw the selected one when it has news."""
        any_running = False
        for run in self.runs.values():
            if run.status != "running":
                continue
            run.poll()
            if run.status == "running":
                any_running = True
            else:
                self._finished(run)
        if not any_running:
            self._timer.stop()
        run = self.current_run()
        if run is None:
            return
        self.progress.value = int(round(100 * run.fraction))
        line = f"{run.name}: {run.state_line()}"
        if run.message and run.status == "running":
            line += f" ({run.message})"
        line += self._notes.get(run.name, "")
        self.info.value = line
        self.cancel_button.enabled = run.status == "running" and not run.cancel_requested
        self.use_button.enabled = run.checkpoint is not None and run.status in ("done", "cancelled")
        self.plots.show(run, self.margins_by_run.get(run.name))

    def _finished(self, run) -> None:
        if run.status in ("error", "failed"):
            show_error(CryoGuardError(f"training run {run.name} failed: {run.message}"))
            return
        if run.checkpoint is not None and run.checkpoint.is_file():
            state_for(self._viewer).add_model(run.checkpoint)
            if run.status == "done" and run.defense == "ima":
                self.show_margins(run)

    def cancel(self) -> None:
        """Cancel the selected run cleanly (within one step)."""
        run = self.current_run()
        if run is not None:
            run.cancel()
            self.refresh()

    def use_model(self) -> None:
        """Select the run's checkpoint in every model picker of the viewer (also later ones)."""
        run = self.current_run()
        if run is None or run.checkpoint is None:
            return
        spec = state_for(self._viewer).select_model(run.checkpoint)
        p = Path(spec)
        self.info.value = (f"{run.name}: {run.state_line()}<br>model {p.parent.name}/{p.name} "
                           "selected in Classify, Attack and Evaluate (also those opened later)")

    # ------------------------------------------------------------------ margins
    def show_margins(self, run) -> None:
        """Read a run's IMA margins in a worker; then the ``margins`` layer and histogram."""
        start_worker(self, margins_job, run.checkpoint, run.data_path,
                     on_return=lambda found: self._apply_margins(run, found))

    def _apply_margins(self, run, found) -> None:
        if found is None:
            return
        # plot, layer and picks' feature one per event-loop turn (each ~30-80 ms)
        apply_stepwise(self, self._margin_steps(run, found))

    def _margin_steps(self, run, found):
        margins, where = found
        self.margins_by_run[run.name] = margins
        self.last_margins = margins
        if self.current_run() is run:
            self.plots.show(run, margins)
        if where is None:
            self.info.value += "<br>margins: histogram only (the samples have no positions)"
            return
        yield
        coords, scale, pick_index = where
        hi = float(margins.max()) or 1.0
        size = 4 + 16 * margins / hi
        layers = self._viewer.layers
        if MARGINS_LAYER in layers and layers[MARGINS_LAYER].ndim == 3:
            layer = layers[MARGINS_LAYER]  # updated in place, not removed and re-added
            layer.data = coords
            if not np.allclose(layer.scale[-3:], scale):
                layer.scale = scale
            layer.features = {"margin": margins}
            layer.size = size
            layer.face_color = "margin"
        else:
            if MARGINS_LAYER in layers:
                layers.remove(MARGINS_LAYER)
            self._viewer.add_points(coords, name=MARGINS_LAYER, scale=scale, size=size,
                                    features={"margin": margins}, face_color="margin",
                                    face_colormap="viridis", projection_mode="all")
        yield
        if pick_index is not None and PICKS_LAYER in layers:
            picks = layers[PICKS_LAYER]
            picks.features = margin_features(picks.features, len(picks.data), pick_index, margins)

    def export_margins(self) -> None:
        """Write the picks (with their ``margin`` column) to a STAR file."""
        from magicgui.widgets import request_values

        if PICKS_LAYER not in self._viewer.layers or "margin" not in self._viewer.layers[PICKS_LAYER].features:
            show_error(CryoGuardError("no margins on the picks yet: train on the subtomograms "
                                      "layer with the 'ima' defense first"))
            return
        values = request_values(path={"annotation": Path, "options": {"mode": "w", "filter": "*.star"}})
        if values:
            self.write_margins(values["path"])

    def write_margins(self, path) -> Path:
        """The picks with their margins as RELION STAR (``margin`` column)."""
        from napari_cryoguard._napari._writer import points_to_picks
        from napari_cryoguard.io import write_picks

        layer = self._viewer.layers[PICKS_LAYER]
        picks = points_to_picks(layer.data, {"features": layer.features, "metadata": layer.metadata,
                                             "scale": layer.scale})
        return write_picks(Path(path), picks)
