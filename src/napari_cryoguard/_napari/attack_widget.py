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
    Container,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)

from napari_cryoguard._napari._common import (
    MODEL_CONSUMERS,
    PICKS_LAYER,
    ModelPicker,
    particle_cube,
    show_error,
    show_particle_layers,
    start_worker,
)
from napari_cryoguard._napari._forms import DataclassForm

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
                   batch_size: int = 16):
    """Extract every pick, attack them batch by batch; a generator for a worker thread.

    Picks with a known class (``true_labels >= 0``) are attacked against it, the others
    against the model's own prediction. Yields ``(done, total)``; returns
    ``(AttackResult, pick indices)``.
    """
    from napari_cryoguard.attacks import iter_attack_dataset
    from napari_cryoguard.device import predict
    from napari_cryoguard.errors import CryoGuardError
    from napari_cryoguard.picking import extract_subtomograms

    sub = extract_subtomograms(volume, coords, size=loaded.cube, border="pad")
    if len(sub.volumes) == 0:
        raise CryoGuardError("no picks inside the tomogram to attack")
    pred = predict(loaded.model, sub.volumes, device=device).argmax(1)
    true = np.asarray(true_labels)[sub.index]
    labels = np.where(true >= 0, true, pred)
    res = yield from iter_attack_dataset(loaded.model, sub.volumes, labels, name,
                                         batch_size=batch_size, device=device, **params)
    return res, np.asarray(sub.index)


class AttackWidget(Container):
    """Attack the classifier on picked particles and look at what the attack did."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._worker = None
        self.last = None  # the last single-particle result (dict)
        self.picker = ModelPicker()
        self.image = create_widget(annotation="napari.layers.Image", label="tomogram")
        self.attack = ComboBox(choices=_attack_choices, value="fgsm", label="attack")
        self.form = DataclassForm()
        self.index = SpinBox(value=0, min=0, max=10**7, label="particle")
        self.magnify = SpinBox(value=50, min=1, max=100_000, label="magnify x")
        self.device = ComboBox(choices=["auto", "cpu", "cuda", "mps"], value="auto", label="device")
        self.batch_size = SpinBox(value=16, min=1, max=4096, label="batch size",
                                  tooltip="picks per batch in 'Attack all' (Cancel acts between batches)")
        self.run_button = PushButton(text="Attack particle")
        self.result = Label(value="")
        self.all_button = PushButton(text="Attack all picks")
        self.cancel_button = PushButton(text="Cancel")
        self.cancel_button.enabled = False
        self.progress = ProgressBar(value=0, min=0, max=100, label="progress")
        self.status = Label(value="")
        self.extend([*self.picker.widgets, self.image, self.attack, self.form, self.index,
                     self.magnify, self.device, self.batch_size, self.run_button, self.result, self.all_button,
                     self.cancel_button, self.progress, self.status])
        self._set_form()
        self.attack.changed.connect(self._set_form)
        self.run_button.changed.connect(self.run_one)
        self.all_button.changed.connect(self.run_all)
        self.cancel_button.changed.connect(self.cancel)
        viewer.layers.selection.events.active.connect(self._connect_picks_selection)
        MODEL_CONSUMERS.add(self)

    def set_checkpoint(self, path) -> None:
        """Select a checkpoint file (the Train widget's "use this model")."""
        self.picker.set_checkpoint(path)

    # ------------------------------------------------------------------ form
    def _set_form(self, *_) -> None:
        from napari_cryoguard.attacks import get_attack_params

        self.form.set_params_cls(get_attack_params(self.attack.value))

    def attack_params(self) -> dict:
        """The attack's parameters from the form."""
        return self.form.values()

    def show_failure(self, exc: BaseException) -> None:
        """Show an error in the widget and as a napari notification."""
        self.status.value = f"error: {exc}"
        show_error(exc)

    # ------------------------------------------------------------------ selection
    def _connect_picks_selection(self, event=None) -> None:
        if PICKS_LAYER in self._viewer.layers:
            sel = self._viewer.layers[PICKS_LAYER].selected_data
            try:
                sel.events.items_changed.disconnect(self._on_select)
            except (TypeError, RuntimeError, ValueError):
                pass
            sel.events.items_changed.connect(self._on_select)

    def _on_select(self, event=None) -> None:
        chosen = sorted(self._viewer.layers[PICKS_LAYER].selected_data)
        if chosen:
            self.index.value = int(chosen[0])

    def _true_label(self, i: int, class_names: list[str]) -> int | None:
        """Pick ``i``'s class from the ``truth``/``label`` feature when it names a model class."""
        if PICKS_LAYER not in self._viewer.layers:
            return None
        feats = self._viewer.layers[PICKS_LAYER].features
        for col in ("true_class", "label_name"):
            if col in feats.columns and i < len(feats):
                name = str(feats[col].iloc[i])
                if name in class_names:
                    return class_names.index(name)
        return None

    # ------------------------------------------------------------------ one particle
    def run_one(self) -> None:
        """Attack pick ``index`` in a worker thread and show the layers."""
        i = int(self.index.value)
        try:
            loaded = self.picker.load()
            vol = particle_cube(self._viewer, i, loaded.cube, self.image.value)
            params = self.attack_params()
            label = self._true_label(i, loaded.class_names)
        except Exception as exc:
            self.show_failure(exc)
            return
        self.status.value = f"attacking particle {i}..."
        start_worker(self, attack_one, loaded, vol, label, self.attack.value, params,
                     on_return=lambda out: self._on_attacked(out, i, loaded),
                     buttons=(self.run_button, self.all_button))

    def _on_attacked(self, out: dict, i: int, loaded) -> None:
        self.last = out
        k = int(self.magnify.value)
        names = loaded.class_names
        pert = out["perturbation"] * k
        lim = float(np.abs(pert).max()) or 1.0
        layers = {f"particle {i}": out["x"], f"adversarial {i}": out["x_adv"]}
        for old in [lay.name for lay in self._viewer.layers]:
            if old.startswith(f"perturbation {i} x"):
                self._viewer.layers.remove(old)
        layers[f"perturbation {i} x{k}"] = pert
        extra = {f"perturbation {i} x{k}": {"colormap": "PiYG", "contrast_limits": (-lim, lim)}}
        if "reconstruction" in out:
            layers[f"reconstruction {i}"] = out["reconstruction"]
            layers[f"adversarial reconstruction {i}"] = out["adversarial reconstruction"]
        lo, hi = float(np.min(out["x"])), float(np.max(out["x"]))
        for name in layers:
            if not name.startswith("perturbation"):
                extra[name] = {"contrast_limits": (lo, hi) if hi > lo else None}
                if extra[name]["contrast_limits"] is None:
                    del extra[name]["contrast_limits"]
        show_particle_layers(self._viewer, layers, **extra)

        def probs(p):
            top = np.argsort(p)[::-1][:3]
            return ", ".join(f"{names[j]} {p[j]:.2f}" for j in top)

        verdict = "FLIPPED" if out["success"] else "held"
        note = " (zero gradient: the attack cannot move this sample)" if out["zero_grad"] else ""
        self.result.value = (
            f"<b>{verdict}</b>{note}<br>"
            f"before: {names[out['pred_before']]} ({probs(out['probs_before'])})<br>"
            f"after: {names[out['pred_after']]} ({probs(out['probs_after'])})<br>"
            f"L-inf {out['linf']:.4g}, L2 {out['l2']:.4g}, {out['steps']} steps"
        )
        self.status.value = f"attacked particle {i} with {self.attack.value}"

    # ------------------------------------------------------------------ all picks
    def run_all(self) -> None:
        """Attack every pick (extracted at the model's cube size) with progress and Cancel."""
        try:
            loaded = self.picker.load()
            if PICKS_LAYER not in self._viewer.layers or self.image.value is None:
                raise ValueError("attacking all picks needs a 'picks' layer and a tomogram")
            coords = np.asarray(self._viewer.layers[PICKS_LAYER].data)[:, -3:]
            true = np.array([self._true_label(j, loaded.class_names) for j in range(len(coords))],
                            dtype=object)
            true = np.array([-1 if t is None else t for t in true], dtype=np.int64)
            params = self.attack_params()
        except Exception as exc:
            self.show_failure(exc)
            return
        self.progress.value = 0
        self.status.value = f"attacking {len(coords)} picks..."
        self.cancel_button.enabled = True
        worker = start_worker(
            self, attack_all_job, loaded, self.image.value.data, coords, true, self.attack.value,
            self.device.value, params, int(self.batch_size.value),
            on_yield=lambda p: setattr(self.progress, "value", int(100 * p[0] / max(p[1], 1))),
            on_return=lambda out: self._on_all(out[0], out[1], loaded),
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

    def _on_all(self, res, index: np.ndarray, loaded) -> None:
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
        s = res.summary()
        self.status.value = (f"{int(succ.sum())}/{len(succ)} picks flipped by {res.name} "
                             f"(accuracy {s['accuracy_before']:.2f} -> {s['accuracy_after']:.2f} "
                             f"against the labels used)")
