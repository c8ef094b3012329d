"""Macromolecule density templates bundled with the package.

The templates are density maps at 10 Å per voxel from the polnet project (see
``napari_cryoguard/data/templates/SOURCE.md`` and ``LICENSE``), in the spirit of the
simulation in Che et al. 2018 (CB3D) section 2.2
(density maps of PDB structures at about 1 nm resolution, 40^3 boxes).

A loaded template is

* rescaled with :func:`scipy.ndimage.zoom` from the file's voxel size (10 Å) to the
  requested voxel size (with a Gaussian anti-alias filter when shrinking),
* clipped at 0 and normalised to a **maximum of 1** (the peak protein density), so a
  large complex carries more total signal than a small one, as in a real tomogram,
* centred on its centre of mass: the returned cube has an odd edge ``2 R + 1`` and the
  centre of mass sits on its centre voxel ``R``,
* cropped to its support (voxels above 1 % of the maximum) plus a margin of 2 voxels,
  so any rotation about the centre keeps the whole support inside the cube.

Default classes
---------------
Five bundled templates of clearly different shape whose particles fit well inside a
28^3 subtomogram at 10 Å (the papers' cube). Figures at 10 Å, support = voxels above
10 % of the maximum; *extent* is the support's size along its three principal axes,
*radius* the largest distance of a support voxel from the centre of mass (the particle
radius used to keep particles apart), *box* the edge of the loaded cube.

======  ==========================================  ==================  ======  ======  ===
name    shape                                       extent (voxels)     radius  voxels  box
======  ==========================================  ==================  ======  ======  ===
1bxn    RuBisCO, compact globule (papers' protein)  13.0 x 12.9 x 10.5  7.3     713     23
3j9i    20S proteasome, barrel (papers' protein)    17.2 x 13.7 x 13.6  9.5     1781    27
6pxm    hollow spherical shell                      15.1 x 15.1 x 14.9  7.1     1297    23
1u6g    long, flat and curved                       16.7 x 12.0 x 9.7   8.6     709     25
1qvr    V-shaped, three-armed                       17.9 x 13.7 x 12.8  10.8    901     29
======  ==========================================  ==================  ======  ======  ===

(:func:`describe_template` computes these figures.) The largest radius plus the
default 2-voxel shift, 12.8 voxels, stays inside a 28^3 cube's half-edge of 14. A
small complex such as ``1s3x`` (radius 3.7 voxels, 142 voxels) was left out: a DoG
picker at the papers' scale (sigma 7 voxels) barely sees it.

Not chosen as defaults: the 70S ribosome ``4v4r`` (radius 15.7 voxels at 10 Å, which
does not fit a 28^3 cube in every orientation) and the 26S proteasome ``4cr2`` (radius
15.2); they are not bundled, but :func:`load_template` reads any MRC file given by path,
e.g. ``/work/shared/data/templates-10A/4v4r.mrc`` or a map of your own.
"""

from __future__ import annotations

import functools
import math
from importlib import resources
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_cryoguard.checks import check_float
from napari_cryoguard.errors import CryoGuardError

__all__ = [
    "DEFAULT_CLASSES",
    "TEMPLATE_VOXEL_SIZE",
    "describe_template",
    "list_templates",
    "load_template",
    "template_radius",
]

#: Voxel size (Å) of the bundled template files.
TEMPLATE_VOXEL_SIZE = 10.0

#: The default particle classes (bundled template names), see the module docstring.
DEFAULT_CLASSES: tuple[str, ...] = ("1bxn", "3j9i", "6pxm", "1u6g", "1qvr")

#: Fraction of the maximum above which a voxel counts as the particle's support.
SUPPORT_FRACTION = 0.10
#: Fraction of the maximum kept when cropping the template cube (tails included).
CROP_FRACTION = 0.01
#: Extra voxels around the cropped support.
CROP_MARGIN = 2


def _template_dir():
    return resources.files("napari_cryoguard").joinpath("data", "templates")


def list_templates() -> list[str]:
    """Names of the bundled templates (file names without ``.mrc``), sorted."""
    return sorted(
        p.name[: -len(".mrc")] for p in _template_dir().iterdir() if p.name.endswith(".mrc")
    )


def _resolve(name: str) -> tuple[Path, str]:
    """Return the MRC path and the display name for a bundled name or a file path."""
    name = str(name)
    if name in list_templates():
        with resources.as_file(_template_dir().joinpath(name + ".mrc")) as p:
            return Path(p), name
    path = Path(name).expanduser()
    if path.suffix.lower() in (".mrc", ".map", ".rec") or path.exists():
        if not path.is_file():
            raise CryoGuardError(f"template file {str(path)!r} does not exist")
        return path, path.stem
    raise CryoGuardError(
        f"unknown template {name!r}; bundled templates are {', '.join(list_templates())} "
        "(or give the path of an MRC file)"
    )


def _read_map(path: Path) -> tuple[np.ndarray, float]:
    import mrcfile

    try:
        with mrcfile.open(path, permissive=True) as mrc:
            if mrc.data is None:
                raise CryoGuardError(f"template {str(path)!r} holds no data")
            data = np.asarray(mrc.data, dtype=np.float32)
            voxel = float(mrc.voxel_size.x)
    except (ValueError, OSError) as exc:
        raise CryoGuardError(f"cannot read template {str(path)!r}: {exc}") from exc
    if data.ndim != 3:
        raise CryoGuardError(f"template {str(path)!r} is not a 3D map (shape {data.shape})")
    if not np.isfinite(data).all() or data.max() <= 0:
        raise CryoGuardError(f"template {str(path)!r} has no positive, finite density")
    if not voxel > 0:
        voxel = TEMPLATE_VOXEL_SIZE
    return data, voxel


@functools.lru_cache(maxsize=64)
def _load_cached(name: str, voxel_size: float) -> np.ndarray:
    path, _ = _resolve(name)
    data, native = _read_map(path)
    data = np.clip(data, 0.0, None)
    data /= data.max()
    factor = native / voxel_size
    if not math.isclose(factor, 1.0, rel_tol=1e-6):
        if factor < 1.0:
            # anti-alias before shrinking: a Gaussian whose width grows with the ratio
            data = ndimage.gaussian_filter(data, 0.5 * math.sqrt(1.0 / factor**2 - 1.0))
        data = ndimage.zoom(data, factor, order=3, mode="grid-constant", grid_mode=True)
        data = np.clip(data, 0.0, None)
    if data.max() <= 0:
        raise CryoGuardError(f"template {name!r} vanishes at voxel size {voxel_size} Å")
    data /= data.max()

    com = np.asarray(ndimage.center_of_mass(data))
    support = np.argwhere(data >= CROP_FRACTION)
    reach = float(np.sqrt(((support - com) ** 2).sum(axis=1)).max())
    half = int(math.ceil(reach)) + CROP_MARGIN
    size = 2 * half + 1
    # shift so that the centre of mass lands on voxel (half, half, half)
    out = ndimage.affine_transform(
        data,
        np.eye(3),
        offset=com - half,
        output_shape=(size, size, size),
        order=3,
        mode="constant",
        cval=0.0,
        output=np.float32,
    )
    out = np.clip(out, 0.0, None)
    out /= out.max()
    out.setflags(write=False)
    return out


def _check_voxel_size(voxel_size: float) -> float:
    return check_float("voxel size (Å)", voxel_size, minimum=0.0, strict=True)


def load_template(name: str, voxel_size: float = 10.0) -> np.ndarray:
    """Load a density template, rescaled, normalised, centred and cropped.

    Parameters
    ----------
    name : str
        A bundled template name (see :func:`list_templates`) or the path of an MRC map
        (its header voxel size is used; 10 Å when the header has none).
    voxel_size : float
        Voxel size (Å) of the returned cube; the map is rescaled by
        ``file voxel size / voxel_size`` with :func:`scipy.ndimage.zoom`.

    Returns
    -------
    ndarray, shape (2R+1, 2R+1, 2R+1), float32
        ZYX density, protein positive, maximum 1, centre of mass on the centre voxel
        ``R``, cropped to the 1 % support plus 2 voxels (see the module docstring).

    Raises
    ------
    CryoGuardError
        Unknown name, unreadable file, non-positive voxel size.
    """
    return _load_cached(str(name), _check_voxel_size(voxel_size)).copy()


def template_radius(
    name: str, voxel_size: float = 10.0, fraction: float = SUPPORT_FRACTION
) -> float:
    """Particle radius in voxels: largest distance from the centre of mass of a voxel
    whose density is at least ``fraction`` of the maximum (10 % by default).

    Used to keep simulated particles from overlapping.
    """
    tmpl = _load_cached(str(name), _check_voxel_size(voxel_size))
    centre = (tmpl.shape[0] - 1) / 2.0
    idx = np.argwhere(tmpl >= fraction)
    return float(np.sqrt(((idx - centre) ** 2).sum(axis=1)).max())


def describe_template(name: str, voxel_size: float = 10.0) -> dict:
    """Support figures of a loaded template (the module docstring's table).

    Returns a dict with ``extent`` (support size along its three principal axes,
    voxels, largest first), ``radius`` (:func:`template_radius`), ``voxels`` (number of
    support voxels, above 10 % of the maximum) and ``box`` (edge of the loaded cube).
    """
    tmpl = _load_cached(str(name), _check_voxel_size(voxel_size))
    mask = tmpl >= SUPPORT_FRACTION
    idx = np.argwhere(mask).astype(float)
    w = tmpl[mask].astype(float)
    c = (idx * w[:, None]).sum(0) / w.sum()
    d = idx - c
    _, vecs = np.linalg.eigh((d.T * w) @ d / w.sum())
    proj = d @ vecs
    extent = np.sort(proj.max(0) - proj.min(0) + 1)[::-1]
    return {
        "extent": tuple(round(float(e), 1) for e in extent),
        "radius": round(template_radius(name, voxel_size), 1),
        "voxels": int(mask.sum()),
        "box": int(tmpl.shape[0]),
    }
