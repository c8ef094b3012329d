"""napari reader for tomograms (.mrc .map .rec .st): lazy, scaled by the voxel size."""

from __future__ import annotations

from pathlib import Path

from napari_cryoguard.io import TOMOGRAM_SUFFIXES, read_tomogram


def get_reader(path):
    """Return :func:`read_tomogram_layers` when ``path`` is a tomogram file, else ``None``."""
    if isinstance(path, list):
        if not path or not all(Path(p).suffix.lower() in TOMOGRAM_SUFFIXES for p in path):
            return None
        return read_tomogram_layers
    if Path(path).suffix.lower() not in TOMOGRAM_SUFFIXES:
        return None
    return read_tomogram_layers


def tomogram_layer_data(tomo) -> tuple:
    """The ``(data, kwargs, "image")`` layer tuple of a :class:`~napari_cryoguard.io.Tomogram`.

    The data stays memory-mapped; the Tomogram object rides along in the layer metadata
    so that its file handle lives as long as the layer. The layer's scale is the voxel
    size in Angstrom (ZYX), so picks and subtomograms line up in physical units.
    """
    kwargs = {
        "name": tomo.name,
        "scale": tuple(float(v) for v in tomo.voxel_size_zyx),
        "metadata": {"cryoguard_tomogram": tomo, "path": str(tomo.path),
                     "voxel_size": float(tomo.voxel_size)},
        "colormap": "gray",
    }
    return (tomo.data, kwargs, "image")


def read_tomogram_layers(path) -> list[tuple]:
    """Read one or several tomograms into napari image layer tuples."""
    paths = path if isinstance(path, list) else [path]
    return [tomogram_layer_data(read_tomogram(p)) for p in paths]
