"""Fuzzed and hand-made hostile inputs: every reader answers with a CryoGuardError or a value.

Bounded in time: each property runs a fixed number of generated cases (the counts are in
the test names), with no deadline per case (CI machines are slow and shared). A reader
that raises anything but :class:`CryoGuardError` on any case fails the test with the
input hypothesis shrank it to.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_cryoguard.data import SubtomogramDataset, load_dataset, save_dataset
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.io import Picks, read_picks, read_tomogram, write_picks, write_tomogram


def FUZZ(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def _quietly(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _only_package_errors(fn, *args, **kwargs):
    try:
        return _quietly(fn, *args, **kwargs)
    except CryoGuardError:
        return None


# ------------------------------------------------------------------------ MRC headers


@pytest.fixture(scope="module")
def mrc_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("mrc") / "t.mrc"
    write_tomogram(path, np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4), 10.0)
    return path.read_bytes()


@FUZZ(300)
@given(edits=st.lists(st.tuples(st.integers(0, 1023), st.integers(0, 255)), min_size=1,
                      max_size=12))
def test_300_fuzzed_mrc_headers_raise_only_cryoguard_errors(tmp_path, mrc_bytes, edits):
    data = bytearray(mrc_bytes)
    for pos, value in edits:
        data[pos] = value
    path = tmp_path / "fuzz.mrc"
    path.write_bytes(bytes(data))
    tomo = _only_package_errors(read_tomogram, path)
    if tomo is not None:
        try:
            assert len(tomo.shape) == 3 and tomo.voxel_size > 0
            assert np.asarray(tomo.data[:1]).shape[1:] == tuple(tomo.shape[1:])
        finally:
            tomo.close()


# ------------------------------------------------------------------------ pick files

_STAR_TOKENS = st.sampled_from([
    "data_", "data_particles", "data_optics", "loop_", "_rlnCoordinateX", "_rlnCoordinateY",
    "_rlnCoordinateZ", "_rlnTomoName", "_rlnClassNumber", "_rlnMicrographName",
    "_rlnCenteredCoordinateXAngst", "_rlnOriginXAngst", "_rlnImagePixelSize", "_rlnOpticsGroup",
    "_cryoguardClassName", "_cryoguardVoxelSize", "_cryoguardFeatureName",
    "_cryoguardFeatureWidth", "_cryoguardFeatureDtype", "1", "2.5", "-3", "nan", "inf", "1e308",
    "30000000", "100000000", "tomo_1.tomostar", "'quoted'", "\"", "#", "garbage", "<f8", "str",
    "\n", "\n", "\n", " ", "\t",
])


@FUZZ(300)
@given(tokens=st.lists(_STAR_TOKENS, min_size=1, max_size=60))
def test_300_fuzzed_star_files_raise_only_cryoguard_errors(tmp_path, tokens):
    path = tmp_path / "fuzz.star"
    path.write_text(" ".join(tokens))
    picks = _only_package_errors(read_picks, path, voxel_size=10.0)
    if picks is not None:
        assert picks.coords.shape == (len(picks), 3)
        assert np.isfinite(picks.coords).all()
        assert picks.class_names is None or len(picks.class_names) <= 10_000


_CSV_TEXT = st.text(alphabet=st.sampled_from(list("xyzXYZ0123456789.,;|\t -e#:\n\"'naf")),
                    max_size=300)


@FUZZ(300)
@given(text=_CSV_TEXT)
def test_300_fuzzed_csv_files_raise_only_cryoguard_errors(tmp_path, text):
    path = tmp_path / "fuzz.csv"
    path.write_text(text)
    picks = _only_package_errors(read_picks, path, voxel_size=10.0)
    if picks is not None:
        assert picks.coords.shape == (len(picks), 3)
        assert np.isfinite(picks.coords).all()


_NAME = st.text(alphabet=st.sampled_from(list("abcXYZ019_-.")), min_size=1, max_size=12)


@FUZZ(150)
@given(n=st.integers(0, 12), seed=st.integers(0, 2**16), names=st.lists(_NAME, min_size=1,
                                                                        max_size=3),
       suffix=st.sampled_from([".star", ".csv"]))
def test_150_random_picks_round_trip_through_star_and_csv(tmp_path, n, seed, names, suffix):
    rng = np.random.default_rng(seed)
    picks = Picks(coords=rng.uniform(0, 500, size=(n, 3)), scores=rng.normal(size=n),
                  labels=rng.integers(-1, 3, size=n), class_names=["a", "b", "c"],
                  tomo_names=np.array([names[i % len(names)] for i in range(n)]),
                  voxel_size=float(rng.uniform(1, 20)))
    path = write_picks(tmp_path / f"p{suffix}", picks)
    back = _quietly(read_picks, path)
    np.testing.assert_array_equal(back.coords, picks.coords)
    np.testing.assert_array_equal(back.scores, picks.scores)
    np.testing.assert_array_equal(back.labels, picks.labels)
    assert back.voxel_size == picks.voxel_size
    if n:
        assert back.tomo_names.tolist() == picks.tomo_names.tolist()


def test_tiny_star_with_a_huge_class_number_is_refused_quickly(tmp_path):
    path = tmp_path / "huge.star"
    path.write_text("data_particles\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnCoordinateZ\n"
                    "_rlnClassNumber\n_cryoguardClassName\n1 2 3 30000000 ribosome\n")
    assert path.stat().st_size < 200
    try:
        picks = _quietly(read_picks, path, voxel_size=10.0)
    except CryoGuardError as err:
        assert "class" in str(err).lower()
    else:  # read without building 30 M names
        assert picks.class_names is None or len(picks.class_names) <= 10_000


# ------------------------------------------------------------------------ datasets


@pytest.fixture(scope="module")
def npz_bytes(tmp_path_factory) -> bytes:
    rng = np.random.default_rng(0)
    ds = SubtomogramDataset(volumes=rng.normal(size=(4, 4, 4, 4)).astype(np.float32),
                            labels=np.array([0, 1, 0, 1]), class_names=["a", "b"],
                            coords=rng.uniform(0, 9, size=(4, 3)), voxel_size=10.0)
    path = save_dataset(tmp_path_factory.mktemp("npz") / "d.npz", ds)
    return Path(path).read_bytes()


@FUZZ(300)
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1,
                      max_size=8))
def test_300_fuzzed_datasets_raise_only_cryoguard_errors(tmp_path, npz_bytes, edits):
    data = bytearray(npz_bytes)
    for pos, value in edits:
        data[pos % len(data)] = value
    path = tmp_path / "fuzz.npz"
    path.write_bytes(bytes(data))
    ds = _only_package_errors(load_dataset, path)
    if ds is not None:
        assert ds.volumes.ndim == 4 and np.isfinite(ds.volumes).all()


# ------------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def checkpoint_parts(tmp_path_factory):
    from safetensors import safe_open

    from napari_cryoguard.models import build_model
    from napari_cryoguard.models.checkpoint import METADATA_KEY, save_checkpoint

    model = build_model("cb3d", num_classes=3, cube=16)
    path = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.safetensors", model,
                           {"class_names": ["a", "b", "c"], "voxel_size": 10.0})
    with safe_open(str(path), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        meta = json.loads(fh.metadata()[METADATA_KEY])
    return tensors, meta


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8,
)


@FUZZ(200)
@given(field=st.sampled_from(["format_version", "arch", "arch_params", "num_classes", "cube",
                              "class_names", "voxel_size", "normalization"]),
       value=_JSON_VALUES)
def test_200_fuzzed_checkpoint_fields_raise_only_cryoguard_errors(tmp_path, checkpoint_parts,
                                                                  field, value):
    from safetensors.torch import save_file

    from napari_cryoguard.models.checkpoint import METADATA_KEY, load_checkpoint

    tensors, meta = checkpoint_parts
    meta = dict(meta)
    meta[field] = value
    path = tmp_path / "fuzz.safetensors"
    try:
        text = json.dumps(meta)
    except ValueError:
        return
    save_file(tensors, str(path), metadata={METADATA_KEY: text})
    _only_package_errors(load_checkpoint, path)
