"""The files of an evaluation: ``report.md`` and ``report.html`` with their PNG plots
(confusion matrices, accuracy-vs-budget curves, margin histograms), ``metrics.json``,
and the per-model summary the command line prints.

Reads only the metrics dict that :func:`napari_cryoguard.evaluate.run.evaluate` builds
(the content of ``metrics.json``), so a report can be rewritten from a stored one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from napari_cryoguard.evaluate.inputs import slug
from napari_cryoguard.evaluate.report import (
    Report,
    plot_confusion,
    plot_curves,
    plot_histograms,
    write_json,
)

__all__ = ["curve_arrays", "summary_by_model", "write_metrics", "write_outputs"]


def curve_arrays(
    curve: dict[str, Any], clean_accuracy: float | None = None, key: str = "robust_accuracy"
) -> tuple[list[float], list[float]]:
    """(budgets, values) of a stored curve; a bounded curve starts at budget 0 = clean."""
    xs = [p["budget"] for p in curve["points"]]
    ys = [p[key] for p in curve["points"]]
    if clean_accuracy is not None and curve.get("mode") == "bounded" and key == "robust_accuracy":
        xs, ys = [0.0, *xs], [clean_accuracy, *ys]
    return xs, ys


def write_outputs(out: Path, metrics: dict[str, Any], title: str) -> dict[str, Any]:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` of ``metrics`` into ``out``;
    returns the file names (relative to ``out``) for the metrics' ``files`` entry."""
    plots = out / "plots"
    models = metrics["models"]
    files: dict[str, Any] = {"plots": []}
    rep = Report(title)
    rep.paragraph(
        f"Overall sanity verdict: {metrics['verdict'].upper()}. Dataset: "
        f"{metrics['dataset']['source']} ({metrics['dataset']['n_selected']} of "
        f"{metrics['dataset']['n_total']} samples evaluated, cube "
        f"{metrics['dataset']['cube']}). Device {metrics['settings']['device']}."
    )
    rep.paragraph(
        "Robust accuracy = correct on the clean sample and on its adversarial version. "
        "Adversarial F1 / sensitivity are macro averages over the classes, from the "
        "predictions on the adversarial volumes (MIRST-DM Tables 1-3). Budgets are in "
        "normalised (z-score) units."
    )
    # sanity
    rep.heading("Sanity checks")
    rows = []
    for name, r in models.items():
        for c in r["sanity"]["checks"]:
            rows.append([name, c["name"], c["status"].upper(), c["message"]])
    rep.table(["model", "check", "status", "message"], rows)
    rep.paragraph("; ".join(f"{n}: {r['sanity']['verdict'].upper()}" for n, r in models.items()))
    # clean
    rep.heading("Clean performance")
    rep.table(
        ["model", "arch", "defense", "n", "accuracy", "macro F1", "macro sensitivity"],
        [
            [
                n,
                r["arch"],
                r["defense"] or "—",
                r["clean"]["n"],
                r["clean"]["accuracy"],
                r["clean"]["macro_f1"],
                r["clean"]["macro_sensitivity"],
            ]
            for n, r in models.items()
        ],
    )
    for name, r in models.items():
        cl = r["clean"]
        rep.table(
            ["class", "support", "precision", "sensitivity", "F1"],
            [
                [pc["class"], pc["support"], pc["precision"], pc["sensitivity"], pc["f1"]]
                for pc in cl["per_class"]
            ],
            caption=f"{name}: per-class scores (clean)",
        )
        p = plot_confusion(
            plots / f"confusion_{slug(name)}.png",
            cl["confusion"],
            cl["class_names"],
            title=f"Confusion matrix (clean): {name}",
        )
        files["plots"].append(str(p.relative_to(out)))
        rep.image(p, f"Confusion matrix of {name} on clean samples")
    # attacks
    labels = list(dict.fromkeys(lb for r in models.values() for lb in r["attacks"]))
    if labels:
        rep.heading("Accuracy under attack")
        header = (
            ["attack", "budget"]
            + [f"{n} robust acc" for n in models]
            + [f"{n} adv F1" for n in models]
        )
        rows = []
        for lb in labels:
            budgets = sorted(
                {
                    p["budget"]
                    for r in models.values()
                    if lb in r["attacks"]
                    for p in r["attacks"][lb]["points"]
                }
            )
            for b in budgets:
                row: list[Any] = [lb, b]
                f1s: list[Any] = []
                for r in models.values():
                    pt = next(
                        (p for p in r["attacks"].get(lb, {}).get("points", []) if p["budget"] == b),
                        None,
                    )
                    row.append(pt["robust_accuracy"] if pt else None)
                    f1s.append(pt["adv_macro_f1"] if pt else None)
                rows.append(row + f1s)
        rep.table(header, rows)
        for lb in labels:
            curves = {}
            unit = "budget"
            for n, r in models.items():
                if lb in r["attacks"]:
                    c = r["attacks"][lb]
                    unit = c["budget_unit"]
                    curves[n] = curve_arrays(c, r["clean"]["accuracy"])
            p = plot_curves(
                plots / f"accuracy_{slug(lb)}.png",
                curves,
                title=f"Accuracy under {lb}",
                xlabel=unit,
                ylabel="robust accuracy",
            )
            files["plots"].append(str(p.relative_to(out)))
            rep.image(p, f"Robust accuracy vs budget under {lb}")
        rep.heading("Attack settings", 3)
        any_model = next(iter(models.values()))
        rep.bullets([_settings_line(lb, c) for lb, c in any_model["attacks"].items()])
        wc_rows = [
            [n, lb, p["budget"], m["attack"], m["attacked"], m["fooled"],
             m["robust_accuracy_after"]]
            for n, r in models.items()
            for lb, c in r["attacks"].items()
            if "members" in c
            for p in c["points"]
            for m in p.get("members", [])
        ]
        if wc_rows:
            rep.table(
                ["model", "suite", "budget", "attack", "attacked", "fooled", "robust acc after"],
                wc_rows,
                caption="worst-case suites: each attack in order, on the samples still "
                "robust (keep='first') or on all correct ones (keep='smallest')",
            )
    # margins
    mrows, hist = [], {}
    for n, r in models.items():
        for src in ("checkpoint", "bpgd"):
            mg = (r.get("margins") or {}).get(src)
            if mg:
                s = mg["summary"]
                mrows.append(
                    [
                        n,
                        mg["source"],
                        s["n"],
                        s["mean"],
                        s["median"],
                        s["q10"],
                        s["q90"],
                        mg.get("case0_fraction"),
                    ]
                )
                hist[f"{n} ({src})"] = mg["values"]
    if mrows:
        rep.heading("Margins (IMA)")
        rep.table(
            ["model", "source", "n", "mean", "median", "10 %", "90 %", "case-0 fraction"], mrows
        )
        p = plot_histograms(
            plots / "margins.png",
            hist,
            title="Per-sample margin distribution",
            xlabel="margin (L-inf, normalised units)",
        )
        files["plots"].append(str(p.relative_to(out)))
        rep.image(p, "Margin histograms (IMA Fig. 9 middle)")
        rep.paragraph(
            "BPGD margins are capped at its eps (case-0 samples: no boundary point found)."
        )
    recon = [
        [n, r["reconstruction"]["mse"], r["reconstruction"]["median_mse"]]
        for n, r in models.items()
        if r.get("reconstruction")
    ]
    if recon:
        rep.heading("Reconstruction error")
        rep.table(
            ["model", "mean MSE", "median MSE"],
            recon,
            caption="voxel-mean squared error of the decoder (semi-supervised paper Eq. 1)",
        )
    md, ht = rep.write(out)
    files.update(report_md=md.name, report_html=ht.name, metrics="metrics.json", state="state.json")
    return files


def _settings_line(label: str, c: dict[str, Any]) -> str:
    if "members" in c:
        parts = [f"{m['label']} = {m['name']} {json.dumps(m['params'])}" for m in c["members"]]
        return (
            f"{label}: worst case per sample over {'; '.join(parts)} (keep {c['keep']}: "
            + (
                "the first successful attack, each run on the samples still robust)"
                if c["keep"] == "first"
                else "the smallest successful perturbation)"
            )
        )
    return (
        f"{label}: {c['attack']} ({c['mode']}), params {json.dumps(c['params'])}"
        + (
            f", worst case over variants {json.dumps(c['variants'])}"
            if len(c["variants"]) > 1
            else ""
        )
    )


def summary_by_model(metrics: dict[str, Any]) -> dict[str, Any]:
    """Per model of ``metrics``: clean accuracy, macro F1, the worst robust accuracy over
    every attack and budget, and the sanity verdict (the CLI's one-line summary)."""
    models = {}
    for name, r in metrics["models"].items():
        worst = [
            p["robust_accuracy"]
            for c in r["attacks"].values()
            for p in c["points"]
            if p["robust_accuracy"] is not None
        ]
        models[name] = {
            "clean_accuracy": r["clean"]["accuracy"],
            "macro_f1": r["clean"]["macro_f1"],
            "worst_robust_accuracy": min(worst) if worst else None,
            "verdict": r["sanity"]["verdict"],
        }
    return models


def write_metrics(out: Path, metrics: dict[str, Any]) -> Path:
    """Write ``metrics`` as ``<out>/metrics.json`` (atomically); returns the path."""
    path = Path(out) / "metrics.json"
    write_json(path, metrics)
    return path
