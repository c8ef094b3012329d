"""`cryoguard train --init CKPT`: start a defense from another run's weights."""

from __future__ import annotations

import torch

from napari_cryoguard.cli.train import main as train_main
from napari_cryoguard.models import load_checkpoint

SIM = "n_per_class=3,cube=20,snr=0.5,seed=1"


def test_init_starts_from_the_checkpoint(tmp_path):
    first = tmp_path / "std.safetensors"
    assert train_main(["--simulate", SIM, "--model", "cb3d", "--tiny", "--epochs", "1",
                       "--device", "cpu", "--out", str(first), "--quiet"]) == 0
    second = tmp_path / "at.safetensors"
    # a vanishing learning rate: the weights must stay those of --init
    assert train_main(["--simulate", SIM, "--init", str(first), "--defense", "at",
                       "--set", "steps=1", "--epochs", "1", "--lr", "1e-12", "--device", "cpu",
                       "--out", str(second), "--quiet"]) == 0
    m1, _ = load_checkpoint(first)
    m2, meta2 = load_checkpoint(second)
    assert meta2["defense"] == "at" and meta2["arch"] == "cb3d"
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-8), k


def test_fresh_model_differs_from_init(tmp_path):
    """Control: without --init the same command starts from other weights."""
    first = tmp_path / "std.safetensors"
    assert train_main(["--simulate", SIM, "--model", "cb3d", "--tiny", "--epochs", "1", "--seed", "3",
                       "--device", "cpu", "--out", str(first), "--quiet"]) == 0
    second = tmp_path / "at.safetensors"
    assert train_main(["--simulate", SIM, "--model", "cb3d", "--tiny", "--defense", "at",
                       "--set", "steps=1", "--epochs", "1", "--lr", "1e-12", "--device", "cpu",
                       "--out", str(second), "--quiet"]) == 0
    m1, _ = load_checkpoint(first)
    m2, _ = load_checkpoint(second)
    assert any(not torch.allclose(a, b, atol=1e-8)
               for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True))


def test_init_refuses_another_architecture(tmp_path, capsys):
    first = tmp_path / "std.safetensors"
    assert train_main(["--simulate", SIM, "--model", "cb3d", "--tiny", "--epochs", "1",
                       "--device", "cpu", "--out", str(first), "--quiet"]) == 0
    code = train_main(["--simulate", SIM, "--init", str(first), "--model", "rb3d", "--epochs", "1",
                       "--device", "cpu", "--out", str(tmp_path / "x.safetensors"), "--quiet"])
    assert code == 2
    assert "holds a 'cb3d' model" in capsys.readouterr().err
