"""Shared fixtures: a small simulated tomogram with its ground truth."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_sim():
    """A small simulated tomogram (SNR 0.1, +-60 degrees) with its ground truth."""
    from napari_cryoguard.simulate import simulate_tomogram

    return simulate_tomogram(shape=(48, 128, 128), n_particles=10, seed=11)


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``cuda`` when no CUDA device is present (reported as skipped)."""
    cuda_items = [item for item in items if item.get_closest_marker("cuda")]
    if not cuda_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is present")
    for item in cuda_items:
        item.add_marker(skip)
