"""Behaviour of the individual attacks: exact answers on a linear model, noise attacks,
restarts, determinism, and batching over a dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cryoguard import CryoGuardError
from napari_cryoguard.attacks import (
    AttackProgress,
    attack_dataset,
    iter_attack_dataset,
    run_attack,
)


@pytest.fixture(scope="module")
def linear_case(toy):
    """A 2-class linear classifier on flat 16^3 volumes, inputs, labels = its predictions,
    and the exact distances to its decision boundary in L2 and L-inf."""
    model = toy.LinearVolumeClassifier(toy.CUBE, 2, seed=0).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(12, 1, toy.CUBE, toy.CUBE, toy.CUBE, generator=gen)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    w = model.fc.weight.detach().double()
    b = model.fc.bias.detach().double()
    f = (x.flatten(1).double() @ (w[1] - w[0]) + (b[1] - b[0])).abs()
    wd = w[1] - w[0]
    return model, x, y, f / wd.norm(2), f / wd.norm(1), f, wd


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_bpgd_margin_matches_exact_distance_on_linear_model(linear_case, norm):
    model, x, y, d2, dinf, _, _ = linear_case
    exact = d2 if norm == "l2" else dinf
    # a budget that leaves the farthest samples outside the ball
    eps = float(exact.sort().values[-3])
    res = run_attack("bpgd", model, x, y, norm=norm, eps=eps, n_pgd=20, n_binary=12)
    inside = exact < eps * 0.999
    assert inside.sum() >= 8
    # the bisection brackets the boundary to within one PGD step / 2**n_binary
    # (plus float32 rounding of x_adv - x, about 1e-6 for values of a few units)
    resolution = 4 * eps / 20 / 2**12
    err = (res.margins[inside].double() - exact[inside]).abs()
    assert torch.all(err <= resolution * 1.01 + 1e-5 * exact[inside] + 3e-6)
    # the boundary point is on the wrong side and never closer than the boundary
    assert res.success[inside].all()
    assert torch.all(res.margins[inside].double() >= exact[inside] * (1 - 1e-4) - 3e-6)
    assert torch.equal(res.norm, res.margins)
    # samples beyond eps: flagged, margin = eps, not a success
    far = exact > eps * 1.001
    assert far.sum() >= 1
    assert res.extras["max_reached"][far].all() and not res.extras["max_reached"][inside].any()
    assert torch.all(res.margins[far] == eps) and not res.success[far].any()


def test_bpgd_already_misclassified_has_zero_margin(linear_case):
    model, x, y, *_ = linear_case
    y_bad = 1 - y
    res = run_attack("bpgd", model, x, y_bad, norm="l2", eps=1.0)
    assert torch.all(res.margins == 0) and res.extras["already_wrong"].all()
    assert torch.equal(res.x_adv, x)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_is_exact_in_one_step_on_linear_model(linear_case, norm):
    model, x, y, d2, dinf, f, wd = linear_case
    res = run_attack("deepfool", model, x, y, norm=norm, overshoot=0.02)
    assert res.success.all()
    assert res.steps == 1 and torch.all(res.extras["sample_steps"] == 1)
    q = 2 if norm == "l2" else 1
    expected = 1.02 * (f + 1e-4) / wd.norm(q)
    torch.testing.assert_close(res.norm.double(), expected, rtol=1e-3, atol=1e-6)


def test_cw_l2_finds_near_minimal_perturbations_on_linear_model(linear_case):
    model, x, y, d2, *_ = linear_case
    res = run_attack(
        "cw", model, x, y, steps=100, binary_search_steps=6, initial_const=1.0, lr=0.01
    )
    assert res.success.all()
    ratio = res.norm.double() / d2
    assert torch.all(ratio >= 1 - 1e-4)  # nothing can beat the exact distance
    assert float(ratio.median()) <= 1.1


def test_pgd_on_linear_model_crosses_when_budget_allows(linear_case):
    model, x, y, d2, *_ = linear_case
    eps = float(d2.median())
    res = run_attack(
        "pgd", model, x, y, norm="l2", eps=eps, step_size=eps / 4, steps=8, random_start=False
    )
    # with a straight gradient, PGD succeeds exactly where the boundary is inside the ball
    clear = (d2 - eps).abs() > 1e-3 * eps
    assert torch.equal(res.success[clear], (d2 < eps)[clear])


def test_uniform_noise_reports_the_level_that_worked(trained_model, batch):
    x, y = batch
    res = run_attack("uniform_noise", trained_model, x, y, eps_max=8.0, steps=16, seed=0)
    level = res.extras["level"]
    grid = torch.arange(1, 17, dtype=torch.float32) * 0.5
    ok = res.success
    assert ok.any()
    assert torch.equal(ok, ~torch.isnan(level))
    assert all(bool((grid - v).abs().min() < 1e-6) for v in level[ok])
    assert torch.all(res.norm_linf[ok] <= level[ok] + 1e-6)
    assert torch.equal(res.x_adv[~ok], x[~ok])
    # the same seed gives the same answer; another seed may not
    again = run_attack("uniform_noise", trained_model, x, y, eps_max=8.0, steps=16, seed=0)
    assert torch.equal(again.x_adv, res.x_adv)


def test_uniform_noise_smallest_level_first(trained_model, batch):
    """A sample fooled at the first grid level is reported at that level, not a later one."""
    x, y = batch
    res_coarse = run_attack("uniform_noise", trained_model, x, y, eps_max=8.0, steps=1, seed=0)
    res_fine = run_attack("uniform_noise", trained_model, x, y, eps_max=8.0, steps=16, seed=0)
    # everything the fine grid found was found no later than eps_max
    assert torch.all(res_fine.extras["level"][res_fine.success] <= 8.0)
    assert res_fine.success.sum() >= res_coarse.success.sum() - 2
    assert float(res_fine.norm_linf[res_fine.success].mean()) <= 8.0


def test_salt_pepper_sets_voxels_to_extremes(trained_model, batch, toy):
    x, y = batch
    res = run_attack("salt_pepper", trained_model, x, y, steps=20, seed=0)
    assert res.success.any()
    f = x.flatten(1)
    xa = res.x_adv.flatten(1)
    lo, hi = f.amin(1, keepdim=True), f.amax(1, keepdim=True)
    ok = (xa == f) | (xa == lo) | (xa == hi)
    assert ok.all()
    level = res.extras["level"]
    assert torch.equal(res.success, ~torch.isnan(level))
    assert torch.all(res.extras["fraction_changed"][~res.success] == 0)
    assert res.norm_name == "l2"
    torch.testing.assert_close(res.norm, res.norm_l2)
    # explicit bounds are the salt and pepper values
    lo_b, hi_b = toy.BOUNDS
    res_b = run_attack("salt_pepper", trained_model, x, y, steps=20, seed=0, bounds=toy.BOUNDS)
    changed = res_b.x_adv != x
    vals = res_b.x_adv[changed]
    assert changed.any() and torch.all((vals == lo_b) | (vals == hi_b))


def test_pgd_restarts_keep_the_best_per_sample(trained_model, batch):
    x, y = batch
    kw = dict(eps=0.06, step_size=0.02, steps=4, seed=5)
    one = run_attack("pgd", trained_model, x, y, restarts=1, **kw)
    three = run_attack("pgd", trained_model, x, y, restarts=3, **kw)
    assert three.steps == 12
    assert torch.all(three.success | ~one.success)  # never lose a success
    assert torch.all(three.norm_linf <= 0.06 + 1e-6)


def test_pgd_seed_and_bim_determinism(trained_model, batch):
    x, y = batch
    a = run_attack("pgd", trained_model, x, y, eps=0.05, steps=2, seed=1)
    b = run_attack("pgd", trained_model, x, y, eps=0.05, steps=2, seed=1)
    c = run_attack("pgd", trained_model, x, y, eps=0.05, steps=2, seed=2)
    assert torch.equal(a.x_adv, b.x_adv) and not torch.equal(a.x_adv, c.x_adv)
    d = run_attack("bim", trained_model, x, y, eps=0.05, steps=2)
    e = run_attack("pgd", trained_model, x, y, eps=0.05, steps=2, random_start=False)
    assert torch.equal(d.x_adv, e.x_adv)


def test_margin_loss_pgd_is_at_least_as_strong_as_fgsm(trained_model, batch):
    x, y = batch
    fgsm = run_attack("fgsm", trained_model, x, y, eps=0.08)
    pgd = run_attack(
        "pgd", trained_model, x, y, eps=0.08, step_size=0.02, steps=10, loss="margin", seed=0
    )
    assert pgd.success.sum() >= fgsm.success.sum()
    assert pgd.success.sum() > 0


def test_attack_dataset_batches_like_one_call(trained_model, batch):
    x, y = batch
    xn, yn = x[:, 0].numpy(), y.numpy()
    whole = run_attack("fgsm", trained_model, x, y, eps=0.05)
    calls: list[tuple[int, int]] = []
    res = attack_dataset(
        trained_model,
        xn,
        yn,
        "fgsm",
        batch_size=5,
        device="cpu",
        progress=lambda d, t: calls.append((d, t)),
        eps=0.05,
    )
    assert calls == [(5, 16), (10, 16), (15, 16), (16, 16)]
    assert res.x_adv.device.type == "cpu"
    torch.testing.assert_close(res.x_adv, whole.x_adv, atol=1e-6, rtol=0)
    assert torch.equal(res.success, whole.success)
    assert np.array_equal(res.indices, np.arange(16))
    # a subset, as a generator
    gen = iter_attack_dataset(
        trained_model,
        xn,
        yn,
        "bpgd",
        batch_size=3,
        device="cpu",
        indices=[7, 2, 11, 0],
        eps=0.3,
        n_pgd=5,
        n_binary=3,
    )
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            sub = stop.value
            break
    assert steps == [AttackProgress(3, 4), AttackProgress(4, 4)]
    assert np.array_equal(sub.indices, [7, 2, 11, 0]) and len(sub) == 4
    assert sub.margins is not None and sub.margins.shape == (4,)
    single = run_attack(
        "bpgd", trained_model, x[[7, 2, 11, 0]], y[[7, 2, 11, 0]], eps=0.3, n_pgd=5, n_binary=3
    )
    torch.testing.assert_close(sub.margins, single.margins, atol=1e-6, rtol=1e-5)
    assert trained_model.training is False


def test_attack_dataset_rejects_bad_arguments(trained_model, batch):
    x, y = batch
    xn = x[:, 0].numpy()
    with pytest.raises(CryoGuardError, match="labels"):
        attack_dataset(trained_model, xn, y.numpy()[:3], "fgsm", device="cpu")
    with pytest.raises(CryoGuardError, match="batch_size"):
        attack_dataset(trained_model, xn, y.numpy(), "fgsm", batch_size=0, device="cpu")
    with pytest.raises(CryoGuardError, match="unknown attack"):
        attack_dataset(trained_model, xn, y.numpy(), "nope", device="cpu")
    with pytest.raises(CryoGuardError, match="indices"):
        attack_dataset(trained_model, xn, y.numpy(), "fgsm", device="cpu", indices=[99])
