"""The "Evaluate" dock widget: a robustness evaluation of the loaded models, in the background.

It runs :func:`napari_cryoguard.evaluate.evaluate` in a worker thread on the current
``subtomograms`` (labelled by the picks' ``true_class``, else ``class``, feature), for
the models listed (bundled or checkpoint files), with the quick or the full attack suite.
Progress arrives through the evaluation's callback; Cancel stops it after the current
cell (finished cells are kept in the output folder and reused by the next run). When it
is done the widget shows the accuracy-vs-eps plot and a table, the report's path, and
writes per-pick results to ``picks``: ``eval_correct`` (clean prediction right) for the
first model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    Label,
    ProgressBar,
    PushButton,
    Table,
)

from napari_cryoguard._napari._common import (
    PICKS_LAYER,
    SUBTOMOGRAMS_LAYER,
    ModelPicker,
    show_error,
    start_worker,
)

if TYPE_CHECKING:
    import napari


class _Cancelled(Exception):
    """Raised from the progress callback to stop an evaluation."""


def labelled_subtomograms(viewer):
    """The ``subtomograms`` layer as a labelled dataset, and the pick index of each row."""
    from napari_cryoguard.data import SubtomogramDataset

    if SUBTOMOGRAMS_LAYER not in viewer.layers or PICKS_LAYER not in viewer.layers:
        raise ValueError("evaluation needs a 'subtomograms' layer and the 'picks' it came from")
    sub = viewer.layers[SUBTOMOGRAMS_LAYER]
    feats = viewer.layers[PICKS_LAYER].features
    col = "true_class" if "true_class" in feats.columns else "class"
    if col not in feats.columns:
        raise ValueError("the picks need a 'true_class' (or 'class') feature to evaluate against")
    index = np.asarray(sub.metadata.get("index", np.arange(len(sub.data))))
    names = [str(c) for c in np.asarray(feats[col])[index]]
    keep = np.array([bool(c) for c in names])
    if keep.sum() < 2:
        raise ValueError("fewer than two labelled subtomograms to evaluate on")
    class_names = sorted({c for c in names if c})
    labels = np.array([class_names.index(c) for c, k in zip(names, keep, strict=True) if k])
    ds = SubtomogramDataset(volumes=np.asarray(sub.data, dtype=np.float32)[keep], labels=labels,
                            class_names=class_names,
                            normalized=bool(sub.metadata.get("normalized", False)),
                            voxel_size=float(sub.metadata.get("voxel_size", 1.0)))
    return ds, index[keep]


class EvaluateWidget(Container):
    """Accuracy under attack vs budget for the listed models, on the current subtomograms."""

    def __init__(self, viewer: napari.viewer.Viewer, out_dir: str | Path | None = None) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._worker = None
        self.out_dir = out_dir
        self.models: list[str] = []
        self.picker = ModelPicker()
        self.add_button = PushButton(text="Add model")
        self.clear_button = PushButton(text="Clear models")
        self.model_list = Label(value="models: (none)")
        self.quick = CheckBox(value=True, text="quick suite (few samples and steps)")
        self.device = ComboBox(choices=["auto", "cpu", "cuda", "mps"], value="auto", label="device")
        self.run_button = PushButton(text="Evaluate")
        self.cancel_button = PushButton(text="Cancel")
        self.cancel_button.enabled = False
        self.progress = ProgressBar(value=0, min=0, max=100, label="progress")
        self.status = Label(value="")
        self.table = Table(value={"model": [], "attack": [], "budget": [], "accuracy": []})
        self.extend([*self.picker.widgets, self.add_button, self.clear_button, self.model_list,
                     self.quick, self.device, self.run_button, self.cancel_button, self.progress,
                     self.status, self.table])
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 2.4), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(200)
        self.native.layout().addWidget(self.canvas)
        self._latest: dict = {}
        from napari_cryoguard._napari._common import MODEL_CONSUMERS

        MODEL_CONSUMERS.add(self)
        self._cancel = False
        self.add_button.changed.connect(self.add_model)
        self.clear_button.changed.connect(self.clear_models)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        from qtpy.QtCore import QTimer

        self._timer = QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._poll)
        self.native.destroyed.connect(self._timer.stop)

    # ------------------------------------------------------------------ models
    def add_model(self, *_) -> None:
        spec = self.picker.spec()
        if spec and spec not in self.models:
            self.models.append(spec)
        self.model_list.value = "models: " + ", ".join(Path(m).name for m in self.models)

    def clear_models(self, *_) -> None:
        self.models = []
        self.model_list.value = "models: (none)"

    def set_checkpoint(self, path) -> None:
        """Add a checkpoint (the Train widget's "use this model")."""
        self.picker.set_checkpoint(path)
        self.add_model()

    # ------------------------------------------------------------------ run
    def show_failure(self, exc: BaseException) -> None:
        self.status.value = f"error: {exc}"
        self.progress.value = 0
        show_error(exc)

    def _progress(self, event: dict) -> None:  # called in the worker thread
        self._latest = dict(event)
        if self._cancel:
            raise _Cancelled("cancelled")

    def _poll(self) -> None:
        ev = self._latest
        if ev.get("total"):
            self.progress.value = int(100 * ev["done"] / ev["total"])
            self.status.value = f"{ev.get('model')}: {ev.get('cell')} ({ev['done']}/{ev['total']})"

    def run(self, *_) -> None:
        """Start the evaluation in a worker thread."""
        from napari_cryoguard.evaluate import evaluate
        from napari_cryoguard.runs import default_runs_dir

        try:
            if not self.models:
                self.add_model()
            if not self.models:
                raise ValueError("add at least one model")
            ds, index = labelled_subtomograms(self._viewer)
        except Exception as exc:
            self.show_failure(exc)
            return
        base = Path(self.out_dir) if self.out_dir is not None else default_runs_dir()
        out = base / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
        self._cancel = False
        self._latest = {}
        self.cancel_button.enabled = True
        self._timer.start()
        self.status.value = f"evaluating {len(self.models)} model(s) on {len(ds)} subtomograms..."

        def job():
            try:
                return evaluate(list(self.models), ds, out=out, device=self.device.value,
                                quick=bool(self.quick.value), progress=self._progress)
            except _Cancelled:
                return None

        worker = start_worker(self, job, on_return=lambda m: self._on_done(m, index, out),
                              buttons=(self.run_button,))
        worker.finished.connect(self._stopped)

    def _stopped(self) -> None:
        self._timer.stop()
        self.cancel_button.enabled = False

    def cancel(self, *_) -> None:
        """Stop after the current cell (finished cells stay in the output folder)."""
        self._cancel = True
        self.status.value = "cancelling..."

    def _on_done(self, metrics, index, out: Path) -> None:
        if metrics is None:
            self.progress.value = 0
            self.status.value = f"cancelled; finished cells kept in {out}"
            return
        self.progress.value = 100
        self.metrics = metrics
        rows = self._rows(metrics)
        self.table.value = {"model": [r[0] for r in rows], "attack": [r[1] for r in rows],
                            "budget": [r[2] for r in rows], "accuracy": [f"{r[3]:.3f}" for r in rows]}
        self._plot(rows)
        self._pick_features(metrics, index)
        self.status.value = f"verdict: {metrics.get('verdict')}; report: {out / 'report.html'}"

    @staticmethod
    def _rows(metrics: dict) -> list[tuple]:
        """(model, attack, budget, robust accuracy) for every bounded attack point."""
        rows = []
        for model, m in (metrics.get("models") or {}).items():
            for attack, a in (m.get("attacks") or {}).items():
                for p in a.get("points", []):
                    acc = p.get("robust_accuracy")
                    if isinstance(acc, (int, float)):
                        rows.append((model, attack, p.get("budget"), float(acc)))
        return rows

    def _plot(self, rows) -> None:
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        series: dict = {}
        for model, attack, budget, acc in rows:
            if isinstance(budget, (int, float)):
                series.setdefault((model, attack), []).append((budget, acc))
        for (model, attack), pts in series.items():
            pts.sort()
            ax.plot([b for b, _ in pts], [a for _, a in pts], marker="o",
                    label=f"{Path(str(model)).stem} {attack}")
        ax.set_xlabel("eps (normalised units)", fontsize=8)
        ax.set_ylabel("accuracy under attack", fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
        if series:
            ax.legend(fontsize=6)
        self.canvas.draw_idle()

    def _pick_features(self, metrics: dict, index: np.ndarray) -> None:
        """Per-pick results of the first model: ``eval_correct`` and ``robust_<attack>``
        (at the largest budget of each bounded attack); NaN for picks not evaluated."""
        models = metrics.get("models") or {}
        if not models or PICKS_LAYER not in self._viewer.layers:
            return
        first = next(iter(models.values()))
        rows = np.asarray(first.get("sample_index", []), dtype=np.int64)
        if rows.size == 0:
            return
        layer = self._viewer.layers[PICKS_LAYER]
        feats = layer.features.copy()
        picks_rows = index[rows]

        def column(values) -> np.ndarray:
            col = np.full(len(layer.data), np.nan)
            col[picks_rows] = np.asarray(values, dtype=float)
            return col

        feats["eval_correct"] = column(first.get("clean_correct_by_sample", []))
        for label, curve in (first.get("attacks") or {}).items():
            points = [p for p in curve.get("points", []) if "robust_by_sample" in p]
            if curve.get("mode") == "bounded" and points:
                feats[f"robust_{label}"] = column(points[-1]["robust_by_sample"])
        layer.features = feats
