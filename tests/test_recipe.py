"""The training recipe: the papers' defaults, declared once and read by the CLI and runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from napari_cryoguard import CryoGuardError
from napari_cryoguard.recipe import Recipe


def test_recipe_defaults_follow_the_papers():
    r = Recipe()
    assert r.optimizer == "adam" and r.resolved_lr() == pytest.approx(1e-4)
    assert r.batch_size == 16 and r.val_fraction == pytest.approx(0.2)
    assert Recipe(optimizer="sgd").resolved_lr() == pytest.approx(0.005)
    assert Recipe(optimizer="sgd", lr=0.1).resolved_lr() == pytest.approx(0.1)
    cos = Recipe(schedule="cosine", epochs=10)
    assert cos.lr_factor(0) == pytest.approx(1.0) and cos.lr_factor(5) == pytest.approx(0.5)
    step = Recipe(schedule="step", epochs=9, gamma=0.5)
    assert [step.lr_factor(e) for e in (0, 2, 3, 6)] == [1.0, 1.0, 0.5, 0.25]
    with pytest.raises(CryoGuardError, match="adam, sgd"):
        Recipe(optimizer="rmsprop")
    with pytest.raises(CryoGuardError, match="val_fraction"):
        Recipe(patience=3, val_fraction=0.0)
    with pytest.raises(CryoGuardError, match="unknown recipe option"):
        Recipe.from_dict({}, epoch=3)


def test_cli_and_runs_take_their_training_defaults_from_the_recipe():
    from napari_cryoguard.cli.train import build_parser
    from napari_cryoguard.runs import train_command

    r = Recipe()
    args = build_parser().parse_args([])
    assert args.epochs is None and args.lr is None  # unset: the recipe (or --resume) decides
    text = " ".join(build_parser().format_help().split())
    assert f"(default: {r.epochs})" in text and f"(default: {r.batch_size})" in text
    argv = train_command(simulate={"n_per_class": 4}, out="m", events="e")
    assert argv[argv.index("--epochs") + 1] == str(r.epochs)
    assert argv[argv.index("--batch-size") + 1] == str(r.batch_size)
    assert argv[argv.index("--optimizer") + 1] == r.optimizer


def test_recipe_checks_raise_cryoguard_errors_and_imports_no_torch():
    for bad in ({"epochs": 0}, {"lr": -1.0}, {"seed": -1}, {"weight_decay": -0.1},
                {"val_fraction": 1.0}, {"schedule": "linear"}):
        with pytest.raises(CryoGuardError):
            Recipe(**bad)
    probe = "import sys, napari_cryoguard.recipe; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120)
    assert res.stdout.strip() == "False", res.stderr
