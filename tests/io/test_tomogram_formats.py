"""Tomograms in OME-Zarr, TIFF and TOM .em through ``read_tomogram``.

The three bundled files (tests/data/{omezarr,em,tiff}, see their NOTICE.md) hold the
same (16, 24, 32) volume with bright voxels (10.0) at ZYX (4, 6, 8), (10, 16, 20) and
(12, 8, 26), at 7.5 Angstrom.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_cryoguard import CryoGuardError
from napari_cryoguard.io import read_tomogram
from napari_cryoguard.io.em import write_em

DATA = Path(__file__).resolve().parents[1] / "data"
ZARR = DATA / "omezarr" / "TS_demo.zarr"
EM = DATA / "em" / "TS_demo.em"
TIF = DATA / "tiff" / "TS_demo.tif"
BRIGHT = [(4, 6, 8), (10, 16, 20), (12, 8, 26)]


def _check_bright(data):
    for z, y, x in BRIGHT:
        assert float(data[z, y, x]) == 10.0
    assert float(data[0, 0, 0]) != 10.0


# ------------------------------------------------------------------------- OME-Zarr


def test_omezarr_level0_is_lazy_with_its_voxel_size():
    import zarr

    tomo = read_tomogram(ZARR)
    assert isinstance(tomo.data, zarr.Array)  # not loaded: chunks read on slicing
    assert tomo.shape == (16, 24, 32)
    assert tomo.voxel_size_zyx == (7.5, 7.5, 7.5) and tomo.voxel_size == 7.5
    assert tomo.name == "TS_demo"
    _check_bright(tomo.data)


def test_omezarr_opening_reads_no_chunk(tmp_path):
    """Opening reads only metadata: with every chunk file gone it still opens, and the
    chunks are read only when sliced (then zarr's fill value, 0)."""
    dst = tmp_path / "nochunks.zarr"
    shutil.copytree(ZARR, dst)
    for chunk in dst.glob("*/*.*.*"):
        chunk.unlink()
    tomo = read_tomogram(dst)
    assert tomo.shape == (16, 24, 32) and tomo.voxel_size == 7.5
    assert float(tomo.data[4, 6, 8]) == 0.0


@pytest.mark.parametrize(("asked", "level", "shape", "size"), [
    (7.5, "0", (16, 24, 32), 7.5),
    (10.0, "0", (16, 24, 32), 7.5),   # |log(7.5/10)| = 0.29 < |log(15/10)| = 0.41
    (12.0, "1", (8, 12, 16), 15.0),
    (20.0, "1", (8, 12, 16), 15.0),   # |log(15/20)| = 0.29 < |log(30/20)| = 0.41
    (100.0, "2", (4, 6, 8), 30.0),
])
def test_omezarr_opens_the_level_nearest_to_the_asked_voxel_size(asked, level, shape, size):
    tomo = read_tomogram(ZARR, voxel_size=asked)
    assert tomo.shape == shape
    assert tomo.voxel_size_zyx == (size, size, size)
    assert any(f"opened level {level!r}" in n for n in tomo.notes)


def test_omezarr_level1_holds_the_binned_values():
    full = np.asarray(read_tomogram(ZARR).data)
    half = np.asarray(read_tomogram(ZARR, voxel_size=15).data)
    np.testing.assert_allclose(half, full.reshape(8, 2, 12, 2, 16, 2).mean((1, 3, 5)), rtol=1e-6)


def _copy_with(tmp_path, edit, name="copy.zarr"):
    dst = tmp_path / name
    shutil.copytree(ZARR, dst)
    attrs = json.loads((dst / ".zattrs").read_text())
    edit(attrs["multiscales"][0])
    (dst / ".zattrs").write_text(json.dumps(attrs))
    return dst


def test_omezarr_nanometer_units_are_converted(tmp_path):
    def to_nm(ms):
        for a in ms["axes"]:
            a["unit"] = "nanometer"
        for i, ds in enumerate(ms["datasets"]):
            ds["coordinateTransformations"][0]["scale"] = [0.75 * 2**i] * 3

    tomo = read_tomogram(_copy_with(tmp_path, to_nm, "nm.ome.zarr"))
    assert tomo.voxel_size_zyx == (7.5, 7.5, 7.5)
    assert tomo.name == "nm"
    assert any("converted to Angstrom" in n for n in tomo.notes)


def test_omezarr_without_units_assumes_angstrom_and_says_so(tmp_path):
    def drop_units(ms):
        for a in ms["axes"]:
            a.pop("unit")

    tomo = read_tomogram(_copy_with(tmp_path, drop_units))
    assert tomo.voxel_size == 7.5
    assert any("Angstrom assumed" in n for n in tomo.notes)


def test_omezarr_multiscale_level_transform_multiplies(tmp_path):
    def top(ms):
        ms["coordinateTransformations"] = [{"type": "scale", "scale": [2.0, 1.0, 1.0]}]

    assert read_tomogram(_copy_with(tmp_path, top)).voxel_size_zyx == (15.0, 7.5, 7.5)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda ms: ms["axes"][0].__setitem__("name", "q"), "z, y, x"),
    (lambda ms: ms["axes"][0].__setitem__("unit", "parsec"), "unknown length unit 'parsec'"),
    (lambda ms: ms["datasets"][0].__setitem__("path", "9"), "level '9' is listed but cannot"),
    (lambda ms: ms["datasets"][0]["coordinateTransformations"][0].__setitem__("scale", [1, 2]),
     "must hold 3 finite numbers"),
    (lambda ms: ms["datasets"][0]["coordinateTransformations"][0].__setitem__("scale", [0, 1, 1]),
     "must be positive"),
])
def test_omezarr_bad_metadata_is_one_clear_error(tmp_path, edit, match):
    with pytest.raises(CryoGuardError, match=match):
        read_tomogram(_copy_with(tmp_path, edit))


def test_omezarr_axes_in_x_y_z_order_are_transposed_lazily(tmp_path):
    # the same (16, 24, 32) array labelled x, y, z: dimension 0 is x, so z, y, x is the
    # array transposed, of shape (32, 24, 16); stored (4, 6, 8) is read at (8, 6, 4)
    def xyz(ms):
        ms["axes"].reverse()
        for ds in ms["datasets"]:
            ds["coordinateTransformations"][0]["scale"][0] *= 2  # x voxel twice as big

    tomo = read_tomogram(_copy_with(tmp_path, xyz))
    full = np.asarray(read_tomogram(ZARR).data)
    assert tomo.shape == (32, 24, 16)
    assert tomo.voxel_size_zyx == (7.5, 7.5, 15.0)
    for z, y, x in BRIGHT:
        assert float(tomo.data[x, y, z]) == 10.0
    np.testing.assert_array_equal(np.asarray(tomo.data), full.transpose(2, 1, 0))
    np.testing.assert_array_equal(tomo.data[3:9, 5, ::2], full[::2, 5, 3:9].T)
    np.testing.assert_array_equal(tomo.data[..., 7], full[7].T)
    assert any("order x, y, z" in n and "transposed" in n for n in tomo.notes)


def test_real_data_portal_fixture_tomogram(tmp_path):
    """cryoet-data-portal-backend's test tomogram RUN1.zarr (metadata files bundled byte
    for byte): axes x, y, z without units, scale 14.08, shape (4, 4, 4). Its one chunk
    (271 KB) is written here from the Portal's own recipe (test_infra/util/
    write_test_mrc.py: value j + 1 along the second dimension)."""
    import zarr

    dst = tmp_path / "RUN1.zarr"
    shutil.copytree(DATA / "omezarr" / "portal_test_RUN1.zarr", dst)
    empty = read_tomogram(dst)  # no chunk yet: zarr's fill value
    assert empty.shape == (4, 4, 4) and float(np.asarray(empty.data).max()) == 0.0
    data = np.zeros((4, 4, 4), np.float32)
    for j in range(4):
        data[:, j] = j + 1.0
    zarr.open_array(str(dst / "0"), mode="r+")[:] = data
    tomo = read_tomogram(dst)
    assert tomo.name == "RUN1" and tomo.shape == (4, 4, 4)
    assert tomo.voxel_size_zyx == (14.08, 14.08, 14.08)
    assert tomo.origin_zyx == (0.0, 0.0, 0.0)
    for j in range(4):  # the y axis is the second in both orders
        assert np.all(np.asarray(tomo.data)[:, j, :] == j + 1.0)
    assert any("Angstrom assumed" in n for n in tomo.notes)
    assert any("order x, y, z" in n for n in tomo.notes)


def test_omezarr_translation_is_kept_noted_and_applied(tmp_path):
    def shifted(ms):
        for ds in ms["datasets"]:
            ds["coordinateTransformations"].append(
                {"type": "translation", "translation": [15.0, 0.0, -7.5]})

    tomo = read_tomogram(_copy_with(tmp_path, shifted))
    assert tomo.origin_zyx == (15.0, 0.0, -7.5)
    _check_bright(tomo.data)  # voxel indices unchanged
    assert tomo.translate_zyx == (15.0, 0.0, -7.5)  # applied: the layer is drawn there
    assert any("translation of 15, 0, -7.5" in n and "drawn there" in n for n in tomo.notes)
    plain = read_tomogram(ZARR)
    assert not any("translation" in n for n in plain.notes)


def test_omezarr_not_a_multiscale_image(tmp_path):
    import zarr

    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=2)
    with pytest.raises(CryoGuardError, match="no 'multiscales'"):
        read_tomogram(tmp_path / "plain.zarr")
    with pytest.raises(CryoGuardError, match="not found"):
        read_tomogram(tmp_path / "missing.zarr")


def test_real_ome_zarr_py_v02_image_is_refused_as_two_channels_2d():
    """ome-zarr-py's own test image (NGFF 0.2: no axes, so t, c, z, y, x; shape
    (1, 2, 1, 16, 16) uint8): two channels and one z section are not a tomogram."""
    import zarr

    path = DATA / "omezarr" / "ome-zarr-py-v2.zarr"
    assert zarr.open_group(str(path), mode="r")["0"].shape == (1, 2, 1, 16, 16)
    with pytest.raises(CryoGuardError, match=r"shape \(1, 2, 1, 16, 16\).*one time point and "
                                             "channel"):
        read_tomogram(path)


def test_omezarr_single_section_is_a_2d_image(tmp_path):
    import zarr

    root = zarr.open_group(str(tmp_path / "flat.zarr"), mode="w", zarr_format=2)
    root.create_array("0", shape=(1, 5, 6), dtype="float32")[:] = 1.0
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": n, "type": "space", "unit": "angstrom"} for n in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 1.0, 1.0]}]}]}]
    with pytest.raises(CryoGuardError, match="2D image"):
        read_tomogram(tmp_path / "flat.zarr")


def test_omezarr_drops_length_one_leading_axes(tmp_path):
    import zarr

    vol = np.arange(4 * 5 * 6, dtype=np.int16).reshape(1, 1, 4, 5, 6)
    root = zarr.open_group(str(tmp_path / "tczyx.zarr"), mode="w", zarr_format=2)
    root.create_array("0", shape=vol.shape, dtype="int16")[:] = vol
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
        *({"name": n, "type": "space", "unit": "nanometer"} for n in "zyx")],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1, 1, 2.0, 1.0, 1.0]}]}]}]
    tomo = read_tomogram(tmp_path / "tczyx.zarr")
    assert tomo.shape == (4, 5, 6)
    assert tomo.voxel_size_zyx == (20.0, 10.0, 10.0)
    assert tomo.data.dtype == np.float32
    assert float(tomo.data[3, 4, 5]) == 119.0
    np.testing.assert_array_equal(np.asarray(tomo.data), vol[0, 0].astype(np.float32))


# ------------------------------------------------------------------------------ TIFF


def test_tiff_imagej_voxel_size_in_nm_is_converted():
    tomo = read_tomogram(TIF)
    assert isinstance(tomo.data, np.memmap)  # uncompressed: memory-mapped, not loaded
    assert tomo.shape == (16, 24, 32)
    assert tomo.voxel_size_zyx == pytest.approx((7.5, 7.5, 7.5), rel=1e-9)
    assert tomo.name == "TS_demo"
    _check_bright(tomo.data)
    assert any("ImageJ metadata" in n for n in tomo.notes)


def test_tiff_without_metadata_uses_given_or_one_with_a_note(tmp_path):
    import tifffile

    path = tmp_path / "plain.tiff"
    tifffile.imwrite(path, np.ones((3, 4, 5), np.uint16), photometric="minisblack")
    with pytest.warns(UserWarning, match="assumed 1.0 Angstrom"):
        tomo = read_tomogram(path)
    assert tomo.voxel_size_zyx == (1.0, 1.0, 1.0)
    assert any("assumed 1.0" in n for n in tomo.notes)
    assert tomo.data.dtype == np.float32 and float(tomo.data[2, 3, 4]) == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tomo = read_tomogram(path, voxel_size=12.0)
    assert tomo.voxel_size_zyx == (12.0, 12.0, 12.0)


def test_ome_tiff_physical_size(tmp_path):
    import tifffile

    path = tmp_path / "o.ome.tif"
    tifffile.imwrite(path, np.zeros((3, 4, 5), np.float32), ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "nm",
        "PhysicalSizeY": 0.5, "PhysicalSizeYUnit": "nm",
        "PhysicalSizeZ": 0.8, "PhysicalSizeZUnit": "nm"})
    tomo = read_tomogram(path, voxel_size=3.0)
    assert tomo.voxel_size_zyx == pytest.approx((8.0, 5.0, 5.0))
    assert tomo.name == "o"
    assert any("was not used" in n for n in tomo.notes)


def test_tiff_2d_and_garbage_are_refused(tmp_path):
    import tifffile

    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.zeros((4, 5), np.float32))
    with pytest.raises(CryoGuardError, match="a tomogram is a 3D"):
        read_tomogram(flat)
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all")
    with pytest.raises(CryoGuardError, match="not a readable TIFF"):
        read_tomogram(bad)



@pytest.mark.parametrize("compression", [None, "zlib"])
def test_truncated_tiff_and_tiff_without_pages_are_one_error(tmp_path, compression):
    """Found by the hostile-input probe: a TIFF cut after 5,000 bytes opened and then
    failed on the first slice with tifffile's TiffFileError; a header pointing its first
    page past the end gave IndexError (no series)."""
    import struct

    import tifffile

    rng = np.random.default_rng(0)
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, rng.standard_normal((16, 64, 64)).astype(np.float32),
                     compression=compression)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    # uncompressed: the data runs past the end; zlib: the pages after the cut are gone,
    # so what is left is no longer the 3D stack it was
    with pytest.raises(CryoGuardError, match="truncated|a tomogram is a 3D"):
        read_tomogram(cut)
    no_pages = tmp_path / "nopages.tif"
    no_pages.write_bytes(b"II*\0" + struct.pack("<I", 10**9))
    with pytest.raises(CryoGuardError, match="no image"):
        read_tomogram(no_pages)


def test_complex_tiff_is_refused(tmp_path):
    import tifffile

    path = tmp_path / "fft.tif"
    tifffile.imwrite(path, np.ones((4, 8, 8), np.complex64))
    with pytest.raises(CryoGuardError, match="complex64 pixels"):
        read_tomogram(path)

# -------------------------------------------------------------------------------- EM


def test_real_pytom_em_volume():
    """PyTom's test map tests/testData/human_ribo_21A.em: machine 6 (PC), float32,
    32 x 32 x 32, no voxel size in the header (all 40 parameters 0)."""
    path = DATA / "em" / "pytom_human_ribo_21A.em"
    with pytest.warns(UserWarning, match="assumed 1.0 Angstrom"):
        tomo = read_tomogram(path)
    assert isinstance(tomo.data, np.memmap)
    assert tomo.shape == (32, 32, 32) and tomo.voxel_size == 1.0
    # X fastest after the 512-byte header: (z, y, x) in C order
    raw = np.fromfile(path, dtype="<f4", offset=512).reshape(32, 32, 32)
    np.testing.assert_array_equal(np.asarray(tomo.data), raw)
    assert float(tomo.data[16, 16, 16]) == pytest.approx(-0.07640868)
    assert float(np.asarray(tomo.data).max()) == pytest.approx(0.08722705)
    assert read_tomogram(path, voxel_size=21.0).voxel_size == 21.0
    # PyTom's int2.em is a 64 x 64 x 1 int16 image
    with pytest.raises(CryoGuardError, match="2D image"):
        read_tomogram(DATA / "em" / "pytom_int2.em")


def test_em_header_and_voxels():
    head = EM.read_bytes()[:16]
    assert head[0] == 6 and head[3] == 5  # PC little-endian, float32
    assert np.frombuffer(head[4:16], "<i4").tolist() == [32, 24, 16]  # nx, ny, nz
    with pytest.warns(UserWarning, match="assumed 1.0 Angstrom"):
        tomo = read_tomogram(EM)
    assert isinstance(tomo.data, np.memmap) and not tomo.data.flags.writeable
    assert tomo.shape == (16, 24, 32)
    assert tomo.voxel_size == 1.0
    _check_bright(tomo.data)
    # byte offset of voxel (z, y, x) = 512 + 4 * (z * 24 * 32 + y * 32 + x)
    z, y, x = BRIGHT[1]
    off = 512 + 4 * (z * 24 * 32 + y * 32 + x)
    assert np.frombuffer(EM.read_bytes()[off:off + 4], "<f4")[0] == 10.0
    assert read_tomogram(EM, voxel_size=7.5).voxel_size_zyx == (7.5, 7.5, 7.5)


def test_em_big_endian_and_int16(tmp_path):
    vol = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    big = write_em(tmp_path / "big.em", vol, big_endian=True)
    np.testing.assert_array_equal(np.asarray(read_tomogram(big, voxel_size=2).data), vol)
    raw = bytearray(512)
    raw[0], raw[3] = 6, 2
    raw[4:16] = np.array([4, 3, 2], "<i4").tobytes()
    path = tmp_path / "short.em"
    path.write_bytes(bytes(raw) + vol.astype("<i2").tobytes())
    tomo = read_tomogram(path, voxel_size=2)
    assert tomo.data.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(tomo.data), vol)


@pytest.mark.parametrize(("machine", "dtype", "dims", "extra", "match"), [
    (9, 5, (4, 3, 2), 0, "machine byte 9"),
    (6, 8, (4, 3, 2), 0, "complex"),
    (6, 7, (4, 3, 2), 0, "data type 7"),
    (6, 5, (4, 3, 0), 0, "invalid EM header"),
    (6, 5, (4, 3, 2), -8, "truncated"),
    (6, 5, (4, 3, 1), 0, "2D image"),
])
def test_em_bad_headers(tmp_path, machine, dtype, dims, extra, match):
    raw = bytearray(512)
    raw[0], raw[3] = machine, dtype
    raw[4:16] = np.array(dims, "<i4").tobytes()
    n = int(np.prod(dims)) * 4 + extra
    path = tmp_path / "bad.em"
    path.write_bytes(bytes(raw) + b"\0" * max(n, 0))
    with pytest.raises(CryoGuardError, match=match):
        read_tomogram(path, voxel_size=1)


def test_em_too_short_for_header(tmp_path):
    path = tmp_path / "tiny.em"
    path.write_bytes(b"\x06\x00\x00\x05")
    with pytest.raises(CryoGuardError, match="fewer than the 512-byte EM header"):
        read_tomogram(path)


def test_compressed_tiff_is_read_lazily_through_zarr(tmp_path):
    import tifffile

    vol = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    path = tmp_path / "c.tif"
    tifffile.imwrite(path, vol, compression="zlib", imagej=True, resolution=(0.5, 0.5),
                     metadata={"spacing": 2.0, "unit": "nm", "axes": "ZYX"})
    tomo = read_tomogram(path)
    assert not isinstance(tomo.data, np.ndarray)
    assert tomo.voxel_size_zyx == pytest.approx((20.0, 20.0, 20.0))
    assert float(tomo.data[3, 4, 5]) == 119.0
    np.testing.assert_array_equal(np.asarray(tomo.data), vol)
    assert any("compressed" in n for n in tomo.notes)


def test_ngff_05_zarr_v3_metadata_under_ome(tmp_path):
    import zarr

    vol = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    root = zarr.open_group(str(tmp_path / "v05.ome.zarr"), mode="w", zarr_format=3)
    root.create_array("s0", shape=vol.shape, dtype="float32")[:] = vol
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": [
        {"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"],
        "datasets": [{"path": "s0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.2, 1.1, 1.1]},
            {"type": "translation", "translation": [5.0, 0.0, 0.0]}]}]}]}
    tomo = read_tomogram(tmp_path / "v05.ome.zarr")
    assert tomo.name == "v05"
    assert tomo.voxel_size_zyx == pytest.approx((12.0, 11.0, 11.0))
    assert tomo.origin_zyx == pytest.approx((50.0, 0.0, 0.0))
    np.testing.assert_array_equal(np.asarray(tomo.data), vol)


# ------------------------------------------------------------------------------ fuzz

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_FUZZ = settings(max_examples=150, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 511), st.integers(0, 255)), min_size=1,
                      max_size=12))
def test_150_fuzzed_em_headers_raise_only_cryoguard_errors(tmp_path, edits):
    data = bytearray(EM.read_bytes())
    for pos, value in edits:
        data[pos] = value
    path = tmp_path / "fuzz.em"
    path.write_bytes(bytes(data))
    try:
        tomo = read_tomogram(path, voxel_size=2.0)
    except CryoGuardError:
        return
    assert len(tomo.shape) == 3 and tomo.data.shape == tomo.shape


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 40) | st.floats(allow_nan=True)
    | st.sampled_from(["0", "1", "z", "y", "x", "scale", "angstrom", "nm", "parsec"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["name", "unit", "type", "path", "scale", "translation", "axes",
                         "datasets", "coordinateTransformations"]), inner, max_size=4),
    max_leaves=12,
)


@_FUZZ
@given(key=st.sampled_from(["axes", "datasets", "coordinateTransformations", "version"]),
       value=_JSON, level_edit=st.booleans())
def test_150_fuzzed_omezarr_metadata_raise_only_cryoguard_errors(tmp_path_factory, key, value,
                                                                 level_edit):
    dst = tmp_path_factory.mktemp("fz") / "f.zarr"
    shutil.copytree(ZARR, dst)
    attrs = json.loads((dst / ".zattrs").read_text())
    ms = attrs["multiscales"][0]
    if level_edit and key == "coordinateTransformations":
        ms["datasets"][0][key] = value
    else:
        ms[key] = value
    (dst / ".zattrs").write_text(json.dumps(attrs))
    for asked in (None, 20.0):
        try:
            tomo = read_tomogram(dst, voxel_size=asked)
        except CryoGuardError:
            continue
        assert all(v > 0 for v in tomo.voxel_size_zyx) and len(tomo.shape) == 3
