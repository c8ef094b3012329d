"""Pick files of other tools: copick, Dynamo, IMOD, crYOLO / TomoTwin, foreign CSV tables.

The expected numbers are worked out by hand from the bundled files (see
``tests/data/<tool>/NOTICE.md`` for where each file comes from).
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_cryoguard import CryoGuardError
from napari_cryoguard.io import Picks, read_picks, write_picks

DATA = Path(__file__).resolve().parents[1] / "data"


def _quiet(path, **kw) -> Picks:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_picks(path, **kw)


def _has_note(picks: Picks, *words: str) -> bool:
    return any(all(w.lower() in n.lower() for w in words) for n in picks.notes)


# --------------------------------------------------------------------------- Dynamo


def test_dynamo_real_table_positions_classes_tomograms():
    picks = read_picks(DATA / "dynamo" / "t_double.tbl")
    assert len(picks) == 300
    # row 1: x y z = 141.28 114.71 163.08, dx dy dz = 2.5178 -3.523 2.1043, 1-based
    np.testing.assert_allclose(picks.coords[0], [164.1843, 110.187, 142.7978], atol=1e-3)
    # row 2: x y z = 161.92 97.211 121.46, dx dy dz = 3.2463 1.4558 0.36336
    np.testing.assert_allclose(picks.coords[1], [120.82336, 97.6668, 164.1663], atol=1e-3)
    assert picks.class_names == [str(c) for c in range(1, 11)]
    assert picks.labels[0] == 8 and picks.labels[1] == 1  # classes 9 and 2
    assert int((picks.labels == 0).sum()) == 34  # 34 rows of class 1
    assert picks.tomo_names.tolist() == ["1"] * 150 + ["2"] * 150
    assert len(picks.for_tomogram("2")) == 150
    assert picks.scores[0] == pytest.approx(0.15858)
    assert picks.features["tag"][:3].tolist() == [1, 2, 3]
    assert picks.voxel_size == 1.0
    assert _has_note(picks, "1-based") and _has_note(picks, "x+dx")
    assert _has_note(picks, "voxel size")


def test_dynamo_switches_and_voxel_size(tmp_path):
    raw = read_picks(
        DATA / "dynamo" / "t_double.tbl", apply_shifts=False, one_based=False, voxel_size=6.8
    )
    np.testing.assert_allclose(raw.coords[0], [163.08, 114.71, 141.28], atol=1e-6)
    assert raw.features["dx"][0] == pytest.approx(2.5178)
    assert raw.voxel_size == 6.8


def test_dynamo_table_map_names_tomograms(tmp_path):
    tbl = tmp_path / "t.tbl"
    tbl.write_bytes((DATA / "dynamo" / "t_double.tbl").read_bytes())
    (tmp_path / "t.doc").write_text("1 /data/tomo_17.mrc\n2 /data/tomo_18.mrc\n")
    picks = read_picks(tbl)
    assert set(picks.tomo_names.tolist()) == {"/data/tomo_17.mrc", "/data/tomo_18.mrc"}
    assert len(picks.for_tomogram("tomo_17")) == 150


def test_dynamo_real_table_map_and_complex_values():
    """12 rows of dynamotable's t_complex.tbl (tomograms 1-3; column 28 holds Dynamo's
    complex '0+1.2074e-06i' in three rows) with its real table map tmap_complex.doc."""
    picks = _quiet(DATA / "dynamo" / "t_complex_cut.tbl")
    assert len(picks) == 12
    assert picks.tomogram_names() == [
        "tomo_ts01.mrc_15.00Apx.mrc", "tomo_ts02.mrc_15.00Apx.mrc", "tomo_ts03.mrc_15.00Apx.mrc"
    ]
    # row 1: x y z = 1018.9 759.36 641.59, dx dy dz = -1.4197 0.57826 1.5785, minus 1
    np.testing.assert_allclose(picks.coords[0], [642.1685, 758.93826, 1016.4803], atol=1e-6)
    # row 9 (tag 840, tomogram 3): 368.21 388.22 311.19 + (-0.42035 0.58492 -1.4216) - 1
    np.testing.assert_allclose(picks.coords[8], [308.7684, 387.80492, 366.78965], atol=1e-6)
    assert picks.features["tag"][8] == 840
    assert len(picks.for_tomogram("tomo_ts02.mrc_15.00Apx")) == 4
    assert _has_note(picks, "t_complex_cut.doc")


def test_dynamo_short_table_and_missing_library(tmp_path, monkeypatch):
    bad = tmp_path / "short.tbl"
    bad.write_text("1 1 1 0 0 0\n")
    with pytest.raises(CryoGuardError, match="at least 26 columns"):
        read_picks(bad)
    monkeypatch.setitem(sys.modules, "dynamotable", None)
    with pytest.raises(CryoGuardError, match=r"install napari-cryoguard\[formats\]"):
        read_picks(DATA / "dynamo" / "t_double.tbl")



def test_dynamo_ragged_table_and_binary_garbage_are_one_line_errors(tmp_path):
    """Found by the hostile-input probe: a table whose second row had 30 of 35 columns
    was read (pandas filled the short row with NaN), and bytes 0-255 gave pandas'
    multi-line "Error tokenizing data" text."""
    row = ["0"] * 35
    row[0], row[23], row[24], row[25] = "1", "32", "32", "16"
    ragged = tmp_path / "ragged.tbl"
    ragged.write_text(" ".join(row) + "\n" + " ".join(row[:30]) + "\n")
    with pytest.raises(CryoGuardError, match="line 2 has 30 columns, the first row 35"):
        read_picks(ragged)
    garbage = tmp_path / "garbage.tbl"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CryoGuardError) as info:
        read_picks(garbage)
    assert "\n" not in str(info.value)
    fine = tmp_path / "fine.tbl"
    fine.write_text(" ".join(row) + "\n\n" + " ".join(row) + "\n")  # blank lines are fine
    assert len(read_picks(fine, voxel_size=10.0)) == 2

# --------------------------------------------------------------------------- IMOD


def test_imod_points_model_pixel_centres():
    picks = read_picks(DATA / "imod" / "points.mod")
    # points.txt of the same commit: x y z = 1 2 3, 0 1 1, 8 4 5
    expected_zyx = np.array([[3, 2, 1], [1, 1, 0], [5, 4, 8]], float) - [0, 0.5, 0.5]
    np.testing.assert_allclose(picks.coords, expected_zyx, atol=1e-6)
    assert picks.class_names == ["object 1"] and picks.labels.tolist() == [0, 0, 0]
    assert picks.voxel_size == 1.0 and _has_note(picks, "no physical pixel size")
    raw = read_picks(DATA / "imod" / "points.mod", pixel_centres=False, voxel_size=3.0)
    np.testing.assert_allclose(raw.coords[2], [5, 4, 8])
    assert raw.voxel_size == 3.0


def test_imod_objects_and_header_pixel_size():
    picks = read_picks(DATA / "imod" / "multiple_objects_example.mod")
    assert len(picks) == 6
    assert picks.voxel_size == pytest.approx(19.7333, abs=1e-3)  # 1.97333 nm in the header
    assert picks.class_names == ["chemo-array"]  # objects 2 and 3 share the name
    assert picks.features["object"].tolist() == [2, 2, 2, 3, 3, 3]
    # first point x y z = 367.000061 661.833435 134
    np.testing.assert_allclose(picks.coords[0], [134.0, 661.333435, 366.500061], atol=1e-3)
    np.testing.assert_allclose(picks.coords[3], [141.0, 358.500122, 783.000122], atol=1e-3)


def test_imod_refuses_other_files(tmp_path, monkeypatch):
    bad = tmp_path / "x.mod"
    bad.write_bytes(b"IMODV1.2" + b"\x00" * 10)
    with pytest.raises(CryoGuardError, match="IMOD model"):
        read_picks(bad)
    monkeypatch.setitem(sys.modules, "imodmodel", None)
    with pytest.raises(CryoGuardError, match=r"install napari-cryoguard\[formats\]"):
        read_picks(DATA / "imod" / "points.mod")


# --------------------------------------------------------------------------- copick


def test_copick_angstrom_to_voxels():
    picks = read_picks(DATA / "copick" / "TS_6_4_ribosome.json", voxel_size=10.0)
    assert len(picks) == 3
    np.testing.assert_allclose(
        picks.coords,
        [
            [61.9798, 528.8121, 527.4903],
            [72.6624, 518.1127, 549.3057],
            [42.1572, 516.8655, 565.6951],
        ],
        atol=1e-6,
    )
    assert picks.class_names == ["ribosome"] and picks.labels.tolist() == [0, 0, 0]
    assert picks.tomo_names.tolist() == ["TS_6_4"] * 3
    assert picks.voxel_size == 10.0
    assert "copick_transformation" not in picks.features  # all identity
    assert _has_note(picks, "angstrom", "10")
    at_40 = read_picks(DATA / "copick" / "TS_6_4_ribosome.json", voxel_size=40.0)
    np.testing.assert_allclose(at_40.coords * 40.0, picks.coords * 10.0)


def test_copick_real_data_portal_files_match_the_portals_own_conversion():
    """The CryoET Data Portal ingests these copick files (its test_annotations.py, case
    "copick, binning 10") as points at x/10, y/10, z/10: (4, 2, 3), (0, 5, 1), (3, 1.5, 9.2),
    (3, 1, 5) voxels. The same numbers here, in ZYX."""
    picks = read_picks(DATA / "copick" / "data_portal_copick.json", voxel_size=10.0)
    np.testing.assert_allclose(
        picks.coords, [[3.0, 2.0, 4.0], [1.0, 5.0, 0.0], [9.2, 1.5, 3.0], [5.0, 1.0, 3.0]]
    )
    assert picks.class_names == ["ribosome"] and picks.tomo_names is None  # run_name null
    mats = picks.features["copick_transformation"].reshape(-1, 4, 4)
    np.testing.assert_allclose(mats[0, :3, :3], [[-0.0, -0.7071067811865475, 0.7071067811865475],
                                                 [1.0, -0.0, 0.0],
                                                 [0.0, 0.7071067811865475, 0.7071067811865475]])
    np.testing.assert_allclose(mats[3, :3, :3], [[0, 0, -1], [0, 1, 0], [1, 0, 0]])
    assert _has_note(picks, "orientation") and not _has_note(picks, "translation part")
    inst = read_picks(DATA / "copick" / "data_portal_copick_instance.json", voxel_size=2.5)
    assert len(inst) == 6 and inst.tomo_names.tolist() == ["Position_94_Vol"] * 6
    assert inst.class_names == ["testobject"]
    # x y z = 10 20 30 and 7.5 5 2.5 Angstrom at 2.5 A per voxel
    np.testing.assert_allclose(inst.coords[0], [12.0, 8.0, 4.0])
    np.testing.assert_allclose(inst.coords[5], [1.0, 2.0, 3.0])
    assert "copick_transformation" not in inst.features  # all identity


def test_copick_null_run_name_takes_the_project_run_folder(tmp_path):
    picks_dir = tmp_path / "overlay" / "ExperimentRuns" / "TS_5_4" / "Picks"
    picks_dir.mkdir(parents=True)
    dst = picks_dir / "curation_0_ribosome.json"
    dst.write_bytes((DATA / "copick" / "data_portal_copick.json").read_bytes())  # run_name null
    picks = read_picks(dst, voxel_size=10.0)
    assert picks.tomo_names.tolist() == ["TS_5_4"] * 4
    assert _has_note(picks, "run_name is null", "TS_5_4")
    # a run_name in the file wins over the folder
    dst.write_bytes((DATA / "copick" / "data_portal_copick_instance.json").read_bytes())
    assert read_picks(dst, voxel_size=10.0).tomo_names[0] == "Position_94_Vol"


def test_copick_needs_a_voxel_size(tmp_path):
    with pytest.raises(CryoGuardError, match="voxel_size"):
        read_picks(DATA / "copick" / "TS_6_4_ribosome.json")
    text = (DATA / "copick" / "TS_6_4_ribosome.json").read_text()
    with_spacing = tmp_path / "p.json"
    with_spacing.write_text(text.replace('"voxel_spacing": null', '"voxel_spacing": 7.84'))
    picks = read_picks(with_spacing)
    assert picks.voxel_size == 7.84 and _has_note(picks, "voxel_spacing")


def test_copick_orientation_kept_and_bad_values_refused(tmp_path):
    p = tmp_path / "o.json"
    p.write_text(
        '{"pickable_object_name": "a", "user_id": "u", "session_id": "1", "points": ['
        '{"location": {"x": 10, "y": 20, "z": 30}, "score": 0.5,'
        ' "transformation_": [[0,-1,0,5],[1,0,0,0],[0,0,1,0],[0,0,0,1]]}]}'
    )
    picks = read_picks(p, voxel_size=10)
    # copick's particle centre is location + the matrix's translation column (its
    # docs/geometry.md 2.3; its RELION exporter adds it): x = 10 + 5 = 15 A, y = 20 A,
    # z = 30 A, at 10 A per voxel ZYX (3.0, 2.0, 1.5); the rotation is not applied
    np.testing.assert_allclose(picks.coords, [[3.0, 2.0, 1.5]])
    assert picks.features["copick_transformation"].shape == (1, 16)
    assert picks.tomo_names is None and picks.scores.tolist() == [0.5]
    assert _has_note(picks, "translation", "added to location")
    raw = read_picks(p, voxel_size=10, apply_shifts=False)
    np.testing.assert_allclose(raw.coords, [[3.0, 2.0, 1.0]])
    assert _has_note(raw, "translation", "not applied")
    p.write_text(
        '{"pickable_object_name": "a", "points": [{"location": {"x": "1", "y": 2, "z": 3}}]}'
    )
    with pytest.raises(CryoGuardError, match="location.x must be a number"):
        read_picks(p, voxel_size=10)
    p.write_text('{"hello": 1}')
    with pytest.raises(CryoGuardError, match="not a copick picks file"):
        read_picks(p, voxel_size=10)


# --------------------------------------------------------------------------- crYOLO / TomoTwin


def test_cbox_corner_to_centre():
    picks = read_picks(DATA / "cryolo" / "TS_01.cbox", voxel_size=13.1)
    assert len(picks) == 3
    np.testing.assert_allclose(
        picks.coords,
        [[88.0, 620.5, 500.0], [101.0, 52.0, 138.75], [12.0, 428.75, 27.0]],  # X + W/2, Y + H/2
        atol=1e-9,
    )
    np.testing.assert_allclose(picks.scores, [0.8731, 0.5412, 0.3020])
    assert np.isnan(picks.features["est_width"][1])
    assert picks.tomo_names.tolist() == ["TS_01"] * 3
    assert picks.voxel_size == 13.1
    assert _has_note(picks, "lower-left")
    centres = read_picks(DATA / "cryolo" / "TS_01.cbox", box_corner=False, tomo_name="T")
    np.testing.assert_allclose(centres.coords[0], [88.0, 602.0, 481.5])
    assert centres.tomo_names[0] == "T" and centres.voxel_size == 1.0


def test_cbox_real_napari_boxmanager_3d_file():
    # napari-boxmanager test_data/3d_particle.cbox, byte copy: three boxes of 25 voxels,
    # confidences <NA>; row 1 X Y Z = 12.257084 27.721405 50
    path = DATA / "cryolo" / "boxmanager_3d_particle.cbox"
    picks = read_picks(path, voxel_size=7.0)
    assert len(picks) == 3
    np.testing.assert_allclose(
        picks.coords,
        [
            [50.0, 27.721405 + 12.5, 12.257084 + 12.5],
            [50.0, 39.498080 + 12.5, 65.906382 + 12.5],
            [60.0, 48.062935 + 12.5, 62.456649 + 12.5],
        ],
        atol=1e-9,
    )
    assert picks.features["depth"].tolist() == [25.0] * 3
    assert np.isnan(picks.features["angle"]).all()
    assert picks.scores is None and _has_note(picks, "no scores")
    assert picks.tomo_names.tolist() == ["boxmanager_3d_particle"] * 3
    assert picks.voxel_size == 7.0


def test_cbox_without_z_is_refused(tmp_path):
    p = tmp_path / "two_d.cbox"
    p.write_text(
        "data_cryolo\n\nloop_\n_CoordinateX #1\n_CoordinateY #2\n_CoordinateZ #3\n_Width #4\n"
        "_Height #5\n10 20 <NA> 30 30\n"
    )
    with pytest.raises(CryoGuardError, match="2-D cbox"):
        read_picks(p)


def test_tomotwin_coords():
    picks = read_picks(DATA / "cryolo" / "tomotwin_test_coords.coords", voxel_size=10.0)
    np.testing.assert_allclose(picks.coords, [[3, 2, 1], [6, 5, 4], [9, 8, 7]])
    assert picks.tomo_names.tolist() == ["tomotwin_test_coords"] * 3
    assert picks.voxel_size == 10.0


# --------------------------------------------------------------------------- foreign tables


def test_napari_points_csv_is_zyx():
    picks = _quiet(DATA / "csv" / "napari_points.csv")
    np.testing.assert_allclose(picks.coords, [[10.0, 20.5, 30.25], [4, 5, 6], [0, 1.5, 2]])
    assert picks.features["index"].tolist() == [0.0, 1.0, 2.0]
    assert _has_note(picks, "axis-0")


def test_headerless_whitespace_text_is_xyz():
    picks = _quiet(DATA / "csv" / "imodmodel_points.txt", voxel_size=2.0)
    np.testing.assert_allclose(picks.coords, [[3, 2, 1], [1, 1, 0], [5, 4, 8]])
    assert _has_note(picks, "no header", "x, y, z")


@pytest.mark.parametrize(
    "sep, name",
    [("\t", "tab"), ("|", "pipe"), (";", "semicolon"), (" ", "whitespace"), (",", "comma")],
)
def test_delimiters_are_sniffed(tmp_path, sep, name):
    p = tmp_path / "t.tsv"
    rows = [["X", "Y", "Z", "tomo"], ["1.5", "2", "3", "TS_1"], ["4", "5", "6.25", "TS_2"]]
    p.write_text("\n".join(sep.join(r) for r in rows) + "\n")
    picks = read_picks(p, voxel_size=5.0)
    np.testing.assert_allclose(picks.coords, [[3, 2, 1.5], [6.25, 5, 4]])
    assert picks.tomo_names.tolist() == ["TS_1", "TS_2"]
    assert _has_note(picks, f"{name}-separated")


@pytest.mark.parametrize(
    "header",
    [
        "rlnCoordinateX,rlnCoordinateY,rlnCoordinateZ",
        "coordinate_x,coordinate_y,coordinate_z",
        "x_coord,y_coord,z_coord",
        "pos_x,pos_y,pos_z",
    ],
)
def test_coordinate_column_names(tmp_path, header):
    p = tmp_path / "n.csv"
    p.write_text(header + "\n1,2,3\n")
    np.testing.assert_allclose(read_picks(p, voxel_size=1.0).coords, [[3, 2, 1]])


def test_headerless_with_a_text_column(tmp_path):
    p = tmp_path / "h.csv"
    p.write_text("1,2,3,TS_1\n4,5,6,TS_2\n")
    picks = read_picks(p, voxel_size=1.0)
    np.testing.assert_allclose(picks.coords, [[3, 2, 1], [6, 5, 4]])
    assert picks.features["column4"].tolist() == ["TS_1", "TS_2"]
    q = tmp_path / "forced.csv"
    q.write_text("1,2,3\n")
    with pytest.raises(CryoGuardError, match="missing coordinate column"):
        read_picks(q, header=True, voxel_size=1.0)


def test_zyx_order_by_name(tmp_path):
    p = tmp_path / "zyx.csv"
    p.write_text("z,y,x\n1,2,3\n")
    np.testing.assert_allclose(read_picks(p, voxel_size=1.0).coords, [[1, 2, 3]])


def test_angstrom_units(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("x,y,z\n100,200,300\n")
    with pytest.raises(CryoGuardError, match="voxel_size"):
        read_picks(p, units="angstrom")
    picks = read_picks(p, units="angstrom", voxel_size=10.0)
    np.testing.assert_allclose(picks.coords, [[30, 20, 10]])
    assert _has_note(picks, "angstrom", "divided")
    q = tmp_path / "b.csv"
    q.write_text("rlnCoordinateXAngst,rlnCoordinateYAngst,rlnCoordinateZAngst\n100,200,300\n")
    with pytest.raises(CryoGuardError, match="Angstrom"):
        read_picks(q)
    np.testing.assert_allclose(read_picks(q, voxel_size=20.0).coords, [[15, 10, 5]])
    with pytest.raises(CryoGuardError, match="units"):
        read_picks(p, units="nm", voxel_size=1.0)


def test_foreign_class_columns(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("x,y,z,rlnClassNumber,confidence\n1,2,3,2,0.9\n4,5,6,0,0.1\n")
    picks = read_picks(p, voxel_size=1.0)
    assert picks.labels.tolist() == [1, -1]
    np.testing.assert_allclose(picks.scores, [0.9, 0.1])
    assert _has_note(picks, "1-based")


# --------------------------------------------------------------------------- hostile tables


def test_duplicate_columns_are_refused(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("z,y,x,score,score\n1,2,3,4,5\n")
    with pytest.raises(CryoGuardError, match="'score' appears more than once"):
        read_picks(p, voxel_size=1.0)
    p.write_text("x,y,z,X\n1,2,3,4\n")
    with pytest.raises(CryoGuardError, match="both name the x coordinate"):
        read_picks(p, voxel_size=1.0)


def test_utf8_bom_is_accepted(tmp_path):
    own = write_picks(tmp_path / "own.csv", Picks(coords=[[1.0, 2.0, 3.0]], voxel_size=4.0))
    own.write_bytes(b"\xef\xbb\xbf" + own.read_bytes())
    back = read_picks(own)
    np.testing.assert_array_equal(back.coords, [[1.0, 2.0, 3.0]])
    assert back.voxel_size == 4.0
    foreign = tmp_path / "excel.csv"
    foreign.write_bytes(b"\xef\xbb\xbfX,Y,Z\r\n1,2,3\r\n")
    np.testing.assert_array_equal(read_picks(foreign, voxel_size=1.0).coords, [[3, 2, 1]])


@pytest.mark.parametrize("value", ['"abc"', "5", '["a", 1]', "{}", "not json"])
def test_class_names_line_must_be_a_list_of_strings(tmp_path, value):
    p = tmp_path / "c.csv"
    p.write_text(f"# voxel_size: 1.0\n# class_names: {value}\nz,y,x,label\n1,2,3,0\n")
    with pytest.raises(CryoGuardError, match="class_names"):
        read_picks(p)


def test_class_names_list_reads(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text('# voxel_size: 1.0\n# class_names: ["abc"]\nz,y,x,label\n1,2,3,0\n')
    assert read_picks(p).class_names == ["abc"]
    p.write_text('# voxel_size: 1.0\n# class_names: ["abc"]\nz,y,x,label\n1,2,3,1\n')
    with pytest.raises(CryoGuardError, match="only 1 class names"):
        read_picks(p)


def test_huge_label_is_refused_before_allocating(tmp_path):
    p = tmp_path / "big.csv"
    p.write_text("# voxel_size: 1.0\nz,y,x,label,class_name\n1,2,3,30000000,a\n")
    t0 = time.perf_counter()
    with pytest.raises(CryoGuardError, match="limit"):
        read_picks(p)
    assert time.perf_counter() - t0 < 2.0


def test_huge_feature_width_is_refused(tmp_path):
    p = tmp_path / "w.csv"
    p.write_text('# voxel_size: 1.0\n# features: {"prob": ["<f4", 100000000]}\nz,y,x\n1,2,3\n')
    with pytest.raises(CryoGuardError, match="width 100000000"):
        read_picks(p)
    p.write_text('# voxel_size: 1.0\n# features: {"prob": ["garbage", 0]}\nz,y,x,prob\n1,2,3,4\n')
    with pytest.raises(CryoGuardError, match="dtype"):
        read_picks(p)


def test_own_csv_round_trip_keeps_notes_empty(tmp_path):
    picks = Picks(
        coords=[[1.0, 2.0, 3.0]], labels=[0], class_names=["r"], tomo_names=["TS"],
        features={"note": np.array(["NaN"])}, voxel_size=2.0,
    )
    back = read_picks(write_picks(tmp_path / "p.csv", picks))
    assert back.features["note"].tolist() == ["NaN"]
    assert back.notes == []
    assert back.class_names == ["r"] and back.tomo_names.tolist() == ["TS"]


def test_text_that_is_not_a_table(tmp_path):
    p = tmp_path / "bin.csv"
    p.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(CryoGuardError, match="UTF-8"):
        read_picks(p)
    q = tmp_path / "two.txt"
    q.write_text("1 2\n3 4\n")
    with pytest.raises(CryoGuardError, match="at least 3 columns"):
        read_picks(q)


# --------------------------------------------------------------------------- fuzz

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
_TABLE_ALPHABET = st.sampled_from(list("0123456789.,;|\t -+eE#:xyzXYZ_[]\"'{}\nabcn") + ["\ufeff"])


def _only_cryoguard_errors(path, **kw):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            picks = read_picks(path, **kw)
    except CryoGuardError:
        return None
    assert picks.coords.shape[1] == 3 and np.isfinite(picks.coords).all()
    return picks


@_FUZZ
@given(text=st.text(_TABLE_ALPHABET, max_size=300), suffix=st.sampled_from([".csv", ".tsv"]))
def test_fuzzed_tables_raise_only_cryoguard_error(tmp_path, text, suffix):
    """150 random texts of table characters: a Picks or a CryoGuardError, nothing else."""
    p = tmp_path / f"f{suffix}"
    p.write_text(text, encoding="utf-8")
    _only_cryoguard_errors(p)


@_FUZZ
@given(
    header=st.lists(
        st.sampled_from(["x", "y", "z", "X", "label", "class_name", "score", "tomo", "f[0]"]),
        max_size=7,
    ),
    meta=st.sampled_from(
        ["", '# class_names: ["a"]\n', '# class_names: "abc"\n', '# features: {"f": ["<f4", 1]}\n',
         '# features: {"f": ["<f4", 99999999]}\n', "# voxel_size: -1\n", "# voxel_size: 3\n"]
    ),
    cells=st.lists(st.sampled_from(["1", "-1", "2.5", "nan", "a", "", "30000000"]), max_size=21),
)
def test_fuzzed_cryoguard_csv_raise_only_cryoguard_error(tmp_path, header, meta, cells):
    """150 hand-shaped CSVs with metadata lines and odd cells: only CryoGuardError."""
    width = max(len(header), 1)
    rows = [",".join(cells[i : i + width]) for i in range(0, len(cells), width)]
    p = tmp_path / "c.csv"
    p.write_text(meta + ",".join(header) + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    _only_cryoguard_errors(p)


@_FUZZ
@given(data=st.data())
def test_fuzzed_copick_cbox_dynamo_imod_raise_only_cryoguard_error(tmp_path, data):
    """150 real files with random bytes overwritten or cut: only CryoGuardError."""
    source = data.draw(
        st.sampled_from(
            [
                DATA / "copick" / "TS_6_4_ribosome.json",
                DATA / "cryolo" / "TS_01.cbox",
                DATA / "dynamo" / "t_double.tbl",
                DATA / "imod" / "points.mod",
                DATA / "imod" / "multiple_objects_example.mod",
            ]
        )
    )
    raw = bytearray(source.read_bytes()[:4000])
    for _ in range(data.draw(st.integers(0, 6))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    p = tmp_path / source.name
    p.write_bytes(bytes(raw[: max(cut, 1)]))
    _only_cryoguard_errors(p, voxel_size=10.0)


def test_imod_counts_larger_than_the_file_are_refused(tmp_path):
    """A contour claiming 2**30 points would make imodmodel build gigabytes: refused first."""
    raw = bytearray((DATA / "imod" / "points.mod").read_bytes())
    at = raw.index(b"CONT") + 4
    raw[at : at + 4] = (2**30).to_bytes(4, "big")
    p = tmp_path / "huge.mod"
    p.write_bytes(bytes(raw))
    t0 = time.perf_counter()
    with pytest.raises(CryoGuardError, match="cut or corrupt"):
        read_picks(p)
    assert time.perf_counter() - t0 < 2.0
    cut = tmp_path / "cut.mod"
    cut.write_bytes((DATA / "imod" / "points.mod").read_bytes()[:-4])  # no IEOF: imodmodel loops
    with pytest.raises(CryoGuardError, match="cut or corrupt"):
        read_picks(cut)


# --------------------------------------------------------------------------- CryoET Data Portal
# Input files of the Portal's own ingestion tests (cryoet-data-portal-backend,
# ingestion_tools/scripts/tests/s3_import/test_annotations.py), whose expected outputs are
# voxel positions divided by a "binning": the reader must give the same positions.


def test_portal_relion3_origins_match_the_portals_expected_points():
    # Portal case "relion3_star, ... filter value 1, binning 4": tomo_1 points at
    # (1.3, 2.6, 3.8) and (0.2, 0.4, 0.7), i.e. coordinate - origin = (5.2, 10.4, 15.2), ...
    picks = read_picks(DATA / "relion" / "data_portal_relion_3.star")
    tomo_1 = picks.for_tomogram("tomo_1")
    np.testing.assert_allclose(tomo_1.coords[:, ::-1] / 4, [[1.3, 2.6, 3.8], [0.2, 0.4, 0.7]])
    assert picks.voxel_size == pytest.approx(1.7005)  # 1.7005 um * 1e4 / 10000
    assert picks.tomogram_names() == ["tomo_1", "tomo_2", "tomo_3"]
    tomoman = read_picks(DATA / "relion" / "data_portal_tomoman.star")
    part = tomoman.for_tomogram("grid_1_lamella1_pos1")
    np.testing.assert_allclose(part.coords[:, ::-1] / 4, [[1.3, 2.6, 3.8], [0.2, 0.4, 0.7]])
    assert tomoman.voxel_size == pytest.approx(1.96)  # rlnPixelSize
    # Portal case "relion4_star, ... filter value 1 (TS_001), binning 4": the same points,
    # here from rlnOriginXAngst at rlnImagePixelSize 1 A
    relion4 = read_picks(DATA / "relion" / "data_portal_relion_4.star").for_tomogram("TS_001")
    np.testing.assert_allclose(relion4.coords[:, ::-1] / 4, [[1.3, 2.6, 3.8], [0.2, 0.4, 0.7]])


def test_tardis_csv_in_angstrom_matches_the_portals_expected_points():
    # TARDIS writes "IDs,X [A],Y [A],Z [A]"; Portal case "tardis, binning 2": first points
    # (2, 4, 6), (2, 2, 2), (3, 2, 1)
    path = DATA / "csv" / "data_portal_tardis.csv"
    with pytest.raises(CryoGuardError, match="Angstrom"):
        read_picks(path)
    picks = read_picks(path, voxel_size=2.0)
    np.testing.assert_allclose(picks.coords[:3, ::-1], [[2, 4, 6], [2, 2, 2], [3, 2, 1]])
    assert picks.features["IDs"].tolist() == [0, 0, 1, 1, 1, 2]
    assert _has_note(picks, "Angstrom divided")


def test_unit_in_brackets_nanometres_and_pixels(tmp_path):
    nm = tmp_path / "nm.csv"
    nm.write_text("x (nm),y (nm),z (nm)\n1,2,3\n")
    np.testing.assert_allclose(read_picks(nm, voxel_size=5.0).coords[0], [6.0, 4.0, 2.0])
    px = tmp_path / "px.csv"
    px.write_text("X [px],Y [px],Z [px]\n1,2,3\n")
    np.testing.assert_allclose(_quiet(px).coords[0], [3.0, 2.0, 1.0])
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("X [A],Y [px],Z [A]\n1,2,3\n")
    with pytest.raises(CryoGuardError, match="same unit"):
        read_picks(mixed, voxel_size=1.0)


def test_portal_pipe_csv_and_imod_model():
    # Portal case "csv_with_header, pipe delimiter, binning 2": (0.5, 1, 1.5), (1, 1, 1),
    # (0, 1.5, 0) -> raw x y z = 1 2 3, 2 2 2, 0 3 0
    picks = _quiet(DATA / "csv" / "data_portal_points_pipe.csv")
    np.testing.assert_allclose(picks.coords[:, ::-1], [[1, 2, 3], [2, 2, 2], [0, 3, 0]])
    # the Portal takes IMOD points as they are ("mod, binning 2": the same raw 1 2 3, ...);
    # this reader follows 3dmod (x, y from the pixel edge), half a voxel lower in x and y
    mod = read_picks(DATA / "imod" / "data_portal_points.mod")
    raw = np.array([[1, 2, 3], [2, 2, 2], [0, 3, 0]], float)
    np.testing.assert_allclose(mod.coords[:, ::-1], raw - [0.5, 0.5, 0.0], atol=1e-6)
    raw_mod = read_picks(DATA / "imod" / "data_portal_points.mod", pixel_centres=False)
    np.testing.assert_allclose(raw_mod.coords[:, ::-1], raw, atol=1e-6)
