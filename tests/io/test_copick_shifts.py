"""copick ``transformation_``: its translation column is part of the particle centre.

copick's convention (github.com/copick/copick, ``docs/geometry.md`` section 2.3, commit
369fb631): the full position is ``location + T[:3, 3]`` (Angstrom); its RELION exporter
(``copick/util/relion.py``, ``picks_to_df_relion``) adds the translation before dividing
by the voxel size. The rotation ``T[:3, :3]`` is an orientation, never a position.
"""

from __future__ import annotations

import json

import numpy as np

from napari_cryoguard.io import read_picks


def _write(tmp_path, points):
    p = tmp_path / "u_1_ribosome.json"
    p.write_text(json.dumps({
        "pickable_object_name": "ribosome", "user_id": "u", "session_id": "1",
        "run_name": "TS_1", "voxel_spacing": 4.0, "unit": "angstrom", "points": points,
    }))
    return p


def test_translation_added_on_every_axis_rotation_kept_as_feature(tmp_path):
    rot_z90_shift = [[0, -1, 0, 12.0], [1, 0, 0, -8.0], [0, 0, 1, 4.0], [0, 0, 0, 1]]
    p = _write(tmp_path, [
        {"location": {"x": 100.0, "y": 200.0, "z": 300.0}, "transformation_": rot_z90_shift},
        {"location": {"x": 40.0, "y": 80.0, "z": 120.0}},  # default identity
    ])
    picks = read_picks(p)
    assert picks.voxel_size == 4.0 and picks.tomo_names.tolist() == ["TS_1", "TS_1"]
    # by hand: (100 + 12, 200 - 8, 300 + 4) / 4 = x 28, y 48, z 76; (40, 80, 120) / 4
    np.testing.assert_allclose(picks.coords, [[76.0, 48.0, 28.0], [30.0, 20.0, 10.0]])
    mats = picks.features["copick_transformation"].reshape(-1, 4, 4)
    np.testing.assert_allclose(mats[0], rot_z90_shift)  # kept exactly as in the file
    np.testing.assert_allclose(mats[1], np.eye(4))
    assert any("1 transformation(s) have a translation part" in n for n in picks.notes)
    # at another voxel size the same Angstrom position
    at8 = read_picks(p, voxel_size=8.0)
    np.testing.assert_allclose(at8.coords * 8.0, picks.coords * 4.0)
    # the switch reads location alone
    raw = read_picks(p, apply_shifts=False)
    np.testing.assert_allclose(raw.coords[0], [75.0, 50.0, 25.0])


def test_pure_rotation_moves_nothing(tmp_path):
    rot = [[0, 0, -1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]]
    p = _write(tmp_path, [{"location": {"x": 8.0, "y": 4.0, "z": 12.0}, "transformation_": rot}])
    picks = read_picks(p)
    np.testing.assert_allclose(picks.coords, [[3.0, 1.0, 2.0]])
    assert not any("translation part" in n for n in picks.notes)
    assert any("orientation" in n for n in picks.notes)
