"""Many tomograms per command (issue 14 item 4), through the command line: --shard,
--out-dir, resume, merge. The core of napari_cryoguard.batch: tests/test_batch.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cryoguard.cli import main
from napari_cryoguard.data import load_dataset, save_dataset

CUBE = 16


# --------------------------------------------------------------------------- shards


def test_shard_without_out_dir_and_many_inputs_with_out_are_clear(tmp_path, capsys):
    ds = [save_dataset(tmp_path / f"d{i}.npz", volumes=np.zeros((2, 4, 4, 4), np.float32))
          for i in range(2)]
    assert main(["classify", str(ds[0]), "--out", str(tmp_path / "p.csv"), "--shard",
                 "0/2"]) == 2
    assert "--shard splits the inputs of an --out-dir run" in capsys.readouterr().err
    assert main(["classify", *map(str, ds), "--out", str(tmp_path / "p.csv")]) == 2
    assert "2 datasets given but one --out file" in capsys.readouterr().err


# --------------------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Three small simulated tomograms, their true picks one file per tomogram, and a
    tiny model for 16^3 cubes."""
    from napari_cryoguard.io import write_picks, write_tomogram
    from napari_cryoguard.models import build_model, save_checkpoint, tiny_params
    from napari_cryoguard.simulate import simulate_tomogram

    d = tmp_path_factory.mktemp("project")
    (d / "tomos").mkdir()
    (d / "truth").mkdir()
    names = None
    for i in range(3):
        sim = simulate_tomogram(shape=(32, 80, 80), n_particles=6, seed=20 + i)
        write_tomogram(d / "tomos" / f"tomo{i}.mrc", sim.volume, sim.voxel_size)
        picks = sim.to_picks()
        picks.tomo_names = np.array([f"tomo{i}"] * len(picks))
        write_picks(d / "truth" / f"tomo{i}.star", picks)
        names = list(sim.class_names)
    torch.manual_seed(0)
    model = build_model("cb3d", len(names), cube=CUBE, **tiny_params("cb3d"))
    ckpt = save_checkpoint(d / "m.safetensors", model, {"class_names": names,
                                                          "voxel_size": sim.voxel_size})
    return d, ckpt


def _run(*argv) -> dict:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main([*map(str, argv), "--json", "--quiet"])
    out = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert code == 0, out
    return out


def _pipeline(d: Path, ckpt, where: Path, shard: str | None):
    extra = ["--shard", shard] if shard else []
    tomos = str(d / "tomos" / "*.mrc")
    _run("pick", tomos, "--out-dir", where / "picks", "--threshold", "2.5", *extra)
    _run("extract", tomos, "--picks", d / "truth", "--out-dir", where / "ds",
         "--size", CUBE, "--border", "pad", *extra)


def test_two_shards_merged_equal_the_unsharded_run(project, tmp_path):
    d, ckpt = project
    one, two = tmp_path / "one", tmp_path / "two"
    _pipeline(d, ckpt, one, None)
    s0 = _run("extract", d / "tomos" / "*.mrc", "--picks", d / "truth", "--out-dir",
              tmp_path / "only0", "--size", CUBE, "--border", "pad", "--shard", "0/2")
    assert [Path(p).name for p in s0["written"]] == ["tomo0.npz", "tomo2.npz"]
    for shard in ("0/2", "1/2"):  # two array tasks: pick + extract
        _pipeline(d, ckpt, two, shard)
    ds = [str(p) for p in sorted((two / "ds").glob("*.npz"))]
    assert len(ds) == 3
    for shard in ("0/2", "1/2"):  # then two array tasks: classify + attack
        _run("classify", *ds, "--model", ckpt, "--device", "cpu", "--batch-size", 4,
             "--out-dir", two / "pred", "--shard", shard)
        _run("attack", *ds, "--model", ckpt, "--attack", "fgsm", "--eps", 0.05,
             "--device", "cpu", "--batch-size", 4, "--out-dir", two / "att", "--shard", shard)
    ds_one = str(one / "ds" / "*.npz")
    _run("classify", ds_one, "--model", ckpt, "--device", "cpu", "--batch-size", 4,
         "--out-dir", one / "pred")
    _run("attack", ds_one, "--model", ckpt, "--attack", "fgsm", "--eps", 0.05, "--device",
         "cpu", "--batch-size", 4, "--out-dir", one / "att")
    for sub in ("picks", "ds", "pred", "att"):
        assert sorted(p.name for p in (one / sub).iterdir()) == \
            sorted(p.name for p in (two / sub).iterdir())
    # merged: picks (STAR), datasets, predictions (CSV), attack results
    for sub, suffix in (("picks", ".star"), ("pred", ".csv")):
        a = _run("merge", one / sub, "--out", tmp_path / f"one_{sub}{suffix}")
        b = _run("merge", two / sub, "--out", tmp_path / f"two_{sub}{suffix}")
        assert a["n"] == b["n"] > 0
        assert (tmp_path / f"one_{sub}{suffix}").read_text() == \
            (tmp_path / f"two_{sub}{suffix}").read_text()
    pred = (tmp_path / "one_pred.csv").read_text().splitlines()
    assert pred[0].endswith(",source") and {r.rsplit(",", 1)[1] for r in pred[1:]} == \
        {"tomo0", "tomo1", "tomo2"}
    _run("merge", one / "ds", "--out", tmp_path / "one_ds.npz")
    _run("merge", two / "ds", "--out", tmp_path / "two_ds.npz")
    a, b = load_dataset(tmp_path / "one_ds.npz"), load_dataset(tmp_path / "two_ds.npz")
    np.testing.assert_array_equal(a.volumes, b.volumes)
    np.testing.assert_array_equal(a.coords, b.coords)
    assert list(a.tomo_names) == list(b.tomo_names)
    parts = [load_dataset(p) for p in sorted((one / "ds").glob("*.npz"))]
    np.testing.assert_array_equal(a.volumes, np.concatenate([p.volumes for p in parts]))
    _run("merge", one / "att", "--out", tmp_path / "one_att.npz")
    _run("merge", str(two / "att" / "*.npz"), "--out", tmp_path / "two_att.npz")
    with np.load(tmp_path / "one_att.npz") as za, np.load(tmp_path / "two_att.npz") as zb:
        assert za.files == zb.files and "source" in za.files
        for k in za.files:
            if k != "metadata":
                np.testing.assert_array_equal(za[k], zb[k], err_msg=k)
        assert len(za["x_adv"]) == len(a)


def test_merged_per_tomogram_picks_equal_one_pick_file(project, tmp_path):
    from napari_cryoguard.io import read_picks

    d, _ = project
    _run("pick", d / "tomos" / "*.mrc", "--out", tmp_path / "all.star", "--threshold", "2.5")
    _run("pick", d / "tomos" / "*.mrc", "--out-dir", tmp_path / "picks", "--threshold", "2.5")
    _run("merge", tmp_path / "picks", "--out", tmp_path / "merged.star")
    a, b = read_picks(tmp_path / "all.star"), read_picks(tmp_path / "merged.star")
    np.testing.assert_allclose(a.coords, b.coords)
    assert list(a.tomo_names) == list(b.tomo_names) and len(a) > 0


# --------------------------------------------------------------------------- resume


def test_killed_multi_dataset_run_resumes_without_redoing_finished_ones(project, tmp_path):
    _, ckpt = project
    rng = np.random.default_rng(0)
    names = [f"d{i}" for i in range(5)]
    for name in names:
        save_dataset(tmp_path / f"{name}.npz", labels=np.arange(1500) % 2,
                     volumes=rng.standard_normal((1500, CUBE, CUBE, CUBE)).astype(np.float32))
    out = tmp_path / "pred"
    cmd = [str(Path(sys.executable).with_name("cryoguard")), "classify",
           str(tmp_path / "d*.npz"), "--model", str(ckpt), "--device", "cpu",
           "--out-dir", str(out), "--quiet", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and any(p.suffix == ".csv" for p in out.iterdir()):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    finished = sorted(p for p in out.iterdir() if p.suffix == ".csv")
    assert 1 <= len(finished) < len(names), "the run was not killed part way"
    for p in finished:  # every output there is complete (written atomically)
        assert len(p.read_text().splitlines()) == 1501
    stamps = {p.name: p.stat().st_mtime_ns for p in finished}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert sorted(Path(p).name for p in summary["skipped"]) == sorted(stamps)
    assert len(summary["written"]) == len(names) - len(stamps)
    assert {p.name: p.stat().st_mtime_ns for p in finished} == stamps  # not redone
    assert sorted(p.name for p in out.iterdir()) == [f"{n}.csv" for n in names]  # no temporaries
