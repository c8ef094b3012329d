"""eps_unit="range": budgets as a fraction of each sample's intensity range (max - min)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_cryoguard import CryoGuardError
from napari_cryoguard.attacks import available_attacks, get_attack_params, run_attack
from napari_cryoguard.attacks.units import range_coordinates, sample_range

#: small settings per attack (budgets in range units)
SMALL = {
    "apgd_ce": {"eps": 0.02, "steps": 5},
    "apgd_t": {"eps": 0.02, "steps": 5, "n_target_classes": 2},
    "bim": {"eps": 0.02, "step_size": 0.005, "steps": 5},
    "bpgd": {"eps": 0.05, "n_pgd": 3, "n_binary": 3},
    "cw": {"steps": 5, "binary_search_steps": 2},
    "cw_linf": {"eps": 0.02, "step_size": 0.005, "steps": 5},
    "deepfool": {"steps": 5},
    "fgsm": {"eps": 0.02},
    "pgd": {"eps": 0.02, "step_size": 0.005, "steps": 5, "seed": 0},
    "salt_pepper": {"steps": 5, "seed": 0},
    "square": {"eps": 0.02, "n_queries": 40, "seed": 0},
    "uniform_noise": {"eps_max": 0.1, "steps": 5, "seed": 0},
}
#: the parameter bounding each attack's perturbation, and its norm
BUDGET = {
    "apgd_ce": ("eps", "linf"),
    "apgd_t": ("eps", "linf"),
    "bim": ("eps", "linf"),
    "bpgd": ("eps", "linf"),
    "cw_linf": ("eps", "linf"),
    "fgsm": ("eps", "linf"),
    "pgd": ("eps", "linf"),
    "square": ("eps", "linf"),
    "uniform_noise": ("eps_max", "linf"),
}


@pytest.fixture(scope="module")
def spread(batch):
    """8 samples of the toy batch, scaled so their ranges differ by up to 8x."""
    x, y = batch
    f = torch.tensor([0.5, 1.0, 2.0, 4.0, 0.5, 1.0, 2.0, 4.0]).reshape(-1, 1, 1, 1, 1)
    return (x[:8] * f).contiguous(), y[:8]


def test_every_registered_attack_is_covered():
    assert set(available_attacks()) <= set(SMALL)
    for name in available_attacks():
        fields = {f.name: f.default for f in dataclasses.fields(get_attack_params(name))}
        assert fields["eps_unit"] == "normalized"  # the stated default


@pytest.mark.parametrize("name", sorted(SMALL))
def test_range_budget_holds_per_sample(trained_model, spread, name):
    if name not in available_attacks():
        pytest.skip(f"attack {name!r} is not registered in this checkout")
    x, y = spread
    r = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).double()
    with _no_check():
        res = run_attack(name, trained_model, x, y, eps_unit="range", **SMALL[name])
    assert res.params["eps_unit"] == "range"
    np.testing.assert_allclose(res.extras["intensity_range"].double(), r, rtol=1e-6)
    assert torch.allclose(res.x_adv, x + res.perturbation, atol=1e-6)
    # predictions recomputed on the returned batch, in data units
    with torch.no_grad():
        assert torch.equal(res.pred_after, trained_model(res.x_adv).argmax(1))
    if name in BUDGET:
        key, norm = BUDGET[name]
        eps = SMALL[name][key]
        got = res.norm_linf if norm == "linf" else res.norm_l2
        assert bool((got.double() <= eps * r * (1 + 1e-5) + 1e-7).all()), (got, eps * r)
        # the budget is used per sample: the largest perturbations scale with the range
        if name in ("fgsm", "pgd", "bim"):
            np.testing.assert_allclose(got.double(), eps * r, rtol=1e-4)
    if name == "bpgd":
        assert bool((res.margins.double() <= 0.05 * r * (1 + 1e-5)).all())


class _no_check:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *a):
        self._w.__exit__(*a)


def test_fgsm_range_is_eps_times_range_times_sign(trained_model, spread):
    x, y = spread
    res = run_attack("fgsm", trained_model, x, y, eps=0.01, eps_unit="range")
    xg = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(trained_model(xg), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xg)
    r = x.flatten(1).amax(1) - x.flatten(1).amin(1)
    want = 0.01 * r.reshape(-1, 1, 1, 1, 1) * g.sign()
    torch.testing.assert_close(res.perturbation, want, rtol=1e-4, atol=1e-6)


def test_pgd_range_equals_normalized_with_eps_times_range(trained_model, spread):
    x, y = spread
    kw = {"steps": 4, "random_start": False}
    res = run_attack("pgd", trained_model, x, y, eps=0.02, step_size=0.006, eps_unit="range", **kw)
    r = sample_range(x)
    for i in range(len(x)):
        one = run_attack(
            "pgd",
            trained_model,
            x[i : i + 1],
            y[i : i + 1],
            eps=0.02 * float(r[i]),
            step_size=0.006 * float(r[i]),
            **kw,
        )
        torch.testing.assert_close(res.perturbation[i : i + 1], one.perturbation, rtol=1e-3, atol=1e-5)


def test_deepfool_is_scale_free(trained_model, spread):
    """DeepFool's steps do not depend on the coordinates' scale: both units agree."""
    x, y = spread
    a = run_attack("deepfool", trained_model, x, y, steps=5)
    b = run_attack("deepfool", trained_model, x, y, steps=5, eps_unit="range")
    torch.testing.assert_close(a.perturbation, b.perturbation, rtol=1e-3, atol=1e-4)


def test_explicit_bounds_and_sample_bounds_are_honoured(trained_model, batch, toy):
    x, y = batch
    lo, hi = toy.BOUNDS
    res = run_attack("pgd", trained_model, x[:4], y[:4], eps=0.05, steps=3, step_size=0.02,
                     bounds=(lo, hi), eps_unit="range", seed=0)
    assert float(res.x_adv.min()) >= lo and float(res.x_adv.max()) <= hi
    r = sample_range(x[:4])
    assert bool((res.norm_linf <= 0.05 * r * (1 + 1e-5)).all())
    res = run_attack("pgd", trained_model, x[:4], y[:4], eps=0.05, steps=3, step_size=0.02,
                     bounds="sample", eps_unit="range", seed=0)
    f, fa = x[:4].flatten(1), res.x_adv.flatten(1)
    assert bool((fa.amin(1) >= f.amin(1) - 1e-6).all() and (fa.amax(1) <= f.amax(1) + 1e-6).all())


def test_eps_zero_changes_nothing_and_bad_units_are_refused(trained_model, spread):
    x, y = spread
    res = run_attack("pgd", trained_model, x, y, eps=0.0, steps=2, eps_unit="range")
    assert float(res.perturbation.abs().max()) == 0.0
    with pytest.raises(CryoGuardError, match="eps_unit"):
        run_attack("fgsm", trained_model, x, y, eps=0.01, eps_unit="percent")
    flat = torch.zeros(1, 1, 16, 16, 16)
    with pytest.raises(CryoGuardError, match="range"):
        run_attack("fgsm", trained_model, flat, y[:1], eps=0.01, eps_unit="range")


def test_range_coordinates_round_trip(trained_model, spread):
    x, _ = spread
    rc = range_coordinates(trained_model, x)
    span = rc.u.flatten(1).amax(1) - rc.u.flatten(1).amin(1)
    torch.testing.assert_close(span, torch.ones(len(x)), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(rc.model(rc.u), trained_model(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rc.to_data(rc.u + 0.01), x + 0.01 * rc.scale.reshape(-1, 1, 1, 1, 1))


# --------------------------------------------------------------------------- defenses
@pytest.fixture()
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _defense_batch(spread):
    from napari_cryoguard.defenses import Batch

    x, y = spread
    return Batch(x=x[:6].clone(), y=y[:6].clone(), index=torch.arange(6))


def test_training_examples_respect_the_range_budget(trained_model, spread, one_thread):
    from napari_cryoguard.defenses.at import pgd_examples

    x, y = spread
    r = sample_range(x)
    x_adv = pgd_examples(
        trained_model, x, y, norm="linf", eps=0.02, step_size=0.01, steps=3, random_start=True,
        eps_unit="range",
    )
    d = (x_adv - x).flatten(1).abs().amax(1)
    assert bool((d <= 0.02 * r * (1 + 1e-5)).all())
    # three sign steps of half the budget reach its edge for every sample
    np.testing.assert_allclose(d.double(), 0.02 * r.double(), rtol=1e-4)
    x_n = pgd_examples(
        trained_model, x, y, norm="linf", eps=0.02, step_size=0.01, steps=3, random_start=False,
    )
    np.testing.assert_allclose((x_n - x).flatten(1).abs().amax(1).double(), 0.02, rtol=1e-4)


@pytest.mark.parametrize("name", ["at", "trades", "rat", "rst", "mirst", "llr", "ima"])
def test_every_eps_defense_takes_the_unit(spread, name, one_thread):
    from napari_cryoguard.defenses import defense_params_class, get_defense
    from napari_cryoguard.models import build_model, tiny_params

    cls = defense_params_class(name)
    assert {f.name: f.default for f in dataclasses.fields(cls)}["eps_unit"] == "normalized"
    torch.manual_seed(0)
    net = build_model("cb3d", 3, 16, **tiny_params("cb3d"))
    batch = _defense_batch(spread)
    small = {"steps": 2} if name != "ima" else {"n_pgd": 2, "n_binary": 2}
    if name == "rat":
        small["steps_prime"] = 2
    if name == "mirst":
        small["instance_steps"] = (1, 1, 2, 2)
    params = cls(eps_unit="range", **small)
    kw = {"eps_unit": "range", **small}
    if name == "ima":
        from napari_cryoguard.defenses.ima import ima_loss, ima_update_margins

        margins = torch.full((6,), 0.01)
        loss, logs = ima_loss(net, batch, params, margins)
        new = ima_update_margins(net, batch.x, batch.y, margins, params, 0.01)
        assert bool(((new >= 0.01 - 1e-7) & (new <= params.eps_max + 1e-7)).all())
    else:
        loss, logs = get_defense(name, **kw).loss(net, batch)
    assert torch.isfinite(loss) and loss.requires_grad
    with pytest.raises((ValueError, CryoGuardError)):
        cls(eps_unit="percent")


def test_ima_margins_in_range_units_are_boundary_distances_over_the_range(
    trained_model, spread, one_thread
):
    """BPGD in data units, margins divided by each sample's range (IMA paper's unit)."""
    from napari_cryoguard.defenses.ima import IMAParams, bpgd_per_sample, ima_update_margins

    x, y = spread
    with torch.no_grad():
        ok = trained_model(x).argmax(1) == y
    x, y = x[ok], y[ok]
    r = sample_range(x)
    params = IMAParams(eps_max=0.5, n_pgd=5, n_binary=6, eps_unit="range")
    margins = torch.full((len(x),), 0.2)
    new = ima_update_margins(trained_model, x, y, margins, params, 0.01)
    _, found, dist = bpgd_per_sample(
        trained_model.eval(), x, y, margins * r, norm="linf", n_pgd=5, alpha=4.0, n_binary=6,
        loss="ce",
    )
    want = torch.where(found, dist / r, margins + 0.01).clamp(0.01, 0.5)
    torch.testing.assert_close(new, want, rtol=1e-4, atol=1e-6)


def test_attack_dataset_in_batches_keeps_each_samples_budget(trained_model, spread, one_thread):
    from napari_cryoguard.attacks import attack_dataset

    x, y = spread
    res = attack_dataset(
        trained_model, x[:, 0].numpy(), y.numpy(), "pgd", batch_size=3, device="cpu",
        eps=0.02, step_size=0.01, steps=3, eps_unit="range", seed=0,
    )
    r = sample_range(x).double()
    np.testing.assert_allclose(res.extras["intensity_range"].double(), r, rtol=1e-6)
    np.testing.assert_allclose(res.norm_linf.double(), 0.02 * r, rtol=1e-4)
