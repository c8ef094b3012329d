"""Tests for napari_cryoguard.io.relion: RELION 3/4/5, Warp and pytom STAR particle files.

Expected numbers are worked out by hand from the bundled files (tests/data/relion,
see its NOTICE.md) with RELION 5's centring rule, voxel = centred / (pixel x binning)
+ rlnTomoSize / (2 x binning), as documented in the module.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from napari_cryoguard import CryoGuardError
from napari_cryoguard.io import Picks, read_picks, write_picks
from napari_cryoguard.io.relion import load_tomograms, read_star_picks, relion_euler_matrix

DATA = Path(__file__).parent.parent / "data" / "relion"
CYL = DATA / "cylindra"
TOMOS = CYL / "Tomograms" / "job_tomo" / "tomograms.star"

# cylindra's tomograms.star: rlnTomoTiltSeriesPixelSize 1.052, binning 4.830918,
# rlnTomoSizeX/Y/Z 1000 800 200 for both TS_01 and TS_02.
VS = 1.052 * 4.830918  # 5.0821257 A per binned voxel
CENTRE_XYZ = (1000 / (2 * 4.830918), 800 / (2 * 4.830918), 200 / (2 * 4.830918))


# --------------------------------------------------------------------------- RELION 5


def test_relion5_centred_picks_with_optimisation_set():
    picks = read_picks(
        CYL / "Picks" / "job_picks" / "particles.star",
        tomograms=CYL / "Picks" / "job_picks" / "optimisation_set.star",
    )
    assert len(picks) == 5
    assert picks.tomo_names.tolist() == ["TS_01"] * 3 + ["TS_02"] * 2
    assert picks.voxel_size == pytest.approx(5.082126, abs=1e-6)
    # row 1: TS_01 -176.94 765.48005 11.16 -> x = -176.94 / 5.0821257 + 103.5 = 68.6839
    np.testing.assert_allclose(picks.coords[0], [22.8959, 233.4220, 68.6839], atol=1e-3)
    # row 4: TS_02 -58.030014 386.650021 9.08
    np.testing.assert_allclose(picks.coords[3], [22.4867, 158.8804, 92.0815], atol=1e-3)
    assert any("centred" in n and "centre" in n for n in picks.notes)


def test_relion5_centre_is_half_the_unbinned_size_divided_by_binning():
    geometry = load_tomograms(TOMOS)
    assert set(geometry) == {"TS_01", "TS_02"}
    np.testing.assert_allclose(geometry["TS_01"].centre_xyz, [103.5, 82.8, 20.7], atol=1e-4)
    assert geometry["TS_01"].voxel_size == pytest.approx(VS)
    assert geometry["TS_01"].tilt_series_pixel == pytest.approx(1.052)
    # a mapping's centre is shape / 2, not (shape - 1) / 2
    mapped = load_tomograms({"t": ((200, 801, 1000), 2.0)})
    np.testing.assert_allclose(mapped["t"].centre_xyz, [500.0, 400.5, 100.0])


def test_relion5_origin_shifts_rotated_like_relion(tmp_path):
    star = CYL / "Class3D" / "job_class3d" / "run_it025_data.star"
    opt = CYL / "Class3D" / "job_class3d" / "run_it025_optimisation_set.star"
    picks = read_picks(star, tomograms=opt)  # paths in the set are relative to the project
    kept = read_picks(star, tomograms=opt, apply_origins=False)
    assert len(picks) == 10 and picks.tomogram_names() == ["TS_01", "TS_02"]
    np.testing.assert_array_equal(picks.labels, [0, 0, 1, 1, 2] * 2)
    # row 1 by hand: rot 174.931305, tilt 90.261512, psi -129.54646 (RELION ZYZ matrix,
    # Euler_angles_relion.h); origin (-3.75772, 4.342283, -3.75772) A
    p, t, c = (math.radians(a) for a in (174.931305, 90.261512, -129.54646))
    sp, cp, st, ct, sc, cc = math.sin(p), math.cos(p), math.sin(t), math.cos(t), math.sin(c), math.cos(c)
    a = np.array(
        [
            [cc * ct * cp - sc * sp, cc * ct * sp + sc * cp, -cc * st],
            [-sc * ct * cp - cc * sp, -sc * ct * sp + cc * cp, sc * st],
            [st * cp, st * sp, ct],
        ]
    )
    origin = np.array([-3.75772, 4.342283, -3.75772])
    centred = np.array([754.828605, -879.58025, 138.065739])
    plain_xyz = centred / VS + np.array(CENTRE_XYZ)
    np.testing.assert_allclose(kept.coords[0][::-1], plain_xyz, atol=1e-6)
    np.testing.assert_allclose(picks.coords[0][::-1], plain_xyz - a @ origin / VS, atol=1e-6)
    np.testing.assert_allclose(plain_xyz, [252.0262, -90.2733, 47.8669], atol=1e-3)
    assert "rlnOriginXAngst" in kept.features and "rlnOriginXAngst" not in picks.features
    assert any("origin shifts" in n and "rotated" in n for n in picks.notes)


def test_relion_euler_matrix_known_values():
    np.testing.assert_allclose(relion_euler_matrix(0, 0, 0), np.eye(3), atol=1e-12)
    np.testing.assert_allclose(
        relion_euler_matrix(90, 0, 0), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]], atol=1e-12
    )
    m = relion_euler_matrix(np.array([10.0, 200.0]), np.array([30.0, 95.0]), np.array([-40.0, 7.0]))
    for r in m:
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)


def test_relion5_without_tomograms_names_what_is_missing(tmp_path):
    path = tmp_path / "particles.star"  # alone: no optimisation set next to it
    path.write_bytes((CYL / "Picks" / "job_picks" / "particles.star").read_bytes())
    with pytest.raises(CryoGuardError) as info:
        read_picks(path)
    msg = str(info.value)
    assert "'TS_01'" in msg and "'TS_02'" in msg and "tomograms.star" in msg
    assert "rlnCenteredCoordinateXAngst" in msg and "next to the file" in msg
    with pytest.raises(CryoGuardError, match=r"'TS_02'.*not in tomograms"):
        read_picks(path, tomograms={"TS_01": ((40, 80, 100), 5.0)})


def test_relion5_follows_the_optimisation_set_next_to_it():
    # cylindra's Picks/job_picks holds particles.star and optimisation_set.star side by side
    picks = read_picks(CYL / "Picks" / "job_picks" / "particles.star")
    given = read_picks(
        CYL / "Picks" / "job_picks" / "particles.star",
        tomograms=CYL / "Picks" / "job_picks" / "optimisation_set.star",
    )
    np.testing.assert_array_equal(picks.coords, given.coords)
    np.testing.assert_allclose(picks.coords[0], [22.8959, 233.4220, 68.6839], atol=1e-3)
    assert any("optimisation_set.star found next to it" in n for n in picks.notes)
    assert not any("found next to it" in n for n in given.notes)
    # a Class3D data file follows its own run_it025_optimisation_set.star
    data = read_picks(CYL / "Class3D" / "job_class3d" / "run_it025_data.star")
    assert len(data) == 10
    assert any("run_it025_optimisation_set.star found next to it" in n for n in data.notes)


def test_relion5_next_to_rules(tmp_path):
    src = (CYL / "Picks" / "job_picks" / "particles.star").read_bytes()
    (tmp_path / "picks.star").write_bytes(src)
    # an optimisation set naming another particle file is not taken ...
    (tmp_path / "optimisation_set.star").write_text(
        "data_\n\nloop_\n_rlnTomoParticlesFile #1\n_rlnTomoTomogramsFile #2\n"
        "other.star tomograms.star\n"
    )
    with pytest.raises(CryoGuardError, match="next to the file"):
        read_picks(tmp_path / "picks.star")
    # ... but a tomograms.star beside it is, and a broken one is named
    (tmp_path / "tomograms.star").write_bytes(TOMOS.read_bytes())
    picks = read_picks(tmp_path / "picks.star")
    np.testing.assert_allclose(picks.coords[3], [22.4867, 158.8804, 92.0815], atol=1e-3)
    assert any("tomograms.star found next to it" in n for n in picks.notes)
    (tmp_path / "tomograms.star").write_text("data_global\n\nloop_\n_rlnTomoName #1\nTS_01\n")
    with pytest.raises(CryoGuardError, match="tomograms.star found next to it could not be used"):
        read_picks(tmp_path / "picks.star")
    # WarpTools names them <name>_tomograms.star / <name>_optimisation_set.star
    (tmp_path / "picks_tomograms.star").write_bytes(TOMOS.read_bytes())
    warp = read_picks(tmp_path / "picks.star")
    assert any("picks_tomograms.star found next to it" in n for n in warp.notes)


def test_pytom_relion5_project_tomograms_star():
    # pytom-match-pick's tests/Data/relion5_project_example/.../tomograms.star: 10 tomograms,
    # rlnTomoTiltSeriesPixelSize 1.724, rlnTomoTomogramBinning 8.120650, sizes 4000 4000 2000
    geometry = load_tomograms(DATA / "pytom" / "tomograms.star")
    assert len(geometry) == 10
    assert list(geometry)[:2] == ["tomo200528_100", "tomo200528_101"]
    g = geometry["tomo200528_107"]
    assert g.voxel_size == pytest.approx(1.724 * 8.12065)  # 14.0000006 A
    np.testing.assert_allclose(g.centre_xyz, [4000 / 16.2413, 4000 / 16.2413, 2000 / 16.2413])


def test_pytom_relion5_particles_with_its_tomograms_star(tmp_path):
    # header of pytom-match-pick's --relion5-compat output (its docs/Developers.md); one row
    # written here. pytom names the tomogram rec_tomo200528_107 without the compat switch
    # and tomo200528_107 with it.
    path = tmp_path / "tomo200528_107_particles.star"
    path.write_text(
        "data_\n\nloop_\n_rlnCenteredCoordinateXAngst #1\n_rlnCenteredCoordinateYAngst #2\n"
        "_rlnCenteredCoordinateZAngst #3\n_rlnAngleRot #4\n_rlnAngleTilt #5\n"
        "_rlnAnglePsi #6\n_rlnLCCmax #7\n_rlnCutOff #8\n_rlnSearchStd #9\n"
        "_rlnTomoTiltSeriesPixelSize #10\n_rlnTomoName #11\n"
        "140.0 -280.0 0.0 10.0 20.0 30.0 0.31 0.2 0.05 1.724 tomo200528_107\n"
    )
    picks = read_picks(path, tomograms=DATA / "pytom" / "tomograms.star")
    # x = 140 / 14.0000006 + 246.2857 = 256.2857; y = -20 + 246.2857; z = 123.1429
    np.testing.assert_allclose(picks.coords[0], [123.1429, 226.2857, 256.2857], atol=1e-3)
    assert picks.voxel_size == pytest.approx(14.0000006)
    assert picks.tomo_names.tolist() == ["tomo200528_107"]


def test_tomograms_star_without_sizes_is_named(tmp_path):
    bad = tmp_path / "tomograms.star"
    bad.write_text(
        "data_global\n\nloop_\n_rlnTomoName #1\n_rlnTomoTiltSeriesPixelSize #2\nTS_01 1.35\n"
    )
    with pytest.raises(CryoGuardError, match="rlnTomoSizeX, rlnTomoSizeY, rlnTomoSizeZ"):
        read_picks(CYL / "Picks" / "job_picks" / "particles.star", tomograms=bad)
    opt = tmp_path / "optimisation_set.star"
    opt.write_text("data_\n\n_rlnTomoTomogramsFile missing/tomograms.star\n")
    with pytest.raises(CryoGuardError, match="rlnTomoTomogramsFile 'missing/tomograms.star'"):
        read_picks(CYL / "Picks" / "job_picks" / "particles.star", tomograms=opt)


def test_relion5_voxel_size_choice():
    path = CYL / "Picks" / "job_picks" / "particles.star"
    mixed = {"TS_01": ((40, 160, 200), 5.0), "TS_02": ((20, 80, 100), 10.0)}
    with pytest.raises(CryoGuardError, match="voxel_size="):
        read_picks(path, tomograms=mixed)
    picks = read_picks(path, tomograms=mixed, voxel_size=10.0)
    # TS_01 row 1: x = -176.94 / 5 + 100 = 64.612 voxels of 5 A = 32.306 voxels of 10 A
    assert picks.voxel_size == 10.0
    np.testing.assert_allclose(picks.coords[0][2], (-176.94 / 5 + 100) / 2, atol=1e-9)
    # TS_02 row 4: x = -58.030014 / 10 + 50
    np.testing.assert_allclose(picks.coords[3][2], -5.8030014 + 50, atol=1e-9)


def test_relion5_round_trip_exact(tmp_path):
    rng = np.random.default_rng(3)
    picks = Picks(
        coords=rng.uniform(0, 90, (40, 3)),
        tomo_names=np.repeat(["TS_01", "rec_TS_02"], 20),
        scores=rng.normal(size=40),
        labels=rng.integers(-1, 3, 40),
        class_names=["a", "b", "c"],
        features={"margin": rng.normal(size=40), "probs": rng.random((40, 3))},
        voxel_size=7.5,
    )
    tomos = {"TS_01": ((64, 100, 128), 7.5), "rec_TS_02": ((51, 93, 97), 7.5)}
    path = write_picks(tmp_path / "r5.star", picks, convention="relion5", tomograms=tomos)
    text = path.read_text()
    assert "_rlnCenteredCoordinateXAngst" in text and "_rlnCoordinateX " not in text
    assert "data_optics" in text and "_rlnTomoTiltSeriesPixelSize" in text
    back = read_picks(path, tomograms=tomos)
    np.testing.assert_allclose(back.coords, picks.coords, atol=1e-6, rtol=0)
    assert back.voxel_size == 7.5
    assert back.tomo_names.tolist() == picks.tomo_names.tolist()
    np.testing.assert_array_equal(back.labels, picks.labels)
    assert back.class_names == picks.class_names
    assert sorted(back.features) == ["margin", "probs"]
    np.testing.assert_array_equal(back.features["probs"], picks.features["probs"])
    # a centred value by hand: x * 7.5 - 128 / 2 * 7.5
    first = text.split("data_particles")[1].splitlines()
    row = next(ln for ln in first if ln.startswith("TS_01"))
    assert float(row.split()[1]) == pytest.approx(picks.coords[0, 2] * 7.5 - 64 * 7.5)


def test_relion5_write_with_shape_and_tomograms_star(tmp_path):
    picks = Picks(coords=[[10.0, 20.0, 30.0]], tomo_names=["TS_01"], voxel_size=VS)
    path = write_picks(tmp_path / "a.star", picks, convention="relion5", shape=(41, 166, 207))
    back = read_picks(path, tomograms={"TS_01": ((41, 166, 207), VS)})
    np.testing.assert_allclose(back.coords, picks.coords, atol=1e-9)
    path = write_picks(tmp_path / "b.star", picks, convention="relion5", tomograms=TOMOS)
    assert "1.052" in path.read_text()  # the unbinned tilt-series pixel size
    back = read_picks(path, tomograms=TOMOS)
    np.testing.assert_allclose(back.coords, picks.coords, atol=1e-6)
    with pytest.raises(CryoGuardError, match="shape"):
        write_picks(tmp_path / "c.star", picks, convention="relion5")
    with pytest.raises(CryoGuardError, match="rlnTomoName"):
        write_picks(
            tmp_path / "d.star", Picks(coords=[[1.0, 2, 3]]), convention="relion5", shape=(9, 9, 9)
        )
    with pytest.raises(CryoGuardError, match="unknown pick-file convention"):
        write_picks(tmp_path / "e.star", picks, convention="relion6")
    with pytest.raises(CryoGuardError, match="STAR files only"):
        write_picks(tmp_path / "e.csv", picks, convention="relion5", shape=(9, 9, 9))


def test_rec_prefix_matches_tilt_series_name(tmp_path):
    path = tmp_path / "pytom.star"
    path.write_text(
        "data_particles\n\nloop_\n_rlnTomoName #1\n_rlnCenteredCoordinateXAngst #2\n"
        "_rlnCenteredCoordinateYAngst #3\n_rlnCenteredCoordinateZAngst #4\nTS_01 10.0 0.0 -5.0\n"
    )
    picks = read_star_picks(path, tomograms={"rec_TS_01": ((100, 200, 300), 5.0)})
    np.testing.assert_allclose(picks.coords[0], [49.0, 100.0, 152.0])
    assert any("rec_" in n for n in picks.notes)


# --------------------------------------------------------------------------- RELION 3/4, Warp

WARP_TM = DATA.parent / "warp" / "TS_1_10.00Apx_emd_15854_clean.star"
# Warp's tutorial tomogram TS_1 at 10 A: 4400 x 6000 x 1000 px of 0.7894 A -> 348 x 474 x 78
TS_1 = {"TS_1": ((78, 474, 348), 10.0)}


def test_warp_template_matching_fractions_are_refused_without_sizes():
    with pytest.raises(CryoGuardError) as info:
        read_picks(WARP_TM)
    msg = str(info.value)
    assert "between 0 and 1" in msg and "tomograms=" in msg and "normalized_coords=False" in msg


def test_warp_template_matching_fractions_to_voxels():
    picks = read_picks(WARP_TM, tomograms=TS_1)
    assert len(picks) == 12 and picks.tomo_names.tolist() == ["TS_1"] * 12
    assert picks.voxel_size == 10.0
    # row 1: 0.16666667 0.943038 0.1923077 -> x 58, y 447, z 15 (fraction x size)
    np.testing.assert_allclose(picks.coords[0], [15.0, 447.0, 58.0], atol=1e-4)
    # row 9: 0.06896552 0.12658228 0.26923078 -> x 24, y 60, z 21
    np.testing.assert_allclose(picks.coords[8], [21.0, 60.0, 24.0], atol=1e-4)
    # every pick lands on a whole voxel: the sizes are right
    np.testing.assert_allclose(picks.coords, np.round(picks.coords), atol=1e-4)
    np.testing.assert_allclose(picks.scores[:2], [6.2712617, 6.58936])
    assert any("normalised" in n and "fraction" in n for n in picks.notes)
    # the same at 20 A per voxel, and forced off
    half = read_picks(WARP_TM, tomograms=TS_1, voxel_size=20.0)
    np.testing.assert_allclose(half.coords[0], [7.5, 223.5, 29.0], atol=1e-4)
    raw = read_picks(WARP_TM, normalized_coords=False, voxel_size=10.0)
    np.testing.assert_allclose(raw.coords[0], [0.1923077, 0.943038, 0.16666667])


def test_normalised_coordinates_need_the_named_tomogram(tmp_path):
    with pytest.raises(CryoGuardError, match=r"'TS_1'.*not in tomograms"):
        read_picks(WARP_TM, tomograms={"TS_2": ((78, 474, 348), 10.0)})
    # without a name column, a single tomogram is used
    lone = tmp_path / "lone.star"
    lone.write_text("data_\n\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnCoordinateZ\n"
                    "0.5 0.25 1.0\n")
    picks = read_picks(lone, tomograms={"any": ((10, 20, 40), 5.0)})
    np.testing.assert_allclose(picks.coords[0], [10.0, 5.0, 20.0])
    # whole numbers in [0, 1] are voxels (a pick at voxel 0 or 1), not fractions
    lone.write_text("data_\n\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnCoordinateZ\n"
                    "0 1 1\n")
    np.testing.assert_allclose(read_picks(lone, voxel_size=3.0).coords[0], [1.0, 1.0, 0.0])
    # a file with one coordinate above 1 is read as voxels, as before
    lone.write_text("data_\n\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnCoordinateZ\n"
                    "0.5 0.25 1.0\n2.0 0.5 0.5\n")
    np.testing.assert_allclose(read_picks(lone, voxel_size=3.0).coords[1], [0.5, 0.5, 2.0])


def test_warp_tomostar_names_and_coordinates():
    path = DATA / "warp_tomogram_particle_files.star"
    picks = read_picks(path)
    assert len(picks) == 10
    assert picks.tomo_names.tolist() == ["TS_01"] * 5 + ["TS_02"] * 5
    np.testing.assert_allclose(picks.coords[0], [203.739618, 214.586768, 443.701994])
    np.testing.assert_allclose(picks.coords[9], [200.434299, 30.954625, 385.706010])
    assert picks.voxel_size == 1.0
    assert any("assumed 1.0 A" in n for n in picks.notes)
    assert any("rlnMicrographName" in n for n in picks.notes)
    np.testing.assert_allclose(picks.features["rlnAngleRot"][:2], [54.077932, -168.434232])
    assert len(picks.for_tomogram("TS_02.mrc")) == 5
    assert read_picks(path, voxel_size=13.48).voxel_size == 13.48


def test_relion4_origins_applied_and_kept():
    path = DATA / "data_portal_relion_4.star"
    picks = read_picks(path)
    assert len(picks) == 6
    assert picks.tomo_names.tolist() == ["TS_001"] * 2 + ["TS_002"] * 3 + ["TS_003"]
    assert picks.voxel_size == 1.0  # optics rlnImagePixelSize
    # row 1: coordinate (4, 8, 12) minus rlnOriginX/Y/ZAngst (-1.2, -2.4, -3.2) at 1 A/px
    np.testing.assert_allclose(picks.coords[0], [15.2, 10.4, 5.2])
    np.testing.assert_allclose(picks.coords[5], [1.0 - 2.0, 2.0 - 2.0, 3.0 - 2.0])
    np.testing.assert_array_equal(picks.labels, [0] * 6)
    assert any("origin shifts" in n and "apply_origins=False" in n for n in picks.notes)
    kept = read_picks(path, apply_origins=False)
    np.testing.assert_allclose(kept.coords[0], [12.0, 8.0, 4.0])
    np.testing.assert_allclose(kept.features["rlnOriginXAngst"][:2], [-1.2, 3.2])


def _star(tmp_path, text, name="r.star"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_relion3_pixel_size_sources(tmp_path):
    head = "data_particles\n\nloop_\n_rlnMicrographName #1\n_rlnCoordinateX #2\n"
    head += "_rlnCoordinateY #3\n_rlnCoordinateZ #4\n"
    # detector pixel (micrometres) and magnification: 14 um * 1e4 / 10000 = 14 A
    p = _star(tmp_path, head.replace("#4\n", "#4\n_rlnDetectorPixelSize #5\n_rlnMagnification #6\n")
              + "tomo1.mrc 1 2 3 14.0 10000\n", "dm.star")
    picks = read_picks(p)
    assert picks.voxel_size == pytest.approx(14.0) and picks.tomo_names.tolist() == ["tomo1"]
    assert any("rlnMagnification" in n for n in picks.notes)
    # rlnPixelSize
    p = _star(tmp_path, head.replace("#4\n", "#4\n_rlnPixelSize #5\n") + "t 1 2 3 2.446\n", "px.star")
    assert read_picks(p).voxel_size == pytest.approx(2.446)
    # pytom-match-pick: rlnDetectorPixelSize alone, in Angstrom; rec_ name kept
    p = _star(tmp_path, head.replace("#4\n", "#4\n_rlnDetectorPixelSize #5\n")
              + "rec_TS_01 1 2 3 13.79\n", "pytom.star")
    picks = read_picks(p)
    assert picks.voxel_size == pytest.approx(13.79) and picks.tomo_names.tolist() == ["rec_TS_01"]
    assert any("rec_" in n for n in picks.notes)
    # optics groups with different pixel sizes: one voxel size needed
    optics = (
        "data_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n1 2.446\n2 3.446\n\n"
    )
    rows = head.replace("#4\n", "#4\n_rlnOpticsGroup #5\n") + "a 1 2 3 1\nb 4 5 6 2\n"
    p = _star(tmp_path, optics + rows, "optics.star")
    with pytest.raises(CryoGuardError, match="voxel_size="):
        read_picks(p)
    assert read_picks(p, voxel_size=2.0).voxel_size == 2.0
    p = _star(tmp_path, optics + rows.replace("b 4 5 6 2", "b 4 5 6 1"), "optics1.star")
    assert read_picks(p).voxel_size == pytest.approx(2.446)


def test_relion3_pixel_origins_applied(tmp_path):
    p = _star(
        tmp_path,
        "data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n_rlnCoordinateZ #3\n"
        "_rlnOriginX #4\n_rlnOriginY #5\n_rlnOriginZ #6\n_rlnPixelSize #7\n"
        "100 200 50 1.5 -2 0.25 10\n",
    )
    picks = read_picks(p)
    np.testing.assert_allclose(picks.coords[0], [49.75, 202.0, 98.5])
    assert "rlnOriginX" not in picks.features


# --------------------------------------------------------------------------- issue 11


def test_star_feature_names_that_would_not_read_back_are_refused(tmp_path):
    for bad in ("_x", "data_x", "DATA_y", "loop_z"):
        with pytest.raises(CryoGuardError, match="STAR"):
            write_picks(tmp_path / "f.star", Picks(coords=np.zeros((1, 3)), features={bad: [1]}))
    # CSV can hold them
    back = read_picks(
        write_picks(tmp_path / "f.csv", Picks(coords=np.zeros((1, 3)), features={"_note": [1]}))
    )
    assert "_note" in back.features


def test_strings_read_back_as_written(tmp_path):
    words = np.array(["NaN", "nan", "NA", "<NA>", "null", "None", ""])
    picks = Picks(coords=np.zeros((7, 3)), tomo_names=words, features={"w": words})
    back = read_picks(write_picks(tmp_path / "s.star", picks))
    assert back.tomo_names.tolist() == words.tolist()
    assert back.features["w"].tolist() == words.tolist()


def test_duplicate_star_columns_are_one_error(tmp_path):
    p = _star(
        tmp_path,
        "data_particles\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n_rlnCoordinateZ #3\n"
        "_rlnCoordinateX #4\n1 2 3 4\n",
    )
    with pytest.raises(CryoGuardError, match="_rlnCoordinateX appears twice"):
        read_picks(p)


def test_garbage_feature_dtype_is_one_error(tmp_path):
    path = write_picks(tmp_path / "g.star", Picks(coords=np.zeros((2, 3)), features={"f": [1.0, 2]}))
    path.write_text(path.read_text().replace("<f8", "garbage"))
    with pytest.raises(CryoGuardError, match="garbage"):
        read_picks(path)


def test_huge_class_number_is_refused_quickly(tmp_path):
    p = _star(
        tmp_path,
        "data_particles\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnCoordinateZ\n"
        "_rlnClassNumber\n_cryoguardClassName\n1 2 3 30000000 big\n",
    )
    assert p.stat().st_size < 200
    start = time.perf_counter()
    with pytest.raises(CryoGuardError, match="100000"):
        read_picks(p)
    assert time.perf_counter() - start < 1.0


def test_huge_feature_width_is_refused(tmp_path):
    path = write_picks(
        tmp_path / "w.star", Picks(coords=np.zeros((1, 3)), features={"p": np.ones((1, 2))})
    )
    text = path.read_text()
    path.write_text(text.replace("p\t<f8\t2", "p\t<f8\t100000000"))
    assert "100000000" in path.read_text()
    with pytest.raises(CryoGuardError, match="width 100000000"):
        read_picks(path)


def test_mutated_real_star_files_raise_only_cryoguard_error(tmp_path):
    """600 random mutations of the bundled files: every failure is a CryoGuardError."""
    import random

    sources = [p.read_text() for p in sorted(DATA.rglob("*.star"))]
    tokens = ["nan", "inf", "-1", "0", "1e400", "abc", '"', "30000000", "_rlnCoordinateX",
              "data_", "loop_", "#", "_rlnOpticsGroup", "_rlnTomoSubtomogramRot"]
    rnd = random.Random(11)
    out = tmp_path / "fuzz.star"
    failures = 0
    for _ in range(600):
        lines = rnd.choice(sources).splitlines()
        for _ in range(rnd.randint(1, 4)):
            if not lines:
                break
            k = rnd.randrange(len(lines))
            op = rnd.random()
            if op < 0.3 and lines[k].split():
                toks = lines[k].split()
                toks[rnd.randrange(len(toks))] = rnd.choice(tokens)
                lines[k] = " ".join(toks)
            elif op < 0.5:
                del lines[k]
            elif op < 0.7:
                lines.insert(k, lines[rnd.randrange(len(lines))])
            else:
                lines[k] = lines[k][: rnd.randrange(len(lines[k]) + 1)]
        out.write_text("\n".join(lines))
        try:
            read_star_picks(out, tomograms=TOMOS if rnd.random() < 0.7 else None)
        except CryoGuardError:
            failures += 1
    assert failures > 0


def test_block_mixing_values_and_loop_is_refused(tmp_path):
    p = _star(
        tmp_path,
        "data_optics\n_rlnImagePixelSize 2.0\nloop_\n_rlnOpticsGroup #1\n1\n2\n\n"
        "data_particles\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnCoordinateZ\n1 2 3\n",
    )
    with pytest.raises(CryoGuardError, match="one block must be one table"):
        read_picks(p)


def test_tomograms_may_be_tomogram_files_or_open_tomograms(tmp_path):
    from napari_cryoguard.io import read_tomogram, write_tomogram

    path = tmp_path / "TS_1.mrc"
    write_tomogram(path, np.zeros((78, 474, 348), np.float32), voxel_size=10.0)
    by_path = read_picks(WARP_TM, tomograms=path)
    np.testing.assert_allclose(by_path.coords[0], [15.0, 447.0, 58.0], atol=1e-4)
    with read_tomogram(path) as tomo:
        by_object = read_picks(WARP_TM, tomograms=tomo)
        np.testing.assert_array_equal(by_object.coords, by_path.coords)
        assert load_tomograms([tomo])["TS_1"].voxel_size == 10.0
        np.testing.assert_allclose(load_tomograms(tomo)["TS_1"].centre_xyz, [174.0, 237.0, 39.0])
    # a RELION 5 file placed on an open tomogram: centre = shape / 2
    star = tmp_path / "r5.star"
    star.write_text(
        "data_particles\n\nloop_\n_rlnTomoName #1\n_rlnCenteredCoordinateXAngst #2\n"
        "_rlnCenteredCoordinateYAngst #3\n_rlnCenteredCoordinateZAngst #4\nTS_1 100.0 -50.0 0.0\n"
    )
    np.testing.assert_allclose(read_picks(star, tomograms=path).coords[0], [39.0, 232.0, 184.0])
