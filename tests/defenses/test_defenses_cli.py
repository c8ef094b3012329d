"""Every robust-training defense trains one epoch through ``cryoguard train`` and writes a
loadable checkpoint; IMA's margins ride along and survive a resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from napari_cryoguard.cli.train import main as train_main
from napari_cryoguard.defenses import available_defenses
from napari_cryoguard.models import load_checkpoint

SPEC = "n_per_class=3,cube=20,snr=0.5,seed=1"


#: settings that keep one epoch of a defense tiny (a registered defense not named here
#: trains with its defaults)
CASES = {
    "at": ["steps=1"],
    "trades": ["steps=1"],
    "rat": ["steps=1", "steps_prime=1"],
    "rst": ["steps=1"],
    "mirst": ["steps=2"],
    "gr": [],
    "llr": ["steps=1"],
    "ima": ["n_pgd=2", "n_binary=2"],
    "simclr": ["proj_hidden=16", "proj_dim=8"],
}


def _argv(name, out, epochs=1, extra=()):
    argv = ["--simulate", SPEC, "--model", "cb3d", "--tiny", "--defense", name]
    for s in CASES.get(name, []):
        argv += ["--set", s]
    return [*argv, "--epochs", str(epochs), "--out", str(out), "--quiet", *extra]


def _train(argv):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the simulator warns that 20^3 cuts particles
        assert train_main(argv) == 0


#: registered defenses whose training is tested in their own files, with why
TESTED_ELSEWHERE = {
    "standard": "test_trainer.py (the loop's own tests train it)",
    "semi": "test_standard_semi.py (it needs the autoencoder)",
}
#: every registered defense: one added to the package is tested here without an edit
EVERY = sorted(set(available_defenses()) - set(TESTED_ELSEWHERE))


def test_all_defenses_are_registered():
    assert set(CASES) <= set(available_defenses())
    assert set(TESTED_ELSEWHERE) <= set(available_defenses())


@pytest.mark.parametrize("name", EVERY)
def test_one_epoch_through_the_cli(name, tmp_path):
    out = tmp_path / f"{name}.safetensors"
    _train(_argv(name, out))
    model, meta = load_checkpoint(out)
    assert meta["defense"] == name and meta["epoch"] == 1
    assert model.arch_name == "cb3d"
    h = meta["history"][0]
    assert all(torch.isfinite(torch.tensor(v)) for k, v in h.items() if k.startswith("train_"))
    extra = meta["extra_tensors"]
    if name == "ima":
        m = extra["defense.margins"]
        assert m.shape == (15,) and bool((m > 0).all())
        assert bool((m <= meta["defense_params"]["eps_max"] + 1e-6).all())
    elif name == "simclr":
        assert extra["defense.head.0.weight"].shape[0] == 16
        assert "train_nt_xent" in h
    else:
        assert not extra


def test_ima_margins_resume_like_an_uninterrupted_run(tmp_path):
    # delta is fixed: by default it is eps_max / epochs, which differs between the runs
    extra = ["--lr", "0.01", "--set", "delta=0.01"]
    straight = tmp_path / "straight.safetensors"
    _train(_argv("ima", straight, epochs=2, extra=extra))
    part = tmp_path / "part.safetensors"
    _train(_argv("ima", part, epochs=1, extra=extra))
    _train(["--simulate", SPEC, "--resume", str(part), "--epochs", "2", "--quiet"])
    a = load_checkpoint(straight)[1]["extra_tensors"]
    b = load_checkpoint(part)[1]["extra_tensors"]
    torch.testing.assert_close(a["defense.margins"], b["defense.margins"])
    assert float(b["defense.delta"][0]) == pytest.approx(0.01)


def test_python_m_entry_point_writes_ima_margins(tmp_path):
    out = tmp_path / "ima.safetensors"
    cmd = [
        sys.executable,
        "-W",
        "ignore",
        "-m",
        "napari_cryoguard.cli",
        "train",
        *_argv("ima", out),
        "--json",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["ok"] and "train_margin" in summary["metrics"]
    _, meta = load_checkpoint(out)
    assert meta["extra_tensors"]["defense.margins"].shape == (15,)


def test_simclr_checkpoint_starts_another_defense(tmp_path):
    from napari_cryoguard.defenses import train
    from napari_cryoguard.defenses.training_data import parse_simulate_spec
    from napari_cryoguard.simulate import simulate_subtomograms

    pre = tmp_path / "simclr.safetensors"
    _train(_argv("simclr", pre))
    net, _ = load_checkpoint(pre)
    start = net.features[0].weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = simulate_subtomograms(**parse_simulate_spec(SPEC))
    res = train(
        data,
        model=net,
        defense="at",
        defense_params={"steps": 1},
        epochs=1,
        out=tmp_path / "at.safetensors",
        device="cpu",
    )
    model, meta = load_checkpoint(res.checkpoint)
    assert meta["defense"] == "at"
    # fine-tuned from the pre-trained weights (one small Adam step from them)
    moved = (model.features[0].weight.detach() - start).abs().max()
    assert 0 < float(moved) < 1e-2
