"""The argument parser of ``cryoguard train``, without importing torch.

``cryoguard train --help`` builds only this parser, so it answers at once; the training
itself (:func:`napari_cryoguard.defenses.trainer.train_main`) imports torch when it runs.
"""

from __future__ import annotations

import argparse

__all__ = ["OPTIMIZERS", "SCHEDULES", "build_parser"]

#: optimizers and learning-rate schedules ``cryoguard train`` offers
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("none", "cosine", "step")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cryoguard train``."""
    p = argparse.ArgumentParser(
        prog="cryoguard train",
        description=(
            "Train a subtomogram classifier with a defense (standard, semi, ...) and "
            "write a self-describing .safetensors checkpoint. Streams JSON-lines "
            "events with --events; SIGTERM/SIGINT cancel cleanly (the current step "
            "finishes, a checkpoint marked cancelled is written, exit status 0). "
            "Runs unchanged under `torchrun --nproc_per_node K` (DDP)."
        ),
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--data",
        metavar="DATASET",
        help="labelled subtomogram dataset (.npz from `cryoguard extract` / `simulate-dataset`)",
    )
    src.add_argument(
        "--simulate",
        metavar="SPEC",
        help="simulate the dataset on the fly instead of --data, e.g. "
        "'n_per_class=50,snr=0.1,tilt=60,cube=28,seed=1' (keys of "
        "simulate_subtomograms; classes=1bxn+3j9i)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="architecture: cb3d, dsrf3d_v2, rb3d, autoencoder (default cb3d, "
        "or the --resume checkpoint's)",
    )
    p.add_argument(
        "--defense",
        default=None,
        help="defense (training objective), e.g. standard, semi (default "
        "standard, or the --resume checkpoint's); see --list",
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help="start from the architecture's small-width preset (quick CPU runs)",
    )
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a defense, model or recipe parameter (looked up in that order; "
        "prefix model./defense./recipe. to force); VALUE is JSON, else a "
        "string. E.g. --set labelled_fraction=0.1 --set "
        "model.conv_widths=[8,8,16,16,16]. Repeatable",
    )
    p.add_argument("--epochs", type=int, default=None, help="total epochs (default 20)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="samples per step per process (default 16, RAT paper)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default 1e-4 for adam, 0.005 for sgd)",
    )
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=None,
        help="adam (RAT / semi-supervised papers) or sgd with Nesterov momentum "
        "0.9 (CB3D paper) (default adam)",
    )
    p.add_argument("--weight-decay", type=float, default=None, help="L2 weight decay (default 0)")
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=None,
        help="learning-rate schedule per epoch (default none)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="fraction of each class held out for validation (default 0.2)",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=None,
        help="early stopping after N epochs without a lower validation loss, "
        "keeping the best weights (default 0 = off)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed for split, initial weights, shuffling, dropout (default 0)",
    )
    p.add_argument(
        "--robust-every",
        type=int,
        default=None,
        help="measure validation accuracy under --robust-attack every N epochs (default 0 = off)",
    )
    p.add_argument(
        "--robust-attack",
        default=None,
        help="attack for the robust accuracy (default pgd); its parameters via "
        "--set robust_params='{\"eps\": 0.1}'",
    )
    p.add_argument(
        "--amp", action="store_true", default=None, help="float16 mixed precision (CUDA only)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument(
        "--out",
        default=None,
        help="checkpoint to write (.safetensors; default "
        "cryoguard-<model>-<defense>.safetensors, or the --resume file); "
        "<stem>.state.safetensors beside it holds the optimizer state",
    )
    p.add_argument(
        "--no-state",
        action="store_true",
        help="write only the checkpoint, not <stem>.state.safetensors (a later --resume "
        "then starts the optimizer afresh)",
    )
    p.add_argument(
        "--step-interval",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="at most one step event per SECONDS (the last step of each epoch is always "
        "written; 0 = every step; default 0.5)",
    )
    p.add_argument(
        "--events",
        default=None,
        metavar="FILE|-",
        help="append JSON-lines events (start, step, epoch, checkpoint, note, "
        "done, cancelled, error) to FILE, or '-' for stdout",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="CKPT",
        help="continue a run from its checkpoint (model, defense and recipe "
        "default to the stored ones; e.g. raise --epochs)",
    )
    p.add_argument(
        "--init",
        default=None,
        metavar="CKPT",
        help="start from this checkpoint's model and weights (e.g. a simclr pre-training, "
        "or a standard model to fine-tune with a defense); a fresh optimizer and epoch count",
    )
    p.add_argument(
        "--list", action="store_true", help="list models, defenses and their parameters, and exit"
    )
    p.add_argument(
        "--json", action="store_true", help="print a one-line JSON summary on stdout at the end"
    )
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p
