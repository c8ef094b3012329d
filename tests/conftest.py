"""Layered fixtures: a tiny simulated tomogram (in memory and as an MRC file), its picks."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def small_sim():
    """A small simulated tomogram (SNR 0.1, +-60 degrees) with its ground truth."""
    from napari_cryoguard.simulate import simulate_tomogram

    return simulate_tomogram(shape=(48, 128, 128), n_particles=10, seed=11)


@pytest.fixture(scope="session")
def small_tomo_file(small_sim, tmp_path_factory):
    """The small simulated tomogram written as an MRC file (and its truth as STAR)."""
    from napari_cryoguard.io import write_picks, write_tomogram

    d = tmp_path_factory.mktemp("tomo")
    path = write_tomogram(d / "small.mrc", small_sim.volume, small_sim.voxel_size)
    truth = small_sim.to_picks()
    truth.tomo_names = np.array(["small"] * len(truth))
    write_picks(d / "small_truth.star", truth)
    return d / "small.mrc"
