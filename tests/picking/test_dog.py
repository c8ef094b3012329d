"""Tests for DoG filtering and particle picking."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest

from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.io.picks import Picks
from napari_cryoguard.picking import (
    SIMULATED_SIGMA1,
    SIMULATED_THRESHOLD,
    dog_filter,
    dog_preview,
    iter_pick_particles,
    match_picks,
    pick_particles,
)


def _blobs(shape=(48, 96, 96), n=8, sigma=3.5, noise=0.2, seed=0, sep=18.0, margin=16):
    """Gaussian blobs of amplitude 1 at random, well separated centres, plus white noise."""
    rng = np.random.default_rng(seed)
    centres: list[np.ndarray] = []
    lo = np.full(3, margin)
    hi = np.array(shape) - margin
    while len(centres) < n:
        c = rng.uniform(lo, hi)
        if all(np.linalg.norm(c - o) > sep for o in centres):
            centres.append(c)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    vol = np.zeros(shape, np.float32)
    for c in centres:
        r2 = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2
        vol += np.exp(-r2 / (2 * sigma**2)).astype(np.float32)
    vol += rng.normal(0, noise, shape).astype(np.float32)
    return vol, np.array(centres)


def _recall_precision(coords, truth, tol=4.0):
    """One-to-one matching within ``tol`` voxels (each true particle counts once)."""
    precision, recall = match_picks(coords, truth, tolerance=tol)
    return recall, precision


def test_dog_peak_at_blob_centre_and_sign():
    vol = np.zeros((40, 40, 40), np.float32)
    z, y, x = np.ogrid[:40, :40, :40]
    vol += np.exp(-((z - 17) ** 2 + (y - 22) ** 2 + (x - 19) ** 2) / (2 * 4.0**2))
    dog = dog_filter(vol, 5.0, 1.1)
    assert dog.shape == vol.shape and dog.dtype == np.float32
    assert np.unravel_index(np.argmax(dog), dog.shape) == (17, 22, 19)
    assert dog[17, 22, 19] > 0
    # a dark blob gives a negative DoG at its centre
    assert dog_filter(-vol, 5.0, 1.1)[17, 22, 19] < 0


def test_dog_binned_shape_and_peak():
    vol = np.zeros((40, 41, 44), np.float32)
    z, y, x = np.ogrid[:40, :41, :44]
    vol += np.exp(-((z - 18) ** 2 + (y - 21) ** 2 + (x - 24) ** 2) / (2 * 4.0**2))
    dog = dog_filter(vol, 6.0, bin_factor=3)
    assert dog.shape == (14, 14, 15)
    peak = np.array(np.unravel_index(np.argmax(dog), dog.shape))
    # binned voxel i covers full voxels 3i..3i+2
    np.testing.assert_array_equal(peak, [6, 7, 8])


def test_picks_on_synthetic_blobs():
    vol, truth = _blobs(seed=1)
    picks = pick_particles(vol, 5.0, voxel_size=8.0)
    assert isinstance(picks, Picks)
    assert picks.voxel_size == 8.0
    assert picks.coords.dtype == np.float64 and picks.coords.shape[1] == 3
    assert np.all(np.diff(picks.scores) <= 0)  # sorted by descending score
    assert np.all(picks.scores >= 3.5)
    recall, precision = _recall_precision(picks.coords, truth, tol=1.5)
    assert recall == 1.0 and precision == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_recall_precision_on_simulated_tomograms(seed):
    """Recall and precision >= 0.95 within 4 voxels (SNR 0.1, +-60 degrees), with sigma
    matched to the simulated particles (SIMULATED_SIGMA1, SIMULATED_THRESHOLD)."""
    from napari_cryoguard.simulate import simulate_tomogram

    sim = simulate_tomogram(
        shape=(64, 200, 200), n_particles=30, snr=0.1, tilt_range=60.0, seed=seed
    )
    picks = pick_particles(
        sim.volume, SIMULATED_SIGMA1, threshold=SIMULATED_THRESHOLD, voxel_size=sim.voxel_size
    )
    recall, precision = _recall_precision(picks.coords, sim.coords, tol=4.0)
    assert recall >= 0.95, (recall, precision)
    assert precision >= 0.95, (recall, precision)


def _write_mrc(path, vol, voxel_size=10.0):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(vol)
        mrc.voxel_size = voxel_size
    return path


@pytest.mark.parametrize("bin_factor", ["auto", 1])
def test_chunked_memmap_matches_in_memory(tmp_path, bin_factor):
    vol, _ = _blobs(shape=(60, 80, 80), n=6, seed=3, noise=0.3)
    path = _write_mrc(tmp_path / "t.mrc", vol)
    whole = pick_particles(vol, 5.0, bin_factor=bin_factor, chunk_size=10_000, threshold=2.0)
    with mrcfile.mmap(path, mode="r") as mrc:
        assert isinstance(mrc.data, np.memmap)
        chunked = pick_particles(mrc.data, 5.0, bin_factor=bin_factor, chunk_size=7, threshold=2.0)
    assert len(whole) >= 6
    np.testing.assert_allclose(chunked.coords, whole.coords, atol=1e-5)
    np.testing.assert_allclose(chunked.scores, whole.scores, rtol=1e-5)


def test_reads_lazily_opened_tomogram(tmp_path):
    from napari_cryoguard.io import read_tomogram

    vol, truth = _blobs(shape=(48, 96, 96), n=6, seed=4)
    path = _write_mrc(tmp_path / "t.mrc", vol, voxel_size=12.0)
    tomo = read_tomogram(path)
    picks = pick_particles(tomo.data, 5.0, voxel_size=tomo.voxel_size, chunk_size=12)
    recall, precision = _recall_precision(picks.coords, truth, tol=1.5)
    assert recall == 1.0 and precision == 1.0
    assert picks.voxel_size == pytest.approx(12.0)


def test_mask_restricts_picks():
    vol, truth = _blobs(seed=5)
    mask = np.zeros(vol.shape, bool)
    mask[:, :, :48] = True
    picks = pick_particles(vol, 5.0, mask=mask)
    assert len(picks) > 0
    assert np.all(np.floor(picks.coords[:, 2] + 0.5) < 48)
    in_mask = truth[np.floor(truth[:, 2] + 0.5) < 48]
    recall, _ = _recall_precision(picks.coords, in_mask, tol=1.5)
    assert recall == 1.0
    with pytest.raises(CryoGuardError, match="mask shape"):
        pick_particles(vol, 5.0, mask=mask[:-1])
    assert len(pick_particles(vol, 5.0, mask=np.zeros(vol.shape, bool))) == 0


def test_border_and_max_picks():
    vol, truth = _blobs(shape=(40, 96, 96), n=6, seed=6, margin=6, sep=16)
    near_face = truth[np.any((truth < 12) | (truth > np.array(vol.shape) - 13), axis=1)]
    assert len(near_face) >= 1
    default = pick_particles(vol, 5.0)
    r = np.floor(default.coords + 0.5)
    assert np.all(r >= 14) and np.all(r <= np.array(vol.shape) - 14)
    everywhere = pick_particles(vol, 5.0, border=0)
    recall, _ = _recall_precision(everywhere.coords, truth, tol=1.5)
    assert recall == 1.0 and len(everywhere) > len(default)
    top = pick_particles(vol, 5.0, border=0, max_picks=3)
    assert len(top) == 3
    np.testing.assert_allclose(top.coords, everywhere.coords[:3])
    np.testing.assert_allclose(top.scores, everywhere.scores[:3])


def test_min_distance_suppresses_neighbours():
    vol, _ = _blobs(shape=(40, 80, 80), n=2, seed=7, sep=12, noise=0.05, margin=14)
    picks = pick_particles(vol, 3.0, threshold=2.0, min_distance=0.5)
    assert len(picks) >= 2
    far = pick_particles(vol, 3.0, threshold=2.0, min_distance=100.0)
    assert len(far) == 1
    np.testing.assert_allclose(far.coords[0], picks.coords[0])


def test_dark_polarity_and_sigma_in_angstrom():
    vol, truth = _blobs(seed=8)
    bright = pick_particles(vol, 5.0)
    dark = pick_particles(-vol, 5.0, polarity="dark")
    np.testing.assert_allclose(dark.coords, bright.coords)
    np.testing.assert_allclose(dark.scores, bright.scores)
    assert len(pick_particles(-vol, 5.0)) < len(truth)  # wrong polarity misses them
    ang = pick_particles(vol, 50.0, sigma_unit="angstrom", voxel_size=10.0)
    np.testing.assert_allclose(ang.coords, bright.coords)
    assert ang.voxel_size == 10.0


def test_non_finite_voxels_raise_with_count():
    vol, _ = _blobs(shape=(40, 64, 64), n=2, seed=9)
    vol[3, 4, 5] = np.nan
    vol[30, 40, 50] = np.inf
    vol[31, 40, 50] = -np.inf
    for bin_factor in ("auto", 1):
        with pytest.raises(CryoGuardError, match="3 non-finite"):
            pick_particles(vol, 5.0, bin_factor=bin_factor, chunk_size=8)


def test_empty_results_are_not_errors():
    rng = np.random.default_rng(10)
    noise = rng.normal(size=(40, 64, 64)).astype(np.float32)
    picks = pick_particles(noise, 5.0, threshold=50.0)
    assert len(picks) == 0 and picks.coords.shape == (0, 3) and picks.scores.shape == (0,)
    const = pick_particles(np.full((40, 40, 40), 3.0, np.float32), 5.0)
    assert len(const) == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sigma1": 0.0}, "sigma1"),
        ({"sigma1": -2.0}, "sigma1"),
        ({"k": 1.0}, "k must be > 1"),
        ({"polarity": "grey"}, "polarity"),
        ({"sigma_unit": "nm"}, "sigma_unit"),
        ({"bin_factor": 0}, "bin_factor"),
        ({"bin_factor": "fast"}, "bin_factor"),
        ({"voxel_size": 0.0}, "voxel_size"),
    ],
)
def test_invalid_parameters(kwargs, match):
    vol = np.zeros((40, 40, 40), np.float32)
    with pytest.raises(CryoGuardError, match=match):
        pick_particles(vol, **kwargs)


def test_too_small_volumes():
    with pytest.raises(CryoGuardError, match="too small"):
        pick_particles(np.zeros((20, 64, 64), np.float32))
    with pytest.raises(CryoGuardError, match="3D"):
        pick_particles(np.zeros((64, 64), np.float32))
    with pytest.raises(CryoGuardError, match="too small"):
        pick_particles(np.zeros((8, 8, 8), np.float32), 5.0, border=0, bin_factor=4)


def test_generator_progress_and_result():
    vol, _ = _blobs(seed=11)
    gen = iter_pick_particles(vol, 5.0, chunk_size=9)
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    assert len(steps) >= 3
    done, total = zip(*steps, strict=True)
    assert list(done) == list(range(1, len(steps) + 1))
    assert set(total) == {len(steps)}
    seen = []
    direct = pick_particles(vol, 5.0, chunk_size=9, progress=lambda d, t: seen.append((d, t)))
    assert seen == steps
    np.testing.assert_array_equal(result.coords, direct.coords)


def test_paper_defaults_and_preview():
    """Defaults are the RAT paper's (sigma1 7, k 1.1); the preview is the binned DoG."""
    import inspect

    sig = inspect.signature(pick_particles)
    assert sig.parameters["sigma1"].default == 7.0 and sig.parameters["k"].default == 1.1
    vol, truth = _blobs(shape=(48, 64, 64), n=3, seed=5, noise=0.1)
    resp, b = dog_preview(vol, 5.0)
    assert b == 3 and resp.shape == tuple(-(-s // b) for s in vol.shape)
    dark, _ = dog_preview(-vol, 5.0, polarity="dark")
    np.testing.assert_allclose(dark, resp, atol=1e-5)
    # the strongest binned response sits at a true blob (within one binned voxel)
    peak = np.array(np.unravel_index(np.argmax(resp), resp.shape)) * b + (b - 1) / 2
    assert np.min(np.linalg.norm(truth - peak, axis=1)) <= b * 1.8
