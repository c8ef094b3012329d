"""napari reader for tomograms (.mrc .map .rec .st): lazy, scaled by the voxel size.

Errors come first, in the plugin's own words. napari 0.9 wraps any exception a reader
function raises in a ``ReaderPluginError`` whose message starts "Tried opening with
napari-cryoguard, but failed." (``ViewerModel._open_or_raise_error``), and a reader
that refuses the file (``get_reader`` returning None) gets "... but refused the file"
(npe2's ``io_utils._read``): either way the user sees napari's sentence, not ours. So:

- :func:`get_reader` declines (None) only what is not ours to read: a folder, a missing
  path, another suffix;
- the reader function reads each file with :func:`~napari_cryoguard.io.read_tomogram`
  (which checks the header and the size cheaply); a :class:`CryoGuardError` -- a
  truncated file, a 2D image, not an MRC at all -- becomes a napari error notification
  whose text is exactly the package's sentence ("flat.mrc is a 2D image (10 x 10, nz =
  1); a tomogram needs nz > 1"), and the file adds no layer. When nothing could be read
  the reader returns napari's "no layers, on purpose" value ``[(None,)]``, so napari
  adds nothing and shows nothing more.
"""

from __future__ import annotations

from pathlib import Path

from napari_cryoguard.io import TOMOGRAM_SUFFIXES, read_tomogram

#: what a reader returns to say "read, on purpose no layers" (npe2 / napari convention)
NO_LAYERS = [(None,)]


def _ours(path) -> bool:
    p = Path(path)
    return p.suffix.lower() in TOMOGRAM_SUFFIXES and not p.is_dir()


def get_reader(path):
    """Return :func:`read_tomogram_layers` for tomogram files (by suffix), else ``None``."""
    paths = path if isinstance(path, list) else [path]
    if not paths or not all(_ours(p) for p in paths):
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


def read_tomogram_layers(path, **_) -> list[tuple]:
    """Read one or several tomograms into napari image layer tuples.

    A file the package cannot read (:class:`CryoGuardError`) is reported as a napari
    error notification with the package's own sentence and skipped; see the module
    docstring for why it is not raised.
    """
    from napari_cryoguard.errors import CryoGuardError

    paths = path if isinstance(path, list) else [path]
    layers = []
    for p in paths:
        try:
            layers.append(tomogram_layer_data(read_tomogram(p)))
        except CryoGuardError as exc:
            from napari.utils.notifications import show_error

            show_error(str(exc))
    return layers or NO_LAYERS
