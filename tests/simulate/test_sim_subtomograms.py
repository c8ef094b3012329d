"""Simulated subtomogram stacks: shapes, labels, SNR, normalisation, empty class."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_cryoguard import CryoGuardError
from napari_cryoguard.simulate import DEFAULT_CLASSES, EMPTY_CLASS, simulate_subtomograms


def test_stack_shapes_labels_and_normalisation():
    ds = simulate_subtomograms(n_per_class=6, seed=1)
    n = 6 * len(DEFAULT_CLASSES)
    assert ds.volumes.shape == (n, 28, 28, 28) and ds.volumes.dtype == np.float32
    assert ds.labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(ds.labels), [6] * len(DEFAULT_CLASSES))
    assert ds.class_names == list(DEFAULT_CLASSES)
    assert not np.array_equal(ds.labels, np.sort(ds.labels))  # shuffled
    flat = ds.volumes.reshape(n, -1)
    np.testing.assert_allclose(flat.mean(1), 0, atol=1e-4)
    np.testing.assert_allclose(flat.std(1), 1, atol=1e-3)
    assert np.abs(ds.shifts).max() <= 2.0
    json.dumps(ds.params)


def test_reproducible_with_seed():
    a = simulate_subtomograms(n_per_class=3, seed=7)
    b = simulate_subtomograms(n_per_class=3, seed=7)
    c = simulate_subtomograms(n_per_class=3, seed=8)
    np.testing.assert_array_equal(a.volumes, b.volumes)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.volumes, c.volumes)
    again = simulate_subtomograms(**a.params)
    np.testing.assert_array_equal(again.volumes, a.volumes)


@pytest.mark.parametrize("snr", [0.5, 0.05])
def test_measured_snr_per_subtomogram(snr):
    kw = dict(n_per_class=4, seed=2, normalize=False, tilt_range=50.0)
    clean = simulate_subtomograms(snr=None, **kw)
    noisy = simulate_subtomograms(snr=snr, **kw)
    np.testing.assert_array_equal(clean.labels, noisy.labels)
    n = len(clean)
    sig = clean.volumes.reshape(n, -1)
    noise = (noisy.volumes - clean.volumes).reshape(n, -1)
    ratio = sig.var(1) / noise.var(1)
    np.testing.assert_allclose(ratio, snr, rtol=0.1)
    assert np.median(ratio) == pytest.approx(snr, rel=0.02)


def test_particles_are_bright_in_the_centre():
    ds = simulate_subtomograms(n_per_class=10, seed=3, snr=0.5, shift=0.0)
    c = 14
    centre = ds.volumes[:, c - 3 : c + 4, c - 3 : c + 4, c - 3 : c + 4].mean(axis=(1, 2, 3))
    assert centre.mean() > 0.3  # in units of the per-sample standard deviation
    # the average over a class looks like a particle: bright centre, darker corners
    avg = ds.volumes.mean(0)
    assert avg[c - 3 : c + 4, c - 3 : c + 4, c - 3 : c + 4].mean() > avg[:5, :5, :5].mean()


def test_empty_class_is_noise_at_the_same_level():
    ds = simulate_subtomograms(n_per_class=5, seed=4, include_empty=True, normalize=False, snr=0.1)
    assert ds.class_names[-1] == EMPTY_CLASS
    empty = ds.labels == len(DEFAULT_CLASSES)
    assert empty.sum() == 5
    var = ds.volumes.reshape(len(ds), -1).var(1)
    # noise dominates at SNR 0.1: empty samples have about the same variance
    assert var[empty].mean() == pytest.approx(var[~empty].mean(), rel=0.2)
    clean = simulate_subtomograms(
        n_per_class=5, seed=4, include_empty=True, normalize=False, snr=None
    )
    assert np.all(clean.volumes[empty] == 0)
    normed = simulate_subtomograms(n_per_class=2, seed=4, include_empty=True, snr=None)
    assert np.isfinite(normed.volumes).all()


def test_voxel_size_and_cube_size():
    ds = simulate_subtomograms(
        n_per_class=2, classes=["1bxn", "3j9i"], cube=32, voxel_size=12.0, seed=0
    )
    assert ds.volumes.shape == (4, 32, 32, 32) and ds.voxel_size == 12.0
    assert ds.class_names == ["1bxn", "3j9i"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"classes": ["nope"]}, "unknown template"),
        ({"snr": 0}, "SNR"),
        ({"snr": -0.5}, "SNR"),
        ({"tilt_range": -5}, "tilt range"),
        ({"tilt_range": 90.5}, "tilt range"),
        ({"n_per_class": 0}, "n_per_class"),
        ({"shift": -1}, "shift"),
    ],
)
def test_bad_parameters_raise(kwargs, match):
    with pytest.raises(CryoGuardError, match=match):
        simulate_subtomograms(**{"n_per_class": 1, **kwargs})
