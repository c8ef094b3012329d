"""The ``Picks`` container shared by picking, IO, the CLI and the widgets."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

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
    """

    coords: np.ndarray
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    tomo_names: np.ndarray | None = None
    features: dict[str, np.ndarray] = field(default_factory=dict)
    voxel_size: float = 1.0

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
        )

    def class_of(self) -> list[str] | None:
        """Class name per particle (``None`` when labels or class names are missing)."""
        if self.labels is None or self.class_names is None:
            return None
        return [self.class_names[i] if 0 <= i < len(self.class_names) else "" for i in self.labels]
