"""copick's own files (tests/data/copick/copick_shifted, written by copick 1.31.0): its
picks JSON with translations in ``transformation_``, and its RELION 5 STAR and CSV
exports of the same picks, all read to the same voxels.

By hand (x y z Angstrom, 10 A voxels): point 1 location (100, 150, 60) + translation
(12, -8, 4) = (112, 142, 64) -> ZYX voxels (6.4, 14.2, 11.2); point 2 (250, 80, 120), no
translation -> (12, 8, 25); point 3 (310, 220, 40) + (-5, 15, 25) -> (6.5, 23.5, 30.5).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_cryoguard import CryoGuardError
from napari_cryoguard.io import read_picks

DATA = Path(__file__).resolve().parents[1] / "data" / "copick" / "copick_shifted"
EXPECTED = np.array([[6.4, 14.2, 11.2], [12.0, 8.0, 25.0], [6.5, 23.5, 30.5]])
LOCATION_ONLY = np.array([[6.0, 15.0, 10.0], [12.0, 8.0, 25.0], [4.0, 22.0, 31.0]])


def test_copick_json_with_translations():
    picks = read_picks(DATA / "cryoguard_0_ribosome.json", voxel_size=10.0)
    assert len(picks) == 3 and picks.tomo_names.tolist() == ["TS_shift"] * 3
    assert picks.class_names == ["ribosome"]
    np.testing.assert_allclose(picks.coords, EXPECTED, atol=1e-9)
    mats = picks.features["copick_transformation"].reshape(-1, 4, 4)
    np.testing.assert_allclose(mats[2, :3, 3], [-5.0, 15.0, 25.0])
    raw = read_picks(DATA / "cryoguard_0_ribosome.json", voxel_size=10.0, apply_shifts=False)
    np.testing.assert_allclose(raw.coords, LOCATION_ONLY, atol=1e-9)


def test_copicks_relion5_export_agrees_with_its_json():
    # the tomogram: (20, 30, 40) voxels at 10 A, as copick wrote it (centre x 200 A)
    star = read_picks(DATA / "TS_shift_ribosome.star", tomograms={"TS_shift": ((20, 30, 40), 10.0)})
    assert len(star) == 3 and star.tomo_names.tolist() == ["TS_shift"] * 3
    np.testing.assert_allclose(star.coords, EXPECTED, atol=1e-6)
    np.testing.assert_allclose(star.features["rlnAngleRot"], [150.0, 0.0, 60.0])


def test_copicks_csv_export_is_angstrom_with_its_translations():
    path = DATA / "TS_shift_ribosome.csv"
    with pytest.raises(CryoGuardError, match="voxel_size="):
        read_picks(path)  # Angstrom: a voxel size is needed, never guessed
    picks = read_picks(path, voxel_size=10.0)
    assert picks.tomo_names.tolist() == ["TS_shift"] * 3
    np.testing.assert_allclose(picks.coords, EXPECTED, atol=1e-9)
    assert any("copick CSV" in n for n in picks.notes)
    assert any("transform_03/13/23" in n for n in picks.notes)
    np.testing.assert_allclose(read_picks(path, voxel_size=10.0, apply_shifts=False).coords,
                               LOCATION_ONLY, atol=1e-9)
    np.testing.assert_allclose(read_picks(path, voxel_size=20.0).coords * 2, EXPECTED, atol=1e-9)
