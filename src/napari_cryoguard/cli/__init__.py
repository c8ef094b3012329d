"""The ``cryoguard`` command line: a thin layer over the core, one module per command group.

============================  ==========================================================
module                        commands
============================  ==========================================================
:mod:`.simulate`              ``simulate``, ``simulate-dataset``
:mod:`.picking`               ``pick``, ``extract``
:mod:`.classify`              ``classify``
:mod:`.attack`                ``attack``
:mod:`.merge`                 ``merge``
:mod:`.catalog`               ``models``, ``attacks``, ``templates``
:mod:`.demo`                  ``demo``
:mod:`.train`                 ``train`` (its own parser, :data:`_OWN_PARSER`)
:mod:`.evaluate`              ``evaluate`` (its own parser)
:mod:`.reproduce`             ``reproduce`` (its own parser)
============================  ==========================================================

What they share (options, progress, the per-input runner, errors) is in
:mod:`._common`. Every command prints progress to stderr; with ``--json`` it prints
exactly one line of JSON to stdout (``{"command": ..., "ok": true, ...counts, paths,
timings...}``). A :class:`~napari_cryoguard.CryoGuardError` (bad input a user can fix)
prints one clear message and exits with status 2 (with ``--json`` the line carries
``"ok": false`` and ``"error"``); anything else is a bug and shows its traceback.

Building the parser imports no torch, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence

from napari_cryoguard.cli import attack, catalog, classify, demo, merge, picking, simulate
from napari_cryoguard.cli._common import (
    command_adder,
    data_option,
    fail,
    os_error,
    run_command,
    want_dataset,
)
from napari_cryoguard.errors import CryoGuardError

__all__ = ["build_parser", "main"]

#: commands whose parser and runner live in their own module ``cli/<name>.py``: its
#: ``build_parser()`` (torch-free) and ``main(argv)`` are the interface
_OWN_PARSER = {
    "train": "train a classifier with a defense, in the background or on a cluster "
             "(`cryoguard train --help` for its options)",
    "evaluate": "robustness evaluation of checkpoints on a dataset: attacks at several "
                "budgets, F1, confusion, margins, sanity checks; report.md/.html, plots, "
                "metrics.json (`cryoguard evaluate --help`)",
    "reproduce": "small-scale reproductions of the five papers' comparisons on the "
                 "simulator, with the papers' numbers beside ours (`cryoguard reproduce --help`)",
}
#: the command groups of this package, in the order of ``cryoguard --help``
_GROUPS = (simulate, picking, classify, attack, merge, catalog)


def build_parser() -> argparse.ArgumentParser:
    """The ``cryoguard`` parser with every command (torch-free)."""
    parser = argparse.ArgumentParser(
        prog="cryoguard",
        description="Can this subtomogram classifier be trusted? Simulate, pick, extract, "
        "classify, attack and robustly train on cryo-ET subtomograms.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add = command_adder(sub)
    for group in _GROUPS:
        group.add_commands(add)
    for name, help in _OWN_PARSER.items():
        sub.add_parser(name, add_help=False, help=help)
    demo.add_commands(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cryoguard`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    previous = warnings.formatwarning
    warnings.formatwarning = _warning_line(args[0] if args else "")
    try:
        return _main(args)
    except OSError as exc:
        return fail(args[0] if args else "", os_error(exc), "--json" in args)
    finally:
        warnings.formatwarning = previous


def _warning_line(command: str):
    """Warnings on stderr as one line each, ``cryoguard <command>: warning: <text>``
    (Python's default adds the source file, line and code: two lines a user cannot use)."""

    def fmt(message, category, filename, lineno, line=None) -> str:
        text = " ".join(str(message).split())
        return f"cryoguard {command}: warning: {text}\n".replace("cryoguard : ", "cryoguard: ")

    return fmt


def _main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    if command in ("train", "evaluate") and data_option(argv) is not None:
        try:
            want_dataset(data_option(argv), f"{command} --data")
        except CryoGuardError as exc:
            return fail(command, exc, "--json" in argv)
    if command in _OWN_PARSER:
        module = importlib.import_module(f"napari_cryoguard.cli.{command}")
        if "-h" in argv[1:] or "--help" in argv[1:]:
            module.build_parser().parse_args(argv[1:])
        return module.main(argv[1:])
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
