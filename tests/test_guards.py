"""Guards against silent mix-ups: picks of other tomograms or at other voxel sizes, models
used outside their training domain, corrupt checkpoint metadata (issues 10 and 11)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_cryoguard import CryoGuardError
from napari_cryoguard.classify import domain_warnings, load_model, resample_volumes
from napari_cryoguard.cli import main
from napari_cryoguard.data import SubtomogramDataset, load_dataset, save_dataset
from napari_cryoguard.io import Picks, write_picks, write_tomogram
from napari_cryoguard.models import build_model, save_checkpoint, tiny_params


def _coded_volume(shape) -> np.ndarray:
    """A tomogram whose value at (z, y, x) is z * 10000 + y * 100 + x (exact in float32)."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return (z * 10000 + y * 100 + x).astype(np.float32)


def _centre_codes(volumes: np.ndarray) -> np.ndarray:
    c = volumes.shape[1] // 2
    return volumes[:, c, c, c]


def _run(capsys, *argv):
    rc = main([str(a) for a in argv] + ["--json"])
    out, err = capsys.readouterr()
    return rc, json.loads(out.strip().splitlines()[-1]), err


@pytest.fixture()
def three_tomo_star(tmp_path):
    # two picks per tomogram; tomoB's rows are 2 and 3
    coords = np.array([[10, 10, 10], [12, 14, 16], [20, 21, 22], [15, 18, 25],
                       [30, 30, 30], [11, 11, 11]], dtype=float)
    names = np.array(["tomoA", "tomoA", "tomoB", "tomoB", "tomoC", "tomoC"])
    path = tmp_path / "three.star"
    write_picks(path, Picks(coords=coords, tomo_names=names, voxel_size=10.0))
    return path, coords


def test_multi_tomogram_star_extracts_only_the_rows_of_the_tomogram(tmp_path, capsys,
                                                                     three_tomo_star):
    star, coords = three_tomo_star
    tomo = write_tomogram(tmp_path / "tomoB.mrc", _coded_volume((40, 40, 40)), 10.0)
    rc, res, err = _run(capsys, "extract", tomo, "--picks", star, "--out", tmp_path / "b.npz",
                        "--size", 8, "--no-normalize")
    assert rc == 0 and res["ok"]
    assert res["n_picks_in_file"] == 6 and res["n_picks_used"] == 2 and res["n"] == 2
    assert any("2 of 6 picks" in n and "'tomoB'" in n for n in res["notes"])
    assert "2 of 6 picks" in err
    ds = load_dataset(res["dataset"])
    np.testing.assert_array_equal(ds.coords, coords[2:4])
    # the cube centres hold the codes of (20, 21, 22) and (15, 18, 25)
    np.testing.assert_array_equal(_centre_codes(ds.volumes), [202122, 151825])


def test_no_matching_tomogram_is_one_error_listing_the_names(tmp_path, capsys, three_tomo_star):
    star, _ = three_tomo_star
    tomo = write_tomogram(tmp_path / "tomoZ.mrc", np.zeros((40, 40, 40), np.float32), 10.0)
    rc, res, err = _run(capsys, "extract", tomo, "--picks", star, "--out", tmp_path / "z.npz")
    assert rc == 2 and not res["ok"]
    assert len(err.strip().splitlines()) == 1
    for name in ("'tomoA'", "'tomoB'", "'tomoC'", "'tomoZ'"):
        assert name in res["error"]
    assert not (tmp_path / "z.npz").exists()


def test_10A_picks_on_a_20A_tomogram_extract_the_same_particles(tmp_path, capsys):
    # particles at these 20 A voxels; the picks were made on the 10 A version (x 2)
    at20 = np.array([[10, 12, 14], [20, 15, 9], [25, 25, 25]], dtype=float)
    star = tmp_path / "p10.star"
    write_picks(star, Picks(coords=at20 * 2, tomo_names=np.array(["t20"] * 3), voxel_size=10.0))
    tomo = write_tomogram(tmp_path / "t20.mrc", _coded_volume((40, 40, 40)), 20.0)
    rc, res, _ = _run(capsys, "extract", tomo, "--picks", star, "--out", tmp_path / "e.npz",
                      "--size", 8, "--no-normalize")
    assert rc == 0 and res["n"] == 3 and res["n_skipped"] == 0
    assert any("from 10 to 20 Angstrom" in n for n in res["notes"])
    ds = load_dataset(res["dataset"])
    assert ds.voxel_size == 20.0
    np.testing.assert_allclose(ds.coords, at20)
    np.testing.assert_array_equal(_centre_codes(ds.volumes), [101214, 201509, 252525])


def test_picks_voxel_size_option_overrides_the_file(tmp_path, capsys):
    star = tmp_path / "p.star"
    write_picks(star, Picks(coords=np.array([[20.0, 20, 20]]), voxel_size=1.0))
    tomo = write_tomogram(tmp_path / "t.mrc", _coded_volume((40, 40, 40)), 20.0)
    rc, res, _ = _run(capsys, "extract", tomo, "--picks", star, "--picks-voxel-size", 10,
                      "--out", tmp_path / "e.npz", "--size", 8, "--no-normalize")
    assert rc == 0
    ds = load_dataset(res["dataset"])
    np.testing.assert_allclose(ds.coords, [[10, 10, 10]])


# ------------------------------------------------------------------ model domain


def test_resample_volumes_by_hand():
    v = np.zeros((1, 8, 8, 8), np.float32)
    v[0, 4, 4, 4], v[0, 4, 4, 5] = 1.0, 3.0
    # 10 A -> 5 A: output voxel j is input voxel 4 + (j - 4) / 2
    r = resample_volumes(v, 10.0, 5.0, 8)
    np.testing.assert_allclose(r[0, 4, 4, :], [0, 0, 0, 0.5, 1, 2, 3, 1.5])
    np.testing.assert_allclose(r[0, :, 4, 4], [0, 0, 0, 0.5, 1, 0.5, 0, 0])
    np.testing.assert_array_equal(resample_volumes(v, 10.0, 10.0, 8), v)
    # 5 A -> 10 A into a 4^3 cube: output j is input 4 + 2 (j - 2) = 0, 2, 4, 6
    np.testing.assert_allclose(resample_volumes(v, 5.0, 10.0, 4)[0, 2, 2], [0, 0, 1, 0])


@pytest.fixture()
def dataset_40A(tmp_path):
    vols = np.random.default_rng(0).normal(size=(4, 28, 28, 28)).astype(np.float32)
    return save_dataset(tmp_path / "d40.npz", SubtomogramDataset(
        volumes=vols, labels=None, class_names=None, voxel_size=40.0, normalized=True))


def test_bundled_10A_model_on_40A_data_resamples_and_warns(tmp_path, capsys, dataset_40A):
    rc, res, err = _run(capsys, "classify", dataset_40A, "--model", "default", "--device", "cpu",
                        "--out", tmp_path / "p.csv")
    assert rc == 0 and res["resampled"] is True
    assert any(n.startswith("resampled 40 A -> 10 A") for n in res["notes"])
    assert any("40 A" in w and "trained at 10 A" in w for w in res["warnings"])
    assert "resampled 40 A -> 10 A" in err and "warning:" in err


def test_no_resample_refuses_other_voxel_size(tmp_path, capsys, dataset_40A):
    rc, res, err = _run(capsys, "classify", dataset_40A, "--no-resample", "--device", "cpu",
                        "--out", tmp_path / "p.csv")
    assert rc == 2 and "40 A" in res["error"] and "10 A" in res["error"]
    assert len(err.strip().splitlines()) == 1


def test_attack_reports_resampling(tmp_path, capsys, dataset_40A):
    rc, res, _ = _run(capsys, "attack", dataset_40A, "--attack", "fgsm", "--indices", 0,
                      "--device", "cpu", "--out", tmp_path / "a.npz")
    assert rc == 0 and res["resampled"] and res["warnings"]


def test_domain_warnings(tmp_path):
    model = build_model("cb3d", 3, cube=20, **tiny_params("cb3d"))
    path = save_checkpoint(tmp_path / "novs.safetensors", model, {"normalization": "none"})
    loaded = load_model(path)
    got = domain_warnings(loaded, voxel_size=10.0, cube=28, normalized=True)
    assert got[0].startswith("model's training voxel size unknown")
    assert any("28^3" in w and "20^3" in w for w in got)
    assert any("unnormalised" in w for w in got)
    bundled = load_model("default")
    assert domain_warnings(bundled, voxel_size=10.05, cube=28, normalized=True) == []
    assert "trained at 10 A" in domain_warnings(bundled, voxel_size=10.2)[0]


# ------------------------------------------------------------------ checkpoint schema


def _tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model("cb3d", 3, cube=20, **tiny_params("cb3d"))
    path = save_checkpoint(tmp_path / "ok.safetensors", model,
                           {"class_names": ["a", "b", "c"], "voxel_size": 10.0})
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["cryoguard"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return meta, tensors


def _write(path, tensors, meta_json: str):
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"cryoguard": meta_json})
    return path


CORRUPT = [
    ("format_version", "5", "format_version"),
    ("format_version", 0, "format_version"),
    ("num_classes", "3", "num_classes"),
    ("num_classes", 30000000, "10000"),
    ("class_names", 5, "class_names"),
    ("class_names", ["a", "b"], "class_names"),
    ("class_names", ["a", "b", 3], "class_names"),
    ("cube", 4096, "512"),
    ("cube", "20", "cube"),
    ("cube", 2, "cube"),
    ("normalization", "bogus", "normalization"),
    ("voxel_size", -1.0, "voxel_size"),
    ("voxel_size", "10", "voxel_size"),
    ("arch_params", 5, "arch_params"),
    ("arch_params", {"fc_widths": [1000000.0, 1000000.0]}, "8192"),
    ("arch_params", {"fc_widths": [1000000, 1000000]}, "8192"),
    ("arch_params", {"conv_widths": [4, 4, 8, 8, 10**7]}, "conv_widths"),
    ("arch_params", {"dropout": float("nan")}, "dropout"),
    ("arch_params", {"drop_max": "yes"}, "drop_max"),
    ("arch", 7, "arch"),
]


@pytest.mark.parametrize("field,value,expect", CORRUPT,
                         ids=[f"{f}={v!r}"[:40] for f, v, _ in CORRUPT])
def test_corrupt_checkpoint_metadata_is_one_error_line(tmp_path, capsys, field, value, expect):
    meta, tensors = _tiny_checkpoint(tmp_path)
    if field == "arch_params" and isinstance(value, dict):
        meta["arch_params"] = {**meta["arch_params"], **value}
    else:
        meta[field] = value
    ckpt = _write(tmp_path / "bad.safetensors", tensors, json.dumps(meta))
    ds = save_dataset(tmp_path / "d.npz", SubtomogramDataset(
        volumes=np.zeros((2, 20, 20, 20), np.float32), labels=None, class_names=None,
        voxel_size=10.0))
    rc, res, err = _run(capsys, "classify", ds, "--model", ckpt, "--out", tmp_path / "p.csv")
    assert rc == 2 and not res["ok"]
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert expect in res["error"]


def test_metadata_that_is_not_an_object(tmp_path):
    from napari_cryoguard.models import load_checkpoint

    _, tensors = _tiny_checkpoint(tmp_path)
    ckpt = _write(tmp_path / "s.safetensors", tensors, '"5"')
    with pytest.raises(CryoGuardError, match="must be a JSON object, got str"):
        load_checkpoint(ckpt)


def test_nan_weights_refused_with_count_and_first_tensor(tmp_path, capsys):
    meta, tensors = _tiny_checkpoint(tmp_path)
    names = [k for k, v in tensors.items() if v.is_floating_point()]
    tensors[names[1]].view(-1)[:3] = float("nan")
    tensors[names[4]].view(-1)[0] = float("inf")
    ckpt = _write(tmp_path / "nan.safetensors", tensors, json.dumps(meta))
    from napari_cryoguard.models import load_checkpoint

    with pytest.raises(CryoGuardError, match=f"4 NaN or infinite value.*{names[1]!r}"):
        load_checkpoint(ckpt)


def test_save_refuses_unknown_normalization(tmp_path):
    model = build_model("cb3d", 3, cube=20, **tiny_params("cb3d"))
    with pytest.raises(CryoGuardError, match="normalization"):
        save_checkpoint(tmp_path / "x.safetensors", model, {"normalization": "bogus"})
    assert not list(tmp_path.iterdir())
