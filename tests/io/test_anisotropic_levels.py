"""OME-Zarr levels binned in y and x only (what ome-zarr-py's default ``Scaler`` writes:
2D downsampling, z kept) have voxels that are not cubic: said when opened, refused when
picks are put on them (one voxel size cannot index them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_cryoguard import CryoGuardError
from napari_cryoguard.io import Picks, read_tomogram

DATA = Path(__file__).resolve().parents[1] / "data"


def test_anisotropic_level_is_said_and_refused_for_picks(tmp_path):
    pytest.importorskip("zarr")
    dst = tmp_path / "TS_demo.zarr"
    shutil.copytree(DATA / "omezarr" / "TS_demo.zarr", dst)
    attrs = json.loads((dst / ".zattrs").read_text())
    for i, ds in enumerate(attrs["multiscales"][0]["datasets"]):
        ds["coordinateTransformations"] = [
            {"type": "scale", "scale": [7.5, 7.5 * 2**i, 7.5 * 2**i]}]
    (dst / ".zattrs").write_text(json.dumps(attrs))
    level1 = read_tomogram(dst, voxel_size=15.0)
    assert level1.voxel_size_zyx == (7.5, 15.0, 15.0)
    assert any("not cubic" in n and "7.5, 15, 15" in n for n in level1.notes)
    picks = Picks(coords=np.array([[4.0, 6.0, 8.0]]), voxel_size=7.5, tomo_names=["TS_demo"])
    with pytest.raises(CryoGuardError, match=r"7\.5, 15, 15 Angstrom \(z, y, x\), not cubic"):
        picks.on_tomogram(level1)
    level0 = read_tomogram(dst)  # cubic: fine
    assert not any("not cubic" in n for n in level0.notes)
    np.testing.assert_allclose(picks.on_tomogram(level0).coords, [[4.0, 6.0, 8.0]])
