"""``cryoguard models | attacks | templates``: the listings read the registries."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

from napari_cryoguard.cli import main

CRYOGUARD = str(Path(sys.executable).with_name("cryoguard"))


def _json(*argv) -> dict:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main([*argv, "--json", "--quiet"])
    assert code == 0
    lines = buf.getvalue().strip().splitlines()
    assert len(lines) == 1  # exactly one machine-readable line
    return json.loads(lines[0])


def test_attacks_lists_every_registered_attack_with_its_defaults():
    from napari_cryoguard.attacks import available_attacks, get_attack_params

    out = _json("attacks")
    assert out["ok"] and out["command"] == "attacks"
    assert out["attacks"] == available_attacks() and "fgsm" in out["attacks"]
    for name in out["attacks"]:
        params = get_attack_params(name)
        expected = {f.name: f.default for f in dataclasses.fields(params)
                    if f.default is not dataclasses.MISSING}
        got = out["parameters"][name]
        assert set(got) == {f.name for f in dataclasses.fields(params)}
        for key, value in expected.items():
            assert got[key] == (list(value) if isinstance(value, tuple) else value), (name, key)
        assert out["descriptions"][name], name
    assert out["parameters"]["fgsm"]["eps"] == get_attack_params("fgsm")().eps
    assert "linf" in out["facts"]["pgd"]["norms"]


def test_a_newly_registered_attack_is_listed_without_touching_the_cli():
    from napari_cryoguard.attacks import AttackParams, register_attack
    from napari_cryoguard.attacks.base import ATTACKS, Attack

    @dataclasses.dataclass
    class ShoutParams(AttackParams):
        """Parameters of the test attack.

        Attributes
        ----------
        volume
            how loud, in decibels
        """

        volume: float = 11.0

    @register_attack("shout_test", ShoutParams)
    class Shout(Attack):
        """Shout: a test attack that is never run."""

    try:
        out = _json("attacks")
        assert "shout_test" in out["attacks"]
        assert out["parameters"]["shout_test"]["volume"] == 11.0
        assert out["help"]["shout_test"]["volume"] == "how loud, in decibels"
        assert out["descriptions"]["shout_test"].startswith("Shout: a test attack")
    finally:
        ATTACKS.entries.pop(ATTACKS.key("shout_test"), None)


def test_attacks_prints_a_readable_list_and_attack_help_points_to_it():
    res = subprocess.run([CRYOGUARD, "attacks"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""  # the listing is for people: stderr, stdout kept for --json
    lines = res.stderr.splitlines()
    assert any(line.startswith("fgsm: ") for line in lines)
    assert any(line.strip().startswith("eps = ") for line in lines)
    help_text = subprocess.run([CRYOGUARD, "attack", "--help"], capture_output=True,
                               text=True, timeout=60).stdout
    flat = " ".join(help_text.split())
    assert "`cryoguard attacks` lists the registered attacks" in flat
    assert "fgsm, pgd" not in flat  # no hard-coded list of names to keep in step


def test_models_and_templates_still_list():
    from napari_cryoguard.models import available_models
    from napari_cryoguard.simulate import DEFAULT_CLASSES

    models = _json("models")
    assert models["architectures"] == sorted(available_models())
    templates = _json("templates")
    assert templates["default_classes"] == list(DEFAULT_CLASSES)
