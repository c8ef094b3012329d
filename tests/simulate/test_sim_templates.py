"""Bundled templates: listing, loading, rescaling, centring, default classes."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest
from scipy import ndimage

from napari_cryoguard import CryoGuardError
from napari_cryoguard.simulate import (
    DEFAULT_CLASSES,
    describe_template,
    list_templates,
    load_template,
    template_radius,
)


def test_default_classes_are_bundled_with_licence():
    names = list_templates()
    assert set(DEFAULT_CLASSES) <= set(names)
    assert 4 <= len(DEFAULT_CLASSES) <= 6
    folder = resources.files("napari_cryoguard").joinpath("data", "templates")
    assert folder.joinpath("LICENSE").is_file()
    assert "Apache" in folder.joinpath("SOURCE.md").read_text()


@pytest.mark.parametrize("name", DEFAULT_CLASSES)
def test_loaded_template_is_normalised_centred_and_fits_a_28_cube(name):
    t = load_template(name)
    assert t.dtype == np.float32 and t.ndim == 3
    assert len(set(t.shape)) == 1 and t.shape[0] % 2 == 1
    assert t.max() == pytest.approx(1.0) and t.min() >= 0.0
    half = (t.shape[0] - 1) / 2
    np.testing.assert_allclose(ndimage.center_of_mass(t), [half] * 3, atol=0.3)
    # support well inside the cube, in every orientation, with the default 2-voxel shift
    assert template_radius(name) + 2.0 < 14.0
    # cropped: nothing (above 1 %) on the cube's faces
    faces = np.concatenate([t[0].ravel(), t[-1].ravel(), t[:, 0].ravel(), t[:, :, -1].ravel()])
    assert faces.max() < 0.01


def test_rescaling_changes_size_by_voxel_ratio():
    name = DEFAULT_CLASSES[0]
    r10 = template_radius(name, 10.0)
    r5 = template_radius(name, 5.0)
    r20 = template_radius(name, 20.0)
    assert r5 / r10 == pytest.approx(2.0, rel=0.1)
    assert r20 / r10 == pytest.approx(0.5, rel=0.15)
    v10 = describe_template(name, 10.0)["voxels"]
    v5 = describe_template(name, 5.0)["voxels"]
    assert v5 / v10 == pytest.approx(8.0, rel=0.1)


def test_describe_is_json_friendly_and_classes_differ():
    figs = {n: describe_template(n) for n in DEFAULT_CLASSES}
    json.dumps(figs)
    # clearly different: no two default classes share size and shape
    keys = {(f["voxels"] // 100, f["extent"][0] // 2) for f in figs.values()}
    assert len(keys) == len(DEFAULT_CLASSES)


def test_returned_template_is_a_copy():
    a = load_template(DEFAULT_CLASSES[0])
    a[...] = 0
    assert load_template(DEFAULT_CLASSES[0]).max() == pytest.approx(1.0)


def test_template_from_path(tmp_path):
    import mrcfile

    vol = np.zeros((20, 20, 20), np.float32)
    vol[8:12, 6:14, 9:11] = 5.0
    path = tmp_path / "box.mrc"
    with mrcfile.new(path) as m:
        m.set_data(vol)
        m.voxel_size = 10.0
    t = load_template(str(path))
    assert t.max() == pytest.approx(1.0)
    with pytest.raises(CryoGuardError, match="does not exist"):
        load_template(str(tmp_path / "missing.mrc"))


def test_unknown_template_and_bad_voxel_size():
    with pytest.raises(CryoGuardError, match="1bxn"):
        load_template("no-such-complex")
    with pytest.raises(CryoGuardError, match="voxel size"):
        load_template(DEFAULT_CLASSES[0], voxel_size=0)
