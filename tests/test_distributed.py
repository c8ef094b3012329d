"""classify and attack under ``torchrun --nproc_per_node 2`` on CPU (gloo) equal one
process (issue 14 item 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cryoguard.data import save_dataset
from napari_cryoguard.distributed import part_path, rank_rows
from napari_cryoguard.models import build_model, save_checkpoint, tiny_params

BIN = Path(sys.executable).parent
CUBE = 16


def test_rank_rows_split_whole_batches_in_rank_order():
    # 10 rows in batches of 4 -> batches [0,4) [4,8) [8,10); 2 ranks: 1 and 2 batches
    assert [rank_rows(10, 4, r, 2) for r in range(2)] == [(0, 4), (4, 10)]
    assert [rank_rows(10, 4, r, 3) for r in range(3)] == [(0, 4), (4, 8), (8, 10)]
    assert [rank_rows(3, 4, r, 2) for r in range(2)] == [(0, 0), (0, 3)]  # one batch, rank 1
    spans = [rank_rows(1001, 32, r, 4) for r in range(4)]
    assert spans[0][0] == 0 and spans[-1][1] == 1001
    assert all(a[1] == b[0] and a[1] % 32 == 0 for a, b in zip(spans[:-1], spans[1:], strict=True))
    assert part_path("/x/p.csv", 1, 2).name == ".p.rank1of2.part.csv"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(1)
    ds = save_dataset(d / "ds.npz", volumes=rng.standard_normal((45, CUBE, CUBE, CUBE))
                      .astype(np.float32), labels=np.arange(45) % 3, class_names=["a", "b", "c"],
                      coords=rng.uniform(0, 50, (45, 3)), voxel_size=10.0)
    torch.manual_seed(0)
    model = build_model("cb3d", 3, cube=CUBE, **tiny_params("cb3d"))
    ckpt = save_checkpoint(d / "m.safetensors", model, {"class_names": ["a", "b", "c"]})
    return ds, ckpt


def _env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1"}


def _one(*args):
    res = subprocess.run([str(BIN / "cryoguard"), *map(str, args), "--json", "--quiet"],
                         capture_output=True, text=True, timeout=300, env=_env())
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _torchrun(*args):
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--standalone",
           "-m", "napari_cryoguard.cli", *map(str, args), "--json", "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [x for x in res.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 1, res.stdout  # only rank 0 prints the summary
    return json.loads(lines[0])


@pytest.mark.slow
def test_torchrun_two_ranks_classify_and_attack_equal_one_process(data, tmp_path):
    ds, ckpt = data
    common = ["--model", ckpt, "--device", "cpu", "--batch-size", "8"]
    a = _one("classify", ds, *common, "--out", tmp_path / "one.csv")
    b = _torchrun("classify", ds, *common, "--out", tmp_path / "two.csv")
    assert b["ranks"] == 2 and b["n"] == a["n"] == 45
    assert b["predicted_counts"] == a["predicted_counts"] and b["accuracy"] == a["accuracy"]
    one = (tmp_path / "one.csv").read_text().splitlines()
    two = (tmp_path / "two.csv").read_text().splitlines()
    assert len(two) == 46 and [r.split(",")[:3] for r in one] == [r.split(",")[:3] for r in two]
    p1 = np.loadtxt(one[1:], delimiter=",", usecols=(3, 4, 5))
    p2 = np.loadtxt(two[1:], delimiter=",", usecols=(3, 4, 5))
    np.testing.assert_allclose(p2, p1, rtol=0, atol=1e-6)

    att = ["--attack", "fgsm", "--eps", "0.05"]
    a = _one("attack", ds, *common, *att, "--out", tmp_path / "one.npz")
    b = _torchrun("attack", ds, *common, *att, "--out", tmp_path / "two.npz")
    assert b["success_rate"] == a["success_rate"] and b["n"] == a["n"] == 45
    with np.load(tmp_path / "one.npz") as z1, np.load(tmp_path / "two.npz") as z2:
        assert z1.files == z2.files
        np.testing.assert_array_equal(z2["indices"], np.arange(45))
        np.testing.assert_array_equal(z2["pred_after"], z1["pred_after"])
        np.testing.assert_allclose(z2["x_adv"], z1["x_adv"], rtol=0, atol=1e-5)
        assert json.loads(str(z2["metadata"]))["summary"]["n"] == 45
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.csv", "one.npz", "two.csv",
                                                         "two.npz"]  # parts removed
