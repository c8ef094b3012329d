"""Choosing the DoG sign (protein white or black) and sigma from the particle diameter."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.picking import (
    binned_dog,
    choose_polarity,
    diameter_from_sigma,
    dog_filter,
    dog_preview,
    match_picks,
    pick_particles,
    sigma_from_diameter,
)


@pytest.fixture(scope="module")
def sample():
    """The plugin's sample data: the tomogram and its true centres."""
    from napari_cryoguard._napari._sample_data import simulated_layers

    (volume, _, _), (truth, _, _) = simulated_layers(seed=0)
    return volume, truth


def test_sigma_from_diameter():
    assert sigma_from_diameter(170.0, 10.0) == pytest.approx(17.0 / (2 * np.sqrt(3)))
    # a particle of radius sqrt(3) * sigma1 voxels, at 1 A per voxel
    assert sigma_from_diameter(2 * np.sqrt(3) * 5.0) == pytest.approx(5.0)
    assert diameter_from_sigma(sigma_from_diameter(220.0, 9.4), 9.4) == pytest.approx(220.0)
    for bad in (0.0, -5.0, float("nan")):
        with pytest.raises(CryoGuardError, match="diameter"):
            sigma_from_diameter(bad, 10.0)
    with pytest.raises(CryoGuardError, match="voxel_size"):
        sigma_from_diameter(170.0, 0.0)


def test_the_dog_peaks_for_balls_of_radius_sqrt3_sigma():
    """The documented relation: a ball of radius r gives the largest (scale-normalised)
    DoG response at its centre for sigma1 ~ r / sqrt(3)."""
    n, r = 64, 9.0
    z, y, x = np.ogrid[:n, :n, :n]
    ball = (((z - 32) ** 2 + (y - 32) ** 2 + (x - 32) ** 2) <= r * r).astype(np.float32)
    sigmas = np.linspace(3.0, 8.0, 21)
    k = 1.1
    # DoG ~ -(k - 1) sigma^2 LoG is already scale-normalised: compare it as it is
    resp = [dog_filter(ball, s, k)[32, 32, 32] for s in sigmas]
    best = sigmas[int(np.argmax(resp))]
    assert best == pytest.approx(r / np.sqrt(3), abs=0.5)


def test_auto_chooses_bright_on_the_sample_and_dark_on_its_negation(sample):
    volume, truth = sample
    s1 = sigma_from_diameter(170.0, 10.0)
    bright = choose_polarity(volume, s1)
    dark = choose_polarity(-volume, s1)
    assert bright.polarity == "bright" and dark.polarity == "dark"
    # the same two numbers, swapped: both signs see the same DoG
    assert bright.bright_score == pytest.approx(dark.dark_score)
    assert bright.dark_score == pytest.approx(dark.bright_score)
    assert bright.margin > 1.0 and bright.n_peaks == 10
    assert "protein white" in bright.describe() and "protein black" in dark.describe()
    # given in Angstrom, the same choice
    ang = choose_polarity(volume, s1 * 10.0, sigma_unit="angstrom", voxel_size=10.0)
    assert ang == bright
    # and picking with "auto" finds the particles either way
    for vol in (volume, -volume):
        picks = pick_particles(vol, s1, polarity="auto", voxel_size=10.0)
        precision, recall = match_picks(picks.coords, truth, tolerance=4.0)
        assert recall >= 0.9 and precision >= 0.9


def test_preview_auto_flips_the_negated_sample(sample):
    volume, _ = sample
    resp, b = dog_preview(volume, 5.0, polarity="auto")
    neg, b2 = dog_preview(-volume, 5.0, polarity="auto")
    assert b == b2 == 3
    np.testing.assert_allclose(neg, resp, atol=1e-5)


def test_binned_dog_reads_in_chunks_like_the_whole_volume(sample):
    volume, _ = sample
    whole = dog_filter(volume, 5.0, bin_factor=3)
    chunked = binned_dog(volume, 5.0, bin_factor=3, chunk_size=7)
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    bad = np.array(volume[:40, :64, :64])
    bad[1, 2, 3] = np.nan
    with pytest.raises(CryoGuardError, match="1 non-finite"):
        binned_dog(bad, 5.0, bin_factor=3)


def test_constant_and_invalid_inputs():
    flat = choose_polarity(np.full((40, 40, 40), 2.0, np.float32), 5.0)
    assert flat.polarity == "bright" and flat.n_peaks == 0
    with pytest.raises(CryoGuardError, match="3D"):
        choose_polarity(np.zeros((40, 40), np.float32), 5.0)
    with pytest.raises(CryoGuardError, match="polarity"):
        pick_particles(np.zeros((40, 40, 40), np.float32), 5.0, polarity="white")
