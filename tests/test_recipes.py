"""The "how to add" recipes of docs/architecture.md, followed literally.

Each test writes ONE new module into the installed package folder, exactly where the
recipe says a contributor puts it (``defenses/<name>.py``, ``models/<name>.py``,
``attacks/<name>.py``), and then uses it from the command line in a fresh process, so
the package's own discovery has to find it: no other file is touched. The module is
removed afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import napari_cryoguard

PKG = Path(napari_cryoguard.__file__).resolve().parent
PREFIX = "zz_recipe_probe"

DEFENSE = '''
"""A test defense: cross-entropy scaled by ``weight`` (follows the recipe)."""

from dataclasses import dataclass

from napari_cryoguard.defenses.base import Batch, Defense, masked_cross_entropy, register_defense
from napari_cryoguard.registry import check_fields, number


@dataclass
class ScaledCEParams:
    """Parameters of the ``scaled-ce`` defense.

    Attributes
    ----------
    weight
        Factor on the cross-entropy.
    """

    weight: float = number(1.0, strict=True)

    def __post_init__(self):
        check_fields(self)


def scaled_ce_loss(model, batch: Batch, params: ScaledCEParams):
    loss, _ = masked_cross_entropy(model(batch.x), batch.y)
    return params.weight * loss, {"ce": float(loss.detach())}


@register_defense("scaled-ce", ScaledCEParams)
class ScaledCE(Defense):
    """Cross-entropy times a weight."""

    def loss(self, model, batch):
        return scaled_ce_loss(model, batch, self.params)
'''

MODEL = '''
"""A test architecture: one convolution set and a small head (follows the recipe)."""

from dataclasses import dataclass

from torch import nn

from napari_cryoguard.checks import check_prob, check_widths
from napari_cryoguard.models.base import FeatureClassifier
from napari_cryoguard.models.registry import register_model


@dataclass
class ProbeNetParams:
    """Parameters of :class:`ProbeNet`.

    Attributes
    ----------
    width
        Filters of the one convolution.
    fc_widths
        The two hidden fully connected layers.
    dropout
        Dropout after each hidden layer.
    """

    width: int = 4
    fc_widths: tuple[int, int] = (8, 8)
    dropout: float = 0.0

    def __post_init__(self):
        check_widths("width", (self.width,))
        check_widths("fc_widths", self.fc_widths, 2)
        check_prob("dropout", self.dropout)


@register_model("probe_net", ProbeNetParams)
class ProbeNet(FeatureClassifier):
    """Conv 3x3x3, ReLU, max pool 4, flatten, head."""

    def __init__(self, num_classes, cube=28, params=None):
        super().__init__(num_classes, cube, params if params is not None else ProbeNetParams())
        p = self.params
        self._finish([nn.Conv3d(1, p.width, 3, padding=1), nn.ReLU(), nn.MaxPool3d(4)],
                     p.fc_widths, p.dropout)
'''

ATTACK = '''
"""A test attack: x + eps * (a random sign per voxel) (follows the recipe)."""

from dataclasses import dataclass

import torch

from napari_cryoguard.attacks import ops
from napari_cryoguard.attacks.base import Attack, AttackParams, register_attack
from napari_cryoguard.registry import number


@dataclass
class SignStepParams(AttackParams):
    """Parameters of :class:`SignStep`.

    Attributes
    ----------
    eps
        L-inf budget in the data's units.
    seed
        Seed of the signs.
    """

    eps: float = number(0.03)
    seed: int | None = 0


@register_attack("sign-step", SignStepParams)
class SignStep(Attack):
    """One random vertex of the L-inf ball."""

    uses_gradients = False
    norms = ("linf",)
    quick_params = {"eps": 0.5, "seed": 0}

    def _run(self, model, x, y, box, logits0):
        gen = ops.make_generator(self.params.seed, x.device)
        s = torch.randint(0, 2, x.shape, generator=gen, device=x.device).to(x.dtype) * 2 - 1
        return ops.clamp(x + self.params.eps * s, box), 1, {}
'''

SIMULATE = "n_per_class=4,cube=16,snr=1.0,seed=1,classes=1bxn+3j9i"


def _clean() -> None:
    for folder in ("defenses", "models", "attacks"):
        for path in (PKG / folder).glob(f"{PREFIX}*.py"):
            path.unlink()
        for path in (PKG / folder / "__pycache__").glob(f"{PREFIX}*"):
            path.unlink()


@pytest.fixture
def contribute():
    """Write a module into the package as a contributor would; removed afterwards."""
    _clean()

    def write(folder: str, text: str) -> Path:
        path = PKG / folder / f"{PREFIX}_{folder}.py"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    yield write
    _clean()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_cryoguard.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def _checkpoint_meta(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return json.loads(meta["cryoguard"])


def test_a_new_defense_is_one_module(contribute, tmp_path):
    contribute("defenses", DEFENSE)
    listed = _cli("train", "--list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "scaled_ce" in listed.stdout and "weight" in listed.stdout
    out = tmp_path / "scaled.safetensors"
    res = _cli("train", "--simulate", SIMULATE, "--model", "cb3d", "--tiny", "--defense",
               "scaled-ce", "--set", "weight=0.5", "--epochs", "1", "--batch-size", "4",
               "--device", "cpu", "--out", str(out), "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    meta = _checkpoint_meta(out)
    text = json.dumps(meta)
    assert "scaled_ce" in text and '"weight": 0.5' in text
    bad = _cli("train", "--simulate", SIMULATE, "--tiny", "--defense", "scaled-ce", "--set",
               "weight=-1", "--epochs", "1", "--out", str(tmp_path / "bad.safetensors"),
               cwd=tmp_path)
    assert bad.returncode == 2 and "weight" in bad.stderr.splitlines()[-1]


def test_a_new_model_is_one_module(contribute, tmp_path):
    contribute("models", MODEL)
    listed = _cli("models", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "probe_net" in listed.stdout
    out = tmp_path / "probe.safetensors"
    res = _cli("train", "--simulate", SIMULATE, "--model", "probe_net", "--set", "width=2",
               "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--out", str(out),
               cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "probe_net" in json.dumps(_checkpoint_meta(out))


def test_a_new_attack_is_one_module(contribute, tmp_path):
    contribute("attacks", ATTACK)
    listed = _cli("attacks", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "sign_step" in listed.stdout
    data = tmp_path / "data.npz"
    made = _cli("simulate-dataset", "--out", str(data), "--per-class", "2", "--cube", "28",
                cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    out = tmp_path / "adv.npz"
    res = _cli("attack", str(data), "--attack", "sign-step", "--eps", "0.2", "--out", str(out),
               "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True
    import numpy as np

    with np.load(out) as f:
        assert float(np.abs(f["perturbation"]).max()) == pytest.approx(0.2, rel=1e-4)
