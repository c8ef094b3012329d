"""Voxel pick files that do not say their voxel size (TomoTwin / crYOLO ``.coords``, IMOD
models in pixels, Dynamo tables without ``apix``) index the tomogram they were picked
on: opened over a 7.5 A tomogram in a real viewer they sit on its voxels, not shrunk
from an assumed 1 Angstrom to a 7.5th of their place."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_cryoguard.layerdata import layer_picks

DATA = Path(__file__).resolve().parents[1] / "data"
ZARR = DATA / "omezarr" / "TS_demo.zarr"

pytestmark = pytest.mark.gui


def test_coords_without_voxel_size_land_on_the_open_tomograms_voxels(viewer):
    [image] = viewer.open(str(ZARR), plugin="napari-cryoguard")
    path = DATA / "cryolo" / "tomotwin_test_coords.coords"  # x y z = 1 2 3 / 4 5 6 / 7 8 9
    [points] = viewer.open(str(path), plugin="napari-cryoguard")
    np.testing.assert_allclose(points.data, [[3, 2, 1], [6, 5, 4], [9, 8, 7]])
    np.testing.assert_allclose([points.data_to_world(c) for c in points.data],
                               np.array([[3, 2, 1], [6, 5, 4], [9, 8, 7]]) * 7.5)
    assert tuple(points.scale) == (7.5, 7.5, 7.5) and points.metadata["voxel_size"] == 7.5
    assert any("taken as voxel indices of this tomogram" in n for n in points.metadata["notes"])
    out = layer_picks(points, image, image_voxel_size=7.5)
    np.testing.assert_allclose(out["coords"], points.data)


def test_coords_opened_before_the_tomogram_index_it_once_opened(viewer):
    path = DATA / "imod" / "points.mod"  # 3dmod points x y z = 1 2 3, 0 1 1, 8 4 5 (pixels)
    [points] = viewer.open(str(path), plugin="napari-cryoguard")
    assert points.metadata["voxel_size"] == 1.0 and points.metadata["voxel_size_assumed"]
    [image] = viewer.open(str(ZARR), plugin="napari-cryoguard")
    out = layer_picks(points, image, image_voxel_size=7.5)
    # 3dmod's x, y count from the pixel edge: index (z, y - 0.5, x - 0.5), not divided by 7.5
    np.testing.assert_allclose(out["coords"], [[3, 1.5, 0.5], [1, 0.5, -0.5], [5, 3.5, 7.5]])
    assert any("taken as voxel indices" in n for n in out["notes"])
