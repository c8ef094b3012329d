"""Shared fixtures, layered: this file holds what every folder uses (one intra-op thread,
a small simulated tomogram, a tiny labelled dataset and a tiny trained checkpoint);
``tests/<area>/conftest.py`` adds that area's own (a docked napari viewer with the sample
data in ``tests/_napari``, toy models in ``tests/attacks``)."""

from __future__ import annotations

import warnings

import pytest


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread for every test: on tiny tensors OpenMP's thread warm-up per new
    shape costs far more than the work (tens of times slower on a busy 2-core machine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def small_sim():
    """A small simulated tomogram (SNR 0.1, +-60 degrees) with its ground truth."""
    from napari_cryoguard.simulate import simulate_tomogram

    return simulate_tomogram(shape=(48, 128, 128), n_particles=10, seed=11)


CLASSES = ["1bxn", "6pxm", "1u6g"]


@pytest.fixture(scope="session")
def eval_data():
    """(train, test) simulated stacks: 3 classes, 16^3 cubes at 14 Å, SNR 0.5."""
    from napari_cryoguard.simulate import simulate_subtomograms

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tr = simulate_subtomograms(
            n_per_class=12, cube=16, voxel_size=14.0, snr=0.5, seed=3, classes=CLASSES
        )
        te = simulate_subtomograms(
            n_per_class=6, cube=16, voxel_size=14.0, snr=0.5, seed=4, classes=CLASSES
        )
    return tr, te


@pytest.fixture(scope="session")
def tiny_checkpoint(eval_data, tmp_path_factory):
    """A tiny CB3D (tiny widths, no dropout) trained for 3 epochs; its checkpoint path."""
    from napari_cryoguard.defenses import train
    from napari_cryoguard.models import tiny_params

    tr, _ = eval_data
    out = tmp_path_factory.mktemp("eval_ckpt") / "tiny.safetensors"
    res = train(
        tr,
        model="cb3d",
        defense="standard",
        model_params={**tiny_params("cb3d"), "dropout": 0.0},
        out=out,
        epochs=3,
        lr=3e-3,
        batch_size=12,
        device="cpu",
        val_fraction=0.0,
        seed=0,
    )
    return res.checkpoint


@pytest.fixture(scope="session")
def test_npz(eval_data, tmp_path_factory):
    """The test stack saved as a dataset file."""
    from napari_cryoguard.data import save_dataset

    _, te = eval_data
    path = tmp_path_factory.mktemp("eval_data") / "test.npz"
    save_dataset(path, volumes=te.volumes, labels=te.labels, class_names=list(te.class_names))
    return path


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
