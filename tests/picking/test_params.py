"""DoGParams: the picker's parameters and defaults, declared once."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from napari_cryoguard import CryoGuardError
from napari_cryoguard.params import fields_of
from napari_cryoguard.picking import (
    DoGParams,
    choose_polarity,
    dog_preview,
    iter_pick_particles,
    pick_particles,
)


def test_functions_take_their_defaults_from_dogparams():
    defaults = {f.name: f.default for f in dataclasses.fields(DoGParams)}
    assert defaults["sigma1"] == 7.0 and defaults["k"] == 1.1  # RAT, section IV.A
    for fn in (pick_particles, iter_pick_particles):
        sig = inspect.signature(fn).parameters
        for name, value in defaults.items():
            assert sig[name].default == value, (fn.__name__, name)
    assert "progress" in inspect.signature(pick_particles).parameters
    assert inspect.signature(dog_preview).parameters["polarity"].default == defaults["polarity"]
    assert inspect.signature(choose_polarity).parameters["k"].default == defaults["k"]


def test_choices_and_help_come_from_the_dataclass():
    by_name = {f.name: f for f in fields_of(DoGParams)}
    assert by_name["polarity"].choices == ("bright", "dark", "auto")
    assert by_name["sigma_unit"].choices == ("voxel", "angstrom")
    assert "RAT" in by_name["sigma1"].help and "z-score" in by_name["threshold"].help


@pytest.mark.parametrize("kwargs, match", [
    ({"sigma1": 0}, "sigma1"), ({"k": 1.0}, "k must be > 1"), ({"polarity": "grey"}, "polarity"),
    ({"sigma_unit": "nm"}, "sigma_unit"), ({"border": -1}, "border"),
    ({"min_distance": -1.0}, "min_distance"), ({"max_picks": 2.5}, "max_picks"),
])
def test_bad_values_raise_the_package_error(kwargs, match):
    with pytest.raises(CryoGuardError, match=match):
        DoGParams(**kwargs)


def test_derived_values():
    p = DoGParams(sigma1=50.0, sigma_unit="angstrom", max_picks=3.0)
    assert p.sigma1_voxels(10.0) == 5.0 and p.min_distance_voxels(10.0) == 10.0
    assert p.border_voxels == 14 and p.max_picks == 3 and isinstance(p.max_picks, int)
    assert DoGParams(border=0).border_voxels == 0


def test_border_note_only_when_the_border_leaves_little_to_pick_in():
    from napari_cryoguard.picking.params import border_note

    assert border_note((200, 512, 512), 14) is None  # a usual tomogram: 86 % left
    assert border_note((32, 128, 128), 0) is None
    note = border_note((32, 128, 128), 14, option="--border")
    assert note.startswith("the border of 14 voxels leaves 8 % of the tomogram")
    assert "(z 14-17 of 32)" in note and "lower --border" in note
    assert "nothing along z: it has 20 voxels" in border_note((20, 128, 128), 14)
