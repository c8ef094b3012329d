"""``cryoguard attack``: one registered attack on the subtomograms of dataset files
(:func:`napari_cryoguard.attacks.iter_attack_dataset`), under torchrun too; results
streamed to an ``.npz`` (:class:`~napari_cryoguard.attacks.dataset.AttackResultWriter`).
``cryoguard attacks`` (:mod:`napari_cryoguard.cli.catalog`) lists the attacks."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from napari_cryoguard.cli._common import (
    AddCommand,
    Progress,
    add_model_inputs,
    add_outputs,
    log,
    log_domain,
    per_dataset,
    want_dataset,
)
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.params import Norm, choices_of, parse_sets

#: the attack parameters that have their own option (the rest go through --set)
_OWN_OPTIONS = ("eps", "eps_unit", "norm", "steps", "step_size")


def attack_params(args: argparse.Namespace) -> dict:
    """The attack's keyword arguments from ``--eps`` ... ``--step-size`` and ``--set``.

    An own option the attack does not have is refused with its parameter list; ``--set``
    keys are checked by the attack's parameter class itself.
    """
    from napari_cryoguard.attacks import get_attack_params

    fields = {f.name for f in dataclasses.fields(get_attack_params(args.attack))}
    params = {}
    for key in _OWN_OPTIONS:
        value = getattr(args, key)
        if value is not None:
            if key not in fields:
                raise CryoGuardError(f"attack {args.attack!r} has no parameter {key!r}; "
                                     f"its parameters: {', '.join(sorted(fields))}")
            params[key] = value
    params.update(parse_sets(args.set))
    return params


def _attack_one(args: argparse.Namespace, path, out: Path, sess) -> dict:
    import numpy as np

    from napari_cryoguard._progress import drain
    from napari_cryoguard.attacks import iter_attack_dataset
    from napari_cryoguard.attacks.base import AttackResult
    from napari_cryoguard.attacks.dataset import AttackResultWriter
    from napari_cryoguard.classify import (
        PreparedVolumes,
        align_labels,
        domain_warnings,
        load_model,
    )
    from napari_cryoguard.data import load_dataset
    from napari_cryoguard.device import predict
    from napari_cryoguard.distributed import join_parts, part_path, rank_rows

    want_dataset(path, "attack")
    ds = load_dataset(path, mmap=True)
    loaded = load_model(args.model, device="cpu")
    params = attack_params(args)
    warnings_ = domain_warnings(loaded, voxel_size=ds.voxel_size, cube=ds.volumes.shape[1],
                                normalized=ds.normalized)
    # prepared (resampled, normalised) batch by batch as the attack reads them
    volumes = PreparedVolumes(loaded, ds.volumes, ds.normalized, voxel_size=ds.voxel_size,
                              resample=not args.no_resample)
    notes = volumes.notes
    log_domain(args, notes, warnings_)
    labels = align_labels(ds.labels, ds.class_names, loaded.class_names)
    indices = np.arange(len(ds)) if not args.indices else np.asarray(args.indices, dtype=np.int64)
    if len(indices) and (indices.min() < 0 or indices.max() >= len(ds)):
        raise CryoGuardError(f"--indices must lie in 0..{len(ds) - 1}")
    if len(indices) == 0:
        raise CryoGuardError(f"{path}: no subtomograms to attack")
    device = sess.device if sess.active else args.device
    # under torchrun: this rank's whole batches of the indices
    lo, hi = rank_rows(len(indices), args.batch_size, sess.rank, sess.size)
    mine = indices[lo:hi]
    t0 = time.perf_counter()
    if len(mine) and (labels is None or (labels[mine] < 0).any()):
        # unlabelled samples are attacked against the model's own prediction
        pred = np.concatenate([
            predict(loaded.model, volumes[mine[i:i + args.batch_size]], device=device).argmax(1)
            for i in range(0, len(mine), args.batch_size)])
        full = np.full(len(ds), -1, dtype=np.int64) if labels is None else labels.copy()
        sel = full[mine]
        full[mine] = np.where(sel >= 0, sel, pred)
        labels = full
    bar = Progress(f"attack {args.attack}", enabled=not args.quiet)
    target = part_path(out, sess.rank, sess.size) if sess.active else out
    writer = AttackResultWriter(target)
    try:
        res = None
        if len(mine):
            res = drain(iter_attack_dataset(loaded.model, volumes, labels, args.attack,
                                            batch_size=args.batch_size, device=device,
                                            indices=mine, on_batch=writer.add,
                                            keep_inputs=False, **params), bar)
        if sess.active:
            writer.close({})
            gathered = sess.gather(res)
            if sess.is_main:
                res = AttackResult.concatenate([r for r in gathered if r is not None])
        if sess.is_main:
            summary = res.summary()
            meta = {"attack": res.name, "params": res.params, "norm_name": res.norm_name,
                    "steps": res.steps, "targeted": res.targeted, "model": str(args.model),
                    "class_names": loaded.class_names, "dataset": str(path),
                    "summary": summary}
            if sess.active:
                join_parts([part_path(out, r, sess.size) for r in range(sess.size)], out,
                           metadata=json.dumps(meta, default=str))
            else:
                writer.close(meta)
        sess.barrier()
    except BaseException:
        writer.abort()
        raise
    if not sess.is_main:
        return {"result": str(out), "rank": sess.rank}
    t_att = time.perf_counter() - t0
    log(args, f"{args.attack} on {summary['n']} subtomograms: success rate "
              f"{summary['success_rate']:.3f}, accuracy {summary['accuracy_before']:.3f} -> "
              f"{summary['accuracy_after']:.3f}, mean {summary['norm']} norm "
              f"{summary['mean_norm']:.4g} -> {out}")
    result = {"result": str(out), "dataset": str(path), "model": str(args.model),
              **{k: v for k, v in summary.items() if k != "n"}, "n": summary["n"],
              "params": res.params, "notes": notes, "warnings": warnings_,
              "resampled": bool(notes), "seconds": {"attack": round(t_att, 3)}}
    if sess.active:
        result["ranks"] = sess.size
    return result


def cmd_attack(args: argparse.Namespace) -> dict:
    if Path(args.out or "x.npz").suffix.lower() != ".npz":
        raise CryoGuardError(f"attack results are written as .npz, got {Path(args.out).name}")
    return per_dataset(args, ".npz", _attack_one)


def add_commands(add: AddCommand) -> None:
    p = add("attack", "attack a classifier on the subtomograms of dataset files (runs under "
            "torchrun too)", cmd_attack)
    add_model_inputs(p, "dataset file(s) (.npz) or glob patterns (quoted); labelled samples "
                     "are attacked against their label, unlabelled ones against the model's "
                     "prediction", "samples per batch")
    p.add_argument("--attack", required=True,
                   help="attack name; `cryoguard attacks` lists the registered attacks with "
                   "their parameters and defaults")
    p.add_argument("--eps", type=float, default=None,
                   help="budget, in --eps-unit units (default: the attack's, from its paper)")
    p.add_argument("--eps-unit", choices=["normalized", "range"], default=None, dest="eps_unit",
                   help="normalized: the data's z-score units (the default); range: a fraction "
                   "of each subtomogram's intensity range (max - min), the papers' unit for "
                   "[0, 1] images")
    p.add_argument("--norm", choices=list(choices_of(Norm) or ()), default=None,
                   help="distance measure, for attacks that have both (default: the attack's)")
    p.add_argument("--steps", type=int, default=None, help="iterations (default: the attack's)")
    p.add_argument("--step-size", type=float, default=None, dest="step_size",
                   help="step per iteration (default: the attack's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any other attack parameter (`cryoguard attacks` lists them), VALUE as "
                   "JSON (e.g. --set loss=\"margin\" --set bounds=\"sample\"); repeatable")
    p.add_argument("--indices", type=int, nargs="+", default=None,
                   help="attack only these samples (0-based rows of the dataset)")
    add_outputs(p, "result file (.npz: x_adv, perturbation, predictions, success, norms, "
                "indices, and a JSON metadata string)", ".npz")
