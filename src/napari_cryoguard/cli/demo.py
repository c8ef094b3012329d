"""``cryoguard demo``: the Qt-free demo pipeline (:func:`napari_cryoguard.demo.run_pipeline`),
then its result shown in napari (:func:`napari_cryoguard._napari.demo.show_demo`), or,
with ``--headless``, drawn once into a screenshot. ``make demo`` runs this command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_cryoguard.cli._common import AddCommand, log


def cmd_demo(args: argparse.Namespace) -> dict:
    from napari_cryoguard.demo import run_pipeline

    out = Path(args.out)
    result = run_pipeline(out, seed=args.seed, log=lambda m: log(args, m))
    from napari_cryoguard._napari.demo import show_demo

    shot = show_demo(result, out=out, headless=args.headless)
    if shot is not None:
        result.summary["screenshot"] = str(shot)
        log(args, f"screenshot: {shot}")
    (out / "report.json").write_text(json.dumps(result.summary, indent=2))
    return result.summary


def add_commands(add: AddCommand) -> None:
    p = add("demo", "the demo: simulate a tomogram, pick, extract, and show it all in napari",
            cmd_demo)
    p.add_argument("--out", default="demo-output", help="folder for the demo's outputs")
    p.add_argument("--headless", action="store_true",
                   help="no interactive window: run the pipeline, write outputs and a screenshot "
                   "PNG (needs an X server, e.g. xvfb-run)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the demo tomogram")
    p.set_defaults(out_is_folder=True)  # --out is a folder: not checked as an output file
