"""Tests for napari_cryoguard.io.coords: STAR and CSV pick files, exact round trips."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import starfile

from napari_cryoguard import CryoGuardError
from napari_cryoguard.io import Picks, read_picks, write_picks

SUFFIXES = [".star", ".csv"]


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.uint64)


def _full_picks(n: int = 40, seed: int = 0) -> Picks:
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, 500, (n, 3)) * 10.0 ** rng.integers(-3, 3, (n, 3))
    coords[0] = [1 / 3, 0.1, 1e-300]  # awkward decimals and a tiny value
    scores = rng.standard_normal(n)
    scores[1] = -0.0
    labels = rng.integers(-1, 3, n)
    return Picks(
        coords=coords,
        scores=scores,
        labels=labels,
        class_names=["ribosome", "proteasome", "80S mono", "never used"],
        tomo_names=rng.choice(["TS_01", "TS_02", "tomo 3", "007"], n),
        features={
            "margin": rng.standard_normal(n),
            "prob": rng.random((n, 3)).astype(np.float32),
            "fooled": rng.random(n) > 0.5,
            "attack": rng.choice(["fgsm", "pgd", "cw l2"], n),
            "rank": np.arange(n, dtype=np.int32),
        },
        voxel_size=13.48,
    )


def _assert_same(a: Picks, b: Picks) -> None:
    assert len(a) == len(b)
    assert a.coords.dtype == b.coords.dtype == np.float64
    assert np.array_equal(_bits(a.coords), _bits(b.coords))
    for name in ("scores",):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None)
        if x is not None:
            assert np.array_equal(_bits(x), _bits(y))
    assert (a.labels is None) == (b.labels is None)
    if a.labels is not None:
        assert b.labels.dtype == np.int64
        np.testing.assert_array_equal(a.labels, b.labels)
    assert a.class_names == b.class_names
    assert (a.tomo_names is None) == (b.tomo_names is None)
    if a.tomo_names is not None:
        assert a.tomo_names.tolist() == b.tomo_names.tolist()
    assert list(a.features) == list(b.features)
    for k, v in a.features.items():
        w = b.features[k]
        if v.dtype.kind == "U":
            assert w.dtype.kind == "U", k  # the string width follows the longest value
        else:
            assert w.dtype == v.dtype, k
        assert w.shape == v.shape, k
        if v.dtype.kind == "f":
            assert np.array_equal(v.view(f"u{v.itemsize}"), w.view(f"u{w.itemsize}")), k
        else:
            assert v.tolist() == w.tolist(), k
    assert a.voxel_size == b.voxel_size


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_with_every_column_is_exact(tmp_path, suffix):
    picks = _full_picks()
    path = write_picks(tmp_path / f"picks{suffix}", picks)
    assert path == tmp_path / f"picks{suffix}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = read_picks(path)
    _assert_same(picks, back)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_coordinates_only(tmp_path, suffix):
    rng = np.random.default_rng(7)
    picks = Picks(coords=rng.standard_normal((25, 3)) * 1e4, voxel_size=7.3)
    back = read_picks(write_picks(tmp_path / f"c{suffix}", picks))
    _assert_same(picks, back)
    assert back.scores is None and back.labels is None and back.tomo_names is None
    assert back.class_names is None and back.features == {}


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_float_coordinates_and_scores_bit_identical(tmp_path, suffix, seed):
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 2**64, size=(200, 4), dtype=np.uint64).view(np.float64)
    raw[~np.isfinite(raw)] = 1.0  # random bit patterns: all exponents, subnormals
    picks = Picks(coords=raw[:, :3], scores=raw[:, 3])
    back = read_picks(write_picks(tmp_path / f"r{suffix}", picks))
    assert np.array_equal(_bits(back.coords), _bits(picks.coords))
    assert np.array_equal(_bits(back.scores), _bits(picks.scores))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_empty_picks_round_trip(tmp_path, suffix):
    empty = Picks(coords=np.zeros((0, 3)), voxel_size=4.0)
    back = read_picks(write_picks(tmp_path / f"e{suffix}", empty))
    assert len(back) == 0 and back.coords.shape == (0, 3)
    assert back.voxel_size == 4.0
    full_empty = _full_picks().subset(np.zeros(40, bool))
    back = read_picks(write_picks(tmp_path / f"fe{suffix}", full_empty))
    _assert_same(full_empty, back)


def test_many_tomograms_in_one_star_file(tmp_path):
    n = 30
    names = np.repeat(["TS_001", "TS_002", "TS_003"], 10)
    picks = Picks(coords=np.arange(3 * n, dtype=float).reshape(n, 3) + 0.25, tomo_names=names)
    back = read_picks(write_picks(tmp_path / "multi.star", picks))
    assert back.tomo_names.tolist() == names.tolist()
    second = back.subset(back.tomo_names == "TS_002")
    np.testing.assert_array_equal(second.coords, picks.coords[10:20])


def test_tomo_name_argument_fills_and_must_agree(tmp_path):
    picks = Picks(coords=np.ones((3, 3)))
    back = read_picks(write_picks(tmp_path / "t.star", picks, tomo_name="TS_9"))
    assert back.tomo_names.tolist() == ["TS_9"] * 3
    named = Picks(coords=np.ones((2, 3)), tomo_names=["a", "b"])
    with pytest.raises(CryoGuardError, match="conflicts"):
        write_picks(tmp_path / "t2.star", named, tomo_name="a")
    write_picks(
        tmp_path / "t3.star", Picks(coords=np.ones((2, 3)), tomo_names=["a", "a"]), tomo_name="a"
    )


# --------------------------------------------------------------------------- conventions


def test_star_columns_follow_relion_conventions(tmp_path):
    coords = np.array([[1.5, 2.5, 3.5], [10.0, 20.0, 30.0], [7.0, 8.0, 9.0]])  # ZYX
    picks = Picks(
        coords=coords,
        scores=[0.5, 0.25, 0.125],
        labels=[0, 2, -1],
        class_names=["a", "b", "c"],
        tomo_names=["TS_1"] * 3,
        voxel_size=10.0,
    )
    path = write_picks(tmp_path / "relion.star", picks)
    blocks = starfile.read(path, always_dict=True)
    df = blocks["particles"]
    np.testing.assert_array_equal(df["rlnCoordinateX"], coords[:, 2])
    np.testing.assert_array_equal(df["rlnCoordinateY"], coords[:, 1])
    np.testing.assert_array_equal(df["rlnCoordinateZ"], coords[:, 0])
    np.testing.assert_array_equal(df["rlnClassNumber"], [1, 3, 0])  # 1-based, unknown -> 0
    np.testing.assert_array_equal(df["rlnAutopickFigureOfMerit"], [0.5, 0.25, 0.125])
    assert df["rlnTomoName"].tolist() == ["TS_1"] * 3
    assert df["cryoguardClassName"].fillna("").tolist() == ["a", "c", ""]
    assert float(blocks["cryoguard"]["cryoguardVoxelSize"]) == 10.0
    assert blocks["cryoguard_classes"]["cryoguardClassName"].tolist() == ["a", "b", "c"]


def test_csv_columns_are_zyx_with_header(tmp_path):
    coords = np.array([[1.5, 2.5, 3.5], [4.0, 5.0, 6.0]])
    path = write_picks(tmp_path / "p.csv", Picks(coords=coords, scores=[1.0, 2.0], labels=[0, -1]))
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    assert lines[0] == "z,y,x,score,label"
    assert lines[1].split(",")[:3] == ["1.5", "2.5", "3.5"]
    assert lines[2].split(",")[-1] == "-1"


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_voxel_size_argument_overrides_file(tmp_path, suffix):
    path = write_picks(tmp_path / f"v{suffix}", Picks(coords=np.ones((1, 3)), voxel_size=5.0))
    assert read_picks(path).voxel_size == 5.0
    assert read_picks(path, voxel_size=2.5).voxel_size == 2.5
    with pytest.raises(CryoGuardError, match="voxel size"):
        read_picks(path, voxel_size=0)


# --------------------------------------------------------------------------- files from other tools


RELION_STAR = """
# version 30001

data_optics

loop_
_rlnOpticsGroup #1
_rlnTomoTiltSeriesPixelSize #2
_rlnTomoTomogramBinning #3
1   1.35   8.000000

# version 30001

data_particles

loop_
_rlnTomoName #1
_rlnCoordinateX #2
_rlnCoordinateY #3
_rlnCoordinateZ #4
_rlnAngleRot #5
_rlnClassNumber #6
_rlnOriginXAngst #7
TS_01  100.5  200.25  50.0  12.0  1  0.0
TS_01  110.0  210.0   60.0  -7.5  2  4.2
TS_02  120.0  220.0   70.0  33.0  2  0.0
"""


def test_read_relion_particles_from_another_tool(tmp_path):
    path = tmp_path / "relion.star"
    path.write_text(RELION_STAR)
    picks = read_picks(path)
    # only rlnOriginXAngst, without Y and Z: kept as a feature, and the notes say so
    assert any("rlnOriginXAngst" in n and "kept as features" in n for n in picks.notes)
    assert any("1.35" in n and "rlnTomoTomogramBinning" in n for n in picks.notes)
    assert len(picks) == 3
    np.testing.assert_array_equal(picks.coords[0], [50.0, 200.25, 100.5])  # ZYX
    assert picks.tomo_names.tolist() == ["TS_01", "TS_01", "TS_02"]
    np.testing.assert_array_equal(picks.labels, [0, 1, 1])
    assert picks.class_names is None and picks.scores is None
    np.testing.assert_array_equal(picks.features["rlnAngleRot"], [12.0, -7.5, 33.0])
    assert "rlnOriginXAngst" in picks.features
    assert picks.voxel_size == pytest.approx(1.35 * 8)


def test_missing_coordinate_columns_are_named(tmp_path):
    path = tmp_path / "r5.star"
    path.write_text(
        "data_particles\n\nloop_\n_rlnTomoName #1\n_rlnCenteredCoordinateXAngst #2\n"
        "_rlnCoordinateY #3\nTS_1 1.0 2.0\n"
    )
    with pytest.raises(CryoGuardError) as info:
        read_picks(path)
    msg = str(info.value)
    assert "rlnCoordinateX" in msg and "rlnCoordinateZ" in msg
    assert "rlnCenteredCoordinateXAngst" in msg and "rlnTomoName" in msg


def test_star_with_zero_rows(tmp_path):
    path = tmp_path / "none.star"
    path.write_text(
        "data_particles\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n_rlnCoordinateZ #3\n"
    )
    picks = read_picks(path, voxel_size=3.0)
    assert len(picks) == 0 and picks.coords.shape == (0, 3)


def test_one_block_per_tomogram_is_merged(tmp_path):
    path = tmp_path / "blocks.star"
    block = (
        "data_{name}\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n_rlnCoordinateZ #3\n{rows}\n"
    )
    path.write_text(
        block.format(name="TS_A", rows="1 2 3\n4 5 6") + block.format(name="TS_B", rows="7 8 9")
    )
    picks = read_picks(path, voxel_size=1.0)
    assert picks.tomo_names.tolist() == ["TS_A", "TS_A", "TS_B"]
    np.testing.assert_array_equal(picks.coords[2], [9.0, 8.0, 7.0])


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_nan_coordinates_are_rejected(tmp_path, suffix):
    path = tmp_path / f"nan{suffix}"
    if suffix == ".star":
        path.write_text(
            "data_p\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n_rlnCoordinateZ #3\n"
            "1 2 3\nnan 2 3\n"
        )
    else:
        path.write_text("z,y,x\n1,2,3\n4,nan,6\n")
    with pytest.raises(CryoGuardError, match="non-finite"):
        read_picks(path, voxel_size=1.0)


def test_writing_nan_coordinates_is_refused(tmp_path):
    with pytest.raises(CryoGuardError, match="non-finite"):
        write_picks(tmp_path / "x.star", Picks(coords=[[np.nan, 1, 2]]))
    assert list(tmp_path.iterdir()) == []


def test_hand_made_csv(tmp_path):
    path = tmp_path / "hand.csv"
    path.write_text("X,Y,Z,class_name,note\n1,2,3,ribo,a\n4,5,6,proteasome,b\n7,8,9,ribo,c\n")
    with pytest.warns(UserWarning, match="voxel size"):
        picks = read_picks(path)
    np.testing.assert_array_equal(picks.coords[1], [6.0, 5.0, 4.0])
    assert picks.class_names == ["ribo", "proteasome"]
    np.testing.assert_array_equal(picks.labels, [0, 1, 0])
    assert picks.features["note"].tolist() == ["a", "b", "c"]
    assert picks.voxel_size == 1.0


def test_csv_missing_columns_are_named(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("x,y,score\n1,2,3\n")
    with pytest.raises(
        CryoGuardError, match="missing coordinate column.*z.*found columns: x, y, score"
    ):
        read_picks(path)


def test_csv_ragged_row_is_reported(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("z,y,x\n1,2,3\n4,5\n")
    with pytest.raises(CryoGuardError, match="row 2 has 2 fields"):
        read_picks(path)


# --------------------------------------------------------------------------- errors


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(CryoGuardError, match="not found"):
        read_picks(tmp_path / "missing.star")
    (tmp_path / "picks.xyz").write_text("1 2 3\n")
    with pytest.raises(CryoGuardError, match=r"not a pick file.*\.star, \.csv"):
        read_picks(tmp_path / "picks.xyz")
    with pytest.raises(CryoGuardError, match=r"\.star or \.csv"):
        write_picks(tmp_path / "picks.json", Picks(coords=np.zeros((1, 3))))


def test_star_file_without_blocks_is_rejected(tmp_path):
    path = tmp_path / "junk.star"
    path.write_text("hello\nworld\n")
    with pytest.raises(CryoGuardError, match="no 'data_' block"):
        read_picks(path)


def test_strings_a_star_file_cannot_hold(tmp_path):
    picks = Picks(coords=np.zeros((1, 3)), tomo_names=['say "hi"'])
    with pytest.raises(CryoGuardError, match="quote"):
        write_picks(tmp_path / "q.star", picks)
    assert list(tmp_path.iterdir()) == []
    picks.class_names = ["a,b", 'c "d"']
    picks.labels = np.array([1])
    back = read_picks(write_picks(tmp_path / "q.csv", picks))  # CSV quotes them
    assert back.tomo_names.tolist() == ['say "hi"']
    assert back.class_names == ["a,b", 'c "d"']


@pytest.mark.parametrize("name", ["x", "Score", "rlnCoordinateX", "has space", ""])
def test_feature_names_that_would_clash_are_refused(tmp_path, name):
    picks = Picks(coords=np.zeros((1, 3)), features={name: np.zeros(1)})
    with pytest.raises(CryoGuardError, match="feature name"):
        write_picks(tmp_path / "f.csv", picks)


def test_labels_below_minus_one_are_refused(tmp_path):
    with pytest.raises(CryoGuardError, match="labels"):
        write_picks(tmp_path / "l.star", Picks(coords=np.zeros((1, 3)), labels=[-2]))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_failed_write_keeps_old_file(tmp_path, suffix):
    path = write_picks(tmp_path / f"keep{suffix}", Picks(coords=np.ones((2, 3))))
    before = path.read_bytes()
    bad = Picks(coords=np.zeros((1, 3)), features={"obj": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(CryoGuardError):
        write_picks(path, bad)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("name", ["_x", "x_", "Coord-Z", "axis_0", "LABEL_", "tomo-name", "conf_idence"])
def test_csv_features_that_look_like_known_columns_read_back_as_features(tmp_path, name):
    """Found by the hostile-input probe: a feature '_x' was written but read back as a
    second x column ("columns 'x' and '_x' both name the x coordinate")."""
    picks = Picks(coords=np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
                  features={name: np.array([7.5, 8.5])}, voxel_size=10.0)
    back = read_picks(write_picks(tmp_path / "f.csv", picks))
    np.testing.assert_array_equal(back.coords, picks.coords)
    assert back.scores is None and back.labels is None and back.tomo_names is None
    assert list(back.features) == [name]
    np.testing.assert_array_equal(back.features[name], [7.5, 8.5])


def test_star_of_an_unknown_format_version_is_refused(tmp_path):
    """A cryoguard STAR written by a newer format is one clear error, not misread."""
    from napari_cryoguard.errors import CryoGuardError
    from napari_cryoguard.io import Picks, read_picks, write_picks

    path = write_picks(tmp_path / "p.star", Picks(coords=np.array([[1.0, 2.0, 3.0]]),
                                                  voxel_size=10.0))
    text = path.read_text()
    assert "_cryoguardFormatVersion\t\t\t1\n" in text
    assert read_picks(path).coords.tolist() == [[1.0, 2.0, 3.0]]
    for value, match in (("99", "format 99; this napari-cryoguard reads format 1 .update"),
                         ("x", "not a format number")):
        bad = tmp_path / f"v{value}.star"
        bad.write_text(text.replace("_cryoguardFormatVersion\t\t\t1\n",
                                    f"_cryoguardFormatVersion {value}\n"))
        with pytest.raises(CryoGuardError, match=match):
            read_picks(bad)
