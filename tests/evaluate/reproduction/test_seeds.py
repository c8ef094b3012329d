"""`cryoguard reproduce --combine`: the claims of several seeds' runs side by side, from
the committed full run's metrics.json (docs/reproduction) and edited copies of it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from napari_cryoguard.cli.reproduce import main as reproduce_main
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.evaluate.reproduction.seeds import combine_seeds

COMMITTED = Path(__file__).resolve().parents[3] / "docs" / "reproduction" / "metrics.json"


def _run(tmp_path, name, metrics):
    d = tmp_path / name
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps(metrics))
    return d


@pytest.fixture()
def full():
    return json.loads(COMMITTED.read_text())


def test_combine_counts_each_seeds_verdict(tmp_path, full):
    other = copy.deepcopy(full)
    other["seed"] = 1
    flipped = other["parts"]["c"]["claims"][0]
    flipped["verdict"] = "agrees" if flipped["verdict"] != "agrees" else "within noise"
    del other["parts"]["a"]  # a part in one run only is left out
    r0, r1 = _run(tmp_path, "s0", full), _run(tmp_path, "s1", other)
    out = tmp_path / "seeds"
    res = combine_seeds([r0, r1], out)
    assert res["seeds"] == [full["seed"], 1]
    assert "a" not in res["parts"] and set(res["parts"]) == set(full["parts"]) - {"a"}
    c_claims = res["parts"]["c"]
    assert len(c_claims) == len(full["parts"]["c"]["claims"])
    first = c_claims[0]
    original = full["parts"]["c"]["claims"][0]["verdict"]
    assert [x["verdict"] for x in first["per_seed"]] == [original, flipped["verdict"]]
    assert sum(first["counts"].values()) == 2
    assert first["counts"][original] == 1 and first["counts"][flipped["verdict"]] == 1
    # an unchanged claim: both seeds the same verdict
    same = c_claims[1]
    assert same["counts"][full["parts"]["c"]["claims"][1]["verdict"]] == 2
    md = (out / "seeds.md").read_text()
    assert "## Part (c)" in md and f"seed {full['seed']}" in md and "seed 1" in md
    # each seed's numbers with the interval, as in the single-run report
    c0 = full["parts"]["c"]["claims"][0]
    v = c0["ours"][c0["lhs"]]
    assert f"{c0['lhs']} {v:.3f} [" in md
    assert (
        json.loads((out / "seeds.json").read_text())["parts"]["c"][0]["counts"] == first["counts"]
    )
    assert (out / "seeds.html").is_file()


def test_combine_refuses_runs_that_differ_in_more_than_seed(tmp_path, full):
    same_seed = _run(tmp_path, "a", full)
    with pytest.raises(CryoGuardError, match="differ in seed"):
        combine_seeds([same_seed, _run(tmp_path, "b", full)], tmp_path / "o")
    other = copy.deepcopy(full)
    other["seed"] = 5
    other["sizes"]["epochs"] = 1
    with pytest.raises(CryoGuardError, match="other sizes"):
        combine_seeds([same_seed, _run(tmp_path, "c", other)], tmp_path / "o")
    with pytest.raises(CryoGuardError, match="at least two"):
        combine_seeds([same_seed], tmp_path / "o")
    with pytest.raises(CryoGuardError, match="no metrics.json"):
        combine_seeds([same_seed, tmp_path / "missing"], tmp_path / "o")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.json").write_text('{"format": "something-else"}')
    with pytest.raises(CryoGuardError, match="is not the metrics.json"):
        combine_seeds([same_seed, tmp_path / "bad"], tmp_path / "o")


def test_cli_combine_one_line_error_and_json(tmp_path, full, capsys):
    other = copy.deepcopy(full)
    other["seed"] = 7
    r0, r1 = _run(tmp_path, "s0", full), _run(tmp_path, "s7", other)
    rc = reproduce_main(
        ["--out", str(tmp_path / "o"), "--combine", str(r0), str(r1), "--json", "--quiet"]
    )
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    line = json.loads(cap.out.strip())
    assert line["ok"] and line["seeds"] == [full["seed"], 7]
    rc = reproduce_main(["--out", str(tmp_path / "o"), "--combine", str(r0)])
    cap = capsys.readouterr()
    assert rc == 2
    assert cap.err.strip().count("\n") == 0 and "at least two" in cap.err
    assert "Traceback" not in cap.err
