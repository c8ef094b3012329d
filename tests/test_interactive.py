"""interactive: the widgets' jobs as plain functions, on a tiny trained model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.interactive import (
    attack_one_job,
    attack_picks_job,
    classify_job,
    margins_job,
    reconstruct_job,
    start_training_run,
    summary_line,
)
from napari_cryoguard.layerdata import (
    FLIPPED_RGBA,
    HELD_RGBA,
    Labels,
    attack_outcome_update,
    particle_source,
)


def run(gen):
    """Run a job generator to its end: (progress values, return value)."""
    seen = []
    while True:
        try:
            seen.append(next(gen))
        except StopIteration as stop:
            return seen, stop.value


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    from napari_cryoguard.classify import load_model

    return load_model(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def tomogram(eval_data):
    """Four test particles pasted into an empty tomogram at 14 A, and their centres."""
    _, te = eval_data
    volume = np.zeros((24, 48, 96), dtype=np.float32)
    centers = np.array([[12, 12, 12], [12, 12, 36], [12, 36, 60], [12, 24, 84]], dtype=float)
    for k, (z, y, x) in enumerate(centers.astype(int)):
        volume[z - 8:z + 8, y - 8:y + 8, x - 8:x + 8] = te.volumes[k]
    return volume, centers, te.labels[:4]


def test_classify_job_on_a_stack_and_on_picks(loaded, eval_data, tomogram):
    _, te = eval_data
    stack = {"kind": "stack", "data": te.volumes, "normalized": True,
             "index": np.arange(len(te.volumes)), "voxel_size": 14.0}
    steps, (preds, index, model) = run(classify_job(lambda: loaded, stack, "cpu", 8))
    assert model is loaded and steps[-1] == (len(te.volumes), len(te.volumes))
    assert preds.probabilities.shape == (len(te.volumes), len(loaded.class_names))
    np.testing.assert_allclose(preds.probabilities.sum(1), 1.0, atol=1e-5)
    assert index.tolist() == list(range(len(te.volumes)))
    volume, centers, _ = tomogram
    picks = {"kind": "picks", "volume": volume, "coords": centers, "rows": np.array([3, 5, 6, 9]),
             "notes": ["matched"], "voxel_size": 14.0}
    _, (preds, index, _) = run(classify_job(lambda: loaded, picks, "cpu", 8))
    assert index.tolist() == [3, 5, 6, 9]  # the picks layer's rows
    assert preds.notes[0] == "matched" and len(preds.probabilities) == 4


def test_attack_one_job_prepares_the_layers(loaded, eval_data):
    _, te = eval_data
    source = particle_source(1, stack=te.volumes, stack_normalized=True)
    source["center"] = np.array([8.0, 8.0, 8.0])
    true = loaded.class_names[int(te.labels[1])]
    out = attack_one_job(lambda: loaded, source, true, "fgsm", {"eps": 0.05}, 50)
    assert out["label_known"] and out["label"] == int(te.labels[1])
    assert list(out["layers"]) == ["particle 1", "adversarial 1", "perturbation 1 x50"]
    assert out["linf"] == pytest.approx(0.05, rel=1e-4)
    pert = out["layers"]["perturbation 1 x50"]
    np.testing.assert_allclose(pert, (out["x_adv"] - out["x"]) * 50, atol=1e-4)
    lo, hi = out["styles"]["perturbation 1 x50"]["contrast_limits"]
    assert lo == -hi == pytest.approx(-float(np.abs(pert).max()))
    assert out["styles"]["particle 1"] == out["styles"]["adversarial 1"]
    assert out["pred_before"] == int(np.argmax(out["probs_before"]))
    # no label: the model's own prediction is attacked
    blind = attack_one_job(lambda: loaded, source, None, "fgsm", {"eps": 0.05}, 50)
    assert not blind["label_known"] and blind["label"] == blind["pred_before"]


def test_reconstruct_job_without_a_decoder_shows_the_particle(loaded, eval_data):
    _, te = eval_data
    source = particle_source(0, stack=te.volumes, stack_normalized=True)
    out = reconstruct_job(lambda: loaded, source)
    assert list(out["layers"]) == ["particle 0"]  # a plain CB3D has no autoencoder branch
    np.testing.assert_allclose(out["layers"]["particle 0"], te.volumes[0], atol=1e-5)


def test_attack_picks_job_and_its_features(loaded, tomogram):
    volume, centers, labels = tomogram
    picks = {"coords": centers, "rows": np.array([0, 1, 2, 4]), "notes": [], "voxel_size": 14.0}
    # five picks: row 3 of the layer is a pick of another tomogram, without a label
    names = np.array([loaded.class_names[int(labels[0])], loaded.class_names[int(labels[1])],
                      loaded.class_names[int(labels[2])], "", ""])
    steps, (res, rows, _, true, domain) = run(attack_picks_job(
        lambda: loaded, volume, picks, names, "fgsm", "cpu", {"eps": 0.5}, 2))
    assert steps[-1] == (4, 4)
    assert rows.tolist() == [0, 1, 2, 4]
    assert true.tolist()[:3] == [int(c) for c in labels[:3]] and true[3] == -1
    assert domain == ""
    line = summary_line(res, rows, Labels(names, "the truth"), true, "tiny")
    assert line.startswith(f"{int(res.success.sum())}/4 picks flipped by fgsm (tiny)")
    assert "on 3 labelled picks" in line and "1 picks without a label" in line
    update = attack_outcome_update(pd.DataFrame(index=range(5)), 5, res, rows,
                                   loaded.class_names)
    flipped = update["features"]["flipped"].to_numpy()
    assert flipped[rows].tolist() == res.success.numpy().astype(bool).tolist()
    assert not flipped[3] and np.isnan(update["features"]["adv_norm"].iloc[3])
    for r, ok in zip(rows, res.success.numpy().astype(bool), strict=True):
        assert tuple(update["border_color"][r]) == (FLIPPED_RGBA if ok else HELD_RGBA)


def test_margins_job_without_margins_and_training_refused_before_a_folder(tiny_checkpoint,
                                                                          tmp_path):
    assert margins_job(tiny_checkpoint, None) is None
    stack = {"volumes": np.zeros((3, 8, 8, 8), np.float32), "index": [0, 1, 2]}
    with pytest.raises(CryoGuardError, match="at least 2 classes"):
        start_training_run(tmp_path / "runs", "x", {}, stack=stack,
                           labels=Labels(np.array(["a", "a", "a"]), "x"))
    assert not (tmp_path / "runs").exists()


def test_one_pick_jobs_say_what_was_resampled_and_warn_off_domain(loaded, tomogram):
    """Attack particle / Reconstruct on a tomogram at another voxel size than the model's:
    the cube is resampled to the model's voxels, and the result line says so and warns
    (never a silent confident class on foreign data)."""
    volume, centers, labels = tomogram
    assert loaded.voxel_size == 14.0
    source = particle_source(1, points=centers, volume=volume)
    source.update({"scale": 1.0, "voxel_size": 15.0})
    out = attack_one_job(lambda: loaded, source, None, "fgsm", {"eps": 0.05}, 50)
    assert "15" in out["domain"] and "14" in out["domain"]
    assert "resampl" in out["domain"] and "warning:" in out["domain"]
    rec = reconstruct_job(lambda: loaded, source)
    assert rec["domain"] == out["domain"]
    # at the model's own voxel size: nothing to say
    source["voxel_size"] = 14.0
    assert attack_one_job(lambda: loaded, source, None, "fgsm", {"eps": 0.05}, 50)["domain"] == ""
