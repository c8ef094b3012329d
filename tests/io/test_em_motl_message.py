"""An EM file of 20 rows per column is a TOM / AV3 / cryoCAT motive list (one particle
per column, e.g. cryoCAT's ``tests/test_data/au_1.em``, 20 x 64 float32): opened as a
tomogram, the refusal says what it is."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from napari_cryoguard import CryoGuardError
from napari_cryoguard.io import read_tomogram


def _em(path, nx, ny, nz):
    header = bytearray(512)
    header[0], header[3] = 6, 5  # PC byte order, float32 (TOM EM format)
    header[4:16] = struct.pack("<3i", nx, ny, nz)
    path.write_bytes(bytes(header) + np.zeros(nx * ny * nz, "<f4").tobytes())
    return path


def test_motive_list_refused_with_its_name(tmp_path):
    with pytest.raises(CryoGuardError, match="2D image .*TOM / AV3 / cryoCAT motive list"):
        read_tomogram(_em(tmp_path / "motl.em", 20, 64, 1))
    with pytest.raises(CryoGuardError, match="2D image") as info:
        read_tomogram(_em(tmp_path / "image.em", 64, 64, 1))
    assert "motive list" not in str(info.value)
