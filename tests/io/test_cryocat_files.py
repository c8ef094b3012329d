"""Real RELION 3.0 / 3.1 / 5 files from cryoCAT's test data (tests/data/relion/cryocat),
checked against values computed by hand from the file text.

- ``relion_3.0.star``: Warp's RELION 3.0 subtomogram export (a rat-brain 80S dataset):
  ``rlnMicrographName`` is the reconstruction's full path, the pixel size is in
  ``rlnPixelSize`` and in ``rlnDetectorPixelSize`` 5.364 um x 1e4 / ``rlnMagnification``
  10000 = 5.364 A.
- ``relion_3.1_optics2.star``: RELION 3.1 with two optics groups at 2.446 and 3.446 A and
  ``rlnOrigin*Angst``.
- ``R5_tutorial_run_data_cut.star`` + ``R5_tutorial_run_tomograms.star``: RELION 5
  tutorial Refine3D output, centred Angstrom coordinates of TS_01 and TS_03; tomograms
  4000 x 4000 x 2000 pixels of 1.35 A, binning 7.407407.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_cryoguard import CryoGuardError
from napari_cryoguard.io import Tomogram, read_picks

DATA = Path(__file__).resolve().parents[1] / "data" / "relion" / "cryocat"


def _has_note(obj, *words) -> bool:
    return any(all(w in n for w in words) for n in obj.notes)


def test_warp_relion30_export():
    picks = read_picks(DATA / "relion_3.0.star")
    assert len(picks) == 3
    assert picks.tomo_names.tolist() == ["01006_10.73Apx"] * 3  # folders and .mrc dropped
    assert picks.voxel_size == pytest.approx(5.364)
    # rlnCoordinateX Y Z of the three rows, as ZYX voxels (Warp: 0 at the first voxel's centre)
    np.testing.assert_allclose(picks.coords, [[422.955, 733.955, 1028.455],
                                              [387.955, 948.455, 793.955],
                                              [366.455, 930.455, 115.955]])
    np.testing.assert_allclose(picks.features["rlnAngleRot"], [-60.199770, 146.486905, -69.146590])
    # the tomogram Warp reconstructed, opened by its file name, matches
    assert len(picks.for_tomogram("01006_10.73Apx.mrc")) == 3


def test_relion31_two_optics_groups_at_two_pixel_sizes():
    path = DATA / "relion_3.1_optics2.star"
    with pytest.raises(CryoGuardError, match=r"2 pixel sizes .*2\.446, 3\.446.*voxel_size="):
        read_picks(path)
    picks = read_picks(path, voxel_size=2.446)
    assert len(picks) == 3 and picks.voxel_size == 2.446
    assert picks.tomo_names.tolist() == ["0002_12.23Apx", "0003_12.23Apx", "0003_12.23Apx"]
    assert _has_note(picks, "each row converted from its own pixels to 2.446")
    # by hand, position = coordinate - origin (Angstrom / the row's own pixel size)
    row1 = [938.008 - 7.247110 / 2.446, 1480.630 + 2.69889 / 2.446, 915.549 + 0.25289 / 2.446]
    row2_own = [835.438 - 2.747110 / 3.446, 1468.359 - 2.193110 / 3.446, 1636.359 + 0.25289 / 3.446]
    np.testing.assert_allclose(picks.coords[0], row1, atol=1e-4)
    np.testing.assert_allclose(picks.coords[1], np.multiply(row2_own, 3.446 / 2.446), atol=1e-4)
    # placed on tomogram 0003 at its own 3.446 A voxels: its rows in its own pixels again
    tomo = Tomogram.from_array(np.zeros((4, 4, 4)), voxel_size=3.446, name="0003_12.23Apx")
    on = picks.on_tomogram(tomo)
    assert len(on) == 2
    np.testing.assert_allclose(on.coords[0], row2_own, atol=1e-4)


def test_relion5_tutorial_refine3d_output():
    path = DATA / "R5_tutorial_run_data_cut.star"
    tomos = DATA / "R5_tutorial_run_tomograms.star"
    with pytest.raises(CryoGuardError, match="tomograms="):
        read_picks(path)
    raw = read_picks(path, tomograms=tomos, apply_origins=False)
    assert len(raw) == 6 and raw.tomo_names.tolist() == ["TS_01"] * 3 + ["TS_03"] * 3
    vs = 1.35 * 7.407407
    assert raw.voxel_size == pytest.approx(vs)
    # voxel = centred / voxel size + size / (2 x binning): centre 270, 270, 135 (x, y, z)
    cx, cz = 4000 / (2 * 7.407407), 2000 / (2 * 7.407407)
    np.testing.assert_allclose(
        raw.coords[0], [1127.416439 / vs + cz, -951.52983 / vs + cx, 1774.846956 / vs + cx])
    np.testing.assert_allclose(
        raw.coords[3], [404.369116 / vs + cz, -1176.98982 / vs + cx, 664.059633 / vs + cx])
    # the origins (Angstrom, in the subtomogram's frame) are rotated before subtracting:
    # each pick moves by exactly |origin| / voxel size
    picks = read_picks(path, tomograms=tomos)
    origins = np.array([[0.028068, 1.040568, 0.365568], [1.040568, 0.028068, -0.30943],
                        [-0.64693, 0.028068, 0.028068], [-3.34693, 0.703068, 2.053068],
                        [1.378068, 0.028068, -0.30943], [0.703068, 0.028068, 0.028068]])
    np.testing.assert_allclose(np.linalg.norm(picks.coords - raw.coords, axis=1),
                               np.linalg.norm(origins, axis=1) / vs, rtol=1e-6)
    # RELION 5's own reconstruction of TS_03 is rec_TS_03.mrc: it gets TS_03's rows
    part = picks.for_tomogram("rec_TS_03.mrc")
    assert len(part) == 3 and part.tomo_names.tolist() == ["TS_03"] * 3
    assert _has_note(part, "'rec_TS_03.mrc' matched to 'TS_03'")
    with pytest.raises(CryoGuardError, match="'TS_01', 'TS_03'"):
        picks.for_tomogram("rec_TS_45.mrc")


def test_relion4_tomography_coordinates_are_in_tilt_series_pixels(tmp_path):
    """``relion_4.0_cut.star``: RELION 4 subtomogram particles (optics: tilt-series pixel
    1.971 A, subtomogram binning 2, rlnImagePixelSize 3.942 A). RELION's
    ``ParticleSet::getPosition`` (src/jaz/tomography/particle_set.cpp, 4.0.1 and 5.0)
    reads rlnCoordinateX/Y/Z in tilt-series pixels and divides the Angstrom origins by
    the tilt-series pixel, so the voxel size is 1.971 A, not 3.942."""
    path = DATA / "relion_4.0_cut.star"
    picks = read_picks(path)
    assert len(picks) == 5 and picks.voxel_size == pytest.approx(1.971)
    assert picks.tomo_names.tolist() == ["TS_017"] * 3 + ["TS_018"] * 2
    assert _has_note(picks, "rlnTomoTiltSeriesPixelSize", "tilt-series pixels")
    # row 1: 1700, 428, 944 minus origins 1.260416, 2.364176, 3.783296 A / 1.971
    np.testing.assert_allclose(
        picks.coords[0], [944 - 3.783296 / 1.971, 428 - 2.364176 / 1.971, 1700 - 1.260416 / 1.971])
    # WarpTools' exports name tomograms <name>.tomostar and keep their coordinates in
    # particle pixels (rlnImagePixelSize; its ExportParticlesTiltseries.cs): same optics,
    # other unit
    warp = tmp_path / "warp.star"
    warp.write_text(path.read_text().replace("TS_017 ", "TS_017.tomostar "))
    wp = read_picks(warp)
    assert wp.voxel_size == pytest.approx(3.942)
    np.testing.assert_allclose(wp.coords[0][2], 1700 - 1.260416 / 3.942)
