"""A pick file of several tomograms opened in a real viewer: never mixed, never drawn
silently over an unrelated tomogram.

- an open image layer matches some of the file's tomograms: only their rows, on them;
- none matches: one Points layer per tomogram, all hidden, and a warning naming the
  file's tomograms and the open image layers (no modal dialog: it cannot be answered
  headless or in a script);
- no image open: one layer per tomogram, only the first shown.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_cryoguard.io import Picks
from napari_cryoguard.io import write_picks as write_pick_file

DATA = Path(__file__).resolve().parents[1] / "data"
ZARR = DATA / "omezarr" / "TS_demo.zarr"
BRIGHT = np.array([(4, 6, 8), (10, 16, 20), (12, 8, 26)], dtype=float)

pytestmark = pytest.mark.gui


def _star(tmp_path, names=("TS_demo", "other")) -> Path:
    """3 picks of names[0] on TS_demo's bright voxels (7.5 A), 2 of names[1]."""
    coords = np.vstack([BRIGHT, [[1.0, 2.0, 3.0], [2.0, 3.0, 4.0]]])
    picks = Picks(coords=coords, tomo_names=[names[0]] * 3 + [names[1]] * 2, voxel_size=7.5)
    return write_pick_file(tmp_path / "particles.star", picks)


def _open(viewer, path):
    from napari.utils.notifications import NotificationSeverity, notification_manager

    before = len(notification_manager.records)
    added = viewer.open(str(path), plugin="napari-cryoguard")
    records = notification_manager.records[before:]
    warnings = [str(n.message) for n in records if n.severity == NotificationSeverity.WARNING]
    return added, warnings, [str(n.message) for n in records]


def test_no_match_gives_hidden_per_tomogram_layers_and_a_warning(viewer, tmp_path):
    [image] = viewer.open(str(ZARR), plugin="napari-cryoguard")
    added, warnings, _ = _open(viewer, _star(tmp_path, names=("TS_a", "TS_b")))
    assert [lay.name for lay in added] == ["particles TS_a", "particles TS_b"]
    assert [len(lay.data) for lay in added] == [3, 2]
    assert [lay.metadata["tomo_name"] for lay in added] == ["TS_a", "TS_b"]
    np.testing.assert_allclose(added[0].data, BRIGHT)
    np.testing.assert_allclose(added[1].data, [[1, 2, 3], [2, 3, 4]])
    assert [lay.visible for lay in added] == [False, False]  # nothing over TS_demo
    assert image.visible
    assert len(warnings) == 1, warnings
    for word in ("'TS_a'", "'TS_b'", "'TS_demo'", "2 tomograms", "hidden"):
        assert word in warnings[0], warnings[0]


def test_a_matching_image_gets_only_its_rows(viewer, tmp_path):
    [image] = viewer.open(str(ZARR), plugin="napari-cryoguard")
    added, warnings, messages = _open(viewer, _star(tmp_path))
    [points] = added
    assert points.name == "particles" and points.visible and warnings == []
    assert len(points.data) == 3 and points.metadata["tomo_name"] == "TS_demo"
    np.testing.assert_allclose([points.data_to_world(c) for c in points.data], BRIGHT * 7.5)
    for c in np.round(points.data).astype(int):
        assert float(image.data[tuple(c)]) == 10.0
    assert any("3 of 5 picks" in m and "2 tomograms in the file" in m for m in messages)


def test_two_matching_images_each_get_their_rows(viewer, tmp_path):
    viewer.open(str(ZARR), plugin="napari-cryoguard")
    viewer.add_image(np.zeros((8, 8, 8), np.float32), name="other.mrc", scale=(7.5,) * 3,
                     metadata={"voxel_size": 7.5})
    added, warnings, _ = _open(viewer, _star(tmp_path))
    assert [lay.name for lay in added] == ["particles TS_demo", "particles other.mrc"]
    assert [len(lay.data) for lay in added] == [3, 2] and warnings == []
    assert all(lay.visible for lay in added)
    assert added[1].metadata["tomo_name"] == "other.mrc"


def test_no_image_open_shows_only_the_first_tomogram(viewer, tmp_path):
    added, warnings, messages = _open(viewer, _star(tmp_path, names=("TS_a", "TS_b")))
    assert [lay.name for lay in added] == ["particles TS_a", "particles TS_b"]
    assert [lay.visible for lay in added] == [True, False] and warnings == []
    assert any("only 'TS_a' shown" in m for m in messages)
