"""The "Attack" dock widget: attack one particle live, or all picks in the background.

One particle: the chosen attack (its form is generated from the attack's parameter
dataclass) runs on pick ``i`` in a worker thread; the result becomes the layers
``particle <i>``, ``adversarial <i>`` and ``perturbation <i> x<k>`` (diverging colormap,
symmetric contrast limits, k = 50 by default as in the RAT paper's Fig. 1) and, for a
model with an autoencoder branch, ``reconstruction <i>`` and
``adversarial reconstruction <i>``. Layers of the same particle are replaced, not piled
up. The widget shows the prediction and class probabilities before and after, the
perturbation's L-inf and L2 norms and the number of steps.

"Attack all picks" runs :func:`napari_cryoguard.attacks.iter_attack_dataset` with a
progress bar and a Cancel button, and writes per-pick outcome features (``flipped``,
``adv_class``, ``adv_norm``) to ``picks`` that colour the points (red: flipped, green:
held). A cancelled run writes nothing, so the layers stay as they were.

The widget only wires controls: the jobs are
:func:`napari_cryoguard.interactive.attack_one_job` and
:func:`~napari_cryoguard.interactive.attack_picks_job`, the picks' new features
:func:`napari_cryoguard.layerdata.attack_outcome_update`.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, ProgressBar, PushButton, SpinBox, create_widget

from napari_cryoguard._napari._forms import DataclassForm
from napari_cryoguard._napari._labels import LabelsChoice
from napari_cryoguard._napari._layers import PICKS_LAYER, apply_stepwise
from napari_cryoguard._napari._layout import DockWidget, Group, status_label
from napari_cryoguard._napari._models import (
    ModelPicker,
    device_combo,
    torch_ready,
    when_torch_ready,
)
from napari_cryoguard._napari._particles import iter_particle_layers
from napari_cryoguard._napari._picks import (
    PickIndex,
    pick_particle,
    tomogram_picks,
    update_layer,
)
from napari_cryoguard._napari._warmup import schedule_warm_up
from napari_cryoguard._napari._workers import show_error, start_worker
from napari_cryoguard.interactive import attack_one_job, attack_picks_job, summary_line
from napari_cryoguard.layerdata import FLIPPED_RGBA, HELD_RGBA, attack_outcome_update

if TYPE_CHECKING:
    import napari

__all__ = ["FLIPPED_RGBA", "HELD_RGBA", "AttackWidget"]


DEFAULT_ATTACK = "fgsm"


def _attack_choices(widget=None) -> list[str]:
    if not torch_ready():  # the full list once torch is imported (off the Qt thread)
        return [DEFAULT_ATTACK]
    from napari_cryoguard.attacks import available_attacks

    return available_attacks()


class AttackWidget(DockWidget):
    """Attack the classifier on picked particles and look at what the attack did."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)

    def _build(self) -> None:
        viewer = self._viewer
        self.last = None  # the last single-particle result (dict)
        self.picker = ModelPicker(viewer)
        self.image = create_widget(annotation="napari.layers.Image", label="tomogram")
        self.attack = ComboBox(choices=_attack_choices, value=DEFAULT_ATTACK, label="attack")
        self.form = DataclassForm()
        self.form_group = Group("attack parameters", [self.form], expanded=True)
        self.pick = PickIndex(viewer, tooltip="the pick to attack; clicking a point of 'picks' "
                                              "selects it")
        self.index = self.pick.spin
        self.magnify = SpinBox(value=50, min=1, max=100_000, label="magnify x",
                               tooltip="the perturbation layer shows (adversarial - particle) x this")
        self.device = device_combo()
        self.batch_size = SpinBox(value=16, min=1, max=4096, label="batch size",
                                  tooltip="picks per batch in 'Attack all' (Cancel acts between batches)")
        self.more = Group("options", [self.magnify, self.device, self.batch_size])
        self.labels = LabelsChoice(viewer)
        self.run_button = PushButton(text="Attack particle")
        self.result = status_label()
        self.all_button = PushButton(text="Attack all picks")
        self.cancel_button = PushButton(text="Cancel")
        self.cancel_button.enabled = False
        self.progress = ProgressBar(value=0, min=0, max=100, label="progress")
        self.status = status_label()
        self.body.extend([*self.picker.widgets, self.image, self.attack, self.form_group,
                          self.index, self.labels.combo, self.more, self.run_button,
                          self.result, self.all_button, self.cancel_button, self.progress,
                          self.status])
        self.attack.changed.connect(self._set_form)
        when_torch_ready(self.native, self._torch_ready)  # the attack list and form
        self.run_button.changed.connect(self.run_one)
        self.all_button.changed.connect(self.run_all)
        self.cancel_button.changed.connect(self.cancel)
        schedule_warm_up(viewer)  # shaders and glyphs built at idle, not at the first result

    def set_checkpoint(self, path) -> None:
        """Select a checkpoint file (the Train widget's "use this model")."""
        self.picker.set_checkpoint(path)

    # ------------------------------------------------------------------ form
    def _set_form(self, *_) -> None:
        from napari_cryoguard.attacks import get_attack_params

        self.form.set_params_cls(get_attack_params(self.attack.value))
        self.form_group.title = f"{self.attack.value} parameters"
        self.form_group.set_expanded(self.form_group.expanded)

    def _torch_ready(self) -> None:
        self.attack.reset_choices()
        self._set_form()

    def attack_params(self) -> dict:
        """The attack's parameters from the form."""
        if self.form.params_cls is None:  # asked before the background import finished
            self._torch_ready()
        return self.form.values()

    def show_failure(self, exc: BaseException) -> None:
        """Show an error in the widget and as a napari notification."""
        self.status.value = f"error: {exc}"
        show_error(exc)

    # ------------------------------------------------------------------ one particle
    def run_one(self) -> None:
        """Attack pick ``index`` in a worker thread and show the layers beside it."""
        i = int(self.index.value)
        try:
            spec = self.picker.spec()
            source = pick_particle(self._viewer, i, self.image.value)
            params = self.attack_params()
            labels = self.labels.resolve()
            label_name = labels.names[i] if i < len(labels.names) and labels.names[i] else None
        except Exception as exc:
            self.show_failure(exc)
            return
        self.status.value = f"attacking particle {i} with {self.attack.value}..."
        model_name = self.picker.display_name
        start_worker(self, attack_one_job, partial(self.picker.load, spec), source, label_name,
                     self.attack.value, params, int(self.magnify.value),
                     on_return=lambda out: self._on_attacked(out, i, model_name, labels),
                     buttons=(self.run_button, self.all_button))

    def _on_attacked(self, out: dict, i: int, model_name: str = "", labels=None) -> None:
        self.last = out
        names = out["loaded"].class_names
        # the pick's coordinates are in the picks layer's data space: place the grid with it
        anchor = self._viewer.layers[PICKS_LAYER] if PICKS_LAYER in self._viewer.layers else None
        apply_stepwise(self, iter_particle_layers(
            self._viewer, out["layers"], image_layer=anchor or self.image.value,
            center=out["center"], styles=out["styles"], frames=f"particle {i} frames"))

        def probs(p):
            top = np.argsort(p)[::-1][:3]
            return ", ".join(f"{names[j]} {p[j]:.2f}" for j in top)

        verdict = "FLIPPED" if out["success"] else "held"
        note = " (zero gradient: the attack cannot move this sample)" if out["zero_grad"] else ""
        against = (f"true class {names[out['label']]} (from {labels.source})" if out["label_known"]
                   else "the model's own prediction (no label for this pick)")
        self.result.value = (
            f"<b>{verdict}</b>{note} &mdash; {model_name}, attacked against {against}<br>"
            f"before: {names[out['pred_before']]} ({probs(out['probs_before'])})<br>"
            f"after: {names[out['pred_after']]} ({probs(out['probs_after'])})<br>"
            f"L-inf {out['linf']:.4g}, L2 {out['l2']:.4g}, {out['steps']} step"
            + ("s" if out["steps"] != 1 else "")
        )
        self.status.value = (f"attacked particle {i} with {self.attack.value}; its layers are "
                             f"beside it" + out.get("domain", ""))

    # ------------------------------------------------------------------ all picks
    def run_all(self) -> None:
        """Attack every pick (extracted at the model's cube size) with progress and Cancel."""
        try:
            spec = self.picker.spec()
            picks = tomogram_picks(self._viewer, self.image.value, "attacking all picks")
            labels = self.labels.resolve()
            params = self.attack_params()
        except Exception as exc:
            self.show_failure(exc)
            return
        self.progress.value = 0
        self.status.value = f"attacking {len(picks['coords'])} picks..."
        self.cancel_button.enabled = True
        model_name = self.picker.display_name
        worker = start_worker(
            self, attack_picks_job, partial(self.picker.load, spec), self.image.value.data, picks,
            labels.names, self.attack.value, self.device.value, params, int(self.batch_size.value),
            on_yield=lambda p: setattr(self.progress, "value", int(100 * p[0] / max(p[1], 1))),
            on_return=lambda out: self._on_all(out[0], out[1], out[2], labels, out[3], model_name,
                                               out[4]),
            buttons=(self.run_button, self.all_button))
        worker.aborted.connect(self._on_cancelled)
        worker.finished.connect(lambda: setattr(self.cancel_button, "enabled", False))

    def cancel(self) -> None:
        """Ask the running "attack all" to stop after its current batch."""
        if self._worker is not None and self.cancel_button.enabled:
            self.status.value = "cancelling..."
            self._worker.quit()

    def _on_cancelled(self) -> None:
        self.progress.value = 0
        self.status.value = "cancelled: the picks' features are unchanged"

    def _on_all(self, res, index: np.ndarray, loaded, labels=None, true=None, model_name="",
                domain: str = "") -> None:
        layer = self._viewer.layers[PICKS_LAYER]
        update_layer(layer, attack_outcome_update(layer.features, len(layer.data), res, index,
                                                  loaded.class_names))
        self.progress.value = 100
        self.status.value = summary_line(res, index, labels, true, model_name) + domain

