"""``cryoguard evaluate``: its options, and the mapping of them onto
:func:`napari_cryoguard.evaluate.evaluate`.

:func:`build_parser` imports no torch (``--help`` answers at once); :func:`main` runs
the evaluation and prints progress on stderr and, with ``--json``, one summary line.
Under torchrun only rank 0 prints.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_cryoguard.cli._common import fail
from napari_cryoguard.cli._run_options import add_run_options, set_threads
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.params import Suite

__all__ = ["SUITES", "build_parser", "main", "suite_from_args"]

#: the named attack suites of ``--suite`` (:data:`napari_cryoguard.params.Suite`)
SUITES: tuple[str, ...] = typing.get_args(Suite)


#: what ``cryoguard evaluate --help`` says first
DESCRIPTION = (
    "Evaluate classifiers' robustness on a labelled dataset: sanity checks, clean "
    "accuracy with per-class F1/sensitivity and confusion matrices, accuracy under "
    "attacks at several budgets, IMA margins, reconstruction error. Writes "
    "metrics.json, report.md, report.html and PNG plots; resumable."
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cryoguard evaluate``."""
    p = argparse.ArgumentParser(prog="cryoguard evaluate", description=DESCRIPTION)
    p.add_argument(
        "models",
        nargs="+",
        help="checkpoints (.safetensors) or bundled weights (default, cb3d-default, "
        "ae-default) to evaluate",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--data",
        help="labelled dataset file (.npz, from `cryoguard extract` or "
        "`cryoguard simulate-dataset`)",
    )
    src.add_argument(
        "--simulate",
        metavar="SPEC",
        help="simulate the test set instead, e.g. n_per_class=20,cube=28,snr=0.1,"
        "tilt=60,seed=1 (keys of simulate_subtomograms)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output folder (metrics.json, report.md, report.html, plots/, state.json)",
    )
    p.add_argument(
        "--attack",
        action="append",
        default=None,
        metavar="NAME[@B1,B2][:K=V,...]",
        help="an attack of the suite, repeatable, replacing the default suite: name, "
        "budgets after @, parameters after : (e.g. pgd@0.01,0.03:steps=100,loss=margin,"
        "label=PGD-margin). A bounded attack runs once per budget, a minimal one (it "
        "finds the smallest perturbation) once, read at each budget; `cryoguard attacks` "
        "lists the attacks, their parameters and which kind each is",
    )
    p.add_argument(
        "--attacks-json",
        default=None,
        metavar="FILE|JSON",
        help="the attack suite as a JSON list of specs {name, label, budgets, params, "
        "variants}, inline or in a file",
    )
    p.add_argument(
        "--suite",
        choices=SUITES,
        default=None,
        help="a named attack suite: default (the papers' attacks) or autoattack (per "
        "sample the worst case over APGD-CE, APGD-T and Square, Croce & Hein 2020); "
        "--attack/--attacks-json specs are added to it",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="quick preset: few budgets and steps, 32 samples, cheap margin estimate",
    )
    p.add_argument(
        "--list-attacks",
        action="store_true",
        help="print the default (or with --quick the quick) suite as JSON and exit",
    )
    p.add_argument(
        "--max-samples",
        type=int,
        default=None,
        help="evaluate a seeded class-balanced subset of at most this many samples",
    )
    p.add_argument("--batch-size", type=int, default=32, help="samples per attack batch")
    p.add_argument("--no-margins", action="store_true", help="skip the IMA margin estimate")
    p.add_argument(
        "--margin-samples",
        type=int,
        default=None,
        help="correctly classified samples for the BPGD margin estimate (64; quick 16)",
    )
    add_run_options(
        p,
        device="auto",
        device_help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps",
        seed_help="seed of the sample selection",
        resume_help="ignore <out>/state.json and recompute every cell",
    )
    return p


def _attacks_json(raw: str) -> list[dict[str, Any]]:
    """``--attacks-json``: a JSON list of specs, inline or in a file."""
    try:
        is_file = Path(raw).is_file()
    except OSError:  # inline JSON longer than a file name may be
        is_file = False
    text = Path(raw).read_text() if is_file else raw
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CryoGuardError(f"--attacks-json is neither a file nor valid JSON: {exc}") from None
    if not isinstance(loaded, list):
        raise CryoGuardError("--attacks-json must be a JSON list of attack specs")
    return loaded


def suite_from_args(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    """The attack specs of ``--suite``, ``--attacks-json`` and ``--attack`` in that order
    (None: none given, the default suite)."""
    from napari_cryoguard.evaluate.suite import named_suite, parse_attack_option

    specs: list[dict[str, Any]] = []
    if getattr(args, "suite", None):
        specs += named_suite(args.suite, quick=args.quick)
    if args.attacks_json:
        specs += _attacks_json(args.attacks_json)
    for a in args.attack or []:
        specs.append(parse_attack_option(a))
    return specs or None


def _data(args: argparse.Namespace) -> Any:
    """``--data`` (a path) or the dataset ``--simulate`` describes."""
    if not args.simulate:
        return args.data
    from napari_cryoguard.defenses.training_data import parse_simulate_spec
    from napari_cryoguard.simulate import simulate_subtomograms

    return simulate_subtomograms(**parse_simulate_spec(args.simulate))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cryoguard evaluate``; returns the exit status (0, or 2 on a user error)."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    t0 = time.perf_counter()
    from napari_cryoguard import distributed

    try:
        main_rank = distributed.world()[0] == 0  # under torchrun only rank 0 prints
    except CryoGuardError:
        main_rank = True

    def log(msg: str) -> None:
        if not args.quiet and main_rank:
            print(msg, file=sys.stderr, flush=True)

    def show(ev: dict[str, Any]) -> None:
        b = "" if ev["budget"] is None else f" @ {ev['budget']:g}"
        log(
            f"[{ev['done']}/{ev['total']}] {ev['model']}: {ev['cell']}{b}"
            f"{' (cached)' if ev['cached'] else ''}"
        )

    try:
        set_threads(args.threads)
        suite = suite_from_args(args)
        if args.list_attacks:
            from napari_cryoguard.evaluate.suite import normalize_suite

            print(json.dumps(normalize_suite(suite, quick=args.quick), indent=1))
            return 0
        from napari_cryoguard.evaluate import evaluate

        metrics = evaluate(
            args.models,
            _data(args),
            attacks=suite,
            out=args.out,
            device=args.device,
            max_samples=args.max_samples,
            resume=not args.no_resume,
            progress=show,
            quick=args.quick,
            batch_size=args.batch_size,
            seed=args.seed,
            margins=not args.no_margins,
            margin_samples=args.margin_samples,
        )
    except CryoGuardError as exc:
        return fail("evaluate", exc, args.json and main_rank)
    out = Path(args.out)
    log(f"verdict {metrics['verdict']}; report: {out / 'report.html'}")
    if args.json and main_rank:
        from napari_cryoguard.evaluate.metrics import json_clean
        from napari_cryoguard.evaluate.output import summary_by_model

        summary = {
            "command": "evaluate",
            "ok": True,
            "out": str(out),
            "metrics": str(out / "metrics.json"),
            "report": str(out / "report.md"),
            "html": str(out / "report.html"),
            "verdict": metrics["verdict"],
            "models": summary_by_model(metrics),
            "cells_computed": metrics["timing"]["cells_computed"],
            "cells_cached": metrics["timing"]["cells_cached"],
            "seconds": round(time.perf_counter() - t0, 3),
        }
        print(json.dumps(json_clean(summary)), flush=True)
    return 0
