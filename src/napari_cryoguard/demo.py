"""The demo pipeline, Qt-free: simulate a tomogram, pick particles, extract subtomograms,
classify and attack them.

``cryoguard demo`` (:mod:`napari_cryoguard.cli.demo`) runs :func:`run_pipeline` and then
shows the result in napari (or, headless, renders a screenshot); ``make demo`` runs that
command. This module imports nothing of napari or Qt.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class DemoResult:
    """What the demo produced: the simulation, picks, subtomograms, predictions, summary."""

    sim: object
    picks: object
    subtomograms: object
    summary: dict
    predictions: object = None
    true_class: list | None = None
    attack: object = None


def run_pipeline(out: str | Path = "demo-output", seed: int = 0,
                 log: Callable[[str], None] = print) -> DemoResult:
    """Simulate, pick, extract, score the picks against the truth, write everything to ``out``.

    Files written: ``tomogram.mrc``, ``truth.star``, ``picks.star``, ``subtomograms.npz``
    and ``report.json`` (counts, precision and recall within 4 voxels, timings).
    """
    from napari_cryoguard.data import SubtomogramDataset, save_dataset
    from napari_cryoguard.io import write_picks, write_tomogram
    from napari_cryoguard.picking import (
        SIMULATED_SIGMA1,
        SIMULATED_THRESHOLD,
        extract_subtomograms,
        match_picks,
        pick_particles,
    )
    from napari_cryoguard.simulate import simulate_tomogram

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t = {}
    t0 = time.perf_counter()
    sim = simulate_tomogram(seed=seed)
    t["simulate"] = time.perf_counter() - t0
    log(f"simulated a {'x'.join(map(str, sim.volume.shape))} tomogram with {len(sim.coords)} "
        f"particles of {len(sim.class_names)} classes (SNR {sim.params.get('snr')}, "
        f"tilt +-{sim.params.get('tilt_range')} deg)")
    write_tomogram(out / "tomogram.mrc", sim.volume, sim.voxel_size)
    truth = sim.to_picks()
    truth.tomo_names = np.array(["tomogram"] * len(truth))
    write_picks(out / "truth.star", truth)

    t0 = time.perf_counter()
    # sigma matched to the simulated particles (radii 7-11 voxels), see picking.dog
    picks = pick_particles(sim.volume, SIMULATED_SIGMA1, threshold=SIMULATED_THRESHOLD,
                           voxel_size=sim.voxel_size)
    t["pick"] = time.perf_counter() - t0
    picks.tomo_names = np.array(["tomogram"] * len(picks))
    precision, recall = match_picks(picks.coords, sim.coords, tolerance=4.0)
    log(f"DoG picked {len(picks)} particles in {t['pick']:.2f} s: precision {precision:.2f}, "
        f"recall {recall:.2f} within 4 voxels")
    write_picks(out / "picks.star", picks)

    t0 = time.perf_counter()
    sub = extract_subtomograms(sim.volume, picks.coords)  # the papers' 28^3 cubes
    t["extract"] = time.perf_counter() - t0
    ds = SubtomogramDataset(volumes=sub.volumes, labels=None, class_names=None,
                            coords=picks.coords[sub.index], tomo_names="tomogram",
                            voxel_size=sim.voxel_size, normalized=sub.normalized,
                            meta={"source": "demo", "n_skipped": int(sub.n_skipped)})
    save_dataset(out / "subtomograms.npz", ds)
    log(f"extracted {len(sub.volumes)} subtomograms of {sub.size}^3 ({sub.n_skipped} skipped)")
    result = DemoResult(sim=sim, picks=picks, subtomograms=sub, summary={})
    classified = _classify_and_attack(sim, picks, sub, t, log, result)
    summary = {
        "tomogram": str(out / "tomogram.mrc"), "truth": str(out / "truth.star"),
        "picks": str(out / "picks.star"), "subtomograms": str(out / "subtomograms.npz"),
        "shape": list(sim.volume.shape), "voxel_size": float(sim.voxel_size),
        "n_particles": int(len(sim.coords)), "n_picks": int(len(picks)),
        "n_subtomograms": int(len(sub.volumes)), "n_skipped": int(sub.n_skipped),
        "precision": round(float(precision), 4), "recall": round(float(recall), 4),
        **classified,
        "seconds": {k: round(v, 3) for k, v in t.items()},
    }
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    result.summary = summary
    return result


def _classify_and_attack(sim, picks, sub, t: dict, log, result: DemoResult) -> dict:
    """Classify the extracted cubes with the bundled CB3D and attack them with FGSM.

    Each pick takes the class of the true particle it matches (within 4 voxels) as its
    ``true_class``, so the demo reports the classifier's accuracy on its own picks and
    how many of them an FGSM perturbation of eps 0.03 (RAT paper IV.C) flips.
    """
    from napari_cryoguard.classify import classify, load_model
    from napari_cryoguard.models import bundled_models
    from napari_cryoguard.picking.metrics import assign_truth

    if "cb3d-default" not in bundled_models() or len(sub.volumes) == 0:
        return {}
    names = np.asarray(sim.class_names)[sim.labels]
    result.true_class = list(assign_truth(picks.coords, sim.coords, names, tolerance=4.0))
    loaded = load_model("cb3d-default")
    t0 = time.perf_counter()
    preds = classify(loaded, sub.volumes, normalized=sub.normalized, device="auto")
    t["classify"] = time.perf_counter() - t0
    result.predictions = preds
    true = np.asarray(result.true_class)[sub.index]
    known = true != ""
    acc = float(np.mean(np.asarray(preds.predicted_names)[known] == true[known])) if known.any() else None
    log(f"classified {len(sub.volumes)} subtomograms with cb3d-default in {t['classify']:.2f} s"
        + (f": accuracy {acc:.3f} against the matched truth" if acc is not None else ""))
    from napari_cryoguard.attacks import attack_dataset

    lookup = {n: i for i, n in enumerate(preds.class_names)}
    labels = np.array([lookup.get(c, p) for c, p in zip(true, preds.predicted, strict=True)])
    t0 = time.perf_counter()
    res = attack_dataset(loaded.model, sub.volumes, labels, "fgsm", eps=0.03, device="auto")
    t["attack"] = time.perf_counter() - t0
    result.attack = res
    s = res.summary()
    log(f"FGSM (eps 0.03) on every subtomogram: accuracy {s['accuracy_before']:.3f} -> "
        f"{s['accuracy_after']:.3f} in {t['attack']:.2f} s")
    return {"model": "cb3d-default", "classification_accuracy": acc,
            "fgsm_eps": 0.03, "accuracy_before_attack": s["accuracy_before"],
            "accuracy_after_attack": s["accuracy_after"]}
