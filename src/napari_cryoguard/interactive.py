"""The jobs behind the dock widgets' buttons, as plain functions (no napari, no Qt).

Each function is what one button does once its inputs are read off the layers
(:mod:`napari_cryoguard.layerdata`): classify picks, reconstruct or attack one particle,
attack every pick, read a run's IMA margins, start a training run. The widgets run them
in a worker thread; generators yield ``(done, total)`` progress and return their result.
Models are passed as ``load``, a function of no arguments that returns the
:class:`~napari_cryoguard.classify.LoadedModel` (loading takes seconds, so it happens in
the job, off the Qt thread).

This module imports neither napari nor Qt, nor torch at import time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.layerdata import (
    Labels,
    extraction_size,
    labelled_dataset,
    particle_for_model,
)

__all__ = [
    "attack_all_job",
    "attack_one",
    "attack_one_job",
    "attack_picks_job",
    "classify_job",
    "domain_line",
    "margins_job",
    "reconstruct_job",
    "start_training_run",
    "summary_line",
]

Loader = Callable[[], Any]


def domain_line(notes, warnings) -> str:
    """The resampling notes and domain warnings as a suffix for a result line."""
    parts = [*notes, *(f"warning: {w}" for w in warnings)]
    return "".join(f"; {p}" for p in parts)


def _single_domain(loaded, source: dict, notes: list[str]) -> str:
    """:func:`domain_line` for one pick's cube: what was converted or resampled to fit the
    model, and the warnings when the tomogram lies outside what it was trained on."""
    from napari_cryoguard.classify import domain_warnings

    warnings = domain_warnings(loaded, voxel_size=source.get("voxel_size"), normalized=True)
    return domain_line(notes, warnings)


def _contrast(vol: np.ndarray) -> tuple[float, float]:
    lo, hi = float(np.min(vol)), float(np.max(vol))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


# ---------------------------------------------------------------------- classify


def classify_job(load: Loader, source: dict, device: str, batch_size: int):
    """Load the model, get the cubes (extracting picks if needed), classify (a generator).

    ``source`` is either ``{"kind": "stack", "data", "normalized", "index",
    "voxel_size"}`` (an extracted stack) or ``{"kind": "picks", "volume", "coords",
    "rows", "notes", "voxel_size"}`` (the picks of a tomogram in its voxels,
    :func:`~napari_cryoguard.layerdata.picks_for_image`), cut so as to cover the model's
    field of view and resampled to the model's voxel size when it differs. Yields
    ``(done, total)``; returns ``(predictions, pick index, loaded model)``;
    ``predictions.notes`` carries the guards' notes and the resampling, and
    ``predictions.warnings`` the domain warnings.
    """
    from napari_cryoguard.classify import domain_warnings, iter_classify
    from napari_cryoguard.picking import extract_subtomograms

    loaded = load()
    voxel_size = source.get("voxel_size")
    if source["kind"] == "stack":
        volumes = np.asarray(source["data"], dtype=np.float32)
        normalized, index = source["normalized"], source["index"]
    else:
        size = extraction_size(loaded, voxel_size)
        sub = extract_subtomograms(source["volume"], source["coords"], size=size,
                                   normalize=True, invert=bool(source.get("invert")))
        if len(sub.volumes) == 0:
            raise CryoGuardError(f"no pick lies far enough inside the tomogram for a {size}^3 cube")
        volumes, normalized = sub.volumes, True
        index = np.asarray(source["rows"])[np.asarray(sub.index, dtype=np.int64)]
    # picks are cut to the model's field of view, so only a stack's cube can differ
    warnings = domain_warnings(loaded, voxel_size=voxel_size, normalized=normalized,
                               cube=None if source["kind"] == "picks" else volumes.shape[1])
    preds = yield from iter_classify(loaded, volumes, normalized=normalized, device=device,
                                     batch_size=batch_size, voxel_size=voxel_size)
    preds.notes = [*source.get("notes", []), *preds.notes]
    preds.warnings = warnings
    return preds, index, loaded


def reconstruct_job(load: Loader, source: dict) -> dict:
    """The pick's cube and, for an autoencoding model, its reconstruction.

    Returns ``layers`` (name -> cube: ``particle <i>``, ``reconstruction <i>``),
    ``styles`` (name -> layer properties), ``loaded`` and ``center``.
    """
    import torch

    loaded = load()
    notes: list[str] = []
    vol = particle_for_model(source, loaded, notes)
    i = source["index"]
    layers = {f"particle {i}": vol}
    if loaded.has_decoder:
        with torch.inference_mode():
            rec = loaded.model.reconstruct(torch.from_numpy(vol[None, None]))
        layers[f"reconstruction {i}"] = rec[0, 0].cpu().numpy()
    styles = {name: {"contrast_limits": _contrast(vol)} for name in layers}
    return {"layers": layers, "styles": styles, "loaded": loaded, "center": source["center"],
            "domain": _single_domain(loaded, source, notes)}


# ---------------------------------------------------------------------- attack


def attack_one(loaded, volume: np.ndarray, label: int | None, name: str, params: dict) -> dict:
    """Attack one normalised cube; everything the widget shows, as numpy.

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


def attack_one_job(load: Loader, source: dict, label_name: str | None, name: str,
                   params: dict, magnify: int) -> dict:
    """Load the model, cut pick ``source["index"]``'s cube, attack it, prepare its layers.

    Returns :func:`attack_one`'s result plus ``loaded``, ``center``, ``label_known``,
    ``layers`` (``particle <i>``, ``adversarial <i>``, ``perturbation <i> x<magnify>``
    and, for an autoencoding model, the reconstructions) and ``styles`` (the
    perturbation on a diverging colormap with symmetric limits, the cubes on the
    particle's contrast).
    """
    loaded = load()
    notes: list[str] = []
    vol = particle_for_model(source, loaded, notes)
    names = loaded.class_names
    label = names.index(label_name) if label_name in names else None
    out = attack_one(loaded, vol, label, name, params)
    out["loaded"] = loaded
    out["center"] = source["center"]
    out["label_known"] = label is not None
    out["domain"] = _single_domain(loaded, source, notes)
    pert = out["perturbation"] * magnify
    lim = float(np.abs(pert).max()) or 1.0
    limits = _contrast(vol)
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


def attack_all_job(loaded, volume, coords, true_labels, name: str, device: str, params: dict,
                   batch_size: int = 16, *, voxel_size: float | None = None,
                   notes: list[str] | None = None, invert: bool = False):
    """Extract every pick, attack them batch by batch (a generator).

    Picks with a known class (``true_labels >= 0``) are attacked against it, the others
    against the model's own prediction. With ``voxel_size`` (the tomogram's, Angstrom)
    the cubes are cut to cover the model's field of view and resampled to its voxel size
    when it differs (a sentence is appended to ``notes``); ``invert`` negates the cubes
    (protein black in the tomogram). Yields ``(done, total)``; returns
    ``(AttackResult, pick indices)``.
    """
    from napari_cryoguard.attacks import iter_attack_dataset
    from napari_cryoguard.classify import prepare_volumes
    from napari_cryoguard.device import predict
    from napari_cryoguard.picking import extract_subtomograms

    sub = extract_subtomograms(volume, coords, size=extraction_size(loaded, voxel_size),
                               border="pad", invert=invert)
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


def attack_picks_job(load: Loader, volume, picks: dict, label_names, name: str, device: str,
                     params: dict, batch_size: int = 16):
    """"Attack all picks": load the model, attack the picks of one tomogram (a generator).

    ``picks`` is :func:`~napari_cryoguard.layerdata.picks_for_image`'s (coordinates in the
    tomogram's voxels, the picks' rows, notes, voxel size); ``label_names`` the true
    class name of every pick (``""``: unknown, attacked against the prediction). Yields
    ``(done, total)``; returns ``(AttackResult, attacked pick rows, loaded model, true
    label per pick (-1 unknown), domain line)``.
    """
    from napari_cryoguard.classify import domain_warnings

    loaded = load()
    names = loaded.class_names
    true = np.array([names.index(n) if n in names else -1 for n in label_names], dtype=np.int64)
    rows = np.asarray(picks["rows"], dtype=np.int64)
    notes = list(picks["notes"])
    res, index = yield from attack_all_job(loaded, volume, picks["coords"], true[rows], name,
                                           device, params, batch_size,
                                           voxel_size=picks["voxel_size"], notes=notes,
                                           invert=bool(picks.get("invert")))
    warnings = domain_warnings(loaded, voxel_size=picks["voxel_size"], normalized=True)
    return res, rows[index], loaded, true, domain_line(notes, warnings)


def summary_line(res, index, labels: Labels | None, true, model_name: str) -> str:
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
    right_before = res.pred_before.numpy()[known] == y
    before = float(np.mean(right_before))
    after = float(np.mean(right_before & (res.pred_after.numpy()[known] == y)))
    rest = int((~known).sum())
    tail = (f"; {rest} picks without a label were attacked against the model's own prediction"
            if rest else "")
    return (f"{head}; accuracy against {labels.source} on {int(known.sum())} labelled picks "
            f"{before:.2f} -> {after:.2f} (robust: right before and after){tail}")


# ---------------------------------------------------------------------- training


def start_training_run(runs_dir, label: str, settings: dict, *, stack: dict | None = None,
                       labels: Labels | None = None, dataset_path=None):
    """Build or check the data, create the run folder and launch ``cryoguard train``.

    The data: ``stack`` (:func:`~napari_cryoguard.layerdata.labelled_dataset`'s keyword
    arguments but the labels) with ``labels``, or a dataset file ``dataset_path``, else
    the simulation in ``settings["simulate"]``. Raises :class:`CryoGuardError` before
    any folder is made when the data cannot be trained on. Returns the started
    :class:`~napari_cryoguard.runs.TrainRun`; it leaves one core to the caller and runs
    at a lower priority.
    """
    from napari_cryoguard.data import load_dataset, save_dataset
    from napari_cryoguard.runs import TrainRun

    ds = None
    if stack is not None:
        ds, _ = labelled_dataset(**stack, labels=labels, min_classes=2, purpose="training")
    elif dataset_path is not None:
        checked = load_dataset(dataset_path)
        known = np.unique(np.asarray(checked.labels)[np.asarray(checked.labels) >= 0])
        if len(known) < 2:
            raise CryoGuardError(f"{Path(dataset_path).name} has {len(known)} labelled class(es); "
                                 "training needs at least two")
    if stack is None and dataset_path is None:
        run = TrainRun.create(runs_dir, label=label, **settings)
    else:
        run = TrainRun.create(runs_dir, label=label, data=str(dataset_path or "pending"),
                              **settings)
        if ds is not None:
            run.set_data(save_dataset(run.folder / "data.npz", ds))
    # one core stays free for the viewer, and the viewer keeps priority over the training
    run.start(threads=max(1, (os.cpu_count() or 2) - 1), nice=5)
    return run


def margins_job(checkpoint, data_path):
    """The IMA margins in ``checkpoint`` and where to draw them, or ``None`` without.

    Returns ``(margins, where)``; ``where`` is ``(coords, scale, pick_index)`` when the
    dataset at ``data_path`` has one position per margin, else ``None``.
    """
    from napari_cryoguard.data import load_dataset
    from napari_cryoguard.models import load_checkpoint

    _, meta = load_checkpoint(checkpoint)
    extra = meta.get("extra_tensors") or {}
    key = next((k for k in extra if k.endswith("margins")), None)
    if key is None:
        return None
    margins = np.asarray(extra[key], dtype=np.float32).reshape(-1)
    where = None
    if data_path is not None:
        ds = load_dataset(data_path)
        if ds.coords is not None and len(ds.coords) == len(margins):
            pick_index = ds.meta.get("pick_index")
            where = (np.asarray(ds.coords, dtype=float), (float(ds.voxel_size),) * 3,
                     None if pick_index is None else np.asarray(pick_index, dtype=np.int64))
    return margins, where
