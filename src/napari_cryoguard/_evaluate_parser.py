"""The argument parsers of ``cryoguard evaluate`` and ``cryoguard reproduce``, without
importing torch, so that their ``--help`` answers at once (the commands themselves, in
:mod:`napari_cryoguard.evaluate.run` and :mod:`napari_cryoguard.evaluate.reproduction`,
import torch when they run)."""

from __future__ import annotations

import argparse

__all__ = ["PARTS", "SUITES", "evaluate_parser", "reproduce_parser"]

#: the parts of ``cryoguard reproduce``, one letter each (a-e: the five papers' comparisons)
PARTS = "abcde"
#: the named attack suites of ``cryoguard evaluate --suite`` (:mod:`napari_cryoguard.evaluate.suite`)
SUITES = ("default", "autoattack")


def evaluate_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cryoguard evaluate``."""
    p = argparse.ArgumentParser(
        prog="cryoguard evaluate",
        description=(
            "Evaluate classifiers' robustness on a labelled dataset: sanity checks, clean "
            "accuracy with per-class F1/sensitivity and confusion matrices, accuracy under "
            "attacks at several budgets, IMA margins, reconstruction error. Writes "
            "metrics.json, report.md, report.html and PNG plots; resumable."
        ),
    )
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
        "label=PGD-margin). Bounded attacks (fgsm, pgd, bim, cw_linf) run once per "
        "budget; minimal ones (deepfool, cw, uniform_noise, salt_pepper, bpgd) once, "
        "read at each budget",
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
    p.add_argument(
        "--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps"
    )
    p.add_argument("--batch-size", type=int, default=32, help="samples per attack batch")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample selection")
    p.add_argument(
        "--no-resume", action="store_true", help="ignore <out>/state.json and recompute every cell"
    )
    p.add_argument("--no-margins", action="store_true", help="skip the IMA margin estimate")
    p.add_argument(
        "--margin-samples",
        type=int,
        default=None,
        help="correctly classified samples for the BPGD margin estimate (64; quick 16)",
    )
    p.add_argument(
        "--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)"
    )
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def reproduce_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cryoguard reproduce``."""
    p = argparse.ArgumentParser(
        prog="cryoguard reproduce",
        description=(
            "Small-scale reproductions of the papers' comparisons on simulated data: (a) CB3D "
            "accuracy vs SNR/tilt, (b) semi-supervised vs supervised, (c) natural/AT/TRADES/RAT, "
            "(d) RST vs MIRST with/without drop-max, (e) IMA vs AT with margins. Writes "
            "report.md, report.html, plots and metrics.json with the paper's numbers beside ours "
            "and a verdict per claimed direction. Resumable."
        ),
    )
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
        default=PARTS,
        help="which parts to run, letters from 'abcde' (default: all), e.g. --parts c",
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, mps or auto")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, training and attacks")
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="recompute the requested parts instead of reusing <out>",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch (0: torch's default); 1 avoids oversubscription "
        "on a machine shared with other jobs",
    )
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p
