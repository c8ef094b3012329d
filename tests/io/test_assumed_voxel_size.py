"""A voxel pick file that does not say its voxel size indexes the tomogram it is put on.

Readers assume 1.0 Angstrom with a note (``assumed 1.0 A``); :class:`Picks` marks that as
``voxel_size_assumed`` and :meth:`Picks.at_voxel_size` / :meth:`Picks.on_tomogram` then
keep the indices instead of dividing them by the tomogram's voxel size.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from napari_cryoguard.io import Picks, Tomogram, read_picks

DATA = Path(__file__).resolve().parents[1] / "data"


def _tomo(vs: float, name: str = "1") -> Tomogram:
    return Tomogram.from_array(np.zeros((4, 4, 4)), voxel_size=vs, name=name)


def test_dynamo_table_without_apix_keeps_its_indices_on_a_10A_tomogram():
    picks = read_picks(DATA / "dynamo" / "t_double.tbl")
    assert picks.voxel_size == 1.0 and picks.voxel_size_assumed
    on = picks.on_tomogram(_tomo(10.0))
    assert len(on) == 150 and on.voxel_size == 10.0 and not on.voxel_size_assumed
    np.testing.assert_allclose(on.coords, picks.coords[picks.tomo_names == "1"])
    assert any("taken as voxel indices of this tomogram (10 Angstrom)" in n for n in on.notes)
    # a voxel size given: 5 A picks on a 10 A tomogram are halved, as before
    given = read_picks(DATA / "dynamo" / "t_double.tbl", voxel_size=5.0)
    assert not given.voxel_size_assumed
    np.testing.assert_allclose(given.on_tomogram(_tomo(10.0)).coords,
                               picks.coords[picks.tomo_names == "1"] / 2)


def test_every_voxel_reader_that_assumes_marks_it():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for rel in ("cryolo/tomotwin_test_coords.coords", "imod/points.mod",
                    "csv/imodmodel_points.txt", "stopgap/class6_er_mr1_1_sg_cut.star"):
            assert read_picks(DATA / rel).voxel_size_assumed, rel
        for rel in ("relion/warp_tomogram_particle_files.star", "imod/multiple_objects_example.mod",
                    "cryolo/boxmanager_3d_particle.cbox"):
            p = read_picks(DATA / rel)
            assert p.voxel_size_assumed == (p.voxel_size == 1.0 and any(
                "assumed 1.0 A" in n for n in p.notes)), rel
    # the flag survives subsetting; a plain 1 A Picks is not assumed
    picks = read_picks(DATA / "imod" / "points.mod")
    assert picks.subset([0, 1]).voxel_size_assumed
    assert not Picks(coords=np.zeros((1, 3)), voxel_size=1.0).voxel_size_assumed
