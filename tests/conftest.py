"""Shared fixtures: a small simulated tomogram with its ground truth."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_sim():
    """A small simulated tomogram (SNR 0.1, +-60 degrees) with its ground truth."""
    from napari_cryoguard.simulate import simulate_tomogram

    return simulate_tomogram(shape=(48, 128, 128), n_particles=10, seed=11)
