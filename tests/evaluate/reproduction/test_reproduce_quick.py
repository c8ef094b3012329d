"""`cryoguard reproduce --quick --parts c` end to end (user errors and --help: tests/cli/test_reproduce_cli.py)."""

from __future__ import annotations

import json

import pytest

from napari_cryoguard.cli.reproduce import main as reproduce_main
from napari_cryoguard.evaluate import reproduce


@pytest.mark.slow
def test_reproduce_quick_part_c(tmp_path, capsys):
    out = tmp_path / "rep"
    rc = reproduce_main(["--out", str(out), "--quick", "--parts", "c", "--json", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = json.loads(captured.out.strip())
    assert summary["ok"] and summary["parts"] == ["c"]

    metrics = json.loads((out / "metrics.json").read_text())
    part = metrics["parts"]["c"]
    claims = part["claims"]
    verdicts = {"agrees", "disagrees", "within noise", "not compared"}
    assert claims and all(c["verdict"] in verdicts for c in claims)
    collapsed = {n for n, c in part["collapse"].items() if c["status"] == "fail"}
    assert set(part["collapse"]) == {"natural", "AT", "TRADES", "RAT"}
    # each verdict is computed from the two intervals it shows
    for c in claims:
        a, b = c["ours"][c["lhs"]], c["ours"][c["rhs"]]
        if {c["lhs"], c["rhs"]} & collapsed:
            assert c["verdict"] == "not compared" and "collapsed" in c["reason"]
            continue
        if a is None or b is None:
            assert c["verdict"] == "not compared"
            continue
        (lo_a, hi_a), (lo_b, hi_b) = c["ours_ci"][c["lhs"]], c["ours_ci"][c["rhs"]]
        assert lo_a <= a <= hi_a and lo_b <= b <= hi_b
        want = "agrees" if lo_a > hi_b else "disagrees" if hi_a < lo_b else "within noise"
        assert c["verdict"] == want
        assert c["agrees"] == {"agrees": True, "disagrees": False}.get(want)
        assert c["direction"] == (a > b)
    counts = metrics["summary"]["c"]
    assert (
        counts["agree"] + counts["disagree"] + counts["within_noise"] + counts["not_compared"]
        == len(claims)
    )
    # the sizes used are stated
    assert metrics["sizes"]["epochs"] >= 1 and metrics["quick"] is True

    md = (out / "report.md").read_text()
    assert "paper (text)" in md  # the paper column
    assert "| claim | source | paper | ours [95 % interval] | verdict |" in md
    claim_rows = [ln for ln in md.splitlines() if ln.startswith("| RAT") or ln.startswith("| AT")]
    assert len(claim_rows) == len(claims)
    for ln, c in zip(claim_rows, claims, strict=True):
        cell = ln.rstrip(" |").rsplit("| ", 1)[1]
        assert cell.split(" (")[0] == c["verdict"]
    assert "Reduced sizes" in md and "n_train_per_class" in md
    assert "fraction of each sample's intensity range" in md  # the unit is stated
    html = (out / "report.html").read_text()
    assert '<img src="data:image/png;base64,' in html and "within noise" in html
    assert (out / "eval" / "c" / "report.html").is_file()

    # resumable per part: a second call reuses the stored part without training
    events = []
    again = reproduce(out, quick=True, parts="c", progress=events.append)
    assert any("already done" in e["message"] for e in events)
    assert not any("training" in e["message"] for e in events)
    assert again["parts"]["c"]["claims"] == claims
