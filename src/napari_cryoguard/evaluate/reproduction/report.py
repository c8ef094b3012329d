"""The report of the reproduction: ``report.md`` and ``report.html`` from the metrics
that :func:`~napari_cryoguard.evaluate.reproduction.reproduce` builds (sizes, per-part
tables, claims with their verdicts, plots, notes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from napari_cryoguard.evaluate.report import Report


def _sizes_rows(sizes: dict[str, Any]) -> list[list[Any]]:
    rows = [
        [k, json.dumps(v) if isinstance(v, list | dict | tuple) else v]
        for k, v in sizes.items()
        if k != "widths"
    ]
    for arch, w in sizes["widths"].items():
        rows.append([f"widths {arch}", json.dumps(w)])
    return rows


def _verdict_text(c: dict[str, Any]) -> str:
    v = c.get("verdict", "not compared")
    return f"{v} ({c['reason']})" if c.get("reason") else v


def write_report(out: Path, metrics: dict[str, Any]) -> None:
    """Write ``report.md`` and ``report.html`` of the reproduction ``metrics`` into ``out``."""
    mode = (
        "QUICK (smoke-test sizes: the numbers are not meaningful)" if metrics["quick"] else "FULL"
    )
    rep = Report("Reproduction of the papers' comparisons on simulated subtomograms")
    rep.paragraph(
        f"Mode: {mode}. Every number in the 'ours' columns comes from models trained and "
        "evaluated here on simulated data; the 'paper' columns quote the papers (where the "
        "text has no numbers, the text's statement). Every accuracy carries its 95 % Wilson "
        "interval. For each claim of a direction the last column is computed from our "
        "intervals: 'agrees' when the claimed better side's 95 % interval lies wholly above "
        "the other's, 'disagrees' when wholly below, 'within noise' when they overlap, and "
        "'not compared' when a model did not learn (the collapse sanity check: accuracy "
        "interval reaching chance, one predicted class, or dead final features) or a number "
        "is missing. Nothing was tuned to make a claim agree. Budgets are in each paper's "
        "unit: parts c-e use eps as a fraction of each sample's intensity range (max - "
        "min), as the papers' budgets for images in [0, 1] (eps_unit 'range'), except where "
        "a part's notes say otherwise."
    )
    rep.heading("Summary")
    rep.table(
        ["part", "claims", "agree", "disagree", "within noise", "not compared", "seconds"],
        [
            [
                p,
                s["claims"],
                s["agree"],
                s["disagree"],
                s["within_noise"],
                s["not_compared"],
                metrics["timing"]["parts"].get(p),
            ]
            for p, s in metrics["summary"].items()
        ],
    )
    rep.heading("Reduced sizes")
    rep.paragraph(
        "Data from the bundled simulator (5 classes: the bundled templates; CTF -5 µm, 300 kV; "
        "per-sample z-scoring; no detector MTF, see simulate.physics), train and test sets "
        "simulated with different seeds; Adam (learning rate per architecture: lr_by_arch), "
        "no validation split, no early stopping. In parts c-e every defended model is "
        "trained for robust_epochs epochs starting from the naturally trained model of its part "
        "(from scratch, adversarial training does not leave chance level in so few epochs); "
        "the drop-max variants load the same weights. Paper sizes for comparison: CB3D 23 classes x "
        "1000 samples of 28^3 at 0.92 nm; semi-supervised 8000 samples of 64^3; RAT 2800 real "
        "subtomograms of 28^3; 100 epochs everywhere."
    )
    rep.table(["setting", "value"], _sizes_rows(metrics["sizes"]))
    for _p, r in metrics["parts"].items():
        rep.heading(r["title"])
        for t in r["tables"]:
            rep.table(t["header"], t["rows"], caption=t.get("caption", ""))
        rep.heading("Claimed directions", 3)
        rep.table(
            ["claim", "source", "paper", "ours [95 % interval]", "verdict"],
            [
                [
                    c["claim"],
                    c["source"],
                    c["paper"],
                    c["ours_text"],
                    _verdict_text(c),
                ]
                for c in r["claims"]
            ],
        )
        for path, caption in r.get("plots", []):
            rep.image(out / path, caption)
        if r.get("evaluation"):
            rep.paragraph(f"Full attack evaluation with sanity checks: {r['evaluation']}")
        if r.get("notes"):
            rep.bullets(r["notes"])
    rep.write(out)
