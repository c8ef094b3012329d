"""``cryoguard train`` (being moved here from ``defenses/trainer.py``)."""

from __future__ import annotations

from collections.abc import Sequence


def build_parser():
    """The parser, without importing torch (``--help`` answers at once)."""
    from napari_cryoguard._train_parser import build_parser as parser

    return parser()


def main(argv: Sequence[str] | None = None) -> int:
    from napari_cryoguard.defenses.trainer import train_main

    return train_main(argv)
