"""STOPGAP motive lists: a real one (cryoCAT's test data, see tests/data/stopgap/NOTICE.md).

Values below are read by hand from the file: row 1 is ``6 24 1 6 A 824 754 673 0.5452
0.2121 0.6012 5.4676 33.2584 65.2557 8.6516 3`` (motl_idx tomo_num object subtomo_num
halfset orig_x orig_y orig_z score x_shift y_shift z_shift phi psi the class).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_cryoguard import CryoGuardError
from napari_cryoguard.io import read_picks
from napari_cryoguard.io.stopgap import read_stopgap_picks

DATA = Path(__file__).resolve().parents[1] / "data"
MOTL = DATA / "stopgap" / "class6_er_mr1_1_sg_cut.star"


def _has_note(picks, *words) -> bool:
    return any(all(w in n for w in words) for n in picks.notes)


def test_real_stopgap_motivelist_is_read_by_read_picks():
    picks = read_picks(MOTL, voxel_size=13.68)
    assert len(picks) == 10
    # orig + shift - 1 (1-based), ZYX
    np.testing.assert_allclose(picks.coords[0], [673 + 5.4676 - 1, 754 + 0.6012 - 1,
                                                 824 + 0.2121 - 1])
    np.testing.assert_allclose(picks.coords[6], [439 - 1.6938 - 1, 964 - 4.9494 - 1,
                                                 1438 + 1.9166 - 1])
    assert picks.tomo_names.tolist() == ["24"] * 6 + ["30"] * 4
    assert picks.tomogram_names() == ["24", "30"]
    assert picks.class_names == ["1", "2", "3"]
    assert picks.labels.tolist() == [2, 0, 1, 1, 1, 1, 2, 0, 2, 0]
    np.testing.assert_allclose(picks.scores[:2], [0.5452, 0.4781])
    assert picks.features["subtomo_num"].tolist()[:2] == [6, 25]
    assert picks.features["halfset"].tolist()[0] == "A"
    np.testing.assert_allclose(picks.features["phi"][0], 33.2584)
    assert picks.voxel_size == 13.68 and picks.origin_zyx is None
    assert _has_note(picks, "STOPGAP motive list")
    assert _has_note(picks, "orig + shift")
    assert _has_note(picks, "1-based", "subtracted 1")


def test_stopgap_voxel_size_assumed_with_a_note_and_switches():
    picks = read_picks(MOTL)
    assert picks.voxel_size == 1.0 and _has_note(picks, "assumed 1.0 Angstrom")
    raw = read_stopgap_picks(MOTL, apply_shifts=False, one_based=False)
    np.testing.assert_allclose(raw.coords[0], [673, 754, 824])
    np.testing.assert_allclose(raw.features["x_shift"][0], 0.2121)
    assert _has_note(raw, "not applied")
    # the RELION reader's apply_origins switch reaches the STOPGAP shifts
    kept = read_picks(MOTL, apply_origins=False)
    np.testing.assert_allclose(kept.coords[0], [672, 753, 823])


def test_stopgap_rows_of_one_tomogram():
    picks = read_picks(MOTL, voxel_size=10.0)
    part = picks.for_tomogram("30")
    assert len(part) == 4 and _has_note(part, "4 of 10")
    with pytest.raises(CryoGuardError, match="'24', '30'"):
        picks.for_tomogram("TS_01")


def test_stopgap_bad_files_are_one_error(tmp_path):
    text = MOTL.read_text()
    no_orig = tmp_path / "no_orig.star"
    no_orig.write_text(text.replace("_orig_y\n", "_orig_yy\n"))
    with pytest.raises(CryoGuardError, match="orig_y"):
        read_picks(no_orig)
    nan = tmp_path / "nan.star"
    nan.write_text(text.replace("824.000000", "nan", 1))
    with pytest.raises(CryoGuardError, match="orig_x"):
        read_picks(nan)
    words = tmp_path / "words.star"
    words.write_text(text.replace("754.000000", "abc", 1))
    with pytest.raises(CryoGuardError, match="orig_y"):
        read_picks(words)
    with pytest.raises(CryoGuardError, match="not a STOPGAP motive list"):
        read_stopgap_picks(_relion_star(tmp_path))


def test_multi_reference_repeats_are_noted(tmp_path):
    lines = MOTL.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("6.000000"))
    doubled = tmp_path / "multiref.star"
    doubled.write_text("\n".join(lines + [lines[first]]) + "\n")
    picks = read_picks(doubled)
    assert len(picks) == 11 and _has_note(picks, "1 subtomogram(s) appear in several rows")


def _relion_star(tmp_path) -> Path:
    path = tmp_path / "r.star"
    path.write_text("data_particles\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n"
                    "_rlnCoordinateZ\n1 2 3\n")
    return path
