"""``cryoguard reproduce``: its options, and the mapping of them onto
:func:`napari_cryoguard.evaluate.reproduce`.

:func:`build_parser` imports no torch (``--help`` answers at once); :func:`main` runs
the reproduction, prints progress on stderr and, with ``--json``, one summary line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_cryoguard.cli._common import fail
from napari_cryoguard.cli._run_options import add_run_options, set_threads
from napari_cryoguard.errors import CryoGuardError

__all__ = ["build_parser", "main"]


#: what ``cryoguard reproduce --help`` says first
DESCRIPTION = (
    "Small-scale reproductions of the papers' comparisons on simulated data: (a) CB3D "
    "accuracy vs SNR/tilt, (b) semi-supervised vs supervised, (c) natural/AT/TRADES/RAT, "
    "(d) RST vs MIRST with/without drop-max, (e) IMA vs AT with margins. Writes "
    "report.md, report.html, plots and metrics.json with the paper's numbers beside ours "
    "and a verdict per claimed direction. Resumable."
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cryoguard reproduce``."""
    p = argparse.ArgumentParser(prog="cryoguard reproduce", description=DESCRIPTION)
    p.add_argument(
        "--out", required=True, help="output folder (report, plots, checkpoints, metrics.json)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes (24/8 samples per class, 4 epochs, tiny widths, few attack steps): "
        "minutes on 2 CPU cores, numbers not meaningful",
    )
    p.add_argument(
        "--parts",
        default=None,
        help="which parts to run, letters from 'abcde' (default: all), e.g. --parts c",
    )
    p.add_argument(
        "--combine",
        nargs="+",
        metavar="RUN",
        default=None,
        help="instead of running: put the claims of two or more finished runs that differ "
        "only in --seed side by side (each seed's verdict and a count), written to "
        "<out>/seeds.md, seeds.html and seeds.json",
    )
    add_run_options(
        p,
        device="cpu",
        device_help="cpu (default), cuda, cuda:1, mps or auto",
        seed_help="seed of the data, training and attacks",
        resume_help="recompute the requested parts instead of reusing <out>",
        threads_note="; 1 avoids oversubscription on a machine shared with other jobs",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cryoguard reproduce``; returns the exit status (0, or 2 on a user error)."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    t0 = time.perf_counter()

    def show(ev: dict[str, Any]) -> None:
        if not args.quiet:
            print(f"[{ev['part']}] {ev['message']}", file=sys.stderr, flush=True)

    if args.combine is not None:
        return _combine(args)
    try:
        set_threads(args.threads)
        from napari_cryoguard.evaluate.reproduction import PARTS, reproduce

        metrics = reproduce(
            args.out,
            quick=args.quick,
            parts=PARTS if args.parts is None else args.parts,
            device=args.device,
            seed=args.seed,
            progress=show,
            resume=not args.no_resume,
        )
    except CryoGuardError as exc:
        return fail("reproduce", exc, args.json)
    out = Path(args.out)
    if not args.quiet:
        print(f"report: {out / 'report.html'}", file=sys.stderr, flush=True)
    if args.json:
        from napari_cryoguard.evaluate.metrics import json_clean

        summary = {
            "command": "reproduce",
            "ok": True,
            "out": str(out),
            "quick": bool(args.quick),
            "parts": list(metrics["parts"]),
            "summary": metrics["summary"],
            "report": str(out / "report.md"),
            "html": str(out / "report.html"),
            "metrics": str(out / "metrics.json"),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        print(json.dumps(json_clean(summary)), flush=True)
    return 0


def _combine(args: argparse.Namespace) -> int:
    """``--combine``: the seeds' claims side by side (no training, no torch)."""
    from napari_cryoguard.evaluate.reproduction.seeds import combine_seeds

    try:
        res = combine_seeds(args.combine, args.out)
    except CryoGuardError as exc:
        return fail("reproduce", exc, args.json)
    out = Path(args.out)
    if not args.quiet:
        print(f"seeds {res['seeds']}: {out / 'seeds.md'}", file=sys.stderr, flush=True)
    if args.json:
        print(
            json.dumps(
                {
                    "command": "reproduce",
                    "ok": True,
                    "seeds": res["seeds"],
                    "parts": list(res["parts"]),
                    "report": str(out / "seeds.md"),
                }
            ),
            flush=True,
        )
    return 0
