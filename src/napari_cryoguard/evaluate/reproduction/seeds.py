"""Several seeds of the reproduction side by side: :func:`combine_seeds` reads the
``metrics.json`` of runs that differ only in ``--seed`` (each seed simulates its own
data, initialises its own models and seeds its own attacks) and writes ``seeds.md``,
``seeds.html`` and ``seeds.json``: for every claim, each seed's two numbers with their 95 % intervals and
verdict, and how many seeds agree, disagree or are within noise.

Nothing is pooled: the per-seed verdicts are computed from each run's own intervals, as
in the single-run report, and the across-seeds line only counts them. A claim that
agrees in one seed and is within noise in the others is not a finding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.evaluate.report import Report, write_json

_VERDICTS = ("agrees", "disagrees", "within noise", "not compared")


def _load(run: Path) -> dict[str, Any]:
    path = run / "metrics.json" if run.is_dir() else run
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        raise CryoGuardError(
            f"{path}: no metrics.json (run `cryoguard reproduce --out {run}` first)"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CryoGuardError(f"{path}: cannot read the reproduction's metrics ({exc})") from None
    if not isinstance(metrics, dict) or metrics.get("format") != "cryoguard-reproduction":
        raise CryoGuardError(f"{path} is not the metrics.json of `cryoguard reproduce`")
    return metrics


def _side(c: dict[str, Any], name: str) -> str:
    v = c.get("ours", {}).get(name)
    ci = c.get("ours_ci", {}).get(name)
    if v is None:
        return f"{name} —"
    if ci:
        return f"{name} {v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return f"{name} {v:.3f}"


def combine_seeds(runs: list[str | Path], out: str | Path) -> dict[str, Any]:
    """Put the claims of several seeds' runs side by side; write ``<out>/seeds.md``,
    ``seeds.html`` and ``seeds.json`` and return the latter's content.

    The runs must share their sizes (FULL or QUICK) and device and differ in seed; a part
    is shown when at least two runs have it.
    """
    paths = [Path(r) for r in runs]
    if len(paths) < 2:
        raise CryoGuardError("combining seeds needs at least two reproduction folders")
    loaded = [_load(p) for p in paths]
    seeds = [m.get("seed") for m in loaded]
    if len(set(map(str, seeds))) != len(seeds):
        raise CryoGuardError(f"the runs must differ in seed, got seeds {seeds}")
    ref = loaded[0]
    for p, m in zip(paths[1:], loaded[1:], strict=True):
        if m.get("sizes") != ref.get("sizes") or m.get("quick") != ref.get("quick"):
            raise CryoGuardError(
                f"{p} was run with other sizes than {paths[0]}: only seeds may differ"
            )
        if m.get("device") != ref.get("device"):
            raise CryoGuardError(f"{p} ran on {m.get('device')}, {paths[0]} on {ref.get('device')}")
    parts = [p for p in "abcde" if sum(p in m.get("parts", {}) for m in loaded) >= 2]
    if not parts:
        raise CryoGuardError("no part was run in two or more of these folders")

    result: dict[str, Any] = {
        "format": "cryoguard-reproduction-seeds",
        "quick": bool(ref.get("quick")),
        "runs": [str(p) for p in paths],
        "seeds": seeds,
        "parts": {},
    }
    rep = Report("The reproduction over several seeds")
    rep.paragraph(
        f"Runs: {', '.join(f'seed {s} ({p})' for s, p in zip(seeds, paths, strict=True))}; "
        f"{'QUICK sizes (numbers not meaningful)' if ref.get('quick') else 'FULL sizes'}. "
        "Each seed simulates its own training and test data, initialises its own models and "
        "seeds its own attacks. Each verdict is the single run's, computed from its own 95 % "
        "intervals; the last column counts them (agree / disagree / within noise / not "
        "compared). Nothing is pooled."
    )
    for part in parts:
        runs_p = [
            (s, m["parts"][part])
            for s, m in zip(seeds, loaded, strict=True)
            if part in m.get("parts", {})
        ]
        claims = [c["claim"] for c in runs_p[0][1]["claims"]]
        rows, part_out = [], []
        for claim in claims:
            per_seed = []
            for s, r in runs_p:
                c = next((x for x in r["claims"] if x["claim"] == claim), None)
                if c is None:
                    per_seed.append({"seed": s, "verdict": "not compared", "text": "missing"})
                    continue
                text = f"{_side(c, c['lhs'])} vs {_side(c, c['rhs'])}" if "lhs" in c else ""
                per_seed.append(
                    {"seed": s, "verdict": c.get("verdict", "not compared"), "text": text}
                )
            counts = {v: sum(x["verdict"] == v for x in per_seed) for v in _VERDICTS}
            part_out.append({"claim": claim, "per_seed": per_seed, "counts": counts})
            rows.append(
                [claim]
                + [f"{x['text']}: {x['verdict']}" for x in per_seed]
                + [" / ".join(str(counts[v]) for v in _VERDICTS)]
            )
        result["parts"][part] = part_out
        rep.heading(f"Part ({part})")
        rep.table(
            ["claim"]
            + [f"seed {s}" for s, _ in runs_p]
            + ["agree / disagree / noise / not compared"],
            rows,
        )
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CryoGuardError(f"cannot create the output folder {out}: {exc.strerror}") from None
    rep.write(out, stem="seeds")
    write_json(out / "seeds.json", result)
    return result
