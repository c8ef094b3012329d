"""APGD-CE, APGD-T and Square: ours against torchattacks 3.5.1 on the bundled CB3D.

Both libraries attack the same model on the same simulated subtomograms (SNR 0.1, +-60
degrees, 8 per class), with inputs scaled to [0, 1] and bounds (0, 1), because
torchattacks clamps to that box; budgets are given in the data's normalised units and
converted. Prints, per attack, the robust accuracy each library leaves (lower is
stronger) and the seconds each took. One torch thread.

    python benchmarks/bench_autoattack.py [--per-class 8] [--iters 100] [--queries 1000]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from napari_cryoguard.attacks import run_attack
from napari_cryoguard.classify import load_model
from napari_cryoguard.simulate import simulate_subtomograms


class UnitBox(torch.nn.Module):
    """The model on inputs rescaled to [0, 1]; ``four_d`` for torchattacks' N, D, H, W view."""

    def __init__(self, model: torch.nn.Module, lo: float, hi: float, four_d: bool) -> None:
        super().__init__()
        self.model, self.lo, self.span, self.four_d = model, lo, hi - lo, four_d

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if self.four_d:
            u = u.unsqueeze(1)
        return self.model(self.lo + self.span * u)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args()
    import torchattacks

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = simulate_subtomograms(n_per_class=args.per_class, snr=0.1, tilt_range=60.0, seed=args.seed)
    model = load_model("cb3d-default").model.eval()
    x = torch.from_numpy(ds.volumes[:, None].astype(np.float32))
    y = torch.from_numpy(ds.labels)
    lo, hi = float(x.min()), float(x.max())
    u = (x - lo) / (hi - lo)
    ours_model, theirs_model = UnitBox(model, lo, hi, False).eval(), UnitBox(model, lo, hi, True).eval()
    with torch.no_grad():
        clean = (ours_model(u).argmax(1) == y).float().mean().item()
    print(f"bench_autoattack: cb3d-default, n {len(y)}, clean accuracy {clean:.3f}, "
          f"intensity span {hi - lo:.2f} normalised units, torch {torch.__version__}, "
          f"torchattacks {torchattacks.__version__}", flush=True)
    cases = [("apgd_ce", "linf", 0.02), ("apgd_t", "linf", 0.02), ("apgd_ce", "l2", 1.0),
             ("apgd_t", "l2", 1.0), ("square", "linf", 0.05), ("square", "l2", 4.0)]
    n_classes = len(ds.class_names)
    for name, norm, eps_norm in cases:
        eps = eps_norm / (hi - lo)
        ta_norm = "Linf" if norm == "linf" else "L2"
        it = args.queries if name == "square" else args.iters
        t0 = time.perf_counter()
        if name == "square":
            atk = torchattacks.Square(theirs_model, norm=ta_norm, eps=eps, n_queries=it, seed=0)
        elif name == "apgd_t":
            atk = torchattacks.APGDT(theirs_model, norm=ta_norm, eps=eps, steps=it, n_restarts=1,
                                     seed=0, n_classes=n_classes)
        else:
            atk = torchattacks.APGD(theirs_model, norm=ta_norm, eps=eps, steps=it, n_restarts=1,
                                    seed=0, loss="ce")
        adv = atk(u[:, 0], y)
        with torch.no_grad():
            theirs = (theirs_model(adv).argmax(1) == y).float().mean().item()
        t_theirs = time.perf_counter() - t0
        t0 = time.perf_counter()
        kw = {"n_queries": it} if name == "square" else {"steps": it}
        if name == "apgd_t":
            kw["n_target_classes"] = n_classes - 1
        res = run_attack(name, ours_model, u, y, norm=norm, eps=eps, bounds=(0.0, 1.0), seed=0, **kw)
        ours = (res.pred_after == y).float().mean().item()
        print(f"{name} {norm} eps {eps_norm} ({it} {'queries' if name == 'square' else 'iterations'}): "
              f"robust accuracy ours {ours:.3f} ({time.perf_counter() - t0:.0f} s), "
              f"torchattacks {theirs:.3f} ({t_theirs:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
