"""Benchmark: classify from picks of a memory-mapped tomogram, extraction overlapped.

Usage::

    python benchmarks/bench_classify_stream.py [--picks 512] [--batch-size 32] [--repeats 3]
                                               [--model default] [--quick]

A tomogram (128x384x384 float32 of Gaussian noise, ``--quick``: 64x256x256) is written
as an MRC file in a temporary folder and opened memory-mapped
(:func:`napari_cryoguard.io.read_tomogram`); ``--picks`` random pick centres lie inside
it. In one run, interleaved, best of ``--repeats``, it measures subtomograms per second
of:

* **inference alone**: the cubes already extracted in memory, classified in blocks of
  ``--batch-size`` (:func:`napari_cryoguard.classify.iter_classify_batches`);
* **sequential**: each batch extracted from the memory map
  (:func:`napari_cryoguard.data.iter_extracted`), then classified;
* **overlapped**: the same, with extraction in a worker thread two batches ahead
  (:func:`napari_cryoguard.data.prefetch`), so the model never waits for the disk.

The page cache is warm (the file was just written), so extraction cost is the copy and
normalisation, not the disk. It checks that all three give the same probabilities.
Target (issue 14): overlapped >= 0.9x inference alone.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--picks", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from napari_cryoguard.classify import iter_classify_batches, load_model
    from napari_cryoguard.data import iter_extracted, prefetch
    from napari_cryoguard.io import read_tomogram, write_tomogram

    loaded = load_model(args.model)
    cube = loaded.cube
    vs = loaded.voxel_size or 10.0
    shape = (64, 256, 256) if args.quick else (128, 384, 384)
    n = args.picks // 4 if args.quick else args.picks
    rng = np.random.default_rng(0)
    half = cube // 2
    coords = np.stack([rng.uniform(half, s - half, n) for s in shape], axis=1).round()
    bs = args.batch_size
    print(f"model {args.model} ({cube}^3), {n} picks, batch {bs}, tomogram "
          f"{'x'.join(map(str, shape))} float32, torch threads {torch.get_num_threads()}, "
          f"device {args.device}")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tomo.mrc"
        write_tomogram(path, rng.standard_normal(shape, dtype=np.float32), vs)
        with read_tomogram(path) as tomo:
            data = tomo.data
            cubes = np.concatenate(list(iter_extracted(data, coords, cube, bs)))

            def run(blocks) -> tuple[float, np.ndarray]:
                t0 = time.perf_counter()
                probs = [step.probabilities for step in iter_classify_batches(
                    loaded, blocks, n, normalized=True, device=args.device, batch_size=bs)]
                return time.perf_counter() - t0, np.concatenate(probs)

            cases = {
                "inference alone": lambda: (cubes[lo:lo + bs] for lo in range(0, n, bs)),
                "sequential": lambda: iter_extracted(data, coords, cube, bs),
                "overlapped": lambda: prefetch(iter_extracted(data, coords, cube, bs), depth=2),
            }
            run(cases["inference alone"]())  # warm-up (allocator, kernels)
            best = {k: float("inf") for k in cases}
            results = {}
            for _ in range(args.repeats):
                for name, make in cases.items():
                    seconds, probs = run(make())
                    best[name] = min(best[name], seconds)
                    results[name] = probs
            data = None  # drop the map before the file goes
    ref = results["inference alone"]
    same = all(np.array_equal(ref, p) for p in results.values())
    base = n / best["inference alone"]
    print(f"{'case':<18} {'best s':>8} {'subtomo/s':>10} {'x alone':>8}")
    for name, seconds in best.items():
        rate = n / seconds
        print(f"{name:<18} {seconds:8.3f} {rate:10.1f} {rate / base:8.3f}")
    ratio = best["inference alone"] / best["overlapped"]
    print(f"probabilities identical in all three: {same}")
    print(f"overlapped / inference alone: {ratio:.3f}x (target >= 0.9x): "
          f"{'OK' if ratio >= 0.9 else 'MISSED'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
