"""IMOD models: points outside the image the model was saved on are named in a note.

``tests/data/imod/points.mod`` (imodmodel's test data) has header xmax ymax zmax = 18, 14,
6 and points x y z = (1, 2, 3), (0, 1, 1), (8, 4, 5): all inside. A copy whose header
says xmax = 5 (big-endian int32 at byte 136, after ``IMODV1.2`` and the 128-byte name)
has one point, x = 8, outside.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from napari_cryoguard.io import read_picks

DATA = Path(__file__).resolve().parents[1] / "data" / "imod"


def test_points_outside_the_models_image_are_named(tmp_path):
    inside = read_picks(DATA / "points.mod")
    assert not any("outside" in n for n in inside.notes)
    raw = bytearray((DATA / "points.mod").read_bytes())
    assert struct.unpack(">3i", raw[136:148]) == (18, 14, 6)
    raw[136:140] = struct.pack(">i", 5)
    small = tmp_path / "small.mod"
    small.write_bytes(bytes(raw))
    picks = read_picks(small)
    np.testing.assert_allclose(picks.coords, inside.coords)  # read as stored
    assert any("1 of 3 points lie outside the image the model was saved on (5 x 14 x 6"
               in n for n in picks.notes), picks.notes
