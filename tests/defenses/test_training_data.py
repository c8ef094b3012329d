"""Training data: the class-stratified, seeded train/validation split."""

from __future__ import annotations

import numpy as np

from napari_cryoguard.defenses.training_data import split_indices


def test_split_is_stratified_disjoint_and_seeded():
    labels = np.array([0] * 10 + [1] * 5 + [-1] * 3)
    tr, va = split_indices(labels, 0.2, seed=4)
    assert set(tr).isdisjoint(va) and len(tr) + len(va) == len(labels)
    assert sorted(np.bincount(labels[va])) == [1, 2]
    assert set(np.flatnonzero(labels < 0)) <= set(tr)
    tr2, va2 = split_indices(labels, 0.2, seed=4)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)
    _, va3 = split_indices(labels, 0.2, seed=5)
    assert not np.array_equal(va, va3)
    assert len(split_indices(labels, 0.0, seed=4)[1]) == 0
