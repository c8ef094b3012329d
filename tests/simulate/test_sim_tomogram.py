"""Simulated tomograms: truth, placement, contrast, SNR, reproducibility, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_cryoguard import CryoGuardError
from napari_cryoguard.io.picks import Picks
from napari_cryoguard.simulate import DEFAULT_CLASSES, simulate_tomogram, template_radius

SHAPE = (48, 112, 112)


@pytest.fixture(scope="module")
def pair():
    """The same small tomogram with (SNR 0.5) and without noise."""
    kw = dict(shape=SHAPE, n_particles=12, seed=3, snr=0.5)
    noisy = simulate_tomogram(**kw)
    clean = simulate_tomogram(**{**kw, "snr": None})
    return noisy, clean


def test_outputs_and_truth(pair):
    sim, _ = pair
    assert sim.volume.shape == SHAPE and sim.volume.dtype == np.float32
    assert sim.coords.shape == (12, 3) and sim.coords.dtype == np.float64
    assert sim.labels.dtype == np.int64 and sim.labels.min() >= 0
    assert sim.labels.max() < len(DEFAULT_CLASSES)
    assert sim.class_names == list(DEFAULT_CLASSES)
    assert sim.voxel_size == 10.0
    assert sim.rotations.shape == (12, 3, 3)
    picks = sim.to_picks()
    assert isinstance(picks, Picks) and len(picks) == 12
    np.testing.assert_array_equal(picks.coords, sim.coords)
    assert picks.class_of() == [sim.class_names[i] for i in sim.labels]
    # params are JSON and reproduce the volume
    again = simulate_tomogram(**json.loads(json.dumps(sim.params)))
    np.testing.assert_array_equal(again.volume, sim.volume)


def test_same_seed_same_arrays_other_seed_differs(pair):
    sim, _ = pair
    other = simulate_tomogram(shape=SHAPE, n_particles=12, seed=4, snr=0.5)
    assert not np.allclose(other.coords, sim.coords)
    assert not np.array_equal(other.volume, sim.volume)


def test_particles_do_not_overlap_and_stay_off_the_border(pair):
    sim, _ = pair
    radii = np.array([template_radius(n) for n in sim.class_names])[sim.labels]
    d = np.linalg.norm(sim.coords[:, None] - sim.coords[None], axis=-1)
    need = radii[:, None] + radii[None]
    off_diag = ~np.eye(len(d), dtype=bool)
    assert np.all(d[off_diag] >= need[off_diag])
    assert sim.coords.min() >= 14
    assert np.all(sim.coords <= np.array(SHAPE) - 14)


def test_min_separation_is_honoured():
    sim = simulate_tomogram(shape=SHAPE, n_particles=8, seed=5, snr=None, min_separation=30)
    d = np.linalg.norm(sim.coords[:, None] - sim.coords[None], axis=-1)
    assert d[~np.eye(8, dtype=bool)].min() >= 30


def test_particles_are_bright_at_their_true_centres(pair):
    """Protein bright (density convention): the mean inside each particle's radius is
    above the background mean, in the clean volume for every particle and on average
    at SNR 0.5 (hollow particles may have a dark centre, so the whole sphere counts)."""
    sim, clean = pair
    radii = np.array([template_radius(n) for n in sim.class_names])[sim.labels]
    grid = np.indices(SHAPE)

    def inside_means(vol):
        out = []
        for c, r in zip(sim.coords, radii, strict=True):
            lo = np.floor(c - r).astype(int)
            hi = np.ceil(c + r).astype(int) + 1
            sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            d2 = sum((g[sl] - x) ** 2 for g, x in zip(grid, c, strict=True))
            out.append(vol[sl][d2 <= r * r].mean())
        return np.array(out)

    m_clean = inside_means(clean.volume)
    assert np.all(m_clean > clean.volume.mean())
    m_noisy = inside_means(sim.volume)
    assert m_noisy.mean() > sim.volume.mean()
    assert (m_noisy > sim.volume.mean()).mean() >= 0.75


def test_centre_of_mass_is_where_the_particle_was_placed():
    sim = simulate_tomogram(
        shape=(40, 40, 40),
        n_particles=1,
        seed=9,
        snr=None,
        tilt_range=90.0,
        defocus_um=0.0,
        amplitude_contrast=0.999,
        cube=28,
    )  # no wedge, CTF ~ constant: the raw density
    vol = np.clip(sim.volume, 0, None)
    grid = np.indices(vol.shape).reshape(3, -1)
    com = (grid * vol.ravel()).sum(1) / vol.sum()
    np.testing.assert_allclose(com, sim.coords[0], atol=0.15)


def test_tomogram_snr_over_particle_cubes(pair):
    sim, clean = pair
    noise = sim.volume - clean.volume
    region = np.zeros(SHAPE, bool)
    for z, y, x in np.rint(sim.coords).astype(int):
        region[z - 14 : z + 14, y - 14 : y + 14, x - 14 : x + 14] = True
    assert clean.volume[region].var() / noise[region].var() == pytest.approx(0.5, rel=0.02)
    # the noise is stationary: about the same variance outside the particle cubes
    assert noise[~region].var() == pytest.approx(noise[region].var(), rel=0.1)


def test_progress_callable_reports_to_the_end():
    seen = []
    simulate_tomogram(
        shape=(32, 64, 64), n_particles=3, seed=1, progress=lambda d, t, s: seen.append((d, t))
    )
    assert seen and seen[-1][0] == seen[-1][1]
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_too_many_particles_says_how_many_fit():
    with pytest.raises(CryoGuardError, match=r"could place only \d+ of 500"):
        simulate_tomogram(shape=(32, 64, 64), n_particles=500, seed=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"classes": ["1bxn", "no-such-protein"]}, "unknown template"),
        ({"snr": 0}, "SNR"),
        ({"snr": -1}, "SNR"),
        ({"tilt_range": 0}, "tilt range"),
        ({"tilt_range": 95}, "tilt range"),
        ({"shape": (16, 64, 64)}, "smaller than"),
        ({"n_particles": 0}, "n_particles"),
    ],
)
def test_bad_parameters_raise(kwargs, match):
    base = dict(shape=(32, 64, 64), n_particles=2, seed=0)
    with pytest.raises(CryoGuardError, match=match):
        simulate_tomogram(**{**base, **kwargs})
