"""copick files written by copick itself, and OME-Zarr translations applied to picks.

``tests/data/copick/copick_project`` is a copick project written by copick 1.31.0 (see
tests/data/copick/NOTICE.md): run ``TS_demo``, a ``wbp`` OME-Zarr tomogram at 7.5
Angstrom with levels 0 and 1, and ``Picks/cryoguard_0_ribosome.json`` holding the three
bright voxels of TS_demo, ZYX (4, 6, 8), (10, 16, 20), (12, 8, 26), as copick stored
them: ``location`` (x, y, z) = (60, 45, 30), (150, 120, 75), (195, 60, 90) Angstrom.
The zarr chunk files (271 KB each, copick's 256^3 blosc chunks) are not bundled: the
tests write the volume into a temporary copy with zarr, as copick did.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_cryoguard import CryoGuardError
from napari_cryoguard.io import Picks, read_picks, read_tomogram

DATA = Path(__file__).resolve().parents[1] / "data"
PROJECT = DATA / "copick" / "copick_project"
RUN = Path("overlay") / "ExperimentRuns" / "TS_demo"
BRIGHT = np.array([(4, 6, 8), (10, 16, 20), (12, 8, 26)], dtype=float)


def _has_note(obj, *words) -> bool:
    return any(all(w in n for w in words) for n in obj.notes)


def _project(tmp_path) -> Path:
    """A copy of the copick project with its two levels' voxels written back."""
    zarr = pytest.importorskip("zarr")
    dst = tmp_path / "project"
    shutil.copytree(PROJECT, dst)
    vol = np.zeros((16, 24, 32), np.float32)
    for p in BRIGHT.astype(int):
        vol[tuple(p)] = 10.0
    store = dst / RUN / "VoxelSpacing7.500" / "wbp.zarr"
    zarr.open_array(str(store / "0"), mode="r+")[:] = vol
    zarr.open_array(str(store / "1"), mode="r+")[:] = vol.reshape(8, 2, 12, 2, 16, 2).mean(
        axis=(1, 3, 5))
    return dst


def test_copick_written_file_is_as_bundled():
    text = (PROJECT / RUN / "Picks" / "cryoguard_0_ribosome.json").read_text()
    obj = json.loads(text)
    assert obj["pickable_object_name"] == "ribosome" and obj["run_name"] == "TS_demo"
    assert obj["voxel_spacing"] is None and obj["unit"] == "angstrom"
    assert [p["location"] for p in obj["points"]] == [
        {"x": 60.0, "y": 45.0, "z": 30.0}, {"x": 150.0, "y": 120.0, "z": 75.0},
        {"x": 195.0, "y": 60.0, "z": 90.0}]


def test_copick_written_picks_land_on_the_bright_voxels(tmp_path):
    project = _project(tmp_path)
    path = project / RUN / "Picks" / "cryoguard_0_ribosome.json"
    # the file has no voxel_spacing; the run's only VoxelSpacing folder gives 7.5 A
    picks = read_picks(path)
    assert picks.voxel_size == 7.5 and _has_note(picks, "VoxelSpacing7.500")
    np.testing.assert_allclose(picks.coords, BRIGHT)
    assert picks.tomo_names.tolist() == ["TS_demo"] * 3
    assert picks.class_names == ["ribosome"] and picks.labels.tolist() == [0, 0, 0]
    assert picks.origin_zyx == (0.0, 0.0, 0.0)
    tomo = read_tomogram(project / RUN / "VoxelSpacing7.500" / "wbp.zarr")
    assert tomo.name == "TS_demo" and _has_note(tomo, "copick project", "wbp")
    assert tomo.voxel_size_zyx == (7.5, 7.5, 7.5)
    on = picks.on_tomogram(tomo)
    assert not _has_note(on, "assumed they are the same")  # names match
    for z, y, x in np.rint(on.coords).astype(int):
        assert float(tomo.data[z, y, x]) == 10.0
    # the tomogram given as tomograms= gives the voxel size; level 1 at 15 A
    coarse = read_tomogram(tomo.path, voxel_size=15.0)
    at_15 = read_picks(path, tomograms=coarse)
    np.testing.assert_allclose(at_15.coords, BRIGHT / 2)
    assert at_15.voxel_size == 15.0 and _has_note(at_15, "taken from tomogram")
    by_path = read_picks(path, tomograms=tomo.path)
    np.testing.assert_allclose(by_path.coords, BRIGHT)


def test_copick_project_with_two_spacings_still_needs_a_voxel_size(tmp_path):
    project = _project(tmp_path)
    (project / RUN / "VoxelSpacing15.000").mkdir()
    with pytest.raises(CryoGuardError, match=r"tomograms at 7\.5, 15 A"):
        read_picks(project / RUN / "Picks" / "cryoguard_0_ribosome.json")


def _translated_pyramid(tmp_path) -> Path:
    """TS_demo.zarr with the half-voxel translations binned levels have (ome-zarr-py,
    ngff-zarr): level 1 (15 A) at 3.75 A, level 2 (30 A) at 11.25 A."""
    dst = tmp_path / "TS_demo.zarr"
    shutil.copytree(DATA / "omezarr" / "TS_demo.zarr", dst)
    attrs = json.loads((dst / ".zattrs").read_text())
    for ds, t in zip(attrs["multiscales"][0]["datasets"], (0.0, 3.75, 11.25), strict=True):
        ds["coordinateTransformations"].append({"type": "translation", "translation": [t] * 3})
    (dst / ".zattrs").write_text(json.dumps(attrs))
    return dst


def test_omezarr_translation_places_angstrom_picks(tmp_path):
    zarr_path = _translated_pyramid(tmp_path)
    level1 = read_tomogram(zarr_path, voxel_size=15.0)
    assert level1.translate_zyx == (3.75, 3.75, 3.75)
    assert level1.origin_zyx == (3.75, 3.75, 3.75)
    copick = read_picks(PROJECT / RUN / "Picks" / "cryoguard_0_ribosome.json", voxel_size=7.5)
    on = copick.on_tomogram(level1)
    # Angstrom (c * 7.5) minus the level's 3.75 A translation, over 15 A
    np.testing.assert_allclose(on.coords, (BRIGHT * 7.5 - 3.75) / 15.0)
    assert on.origin_zyx == (3.75, 3.75, 3.75)
    assert _has_note(on, "first voxel lies at 3.75, 3.75, 3.75", "translation")
    # the bright voxel's bin holds the maximum of level 1
    data = np.asarray(level1.data)
    for (z, y, x), c in zip(np.rint(on.coords).astype(int), BRIGHT.astype(int), strict=True):
        assert data[z, y, x] == pytest.approx(data[tuple(c // 2)])
    # in world coordinates (napari: translate + index * scale) level 1 and the picks agree
    np.testing.assert_allclose(np.asarray(level1.translate_zyx) + on.coords * 15.0, BRIGHT * 7.5)
    # the same through read_picks(tomograms=): converted into the level's frame at once
    direct = read_picks(PROJECT / RUN / "Picks" / "cryoguard_0_ribosome.json",
                        tomograms=level1)
    np.testing.assert_allclose(direct.coords, on.coords)


def test_voxel_picks_are_not_shifted_by_a_translation(tmp_path):
    level1 = read_tomogram(_translated_pyramid(tmp_path), voxel_size=15.0)
    voxels = Picks(coords=BRIGHT / 2, voxel_size=15.0)  # RELION-like: no origin
    assert voxels.origin_zyx is None
    assert voxels.on_tomogram(level1) is voxels
    at_7 = voxels.at_voxel_size(7.5, origin_zyx=level1.translate_zyx)
    np.testing.assert_allclose(at_7.coords, BRIGHT)
    assert not _has_note(at_7, "first voxel lies")


def test_portal_fixture_translation_in_xyz_axis_order(tmp_path):
    """The Portal's own test tomogram (axes x, y, z) with a translation added: the
    translation is read in the axes' order and returned ZYX."""
    zarr = pytest.importorskip("zarr")
    dst = tmp_path / "RUN1.zarr"
    shutil.copytree(DATA / "omezarr" / "portal_test_RUN1.zarr", dst)
    attrs = json.loads((dst / ".zattrs").read_text())
    attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"].append(
        {"type": "translation", "translation": [28.16, 0.0, 14.08]})  # x, y, z
    (dst / ".zattrs").write_text(json.dumps(attrs))
    data = np.zeros((4, 4, 4), np.float32)
    for j in range(4):
        data[:, j] = j + 1.0
    zarr.open_array(str(dst / "0"), mode="r+")[:] = data
    tomo = read_tomogram(dst)
    assert tomo.translate_zyx == pytest.approx((14.08, 0.0, 28.16))
    assert _has_note(tomo, "translation of 14.08, 0, 28.16")
    # a copick pick at x = 28.16 + 2 * 14.08, y = 14.08, z = 14.08 + 3 * 14.08 Angstrom
    pick = tmp_path / "RUN1_ribosome.json"
    pick.write_text(json.dumps({
        "pickable_object_name": "ribosome", "user_id": "u", "session_id": "0",
        "run_name": "RUN1", "voxel_spacing": 14.08, "unit": "angstrom",
        "points": [{"location": {"x": 56.32, "y": 14.08, "z": 56.32}}]}))
    on = read_picks(pick).on_tomogram(tomo)
    np.testing.assert_allclose(on.coords, [[3.0, 1.0, 2.0]])
    assert float(np.asarray(tomo.data)[3, 1, 2]) == 2.0  # the y = 1 plane holds 2.0


def test_napari_layers_of_a_translated_tomogram_and_its_copick_picks(tmp_path):
    pytest.importorskip("napari")
    from napari.components import ViewerModel

    from napari_cryoguard._napari._reader import _picks_layers, tomogram_layer_data

    level1 = read_tomogram(_translated_pyramid(tmp_path), voxel_size=15.0)
    data, kwargs, kind = tomogram_layer_data(level1)
    assert kind == "image" and kwargs["translate"] == (3.75, 3.75, 3.75)
    plain = tomogram_layer_data(read_tomogram(DATA / "omezarr" / "TS_demo.zarr"))[1]
    assert "translate" not in plain
    viewer = ViewerModel()
    viewer.add_image(data, **kwargs)
    layers, messages = _picks_layers(PROJECT / RUN / "Picks" / "cryoguard_0_ribosome.json",
                                     viewer)
    [(coords, pkw, pkind)] = layers
    assert pkind == "points" and pkw["translate"] == (3.75, 3.75, 3.75)
    world = np.asarray(pkw["translate"]) + np.asarray(coords) * np.asarray(pkw["scale"])
    np.testing.assert_allclose(world, BRIGHT * 7.5)  # on the particles, in Angstrom
    assert any("first voxel lies at 3.75" in m for m in messages)


def test_picks_origin_is_checked():
    with pytest.raises(CryoGuardError, match="origin"):
        Picks(coords=np.zeros((1, 3)), origin_zyx=(0.0, float("nan"), 0.0))
    with pytest.raises(CryoGuardError, match="origin"):
        Picks(coords=np.zeros((1, 3)), origin_zyx=(0.0, 0.0, 0.0)).at_voxel_size(
            2.0, origin_zyx=(1.0, 2.0))
