"""APGD-CE, APGD-T and Square: the schedule and losses by hand, budgets, no gradients for
Square, and cross-checks against torchattacks 3.5.1 on the bundled CB3D.

Cross-check protocol: torchattacks clamps to [0, 1] and works on 4D image batches, so
both libraries attack the same wrapped model: the volumes are mapped to [0, 1] with one
global affine map (``u = (x - lo) / (hi - lo)``, the model sees ``lo + (hi - lo) u``),
ours with ``bounds=(0, 1)`` on (N, 1, D, H, W), torchattacks on (N, D, H, W) with the
depth as channels (the L2 norms and the model are the same; for Square this makes
torchattacks' squares full-depth columns with one sign per slice, its 2D version).
Same model, inputs, eps, iterations / queries, one run. Tolerance: ours may be weaker
by at most one sample (robust accuracy ``<= theirs + 1/n``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from napari_cryoguard import CryoGuardError
from napari_cryoguard.attacks import run_attack
from napari_cryoguard.attacks.apgd import apgd_checkpoints, dlr_loss, dlr_loss_targeted
from napari_cryoguard.attacks.square import l2_pattern, square_fraction, square_side

BOUNDS = (-3.0, 6.0)  # conftest.BOUNDS


# --------------------------------------------------------------------------- by hand
def test_checkpoints_follow_the_papers_recursion():
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (steps .19, .16, .13, .10, .07, .06, .06)
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]
    assert apgd_checkpoints(1) == [1]


def test_dlr_losses_by_hand():
    z = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 4.0, 1.0, 2.0]])
    y = torch.tensor([0, 0])
    # sample 0: correct, -(3 - 2) / (3 - 1); sample 1: wrong, -(0 - 4) / (4 - 1)
    torch.testing.assert_close(dlr_loss(z, y), torch.tensor([-0.5, 4.0 / 3.0]))
    t = torch.tensor([3, 1])
    # -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2): -(3 - 0) / (3 - 0.5); -(0 - 4) / (4 - 0.5)
    torch.testing.assert_close(
        dlr_loss_targeted(z, y, t), torch.tensor([-3.0 / 2.5, 4.0 / 3.5])
    )
    # 3 classes: the targeted denominator is z_pi1 - z_pi3
    z3 = torch.tensor([[3.0, 1.0, 2.0]])
    torch.testing.assert_close(
        dlr_loss_targeted(z3, torch.tensor([0]), torch.tensor([1])), torch.tensor([-1.0])
    )
    # 2 classes: the plain margin
    z2 = torch.tensor([[3.0, 1.0]])
    torch.testing.assert_close(dlr_loss(z2, torch.tensor([0])), torch.tensor([-2.0]))


def test_square_schedule_and_side_by_hand():
    assert square_fraction(0.8, 0, 10000) == 0.8
    assert square_fraction(0.8, 10, 10000) == 0.8
    assert square_fraction(0.8, 11, 10000) == 0.4
    assert square_fraction(0.8, 8001, 10000) == pytest.approx(0.8 / 512)
    assert square_fraction(0.8, 1, 100) == 0.2  # 1/100 of the run = iteration 100 of 10 000
    assert square_side(0.8, (16, 16, 16)) == 15  # round(3276.8 ** (1/3)) = 15 (<= 16 - 1)
    assert square_side(0.1, (16, 16, 16)) == 7  # round(409.6 ** (1/3))
    assert square_side(1e-6, (16, 16, 16)) == 1
    assert square_side(1.0, (28, 28, 28)) == 27


def test_square_l2_pattern_by_hand():
    assert l2_pattern(1).tolist() == [[[1.0]]]
    # s = 2, split along z: halves (1, 2, 2) with centre voxel (0, 1, 1); Chebyshev
    # distance 0 there (1 + 1/4) and 1 elsewhere (1/4); the second half negated
    half = torch.tensor([[0.25, 0.25], [0.25, 1.25]])
    expect = torch.stack([half, -half]) / np.sqrt(2 * (3 * 0.25**2 + 1.25**2))
    torch.testing.assert_close(l2_pattern(2, axis=0), expect)
    torch.testing.assert_close(l2_pattern(2, axis=1), expect.transpose(0, 1))
    p = l2_pattern(5, axis=2)
    assert float(torch.linalg.vector_norm(p)) == pytest.approx(1.0, abs=1e-6)
    assert float(p[..., :2].min()) > 0 and float(p[..., 2:].max()) < 0  # halves 2 and 3
    assert float(p.sum()) < 0  # the larger half dominates


# --------------------------------------------------------------------------- contract
NORM_CASES = [
    ("apgd_ce", {"norm": "linf", "eps": 0.07, "steps": 8, "seed": 0}),
    ("apgd_ce", {"norm": "linf", "eps": 0.07, "steps": 8, "seed": 0, "loss": "dlr"}),
    ("apgd_t", {"norm": "linf", "eps": 0.07, "steps": 8, "seed": 0}),
    ("square", {"eps": 0.3, "n_queries": 40, "seed": 0}),
    ("square", {"norm": "l2", "eps": 20.0, "n_queries": 200, "seed": 0}),
    ("apgd_ce", {"norm": "l2", "eps": 4.0, "steps": 8, "seed": 0}),
    ("apgd_t", {"norm": "l2", "eps": 4.0, "steps": 8, "seed": 0}),
]


@pytest.mark.parametrize(
    ("name", "params"), NORM_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(NORM_CASES)]
)
@pytest.mark.parametrize("bounds", [None, BOUNDS], ids=["free", "box"])
def test_budget_is_respected_exactly(trained_model, batch, name, params, bounds):
    x, y = batch
    res = run_attack(name, trained_model, x, y, bounds=bounds, **params)
    eps = params["eps"]
    norm = params.get("norm", "linf")
    d = (res.x_adv - x).flatten(1)
    measured = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert torch.all(measured <= eps + 1e-6)
    torch.testing.assert_close(res.norm, res.norm_linf if norm == "linf" else res.norm_l2)
    assert res.norm_name == norm
    assert torch.equal(res.success, res.pred_after != y)
    assert res.success.any()
    if bounds is not None:
        assert float(res.x_adv.min()) >= BOUNDS[0] and float(res.x_adv.max()) <= BOUNDS[1]


@pytest.mark.parametrize("name", ["apgd_ce", "apgd_t", "square"])
def test_eps_zero_changes_nothing(trained_model, batch, name):
    x, y = batch
    y_bad = y.clone()
    y_bad[:3] = (y_bad[:3] + 1) % 3
    params = {"square": {"n_queries": 5}}.get(name, {"steps": 3})
    res = run_attack(name, trained_model, x, y_bad, eps=0.0, seed=0, **params)
    assert torch.equal(res.x_adv, x)
    assert torch.equal(res.success, res.pred_before != y_bad)


def test_square_uses_no_gradients_and_counts_queries(trained_model, batch, toy):
    x, y = batch
    guarded = toy.GradientForbidden(trained_model)
    res = run_attack("square", guarded, x, y, eps=0.1, n_queries=50, seed=0)
    assert not res.zero_grad.any()
    q = res.extras["queries"]
    assert torch.all(q >= 1) and torch.all(q <= 50) and res.steps == int(q.max())
    # a sample leaves the search once fooled: the unfooled ones used every query
    assert torch.all(q[~res.success] == 50)
    assert torch.all(q[res.success] < 50)
    ref = run_attack("square", trained_model, x, y, eps=0.1, n_queries=50, seed=0)
    assert torch.equal(ref.x_adv, res.x_adv)  # seeded: reproducible
    with pytest.raises(AssertionError, match="gradients"):  # the guard does bite
        run_attack("apgd_ce", guarded, x, y, steps=2)


def test_square_parameters_are_checked():
    with pytest.raises(CryoGuardError, match="norm"):
        run_attack("square", nn.Linear(2, 2), torch.zeros(1, 1, 2, 2, 2), [0], norm="l1")
    with pytest.raises(CryoGuardError, match="p_init"):
        run_attack("square", nn.Linear(2, 2), torch.zeros(1, 1, 2, 2, 2), [0], p_init=1.5)


def test_apgd_ce_reaches_the_linear_optimum(toy):
    """On a linear 2-class model the CE maximum in the L-inf ball is the vertex
    ``x + eps * sign(w_other - w_y)``; APGD must find it (the step-size schedule and the
    projection work) -- plain sign steps of 2 eps already hit it, then stay."""
    model = toy.LinearVolumeClassifier(cube=8, num_classes=2, seed=1)
    torch.manual_seed(0)
    x = torch.randn(6, 1, 8, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    eps = 0.02
    res = run_attack("apgd_ce", model, x, y, eps=eps, steps=20, seed=0)
    w = model.fc.weight.detach()
    direction = (w[1 - y] - w[y]).sign().view_as(x)
    best = x + eps * direction
    with torch.no_grad():
        ce_best = nn.functional.cross_entropy(model(best), y, reduction="none")
        ce_ours = nn.functional.cross_entropy(model(res.x_adv), y, reduction="none")
    fooled = res.success
    torch.testing.assert_close(ce_ours[~fooled], ce_best[~fooled], atol=1e-5, rtol=1e-5)
    assert torch.all(ce_ours >= ce_best - 1e-4) | fooled.all()


def test_apgd_t_tries_the_runner_up_classes(trained_model, batch):
    x, y = batch
    res = run_attack("apgd_t", trained_model, x, y, eps=0.1, steps=10, seed=0)
    assert not res.targeted and res.labels.tolist() == y.tolist()
    # at most n_target_classes = min(9, C - 1) = 2 runs of 10 steps
    assert res.steps <= 2 * 10
    with pytest.raises(CryoGuardError, match="apgd-t"):
        run_attack("apgd_ce", trained_model, x, y, loss="dlr", targeted=True)


def test_targeted_apgd_ce_reaches_the_target(trained_model, batch):
    x, y = batch
    with torch.no_grad():
        target = trained_model(x).argsort(1)[:, 1]
    res = run_attack(
        "apgd_ce", trained_model, x, target, targeted=True, eps=0.3, steps=10, seed=0
    )
    assert res.targeted and torch.equal(res.success, res.pred_after == target)
    assert float(res.success.float().mean()) >= 0.8


def test_apgd_at_least_as_strong_as_pgd_same_iterations(trained_model, batch):
    x, y = batch
    pgd = run_attack("pgd", trained_model, x, y, eps=0.05, steps=10, step_size=0.0125, seed=0)
    ours = run_attack("apgd_ce", trained_model, x, y, eps=0.05, steps=10, seed=0)
    assert int(ours.success.sum()) >= int(pgd.success.sum())


# --------------------------------------------------------------------------- torchattacks
ta = pytest.importorskip("torchattacks", reason="torchattacks is a test-only reference")


class _Unit(nn.Module):
    """The model on [0, 1]-scaled input: 5D (ours) or 4D with depth as channels (theirs)."""

    def __init__(self, model: nn.Module, lo: float, hi: float, five: bool) -> None:
        super().__init__()
        self.model, self.lo, self.hi, self.five = model, lo, hi, five

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if not self.five:
            u = u.unsqueeze(1)
        return self.model(self.lo + (self.hi - self.lo) * u)


@pytest.fixture(scope="module")
def cb3d_unit():
    """The bundled CB3D, 15 fresh simulated subtomograms at SNR 0.1 (+-60 deg), in [0, 1]."""
    from napari_cryoguard.classify import load_model
    from napari_cryoguard.simulate import simulate_subtomograms

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = simulate_subtomograms(n_per_class=3, snr=0.1, tilt_range=60.0, seed=7)
    model = load_model("cb3d-default", device="cpu").model.eval()
    x = torch.from_numpy(np.asarray(ds.volumes, dtype=np.float32))[:, None]
    y = torch.as_tensor(np.asarray(ds.labels), dtype=torch.long)
    lo, hi = float(x.min()), float(x.max())
    u = (x - lo) / (hi - lo)
    ours = _Unit(model, lo, hi, five=True).eval()
    theirs = _Unit(model, lo, hi, five=False).eval()
    with torch.no_grad():
        assert (ours(u).argmax(1) == y).float().mean() >= 0.8  # the model works here
    yield ours, theirs, u, y, hi - lo
    torch.set_num_threads(threads)


def _robust(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


CROSS = [
    # (ours, theirs, norm, eps in normalised units, iterations)
    ("apgd_ce", "APGD", "linf", 0.02, 10),
    ("apgd_ce", "APGD", "l2", 1.0, 10),
    ("apgd_t", "APGDT", "linf", 0.02, 10),
    ("square", "Square", "linf", 0.05, 100),
    ("square", "Square", "l2", 4.0, 100),
]


@pytest.mark.parametrize(
    ("ours_name", "ta_name", "norm", "eps_n", "iters"), CROSS,
    ids=[f"{c[0]}-{c[2]}" for c in CROSS],
)
def test_at_least_as_strong_as_torchattacks(cb3d_unit, ours_name, ta_name, norm, eps_n, iters):
    ours_m, theirs_m, u, y, span = cb3d_unit
    eps = eps_n / span  # the same budget on the [0, 1] scale
    n = len(y)
    ta_norm = "Linf" if norm == "linf" else "L2"
    if ta_name == "Square":
        attack = ta.Square(theirs_m, norm=ta_norm, eps=eps, n_queries=iters, n_restarts=1,
                           p_init=0.8, loss="margin", seed=0)
        ours = run_attack("square", ours_m, u, y, norm=norm, eps=eps, n_queries=iters,
                          p_init=0.8, bounds=(0.0, 1.0), seed=0)
    else:
        kw = {"n_classes": 5} if ta_name == "APGDT" else {"loss": "ce"}
        attack = getattr(ta, ta_name)(theirs_m, norm=ta_norm, eps=eps, steps=iters,
                                      n_restarts=1, seed=0, **kw)
        extra = {"n_target_classes": 4} if ours_name == "apgd_t" else {}
        ours = run_attack(ours_name, ours_m, u, y, norm=norm, eps=eps, steps=iters,
                          bounds=(0.0, 1.0), seed=0, **extra)
    adv = attack(u[:, 0], y)
    theirs_acc = _robust(theirs_m, adv, y)
    ours_acc = float((ours.pred_after == y).float().mean())
    print(f"{ours_name} {norm} eps {eps_n}: robust accuracy ours {ours_acc:.3f}, "
          f"torchattacks {theirs_acc:.3f} (n={n})")
    # both within the budget, and ours at least as strong (one sample of tolerance)
    d = (ours.x_adv - u).flatten(1)
    ours_norm = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert torch.all(ours_norm <= eps + 1e-6)
    assert float(ours.x_adv.min()) >= 0.0 and float(ours.x_adv.max()) <= 1.0
    assert ours_acc <= theirs_acc + 1.0 / n + 1e-9
    assert ours_acc < _robust(ours_m, u, y)  # the budget does fool some samples
