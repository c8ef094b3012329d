"""A real TIFF tomogram written by another tool: cylindra's ``tests/14pf_MT.tif``.

See tests/data/tiff/NOTICE.md: an ImageJ hyperstack written by impy, 44 x 136 x 84
uint8, ``unit = nm``, ``spacing = 1.052``, X/Y resolution 4082668531/4294967295 pixels
per nm, so 10.52 Angstrom voxels (1 / resolution = 1.0520000001 nm).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_cryoguard.io import read_tomogram

TIF = Path(__file__).resolve().parents[1] / "data" / "tiff" / "cylindra_14pf_MT.tif"


def test_cylindra_tiff_reads_with_its_imagej_voxel_size():
    tifffile = pytest.importorskip("tifffile")
    tomo = read_tomogram(TIF)
    assert tomo.shape == (44, 136, 84) and tomo.name == "cylindra_14pf_MT"
    assert tomo.voxel_size_zyx == pytest.approx((10.52, 10.52, 10.52), abs=1e-6)
    assert tomo.voxel_size == pytest.approx(10.52, abs=1e-6)
    assert any("ImageJ" in n for n in tomo.notes)
    assert not isinstance(tomo.data, np.ndarray) or isinstance(tomo.data, np.memmap)  # lazy
    # the voxels, as float32, equal the file's own uint8 values
    raw = tifffile.imread(TIF)
    assert raw.dtype == np.uint8 and raw.shape == (44, 136, 84)
    for key in [(0, 0, 0), (22, 68, 42), (43, 135, 83)]:
        assert float(tomo.data[key]) == float(raw[key])
    np.testing.assert_array_equal(np.asarray(tomo.data[10]), raw[10].astype(np.float32))


def test_cylindra_tiff_given_voxel_size_does_not_override_the_file():
    tomo = read_tomogram(TIF, voxel_size=20.0)
    # the file says 10.52 Angstrom (first found wins: metadata, then voxel_size=)
    assert tomo.voxel_size == pytest.approx(10.52, abs=1e-6)
    assert any("20.0 given was not used" in n for n in tomo.notes)


def test_napari_layer_of_the_cylindra_tiff_is_scaled():
    pytest.importorskip("napari")
    from napari_cryoguard._napari._reader import tomogram_layer_data

    data, kwargs, kind = tomogram_layer_data(read_tomogram(TIF))
    assert kind == "image" and data.shape == (44, 136, 84)
    assert kwargs["scale"] == pytest.approx((10.52, 10.52, 10.52), abs=1e-6)
    assert "translate" not in kwargs
