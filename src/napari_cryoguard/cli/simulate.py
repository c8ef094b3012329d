"""``cryoguard simulate`` and ``simulate-dataset``: a tomogram with its ground truth, or a
labelled subtomogram dataset, from the bundled templates
(:mod:`napari_cryoguard.simulate`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from napari_cryoguard.cli._common import AddCommand, Progress, log


def _add_physics(p: argparse.ArgumentParser, many_snr: bool = False) -> None:
    if many_snr:
        p.add_argument("--snr", type=float, nargs="+", default=[0.1],
                       help="signal-to-noise ratio(s) as a variance ratio var(signal)/var(noise) "
                       "(default 0.1; the papers use 0.5 to 0.01); several values make one block "
                       "of --per-class samples per class and SNR (seeds SEED, SEED+1, ...)")
    else:
        p.add_argument("--snr", type=float, default=0.1,
                       help="signal-to-noise ratio as a variance ratio var(signal)/var(noise) "
                       "(default 0.1; the papers use 0.5 to 0.01)")
    p.add_argument("--tilt", type=float, default=60.0,
                   help="tilt range in degrees: +-TILT is sampled, the rest is the missing "
                   "wedge (default 60)")
    p.add_argument("--voxel-size", type=float, default=10.0,
                   help="voxel size in Angstrom; templates are rescaled from 10 A (default 10)")
    p.add_argument("--defocus", type=float, default=-5.0,
                   help="defocus in micrometres, negative = underfocus (default -5, as in the "
                   "CB3D paper)")
    p.add_argument("--cs", type=float, default=2.0, help="spherical aberration in mm (default 2)")
    p.add_argument("--voltage", type=float, default=300.0,
                   help="acceleration voltage in kV (default 300)")
    p.add_argument("--classes", nargs="+", default=None, metavar="NAME",
                   help="template names to use (default: the bundled default classes; see "
                   "`cryoguard templates`)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed: the same seed gives the same data (default 0)")


def _physics_kwargs(args: argparse.Namespace) -> dict:
    kw = dict(snr=args.snr, tilt_range=args.tilt, voxel_size=args.voxel_size,
              defocus_um=args.defocus, cs_mm=args.cs, voltage_kv=args.voltage, seed=args.seed)
    if args.classes:
        kw["classes"] = list(args.classes)
    return kw


def cmd_simulate(args: argparse.Namespace) -> dict:
    import numpy as np

    from napari_cryoguard.io import write_picks, write_tomogram
    from napari_cryoguard.simulate import simulate_tomogram

    t0 = time.perf_counter()
    sim = simulate_tomogram(shape=tuple(args.shape), n_particles=args.particles,
                            progress=Progress("simulate"), **_physics_kwargs(args))
    t_sim = time.perf_counter() - t0
    out = write_tomogram(args.out, sim.volume, sim.voxel_size)
    truth = (Path(args.truth) if args.truth
             else Path(args.out).with_name(Path(args.out).stem + "_truth.star"))
    picks = sim.to_picks()
    picks.tomo_names = np.array([Path(args.out).stem] * len(picks))
    write_picks(truth, picks)
    log(args, f"wrote {out} ({'x'.join(map(str, sim.volume.shape))} ZYX, {sim.voxel_size} A) "
              f"and ground truth {truth} ({len(picks)} particles)")
    return {"tomogram": str(out), "truth": str(truth), "shape": list(sim.volume.shape),
            "n_particles": int(len(picks)), "class_names": list(sim.class_names),
            "voxel_size": float(sim.voxel_size), "seconds": {"simulate": round(t_sim, 3)}}


def cmd_simulate_dataset(args: argparse.Namespace) -> dict:
    import numpy as np

    from napari_cryoguard.data import DatasetWriter
    from napari_cryoguard.simulate.subtomograms import iter_simulated_blocks

    t0 = time.perf_counter()
    kwargs = _physics_kwargs(args)
    snrs = list(args.snr)
    params, sizes = [], []
    class_names: list[str] | None = None
    counts = None
    bar = Progress("simulate-dataset")
    writer: DatasetWriter | None = None
    try:
        for i, snr in enumerate(snrs):
            # one block per SNR, each with its own seed (seed + i), so blocks are independent;
            # each is simulated and written in blocks of 256 cubes (memory bounded by a block)
            kw = {**kwargs, "snr": snr, "seed": args.seed + i}
            n_block = 0
            for block in iter_simulated_blocks(n_per_class=args.per_class, cube=args.cube,
                                               normalize=not args.no_normalize, **kw):
                if writer is None:
                    class_names = list(block.class_names)
                    counts = np.zeros(len(class_names), dtype=np.int64)
                    writer = DatasetWriter(args.out, class_names=class_names,
                                           voxel_size=block.voxel_size,
                                           normalized=not args.no_normalize)
                writer.append(block.volumes, block.labels)
                counts += np.bincount(block.labels, minlength=len(class_names))
                n_block += len(block)
                bar(writer.n, args.per_class * len(class_names) * len(snrs))
            params.append(block.params)
            sizes.append(n_block)
        assert writer is not None and class_names is not None and counts is not None
        writer.meta = {"source": "simulate_subtomograms",
                       "params": params if len(params) > 1 else params[0],
                       "snr_per_sample": np.repeat(snrs, sizes).tolist()
                       if len(snrs) > 1 else None}
        t_sim = time.perf_counter() - t0
        out = writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    n = int(counts.sum())
    log(args, f"wrote {out}: {n} subtomograms of {args.cube}^3, {len(class_names)} classes"
              + (f", SNR {', '.join(map(str, snrs))}" if len(snrs) > 1 else ""))
    return {"dataset": str(out), "n": n, "cube": int(args.cube), "snr": snrs,
            "class_names": class_names, "per_class": counts.tolist(),
            "seconds": {"simulate": round(t_sim, 3)}}


def add_commands(add: AddCommand) -> None:
    p = add("simulate", "simulate a tomogram with particles from the bundled templates, and "
            "its ground truth", cmd_simulate)
    p.add_argument("--out", required=True, help="output tomogram (.mrc)")
    p.add_argument("--truth", default=None,
                   help="ground-truth picks (.star or .csv; default: <out stem>_truth.star "
                   "beside --out)")
    p.add_argument("--shape", type=int, nargs=3, default=[64, 256, 256], metavar=("Z", "Y", "X"),
                   help="tomogram shape in voxels, ZYX")
    p.add_argument("--particles", type=int, default=40, help="number of particles to place")
    _add_physics(p)

    p = add("simulate-dataset", "simulate a labelled subtomogram dataset (N per class) for "
            "training and tests", cmd_simulate_dataset)
    p.add_argument("--out", required=True, help="output dataset file (.npz)")
    p.add_argument("--per-class", type=int, default=100, help="subtomograms per class")
    p.add_argument("--cube", type=int, default=28, help="cube edge in voxels (the papers use 28)")
    p.add_argument("--no-normalize", action="store_true",
                   help="skip per-sample zero-mean unit-variance normalisation")
    _add_physics(p, many_snr=True)
