"""The driver of the reproduction: :func:`reproduce` runs the requested parts in
order, resumes finished ones from ``<out>/parts/<part>.json`` and writes
``metrics.json`` and the report (:mod:`.report`)."""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.evaluate.inputs import sha
from napari_cryoguard.evaluate.metrics import json_clean
from napari_cryoguard.evaluate.report import write_json
from napari_cryoguard.evaluate.reproduction import common, papers
from napari_cryoguard.evaluate.reproduction.common import Context
from napari_cryoguard.evaluate.reproduction.part_a import part_a
from napari_cryoguard.evaluate.reproduction.part_b import part_b
from napari_cryoguard.evaluate.reproduction.part_c import part_c
from napari_cryoguard.evaluate.reproduction.part_d import part_d
from napari_cryoguard.evaluate.reproduction.part_e import part_e
from napari_cryoguard.evaluate.reproduction.report import write_report
from napari_cryoguard.evaluate.reproduction.sizes import FULL, QUICK

#: the parts, one letter each (a-e: the five papers' comparisons)
PARTS = "abcde"

_PART_FUNCS = {"a": part_a, "b": part_b, "c": part_c, "d": part_d, "e": part_e}

#: the version of a part's resume key; bump it when the key's recipe changes
_KEY_VERSION = 3


def code_key(func: Callable) -> str:
    """A hash of the code a part's result depends on beyond its sizes: the source of the
    module that defines the part function (its settings, e.g. part (c)'s training attack,
    live there as code), of :mod:`.common` and of :mod:`.papers`.

    A stored ``parts/<x>.json`` whose key differs is recomputed, so a changed setting in
    a part's code is never answered with an older result. The part then reuses only the
    checkpoints and attack cells whose own keys (which hash their settings) still match.
    Changes elsewhere in the package (an attack's or a defense's implementation) are not
    covered: use ``--no-resume`` after those.
    """
    h = hashlib.sha256()
    for mod in (inspect.getmodule(func), common, papers):
        h.update(inspect.getsource(mod).encode())
    return h.hexdigest()


def reproduce(
    out: str | Path,
    *,
    quick: bool = False,
    parts: str | Sequence[str] = PARTS,
    device: str = "cpu",
    seed: int = 0,
    progress: Callable[[dict[str, Any]], None] | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Run the small-scale reproductions ``parts`` (letters a-e; see the module docstring).

    Parameters
    ----------
    out
        Output folder: ``metrics.json``, ``report.md``, ``report.html``, ``plots/``,
        ``checkpoints/``, ``eval/<part>/`` (each part's attack evaluation) and
        ``parts/<part>.json``.
    quick
        Tiny sizes (:data:`QUICK`: 24 training and 8 test samples per class, 4 epochs,
        tiny widths, few attack steps): a smoke run of a few minutes whose numbers are
        not meaningful. Otherwise :data:`FULL`.
    parts
        Which parts, e.g. ``"c"`` or ``"abcde"``.
    device
        Torch device for training and attacks (``"cpu"`` by default for reproducibility).
    seed
        Seeds the simulated data, the training and the attacks.
    progress
        Called with ``{"part", "message"}`` as the work proceeds.
    resume
        Reuse finished parts, trained checkpoints and attack cells under ``out``.

    Returns
    -------
    dict
        The content of ``metrics.json``: sizes, per-part tables, claims with a
        ``verdict`` each ("agrees", "disagrees", "within noise" or "not compared", from
        the 95 % intervals; ``agrees`` is True / False / None accordingly), the collapse
        checks, and a summary with the counts per part.
    """
    t0 = time.perf_counter()
    wanted = "".join(
        dict.fromkeys(str(p).strip().lower() for p in parts if str(p).strip() not in ("", ","))
    )
    bad = sorted(set(wanted) - set(PARTS))
    if bad or not wanted:
        raise CryoGuardError(f"parts must be letters from {PARTS!r}, got {parts!r}")
    sizes = copy.deepcopy(QUICK if quick else FULL)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out, sizes, device, int(seed), progress, quick)
    results: dict[str, Any] = {}
    timing: dict[str, float] = {}
    for p in wanted:
        key = sha(p, sizes, seed, device, _KEY_VERSION, code_key(_PART_FUNCS[p]))
        path = out / "parts" / f"{p}.json"
        if resume and path.is_file():
            try:
                stored = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                stored = {}
            if stored.get("key") == key:
                results[p] = stored["result"]
                timing[p] = stored.get("seconds", 0.0)
                ctx.say(p, "already done (resumed)")
                continue
        if not resume:
            for d in (out / "checkpoints" / p, out / "eval" / p):
                if d.exists():
                    shutil.rmtree(d)
        ctx.say(p, "start")
        tp = time.perf_counter()
        torch.manual_seed(seed)
        part_res = _PART_FUNCS[p](ctx)
        part_res.setdefault("collapse", ctx.collapse.get(p, {}))
        res = json_clean(part_res)
        timing[p] = round(time.perf_counter() - tp, 2)
        write_json(path, {"key": key, "result": res, "seconds": timing[p]})
        results[p] = res
        ctx.say(p, f"done in {timing[p]:.1f} s")
    summary = {}
    for p, r in results.items():
        verdicts = [c.get("verdict", "not compared") for c in r["claims"]]
        summary[p] = {
            "claims": len(verdicts),
            "agree": verdicts.count("agrees"),
            "disagree": verdicts.count("disagrees"),
            "within_noise": verdicts.count("within noise"),
            "not_compared": verdicts.count("not compared"),
        }
    metrics = {
        "format": "cryoguard-reproduction",
        "version": 1,
        "quick": bool(quick),
        "seed": seed,
        "device": device,
        "sizes": sizes,
        "parts": results,
        "summary": summary,
        "timing": {"parts": timing, "seconds": round(time.perf_counter() - t0, 2)},
    }
    write_report(out, metrics)
    metrics["files"] = {
        "metrics": "metrics.json",
        "report_md": "report.md",
        "report_html": "report.html",
    }
    write_json(out / "metrics.json", metrics)
    return json_clean(metrics)
