"""The "Train" dock widget: robust training in a background process, followed live.

Start launches ``cryoguard train`` as a separate process (:class:`~napari_cryoguard.runs.TrainRun`);
a Qt timer reads its JSON-lines events to drive the progress bar, the ETA and live
plots of loss, clean accuracy and robust accuracy per epoch. Cancel stops it cleanly
(the trainer finishes the step and writes a checkpoint). Several runs are listed; a
finished run's checkpoint loads into the Classify and Attack widgets with one click.
After an ``ima`` run the per-sample margins become the ``margins`` Points layer (size
and colour by margin; at the picks' positions when the data came from them) with a
histogram here, and "Export margins" writes the picks with a ``margin`` column.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)

from napari_cryoguard._napari._common import (
    MODEL_CONSUMERS,
    PICKS_LAYER,
    SUBTOMOGRAMS_LAYER,
    show_error,
)
from napari_cryoguard._napari._forms import DataclassForm

if TYPE_CHECKING:
    import napari

MARGINS_LAYER = "margins"
SOURCES = ("simulated dataset", "subtomograms layer", "dataset file")

def _model_names(widget=None) -> list[str]:
    from napari_cryoguard.models import available_models

    return available_models()


def _defense_names(widget=None) -> list[str]:
    from napari_cryoguard.defenses import available_defenses

    return available_defenses()


class _Plots:
    """Two small matplotlib axes (loss; clean and robust accuracy) inside a Qt canvas."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 3.6), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(260)
        self.ax_loss = self.figure.add_subplot(211)
        self.ax_acc = self.figure.add_subplot(212)

    def draw_run(self, run) -> None:
        self.ax_loss.clear()
        self.ax_acc.clear()
        for key, style in (("train_loss", "-"), ("val_loss", "--")):
            x, y = run.series(key)
            if x:
                self.ax_loss.plot(x, y, style, marker=".", label=key.replace("_", " "))
        for key, style in (("train_acc", "-"), ("val_acc", "--"), ("robust_acc", ":")):
            x, y = run.series(key)
            if x:
                self.ax_acc.plot(x, y, style, marker="o", label=key.replace("_", " "))
        self.ax_loss.set_ylabel("loss", fontsize=8)
        self.ax_acc.set_ylabel("accuracy", fontsize=8)
        self.ax_acc.set_xlabel("epoch", fontsize=8)
        self.ax_acc.set_ylim(0, 1.02)
        for ax in (self.ax_loss, self.ax_acc):
            ax.tick_params(labelsize=7)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        self.canvas.draw_idle()

    def draw_histogram(self, margins: np.ndarray) -> None:
        self.ax_acc.clear()
        self.ax_acc.hist(margins, bins=20, color="tab:purple")
        self.ax_acc.set_xlabel("IMA margin (normalised units)", fontsize=8)
        self.ax_acc.set_ylabel("samples", fontsize=8)
        self.ax_acc.tick_params(labelsize=7)
        self.canvas.draw_idle()


class TrainWidget(Container):
    """Train a classifier with a defense in a background ``cryoguard train`` process."""

    def __init__(self, viewer: napari.viewer.Viewer, runs_dir: str | Path | None = None) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self.runs_dir = runs_dir
        self.runs: dict[str, object] = {}
        self.source = ComboBox(choices=SOURCES, value=SOURCES[0], label="data")
        self.per_class = SpinBox(value=50, min=2, max=100_000, label="per class")
        self.snr = FloatSpinBox(value=0.1, min=0.001, max=100.0, step=0.01, label="SNR")
        self.tilt = FloatSpinBox(value=60.0, min=1.0, max=90.0, step=5.0, label="tilt +-")
        self.cube = SpinBox(value=28, min=16, max=128, label="cube")
        self.dataset = FileEdit(mode="r", filter="*.npz", label="dataset")
        self.model = ComboBox(choices=_model_names, value="cb3d", label="model")
        self.model_form = DataclassForm()
        self.defense = ComboBox(choices=_defense_names, value="standard", label="defense")
        self.defense_form = DataclassForm()
        self.epochs = SpinBox(value=10, min=1, max=100_000, label="epochs")
        self.batch_size = SpinBox(value=16, min=1, max=4096, label="batch size")
        self.optimizer = ComboBox(choices=["adam", "sgd"], value="adam", label="optimizer")
        self.robust_every = SpinBox(value=0, min=0, max=1000, label="robust every",
                                    tooltip="robust validation accuracy (PGD) every n epochs; 0 = off")
        self.device = ComboBox(choices=["auto", "cpu", "cuda", "mps"], value="auto", label="device")
        self.start_button = PushButton(text="Start training")
        self.run_list = ComboBox(choices=[], label="runs")
        self.progress = ProgressBar(value=0, min=0, max=100, label="progress")
        self.info = Label(value="")
        self.cancel_button = PushButton(text="Cancel run")
        self.use_button = PushButton(text="Use model in Classify / Attack")
        self.export_button = PushButton(text="Export margins as STAR...")
        self.plots = _Plots()
        self.extend([self.source, self.per_class, self.snr, self.tilt, self.cube, self.dataset,
                     self.model, self.model_form, self.defense, self.defense_form, self.epochs,
                     self.batch_size, self.optimizer, self.robust_every, self.device,
                     self.start_button, self.run_list, self.progress, self.info,
                     self.cancel_button, self.use_button, self.export_button])
        self.native.layout().addWidget(self.plots.canvas)
        self._set_forms()
        self._source_changed()
        self.source.changed.connect(self._source_changed)
        self.model.changed.connect(self._set_forms)
        self.defense.changed.connect(self._set_forms)
        self.start_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.use_button.changed.connect(self.use_model)
        self.export_button.changed.connect(self.export_margins)
        self.run_list.changed.connect(lambda *_: self.refresh())
        from qtpy.QtCore import QTimer

        self._timer = QTimer()
        self._timer.setInterval(300)
        self._timer.timeout.connect(self.refresh)
        self.native.destroyed.connect(self._timer.stop)

    # ------------------------------------------------------------------ forms
    def _set_forms(self, *_) -> None:
        from napari_cryoguard.defenses import defense_params_class
        from napari_cryoguard.models import model_params_class

        self.model_form.set_params_cls(model_params_class(self.model.value))
        self.defense_form.set_params_cls(defense_params_class(self.defense.value))

    def _source_changed(self, *_) -> None:
        sim = self.source.value == SOURCES[0]
        for w in (self.per_class, self.snr, self.tilt, self.cube):
            w.visible = sim
        self.dataset.visible = self.source.value == SOURCES[2]

    def _changed_params(self, form: DataclassForm) -> dict:
        """Only the fields that differ from the dataclass defaults (a shorter command)."""
        import dataclasses

        defaults = {f.name: f.default for f in dataclasses.fields(form.params_cls)}
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

    # ------------------------------------------------------------------ data
    def _dataset_from_layers(self, folder: Path) -> Path:
        """Write the ``subtomograms`` layer, labelled by the picks' ``class``, as a dataset."""
        from napari_cryoguard.data import SubtomogramDataset, save_dataset

        if SUBTOMOGRAMS_LAYER not in self._viewer.layers or PICKS_LAYER not in self._viewer.layers:
            raise ValueError("training on the subtomograms layer needs 'subtomograms' and 'picks'")
        sub = self._viewer.layers[SUBTOMOGRAMS_LAYER]
        picks = self._viewer.layers[PICKS_LAYER]
        index = np.asarray(sub.metadata.get("index", np.arange(len(sub.data))))
        feats = picks.features
        col = "true_class" if "true_class" in feats.columns else "class"
        if col not in feats.columns:
            raise ValueError("the picks have no 'class' feature to train on (classify or label them)")
        names = [str(c) for c in np.asarray(feats[col])[index]]
        class_names = sorted({c for c in names if c})
        labels = np.array([class_names.index(c) if c else -1 for c in names])
        if len(class_names) < 2:
            raise ValueError("training needs at least two classes among the picks")
        ds = SubtomogramDataset(
            volumes=np.asarray(sub.data, dtype=np.float32), labels=labels, class_names=class_names,
            coords=np.asarray(picks.data)[index, -3:],
            voxel_size=float(sub.metadata.get("voxel_size", 1.0)),
            normalized=bool(sub.metadata.get("normalized", False)),
            meta={"source": "napari subtomograms layer", "pick_index": index.tolist()})
        return save_dataset(folder / "data.npz", ds)

    # ------------------------------------------------------------------ runs
    def start(self) -> None:
        """Create a run folder, build the command and launch it."""
        from napari_cryoguard.runs import TrainRun

        try:
            settings = dict(model=self.model.value, defense=self.defense.value,
                            model_params=self._changed_params(self.model_form),
                            defense_params=self._changed_params(self.defense_form),
                            epochs=int(self.epochs.value), batch_size=int(self.batch_size.value),
                            optimizer=self.optimizer.value, device=self.device.value,
                            robust_every=int(self.robust_every.value))
            if self.source.value == SOURCES[0]:
                settings["simulate"] = {"n_per_class": int(self.per_class.value),
                                        "snr": float(self.snr.value),
                                        "tilt": float(self.tilt.value), "cube": int(self.cube.value)}
                run = TrainRun.create(self.runs_dir, label=f"{self.model.value}-{self.defense.value}",
                                      **settings)
            else:
                run = TrainRun.create(self.runs_dir, label=f"{self.model.value}-{self.defense.value}",
                                      data="pending", **settings)
                data = (self._dataset_from_layers(run.folder) if self.source.value == SOURCES[1]
                        else Path(self.dataset.value))
                if not data.is_file():
                    raise ValueError(f"no dataset file at {data}")
                run.argv[run.argv.index("--data") + 1] = str(data)
            run.start()
        except Exception as exc:
            show_error(exc)
            self.info.value = f"error: {exc}"
            return
        self.runs[run.name] = run
        self.run_list.choices = list(self.runs)
        self.run_list.value = run.name
        self._timer.start()
        self.refresh()

    def current_run(self):
        return self.runs.get(self.run_list.value) if self.run_list.value else None

    def refresh(self) -> None:
        """Poll every running run; redraw the selected one."""
        any_running = False
        for run in self.runs.values():
            before = run.status
            run.poll()
            any_running |= run.status == "running"
            if before == "running" and run.status != "running":
                self._finished(run)
        if not any_running:
            self._timer.stop()
        run = self.current_run()
        if run is None:
            return
        self.progress.value = int(100 * run.fraction)
        eta = f", ETA {run.eta_seconds:.0f} s" if run.eta_seconds else ""
        last = run.history[-1] if run.history else {}
        acc = f", val acc {last['val_acc']:.3f}" if isinstance(last.get("val_acc"), float) else ""
        self.info.value = (f"{run.name}: {run.status}, epoch {run.epoch}/{run.epochs}{acc}{eta}"
                           + (f"<br>{run.message}" if run.message else ""))
        self.cancel_button.enabled = run.status == "running"
        self.use_button.enabled = run.checkpoint is not None and run.status in ("done", "cancelled")
        self.plots.draw_run(run)

    def _finished(self, run) -> None:
        if run.status in ("error", "failed"):
            show_error(RuntimeError(f"training run {run.name} failed: {run.message}"))
            return
        if run.checkpoint is not None and run.status == "done":
            self.show_margins(run)

    def cancel(self) -> None:
        """Cancel the selected run cleanly."""
        run = self.current_run()
        if run is not None:
            run.cancel()
            self.refresh()

    def use_model(self) -> None:
        """Load the selected run's checkpoint into every Classify and Attack widget."""
        run = self.current_run()
        if run is None or run.checkpoint is None:
            return
        n = 0
        for w in list(MODEL_CONSUMERS):
            if getattr(w, "_viewer", None) is self._viewer:
                w.set_checkpoint(run.checkpoint)
                n += 1
        self.info.value = f"{run.checkpoint.name} selected in {n} widget(s)"

    # ------------------------------------------------------------------ margins
    def run_margins(self, run) -> tuple[np.ndarray, dict] | None:
        """The IMA margins saved in a run's checkpoint, with its metadata (or None)."""
        from napari_cryoguard.models import load_checkpoint

        _, meta = load_checkpoint(run.checkpoint)
        extra = meta.get("extra_tensors") or {}
        key = next((k for k in extra if k.endswith("margins")), None)
        if key is None:
            return None
        return np.asarray(extra[key], dtype=np.float32).reshape(-1), meta

    def show_margins(self, run) -> None:
        """After an IMA run: the ``margins`` layer and the histogram."""
        try:
            found = self.run_margins(run)
        except Exception as exc:  # a broken checkpoint must not take napari down
            show_error(exc)
            return
        if found is None:
            return
        margins, meta = found
        self.plots.draw_histogram(margins)
        self.last_margins = margins
        data = self._margin_positions(run, len(margins))
        if data is None:
            self.info.value += "<br>margins: histogram only (the samples have no positions)"
            return
        coords, scale, pick_index = data
        if MARGINS_LAYER in self._viewer.layers:
            self._viewer.layers.remove(MARGINS_LAYER)
        hi = float(margins.max()) or 1.0
        self._viewer.add_points(coords, name=MARGINS_LAYER, scale=scale,
                                size=4 + 16 * margins / hi, features={"margin": margins},
                                face_color="margin", face_colormap="viridis",
                                projection_mode="all")
        if pick_index is not None and PICKS_LAYER in self._viewer.layers:
            picks = self._viewer.layers[PICKS_LAYER]
            feats = picks.features.copy()
            col = np.full(len(picks.data), np.nan)
            col[pick_index] = margins
            feats["margin"] = col
            picks.features = feats

    def _margin_positions(self, run, n: int):
        from napari_cryoguard.data import load_dataset

        data_arg = run.argv[run.argv.index("--data") + 1] if "--data" in run.argv else None
        if data_arg is None:
            return None
        ds = load_dataset(data_arg)
        if ds.coords is None or len(ds.coords) != n:
            return None
        scale = (ds.voxel_size,) * 3
        pick_index = ds.meta.get("pick_index")
        return ds.coords, scale, None if pick_index is None else np.asarray(pick_index)

    def export_margins(self) -> None:
        """Write the picks (with their ``margin`` column) to a STAR file."""
        from magicgui.widgets import request_values

        if PICKS_LAYER not in self._viewer.layers or "margin" not in self._viewer.layers[PICKS_LAYER].features:
            show_error(ValueError("no margins on the picks yet: train with the 'ima' defense first"))
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
