"""napari readers: tomograms (MRC, OME-Zarr, TIFF, .em) and pick files, in Angstrom.

Tomograms (:func:`get_reader`): ``.mrc .map .rec .st``, OME-Zarr folders (``.zarr``,
level 0), ``.tif .tiff`` and ``.em``, lazily, as an image layer whose ``scale`` is the
voxel size in Angstrom (ZYX). What the reader assumed (a voxel size not in the file, a
unit converted) is shown as an info notification.

Pick files (:func:`get_picks_reader`): every format
:func:`~napari_cryoguard.io.read_picks` reads (``.star .csv .tsv .tbl .mod .cbox
.coords .json``), as Points layers following the picks-layer contract of
:func:`~napari_cryoguard._napari._picks.set_picks_layer`: data are ZYX voxel indices
of a tomogram, ``scale`` its voxel size in Angstrom, metadata ``voxel_size``,
``tomo_name``, ``class_names``, ``source`` (the file) and ``notes``. When tomograms are
open in the current viewer, each one whose name matches the file's tomogram names
(:meth:`~napari_cryoguard.io.Picks.for_tomogram`) gets the rows of that tomogram,
converted to its voxel size (:meth:`~napari_cryoguard.io.Picks.at_voxel_size`; Angstrom
picks such as copick's also relative to the image's ``translate``, an OME-Zarr
translation) and drawn with its scale and translate, so points lie on the particles in
world coordinates. A file
that cannot be read alone is read again with the open tomograms' shapes and voxel sizes
as ``tomograms=`` (what RELION 5 centred coordinates need) and the active tomogram's
voxel size as ``voxel_size=`` (what copick's Angstrom coordinates need); with no
tomogram open, Angstrom files are shown at 1 Angstrom voxels (world units stay Angstrom),
with a note.

A file of several tomograms never mixes them. When an open image layer's name matches
some of them (:func:`~napari_cryoguard.io.tomo_key`: ``TS_01`` = ``TS_01.mrc`` =
``TS_01.tomostar``), only those tomograms' rows are opened, on their images, and the
others are left out (a note says how many rows were used). When none matches, there is
one Points layer per tomogram, ``<file stem> <tomogram>``, each with only its rows: with
image layers open they are all added **hidden** and a warning notification names the
file's tomograms and the open image layers (a modal "which tomogram?" dialog is not
used: it could not be answered in scripts or headless sessions); with no image open,
only the first tomogram's layer is shown, with a note.

A voxel file that gives no voxel size (``Picks.voxel_size_assumed``: ``.coords``, IMOD
pixels, ...) takes the image's voxels as its own; over an image whose voxels are not
cubic (an OME-Zarr level binned in y and x only) the picks keep their own voxel size and
scale, with a warning.

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

import numpy as np

from napari_cryoguard.io import TOMOGRAM_SUFFIXES, read_tomogram
from napari_cryoguard.io.mrc import OMEZARR_SUFFIXES

#: what a reader returns to say "read, on purpose no layers" (npe2 / napari convention)
NO_LAYERS = [(None,)]


class TomogramWarning(str):
    """A message of :func:`_picks_layers` shown as a warning (not an info) notification."""

PICK_FILE_SUFFIXES: tuple[str, ...] = (
    ".star", ".csv", ".tsv", ".tbl", ".mod", ".cbox", ".coords", ".json",
)
"""Suffixes the napari pick-file reader takes (the manifest's filename patterns)."""


def _ours(path) -> bool:
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in OMEZARR_SUFFIXES:
        return p.is_dir()
    return suffix in TOMOGRAM_SUFFIXES and not p.is_dir()


def get_reader(path):
    """Return :func:`read_tomogram_layers` for tomograms (by suffix; ``.zarr`` folders),
    else ``None``."""
    paths = path if isinstance(path, list) else [path]
    if not paths or not all(_ours(p) for p in paths):
        return None
    return read_tomogram_layers


def _pick_file(path) -> bool:
    p = Path(path)
    return p.suffix.lower() in PICK_FILE_SUFFIXES and not p.is_dir()


def get_picks_reader(path):
    """Return :func:`read_picks_layers` for pick files (by suffix), else ``None``."""
    paths = path if isinstance(path, list) else [path]
    if not paths or not all(_pick_file(p) for p in paths):
        return None
    return read_picks_layers


def tomogram_layer_data(tomo) -> tuple:
    """The ``(data, kwargs, "image")`` layer tuple of a :class:`~napari_cryoguard.io.Tomogram`.

    The data stays memory-mapped; the Tomogram object rides along in the layer metadata
    so that its file handle lives as long as the layer. The layer's scale is the voxel
    size in Angstrom (ZYX), and its translate the tomogram's ``translate_zyx`` (an
    OME-Zarr translation), so picks and subtomograms line up in physical units.
    """
    kwargs = {
        "name": tomo.name,
        "scale": tuple(float(v) for v in tomo.voxel_size_zyx),
        "metadata": {"cryoguard_tomogram": tomo, "path": str(tomo.path),
                     "voxel_size": float(tomo.voxel_size)},
        "colormap": "gray",
    }
    translate = tuple(float(v) for v in getattr(tomo, "translate_zyx", (0.0, 0.0, 0.0)))
    if any(translate):  # an OME-Zarr translation: the first voxel's centre in Angstrom
        kwargs["translate"] = translate
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
            tomo = read_tomogram(p)
        except CryoGuardError as exc:
            from napari.utils.notifications import show_error

            show_error(str(exc))
            continue
        layers.append(tomogram_layer_data(tomo))
        if tomo.notes:
            from napari.utils.notifications import show_info

            show_info(" ".join(tomo.notes))
    return layers or NO_LAYERS


# ------------------------------------------------------------------------ pick files


def _open_tomograms(viewer) -> list:
    """The 3D image layers of ``viewer`` (the tomograms picks can be drawn on)."""
    if viewer is None:
        return []
    from napari.layers import Image

    return [lay for lay in viewer.layers
            if isinstance(lay, Image) and lay.ndim >= 3 and not getattr(lay, "rgb", False)]


def _tomograms_arg(images) -> dict | None:
    """``name -> (shape_zyx, voxel_size)`` of the open tomograms, for ``read_picks``."""
    from napari_cryoguard._napari._layers import voxel_size_of

    out = {}
    for lay in images:
        shape = tuple(int(s) for s in lay.data.shape[-3:])
        out[lay.name] = (shape, voxel_size_of(lay))
    return out or None


def picks_layer_data(picks, name: str, *, source, tomo_name: str, voxel_size: float,
                     scale=None, translate=None) -> tuple:
    """The ``(coords, kwargs, "points")`` layer tuple of ``picks`` (ZYX voxels).

    ``scale`` defaults to ``voxel_size`` on every axis; the metadata and the style follow
    :func:`~napari_cryoguard._napari._picks.set_picks_layer` (14-voxel discs drawn out of
    slice).
    """
    import pandas as pd

    n = len(picks)
    features = pd.DataFrame(index=np.arange(n))
    if picks.scores is not None:
        features["score"] = picks.scores
    names = picks.class_of()
    if names is not None:
        features["class"] = pd.Categorical(names, categories=list(dict.fromkeys(
            [*picks.class_names, *names])))
    for key, values in picks.features.items():
        values = np.asarray(values)
        if values.ndim == 1:
            features[key] = values
    if picks.tomo_names is not None and len(picks.tomogram_names()) > 1:
        features["tomo_name"] = picks.tomo_names
    scale = tuple(float(v) for v in (scale if scale is not None else (voxel_size,) * 3))
    kwargs = {
        "name": name,
        "scale": scale,
        "features": features,
        "metadata": {
            "voxel_size": float(voxel_size),
            "tomo_name": tomo_name,
            "class_names": list(picks.class_names or []),
            "source": str(source),
            "notes": list(picks.notes),
            "diameter": 14.0 * float(voxel_size),
            "voxel_size_assumed": bool(getattr(picks, "voxel_size_assumed", False)),
        },
        "size": 14.0,
        "symbol": "disc",
        "border_color": "yellow",
        "face_color": "transparent",
        "border_width": 0.12,
        "projection_mode": "rescale_spherical",
    }
    if translate is not None:
        kwargs["translate"] = tuple(float(v) for v in translate)
    return (picks.coords.reshape(-1, 3), kwargs, "points")


def _picks_layers(path: Path, viewer) -> tuple[list[tuple], list[str]]:
    """Layer tuples for one pick file and the messages to show (see module docstring)."""
    from napari_cryoguard._napari._layers import voxel_size_of
    from napari_cryoguard.errors import CryoGuardError
    from napari_cryoguard.io import read_picks, tomo_key

    images = _open_tomograms(viewer)
    active = viewer.layers.selection.active if viewer is not None else None
    target = active if active in images else (images[-1] if images else None)
    try:
        picks = read_picks(path)
    except CryoGuardError as first:
        # files in Angstrom need a voxel size (copick), RELION 5 centred coordinates the
        # tomograms' geometry: take them from the open tomograms, else 1 Angstrom voxels
        geometry = _tomograms_arg(images)
        vs = voxel_size_of(target) if target is not None else 1.0
        try:
            picks = read_picks(path, tomograms=geometry, voxel_size=vs)
        except CryoGuardError:
            raise first from None
        if geometry is not None:
            picks.notes.append(
                f"{path.name} was read with the shapes and voxel sizes of the open tomograms "
                f"({', '.join(repr(n) for n in geometry)}), at {vs:g} Angstrom voxels")
        else:
            picks.notes.append(
                f"{path.name} needs a voxel size and no tomogram is open: shown at 1 Angstrom "
                "voxels (world units are Angstrom; open the tomogram first to get its voxels)")
    stem = path.stem
    names = picks.tomogram_names()
    messages: list[str] = []
    layers: list[tuple] = []

    def on_image(part, image) -> tuple:
        scale = [float(v) for v in image.scale[-3:]]
        if max(scale) - min(scale) > 1e-3 * max(scale):
            # voxels that are not cubic (an OME-Zarr level binned in y and x only): the
            # picks' one voxel size cannot index it; draw them in their own voxels instead
            messages.append(TomogramWarning(
                f"image {image.name!r} has voxels of {', '.join(f'{v:g}' for v in scale)} "
                f"Angstrom (z, y, x), not cubic: {path.name} is drawn at its own "
                f"{part.voxel_size:g} Angstrom voxels (world coordinates in Angstrom), not "
                "converted to the image's; open a level with cubic voxels to use the picks"))
            return part, picks_layer_data(part, stem, source=path, tomo_name=image.name,
                                          voxel_size=part.voxel_size,
                                          translate=part.origin_zyx)
        vs = voxel_size_of(image)
        # Angstrom picks (copick) are placed relative to the image's first voxel
        part = part.at_voxel_size(vs, source=path.name,
                                  origin_zyx=tuple(float(v) for v in image.translate[-3:]))
        return part, picks_layer_data(part, stem, source=path, tomo_name=image.name,
                                      voxel_size=vs, scale=image.scale[-3:],
                                      translate=image.translate[-3:])

    keys = {tomo_key(n) for n in names}
    matched = [img for img in images if tomo_key(img.name) in keys]
    if matched:
        for image in matched:
            part, layer = on_image(picks.for_tomogram(image.name, source=path.name), image)
            if len(matched) > 1:
                layer[1]["name"] = f"{stem} {image.name}"
            layers.append(layer)
            messages.extend(part.notes)
    elif len(names) <= 1 and images:
        # one tomogram (or none named): the active tomogram, else the last opened
        image = target
        part, layer = on_image(picks.for_tomogram(image.name, source=path.name), image)
        layers.append(layer)
        messages.extend(part.notes)
    elif len(names) > 1:
        # several tomograms, none open: one layer each, never mixed, never silently drawn
        # over an unrelated tomogram (a modal "which tomogram?" dialog cannot be answered
        # in scripts or headless tests: the layers are opened hidden and a warning names
        # both sides, so the user shows the right one or opens its tomogram)
        for i, tomo in enumerate(names):
            part = picks.for_tomogram(tomo, source=path.name)
            layer = picks_layer_data(part, f"{stem} {tomo}", source=path, tomo_name=tomo,
                                     voxel_size=part.voxel_size, translate=part.origin_zyx)
            layer[1]["visible"] = not images and i == 0
            layers.append(layer)
        messages.extend(picks.notes)
        listed = ", ".join(repr(n) for n in names)
        if images:
            opened = ", ".join(repr(i.name) for i in images)
            messages.append(TomogramWarning(
                f"{path.name} holds picks of {len(names)} tomograms ({listed}) and none "
                f"matches an open image layer ({opened}); opened one Points layer per "
                f"tomogram at {picks.voxel_size:g} Angstrom voxels, all hidden so that no "
                "tomogram's picks are drawn over another tomogram: open the matching "
                "tomogram (or rename its layer) and open the file again, or show a layer"))
        else:
            messages.append(
                f"{path.name} holds picks of {len(names)} tomograms ({listed}) and no "
                f"tomogram is open; opened one Points layer per tomogram at "
                f"{picks.voxel_size:g} Angstrom voxels, only {names[0]!r} shown (the others "
                "hidden, so that tomograms are not mixed)")
    else:
        tomo = names[0] if names else ""
        layers.append(picks_layer_data(picks, stem, source=path, tomo_name=tomo,
                                       voxel_size=picks.voxel_size,
                                       translate=picks.origin_zyx))
        messages.extend(picks.notes)
    return layers, messages


def read_picks_layers(path, **_) -> list[tuple]:
    """Read pick files into napari Points layer tuples (see the module docstring).

    A file the package cannot read is an error notification with the package's own
    sentence and adds no layer; the readers' notes are an info notification.
    """
    import napari
    from napari.utils.notifications import show_error, show_info, show_warning

    from napari_cryoguard.errors import CryoGuardError

    viewer = napari.current_viewer()
    paths = path if isinstance(path, list) else [path]
    layers = []
    for p in paths:
        try:
            found, messages = _picks_layers(Path(p), viewer)
        except CryoGuardError as exc:
            show_error(str(exc))
            continue
        layers.extend(found)
        for warning in dict.fromkeys(m for m in messages if isinstance(m, TomogramWarning)):
            show_warning(str(warning))
        infos = [m for m in messages if not isinstance(m, TomogramWarning)]
        if infos:
            show_info(" ".join(dict.fromkeys(infos)))
    return layers or NO_LAYERS
