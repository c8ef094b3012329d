"""``cryoguard classify``: predictions of a trained classifier on dataset files, streamed
batch by batch (:func:`napari_cryoguard.classify.iter_classify_batches`), under torchrun
too."""

from __future__ import annotations

import argparse
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


def _classify_one(args: argparse.Namespace, path, out: Path, sess) -> dict:
    import numpy as np

    from napari_cryoguard.classify import (
        PredictionWriter,
        align_labels,
        domain_warnings,
        iter_classify_batches,
        load_model,
    )
    from napari_cryoguard.data import iter_rows, load_dataset
    from napari_cryoguard.distributed import join_parts, part_path, rank_rows

    want_dataset(path, "classify")
    ds = load_dataset(path, mmap=True)
    if len(ds) == 0:
        raise CryoGuardError(f"{path} holds no subtomograms to classify")
    loaded = load_model(args.model, device="cpu")
    warnings_ = domain_warnings(loaded, voxel_size=ds.voxel_size, cube=ds.volumes.shape[1],
                                normalized=ds.normalized)
    labels = align_labels(ds.labels, ds.class_names, loaded.class_names)
    class_names = loaded.class_names
    counts = np.zeros(len(class_names), dtype=np.int64)
    correct = known = 0
    notes: list[str] = []
    # under torchrun: this rank's whole batches, streamed to a part file joined by rank 0
    lo, hi = rank_rows(len(ds), args.batch_size, sess.rank, sess.size)
    target = part_path(out, sess.rank, sess.size) if sess.active else out
    t0 = time.perf_counter()
    bar = Progress(f"classify {Path(path).name}", enabled=not args.quiet)
    # streamed: one batch of cubes (memory-mapped input) and of probabilities at a time
    with PredictionWriter(target, class_names, with_labels=labels is not None,
                          with_coords=ds.coords is not None) as writer:
        for step in iter_classify_batches(
                loaded, iter_rows(ds.volumes[lo:hi], args.batch_size), hi - lo,
                normalized=ds.normalized, device=sess.device if sess.active else args.device,
                batch_size=args.batch_size, amp=args.amp, voxel_size=ds.voxel_size,
                resample=not args.no_resample, notes=notes):
            rows = slice(lo + step.start, lo + step.done)
            lab = None if labels is None else labels[rows]
            writer.write(step.probabilities, lab,
                         None if ds.coords is None else ds.coords[rows], start=rows.start)
            pred = step.probabilities.argmax(axis=1)
            counts += np.bincount(pred, minlength=len(class_names))[:len(class_names)]
            if lab is not None:
                k = lab >= 0
                known += int(k.sum())
                correct += int((pred[k] == lab[k]).sum())
            bar(step.done, step.total)
    if sess.active:
        gathered = sess.gather((counts, correct, known, notes))
        if sess.is_main:
            counts = sum(g[0] for g in gathered)
            correct = sum(g[1] for g in gathered)
            known = sum(g[2] for g in gathered)
            notes = list(dict.fromkeys(n for g in gathered for n in g[3]))
            join_parts([part_path(out, r, sess.size) for r in range(sess.size)], out)
        sess.barrier()
    log_domain(args, notes, warnings_)
    t_cls = time.perf_counter() - t0
    result = {"predictions": str(out), "dataset": str(path), "model": str(args.model),
              "n": int(len(ds)), "class_names": class_names,
              "predicted_counts": counts.tolist(),
              "notes": notes, "warnings": warnings_, "resampled": bool(notes),
              "seconds": {"classify": round(t_cls, 3)}}
    if sess.active:
        result["ranks"] = sess.size
    acc = correct / known if known else None
    if acc is not None:
        result["accuracy"] = round(acc, 4)
    log(args, f"classified {len(ds)} subtomograms with {args.model} in {t_cls:.2f} s"
              + (f": accuracy {acc:.3f}" if acc is not None else "") + f" -> {out}")
    return result


def cmd_classify(args: argparse.Namespace) -> dict:
    return per_dataset(args, ".csv", _classify_one)


def add_commands(add: AddCommand) -> None:
    p = add("classify", "classify the subtomograms of dataset files with a trained 3D CNN (runs "
            "under torchrun too)", cmd_classify)
    add_model_inputs(p, "dataset file(s) (.npz) from `cryoguard extract` or `simulate-dataset`, "
                     "or glob patterns (quoted)",
                     "subtomograms per forward pass (halved automatically on CUDA out-of-memory)")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    add_outputs(p, "predictions CSV: index, predicted class, per-class probabilities", ".csv")
