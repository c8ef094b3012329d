"""``cryoguard evaluate`` under ``torchrun --nproc_per_node 2`` on CPU (gloo) equals one
process (issue 14 item 4): same metrics, one report, written by rank 0."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from napari_cryoguard.distributed import Session

BIN = Path(sys.executable).parent

# bounded (FGSM, seeded random-start PGD), minimal (DeepFool) and a worst case over two
# members, plus the BPGD margins: every chokepoint that shares rows between the ranks
ATTACKS = json.dumps([
    {"name": "fgsm", "budgets": [0.02, 0.1]},
    {"name": "pgd", "budgets": [0.05], "params": {"steps": 3, "random_start": True, "seed": 0}},
    {"name": "deepfool", "budgets": [0.05, 0.5]},
    {"name": "worst_case", "label": "WC", "budgets": [0.05], "keep": "first",
     "members": [{"name": "fgsm"}, {"name": "pgd", "params": {"steps": 2}}]},
])


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _args(ckpt, data, out):
    return ["evaluate", str(ckpt), "--data", str(data), "--out", str(out),
            "--attacks-json", ATTACKS, "--device", "cpu", "--batch-size", "4",
            "--margin-samples", "7", "--quick", "--json", "--quiet"]


def _run(cmd, **env):
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env(**env))
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [x for x in res.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 1, res.stdout  # only rank 0 prints the summary
    return json.loads(lines[0])


# `cryoguard evaluate` with the rows of every attack_dataset call logged per rank
COUNTING = """
import os, sys
from napari_cryoguard.cli.evaluate import main
from napari_cryoguard.evaluate import cells

real = cells.attack_dataset

def counting(*args, **kwargs):
    res = real(*args, **kwargs)
    with open(os.environ["CG_LOG"] + os.environ.get("RANK", "0"), "a") as f:
        f.write(f"{len(res)}\\n")
    return res

cells.attack_dataset = counting
sys.exit(main(sys.argv[2:]))
"""


def _counted(script, log, *args, ranks=1):
    launch = ([str(BIN / "torchrun"), "--nproc_per_node", str(ranks), "--standalone"]
              if ranks > 1 else [sys.executable])
    out = _run([*launch, str(script), *args], CG_LOG=str(log))
    rows = [sum(int(x) for x in Path(f"{log}{r}").read_text().split()) for r in range(ranks)]
    return out, rows


def _same(a, b, path="metrics"):
    """Equal, floats within 1e-5 (NaN equal to NaN)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            assert a is b, path
        elif math.isnan(a):
            assert math.isnan(b), path
        else:
            assert b == pytest.approx(a, abs=1e-5), path
    else:
        assert a == b, path


def test_session_all_gather_in_one_process_is_the_object_alone():
    assert Session().all_gather({"a": 1}) == [{"a": 1}]


@pytest.mark.slow
def test_torchrun_two_ranks_evaluate_equals_one_process(tiny_checkpoint, test_npz, tmp_path):
    script = tmp_path / "counting.py"
    script.write_text(COUNTING)
    a, rows_one = _counted(script, tmp_path / "log1.", *_args(tiny_checkpoint, test_npz,
                                                              tmp_path / "one"))
    b, rows_two = _counted(script, tmp_path / "log2.", *_args(tiny_checkpoint, test_npz,
                                                              tmp_path / "two"), ranks=2)
    # the ranks shared the attacked rows: together exactly those of one process
    assert all(r > 0 for r in rows_two) and sum(rows_two) == rows_one[0]
    assert a["models"] == b["models"] and a["verdict"] == b["verdict"]
    assert a["cells_computed"] == b["cells_computed"] > 0

    ma = json.loads((tmp_path / "one" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "two" / "metrics.json").read_text())
    ma.pop("timing"), mb.pop("timing")
    _same(ma, mb)
    ra, rb = next(iter(ma["models"].values())), next(iter(mb["models"].values()))
    # 18 test samples in 5 batches of 4: rank 0 has 2 batches, rank 1 has 3
    assert ra["n_evaluated"] == 18
    assert ra["clean"]["accuracy"] == rb["clean"]["accuracy"]
    assert ra["clean_correct_by_sample"] == rb["clean_correct_by_sample"]
    for label, curve in ra["attacks"].items():
        for pa, pb in zip(curve["points"], rb["attacks"][label]["points"], strict=True):
            assert pa["robust_accuracy"] == pb["robust_accuracy"]
            assert pa["robust_by_sample"] == pb["robust_by_sample"]
    assert ra["attacks"]["WC"]["points"][0]["attack_by_sample"] == \
        rb["attacks"]["WC"]["points"][0]["attack_by_sample"]
    assert ra["margins"]["bpgd"]["values"] == pytest.approx(rb["margins"]["bpgd"]["values"],
                                                            abs=1e-5)
    assert len(rb["margins"]["bpgd"]["values"]) == min(7, sum(ra["clean_correct_by_sample"]))

    # one report, no leftovers of the ranks; the report's numbers are those of one process
    two = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert two == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert not [p for p in (tmp_path / "two").rglob("*") if "rank" in p.name]
    assert (tmp_path / "two" / "report.md").read_text() == \
        (tmp_path / "one" / "report.md").read_text()

    # resume under torchrun: rank 0 reads state.json and every rank skips the same cells
    c = _run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--standalone",
              "-m", "napari_cryoguard.cli", *_args(tiny_checkpoint, test_npz, tmp_path / "two")])
    assert c["cells_computed"] == 0 and c["cells_cached"] == a["cells_computed"]
    assert c["models"] == a["models"]
