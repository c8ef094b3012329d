"""``cryoguard evaluate`` (being moved here from ``evaluate/run.py``)."""

from __future__ import annotations

from collections.abc import Sequence


def build_parser():
    """The parser, without importing torch (``--help`` answers at once)."""
    from napari_cryoguard._evaluate_parser import evaluate_parser

    return evaluate_parser()


def main(argv: Sequence[str] | None = None) -> int:
    from napari_cryoguard.evaluate.run import evaluate_main

    return evaluate_main(argv)
