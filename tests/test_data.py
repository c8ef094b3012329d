"""Tests for SubtomogramDataset and its .npz file format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_cryoguard.data import (
    FORMAT_VERSION,
    SubtomogramDataset,
    load_dataset,
    save_dataset,
)
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.io.picks import Picks
from napari_cryoguard.picking import extract_subtomograms


def _dataset(n=6, cube=8, seed=0):
    rng = np.random.default_rng(seed)
    return SubtomogramDataset(
        volumes=rng.normal(size=(n, cube, cube, cube)).astype(np.float32),
        labels=rng.integers(-1, 3, n),
        class_names=["ribosome", "proteasome", "tric"],
        coords=rng.uniform(0, 100, (n, 3)),
        tomo_names=[f"tomo{i % 2}" for i in range(n)],
        voxel_size=9.4,
        normalized=True,
        meta={"picking": {"sigma1": 7.0, "k": 1.1}, "note": "ünïcode"},
    )


def _assert_same(a, b):
    np.testing.assert_array_equal(a.volumes, b.volumes)
    assert a.volumes.dtype == b.volumes.dtype == np.float32
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.coords, b.coords)
    np.testing.assert_array_equal(a.tomo_names, b.tomo_names)
    assert a.class_names == b.class_names
    assert a.voxel_size == b.voxel_size
    assert a.normalized == b.normalized
    assert a.meta == b.meta


def test_round_trip_exact(tmp_path):
    ds = _dataset()
    out = save_dataset(tmp_path / "d.npz", ds)
    assert out == tmp_path / "d.npz" and out.is_file()
    back = load_dataset(out)
    _assert_same(ds, back)
    assert back.labels.dtype == np.int64 and back.coords.dtype == np.float64
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]


def test_round_trip_minimal_and_keywords(tmp_path):
    vol = np.ones((3, 5, 5, 5), np.float32)
    path = save_dataset(tmp_path / "m.npz", volumes=vol, voxel_size=2.0, normalized=False)
    back = load_dataset(path)
    np.testing.assert_array_equal(back.volumes, vol)
    assert back.labels is None and back.coords is None and back.tomo_names is None
    assert back.class_names is None and back.voxel_size == 2.0 and back.normalized is False
    assert back.num_classes == 0 and back.cube == 5 and len(back) == 3


def test_empty_dataset_round_trip(tmp_path):
    ds = SubtomogramDataset(volumes=np.zeros((0, 4, 4, 4), np.float32), labels=np.zeros(0, int))
    back = load_dataset(save_dataset(tmp_path / "e.npz", ds))
    assert len(back) == 0 and back.cube == 4 and back.labels.shape == (0,)


def test_properties_and_subset():
    ds = _dataset(n=6)
    assert len(ds) == 6 and ds.cube == 8 and ds.num_classes == 3
    sub = ds.subset([4, 1])
    np.testing.assert_array_equal(sub.volumes, ds.volumes[[4, 1]])
    np.testing.assert_array_equal(sub.labels, ds.labels[[4, 1]])
    np.testing.assert_array_equal(sub.tomo_names, ds.tomo_names[[4, 1]])
    mask = ds.labels >= 0
    assert len(ds.subset(mask)) == int(mask.sum())
    no_names = SubtomogramDataset(volumes=ds.volumes, labels=[0, 4, 1, 0, 0, 2])
    assert no_names.num_classes == 5


def test_single_tomo_name_is_broadcast():
    ds = SubtomogramDataset(volumes=np.zeros((3, 4, 4, 4), np.float32), tomo_names="TS_01")
    np.testing.assert_array_equal(ds.tomo_names, ["TS_01"] * 3)


def test_from_extraction_keeps_the_right_rows():
    vol = np.random.default_rng(0).normal(size=(30, 30, 30)).astype(np.float32)
    picks = Picks(
        coords=[[15, 15, 15], [1, 1, 1], [20, 12, 14]],
        labels=[0, 1, 1],
        class_names=["a", "b"],
        voxel_size=12.0,
    )
    sub = extract_subtomograms(vol, picks, 8)
    ds = SubtomogramDataset.from_extraction(sub, picks, tomo_name="t")
    np.testing.assert_array_equal(ds.labels, [0, 1])
    np.testing.assert_array_equal(ds.coords, picks.coords[[0, 2]])
    assert ds.voxel_size == 12.0 and ds.class_names == ["a", "b"] and ds.normalized


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"volumes": np.zeros((2, 4, 4))}, "N, D, H, W"),
        ({"volumes": np.zeros((2, 4, 4, 5))}, "cubes"),
        ({"volumes": np.zeros((2, 4, 4, 4)), "labels": [0]}, "labels"),
        (
            {"volumes": np.zeros((2, 4, 4, 4)), "labels": [0, 2], "class_names": ["a", "b"]},
            "class names",
        ),
        ({"volumes": np.zeros((2, 4, 4, 4)), "coords": np.zeros((2, 2))}, "coords"),
        ({"volumes": np.zeros((2, 4, 4, 4)), "voxel_size": 0.0}, "voxel_size"),
    ],
)
def test_invalid_dataset(kwargs, match):
    with pytest.raises(CryoGuardError, match=match):
        SubtomogramDataset(**kwargs)


def test_meta_must_be_json(tmp_path):
    ds = SubtomogramDataset(volumes=np.zeros((1, 4, 4, 4), np.float32), meta={"x": object()})
    with pytest.raises(CryoGuardError, match="JSON"):
        save_dataset(tmp_path / "x.npz", ds)
    assert list(tmp_path.iterdir()) == []


def _write_npz(path, **arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def _meta(**kw):
    base = {"class_names": None, "voxel_size": 1.0, "normalized": True, "meta": {}}
    base.update(kw)
    return np.asarray(json.dumps(base))


def test_corrupt_files(tmp_path):
    vol = np.zeros((2, 4, 4, 4), np.float32)
    version = np.asarray(FORMAT_VERSION)
    cases = {
        "missing.npz": ("not found", None),
        "text.npz": ("not a readable", lambda p: p.write_text("hello, not a zip")),
        "single.npz": ("single .npy", lambda p: np.save(open(p, "wb"), vol)),
        "noversion.npz": ("format_version", lambda p: _write_npz(p, volumes=vol, metadata=_meta())),
        "version2.npz": (
            "version 2",
            lambda p: _write_npz(p, format_version=np.asarray(2), volumes=vol, metadata=_meta()),
        ),
        "novolumes.npz": (
            "volumes",
            lambda p: _write_npz(p, format_version=version, metadata=_meta()),
        ),
        "badjson.npz": (
            "JSON",
            lambda p: _write_npz(
                p, format_version=version, volumes=vol, metadata=np.asarray("{oops")
            ),
        ),
        "float64.npz": (
            "float32",
            lambda p: _write_npz(
                p, format_version=version, volumes=vol.astype(np.float64), metadata=_meta()
            ),
        ),
        "labels.npz": (
            "labels",
            lambda p: _write_npz(
                p, format_version=version, volumes=vol, labels=np.zeros(3, int), metadata=_meta()
            ),
        ),
        "classes.npz": (
            "class names",
            lambda p: _write_npz(
                p,
                format_version=version,
                volumes=vol,
                labels=np.array([0, 1]),
                metadata=_meta(class_names=["only"]),
            ),
        ),
        "objects.npz": (
            "corrupt|object|pickle",
            lambda p: _write_npz(
                p,
                format_version=version,
                volumes=vol,
                metadata=_meta(),
                tomo_names=np.array(["a", None], dtype=object),
            ),
        ),
    }
    for name, (match, make) in cases.items():
        path = tmp_path / name
        if make is not None:
            make(path)
        with pytest.raises(CryoGuardError, match=match):
            load_dataset(path)


def test_truncated_file(tmp_path):
    path = save_dataset(tmp_path / "t.npz", _dataset())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CryoGuardError):
        load_dataset(path)


# --- hostile archives: refused before allocation, one CryoGuardError each -------------


def _small_dataset(n=3, cube=4):
    rng = np.random.default_rng(0)
    return SubtomogramDataset(volumes=rng.normal(size=(n, cube, cube, cube)).astype(np.float32),
                              labels=np.arange(n) % 2, class_names=["a", "b"])


def test_compressed_dataset_is_refused(tmp_path):
    path = save_dataset(tmp_path / "ok.npz", _small_dataset())
    with np.load(path) as z:
        members = {k: z[k] for k in z.files}
    bad = tmp_path / "compressed.npz"
    np.savez_compressed(bad, **members)
    with pytest.raises(CryoGuardError, match="compressed"):
        load_dataset(bad)


def test_header_claiming_more_than_the_file_holds_is_refused_without_allocating(tmp_path):
    import io
    import zipfile

    path = save_dataset(tmp_path / "ok.npz", _small_dataset())
    bad = tmp_path / "huge.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "volumes.npy":
                buf = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    buf, {"descr": "<f4", "fortran_order": False,
                          "shape": (10**9, 28, 28, 28)})
                data = buf.getvalue() + b"\0" * 64
            dst.writestr(info.filename, data)
    assert bad.stat().st_size < 10_000
    with pytest.raises(CryoGuardError, match=r"claims shape \(1000000000, 28, 28, 28\)"):
        load_dataset(bad)



@pytest.mark.parametrize("mmap", [False, True])
def test_header_claiming_a_negative_shape_is_one_clear_error(tmp_path, mmap):
    """Found by the hostile-input probe: shape (-20, 28, 28, 28) passed the size check
    (a negative byte count) and np.memmap raised OverflowError."""
    import io
    import zipfile

    path = save_dataset(tmp_path / "ok.npz", _small_dataset())
    bad = tmp_path / "negative.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "volumes.npy":
                with src.open(info) as fh:
                    np.lib.format.read_magic(fh)
                    shape, _, _ = np.lib.format.read_array_header_1_0(fh)
                    body = fh.read()
                buf = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    buf, {"descr": "<f4", "fortran_order": False, "shape": (-shape[0], *shape[1:])})
                data = buf.getvalue() + body
            dst.writestr(info.filename, data)
    with pytest.raises(CryoGuardError, match="negative shape"):
        load_dataset(bad, mmap=mmap)

def test_object_member_is_refused(tmp_path):
    path = save_dataset(tmp_path / "ok.npz", _small_dataset())
    with np.load(path) as z:
        members = {k: z[k] for k in z.files}
    members["labels"] = np.array([1, "x", None], dtype=object)
    bad = tmp_path / "objects.npz"
    np.savez(bad, **members)
    with pytest.raises(CryoGuardError, match="Python objects"):
        load_dataset(bad)


def test_non_finite_voxels_are_refused_with_counts_and_indices(tmp_path):
    ds = _small_dataset(n=6)
    ds.volumes[1, 0, 0, 0] = np.nan
    ds.volumes[4, 1, 1, 1] = np.inf
    ds.volumes[4, 2, 1, 1] = -np.inf
    path = save_dataset(tmp_path / "nan.npz", ds)
    with pytest.raises(CryoGuardError, match=r"3 NaN or infinite voxels in 2 of 6 cubes \(first: 1, 4\)"):
        load_dataset(path)


def test_zip_member_needing_an_unknown_zip_version_is_one_clear_error(tmp_path):
    # found by the fuzz test: a central-directory "version needed to extract" of 6.4
    # made zipfile raise NotImplementedError
    import numpy as np

    from napari_cryoguard.data import load_dataset, save_dataset
    from napari_cryoguard.errors import CryoGuardError

    path = save_dataset(tmp_path / "d.npz", volumes=np.zeros((2, 4, 4, 4), np.float32))
    raw = bytearray(path.read_bytes())
    central = raw.find(b"PK\x01\x02")
    raw[central + 6] = 64  # version needed to extract: 6.4
    path.write_bytes(bytes(raw))
    for mmap in (False, True):
        with pytest.raises(CryoGuardError, match="d.npz"):
            load_dataset(path, mmap=mmap)
