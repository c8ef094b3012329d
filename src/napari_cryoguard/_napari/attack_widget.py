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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    ComboBox,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)

from napari_cryoguard._napari._common import (
    PICKS_LAYER,
    ModelPicker,
    apply_stepwise,
    connect_pick_selection,
    iter_particle_layers,
    particle_source,
    schedule_warm_up,
    show_error,
    start_worker,
)
from napari_cryoguard._napari._forms import DataclassForm
from napari_cryoguard._napari._labels import LabelsChoice
from napari_cryoguard._napari._layout import DockWidget, Group, status_label
from napari_cryoguard._napari.classify_widget import domain_line
from napari_cryoguard.errors import CryoGuardError

if TYPE_CHECKING:
    import napari

FLIPPED_RGBA = (0.9, 0.15, 0.15, 1.0)
HELD_RGBA = (0.2, 0.8, 0.3, 1.0)


def _attack_choices(widget=None) -> list[str]:
    from napari_cryoguard.attacks import available_attacks

    return available_attacks()


def attack_one(loaded, volume: np.ndarray, label: int | None, name: str, params: dict) -> dict:
    """Attack one normalised cube; everything the widget shows, as numpy (Qt-free).

    ``label`` is the true class when known, else the model's prediction is attacked.
    """
    import torch

    from napari_cryoguard.attacks import run_attack

    model = loaded.model
    x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    if label is None or label < 0:
        with torch.inference_mode():
            label = int(model(x).argmax(1)[0])
    res = run_attack(name, model, x, torch.tensor([label]), **params)
    out = {
        "label": int(label),
        "x": volume,
        "x_adv": res.x_adv[0, 0].detach().cpu().numpy(),
        "perturbation": res.perturbation[0, 0].detach().cpu().numpy(),
        "pred_before": int(res.pred_before[0]),
        "pred_after": int(res.pred_after[0]),
        "probs_before": res.probs_before[0].detach().cpu().numpy(),
        "probs_after": res.probs_after[0].detach().cpu().numpy(),
        "success": bool(res.success[0]),
        "linf": float(res.norm_linf[0]),
        "l2": float(res.norm_l2[0]),
        "steps": int(res.steps),
        "zero_grad": bool(res.zero_grad[0]),
    }
    if loaded.has_decoder:
        with torch.inference_mode():
            out["reconstruction"] = model.reconstruct(x)[0, 0].cpu().numpy()
            out["adversarial reconstruction"] = model.reconstruct(res.x_adv)[0, 0].cpu().numpy()
    return out


def attack_all_job(loaded, volume, coords, true_labels, name: str, device: str, params: dict,
                   batch_size: int = 16, *, voxel_size: float | None = None,
                   notes: list[str] | None = None):
    """Extract every pick, attack them batch by batch; a generator for a worker thread.

    Picks with a known class (``true_labels >= 0``) are attacked against it, the others
    against the model's own prediction. With ``voxel_size`` (the tomogram's, Angstrom)
    the cubes are cut to cover the model's field of view and resampled to its voxel size
    when it differs (a sentence is appended to ``notes``). Yields ``(done, total)``;
    returns ``(AttackResult, pick indices)``.
    """
    from napari_cryoguard._napari.classify_widget import extraction_size
    from napari_cryoguard.attacks import iter_attack_dataset
    from napari_cryoguard.classify import prepare_volumes
    from napari_cryoguard.device import predict
    from napari_cryoguard.errors import CryoGuardError
    from napari_cryoguard.picking import extract_subtomograms

    sub = extract_subtomograms(volume, coords, size=extraction_size(loaded, voxel_size),
                               border="pad")
    if len(sub.volumes) == 0:
        raise CryoGuardError("no picks inside the tomogram to attack")
    volumes = prepare_volumes(loaded, sub.volumes, sub.normalized, voxel_size=voxel_size,
                              notes=notes)
    pred = predict(loaded.model, volumes, device=device).argmax(1)
    true = np.asarray(true_labels)[sub.index]
    labels = np.where(true >= 0, true, pred)
    res = yield from iter_attack_dataset(loaded.model, volumes, labels, name,
                                         batch_size=batch_size, device=device, **params)
    return res, np.asarray(sub.index)


def attack_one_job(picker, spec: str, source: dict, label_name: str | None, name: str,
                   params: dict, magnify: int) -> dict:
    """Worker job for one particle: load the model, cut its cube, attack, prepare layers."""
    loaded = picker.load(spec)
    from napari_cryoguard._napari.classify_widget import particle_for_model

    vol = particle_for_model(source, loaded)
    names = loaded.class_names
    label = names.index(label_name) if label_name in names else None
    out = attack_one(loaded, vol, label, name, params)
    out["loaded"] = loaded
    out["center"] = source["center"]
    out["label_known"] = label is not None
    pert = out["perturbation"] * magnify
    lim = float(np.abs(pert).max()) or 1.0
    lo, hi = float(np.min(vol)), float(np.max(vol))
    limits = (lo, hi) if hi > lo else (lo, lo + 1.0)
    i = source["index"]
    layers = {f"particle {i}": vol, f"adversarial {i}": out["x_adv"],
              f"perturbation {i} x{magnify}": pert}
    styles = {f"perturbation {i} x{magnify}": {"colormap": "PiYG", "contrast_limits": (-lim, lim)},
              f"particle {i}": {"contrast_limits": limits},
              f"adversarial {i}": {"contrast_limits": limits}}
    if "reconstruction" in out:
        for key in ("reconstruction", "adversarial reconstruction"):
            layers[f"{key} {i}"] = out[key]
            styles[f"{key} {i}"] = {"contrast_limits": limits}
    out["layers"], out["styles"] = layers, styles
    return out


class AttackWidget(DockWidget):
    """Attack the classifier on picked particles and look at what the attack did."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        self._worker = None
        self.last = None  # the last single-particle result (dict)
        self.picker = ModelPicker(viewer)
        self.image = create_widget(annotation="napari.layers.Image", label="tomogram")
        self.attack = ComboBox(choices=_attack_choices, value="fgsm", label="attack")
        self.form = DataclassForm()
        self.form_group = Group("attack parameters", [self.form], expanded=True)
        self.index = SpinBox(value=0, min=0, max=10**7, label="particle",
                             tooltip="the pick to attack; clicking a point of 'picks' selects it")
        self.magnify = SpinBox(value=50, min=1, max=100_000, label="magnify x",
                               tooltip="the perturbation layer shows (adversarial - particle) x this")
        self.device = ComboBox(choices=["auto", "cpu", "cuda", "mps"], value="auto", label="device")
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
        self._set_form()
        self.attack.changed.connect(self._set_form)
        self.run_button.changed.connect(self.run_one)
        self.all_button.changed.connect(self.run_all)
        self.cancel_button.changed.connect(self.cancel)
        connect_pick_selection(viewer, self._on_select)
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

    def attack_params(self) -> dict:
        """The attack's parameters from the form."""
        return self.form.values()

    def show_failure(self, exc: BaseException) -> None:
        """Show an error in the widget and as a napari notification."""
        self.status.value = f"error: {exc}"
        show_error(exc)

    # ------------------------------------------------------------------ selection
    def _on_select(self, index: int) -> None:
        self.index.value = int(index)

    # ------------------------------------------------------------------ one particle
    def run_one(self) -> None:
        """Attack pick ``index`` in a worker thread and show the layers beside it."""
        i = int(self.index.value)
        try:
            spec = self.picker.spec()
            source = particle_source(self._viewer, i, self.image.value)
            from napari_cryoguard._napari.classify_widget import particle_voxels

            source.update(particle_voxels(self._viewer, self.image.value))
            params = self.attack_params()
            labels = self.labels.resolve()
            label_name = labels.names[i] if i < len(labels.names) and labels.names[i] else None
        except Exception as exc:
            self.show_failure(exc)
            return
        self.status.value = f"attacking particle {i} with {self.attack.value}..."
        model_name = self.picker.display_name
        start_worker(self, attack_one_job, self.picker, spec, source, label_name,
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
        self.status.value = f"attacked particle {i} with {self.attack.value}; its layers are beside it"

    # ------------------------------------------------------------------ all picks
    def run_all(self) -> None:
        """Attack every pick (extracted at the model's cube size) with progress and Cancel."""
        try:
            spec = self.picker.spec()
            if PICKS_LAYER not in self._viewer.layers or self.image.value is None:
                raise CryoGuardError("attacking all picks needs a 'picks' layer and a tomogram")
            from napari_cryoguard._napari.classify_widget import layer_picks_for

            guarded = layer_picks_for(self.image.value, self._viewer.layers[PICKS_LAYER])
            coords, rows = guarded["coords"], guarded["rows"]
            labels = self.labels.resolve()
            params = self.attack_params()
        except Exception as exc:
            self.show_failure(exc)
            return
        self.progress.value = 0
        self.status.value = f"attacking {len(coords)} picks..."
        self.cancel_button.enabled = True
        model_name = self.picker.display_name
        picker = self.picker

        volume = self.image.value.data
        attack, device, batch = self.attack.value, self.device.value, int(self.batch_size.value)

        def job():
            from napari_cryoguard.classify import domain_warnings

            loaded = picker.load(spec)
            true = np.array([loaded.class_names.index(n) if n in loaded.class_names else -1
                             for n in labels.names], dtype=np.int64)
            notes = list(guarded["notes"])
            res, index = yield from attack_all_job(loaded, volume, coords, true[rows], attack,
                                                   device, params, batch,
                                                   voxel_size=guarded["voxel_size"], notes=notes)
            warnings = domain_warnings(loaded, voxel_size=guarded["voxel_size"], normalized=True)
            return res, rows[index], loaded, true, domain_line(notes, warnings)

        worker = start_worker(
            self, job,
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
        import pandas as pd

        layer = self._viewer.layers[PICKS_LAYER]
        n = len(layer.data)
        flipped = np.zeros(n, dtype=bool)
        attacked = np.zeros(n, dtype=bool)
        adv_class = np.array([""] * n, dtype=object)
        adv_norm = np.full(n, np.nan)
        succ = res.success.numpy().astype(bool)
        flipped[index] = succ
        attacked[index] = True
        adv_class[index] = [loaded.class_names[j] for j in res.pred_after.numpy()]
        adv_norm[index] = res.norm.numpy()
        feats = layer.features.copy()
        feats["flipped"] = flipped
        feats["adv_class"] = pd.Categorical(adv_class.astype(str))
        feats["adv_norm"] = adv_norm
        layer.features = feats
        rgba = np.tile([0.6, 0.6, 0.6, 1.0], (n, 1))
        rgba[attacked & flipped] = FLIPPED_RGBA
        rgba[attacked & ~flipped] = HELD_RGBA
        layer.border_color = rgba
        layer.face_color = rgba
        self.progress.value = 100
        self.status.value = summary_line(res, index, labels, true, model_name) + domain


def summary_line(res, index, labels, true, model_name: str) -> str:
    """What "Attack all" found, in words that say which labels the numbers are against."""
    succ = res.success.numpy().astype(bool)
    head = f"{int(succ.sum())}/{len(succ)} picks flipped by {res.name} ({model_name})"
    known = np.asarray(true)[index] >= 0 if true is not None else np.zeros(len(index), bool)
    if labels is None or labels.predictions or not known.any():
        right_before = res.pred_before.numpy() == res.labels.numpy()
        right_after = res.pred_after.numpy() == res.labels.numpy()
        return (f"{head}; no true labels were used: agreement with the model's own predictions "
                f"{right_before.mean():.2f} -> {right_after.mean():.2f}")
    y = res.labels.numpy()[known]
    before = float(np.mean(res.pred_before.numpy()[known] == y))
    after = float(np.mean((res.pred_before.numpy()[known] == y) & (res.pred_after.numpy()[known] == y)))
    rest = int((~known).sum())
    tail = (f"; {rest} picks without a label were attacked against the model's own prediction"
            if rest else "")
    return (f"{head}; accuracy against {labels.source} on {int(known.sum())} labelled picks "
            f"{before:.2f} -> {after:.2f} (robust: right before and after){tail}")
