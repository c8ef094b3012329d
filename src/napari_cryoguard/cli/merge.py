"""``cryoguard merge``: per-tomogram outputs of ``--out-dir`` runs joined into one file
(:func:`napari_cryoguard.batch.merge_outputs`)."""

from __future__ import annotations

import argparse

from napari_cryoguard.cli._common import AddCommand, log


def cmd_merge(args: argparse.Namespace) -> dict:
    from napari_cryoguard.batch import merge_outputs

    summary = merge_outputs(args.inputs, args.out)
    log(args, f"merged {len(summary['inputs'])} {summary['kind']} files ({summary['n']} rows) "
              f"-> {summary['merged']}")
    return summary


def add_commands(add: AddCommand) -> None:
    p = add("merge", "join per-tomogram outputs (datasets, attack results, predictions, picks) "
            "into one file", cmd_merge)
    p.add_argument("inputs", nargs="+",
                   help="output folders (their files with --out's suffix), files or glob "
                   "patterns; joined in file-name order")
    p.add_argument("--out", required=True,
                   help="merged file: .npz (datasets or attack results), .csv (predictions, "
                   "with a source column; or picks) or .star (picks)")
