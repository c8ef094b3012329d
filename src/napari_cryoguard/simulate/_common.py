"""Helpers shared by the tomogram and the subtomogram simulators."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.simulate.physics import rotate_volume
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


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError) as exc:
        raise CryoGuardError(f"{name} must be an integer, got {value!r}") from exc
    if v != value or v < minimum:
        raise CryoGuardError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return v


def check_float(name: str, value, *, minimum: float | None = None, strict: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise CryoGuardError(f"{name} must be a number, got {value!r}") from exc
    if not math.isfinite(v):
        raise CryoGuardError(f"{name} must be finite, got {value!r}")
    if minimum is not None and (v <= minimum if strict else v < minimum):
        raise CryoGuardError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return v


def seed_streams(seed: int | None) -> tuple[np.random.Generator, np.random.Generator, int]:
    """Two independent generators (geometry, noise) from one seed.

    Noise has its own stream, so the same seed with and without noise gives the same
    particles, and the difference of the two volumes is exactly the noise.
    """
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**32))
    try:
        seed = int(seed)
    except (TypeError, ValueError) as exc:
        raise CryoGuardError(f"seed must be an integer, got {seed!r}") from exc
    if seed < 0:
        raise CryoGuardError(f"seed must be >= 0, got {seed}")
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
