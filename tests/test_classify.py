"""Classification core and `cryoguard classify`, with a real (tiny) trained-free model."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cryoguard import CryoGuardError
from napari_cryoguard.classify import align_labels, classify, load_model, zscore
from napari_cryoguard.data import SubtomogramDataset, save_dataset
from napari_cryoguard.models import build_model, save_checkpoint, tiny_params

CRYOGUARD = str(Path(sys.executable).with_name("cryoguard"))


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("cb3d", 3, cube=20, **tiny_params("cb3d"))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, model, {"class_names": ["a", "b", "c"], "normalization": "zscore"})
    return path


def test_classify_matches_model_forward(tiny_ckpt):
    loaded = load_model(tiny_ckpt)
    vols = np.random.default_rng(0).normal(size=(5, 20, 20, 20)).astype(np.float32) * 3 + 1
    preds = classify(loaded, vols, normalized=False, device="cpu", batch_size=2)
    with torch.inference_mode():
        ref = torch.softmax(loaded.model(torch.from_numpy(zscore(vols))[:, None]), 1).numpy()
    np.testing.assert_allclose(preds.probabilities, ref, rtol=1e-5, atol=1e-6)
    assert preds.class_names == ["a", "b", "c"]
    assert preds.accuracy(preds.predicted) == 1.0
    assert preds.accuracy(np.full(5, -1)) is None


def test_wrong_cube_is_a_clear_error(tiny_ckpt):
    loaded = load_model(tiny_ckpt)
    with pytest.raises(CryoGuardError, match="20\\^3 cubes but the subtomograms are 28\\^3"):
        classify(loaded, np.zeros((2, 28, 28, 28), np.float32))


def test_align_labels_by_name():
    labels = np.array([0, 1, 2, -1])
    out = align_labels(labels, ["b", "zzz", "a"], ["a", "b", "c"])
    np.testing.assert_array_equal(out, [1, -1, 0, -1])


def test_cli_classify_writes_csv_and_accuracy(tiny_ckpt, tmp_path):
    rng = np.random.default_rng(1)
    vols = rng.normal(size=(6, 20, 20, 20)).astype(np.float32)
    ds_path = save_dataset(tmp_path / "d.npz", SubtomogramDataset(
        volumes=vols, labels=np.array([0, 1, 2, 0, 1, 2]), class_names=["a", "b", "c"],
        coords=None, tomo_names=None, voxel_size=10.0, normalized=False, meta={}))
    out = tmp_path / "pred.csv"
    res = subprocess.run([CRYOGUARD, "classify", str(ds_path), "--model", str(tiny_ckpt),
                          "--device", "cpu", "--out", str(out), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 6 and s["n"] == 6
    pred = np.array([int(r["predicted"]) for r in rows])
    acc = float((pred == np.array([0, 1, 2, 0, 1, 2])).mean())
    assert s["accuracy"] == pytest.approx(acc, abs=1e-4)
    probs = np.array([[float(r[f"p_{c}"]) for c in "abc"] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def test_cli_classify_rejects_pickle(tmp_path):
    bad = tmp_path / "evil.pt"
    marker = tmp_path / "pwned"
    import pickle

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad.write_bytes(pickle.dumps(Evil()))
    ds_path = save_dataset(tmp_path / "d.npz", SubtomogramDataset(
        volumes=np.zeros((1, 20, 20, 20), np.float32), labels=None, class_names=None, coords=None,
        tomo_names=None, voxel_size=1.0, normalized=True, meta={}))
    res = subprocess.run([CRYOGUARD, "classify", str(ds_path), "--model", str(bad), "--out",
                          str(tmp_path / "p.csv"), "--json"], capture_output=True, text=True)
    assert res.returncode == 2
    assert json.loads(res.stdout)["ok"] is False
    assert not marker.exists()
    assert not (tmp_path / "p.csv").exists()
