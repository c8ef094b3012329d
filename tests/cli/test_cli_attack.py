"""`cryoguard attack` as a real subprocess on a real (tiny) model and simulated data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cryoguard.data import SubtomogramDataset, save_dataset
from napari_cryoguard.models import build_model, save_checkpoint, tiny_params

CRYOGUARD = str(Path(sys.executable).with_name("cryoguard"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from napari_cryoguard.simulate import simulate_subtomograms

    d = tmp_path_factory.mktemp("attack")
    sim = simulate_subtomograms(n_per_class=2, cube=24, seed=7)
    ds = save_dataset(d / "ds.npz", SubtomogramDataset(
        volumes=sim.volumes, labels=sim.labels, class_names=list(sim.class_names), voxel_size=10.0))
    torch.manual_seed(0)
    model = build_model("cb3d", len(sim.class_names), cube=24, **tiny_params("cb3d"))
    ckpt = save_checkpoint(d / "m.safetensors", model, {"class_names": list(sim.class_names)})
    return ds, ckpt, sim


def run(*args):
    return subprocess.run([CRYOGUARD, *map(str, args)], capture_output=True, text=True, timeout=600)


def test_attack_cli_summary_and_result_file(data, tmp_path):
    ds, ckpt, sim = data
    out = tmp_path / "r.npz"
    res = run("attack", ds, "--model", ckpt, "--attack", "fgsm", "--eps", 0.02,
              "--indices", 0, 3, 5, "--out", out, "--json")
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["n"] == 3 and s["attack"] == "fgsm" and s["params"]["eps"] == 0.02
    with np.load(out, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["indices"], [0, 3, 5])
        assert np.abs(z["perturbation"]).max() <= 0.02 + 1e-6
        assert z["success"].mean() == pytest.approx(s["success_rate"])
        meta = json.loads(str(z["metadata"]))
    assert meta["attack"] == "fgsm" and meta["class_names"] == list(sim.class_names)
    assert 0.0 <= s["accuracy_after"] <= 1.0 and "mean_norm" in s


def test_attack_cli_unknown_parameter_is_clear(data, tmp_path):
    ds, ckpt, _ = data
    res = run("attack", ds, "--model", ckpt, "--attack", "fgsm", "--steps", 3,
              "--out", tmp_path / "r.npz", "--json")
    assert res.returncode == 2
    assert "has no parameter 'steps'" in json.loads(res.stdout)["error"]
    assert not (tmp_path / "r.npz").exists()


def test_attack_cli_eps_unit_range_scales_the_budget_per_subtomogram(data, tmp_path):
    """--eps-unit range: each perturbation stays within eps x that subtomogram's max - min."""
    ds, ckpt, _ = data
    out = tmp_path / "r.npz"
    res = run("attack", ds, "--model", ckpt, "--attack", "fgsm", "--eps", 0.01, "--eps-unit", "range",
              "--indices", 0, 1, 2, "--out", out, "--json")
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["params"]["eps_unit"] == "range"
    with np.load(out, allow_pickle=False) as z:
        x = z["x_adv"] - z["perturbation"]
        pert = z["perturbation"]
    for i in range(3):
        span = float(x[i].max() - x[i].min())
        assert span > 1.0  # z-scored cubes span several units, so the two units differ
        linf = float(np.abs(pert[i]).max())
        assert linf <= 0.01 * span * (1 + 1e-4) + 1e-6
        assert linf > 0.01 * 1.01  # bigger than the same number in normalised units
