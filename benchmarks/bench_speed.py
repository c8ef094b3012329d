"""Model-bound speed: our forward+backward and attacks against plain fp32 PyTorch, same model.

Everything is measured in one process, interleaved (each round runs every variant once,
in turn), and reported as the best wall-clock and the best CPU time of ``--reps`` rounds
with their ratios to a baseline measured in the same run (one torch thread on the CPU
unless ``--threads`` says otherwise; on a shared machine the CPU-time ratio is the
steadier one):

1. **forward + backward of each architecture** (``cb3d``, ``dsrf3d_v2``, ``rb3d``,
   ``autoencoder`` at the ``small (CPU-friendly)`` widths on the CPU, the paper's on a
   GPU): the plain fp32 contiguous model vs ours (``build_model`` + ``prepare_model``:
   ``channels_last_3d`` weights where the device's decision says so, with the models'
   fast paths that come with that format, see ``napari_cryoguard.device``; on CUDA also
   ours with bf16 autocast). Two workloads: the attack's (eval mode, gradient w.r.t. the
   input only) and training's (train mode, weight gradients). Target <= 0.7x on CPU.
   The largest difference of logits and input gradients to the plain model is printed,
   and in train mode (the same dropout seed for both) that of the weight gradients.
2. **attacks on the bundled ``cb3d-default``** (or a cb3d at the preset's widths):
   PGD-10 (L-inf, random start): ours (``run_attack``, which also returns the clean and
   adversarial predictions) vs the plain 12-line fp32 loop below (the baseline: ten
   forward+backward passes and nothing else) vs torchattacks PGD and foolbox LinfPGD,
   both given the plain contiguous model as a user would; CW-L-inf (10 steps, MIRST-DM)
   vs the same plain loop on the margin loss; CW-L2 (one search step of 10 Adam
   iterations) vs torchattacks CW and foolbox L2CarliniWagnerAttack with the same
   settings (the forward passes each made are counted and the time per pass compared
   too: torchattacks' CW returns as soon as its loss rises at a check, which it does
   every step when ``steps <= 10``, so it may stop after a few of the 10 steps); APGD-CE (10 steps) when ``apgd-ce`` is registered, vs torchattacks APGD.
   Target for ours: <= 0.8x the plain loop.

torchattacks clamps to [0, 1]: it gets ``model(lo + (hi - lo) * u)`` with the data clipped
to [lo, hi] = [-4, 4] and budgets divided by 8 (as in ``bench_attacks.py``); foolbox gets
``bounds=(lo, hi)``. Those libraries are optional: one that cannot be imported is
reported and skipped.

Usage::

    python benchmarks/bench_speed.py                 # CPU: batch 16, 5 rounds (minutes)
    python benchmarks/bench_speed.py --quick         # batch 8, 3 rounds, fewer runners
    python benchmarks/bench_speed.py --device cuda   # batch 64, paper widths, 5 rounds

On a shared machine the figures move from run to run; the ratios, measured interleaved,
move less. Nothing is written to files: copy the printed lines.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from napari_cryoguard.attacks import available_attacks, run_attack
from napari_cryoguard.device import (
    apply_memory_format,
    autocast_context,
    model_memory_format,
    prepare_model,
    resolve_device,
)
from napari_cryoguard.models import build_model
from napari_cryoguard.models.registry import size_preset

LO, HI = -4.0, 4.0
EPS, STEP = 0.03, 0.003


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def count_passes(models: list[nn.Module], fn: Callable[[], object]) -> int:
    """Forward passes of ``models`` (their top-level ``forward`` calls) made by ``fn()``."""
    calls = [0]

    def hook(module, inputs):
        calls[0] += 1

    handles = [m.register_forward_pre_hook(hook) for m in models]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return calls[0]


def interleaved(
    runners: dict[str, Callable[[], object]], reps: int, dev: torch.device, warmup: bool = True
) -> dict[str, list[tuple[float, float]]]:
    """Run every runner once per round, in turn; (wall, CPU) seconds of each round.

    The CPU time is this process's (``time.process_time``): on a loaded machine it
    moves much less than the wall-clock time, which includes the time the other
    processes had the cores.
    """
    if warmup:
        for fn in runners.values():
            fn()
            _sync(dev)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runners}
    for _ in range(reps):
        for name, fn in runners.items():
            _sync(dev)
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            _sync(dev)
            times[name].append((time.perf_counter() - w0, time.process_time() - c0))
    return times


def report(
    title: str, times: dict[str, list[tuple[float, float]]], baseline: str, target: str = ""
) -> None:
    """Best wall and CPU seconds of each runner and their ratios to ``baseline``'s."""
    def best(name: str, i: int) -> float:
        return min(t[i] for t in times[name])

    w0, c0 = best(baseline, 0), best(baseline, 1)
    print(f"{title} (ratios to '{baseline}'{'; target ' + target if target else ''}):")
    for name, ts in times.items():
        w, c = best(name, 0), best(name, 1)
        med = statistics.median(t[0] for t in ts)
        print(
            f"  {name:<30} wall best {w:7.3f} s (median {med:7.3f})  cpu best {c:7.3f} s"
            f"   ratio wall {w / w0:5.2f}x  cpu {c / c0:5.2f}x"
        )


# --------------------------------------------------------------------------- 1. models
def _plain_copy(model: nn.Module) -> nn.Module:
    plain = copy.deepcopy(model)
    return apply_memory_format(plain, "contiguous")


def _input_grad_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool = False):
    xg = x.detach().requires_grad_(True)
    with autocast_context(x.device, amp):
        logits = model(xg)
        loss = F.cross_entropy(logits.float(), y)
    (g,) = torch.autograd.grad(loss, xg)
    return logits.detach().float(), g


def _train_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool = False) -> None:
    model.zero_grad(set_to_none=True)
    with autocast_context(x.device, amp):
        loss = F.cross_entropy(model(x).float(), y)
    loss.backward()


def bench_models(args, dev: torch.device, archs: list[str], preset: str) -> None:
    gen = torch.Generator().manual_seed(0)
    for arch in archs:
        torch.manual_seed(0)
        ours = prepare_model(build_model(arch, 5, args.cube, **size_preset(preset, arch)), dev)
        plain = _plain_copy(ours).to(dev)
        x = torch.randn(args.batch, 1, args.cube, args.cube, args.cube, generator=gen).to(dev)
        y = torch.randint(0, 5, (args.batch,), generator=gen).to(dev)
        fmt = "channels_last_3d" if model_memory_format(ours) == torch.channels_last_3d else (
            "contiguous")
        ours.eval()
        plain.eval()
        lo, go = _input_grad_pass(ours, x, y)
        lp, gp = _input_grad_pass(plain, x, y)
        dl = float((lo - lp).abs().max())
        dg = float((go - gp).abs().max()) / max(float(gp.abs().max()), 1e-30)
        n_par = sum(p.numel() for p in ours.parameters()) / 1e6
        print(
            f"\n{arch} ({preset}, {n_par:.2f} M parameters), batch {args.batch} of "
            f"{args.cube}^3 on {dev}; ours in {fmt}; |logits - plain| <= {dl:.1e}, "
            f"input gradient relative difference <= {dg:.1e}"
        )
        runners: dict[str, Callable[[], object]] = {
            "plain fp32": partial(_input_grad_pass, plain, x, y),
            "ours": partial(_input_grad_pass, ours, x, y),
        }
        if dev.type == "cuda":
            runners["ours + AMP"] = partial(_input_grad_pass, ours, x, y, amp=True)
        times = interleaved(runners, args.reps, dev)
        report(f"  {arch} forward + input-gradient backward (eval)", times, "plain fp32",
               "<= 0.7x" if dev.type == "cpu" else "")
        ours.train()
        plain.train()
        runners = {
            "plain fp32": partial(_train_pass, plain, x, y),
            "ours": partial(_train_pass, ours, x, y),
        }
        if dev.type == "cuda":
            runners["ours + AMP"] = partial(_train_pass, ours, x, y, amp=True)
        times = interleaved(runners, args.reps, dev)
        report(f"  {arch} forward + backward with weight gradients (train)", times,
               "plain fp32", "<= 0.7x" if dev.type == "cpu" else "")
        print(f"  train: weight gradient relative difference to plain <= "
              f"{_train_grad_difference(ours, plain, x, y):.1e} (the same dropout seed)")


def _train_grad_difference(ours: nn.Module, plain: nn.Module, x, y) -> float:
    """Largest relative difference of the weight gradients of one seeded train pass."""
    grads = []
    for m in (ours, plain):
        torch.manual_seed(123)
        _train_pass(m, x, y)
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    worst = 0.0
    for name, g in grads[1].items():
        scale = max(float(g.abs().max()), 1e-30)
        worst = max(worst, float((grads[0][name] - g).abs().max()) / scale)
    return worst


# --------------------------------------------------------------------------- 2. attacks
def plain_pgd(model, x, y, eps=EPS, alpha=STEP, steps=10, loss_fn=None):
    """The plain 12-line fp32 PGD loop of every tutorial (the baseline)."""
    x_adv = x + torch.empty_like(x).uniform_(-eps, eps)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y) if loss_fn is None else loss_fn(logits, y)
        (g,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * g.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
    return x_adv


def _margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    z = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return (other - z).clamp(max=0.0).sum()


class UnitRange(nn.Module):
    """``model(lo + (hi - lo) * u)``: a [0, 1] model for torchattacks.

    ``squeeze``: the model takes (N, D, H, W) (torchattacks' APGD assumes 4D images)
    and adds the channel axis itself.
    """

    def __init__(self, model: nn.Module, squeeze: bool = False) -> None:
        super().__init__()
        self.model, self.squeeze = model, squeeze

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        v = LO + (HI - LO) * u
        return self.model(v.unsqueeze(1) if self.squeeze else v)


def _attack_model(args, dev: torch.device, preset: str) -> tuple[nn.Module, str]:
    if args.cube == 28 and preset.startswith("small"):
        try:
            from napari_cryoguard.models import load_default

            model, _ = load_default("cb3d-default", device="cpu")
            return prepare_model(model, dev).eval(), "bundled cb3d-default"
        except Exception as exc:  # pragma: no cover - weights missing
            print(f"  note: cb3d-default unavailable ({exc}); building a cb3d")
    torch.manual_seed(0)
    model = build_model("cb3d", 10, args.cube, **size_preset(preset, "cb3d"))
    return prepare_model(model, dev).eval(), f"cb3d ({preset})"


def bench_attacks(args, dev: torch.device, preset: str) -> None:
    ours, what = _attack_model(args, dev, preset)
    plain = _plain_copy(ours).to(dev).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 1, args.cube, args.cube, args.cube, generator=gen)
    x = x.clamp(LO, HI).to(dev)
    with torch.no_grad():
        y = plain(x).argmax(1)  # attack the model's own predictions
    print(f"\nattacks on {what}, batch {args.batch} of {args.cube}^3 on {dev}")
    notes: list[str] = []
    try:
        import torchattacks
    except Exception as exc:  # optional reference
        torchattacks = None
        notes.append(f"torchattacks unavailable: {type(exc).__name__}: {exc}")
    try:
        import foolbox as fb
    except Exception as exc:
        fb = None
        notes.append(f"foolbox unavailable: {type(exc).__name__}: {exc}")
    for n in notes:
        print("  note:", n)
    u = (x - LO) / (HI - LO)
    wrapped = UnitRange(plain).eval()

    # PGD-10
    runners: dict[str, Callable[[], object]] = {
        "plain fp32 loop": lambda: plain_pgd(plain, x, y),
        "ours pgd": lambda: run_attack("pgd", ours, x, y, eps=EPS, step_size=STEP, steps=10),
        "plain loop on our model": lambda: plain_pgd(ours, x, y),
    }
    if torchattacks is not None:
        ta = torchattacks.PGD(wrapped, eps=EPS / (HI - LO), alpha=STEP / (HI - LO), steps=10,
                              random_start=True)
        runners[f"torchattacks {torchattacks.__version__} PGD"] = lambda: ta(u, y)
    if fb is not None and not args.quick:
        fmodel = fb.PyTorchModel(plain, bounds=(LO, HI))
        fpgd = fb.attacks.LinfPGD(steps=10, abs_stepsize=STEP, random_start=True)
        runners[f"foolbox {fb.__version__} LinfPGD"] = lambda: fpgd(fmodel, x, y, epsilons=EPS)
    report("PGD-10 (L-inf, eps 0.03, step 0.003, random start)",
           interleaved(runners, args.reps, dev), "plain fp32 loop", "ours <= 0.8x")

    # CW-L-inf (MIRST-DM): PGD on the clipped margin
    runners = {
        "plain fp32 loop (margin)": lambda: plain_pgd(plain, x, y, loss_fn=_margin_loss),
        "ours cw_linf": lambda: run_attack("cw_linf", ours, x, y, eps=EPS, step_size=STEP,
                                           steps=10, random_start=True),
    }
    report("CW-L-inf, 10 steps", interleaved(runners, args.reps, dev),
           "plain fp32 loop (margin)", "ours <= 0.8x")

    if not args.quick:
        # CW-L2: one binary-search step of 10 Adam iterations, c = 1
        runners = {
            "ours cw (L2)": lambda: run_attack("cw", ours, x, y, steps=10, binary_search_steps=1,
                                               initial_const=1.0, abort_early=False),
        }
        if torchattacks is not None:
            tcw = torchattacks.CW(wrapped, c=1.0, kappa=0, steps=10, lr=0.01)
            runners["torchattacks CW"] = lambda: tcw(u, y)
        if fb is not None:
            fmodel = fb.PyTorchModel(plain, bounds=(LO, HI))
            fcw = fb.attacks.L2CarliniWagnerAttack(binary_search_steps=1, steps=10,
                                                   initial_const=1.0, abort_early=False)
            runners["foolbox L2CarliniWagner"] = lambda: fcw(fmodel, x, y, epsilons=None)
        times = interleaved(runners, args.reps, dev)
        report("CW-L2, 1 x 10 Adam steps", times, "ours cw (L2)")
        passes = {k: count_passes([ours, plain], fn) for k, fn in runners.items()}
        c0 = min(t[1] for t in times["ours cw (L2)"]) / max(passes["ours cw (L2)"], 1)
        print("  per forward pass (each runner's forward passes counted with a hook):")
        for name, k in passes.items():
            c = min(t[1] for t in times[name]) / max(k, 1)
            print(f"  {name:<30} {k:3d} forward passes  cpu {1e3 * c:7.1f} ms per pass"
                  f"   ratio {c / c0:5.2f}x")

    if "apgd_ce" in available_attacks() or "apgd-ce" in available_attacks():
        runners = {
            "plain fp32 loop (PGD-10)": lambda: plain_pgd(plain, x, y),
            "ours apgd-ce": lambda: run_attack("apgd-ce", ours, x, y, eps=EPS, steps=10, seed=0),
        }
        if torchattacks is not None:
            tap = torchattacks.APGD(UnitRange(plain, squeeze=True).eval(), norm="Linf",
                                    eps=EPS / (HI - LO), steps=10, n_restarts=1, loss="ce",
                                    seed=0)
            u4 = u[:, 0]
            runners["torchattacks APGD"] = lambda: tap(u4, y)
        report("APGD-CE, 10 steps", interleaved(runners, args.reps, dev),
               "plain fp32 loop (PGD-10)", "ours <= 0.8x")
    else:
        print("APGD-CE: not registered here; skipped")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    ap.add_argument("--batch", type=int, default=None, help="16 on CPU, 64 on CUDA")
    ap.add_argument("--cube", type=int, default=28)
    ap.add_argument("--reps", type=int, default=None, help="rounds (3 on CPU, 5 on CUDA)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default 1 on CPU: steadier on a shared machine)")
    ap.add_argument("--size", default=None, help="model size preset (CPU: small, CUDA: paper)")
    ap.add_argument("--archs", default="cb3d,dsrf3d_v2,rb3d,autoencoder")
    ap.add_argument("--only", choices=("models", "attacks"), default=None)
    ap.add_argument("--quick", action="store_true", help="batch 8, 2 rounds, fewer runners")
    args = ap.parse_args(argv)
    dev = resolve_device(args.device)
    gpu = dev.type == "cuda"
    if args.threads or not gpu:
        torch.set_num_threads(args.threads or 1)
    args.batch = args.batch or (8 if args.quick else 64 if gpu else 16)
    args.reps = args.reps or (3 if args.quick else 5)
    preset = args.size or ("paper" if gpu else "small (CPU-friendly)")
    torch.manual_seed(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"bench_speed: torch {torch.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} thread(s), {os.cpu_count()} CPU(s), load average "
        f"{load:.1f} at start" + (f", GPU {torch.cuda.get_device_name(dev)}" if gpu else "")
    )
    if args.only in (None, "models"):
        bench_models(args, dev, [a.strip() for a in args.archs.split(",") if a.strip()], preset)
    if args.only in (None, "attacks"):
        bench_attacks(args, dev, preset)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average {load:.1f} at the end")


if __name__ == "__main__":
    main()
