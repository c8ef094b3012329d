"""Cross-checks against foolbox 3 (a test-only reference; ATTACK-LIBRARIES.md).

Same trained 3D model, same budgets and iterations, explicit bounds (the batch fixture
is clipped to them, as foolbox requires).
"""

from __future__ import annotations

import pytest
import torch

from napari_cryoguard.attacks import run_attack

fb = pytest.importorskip("foolbox", reason="foolbox is a test dependency (testing extra)")

BOUNDS = (-3.0, 6.0)  # conftest.BOUNDS


@pytest.fixture(scope="module")
def fmodel(trained_model, toy):
    assert toy.BOUNDS == BOUNDS
    trained_model.eval()  # foolbox would leave dropout on otherwise
    return fb.PyTorchModel(trained_model, bounds=BOUNDS)


def _really_fooled(model, x, adv, y):
    """Misclassified and actually perturbed (foolbox CW returns zeros where it failed)."""
    with torch.no_grad():
        wrong = model(adv).argmax(1) != y
    moved = (adv - x).flatten(1).abs().amax(1) > 0
    return wrong & moved


@pytest.mark.parametrize("eps", [0.02, 0.1])
def test_fgsm_equals_foolbox(trained_model, batch, fmodel, eps):
    x, y = batch
    _, adv, succ = fb.attacks.FGSM()(fmodel, x, y, epsilons=eps)
    res = run_attack("fgsm", trained_model, x, y, eps=eps, bounds=BOUNDS)
    torch.testing.assert_close(res.x_adv, adv, atol=1e-6, rtol=0)
    assert torch.equal(res.success, succ)
    if eps == 0.1:
        assert res.success.any()


def test_targeted_fgsm_equals_foolbox(trained_model, batch, fmodel):
    x, y = batch
    with torch.no_grad():
        target = trained_model(x).argsort(1)[:, 1]
    crit = fb.criteria.TargetedMisclassification(target)
    # foolbox's FGSM is untargeted only: one PGD step of size eps without random start
    one_step = fb.attacks.LinfPGD(steps=1, abs_stepsize=0.05, random_start=False)
    _, adv, _ = one_step(fmodel, x, crit, epsilons=0.05)
    res = run_attack("fgsm", trained_model, x, target, eps=0.05, targeted=True, bounds=BOUNDS)
    torch.testing.assert_close(res.x_adv, adv, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("norm", "eps", "step"), [("linf", 0.06, 0.015), ("l2", 4.0, 1.0)], ids=["linf", "l2"]
)
def test_pgd_success_at_least_foolbox(trained_model, batch, fmodel, norm, eps, step):
    x, y = batch
    cls = fb.attacks.LinfPGD if norm == "linf" else fb.attacks.L2PGD
    rates = {}
    for random_start in (False, True):
        attack = cls(steps=10, abs_stepsize=step, random_start=random_start)
        _, adv, succ = attack(fmodel, x, y, epsilons=eps)
        ours = run_attack(
            "pgd",
            trained_model,
            x,
            y,
            norm=norm,
            eps=eps,
            step_size=step,
            steps=10,
            random_start=random_start,
            seed=0,
            bounds=BOUNDS,
        )
        rates[random_start] = (float(ours.success.float().mean()), float(succ.float().mean()))
        if not random_start:  # the same deterministic iteration: the same outcome
            assert torch.equal(ours.success, succ)
            torch.testing.assert_close(ours.x_adv, adv, atol=1e-4, rtol=0)
    ours_best = max(r[0] for r in rates.values())
    theirs_best = max(r[1] for r in rates.values())
    assert ours_best >= theirs_best
    assert ours_best > 0


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_matches_foolbox(trained_model, batch, fmodel, norm):
    x, y = batch
    cls = fb.attacks.L2DeepFoolAttack if norm == "l2" else fb.attacks.LinfDeepFoolAttack
    adv, _, succ = cls(steps=50, overshoot=0.02)(fmodel, x, y, epsilons=None)
    res = run_attack(
        "deepfool", trained_model, x, y, norm=norm, steps=50, overshoot=0.02, bounds=BOUNDS
    )
    assert res.success.sum() >= succ.sum()
    p = 2 if norm == "l2" else float("inf")
    theirs = (adv - x).flatten(1).norm(p=p, dim=1)[succ].median()
    ours = res.norm[res.success].median()
    assert float(ours) <= 1.1 * float(theirs)


def test_cw_l2_matches_foolbox(trained_model, batch, fmodel):
    x, y = batch
    attack = fb.attacks.L2CarliniWagnerAttack(
        binary_search_steps=5, steps=100, stepsize=0.01, initial_const=1e-3
    )
    adv, _, _ = attack(fmodel, x, y, epsilons=None)
    fooled = _really_fooled(trained_model, x, adv, y)
    res = run_attack(
        "cw",
        trained_model,
        x,
        y,
        binary_search_steps=5,
        steps=100,
        lr=0.01,
        initial_const=1e-3,
        bounds=BOUNDS,
    )
    assert res.success.sum() >= fooled.sum()
    assert res.success.sum() > 0
    theirs = (adv - x).flatten(1).norm(dim=1)[fooled].median()
    ours = res.norm[res.success].median()
    assert float(ours) <= 1.1 * float(theirs)
