"""The `cryoguard` console script, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CRYOGUARD = str(Path(sys.executable).with_name("cryoguard"))


def run(*args, ok=True):
    res = subprocess.run([CRYOGUARD, *map(str, args)], capture_output=True, text=True, timeout=600)
    if ok:
        assert res.returncode == 0, res.stderr
    return res


def summary(res) -> dict:
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1, res.stdout  # exactly one machine-readable line
    return json.loads(lines[0])


@pytest.mark.parametrize("command", ["simulate", "simulate-dataset", "pick", "extract", "demo", "templates"])
def test_help_explains_every_option(command):
    res = run(command, "--help")
    assert "--json" in res.stdout
    assert "usage: cryoguard" in res.stdout


def test_every_option_has_help_text():
    from napari_cryoguard.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help"


def test_simulate_pick_extract_pipeline(tmp_path):
    tomo = tmp_path / "t1.mrc"
    s = summary(run("simulate", "--out", tomo, "--shape", 48, 128, 128, "--particles", 8,
                    "--seed", 5, "--json"))
    assert s["ok"] and s["n_particles"] == 8 and Path(s["tomogram"]).exists()
    truth = Path(s["truth"])
    assert truth.exists() and truth.suffix == ".star"

    tomo2 = tmp_path / "t2.mrc"
    run("simulate", "--out", tomo2, "--shape", 48, 128, 128, "--particles", 6, "--seed", 6, "--quiet")
    picks = tmp_path / "picks.star"
    p = summary(run("pick", tomo, tomo2, "--out", picks, "--json"))
    assert p["per_tomogram"].keys() == {"t1", "t2"}
    assert p["n_picks"] == sum(p["per_tomogram"].values()) > 0
    assert picks.exists()

    from napari_cryoguard.io import read_picks
    from napari_cryoguard.picking import match_picks

    got = read_picks(picks)
    true = read_picks(truth)
    sel = got.tomo_names == "t1"
    precision, recall = match_picks(got.coords[sel], true.coords, 4.0)
    assert precision >= 0.85 and recall >= 0.85

    ds_path = tmp_path / "ds.npz"
    e = summary(run("extract", tomo, "--picks", picks, "--out", ds_path, "--size", 24, "--json"))
    assert e["n"] + e["n_skipped"] == p["per_tomogram"]["t1"]
    from napari_cryoguard.data import load_dataset

    ds = load_dataset(ds_path)
    assert ds.volumes.shape == (e["n"], 24, 24, 24)
    assert set(ds.tomo_names) == {"t1"}
    np.testing.assert_allclose(ds.volumes.mean(axis=(1, 2, 3)), 0, atol=1e-4)
    assert e["inverted"] is False and ds.meta["inverted"] is False

    # a tomogram with protein black: --protein black gives the same cubes as the original
    import mrcfile

    with mrcfile.open(tomo) as m:
        data, voxel = np.asarray(m.data), m.voxel_size
    black = tmp_path / "t1.black.mrc"
    with mrcfile.new(black) as m:
        m.set_data(-data)
        m.voxel_size = voxel
    told = run("pick", black, "--polarity", "auto", "--out", tmp_path / "auto.star")
    assert "auto chose protein black" in told.stderr + told.stdout
    assert "extract with --protein black" in told.stderr + told.stdout
    picks_black = tmp_path / "picks_black.star"
    from napari_cryoguard.io import write_picks

    t1 = got.subset(np.flatnonzero(sel))
    t1.tomo_names = np.array(["t1.black"] * len(t1))
    write_picks(picks_black, t1)
    ds_black = tmp_path / "ds_black.npz"
    b = summary(run("extract", black, "--picks", picks_black, "--out", ds_black, "--size", 24,
                    "--protein", "black", "--json"))
    assert b["inverted"] is True and any("inverted to protein white" in n for n in b["notes"])
    np.testing.assert_allclose(load_dataset(ds_black).volumes, ds.volumes, atol=1e-4)


def test_simulate_dataset(tmp_path):
    out = tmp_path / "sd.npz"
    s = summary(run("simulate-dataset", "--out", out, "--per-class", 3, "--cube", 20, "--json"))
    assert s["n"] == 3 * len(s["class_names"])
    assert s["per_class"] == [3] * len(s["class_names"])
    from napari_cryoguard.data import load_dataset

    ds = load_dataset(out)
    assert ds.volumes.shape[1:] == (20, 20, 20)
    assert ds.class_names == s["class_names"]


def test_bad_input_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(b"not an mrc file at all")
    res = run("pick", bad, "--out", tmp_path / "p.star", "--json", ok=False)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    s = json.loads(res.stdout.strip())
    assert s["ok"] is False and "bad.mrc" in s["error"]
    assert not (tmp_path / "p.star").exists()


@pytest.mark.slow
def test_reproduce_quick_all_parts(tmp_path):
    """`cryoguard reproduce --quick` (what CI runs): every part, a report with verdicts."""
    out = tmp_path / "repro"
    s = summary(run("reproduce", "--quick", "--out", out, "--threads", 1, "--json"))
    assert s["ok"]
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    for part in ("(a)", "(b)", "(c)", "(d)", "(e)"):
        assert part in md, part
    assert "paper" in md.lower() and "<img" in html
    import json as _json

    metrics = _json.loads((out / "metrics.json").read_text())
    assert metrics


@pytest.fixture
def files_of_each_kind(tmp_path, monkeypatch):
    """A tomogram, a 2D MRC, a STAR pick file and a dataset, in the working directory."""
    import mrcfile

    from napari_cryoguard.data import SubtomogramDataset, save_dataset
    from napari_cryoguard.io import Picks, write_picks, write_tomogram

    monkeypatch.chdir(tmp_path)
    write_tomogram("tomo.mrc", np.zeros((8, 8, 8), np.float32), 10.0)
    with mrcfile.new("flat.mrc") as m:
        m.set_data(np.zeros((10, 10), np.float32))
    write_picks("picks.star", Picks(coords=np.array([[4.0, 4.0, 4.0]]), voxel_size=10.0))
    save_dataset("data.npz", SubtomogramDataset(volumes=np.zeros((2, 16, 16, 16), np.float32),
                                                labels=np.array([0, 1]), class_names=["a", "b"]))
    return tmp_path


WANT_DATASET = "takes a dataset (.npz) from `cryoguard extract`"
WANT_TOMOGRAM = "takes a tomogram (.mrc .map .rec .st, OME-Zarr .zarr, .tif, .em)"


@pytest.mark.parametrize("argv, expected", [
    (["classify", "tomo.mrc", "--out", "p.csv"], f"tomo.mrc is a tomogram (MRC); classify {WANT_DATASET}"),
    (["classify", "picks.star", "--out", "p.csv"], f"picks.star is a pick file (STAR); classify {WANT_DATASET}"),
    (["attack", "flat.mrc", "--attack", "fgsm", "--out", "a.npz"],
     f"flat.mrc is a 2D image (MRC); attack {WANT_DATASET}"),
    (["evaluate", "default", "--data", "tomo.mrc", "--out", "e"],
     f"tomo.mrc is a tomogram (MRC); evaluate --data {WANT_DATASET}"),
    (["evaluate", "default", "--data=picks.star", "--out", "e"],
     f"picks.star is a pick file (STAR); evaluate --data {WANT_DATASET}"),
    (["train", "--data", "tomo.mrc", "--out", "t"], f"tomo.mrc is a tomogram (MRC); train --data {WANT_DATASET}"),
    (["pick", "data.npz", "--out", "p.star"], f"data.npz is a dataset (.npz); pick {WANT_TOMOGRAM}"),
    (["extract", "data.npz", "--picks", "picks.star", "--out", "d.npz"],
     f"data.npz is a dataset (.npz); extract {WANT_TOMOGRAM}"),
    (["extract", "tomo.mrc", "--picks", "data.npz", "--out", "d.npz"],
     "data.npz is a dataset (.npz); extract --picks takes a pick file (.star .csv .tsv .txt .json .tbl .mod .cbox .coords)"),
])
def test_a_file_of_the_wrong_kind_says_what_it_is(files_of_each_kind, capsys, argv, expected):
    from napari_cryoguard.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cryoguard {argv[0]}: error: {expected}"]  # one line, no traceback
    assert not list(files_of_each_kind.glob("e")) and not list(files_of_each_kind.glob("t"))


def test_load_dataset_says_what_the_file_is(files_of_each_kind):
    from napari_cryoguard import CryoGuardError
    from napari_cryoguard.data import load_dataset

    with pytest.raises(CryoGuardError, match=r"^tomo.mrc is a tomogram \(MRC\), not a dataset"):
        load_dataset("tomo.mrc")  # what the Train widget and the Python API see
    assert len(load_dataset("data.npz")) == 2


def test_help_shows_the_guard_options(capsys):
    from napari_cryoguard.cli import build_parser
    from napari_cryoguard.cli.picking import _picks_options

    parser = build_parser()
    for command, options in [
        ("extract", ["--tomograms", "--picks-voxel-size", "--keep-origins", "--units"]),
        ("classify", ["--no-resample"]),
        ("attack", ["--no-resample"]),
        ("pick", ["auto"]),
    ]:
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        text = capsys.readouterr().out
        for option in options:
            assert option in text, (command, option)
    args = parser.parse_args(["pick", "t.mrc", "--out", "p.star", "--polarity", "auto"])
    assert args.polarity == "auto"
    # options reach read_picks only when given
    args = parser.parse_args(["extract", "t.mrc", "--picks", "p.star", "--out", "d.npz"])
    assert _picks_options(args) == {}
    args = parser.parse_args(["extract", "t.mrc", "--picks", "p.star", "--out", "d.npz",
                              "--tomograms", "tomograms.star", "--picks-voxel-size", "7.5",
                              "--keep-origins", "--units", "angstrom"])
    assert _picks_options(args) == {"tomograms": "tomograms.star", "voxel_size": 7.5,
                                    "apply_origins": False, "units": "angstrom"}


# --- output faults: one line, exit 2, checked before the work ------------------------


def test_output_that_is_a_folder_is_refused_before_work(tmp_path, capsys):
    from napari_cryoguard.cli import main

    out = tmp_path / "adir"
    out.mkdir()
    code = main(["simulate-dataset", "--out", str(out), "--per-class", "1", "--cube", "28"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "is a folder" in err[0] and str(out) in err[0]


def test_output_below_a_file_is_refused(tmp_path, capsys):
    from napari_cryoguard.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["simulate-dataset", "--out", str(blocker / "sub" / "d.npz"),
                 "--per-class", "1", "--cube", "28"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is a file" in err[0]


def test_disk_full_during_writing_is_one_error_and_leaves_no_temporary(tmp_path, capsys,
                                                                       monkeypatch):
    import errno

    from napari_cryoguard.cli import main

    out = tmp_path / "d.npz"
    out.write_bytes(b"older output")
    import napari_cryoguard.data as data_mod

    real_copy = data_mod.shutil.copyfileobj

    def full(src, dst, *a, **k):  # the streamed writer copies its spooled rows, then fails
        real_copy(src, dst, *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device", str(out))

    monkeypatch.setattr(data_mod.shutil, "copyfileobj", full)
    code = main(["simulate-dataset", "--out", str(out), "--per-class", "1", "--cube", "28"])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error:" in line]
    assert code == 2 and len(errors) == 1 and "No space left on device" in errors[0]
    assert all(line.startswith("simulate-dataset: ") for line in err if line not in errors)
    assert out.read_bytes() == b"older output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]


def test_progress_lines_when_stderr_is_not_a_terminal(capsys):
    from napari_cryoguard.cli._common import Progress as _Progress

    bar = _Progress("work", interval=0.0)
    for i in range(1, 5):
        bar(i, 4)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == "work: 4/4 (100%)"
    assert all(line.startswith("work: ") for line in lines) and len(lines) == 4


def test_extract_warp_fractions_take_the_geometry_of_the_tomogram_extracted(tmp_path):
    """A real WarpTools template-matching STAR (coordinates as fractions of the tomogram,
    tests/data/warp) extracts from TS_1.mrc with no --tomograms: the reader is refused
    alone, so the tomogram being extracted gives the size, and a note says so."""
    from napari_cryoguard.data import load_dataset
    from napari_cryoguard.io import write_tomogram

    star = Path(__file__).parents[1] / "data" / "warp" / "TS_1_10.00Apx_emd_15854_clean.star"
    shape = (39, 237, 174)  # ZYX, half the tutorial's 348 x 474 x 78 tomogram
    write_tomogram(tmp_path / "TS_1.mrc", np.zeros(shape, np.float32), 20.0)
    out = tmp_path / "sub.npz"
    res = run("extract", tmp_path / "TS_1.mrc", "--picks", star, "--out", out, "--size", 8,
              "--border", "skip", "--json")
    s = summary(res)
    assert s["ok"] and any("TS_1.mrc, the tomogram being extracted" in n for n in s["notes"])
    ds = load_dataset(out)
    # the first row: x 0.16666667, y 0.943038, z 0.1923077 (fractions) x (174, 237, 39)
    first = np.array([0.1923077 * 39, 0.943038 * 237, 0.16666667 * 174])
    d = np.abs(ds.coords - np.round(first)).sum(axis=1)
    assert len(ds) >= 6 and d.min() <= 1.5
    # with --tomograms naming another geometry the user's choice stands (and is refused here)
    bad = run("extract", tmp_path / "TS_1.mrc", "--picks", star, "--out", tmp_path / "b.npz",
              "--tomograms", tmp_path / "missing.star", "--json", ok=False)
    assert bad.returncode == 2


def test_extract_refuses_to_write_an_empty_dataset(tmp_path):
    """A pick file without rows, or picks all too close to the edge, is one clear error
    (exit 2), never an empty dataset with exit 0 (the second hostile-input probe)."""
    import mrcfile

    tomo = tmp_path / "tomo.mrc"
    with mrcfile.new(tomo) as m:
        m.set_data(np.random.default_rng(0).normal(size=(32, 40, 40)).astype(np.float32))
        m.voxel_size = 10.0
    empty = tmp_path / "empty.csv"
    empty.write_text("x,y,z\n")
    res = run("extract", tomo, "--picks", empty, "--out", tmp_path / "d.npz", ok=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("cryoguard extract: error: empty.csv holds no picks"), lines
    # what the reader assumed comes first, one line each, in the package's words
    assert all(ln.startswith("cryoguard extract: ") for ln in lines), lines
    assert any("warning: empty.csv does not say its voxel size" in ln for ln in lines), lines
    edge = tmp_path / "edge.csv"
    edge.write_text("x,y,z\n1,1,1\n38,2,30\n")
    res = run("extract", tomo, "--picks", edge, "--out", tmp_path / "d.npz", "--size", 16,
              ok=False)
    assert res.returncode == 2 and "too close to its edge" in res.stderr, res.stderr
    assert not (tmp_path / "d.npz").exists()
    # with padding the same picks are extracted
    ok = summary(run("extract", tomo, "--picks", edge, "--out", tmp_path / "d.npz", "--size", 16,
                     "--border", "pad", "--json"))
    assert ok["n"] == 2
