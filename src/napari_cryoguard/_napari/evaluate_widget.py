"""The "Evaluate" dock widget: how robust are the chosen models, on the current subtomograms?

The user builds the list of models to compare (choose one in the model picker, press
*Add model*; the Train widget's "Use model" adds its checkpoint too) and chooses the
labels explicitly (a picks feature, the sample data's ``truth`` layer, ...; see
:mod:`._labels`). *Evaluate* runs :func:`napari_cryoguard.evaluate.evaluate` in a worker
thread -- building the labelled dataset from the ``subtomograms`` layer, loading the
models and attacking them -- with the papers' attacks or AutoAttack (per sample the worst
case over APGD-CE, APGD-T and Square; :func:`~napari_cryoguard.evaluate.suite.autoattack_suite`),
each quick or full. Progress arrives
through the evaluation's callback and is shown by a timer, only when it changed; Cancel
stops after the current cell (finished cells stay in the output folder and are reused
by the next run with the same data).

When it is done the widget draws, once, one panel per norm: accuracy under attack
against the budget in L-inf units and in L2 units (normalised, z-scored voxels), so that
neither axis squashes the other. The random-noise attacks (uniform noise amplitude,
fraction of voxels replaced by salt & pepper) have budgets in other units: they are in
the table, not in the panels. The result line names the models, the labels used, and --
when the labels are the model's own predictions -- says "agreement with the model's own
predictions" instead of "accuracy", without a sanity verdict. Per-pick results of the
first model go to ``picks``: ``eval_correct`` and ``robust_<attack>`` (at the largest
budget; :func:`napari_cryoguard.layerdata.evaluation_features`). The labelled dataset is
:func:`napari_cryoguard.layerdata.labelled_dataset`'s, as in the Train widget.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, ProgressBar, PushButton, Table

from napari_cryoguard._napari._labels import LabelsChoice, subtomogram_stack
from napari_cryoguard._napari._layers import PICKS_LAYER
from napari_cryoguard._napari._layout import (
    DockWidget,
    Group,
    button_row,
    plot_label,
    show_rgba,
    status_label,
)
from napari_cryoguard._napari._models import ModelPicker, device_combo, model_display_name
from napari_cryoguard._napari._workers import import_quietly, show_error, start_worker
from napari_cryoguard.layerdata import evaluation_features, labelled_dataset

if TYPE_CHECKING:
    import napari

#: the panels of the plot: (title, the curves' ``budget_unit``) -- see evaluate/suite.py
PANELS = (
    ("L-inf attacks", "eps (L-inf, normalised units)"),
    ("L2 attacks", "eps (L2, normalised units)"),
)
PLOT_HEIGHT = 300  # px: two stacked panels, within a 1280 x 800 window with the controls
#: the attack suites offered: (shown, name for ``evaluate(attacks=...)``)
SUITE_CHOICES = [("papers' attacks", "default"),
                 ("AutoAttack", "autoattack")]


class _Cancelled(Exception):
    """Raised from the progress callback to stop an evaluation."""


def _unique(names: list[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        name, k = n, 2
        while name in out:
            name, k = f"{n} ({k})", k + 1
        out.append(name)
    return out


class EvaluateWidget(DockWidget):
    """Accuracy under attack vs budget for the models the user added, on the subtomograms."""

    def __init__(self, viewer: napari.viewer.Viewer, out_dir: str | Path | None = None) -> None:
        super().__init__(viewer)
        self.out_dir = out_dir

    def _build(self) -> None:
        viewer = self._viewer
        self.models: list[str] = []
        self.metrics: dict | None = None
        self.last_labels = None
        self.picker = ModelPicker(viewer)
        self.add_button = PushButton(text="Add model")
        self.clear_button = PushButton(text="Clear")
        model_row = button_row(self.add_button, self.clear_button)
        self.model_list = status_label()
        self.model_list.label = "to evaluate"
        self.labels = LabelsChoice(viewer)
        self.suite = ComboBox(choices=SUITE_CHOICES, value="default", label="attacks",
                              tooltip="the papers' attacks (FGSM, PGD with CE and margin loss, "
                                      "DeepFool, CW, noise), or AutoAttack: per sample the "
                                      "worst case over APGD-CE, APGD-T and Square (L-inf)")
        self.quick = CheckBox(value=True, text="quick (32 samples, few steps)",
                              tooltip="off: the full suite (papers': FGSM, PGD-100 with CE and "
                                      "margin loss, DeepFool, CW, noise; AutoAttack: 100 APGD "
                                      "iterations, 9 targets, 5000 Square queries); takes "
                                      "much longer")
        self.device = device_combo()
        self.settings = Group("settings", [self.suite, self.quick, self.device])
        self.run_button = PushButton(text="Evaluate")
        self.cancel_button = PushButton(text="Cancel")
        self.cancel_button.enabled = False
        run_row = button_row(self.run_button, self.cancel_button)
        self.progress = ProgressBar(value=0, min=0, max=100, label="progress")
        self.status = status_label()
        self.table = Table(value={"model": [], "attack": [], "budget": [], "unit": [], "score": []})
        self.table.native.setMinimumHeight(120)
        self.table.native.setMaximumHeight(240)
        self.table_group = Group("results table (all attacks)", [self.table])
        self.body.extend([*self.picker.widgets, model_row, self.model_list, self.labels.combo,
                          self.settings, run_row, self.progress, self.status])

        # an Agg figure rendered in the worker (drawing two panels takes ~100 ms, too long
        # for the Qt thread); the finished image is shown in a QLabel. The figure is made
        # there too, by the first render (matplotlib's import takes 0.3-0.5 s)
        self.figure = None
        self.canvas = plot_label(PLOT_HEIGHT)
        self.canvas.setVisible(False)  # shown with the first results
        self.add_native(self.canvas)
        self.body.append(self.table_group)

        self._cancel = False
        self._latest: dict = {}
        self._seen = 0
        self._events = 0
        self._show_models()
        self.add_button.changed.connect(self.add_model)
        self.clear_button.changed.connect(self.clear_models)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        # the Train widget's "Use model" selects a checkpoint everywhere: add it here too
        state = self.picker.state
        if state is not None:
            state.model_selected.connect(self._model_selected)
            if state.selected_model:
                self._add(state.selected_model)
        from qtpy.QtCore import QTimer

        self._timer = QTimer()
        self._timer.setInterval(250)
        self._timer.timeout.connect(self._poll)
        self.native.destroyed.connect(self._timer.stop)

    # ------------------------------------------------------------------ models
    def _add(self, spec: str) -> None:
        spec = str(spec)
        if spec not in self.models:
            self.models.append(spec)
        self._show_models()

    def _show_models(self) -> None:
        if self.models:
            self.model_list.value = ", ".join(model_display_name(m) for m in self.models)
        else:
            self.model_list.value = "no model yet: choose one above and press 'Add model'"

    def _model_selected(self, spec: str) -> None:
        self._add(spec)

    def add_model(self, *_) -> None:
        """Add the model shown in the picker to the list to evaluate."""
        try:
            self._add(self.picker.spec())
        except Exception as exc:  # noqa: BLE001 - CryoGuardError: an empty checkpoint field
            self.show_failure(exc)

    def clear_models(self, *_) -> None:
        self.models = []
        self._show_models()

    def set_checkpoint(self, path) -> None:
        """Select a checkpoint in the picker and add it to the list."""
        self.picker.set_checkpoint(path)
        self._add(str(path))

    # ------------------------------------------------------------------ run
    def show_failure(self, exc: BaseException) -> None:
        self.status.value = f"error: {exc}"
        self.progress.value = 0
        show_error(exc)

    def _progress(self, event: dict) -> None:  # called in the worker thread
        self._latest = dict(event)
        self._events += 1
        if self._cancel:
            raise _Cancelled("cancelled")

    def _poll(self) -> None:
        if self._events == self._seen:
            return  # nothing new: leave the widgets alone
        self._seen = self._events
        ev = self._latest
        if ev.get("total"):
            self.progress.value = int(100 * ev["done"] / ev["total"])
            budget = f" at {ev['budget']:g}" if isinstance(ev.get("budget"), (int, float)) else ""
            self.status.value = (f"{ev.get('model')}: {ev.get('cell')}{budget} "
                                 f"({ev['done']}/{ev['total']} steps)")

    def run(self, *_) -> None:
        """Start the evaluation of the listed models in a worker thread."""
        from napari_cryoguard.errors import CryoGuardError
        from napari_cryoguard.runs import default_runs_dir

        try:
            if not self.models:
                raise CryoGuardError("add at least one model: choose it in 'model' and press "
                                     "'Add model'")
            labels = self.labels.resolve()
            stack = subtomogram_stack(self._viewer, "evaluation")
        except Exception as exc:  # noqa: BLE001 - shown as a notification
            self.show_failure(exc)
            return
        models = list(self.models)
        names = _unique([model_display_name(m) for m in models])
        base = Path(self.out_dir) if self.out_dir is not None else default_runs_dir()
        out = base / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
        self._cancel = False
        self._latest, self._events, self._seen = {}, 0, 0
        self.progress.value = 0
        self.cancel_button.enabled = True
        self.status.value = f"evaluating {', '.join(names)} ({labels.source})..."
        quick, device = bool(self.quick.value), str(self.device.value)
        suite = str(self.suite.value)
        # a hidden label keeps its default width (640 px), wider than the dock: then the
        # widget's own width is the one the plot will get
        width = self.canvas.width() if self.canvas.isVisible() else self.native.width() - 24
        width = width if width >= 200 else 340
        ratio = self.native.devicePixelRatioF()

        def job():
            import_quietly("napari_cryoguard.evaluate")
            from napari_cryoguard.evaluate import evaluate

            ds, index = labelled_dataset(**stack, labels=labels, min_classes=2,
                                         purpose="evaluation")
            try:
                metrics = evaluate(models, ds, out=out, device=device, quick=quick,
                                   attacks=suite, progress=self._progress, names=names)
            except _Cancelled:
                return None
            image = self._render(_plot_series(metrics), labels.score_word, width, ratio)
            return metrics, index, image

        worker = start_worker(self, job, on_return=lambda r: self._on_done(r, labels, out),
                              buttons=(self.run_button,))
        self._timer.start()
        worker.finished.connect(self._stopped)

    def _stopped(self) -> None:
        self._timer.stop()
        self.cancel_button.enabled = False

    def cancel(self, *_) -> None:
        """Stop after the current step (finished steps stay in the output folder)."""
        self._cancel = True
        self.status.value = "cancelling after the current step..."

    # ------------------------------------------------------------------ results
    def _on_done(self, result, labels, out: Path) -> None:
        if result is None:
            self.progress.value = 0
            self.status.value = f"cancelled; finished steps kept in {out}"
            return
        from qtpy.QtCore import QTimer

        metrics, index, image = result
        self.metrics = metrics
        self.last_labels = labels
        self.progress.value = 100
        self.status.value = result_text(metrics, labels, out)
        # one piece per event-loop turn, so napari keeps drawing in between
        steps = [lambda: self._show_image(image), lambda: self._fill_table(metrics),
                 lambda: self._pick_features(metrics, index)]
        self._applying = True

        def next_step():
            try:
                steps.pop(0)()
            finally:
                if steps:
                    QTimer.singleShot(0, next_step)
                else:
                    self._applying = False

        QTimer.singleShot(0, next_step)

    def _fill_table(self, metrics: dict) -> None:
        rows = _rows(metrics)
        self.table.value = {"model": [r[0] for r in rows], "attack": [r[1] for r in rows],
                            "budget": [f"{r[2]:g}" for r in rows], "unit": [r[3] for r in rows],
                            "score": [f"{r[4]:.3f}" for r in rows]}
        self.table.native.horizontalHeader().setStretchLastSection(True)

    def _show_image(self, image) -> None:
        show_rgba(self.canvas, *image)
        self.canvas.setVisible(True)

    def _render(self, series: dict, score_word: str, width: int, ratio: float):
        """Draw the panels (once per evaluation, in the worker): one per norm, budgets in
        their unit; returns the RGBA image and its device pixel ratio."""
        if self.figure is None:
            import_quietly("matplotlib.backends.backend_agg", "matplotlib.figure")
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure

            self.figure = Figure(figsize=(3.4, PLOT_HEIGHT / 100), dpi=100, layout="constrained")
            FigureCanvasAgg(self.figure)
        self.figure.set_dpi(100 * ratio)
        self.figure.set_size_inches(width / 100, PLOT_HEIGHT / 100)
        self.figure.clear()
        axes = self.figure.subplots(len(PANELS), 1)
        ylabel = "agreement" if score_word != "accuracy" else "accuracy"
        for ax, (title, unit) in zip(np.atleast_1d(axes), PANELS, strict=True):
            curves = series.get(unit, [])
            for label, xs, ys in curves:
                ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, label=label)
            ax.set_title(title, fontsize=8)
            ax.set_xlabel(unit, fontsize=7)
            ax.set_ylabel(f"{ylabel} under attack", fontsize=7)
            ax.set_ylim(-0.02, 1.02)
            ax.tick_params(labelsize=6)
            ax.grid(alpha=0.3)
            if curves:
                ax.legend(fontsize=5.5, loc="best")
            else:
                ax.text(0.5, 0.5, "no attack of this norm in the suite", ha="center",
                        va="center", fontsize=7, transform=ax.transAxes)
        self.figure.canvas.draw()
        return np.array(self.figure.canvas.buffer_rgba()), ratio

    def _pick_features(self, metrics: dict, index: np.ndarray) -> None:
        """Per-pick results of the first model: ``eval_correct`` and ``robust_<attack>``
        (at the largest budget of each bounded attack); NaN for picks not evaluated."""
        if PICKS_LAYER not in self._viewer.layers:
            return
        layer = self._viewer.layers[PICKS_LAYER]
        feats = evaluation_features(layer.features, len(layer.data), metrics, index)
        if feats is not None:
            layer.features = feats


# ---------------------------------------------------------------------- pure helpers
def _rows(metrics: dict) -> list[tuple]:
    """(model, attack, budget, unit, robust score) for every attack point."""
    rows = []
    for model, m in (metrics.get("models") or {}).items():
        for attack, a in (m.get("attacks") or {}).items():
            for p in a.get("points", []):
                acc = p.get("robust_accuracy")
                if isinstance(acc, (int, float)) and isinstance(p.get("budget"), (int, float)):
                    rows.append((model, attack, float(p["budget"]), a.get("budget_unit", ""),
                                 float(acc)))
    return rows


def _plot_series(metrics: dict) -> dict:
    """``{budget unit: [(legend label, budgets, scores), ...]}`` (prepared in the worker).

    A bounded curve starts at budget 0 with the clean score, as in the report's plots.
    """
    from napari_cryoguard.evaluate.run import curve_arrays

    models = metrics.get("models") or {}
    several = len(models) > 1
    out: dict = {}
    for model, m in models.items():
        clean = (m.get("clean") or {}).get("accuracy")
        for attack, curve in (m.get("attacks") or {}).items():
            xs, ys = curve_arrays(curve, clean)
            pts = sorted((float(x), float(y)) for x, y in zip(xs, ys, strict=True)
                         if isinstance(x, (int, float)) and isinstance(y, (int, float)))
            if pts:
                label = f"{model}: {attack}" if several else attack
                out.setdefault(curve.get("budget_unit", ""), []).append(
                    (label, [p[0] for p in pts], [p[1] for p in pts]))
    return out


def result_text(metrics: dict, labels, out: Path) -> str:
    """The result line: models, labels used, clean and worst score, verdict, report."""
    word = labels.score_word
    models = metrics.get("models") or {}
    n = max((int(m.get("n_evaluated", 0)) for m in models.values()), default=0)
    parts = [f"Evaluated {', '.join(models)} on {n} subtomograms; labels: {labels.source}."]
    for name, m in models.items():
        clean = (m.get("clean") or {}).get("accuracy")
        worst = None
        for attack, curve in (m.get("attacks") or {}).items():
            if curve.get("budget_unit") not in dict((u, t) for t, u in PANELS):
                continue
            for p in curve.get("points", []):
                acc = p.get("robust_accuracy")
                if isinstance(acc, (int, float)) and (worst is None or acc < worst[0]):
                    worst = (acc, attack, p.get("budget"), curve.get("budget_unit", ""))
        line = f"{name}: {word} {clean:.2f} clean" if isinstance(clean, (int, float)) else name
        if worst is not None:
            norm = "L2" if "L2" in worst[3] else "L-inf"
            line += f", lowest {worst[0]:.2f} under {worst[1]} (eps {worst[2]:g} {norm})"
        parts.append(line + ".")
        for warning in (metrics.get("warnings") or {}).get(name, []):
            parts.append(f"warning ({name}): {warning}.")
    if labels.predictions:
        parts.append("The labels came from a model, so these scores say how often the models "
                     "agree with it, not whether they are right: no sanity verdict (the "
                     "report's scores mean the same agreement).")
    else:
        parts.append(f"Sanity checks: {metrics.get('verdict')}.")
    parts.append(f"Report: {out / 'report.html'}")
    return "\n".join(parts)
