"""Many inputs per command (issue 14 item 4), the core of napari_cryoguard.batch: inputs,
shards, same-stem outputs, merge checks. The commands that use it: tests/cli/test_batch_cli.py."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryoguard import batch
from napari_cryoguard.data import save_dataset
from napari_cryoguard.errors import CryoGuardError

# --------------------------------------------------------------------------- inputs, shards


def test_expand_inputs_globs_sorted_duplicates_once(tmp_path):
    for name in ("b.mrc", "a.mrc", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    got = batch.expand_inputs([str(tmp_path / "*.mrc"), tmp_path / "a.mrc", tmp_path / "z.mrc"])
    assert [p.name for p in got] == ["a.mrc", "b.mrc", "z.mrc"]  # z.mrc: left to the reader
    with pytest.raises(CryoGuardError, match="matches no file"):
        batch.expand_inputs([str(tmp_path / "*.em")])


def test_relion5_tomograms_star_lists_the_reconstructed_tomograms(tmp_path):
    # A RELION 5 reconstruction job's tomograms.star (columns as RELION 5 writes them;
    # written here because its paths must point at this test's files): paths are
    # relative to the project folder two levels above the STAR file.
    project = tmp_path / "project"
    job = project / "Tomograms" / "job006"
    (job / "tomograms").mkdir(parents=True)
    for name in ("TS_01", "TS_02"):
        (job / "tomograms" / f"rec_{name}.mrc").write_bytes(b"x")
    star = job / "tomograms.star"
    star.write_text(
        "\n# version 50001\n\ndata_global\n\nloop_\n_rlnTomoName #1\n_rlnVoltage #2\n"
        "_rlnSphericalAberration #3\n_rlnAmplitudeContrast #4\n_rlnMicrographOriginalPixelSize #5\n"
        "_rlnTomoHand #6\n_rlnOpticsGroupName #7\n_rlnTomoTiltSeriesPixelSize #8\n"
        "_rlnTomoTiltSeriesStarFile #9\n_rlnTomoTomogramBinning #10\n_rlnTomoSizeX #11\n"
        "_rlnTomoSizeY #12\n_rlnTomoSizeZ #13\n_rlnTomoReconstructedTomogram #14\n"
        "TS_01 300.000000 2.700000 0.100000 1.350000 -1.000000 optics1 1.350000 "
        "AlignTiltSeries/job005/tilt_series/TS_01.star 7.407407 4000 4000 2000 "
        "Tomograms/job006/tomograms/rec_TS_01.mrc\n"
        "TS_02 300.000000 2.700000 0.100000 1.350000 -1.000000 optics1 1.350000 "
        "AlignTiltSeries/job005/tilt_series/TS_02.star 7.407407 4000 4000 2000 "
        "Tomograms/job006/tomograms/rec_TS_02.mrc\n")
    got = batch.expand_inputs([star])
    assert [p.name for p in got] == ["rec_TS_01.mrc", "rec_TS_02.mrc"]
    assert all(p.is_file() for p in got)
    (job / "tomograms" / "rec_TS_02.mrc").unlink()
    with pytest.raises(CryoGuardError, match="'TS_02' is listed as"):
        batch.expand_inputs([star])


def test_shards_partition_the_inputs_deterministically():
    items = [f"t{i}" for i in range(11)]
    parts = [batch.shard(items, (i, 3)) for i in range(3)]
    assert parts[0] == ["t0", "t3", "t6", "t9"] and parts[2] == ["t2", "t5", "t8"]
    assert sorted(sum(parts, [])) == sorted(items)
    assert batch.parse_shard("2/3") == (2, 3) and batch.parse_shard(None) is None
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(CryoGuardError, match="--shard takes i/N"):
            batch.parse_shard(bad)


def test_same_stem_twice_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    items = [tmp_path / "a" / "t.npz", tmp_path / "b" / "t.npz"]
    with pytest.raises(CryoGuardError, match="would both write"):
        batch.run_many(items, tmp_path / "out", ".csv", lambda i, o: {})


def test_merge_refuses_datasets_made_differently(tmp_path):
    save_dataset(tmp_path / "a.npz", volumes=np.zeros((2, 4, 4, 4), np.float32), voxel_size=10)
    save_dataset(tmp_path / "b.npz", volumes=np.zeros((2, 4, 4, 4), np.float32), voxel_size=5)
    with pytest.raises(CryoGuardError, match="voxel size 5.0 differ"):
        batch.merge_outputs([tmp_path], tmp_path / "m.npz")
