"""The ``Picks`` container shared by picking, IO, the CLI and the widgets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_cryoguard.checks import check_float
from napari_cryoguard.errors import CryoGuardError


@dataclass
class Picks:
    """Particle positions in one or more tomograms.

    Attributes
    ----------
    coords : ndarray, shape (N, 3), float64
        Particle centres as voxel indices in ZYX order (numpy / napari order).
    scores : ndarray, shape (N,), float64, optional
        Picking score per particle (for DoG picks: the DoG response as a z-score).
    labels : ndarray, shape (N,), int64, optional
        0-based class index per particle, into ``class_names``; -1 means unknown.
    class_names : list of str, optional
        Names of the classes ``labels`` index into.
    tomo_names : ndarray, shape (N,), str, optional
        Tomogram each particle belongs to (RELION ``rlnTomoName``).
    features : dict of str -> ndarray (N,)
        Any further per-particle columns (probabilities, attack outcome, margin, ...).
    voxel_size : float
        Voxel size in Angstrom of the tomogram(s) the coordinates index into.
    notes : list of str
        What a reader assumed or converted (voxel size guessed, origins applied, units
        converted, ...), in words for the user; commands and widgets show them with the
        result so that nothing is guessed silently.
    origin_zyx : tuple of float or None
        Where voxel (0, 0, 0) of the coordinates lies, in Angstrom (ZYX), in the
        physical frame of Angstrom pick files: ``(0, 0, 0)`` for picks read from
        Angstrom (copick), a tomogram's :attr:`~napari_cryoguard.io.Tomogram.translate_zyx`
        once placed on it by :meth:`on_tomogram`. ``None`` (voxel formats: RELION,
        Dynamo, STOPGAP, ...): the coordinates index the array of whichever tomogram
        they are put on, and no translation is applied to them.
    voxel_size_assumed : bool
        The file did not say its voxel size and ``voxel_size`` is the 1.0 Angstrom a
        reader assumed (set when a note says ``assumed 1.0 A``, the readers' wording).
        :meth:`at_voxel_size` then takes the coordinates as voxel indices of the target
        tomogram instead of scaling them from 1 Angstrom: TomoTwin ``.coords``, IMOD
        models in pixels, Dynamo tables without ``apix`` index the tomogram they were
        picked on, and shrinking them by its voxel size would misplace every pick.
    """

    coords: np.ndarray
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    tomo_names: np.ndarray | None = None
    features: dict[str, np.ndarray] = field(default_factory=dict)
    voxel_size: float = 1.0
    notes: list[str] = field(default_factory=list)
    origin_zyx: tuple[float, float, float] | None = None
    voxel_size_assumed: bool = False

    def __post_init__(self) -> None:
        coords = np.asarray(self.coords, dtype=np.float64)
        if coords.size == 0:
            coords = coords.reshape(0, 3)
        if coords.ndim != 2 or coords.shape[1] != 3:
            raise CryoGuardError(f"picks need (N, 3) ZYX coordinates, got shape {coords.shape}")
        self.coords = coords
        n = len(coords)
        if self.scores is not None:
            self.scores = self._column("scores", self.scores, np.float64, n)
        if self.labels is not None:
            self.labels = self._column("labels", self.labels, np.int64, n)
        if self.tomo_names is not None:
            self.tomo_names = self._column("tomo_names", self.tomo_names, str, n)
        if self.class_names is not None:
            self.class_names = [str(c) for c in self.class_names]
        if self.origin_zyx is not None:
            origin = np.asarray(self.origin_zyx, dtype=np.float64)
            if origin.shape != (3,) or not np.all(np.isfinite(origin)):
                raise CryoGuardError(f"picks origin must be 3 finite numbers (z, y, x in "
                                     f"Angstrom), got {self.origin_zyx!r}")
            self.origin_zyx = tuple(float(v) for v in origin)  # type: ignore[assignment]
        if not self.voxel_size_assumed and self.voxel_size == 1.0 and self.origin_zyx is None:
            self.voxel_size_assumed = any(ASSUMED_VOXEL_NOTE in str(n) for n in self.notes)
        self.features = {k: np.asarray(v) for k, v in self.features.items()}
        for k, v in self.features.items():
            if v.shape[:1] != (n,):
                raise CryoGuardError(f"feature {k!r} has {v.shape[:1]} rows, picks have {n}")

    @staticmethod
    def _column(name: str, values, dtype, n: int) -> np.ndarray:
        arr = np.asarray(values).astype(dtype)
        if arr.shape != (n,):
            raise CryoGuardError(f"picks column {name!r} has shape {arr.shape}, expected ({n},)")
        return arr

    def __len__(self) -> int:
        return len(self.coords)

    def subset(self, index) -> Picks:
        """Return the picks selected by a boolean mask or an index array."""
        index = np.asarray(index)
        return Picks(
            coords=self.coords[index],
            scores=None if self.scores is None else self.scores[index],
            labels=None if self.labels is None else self.labels[index],
            class_names=self.class_names,
            tomo_names=None if self.tomo_names is None else self.tomo_names[index],
            features={k: v[index] for k, v in self.features.items()},
            voxel_size=self.voxel_size,
            notes=list(self.notes),
            origin_zyx=self.origin_zyx,
            voxel_size_assumed=self.voxel_size_assumed,
        )

    def class_of(self) -> list[str] | None:
        """Class name per particle (``None`` when labels or class names are missing)."""
        if self.labels is None or self.class_names is None:
            return None
        return [self.class_names[i] if 0 <= i < len(self.class_names) else "" for i in self.labels]

    # ------------------------------------------------------------------ guards

    def tomogram_names(self) -> list[str]:
        """Distinct tomogram names in file order (empty when the file names none)."""
        if self.tomo_names is None:
            return []
        return list(dict.fromkeys(self.tomo_names.tolist()))

    def for_tomogram(self, name: str, *, source: str = "the pick file") -> Picks:
        """The rows of the tomogram called ``name``, matched by :func:`tomo_key`.

        When no name matches, ``rec_<name>`` matches ``<name>`` and back (RELION 5's
        reconstruction of tilt series ``TS_01`` is ``rec_TS_01.mrc``; pytom-match-pick
        writes ``rec_TS_01``), with a note.

        Files that name no tomogram are returned whole. A file naming exactly one
        tomogram that does not match is also returned whole, with a note saying so (the
        common case of ``TS_01`` picks on ``TS_01_bin4.mrc``). A file naming several
        tomograms, none of which matches, raises :class:`CryoGuardError` listing them.
        """
        names = self.tomogram_names()
        if not names:
            return self
        key = tomo_key(name)
        keys = [tomo_key(n) for n in self.tomo_names.tolist()]
        mask = np.array([k == key for k in keys], dtype=bool)
        alias = key[4:] if key.startswith("rec_") else "rec_" + key
        matched_alias = not mask.any() and alias in keys
        if matched_alias:
            # RELION 5 writes tomogram rec_TS_01.mrc for rlnTomoName TS_01 (its
            # rlnTomoReconstructedTomogram), pytom-match-pick rec_TS_01 for it: the same one
            mask = np.array([k == alias for k in keys], dtype=bool)
        if mask.any():
            out = self.subset(mask)
            if matched_alias:
                out.notes.append(
                    f"tomogram {name!r} matched to {alias!r} of {source} (RELION 5 names "
                    "the reconstruction of tilt series TS_01 rec_TS_01.mrc)")
            if len(names) > 1:
                out.notes.append(
                    f"used the {int(mask.sum())} of {len(self)} picks of {source} that belong "
                    f"to tomogram {name!r} ({len(names)} tomograms in the file)"
                )
            return out
        if len(names) == 1:
            out = self.subset(np.ones(len(self), dtype=bool))
            out.notes.append(
                f"{source} names tomogram {names[0]!r}, not {name!r}; assumed they are the same "
                "tomogram"
            )
            return out
        shown = ", ".join(repr(n) for n in names[:8]) + (", ..." if len(names) > 8 else "")
        raise CryoGuardError(
            f"{source} holds picks of {len(names)} tomograms ({shown}) but none named "
            f"{name!r}; open one of those tomograms or pick its name"
        )

    def at_voxel_size(self, voxel_size: float, *, origin_zyx=None,
                      source: str = "the picks") -> Picks:
        """The same positions in Angstrom, as voxel indices of a tomogram at ``voxel_size``.

        A pick at voxel ``c`` of a tomogram at ``v`` Angstrom lies at ``c * v`` Angstrom
        from the first voxel's centre; on a tomogram at ``w`` Angstrom that is voxel
        ``c * v / w`` (both tomograms covering the same volume from the same origin, as
        binned versions of one reconstruction do). A note records the conversion.

        ``origin_zyx`` is where the target tomogram's first voxel lies in Angstrom (its
        :attr:`~napari_cryoguard.io.Tomogram.translate_zyx`). When these picks have an
        :attr:`origin_zyx` too (Angstrom formats), the position is taken in that
        physical frame: voxel ``(c * v + origin - origin_zyx) / w``, with a note when
        the shift is not zero. Either origin ``None``: no shift (the first formula).
        """
        voxel_size = positive_voxel_size(voxel_size)
        if self.voxel_size_assumed:
            out = self.subset(np.ones(len(self), dtype=bool))
            out.voxel_size, out.voxel_size_assumed = voxel_size, False
            out.notes.append(
                f"{source} does not say its voxel size: its coordinates are taken as voxel "
                f"indices of this tomogram ({voxel_size:g} Angstrom), not converted from the "
                "1.0 Angstrom assumed (pass voxel_size= to convert them)")
            return out
        shift = np.zeros(3)
        new_origin = self.origin_zyx
        if origin_zyx is not None and self.origin_zyx is not None:
            target = np.asarray(origin_zyx, dtype=np.float64)
            if target.shape != (3,) or not np.all(np.isfinite(target)):
                raise CryoGuardError(f"{source}: a tomogram origin must be 3 finite numbers "
                                     f"(z, y, x in Angstrom), got {origin_zyx!r}")
            shift = np.asarray(self.origin_zyx) - target
            new_origin = tuple(float(v) for v in target)
        same_size = np.isclose(voxel_size, self.voxel_size, rtol=1e-4, atol=0.0)
        if same_size and not shift.any():
            return self
        out = self.subset(np.ones(len(self), dtype=bool))
        if shift.any():
            out.coords = (self.coords * self.voxel_size + shift) / voxel_size
        else:
            out.coords = self.coords * (self.voxel_size / voxel_size)
        out.voxel_size = voxel_size
        out.origin_zyx = new_origin
        if not same_size:
            out.notes.append(
                f"converted {source} from {self.voxel_size:g} to {voxel_size:g} Angstrom voxels "
                f"(coordinates x {self.voxel_size / voxel_size:g})"
            )
        else:
            out.voxel_size = self.voxel_size
        if shift.any():
            out.notes.append(
                f"placed {source} on a tomogram whose first voxel lies at "
                f"{', '.join(f'{v:g}' for v in new_origin)} Angstrom (z, y, x; its OME-Zarr "
                f"translation): positions moved by {', '.join(f'{v:g}' for v in shift)} "
                "Angstrom before dividing by the voxel size"
            )
        return out

    def on_tomogram(self, tomo: Any, *, source: str = "the pick file") -> Picks:
        """The rows of tomogram ``tomo`` (a :class:`~napari_cryoguard.io.Tomogram`) as its
        voxel indices: :meth:`for_tomogram` by its name, then :meth:`at_voxel_size` at its
        voxel size and its ``translate_zyx`` (so Angstrom picks land on a translated
        OME-Zarr level at the same place in Angstrom). Notes say what was done. A tomogram
        whose voxels are not cubic (an OME-Zarr level binned in y and x only) is refused."""
        zyx = [float(v) for v in getattr(tomo, "voxel_size_zyx", None) or (tomo.voxel_size,) * 3]
        if max(zyx) - min(zyx) > 1e-3 * max(zyx):
            raise CryoGuardError(
                f"tomogram {tomo.name!r} has voxels of {', '.join(f'{v:g}' for v in zyx)} "
                "Angstrom (z, y, x), not cubic: picks (and cubic subtomograms) need equal "
                "voxel sizes; open a level or a resampled tomogram with cubic voxels")
        part = self.for_tomogram(tomo.name, source=source)
        if getattr(tomo, "voxel_size_assumed", False) and not part.voxel_size_assumed:
            # the tomogram's 1 Angstrom is a guess: rescaling by it would move every pick
            # (10 Angstrom picks x 10); take them as its voxel indices, as at_voxel_size
            # does for picks whose own voxel size is the guess
            out = part.subset(np.ones(len(part), dtype=bool))
            out.voxel_size, out.voxel_size_assumed, out.origin_zyx = tomo.voxel_size, True, None
            out.notes.append(
                f"tomogram {tomo.name!r} does not say its voxel size: the coordinates of "
                f"{source} ({part.voxel_size:g} Angstrom voxels) are taken as its voxel "
                "indices, not converted to the 1.0 Angstrom assumed (give the tomogram's "
                "voxel size to convert them)")
            return out
        return part.at_voxel_size(tomo.voxel_size, source=source,
                                  origin_zyx=getattr(tomo, "translate_zyx", None))


ASSUMED_VOXEL_NOTE = "assumed 1.0 A"
"""What every reader's note says when a file gives no voxel size (``... assumed 1.0 A``,
``... assumed 1.0 Angstrom``): :class:`Picks` marks itself ``voxel_size_assumed``."""


def positive_voxel_size(value: Any, what: str = "voxel size", source: str = "") -> float:
    """``value`` as a positive, finite number of Angstrom, else one CryoGuardError."""
    prefix = f"{source}: " if source else ""
    return check_float(f"{prefix}{what}", value, minimum=0.0, strict=True)


def voxel_size_or_assumed(value: Any, source: str, notes: list[str]) -> float:
    """The given voxel size (checked), or 1.0 Angstrom with a note saying it was assumed."""
    if value is None:
        notes.append(f"{source} does not say its voxel size; assumed 1.0 Angstrom "
                     "(pass voxel_size=)")
        return 1.0
    return positive_voxel_size(value)


_TOMO_SUFFIXES = (
    ".tomostar", ".mrc", ".rec", ".st", ".map", ".zarr", ".ome", ".em", ".tif", ".tiff", ".mod",
)


def tomo_key(name: str) -> str:
    """A tomogram name reduced for matching between tools.

    Drops folders and the suffixes tools add (``.tomostar`` of Warp, ``.mrc``, ``.rec``,
    ``.zarr``, ...), repeatedly, and compares case-sensitively. pytom-match-pick names
    its reconstructions ``rec_<name>``; that prefix is NOT dropped here, because a
    ``rec_`` tomogram and its tilt series ``<name>`` are different files; readers that
    know the convention strip it themselves and say so in a note.
    """
    s = str(name).replace("\\", "/").rsplit("/", 1)[-1].strip()
    changed = True
    while changed:
        changed = False
        low = s.lower()
        for suf in _TOMO_SUFFIXES:
            if low.endswith(suf) and len(s) > len(suf):
                s = s[: -len(suf)]
                changed = True
                break
    return s
