"""Tests for napari_cryoguard.io.mrc: lazy reading, validation, atomic writing."""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from napari_cryoguard import CryoGuardError
from napari_cryoguard.io import (
    TOMOGRAM_SUFFIXES,
    LazyVolume,
    Tomogram,
    check_finite,
    read_tomogram,
    write_tomogram,
)

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "mrc-samples"
EMD_3197 = SAMPLES / "EMD-3197.map"
EMD_3001 = SAMPLES / "EMD-3001.map"


@contextlib.contextmanager
def _no_warnings():
    """Turn every warning into an error inside the block."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _write_raw(path: Path, data: np.ndarray, voxel_size=1.0) -> Path:
    """Write with mrcfile directly (not our writer), so reading is tested independently."""
    with mrcfile.new(path, overwrite=True) as mrc, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Data array contains NaN", RuntimeWarning)
        mrc.set_data(data)
        mrc.voxel_size = voxel_size
    return path


# --------------------------------------------------------------------------- real maps


def test_emd3197_shape_dtype_voxel_size_and_values():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tomo = read_tomogram(EMD_3197)
    with tomo:
        assert tomo.shape == (20, 20, 20)
        assert tomo.data.shape == (20, 20, 20)
        assert tomo.data.dtype == np.float32
        assert isinstance(tomo.data, np.memmap)
        assert not tomo.data.flags.writeable
        assert tomo.voxel_size == 11.4
        assert tomo.voxel_size_zyx == (11.4, 11.4, 11.4)
        assert tomo.name == "EMD-3197"
        assert tomo.path == EMD_3197
        assert tomo.mode == 2
        ref = mrcfile.read(EMD_3197)
        np.testing.assert_array_equal(np.asarray(tomo.data), ref)
    assert tomo.closed


def test_emd3001_anisotropic_voxels_warn_and_keep_file_order():
    """EMD-3001: nx, ny, nz = 73, 43, 25; mx, my, mz = 40, 12, 72; cella = 17.93, 4.71,
    33.03 Angstrom; mapc, mapr, maps = 3, 1, 2. Per crystal axis the voxel size is
    X 17.93 / 40 = 0.44825, Y 4.71 / 12 = 0.3925, Z 33.03 / 72 = 0.45875. Columns run along
    crystal Z (mapc = 3), rows along X (mapr = 1), sections along Y (maps = 2), so the
    array axes (sections, rows, columns) get (0.3925, 0.44825, 0.45875)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        tomo = read_tomogram(EMD_3001)
    assert all(issubclass(w.category, UserWarning) for w in record)
    with tomo:
        assert tomo.shape == (25, 43, 73)
        with mrcfile.open(EMD_3001, permissive=True) as ref:
            np.testing.assert_array_equal(np.asarray(tomo.data), ref.data)
            assert (int(ref.header.mapc), int(ref.header.mapr), int(ref.header.maps)) == (3, 1, 2)
        assert tomo.voxel_size_zyx == (0.3925, 0.44825, 0.45875)
        assert tomo.voxel_size == 0.45875  # the columns' (last array axis) voxel size
        assert any("axis order" in n for n in tomo.notes)
    # the non-standard axis mapping is reported; the data are not transposed
    assert any("axis order" in str(w.message) for w in record)
    assert sum("anisotropic" in str(w.message) for w in record) == 1


def _with_axes(tmp_path, axes, name="axes.mrc"):
    vol = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    path = _write_raw(tmp_path / name, vol, voxel_size=(2.0, 3.0, 4.0))  # x, y, z
    with mrcfile.open(path, mode="r+", permissive=True) as mrc:
        mrc.header.mapc, mrc.header.mapr, mrc.header.maps = axes
    return path


def test_axis_mapping_puts_each_crystal_axis_voxel_size_on_its_array_axis(tmp_path):
    # voxel sizes X 2, Y 3, Z 4 (mx = nx etc. as mrcfile writes them); sections, rows,
    # columns hold crystal axes maps, mapr, mapc
    with read_tomogram(_with_axes(tmp_path, (1, 2, 3))) as tomo:
        assert tomo.voxel_size_zyx == (4.0, 3.0, 2.0)
    with pytest.warns(UserWarning, match="axis order"):
        tomo = read_tomogram(_with_axes(tmp_path, (2, 3, 1), "b.mrc"))
    with tomo:  # columns = Y (3), rows = Z (4), sections = X (2)
        assert tomo.voxel_size_zyx == (2.0, 4.0, 3.0)


@pytest.mark.parametrize("axes", [(0, 0, 0), (1, 1, 2), (1, 2, 4), (-1, 2, 3)])
def test_invalid_axis_mapping_is_refused(tmp_path, axes):
    path = _with_axes(tmp_path, axes)
    with pytest.raises(CryoGuardError, match=r"invalid MRC axis mapping.*permutation of 1, 2, 3"):
        read_tomogram(path)


def test_zyx_orientation_matches_header_nx_ny_nz(tmp_path):
    vol = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    path = _write_raw(tmp_path / "asym.mrc", vol, voxel_size=2.0)
    with mrcfile.open(path) as mrc:
        assert (int(mrc.header.nx), int(mrc.header.ny), int(mrc.header.nz)) == (5, 4, 3)
    with read_tomogram(path) as tomo:
        assert tomo.shape == (3, 4, 5)
        # voxel (z=2, y=1, x=4) sits at flat index z*ny*nx + y*nx + x of the data block
        assert tomo.data[2, 1, 4] == 2 * 20 + 1 * 5 + 4


def test_suffix_matching_is_case_insensitive(tmp_path):
    target = tmp_path / "COPY.MAP"
    shutil.copy(EMD_3197, target)
    with read_tomogram(target) as tomo:
        assert tomo.shape == (20, 20, 20)
        assert tomo.name == "COPY"
    assert set(TOMOGRAM_SUFFIXES) == {".mrc", ".map", ".rec", ".st", ".zarr", ".tif", ".tiff",
                                      ".em"}


# --------------------------------------------------------------------------- write / read


def test_write_read_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(3)
    vol = rng.standard_normal((6, 7, 9)).astype(np.float32)
    vol[0, 0, :3] = [np.finfo(np.float32).max, np.finfo(np.float32).tiny, -0.0]
    out = write_tomogram(tmp_path / "rt.mrc", vol, 7.3)
    assert out == tmp_path / "rt.mrc"
    with _no_warnings(), read_tomogram(out) as tomo:
        assert tomo.voxel_size == 7.3
        assert tomo.voxel_size_zyx == (7.3, 7.3, 7.3)
        got = np.asarray(tomo.data)
        assert got.dtype == np.float32
        assert np.array_equal(got.view(np.uint32), vol.view(np.uint32))
    with mrcfile.open(out) as mrc:
        assert int(mrc.header.mode) == 2
        assert mrc.is_volume()


def test_write_converts_to_float32_and_keeps_anisotropic_voxel_size(tmp_path):
    vol = np.arange(2 * 3 * 4, dtype=np.int64).reshape(2, 3, 4)
    path = write_tomogram(tmp_path / "aniso.rec", vol, (3.0, 2.0, 1.5))
    with pytest.warns(UserWarning, match="anisotropic"):
        tomo = read_tomogram(path)
    with tomo:
        assert tomo.voxel_size_zyx == (3.0, 2.0, 1.5)
        assert tomo.voxel_size == 1.5
        np.testing.assert_array_equal(np.asarray(tomo.data), vol.astype(np.float32))


def test_atomic_write_leaves_no_temp_files(tmp_path):
    vol = np.ones((4, 5, 6), np.float32)
    write_tomogram(tmp_path / "a.mrc", vol, 1.0)
    write_tomogram(tmp_path / "a.mrc", vol * 2, 1.0)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mrc"]
    with read_tomogram(tmp_path / "a.mrc") as tomo:
        assert float(tomo.data[0, 0, 0]) == 2.0


def test_interrupted_write_keeps_old_file_and_cleans_up(tmp_path, monkeypatch):
    target = write_tomogram(tmp_path / "keep.mrc", np.full((3, 4, 5), 5.0, np.float32), 2.0)
    before = target.read_bytes()

    def boom(self, data):
        raise RuntimeError("disk vanished")

    monkeypatch.setattr(mrcfile.mrcfile.MrcFile, "set_data", boom)
    with pytest.raises(RuntimeError, match="disk vanished"):
        write_tomogram(target, np.zeros((3, 4, 5), np.float32), 2.0)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mrc"]


def test_write_refuses_overwrite_when_asked(tmp_path):
    path = write_tomogram(tmp_path / "x.mrc", np.zeros((2, 2, 2)), 1.0)
    with pytest.raises(CryoGuardError, match="exists"):
        write_tomogram(path, np.ones((2, 2, 2)), 1.0, overwrite=False)


@pytest.mark.parametrize(
    "data, voxel_size, match",
    [
        (np.zeros((4, 4)), 1.0, "3D"),
        (np.zeros((2, 2, 2, 2)), 1.0, "3D"),
        (np.zeros((2, 2, 2)), float("nan"), "voxel size"),
        (np.zeros((2, 2, 2)), 0.0, "voxel size"),
        (np.zeros((2, 2, 2)), -3.0, "voxel size"),
        (np.zeros((2, 2, 2)), float("inf"), "voxel size"),
    ],
)
def test_write_rejects_bad_input(tmp_path, data, voxel_size, match):
    with pytest.raises(CryoGuardError, match=match):
        write_tomogram(tmp_path / "bad.mrc", data, voxel_size)
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_unknown_suffix(tmp_path):
    with pytest.raises(CryoGuardError, match="suffix"):
        write_tomogram(tmp_path / "vol.tif", np.zeros((2, 2, 2)), 1.0)


# --------------------------------------------------------------------------- header problems


def test_zero_voxel_size_warns_naming_file_and_uses_one(tmp_path):
    path = _write_raw(tmp_path / "novox.mrc", np.zeros((3, 4, 5), np.float32), voxel_size=0.0)
    with pytest.warns(UserWarning, match="novox.mrc.*voxel size"):
        tomo = read_tomogram(path)
    with tomo:
        assert tomo.voxel_size == 1.0
        assert tomo.voxel_size_zyx == (1.0, 1.0, 1.0)



def test_picks_are_not_rescaled_by_an_assumed_tomogram_voxel_size(tmp_path):
    """Found by the hostile-input probe: a header with cella = 0 made `extract` rescale
    10 Angstrom picks to the assumed 1 Angstrom (coordinates x 10), so every pick fell
    outside and it wrote 0 subtomograms with exit 0."""
    from napari_cryoguard.io import Picks

    path = _write_raw(tmp_path / "novox.mrc", np.zeros((8, 40, 40), np.float32), voxel_size=0.0)
    known = _write_raw(tmp_path / "known.mrc", np.zeros((8, 40, 40), np.float32), voxel_size=5.0)
    picks = Picks(coords=np.array([[4.0, 20.0, 30.0]]), voxel_size=10.0)
    with pytest.warns(UserWarning, match="voxel size"), read_tomogram(path) as tomo:
        assert tomo.voxel_size_assumed
        placed = picks.on_tomogram(tomo)
    np.testing.assert_array_equal(placed.coords, picks.coords)
    assert placed.voxel_size == 1.0 and placed.voxel_size_assumed
    assert any("does not say its voxel size" in n for n in placed.notes)
    with read_tomogram(known) as tomo:  # a stored voxel size still converts
        assert not tomo.voxel_size_assumed
        np.testing.assert_array_equal(picks.on_tomogram(tomo).coords, [[8.0, 40.0, 60.0]])

def test_truncated_file_reports_expected_and_actual_bytes(tmp_path):
    path = _write_raw(tmp_path / "cut.mrc", np.zeros((4, 5, 6), np.float32))
    full = path.stat().st_size
    assert full == 1024 + 4 * 5 * 6 * 4
    with open(path, "rb+") as fh:
        fh.truncate(full - 100)
    with pytest.raises(CryoGuardError, match="truncated") as info:
        read_tomogram(path)
    msg = str(info.value)
    assert str(full) in msg and str(full - 100) in msg


def test_2d_image_is_rejected(tmp_path):
    path = _write_raw(tmp_path / "flat.mrc", np.zeros((8, 9), np.float32))
    with pytest.raises(CryoGuardError, match="2D image"):
        read_tomogram(path)


def test_single_section_volume_is_rejected_as_2d(tmp_path):
    path = _write_raw(tmp_path / "one.mrc", np.zeros((1, 8, 9), np.float32))
    with mrcfile.open(path, mode="r+") as mrc:
        mrc.set_volume()
    with pytest.raises(CryoGuardError, match="nz = 1"):
        read_tomogram(path)


def test_image_stack_is_rejected_unless_allowed(tmp_path):
    path = _write_raw(tmp_path / "stack.mrc", np.zeros((5, 8, 9), np.float32))
    with mrcfile.open(path, mode="r+") as mrc:
        mrc.set_image_stack()
    with pytest.raises(CryoGuardError, match="stack of 5 2D images"):
        read_tomogram(path)
    with _no_warnings(), read_tomogram(path, allow_stack=True) as tomo:
        assert tomo.shape == (5, 8, 9)
        assert tomo.voxel_size_zyx == (1.0, 1.0, 1.0)  # no spacing between stacked images


def test_mrcs_suffix_needs_allow_stack(tmp_path):
    path = _write_raw(tmp_path / "parts.mrcs", np.zeros((5, 8, 9), np.float32))
    with pytest.raises(CryoGuardError, match="allow_stack"):
        read_tomogram(path)
    with read_tomogram(path, allow_stack=True) as tomo:
        assert tomo.shape == (5, 8, 9)


def test_tilt_series_st_is_read_as_a_stack(tmp_path):
    path = _write_raw(tmp_path / "series.st", np.ones((7, 8, 9), np.float32))
    with mrcfile.open(path, mode="r+") as mrc:
        mrc.set_image_stack()
    with _no_warnings(), read_tomogram(path) as tomo:
        assert tomo.shape == (7, 8, 9)


def test_volume_stack_is_rejected(tmp_path):
    path = tmp_path / "vstack.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((2, 3, 4, 5), np.float32))
    with pytest.raises(CryoGuardError, match="stack of volumes"):
        read_tomogram(path)


def test_complex_mode_is_rejected(tmp_path):
    path = _write_raw(tmp_path / "fft.mrc", np.zeros((3, 4, 5), np.complex64))
    with pytest.raises(CryoGuardError, match="complex.*mode 4"):
        read_tomogram(path)


def _patch_int32(path: Path, word: int, value: int) -> None:
    with open(path, "rb+") as fh:
        fh.seek(4 * word)
        fh.write(np.int32(value).astype("<i4").tobytes())


def test_unknown_mode_is_rejected_with_its_number(tmp_path):
    path = _write_raw(tmp_path / "mode7.mrc", np.zeros((3, 4, 5), np.float32))
    _patch_int32(path, 3, 7)  # word 4 of the header (0-based 3) is the mode
    with pytest.raises(CryoGuardError, match="mode 7"):
        read_tomogram(path)


def test_text_file_is_not_mrc(tmp_path):
    path = tmp_path / "notes.mrc"
    path.write_text("this is not a map\n" * 200)
    with pytest.raises(CryoGuardError, match="not an MRC file"):
        read_tomogram(path)


def test_tiny_file_is_not_mrc(tmp_path):
    path = tmp_path / "tiny.map"
    path.write_bytes(b"MAP " * 10)
    with pytest.raises(CryoGuardError, match="40 bytes"):
        read_tomogram(path)


def test_missing_file_and_bad_suffix(tmp_path):
    with pytest.raises(CryoGuardError, match="not found"):
        read_tomogram(tmp_path / "nothing.mrc")
    other = tmp_path / "vol.png"
    other.write_bytes(b"x")
    with pytest.raises(CryoGuardError, match="suffix"):
        read_tomogram(other)


def test_missing_map_id_but_consistent_header_warns_and_reads(tmp_path):
    vol = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    path = _write_raw(tmp_path / "old.mrc", vol)
    with open(path, "rb+") as fh:
        fh.seek(208)
        fh.write(b"\0\0\0\0")
    with pytest.warns(UserWarning, match="MAP"):
        tomo = read_tomogram(path)
    with tomo:
        np.testing.assert_array_equal(np.asarray(tomo.data), vol)


def test_trailing_bytes_warn(tmp_path):
    path = _write_raw(tmp_path / "long.mrc", np.zeros((3, 4, 5), np.float32))
    with open(path, "ab") as fh:
        fh.write(b"\0" * 16)
    with pytest.warns(UserWarning, match="16 bytes longer"):
        tomo = read_tomogram(path)
    tomo.close()


# --------------------------------------------------------------------------- lazy volumes


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint16, np.float16])
def test_other_modes_read_lazily_as_float32(tmp_path, dtype):
    rng = np.random.default_rng(5)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None:
        raw = rng.integers(info.min, info.max, size=(6, 7, 8), endpoint=True).astype(dtype)
    else:
        raw = rng.standard_normal((6, 7, 8)).astype(dtype)
    path = _write_raw(tmp_path / f"v_{np.dtype(dtype).name}.mrc", raw)
    with read_tomogram(path) as tomo:
        data = tomo.data
        assert isinstance(data, LazyVolume)
        assert data.dtype == np.float32
        assert data.shape == (6, 7, 8) and data.ndim == 3 and data.size == 336 and len(data) == 6
        assert data.raw.dtype == np.dtype(dtype)  # still the file's dtype underneath
        one = data[2]
        assert isinstance(one, np.ndarray) and one.dtype == np.float32
        np.testing.assert_array_equal(one, raw[2].astype(np.float32))
        np.testing.assert_array_equal(data[1:4, ::2, -1], raw[1:4, ::2, -1].astype(np.float32))
        voxel = data[5, 6, 7]
        assert isinstance(voxel, np.float32) and voxel == np.float32(raw[5, 6, 7])
        full = np.asarray(data)
        assert type(full) is np.ndarray and full.dtype == np.float32
        np.testing.assert_array_equal(full, raw.astype(np.float32))
        assert np.asarray(data, dtype=np.float64).dtype == np.float64


def test_big_endian_float32_is_read_correctly(tmp_path):
    vol = np.random.default_rng(1).standard_normal((3, 4, 5)).astype(">f4")
    path = _write_raw(tmp_path / "be.mrc", vol)
    with read_tomogram(path) as tomo:
        got = np.asarray(tomo.data)
        assert got.dtype == np.float32 and got.dtype.isnative
        np.testing.assert_array_equal(got, vol.astype(np.float32))


def test_lazy_volume_works_with_scipy(tmp_path):
    from scipy import ndimage

    raw = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    with read_tomogram(_write_raw(tmp_path / "s.mrc", raw)) as tomo:
        out = ndimage.uniform_filter(np.asarray(tomo.data), size=1)
        np.testing.assert_array_equal(out, raw.astype(np.float32))


def test_napari_image_layer_accepts_lazy_volume(tmp_path):
    from napari.layers import Image

    raw = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) - 50
    with read_tomogram(_write_raw(tmp_path / "n.mrc", raw, voxel_size=3.0)) as tomo:
        layer = Image(tomo.data, scale=tomo.voxel_size_zyx)
        assert layer.data is tomo.data
        lo, hi = layer.contrast_limits
        assert raw.min() <= lo < hi <= raw.max()
        np.testing.assert_array_equal(layer.data[2], raw[2].astype(np.float32))
        assert tuple(layer.scale) == (3.0, 3.0, 3.0)


def test_opening_a_large_file_is_lazy(tmp_path):
    import psutil

    path = tmp_path / "big.mrc"
    shape = (512, 1024, 1024)  # 2 GiB of float32, written as a sparse file
    with mrcfile.new_mmap(path, shape=shape, mrc_mode=2, fill=None) as mrc:
        mrc.voxel_size = 10.0
    nbytes = int(np.prod(shape)) * 4
    assert path.stat().st_size == 1024 + nbytes
    proc = psutil.Process()
    rss_before = proc.memory_info().rss
    with read_tomogram(path) as tomo:
        assert isinstance(tomo.data, np.memmap)
        assert tomo.shape == shape
        assert float(tomo.data[300, 500, 700]) == 0.0  # touches one page
        grown = proc.memory_info().rss - rss_before
    assert grown < 64 * 2**20, f"opening grew resident memory by {grown} bytes"


def test_large_int16_file_stays_lazy(tmp_path):
    import psutil

    path = tmp_path / "big16.mrc"
    shape = (256, 1024, 1024)  # 512 MiB of int16, sparse
    with mrcfile.new_mmap(path, shape=shape, mrc_mode=1, fill=None) as mrc:
        mrc.voxel_size = 10.0
    proc = psutil.Process()
    rss_before = proc.memory_info().rss
    with read_tomogram(path) as tomo:
        assert isinstance(tomo.data, LazyVolume)
        section = tomo.data[100]
        assert section.shape == (1024, 1024) and section.dtype == np.float32
        grown = proc.memory_info().rss - rss_before
    assert grown < 64 * 2**20, f"opening grew resident memory by {grown} bytes"


# --------------------------------------------------------------------------- the rest


def test_check_finite_counts_chunkwise(tmp_path):
    rng = np.random.default_rng(2)
    vol = rng.standard_normal((9, 5, 4)).astype(np.float32)
    bad = rng.choice(vol.size, 11, replace=False)
    vol.flat[bad[:6]] = np.nan
    vol.flat[bad[6:9]] = np.inf
    vol.flat[bad[9:]] = -np.inf
    for chunk in (None, 1, 2, 4, 100):
        assert check_finite(vol, chunk=chunk) == 11
    path = write_tomogram(tmp_path / "nan.mrc", vol, 1.0)
    with read_tomogram(path) as tomo:
        assert check_finite(tomo.data, chunk=3) == 11
    assert check_finite(np.zeros((3, 3, 3), np.float32)) == 0
    with pytest.raises(CryoGuardError):
        check_finite(vol, chunk=0)


def test_check_finite_on_lazy_modes(tmp_path):
    half = np.zeros((4, 4, 4), np.float16)
    half[1, 2, 3] = np.nan
    with read_tomogram(_write_raw(tmp_path / "h.mrc", half)) as tomo:
        assert isinstance(tomo.data, LazyVolume)
        assert check_finite(tomo.data) == 1
    ints = np.ones((4, 4, 4), np.int16)
    with read_tomogram(_write_raw(tmp_path / "i.mrc", ints)) as tomo:
        assert check_finite(tomo.data) == 0


def test_data_stays_readable_after_close():
    tomo = read_tomogram(EMD_3197)
    data = tomo.data
    tomo.close()
    tomo.close()  # idempotent
    assert tomo.closed
    np.testing.assert_array_equal(np.asarray(data), mrcfile.read(EMD_3197))


def test_tomogram_from_array():
    tomo = Tomogram.from_array(np.ones((2, 3, 4), np.float64), voxel_size=5.0, name="sim")
    assert tomo.data.dtype == np.float32 and tomo.shape == (2, 3, 4)
    assert tomo.voxel_size_zyx == (5.0, 5.0, 5.0) and tomo.path is None
    with pytest.raises(CryoGuardError):
        Tomogram.from_array(np.ones((3, 4)))


def test_repr_does_not_dump_voxels():
    with read_tomogram(EMD_3197) as tomo:
        text = repr(tomo)
    assert "EMD-3197" in text and len(text) < 500
    assert os.fspath(EMD_3197) in text
