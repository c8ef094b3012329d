"""``cryoguard reproduce`` (being moved here from ``evaluate/reproduction.py``)."""

from __future__ import annotations

from collections.abc import Sequence


def build_parser():
    """The parser, without importing torch (``--help`` answers at once)."""
    from napari_cryoguard._evaluate_parser import reproduce_parser

    return reproduce_parser()


def main(argv: Sequence[str] | None = None) -> int:
    from napari_cryoguard.evaluate.reproduction import reproduce_main

    return reproduce_main(argv)
