"""The picker's parameters, declared once: :class:`DoGParams`.

:func:`~napari_cryoguard.picking.pick_particles` takes its defaults from it, ``cryoguard
pick`` generates its options from it (:func:`napari_cryoguard.cli._options.add_options`) and
the *Pick particles* widget reads its defaults and choices from it. This module imports
neither numpy, scipy, torch nor Qt, so the command line's help stays fast.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from napari_cryoguard.checks import check_choice, check_float, check_positive_int
from napari_cryoguard.params import choices_of

__all__ = [
    "DEFAULT_BORDER",
    "DoGParams",
    "HELP_DEFAULTS",
    "PAPER_CUBE",
    "PAPER_K",
    "PAPER_SIGMA1",
    "POLARITIES",
    "SIGMA_UNITS",
    "SIMULATED_SIGMA1",
    "SIMULATED_THRESHOLD",
    "Polarity",
    "SigmaUnit",
]

#: The RAT paper's DoG sigma1 (voxels of 9.4 A), section IV.A.
PAPER_SIGMA1 = 7.0
#: The RAT paper's DoG ratio k = sigma2 / sigma1, section IV.A.
PAPER_K = 1.1
#: sigma1 matched to the simulator's default classes (radii 7-11 voxels at 10 A).
SIMULATED_SIGMA1 = 5.0
#: Threshold (z-score) used with :data:`SIMULATED_SIGMA1` on simulated tomograms.
SIMULATED_THRESHOLD = 3.5
#: The papers' subtomogram cube edge in voxels (RAT, section IV.A; CB3D): 28.
PAPER_CUBE = 28
#: The border (voxels) that ``border=None`` means: half of the papers' cube, so that
#: every pick can be extracted whole at the default cube size.
DEFAULT_BORDER = PAPER_CUBE // 2

#: particle contrast: protein bright (white), protein dark (black), or try both
Polarity = Literal["bright", "dark", "auto"]
#: unit of ``sigma1``
SigmaUnit = Literal["voxel", "angstrom"]
#: Values of ``polarity``.
POLARITIES: tuple[str, ...] = choices_of(Polarity)  # type: ignore[assignment]
#: Values of ``sigma_unit``.
SIGMA_UNITS: tuple[str, ...] = choices_of(SigmaUnit)  # type: ignore[assignment]


@dataclasses.dataclass(frozen=True)
class DoGParams:
    """Difference-of-Gaussian picking parameters (RAT, section IV.A; SEMI3D, section 4.1).

    The RAT paper (Wu et al., IEEE BIBM 2019) picks "potential structural regions" as
    the peaks of a DoG with ``s1 = 7.0`` and ``k = 1.1`` and cuts 28^3 subvolumes around
    them; the semi-supervised paper (SEMI3D: Liu et al., BMVC 2019) picks the same way.
    Those are the defaults. :mod:`napari_cryoguard.picking.dog` says how to choose
    ``sigma1`` for other particle sizes.

    Attributes
    ----------
    sigma1
        smaller Gaussian sigma, in sigma_unit (RAT paper, section IV.A: 7.0 voxels)
    k
        ratio of the two sigmas, sigma2 = k * sigma1, > 1 (RAT paper, section IV.A: 1.1)
    sigma_unit
        unit of sigma1 (angstrom uses each tomogram's voxel size)
    threshold
        keep peaks whose DoG response is at least mean + threshold * std of the DoG
        (a z-score)
    min_distance
        minimum distance between picks in voxels (non-maximum suppression)
    max_picks
        keep at most this many picks per tomogram, best first
    border
        exclude picks closer than this to the border, in voxels
    polarity
        particle contrast: bright (density convention, the simulator), dark (raw
        tomograms) or auto (tries both, keeps the sign whose peaks stand out)
    """

    sigma1: float = PAPER_SIGMA1
    k: float = PAPER_K
    sigma_unit: SigmaUnit = "voxel"
    threshold: float = 3.0
    min_distance: float | None = None
    max_picks: int | None = None
    border: int | None = None
    polarity: Polarity = "bright"

    def __post_init__(self) -> None:
        # checked, and numbers stored as Python numbers (numpy scalars, "7" from a form)
        def put(name, value):
            object.__setattr__(self, name, value)

        put("sigma1", check_float("sigma1", self.sigma1, minimum=0, strict=True))
        put("k", check_float("k", self.k, minimum=1, strict=True))
        check_choice("sigma_unit", self.sigma_unit, SIGMA_UNITS)
        put("threshold", check_float("threshold", self.threshold))
        if self.min_distance is not None:
            put("min_distance", check_float("min_distance", self.min_distance, minimum=0))
        if self.max_picks is not None:
            put("max_picks", check_positive_int("max_picks", self.max_picks, minimum=0))
        if self.border is not None:
            put("border", int(check_float("border", self.border, minimum=0)))
        check_choice("polarity", self.polarity, POLARITIES)

    @property
    def border_voxels(self) -> int:
        """``border`` in voxels, :data:`DEFAULT_BORDER` when it is ``None``."""
        return DEFAULT_BORDER if self.border is None else int(self.border)

    def sigma1_voxels(self, voxel_size: float = 1.0) -> float:
        """``sigma1`` in voxels (an Angstrom sigma divided by ``voxel_size``)."""
        return self.sigma1 / float(voxel_size) if self.sigma_unit == "angstrom" else self.sigma1

    def min_distance_voxels(self, voxel_size: float = 1.0) -> float:
        """``min_distance``, ``2 * sigma1`` voxels when it is ``None``."""
        if self.min_distance is None:
            return 2.0 * self.sigma1_voxels(voxel_size)
        return float(self.min_distance)


#: shown in place of ``None`` in the command line's help
HELP_DEFAULTS = {"min_distance": "2 * sigma1", "max_picks": "no limit",
                 "border": f"{DEFAULT_BORDER}, half a {PAPER_CUBE}^3 cube"}


#: below this share of the tomogram's voxels left inside the border, picking says so
BORDER_NOTE_BELOW = 0.5


def border_note(shape, border: int, option: str = "border") -> str | None:
    """A sentence when excluding ``border`` voxels at every face leaves less than
    :data:`BORDER_NOTE_BELOW` of a tomogram of ``shape`` (ZYX) to pick in (a thin or
    binned tomogram with the papers' 14-voxel border); ``None`` otherwise. ``option``
    names the setting to lower (the widget's and the command line's names differ)."""
    shape = tuple(int(s) for s in shape)[-3:]
    border = max(int(border), 0)
    if not border or len(shape) != 3:
        return None
    inner = [max(s - 2 * border, 0) for s in shape]
    share = math.prod(inner) / math.prod(shape)
    if share >= BORDER_NOTE_BELOW:
        return None
    thin = min(range(3), key=lambda a: inner[a] / shape[a])
    axis = "zyx"[thin]
    where = (f"{axis} {border}-{shape[thin] - border - 1} of {shape[thin]}"
             if inner[thin] else f"nothing along {axis}: it has {shape[thin]} voxels")
    return (f"the border of {border} voxels leaves {100 * share:.0f} % of the tomogram to "
            f"pick in ({where}); lower {option} to pick nearer the faces (cubes that cross "
            "a face are then skipped or padded at extraction)")
