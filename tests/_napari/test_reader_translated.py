"""Picks over a translated OME-Zarr level, in a real viewer: world coordinates agree.

The pyramid is TS_demo.zarr with the half-voxel translations binned levels have
(ome-zarr-py, ngff-zarr): level 1 (15 A) at 3.75 A. copick's picks of TS_demo (written by
copick itself, tests/data/copick/NOTICE.md) are the bright voxels ZYX (4, 6, 8),
(10, 16, 20), (12, 8, 26) of level 0, i.e. (x, y, z) = (60, 45, 30) A etc.; in napari's
world (Angstrom) they must lie there whichever level they are drawn over, and the cube
cut for a pick must come from the voxel under the point.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_cryoguard._napari._reader import tomogram_layer_data
from napari_cryoguard.io import read_tomogram
from napari_cryoguard.layerdata import layer_picks

DATA = Path(__file__).resolve().parents[1] / "data"
PROJECT = DATA / "copick" / "copick_project"
PICKS = Path("overlay") / "ExperimentRuns" / "TS_demo" / "Picks" / "cryoguard_0_ribosome.json"
BRIGHT = np.array([(4, 6, 8), (10, 16, 20), (12, 8, 26)], dtype=float)

pytestmark = pytest.mark.gui


def _pyramid(tmp_path) -> Path:
    dst = tmp_path / "TS_demo.zarr"
    shutil.copytree(DATA / "omezarr" / "TS_demo.zarr", dst)
    attrs = json.loads((dst / ".zattrs").read_text())
    for ds, t in zip(attrs["multiscales"][0]["datasets"], (0.0, 3.75, 11.25), strict=True):
        ds["coordinateTransformations"].append({"type": "translation", "translation": [t] * 3})
    (dst / ".zattrs").write_text(json.dumps(attrs))
    return dst


def _picks_file(tmp_path) -> Path:
    dst = tmp_path / "project"
    shutil.copytree(PROJECT, dst)  # voxel size 7.5 A from the run's VoxelSpacing folder
    return dst / PICKS


def _add(viewer, tomo):
    data, kwargs, _ = tomogram_layer_data(tomo)
    return viewer.add_image(data, **kwargs)


def _world(layer):
    return np.array([layer.data_to_world(c) for c in layer.data])


def test_copick_picks_opened_over_a_translated_level_lie_on_the_particles(viewer, tmp_path):
    level1 = _add(viewer, read_tomogram(_pyramid(tmp_path), voxel_size=15.0))
    assert tuple(level1.translate) == (3.75, 3.75, 3.75) and tuple(level1.scale) == (15.0,) * 3
    [points] = viewer.open(str(_picks_file(tmp_path)), plugin="napari-cryoguard")
    # by hand: level-1 index (4 * 7.5 - 3.75) / 15 = 1.75, drawn at 1.75 * 15 + 3.75 = 30 A
    np.testing.assert_allclose(points.data[0], [1.75, 2.75, 3.75])
    np.testing.assert_allclose(_world(points), BRIGHT * 7.5)
    assert tuple(points.translate) == (3.75, 3.75, 3.75)
    assert points.metadata["voxel_size"] == 15.0 and points.metadata["tomo_name"] == "TS_demo"
    # the level-1 voxel under each point is the bin of the bright level-0 voxel (its maximum)
    data = np.asarray(level1.data)
    for w, c in zip(_world(points), BRIGHT.astype(int), strict=True):
        z, y, x = np.round(level1.world_to_data(w)).astype(int)
        assert data[z, y, x] == pytest.approx(data[tuple(c // 2)])
        assert data[z, y, x] > 1.0  # 10 / 8 + noise: the bright bin, not background


def test_picks_of_one_level_are_cut_on_another_at_the_same_world_place(viewer, tmp_path):
    pyramid = _pyramid(tmp_path)
    level1 = _add(viewer, read_tomogram(pyramid, voxel_size=15.0))
    [points] = viewer.open(str(_picks_file(tmp_path)), plugin="napari-cryoguard")
    level0 = _add(viewer, read_tomogram(pyramid))
    assert tuple(level0.translate) == (0.0, 0.0, 0.0)
    # the picks layer drawn over level 1 (translate 3.75 A), used on level 0 (translate 0)
    out = layer_picks(points, level0, image_voxel_size=7.5)
    np.testing.assert_allclose(out["coords"], BRIGHT)
    for c in np.round(out["coords"]).astype(int):
        assert float(level0.data[tuple(c)]) == 10.0
    assert any("translation" in n for n in out["notes"])
    # and back: each point's level-1 index is where it is drawn
    again = layer_picks(points, level1, image_voxel_size=15.0)
    np.testing.assert_allclose(again["coords"], points.data)
    for c, w in zip(again["coords"], _world(points), strict=True):
        np.testing.assert_allclose(np.asarray(level1.data_to_world(c)), w)


def test_copick_picks_opened_first_land_right_on_a_translated_level(viewer, tmp_path):
    [points] = viewer.open(str(_picks_file(tmp_path)), plugin="napari-cryoguard")
    np.testing.assert_allclose(_world(points), BRIGHT * 7.5)  # no tomogram: copick's frame
    level1 = _add(viewer, read_tomogram(_pyramid(tmp_path), voxel_size=15.0))
    out = layer_picks(points, level1, image_voxel_size=15.0)
    np.testing.assert_allclose(out["coords"], (BRIGHT * 7.5 - 3.75) / 15.0)
    np.testing.assert_allclose([level1.data_to_world(c) for c in out["coords"]], BRIGHT * 7.5)


def test_picks_over_an_image_with_non_cubic_voxels_keep_their_own(viewer, tmp_path):
    """An image whose voxels are 7.5 x 15 x 15 A (z, y, x): the picks cannot be put in
    its voxels, so they are drawn in their own 7.5 A voxels, at the right place in the
    world, with a warning."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    viewer.add_image(np.zeros((16, 12, 16), np.float32), name="TS_demo", scale=(7.5, 15.0, 15.0),
                     metadata={"voxel_size": 15.0})
    before = len(notification_manager.records)
    [points] = viewer.open(str(_picks_file(tmp_path)), plugin="napari-cryoguard")
    warned = [str(n.message) for n in notification_manager.records[before:]
              if n.severity == NotificationSeverity.WARNING]
    assert tuple(points.scale) == (7.5, 7.5, 7.5)
    np.testing.assert_allclose(points.data, BRIGHT)
    np.testing.assert_allclose(_world(points), BRIGHT * 7.5)
    assert any("not cubic" in w and "7.5, 15, 15" in w for w in warned), warned


def test_the_widgets_picks_helpers_place_picks_through_both_translates(viewer, tmp_path):
    """What Classify and Attack call (``_picks.tomogram_picks`` for all picks,
    ``_picks.pick_particle`` for one): picks drawn over level 1, used on level 0."""
    from napari_cryoguard._napari import _picks

    pyramid = _pyramid(tmp_path)
    _add(viewer, read_tomogram(pyramid, voxel_size=15.0))
    [points] = viewer.open(str(_picks_file(tmp_path)), plugin="napari-cryoguard")
    points.name = _picks.PICKS_LAYER
    level0 = _add(viewer, read_tomogram(pyramid))
    out = _picks.tomogram_picks(viewer, level0, "classifying picks")
    np.testing.assert_allclose(out["coords"], BRIGHT)
    src = _picks.pick_particle(viewer, 1, level0)
    assert src["translate"] == (3.75, 3.75, 3.75) and src["image_translate"] == (0.0, 0.0, 0.0)
    # particle_for_model's placement: picks voxels x scale, then the translate difference
    center = np.asarray(src["center"]) * src["scale"]
    center += (np.asarray(src["translate"]) - np.asarray(src["image_translate"])) / src["voxel_size"]
    np.testing.assert_allclose(center, BRIGHT[1])
