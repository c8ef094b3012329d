"""Adversarial training epochs against their bound: (attack steps + 1) x a standard epoch.

One epoch of ``at``, ``trades``, ``rat`` and ``mirst`` (their default parameters: 10 PGD
steps each, RAT two runs of 10) on the same model and data, against a ``standard``
epoch measured in the same run, interleaved (each round runs every defense once, in
turn). An epoch here is the trainer's inner loop (``defenses/trainer.py``): per batch,
``loss = defense.loss(model, batch)``, ``zero_grad``, ``backward``, optimizer step.

The bound of the issue is ``(steps + 1) x standard``: each attack step is one forward +
backward pass, plus the training pass. Two defenses score more than one batch in their
training pass by construction -- TRADES and RAT score ``x`` and ``x_adv`` (2N), MIRST
(MIRST-DM Eq. (2)) the clean batch and its ``m`` = 4 instances ((m + 1) N = 5N) -- and
TRADES and RAT also run one clean forward pass (no gradient) for their KL target; the
"work bound" adds those: ``steps + (outer batch multiple) + 1/3 per clean target pass``
standard epochs (a forward pass costs about a third of a forward + backward), for MIRST
``steps + instances + 1``. MIRST's ``fuse`` (default on) shares the trunk's forward
passes at the instances with the PGD run (``defenses/mirst.py``): fewer forward passes,
the same backward passes; ``mirst/fuse=false`` runs it without (any ``name/key=value``
sets a parameter). Target: <= 1.15x the bound.

The forward and backward passes each defense really makes are counted, in one extra
untimed batch, by hooks on the model's first layer (a forward hook, and a gradient hook
on its output): samples per batch in units of the batch size N (a standard step: 1 N
forward, 1 N backward).

Usage::

    python benchmarks/bench_epochs.py            # CPU: 48 cubes of 28^3, batch 16, 3 rounds
    python benchmarks/bench_epochs.py --quick    # 32 cubes, 2 rounds
    python benchmarks/bench_epochs.py --device cuda --size paper --samples 256 --batch 64

Times are the best of the rounds, as wall-clock and as this process's CPU time (one
torch thread on the CPU unless ``--threads``; on a shared machine the CPU time is the
steadier figure).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from napari_cryoguard.defenses import Batch, ModelHandle, get_defense
from napari_cryoguard.defenses.base import unwrap
from napari_cryoguard.device import prepare_model, resolve_device
from napari_cryoguard.models import build_model
from napari_cryoguard.models.registry import size_preset

#: defense -> (attack steps per batch, work bound in standard epochs)
BOUNDS = {
    "standard": (0, 1.0),
    "at": (10, 10 + 1.0),
    "trades": (10, 10 + 2.0 + 1 / 3),
    "rat": (20, 20 + 2.0 + 1 / 3),
}


def bounds(name: str, defense) -> tuple[int, float, str]:
    """(attack steps, work bound in standard epochs, how the work bound is made)."""
    if name in ("mirst", "rst"):
        p = defense.params
        m = len(p.instances()[0])
        return p.steps, float(p.steps + m + 1), "steps + instances + 1"
    steps, work = BOUNDS.get(name, (0, 1.0))
    return steps, work, "work bound"


def parse_spec(spec: str) -> tuple[str, dict]:
    """``name`` or ``name/key=value/...`` -> (name, parameters)."""
    from napari_cryoguard.params import parse_value

    name, *sets = spec.split("/")
    params = {}
    for kv in sets:
        key, _, value = kv.partition("=")
        params[key.strip()] = parse_value(value.strip())
    return name.strip(), params


def count_passes(model: ModelHandle, defense, opt, xs, ys, bs: int) -> tuple[float, float]:
    """(forward, backward) samples through the model's first layer in one training step,
    in units of the batch size: counted by hooks, not assumed."""
    plain = unwrap(model)
    first = next(m for m in plain.modules() if not list(m.children()) and list(m.parameters()))
    counts = [0, 0]

    def on_backward(g: torch.Tensor) -> None:
        counts[1] += g.shape[0]

    def on_forward(_m, _inp, out) -> None:
        counts[0] += out.shape[0]
        if out.requires_grad:
            out.register_hook(on_backward)

    hook = first.register_forward_hook(on_forward)
    try:
        epoch(model, defense, opt, xs[:bs], ys[:bs], bs)
    finally:
        hook.remove()
    n = min(bs, xs.shape[0])
    return counts[0] / n, counts[1] / n


def epoch(model: ModelHandle, defense, opt, xs: torch.Tensor, ys: torch.Tensor, bs: int) -> None:
    """One epoch of the trainer's inner loop over ``xs`` in batches of ``bs``."""
    model.train()
    for step, s in enumerate(range(0, xs.shape[0], bs)):
        x, y = xs[s : s + bs], ys[s : s + bs]
        batch = Batch(x=x, y=y, index=torch.arange(s, s + x.shape[0], device=x.device), step=step)
        loss, logs = defense.loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        float(loss.detach().item())  # the trainer logs the loss every step
        for v in logs.values():
            float(v)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default="cb3d")
    ap.add_argument("--size", default="small (CPU-friendly)")
    ap.add_argument("--samples", type=int, default=None, help="48 (quick: 32)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--cube", type=int, default=28)
    ap.add_argument("--reps", type=int, default=None, help="rounds (3; quick: 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (CPU: 1)")
    ap.add_argument("--defenses", default="at,trades,rat,mirst")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    dev = resolve_device(args.device)
    if args.threads or dev.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    n = args.samples or (32 if args.quick else 48)
    reps = args.reps or (2 if args.quick else 3)
    torch.manual_seed(0)
    model = build_model(args.arch, 3, args.cube, **size_preset(args.size, args.arch))
    model = prepare_model(model, dev)
    handle = ModelHandle(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(n, 1, args.cube, args.cube, args.cube, generator=gen).to(dev)
    ys = (torch.arange(n) % 3).to(dev)
    names = ["standard", *[d.strip() for d in args.defenses.split(",") if d.strip()]]
    defenses = {}
    for spec in names:
        name, params = parse_spec(spec)
        defenses[spec] = get_defense(name, **params)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"bench_epochs: {args.arch} ({args.size}), {n} cubes of {args.cube}^3, batch "
        f"{args.batch}, {dev}, torch {torch.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} thread(s), load average {load:.1f} at start"
    )
    for d in defenses.values():  # warm-up
        epoch(handle, d, opt, xs[: args.batch], ys[: args.batch], args.batch)
    passes = {k: count_passes(handle, d, opt, xs, ys, args.batch) for k, d in defenses.items()}
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    for _ in range(reps):
        for name, d in defenses.items():
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            w0, c0 = time.perf_counter(), time.process_time()
            epoch(handle, d, opt, xs, ys, args.batch)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    w_std, c_std = min(wall["standard"]), min(cpu["standard"])
    print(f"standard epoch: wall {w_std:.3f} s, cpu {c_std:.3f} s (best of {reps})")
    fwd, bwd = passes["standard"]
    print(
        f"  passes per batch (hooks on the first layer): standard forward {fwd:.1f} N, "
        f"backward {bwd:.1f} N"
    )
    for name in names[1:]:
        steps, work, how = bounds(parse_spec(name)[0], defenses[name])
        w, c = min(wall[name]), min(cpu[name])
        fwd, bwd = passes[name]
        print(
            f"  {name:<16} wall {w:7.3f} s  cpu {c:7.3f} s  = {c / c_std:5.2f} standard epochs "
            f"(cpu; wall {w / w_std:5.2f});  vs (steps + 1) = {steps + 1}: "
            f"cpu {c / c_std / (steps + 1):4.2f}x  wall {w / w_std / (steps + 1):4.2f}x;  "
            f"vs {how} {work:.2f}: cpu {c / c_std / work:4.2f}x;  "
            f"passes: forward {fwd:.1f} N, backward {bwd:.1f} N"
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"target <= 1.15x; load average {load:.1f} at the end")


if __name__ == "__main__":
    main()
