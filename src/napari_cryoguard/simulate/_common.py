"""Helpers shared by the tomogram and the subtomogram simulators: the class list, the
imaging parameters (:class:`Imaging`), the seeded random streams, placing a particle and
progress reporting."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from napari_cryoguard.checks import check_choice, check_float, check_positive_int
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.simulate.physics import (
    MTF_MODELS,
    check_snr,
    check_tilt_range,
    ctf_3d,
    missing_wedge_mask,
    rotate_volume,
)
from napari_cryoguard.simulate.templates import _resolve


def resolve_classes(classes: Sequence[str] | str) -> list[str]:
    """Check the class list (template names or MRC paths); unknown names raise."""
    if isinstance(classes, str):
        classes = [classes]
    classes = [str(c) for c in classes]
    if not classes:
        raise CryoGuardError("need at least one particle class")
    if len(set(classes)) != len(classes):
        raise CryoGuardError(f"particle classes must be distinct, got {classes}")
    for c in classes:
        _resolve(c)  # raises CryoGuardError listing the bundled names
    return classes


def class_display_names(classes: Sequence[str]) -> list[str]:
    """Template name, or the file stem for a template given by path."""
    return [_resolve(c)[1] for c in classes]


@dataclass
class Imaging:
    """The image-formation parameters both simulators share, checked on construction.

    CTF (:func:`~napari_cryoguard.simulate.physics.ctf_3d`, CB3D section 2.2 Eq. 2),
    missing wedge and noise level; :meth:`record` is what the simulators store in their
    ``params``, :meth:`filters` the one Fourier filter they apply.

    Attributes
    ----------
    voxel_size : float
        Å per voxel (> 0).
    snr : float or None
        Target SNR (variance ratio, > 0); ``None``: noise-free.
    tilt_range : float
        Half tilt range in degrees, in (0, 90].
    defocus_um, cs_mm, voltage_kv, amplitude_contrast, bfactor : float
        CTF parameters; negative defocus = underfocus.
    tilt_axis : {"y", "x"}
        Tilt axis; the beam is along Z.
    mtf : {"none", "sinc"}
        Detector MTF applied with the CTF.
    """

    voxel_size: float
    snr: float | None
    tilt_range: float
    defocus_um: float
    cs_mm: float
    voltage_kv: float
    amplitude_contrast: float
    bfactor: float
    tilt_axis: str
    mtf: str = "none"

    def __post_init__(self) -> None:
        self.voxel_size = check_float("voxel size", self.voxel_size, minimum=0.0, strict=True)
        self.snr = check_snr(self.snr)
        self.tilt_range = check_tilt_range(self.tilt_range)
        self.defocus_um = check_float("defocus (µm)", self.defocus_um)
        self.cs_mm = check_float("spherical aberration (mm)", self.cs_mm, minimum=0.0)
        self.voltage_kv = check_float("voltage (kV)", self.voltage_kv, minimum=0.0, strict=True)
        self.amplitude_contrast = check_float("amplitude contrast", self.amplitude_contrast,
                                              minimum=0.0)
        self.bfactor = check_float("B-factor", self.bfactor, minimum=0.0)
        self.tilt_axis = str(self.tilt_axis).lower()
        check_choice("tilt axis", self.tilt_axis, ("y", "x"))
        check_choice("MTF model", self.mtf, MTF_MODELS)

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> Imaging:
        """The imaging fields picked by name out of a simulator's arguments."""
        return cls(**{f.name: arguments[f.name] for f in fields(cls) if f.name in arguments})

    def record(self) -> dict[str, Any]:
        """The parameters as stored in ``params`` (``mtf`` only when not ``"none"``, so
        records made before the switch existed stay equal)."""
        out = asdict(self)
        if self.mtf == "none":
            del out["mtf"]
        return out

    def filters(self, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(CTF times missing wedge, the wedge alone) for a ``shape`` volume (rfft layout);
        the signal gets the first, the noise the second."""
        filt = ctf_3d(shape, self.voxel_size, self.defocus_um, self.cs_mm, self.voltage_kv,
                      self.amplitude_contrast, self.bfactor, mtf=self.mtf,
                      tilt_axis=self.tilt_axis)
        wedge = missing_wedge_mask(shape, self.tilt_range, self.tilt_axis)
        filt *= wedge
        return filt, wedge


def seed_streams(seed: int | None) -> tuple[np.random.Generator, np.random.Generator, int]:
    """Two independent generators (geometry, noise) from one seed.

    Noise has its own stream, so the same seed with and without noise gives the same
    particles, and the difference of the two volumes is exactly the noise.
    """
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**32))
    seed = check_positive_int("seed", seed, 0)
    geo, noise = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(geo), np.random.default_rng(noise), seed


def splat(volume: np.ndarray, template: np.ndarray, rotation: np.ndarray, position) -> None:
    """Add ``template`` rotated by ``rotation`` into ``volume`` (in place) so that the
    template's centre voxel (its centre of mass) lands at ``position`` (ZYX, sub-voxel).

    Only the template's own box is rotated and added into a slice of the volume
    (clipped at the borders), never a full-volume operation.
    """
    position = np.asarray(position, dtype=np.float64)
    anchor = np.rint(position).astype(int)
    half = (template.shape[0] - 1) // 2
    box = rotate_volume(template, rotation, out_center=half + (position - anchor))
    lo = anchor - half
    hi = lo + np.asarray(box.shape)
    src_lo = np.maximum(0, -lo)
    src_hi = np.asarray(box.shape) - np.maximum(0, hi - np.asarray(volume.shape[-3:]))
    if np.any(src_hi <= src_lo):
        return
    dst = tuple(slice(a, b) for a, b in zip(lo + src_lo, lo + src_hi, strict=True))
    src = tuple(slice(a, b) for a, b in zip(src_lo, src_hi, strict=True))
    volume[dst] += box[src]


class Progress:
    """Drive an optional progress reporter.

    ``progress`` may be a tqdm-like object (anything with ``update(n)``; its ``total``
    is set when it has that attribute) or a callable ``progress(done, total, stage)``.
    """

    def __init__(self, progress, total: int) -> None:
        self._p = progress
        self.total = int(total)
        self.done = 0
        if progress is not None and hasattr(progress, "update") and hasattr(progress, "total"):
            try:
                progress.total = self.total
            except (AttributeError, TypeError):
                pass

    def step(self, stage: str, n: int = 1) -> None:
        self.done += n
        if self._p is None:
            return
        if hasattr(self._p, "update"):
            self._p.update(n)
            if hasattr(self._p, "set_description"):
                self._p.set_description(stage, refresh=False)
        elif callable(self._p):
            self._p(self.done, self.total, stage)
