"""The attack contract: registry, budgets, eps = 0, model state, input, bounds, success.

Every registered attack is contract-tested: the cases come from ``available_attacks()``
and each attack class's own ``quick_params``; an attack without them fails here.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from napari_cryoguard import CryoGuardError
from napari_cryoguard.attacks import (
    FGSM,
    AttackResult,
    available_attacks,
    get_attack_class,
    get_attack_params,
    run_attack,
)
from napari_cryoguard.attacks.base import ATTACKS
from napari_cryoguard.evaluate.suite import attack_mode, budget_unit, cell_params, normalize_suite
from napari_cryoguard.models import build_model, tiny_params
from napari_cryoguard.params import choices_of, fields_of

CUBE = 16  # the toy cube of conftest.py
BOUNDS = (-3.0, 6.0)  # conftest.BOUNDS: the batch fixture is clipped to it

BUILTIN = ("fgsm", "pgd", "bim", "deepfool", "cw", "cw_linf", "uniform_noise", "salt_pepper",
           "bpgd", "apgd_ce", "apgd_t", "square")


def quick_params(name: str) -> dict:
    """The attack's own small but effective settings; none declared fails the test."""
    params = get_attack_class(name).quick_params
    if not isinstance(params, dict):
        pytest.fail(
            f"attack {name!r} declares no quick_params (a dict of small, effective parameters "
            "on its class): it cannot be contract-tested"
        )
    return dict(params)


# every registered attack, with the settings its class declares
FAST: dict[str, dict | None] = {n: get_attack_class(n).quick_params for n in available_attacks()}
LINF = [
    ("fgsm", {"eps": 0.07}),
    ("pgd", {"eps": 0.07, "step_size": 0.03, "steps": 5, "seed": 0}),
    ("pgd", {"eps": 0.07, "step_size": 0.03, "steps": 5, "seed": 0, "loss": "margin"}),
    ("bim", {"eps": 0.07, "step_size": 0.03, "steps": 5}),
    ("cw_linf", {"eps": 0.07, "step_size": 0.03, "steps": 5}),
    ("cw", {"norm": "linf", "eps": 0.07, "step_size": 0.03, "steps": 5}),
    ("bpgd", {"eps": 0.07, "n_pgd": 5, "n_binary": 4}),
    ("uniform_noise", {"eps_max": 0.07, "steps": 5, "seed": 0}),
]
L2 = [
    ("pgd", {"norm": "l2", "eps": 1.5, "step_size": 0.7, "steps": 5, "seed": 0}),
    ("bim", {"norm": "l2", "eps": 1.5, "step_size": 0.7, "steps": 5}),
    ("bpgd", {"norm": "l2", "eps": 1.5, "n_pgd": 5, "n_binary": 4}),
    ("uniform_noise", {"norm": "l2", "eps_max": 1.5, "steps": 5, "seed": 0}),
]
ZERO = [
    ("fgsm", {"eps": 0.0}),
    ("pgd", {"eps": 0.0, "step_size": 0.05, "steps": 3, "seed": 0}),
    ("pgd", {"norm": "l2", "eps": 0.0, "step_size": 0.5, "steps": 3, "seed": 0}),
    ("bim", {"eps": 0.0, "step_size": 0.05, "steps": 3}),
    ("cw_linf", {"eps": 0.0, "steps": 3}),
    ("uniform_noise", {"eps_max": 0.0, "steps": 3}),
    ("salt_pepper", {"max_fraction": 0.0, "steps": 3}),
    ("bpgd", {"eps": 0.0, "n_pgd": 3, "n_binary": 2}),
]


def test_registry_lists_every_attack_with_a_dataclass():
    names = available_attacks()
    assert set(BUILTIN) <= set(names) and set(FAST) == set(names)
    for name in names:
        cls = get_attack_params(name)
        assert dataclasses.is_dataclass(cls)
        assert "bounds" in {f.name for f in dataclasses.fields(cls)}
        assert cls().bounds is None  # never an implicit clamp


def test_unknown_attack_and_parameter_raise_clear_errors(trained_model, batch):
    x, y = batch
    with pytest.raises(CryoGuardError, match="pgd"):
        run_attack("no-such-attack", trained_model, x, y)
    with pytest.raises(CryoGuardError, match="step_size"):
        run_attack("pgd", trained_model, x, y, stepsize=0.1)
    with pytest.raises(CryoGuardError, match="norm"):
        run_attack("pgd", trained_model, x, y, norm="l3")
    with pytest.raises(CryoGuardError, match="eps"):
        run_attack("fgsm", trained_model, x, y, eps=-0.1)
    with pytest.raises(CryoGuardError, match="bounds"):
        run_attack("fgsm", trained_model, x, y, bounds=(1.0, 0.0))
    with pytest.raises(CryoGuardError, match="labels"):
        run_attack("fgsm", trained_model, x, y[:3])


@pytest.mark.parametrize(
    ("name", "params"), LINF, ids=[f"{n}-{i}" for i, (n, _) in enumerate(LINF)]
)
def test_linf_attacks_respect_eps(trained_model, batch, name, params):
    x, y = batch
    res = run_attack(name, trained_model, x, y, **params)
    eps = params.get("eps", params.get("eps_max"))
    assert float((res.x_adv - x).abs().max()) <= eps + 1e-6
    assert torch.all(res.norm_linf <= eps + 1e-6)
    if name == "bpgd":  # the margin: within eps, and exactly eps where flagged
        assert torch.all(res.margins <= eps + 1e-6)
        assert torch.all(res.margins[res.extras["max_reached"]] == eps)
    else:
        assert torch.allclose(res.norm, res.norm_linf)
    if name != "uniform_noise":  # noise needs far larger amplitudes
        assert res.success.any(), "the budget should fool at least one sample"


def test_fgsm_perturbation_is_exactly_eps_times_sign(trained_model, batch):
    x, y = batch
    res = run_attack("fgsm", trained_model, x, y, eps=0.05)
    xg = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(trained_model(xg), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xg)
    torch.testing.assert_close(res.perturbation, 0.05 * g.sign(), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("name", "params"), L2, ids=[n for n, _ in L2])
def test_l2_attacks_respect_radius(trained_model, batch, name, params):
    x, y = batch
    res = run_attack(name, trained_model, x, y, **params)
    eps = params.get("eps", params.get("eps_max"))
    l2 = (res.x_adv - x).flatten(1).norm(dim=1)
    assert torch.all(l2 <= eps * (1 + 1e-5))
    assert res.norm_name == "l2"
    if name in ("pgd", "bim"):
        # the budget is used: most samples sit on the sphere
        assert float((l2 > 0.99 * eps).float().mean()) > 0.5


@pytest.mark.parametrize(
    ("name", "params"), ZERO, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ZERO)]
)
def test_eps_zero_changes_nothing(trained_model, batch, name, params):
    x, y = batch
    y_bad = y.clone()
    y_bad[:3] = (y_bad[:3] + 1) % 3  # three samples are now "misclassified"
    res = run_attack(name, trained_model, x, y_bad, **params)
    assert torch.equal(res.x_adv, x)
    assert torch.equal(res.perturbation, torch.zeros_like(x))
    assert torch.equal(res.success, res.pred_before != y_bad)
    assert res.success[:3].all() and not res.success[3:].any()


@pytest.mark.parametrize("name", list(FAST))
def test_every_attack_declares_its_facts(name):
    """The facts evaluation reads (no name branches there) are declared and coherent."""
    cls = get_attack_class(name)
    params = quick_params(name)
    fields = {f.name: f for f in fields_of(cls.params_cls)}
    assert set(params) <= set(fields)
    norm = fields.get("norm")
    assert set(cls.norms) == set(norm.choices if norm else (cls.default_norm,))
    assert cls.norm_of({}) in cls.norms
    for fact in (cls.budget_field, cls.search_limit):
        assert fact is None or fact in fields
    assert isinstance(cls.minimal, bool) and cls.budget_unit in ("normalized", "fraction")
    assert cls.budget_field is not None or cls.is_minimal({})  # a bounded attack takes a budget
    assert cls.budget_label({})
    if norm is not None:
        assert choices_of(norm.hint) == norm.choices


def check_model_state_and_input(name, params, start_training):
    """The contract on a fresh model: its mode, flags, weights and the input come back
    untouched, and the result's predictions are the eval-mode ones."""
    torch.manual_seed(3)
    model = build_model("cb3d", 3, cube=CUBE, **tiny_params("cb3d"))
    model.train(start_training)
    frozen = next(iter(model.parameters()))
    frozen.requires_grad_(False)  # a mixed set of flags must come back as it was
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 1, CUBE, CUBE, CUBE)
    x_copy = x.clone()
    y = torch.tensor([0, 1, 2, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = run_attack(name, model, x, y, **params)
    assert model.training is start_training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert torch.equal(x, x_copy)
    # the attack ran in eval mode: its "before" predictions are the eval-mode ones
    model.eval()
    with torch.no_grad():
        assert torch.equal(res.pred_before, model(x).argmax(1))
        assert torch.equal(res.pred_after, model(res.x_adv).argmax(1))


@pytest.mark.parametrize("start_training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(FAST))
def test_model_state_and_input_untouched(name, start_training):
    check_model_state_and_input(name, quick_params(name), start_training)


def test_numpy_4d_input_is_not_mutated_and_gives_5d(trained_model, batch):
    x, y = batch
    xn = x[:, 0].numpy().copy()
    keep = xn.copy()
    res = run_attack("pgd", trained_model, xn, y.numpy(), eps=0.05, steps=2, seed=0)
    assert np.array_equal(xn, keep)
    assert res.x_adv.shape == x.shape
    assert torch.equal(res.x_adv - res.perturbation, x) or torch.allclose(
        res.x_adv - res.perturbation, x, atol=1e-6
    )


def check_bounds(model, x, y, name, params):
    """The contract on bounds: ``(lo, hi)`` and ``"sample"`` are honoured, success means
    the prediction changed."""
    lo, hi = BOUNDS
    res = run_attack(name, model, x, y, bounds=BOUNDS, **params)
    assert float(res.x_adv.min()) >= lo and float(res.x_adv.max()) <= hi
    res = run_attack(name, model, x, y, bounds="sample", **params)
    f, fa = x.flatten(1), res.x_adv.flatten(1)
    assert torch.all(fa.amin(1) >= f.amin(1)) and torch.all(fa.amax(1) <= f.amax(1))
    # success always means the prediction changed
    assert torch.equal(res.success, res.pred_after != y)


@pytest.mark.parametrize("name", list(FAST))
def test_bounds_respected(trained_model, batch, toy, name):
    assert toy.BOUNDS == BOUNDS
    x, y = batch
    check_bounds(trained_model, x, y, name, quick_params(name))


def test_input_outside_explicit_bounds_is_refused(trained_model, batch):
    x, y = batch
    with pytest.raises(CryoGuardError, match="outside"):
        run_attack("fgsm", trained_model, x, y, bounds=(0.0, 1.0))


@pytest.mark.parametrize("name", ["fgsm", "pgd", "deepfool", "cw"])
def test_no_clamp_without_bounds(trained_model, batch, name):
    x, y = batch
    f = x.flatten(1)
    lo, hi = f.amin(1).view(-1, 1, 1, 1, 1), f.amax(1).view(-1, 1, 1, 1, 1)
    u = (x - lo) / (hi - lo)  # data in [0, 1] exactly
    params = {
        "fgsm": {"eps": 0.2},
        "pgd": {"eps": 0.2, "step_size": 0.1, "steps": 3},
        "deepfool": {"steps": 5, "overshoot": 0.5},
        "cw": {"steps": 10, "binary_search_steps": 2, "initial_const": 10.0, "lr": 0.1},
    }[name]
    res = run_attack(name, trained_model, u, y, **params)
    assert float(res.x_adv.min()) < 0.0 or float(res.x_adv.max()) > 1.0


def test_targeted_attacks_reach_the_target(trained_model, batch):
    x, y = batch
    with torch.no_grad():
        target = trained_model(x).argsort(1)[:, 1]  # the runner-up class
    res = run_attack(
        "pgd", trained_model, x, target, targeted=True, eps=0.3, step_size=0.05, steps=10, seed=0
    )
    assert res.targeted
    assert torch.equal(res.success, res.pred_after == target)
    assert float(res.success.float().mean()) >= 0.8
    res_cw = run_attack(
        "cw",
        trained_model,
        x,
        target,
        targeted=True,
        steps=40,
        binary_search_steps=4,
        initial_const=1.0,
        lr=0.05,
    )
    assert torch.equal(res_cw.success, res_cw.pred_after == target)
    assert float(res_cw.success.float().mean()) >= 0.8
    res_f = run_attack("fgsm", trained_model, x, target, targeted=True, eps=0.1)
    assert torch.equal(res_f.success, res_f.pred_after == target)
    # the step goes towards the target: its probability rises for (almost) every sample
    rows = torch.arange(len(x))
    gain = res_f.probs_after[rows, target] - res_f.probs_before[rows, target]
    assert float((gain > 0).float().mean()) >= 0.9
    res_u = run_attack("fgsm", trained_model, x, target, eps=0.1)
    gain_u = res_u.probs_after[rows, target] - res_u.probs_before[rows, target]
    assert float(gain.mean()) > float(gain_u.mean())


@pytest.mark.parametrize("name", ["uniform_noise", "salt_pepper"])
def test_decision_attacks_use_no_gradients(trained_model, batch, toy, name):
    x, y = batch
    guarded = toy.GradientForbidden(trained_model)
    res = run_attack(name, guarded, x, y, seed=0)
    assert torch.equal(res.success, res.pred_after != y)
    assert not res.zero_grad.any()
    with pytest.raises(AssertionError, match="gradients"):  # the guard does bite
        run_attack("fgsm", guarded, x, y)


class _ReluSum(nn.Module):
    """Logits from relu(x).sum(): the input gradient is exactly zero for negative volumes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 2)

    def forward(self, x):
        return self.fc(torch.relu(x).flatten(1).sum(1, keepdim=True))


@pytest.mark.parametrize("name", ["fgsm", "pgd", "deepfool", "cw", "bpgd"])
def test_zero_gradient_is_flagged(name):
    model = _ReluSum()
    x = torch.rand(4, 1, CUBE, CUBE, CUBE) * 1e-3  # small logits: no softmax saturation
    x[1] -= 2.0  # all negative: relu kills every gradient
    x[3] -= 2.0
    with torch.no_grad():
        y = model(x).argmax(1)
    params = {"cw": {"steps": 3, "binary_search_steps": 1}}.get(name, {})
    with pytest.warns(RuntimeWarning, match="gradient is exactly zero"):
        res = run_attack(name, model, x, y, **params)
    assert res.zero_grad.tolist() == [False, True, False, True]
    assert res.zero_grad_samples == [1, 3]


def test_result_summary_and_numpy(trained_model, batch):
    x, y = batch
    res = run_attack("pgd", trained_model, x, y, eps=0.1, step_size=0.03, steps=4, seed=0)
    assert isinstance(res, AttackResult) and len(res) == len(x)
    s = res.summary()
    assert s["success_rate"] == pytest.approx(float(res.success.float().mean()))
    assert s["accuracy_before"] == pytest.approx(float((res.pred_before == y).float().mean()))
    assert s["accuracy_after"] == pytest.approx(float((res.pred_after == y).float().mean()))
    if res.success.any():
        assert s["mean_norm"] == pytest.approx(float(res.norm[res.success].mean()), rel=1e-6)
    torch.testing.assert_close(res.probs_before.sum(1), torch.ones(len(x)))
    assert torch.equal(res.pred_after, res.probs_after.argmax(1))
    arrays = res.numpy()
    assert arrays["x_adv"].shape == tuple(x.shape) and arrays["params"]["eps"] == 0.1
    assert res.params == dataclasses.asdict(get_attack_params("pgd")(**res.params))


def test_attack_class_can_be_called_directly(trained_model, batch):
    x, y = batch
    a = FGSM(eps=0.05)
    r1 = a(trained_model, x, y)
    r2 = run_attack("fgsm", trained_model, x, y, eps=0.05)
    assert torch.equal(r1.x_adv, r2.x_adv)
    with pytest.raises(CryoGuardError):
        FGSM(epsilon=0.05)


@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
def test_attacks_work_under_no_grad_and_inference_mode(trained_model, batch, context):
    x, y = batch
    ctx = torch.no_grad() if context == "no_grad" else torch.inference_mode()
    with ctx:
        xi = x.clone()  # an inference tensor under inference_mode
        res = run_attack("pgd", trained_model, xi, y, eps=0.05, steps=2, seed=0)
    ref = run_attack("pgd", trained_model, x, y, eps=0.05, steps=2, seed=0)
    assert torch.equal(res.x_adv, ref.x_adv)
    assert not res.zero_grad.any()


def test_sample_bounds_on_a_constant_volume(trained_model):
    x = torch.zeros(2, 1, CUBE, CUBE, CUBE)
    x[1] = torch.linspace(-1, 1, CUBE**3).view(1, CUBE, CUBE, CUBE)
    y = torch.tensor([0, 1])
    for name in ("cw", "pgd", "deepfool"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = run_attack(name, trained_model, x, y, bounds="sample", **quick_params(name))
        assert torch.isfinite(res.x_adv).all()
        assert torch.equal(res.x_adv[0], x[0])  # nothing can move inside [0, 0]


# --------------------------------------------------------------------------- a new attack
# The "add an attack" recipe, followed: one new module (written to a temporary folder, as
# a contributor's file would be) with a parameter dataclass, the attack class with its
# facts and the @register_attack decorator. Importing it is all it takes for the attack
# to be listed, contract-tested (the checks above) and evaluated as a suite cell.
MODULE = '''
"""Random-sign noise: x + eps * s with one random sign per voxel (a test attack)."""

from dataclasses import dataclass

import torch

from napari_cryoguard.attacks import ops
from napari_cryoguard.attacks.base import Attack, AttackParams, register_attack
from napari_cryoguard.registry import number


@dataclass
class SignNoiseParams(AttackParams):
    """Parameters of :class:`SignNoise`.

    Attributes
    ----------
    eps
        L-inf budget in the data's units.
    seed
        Seed of the signs (None: torch's global RNG).
    """

    eps: float = number(0.03)
    seed: int | None = None


@register_attack("sign-noise", SignNoiseParams)
class SignNoise(Attack):
    """One random vertex of the L-inf ball: ``x + eps * s``, ``s`` in {-1, 1}."""

    uses_gradients = False
    norms = ("linf",)
    quick_params = {"eps": 0.5, "seed": 0}

    def _run(self, model, x, y, box, logits0):
        p = self.params
        gen = ops.make_generator(p.seed, x.device)
        s = torch.randint(0, 2, x.shape, generator=gen, device=x.device).to(x.dtype) * 2 - 1
        return ops.clamp(x + p.eps * s, box), 1, {}
'''


@pytest.fixture
def sign_noise(tmp_path, monkeypatch):
    """The new attack's module, imported from a temporary folder; unregistered after."""
    (tmp_path / "sign_noise_attack.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        yield importlib.import_module("sign_noise_attack")
    finally:
        ATTACKS.entries.pop("sign_noise", None)
        sys.modules.pop("sign_noise_attack", None)
    assert "sign_noise" not in available_attacks()


def test_a_new_attack_module_is_registered_and_contract_tested(sign_noise, trained_model, batch):
    assert "sign_noise" in available_attacks()
    cls = get_attack_class("Sign-Noise")
    assert cls is sign_noise.SignNoise and cls.params_cls is sign_noise.SignNoiseParams
    params = quick_params("sign_noise")
    for start_training in (True, False):
        check_model_state_and_input("sign_noise", params, start_training)
    x, y = batch
    check_bounds(trained_model, x, y, "sign_noise", params)
    res = run_attack("sign_noise", trained_model, x, y, **params)
    assert torch.allclose(res.norm_linf, torch.full((len(x),), 0.5))


def test_a_new_attack_is_a_suite_cell(sign_noise, trained_model, batch):
    (spec,) = normalize_suite([{"name": "sign_noise", "budgets": [0.3, 0.1]}])
    assert spec["mode"] == attack_mode(spec) == "bounded"
    assert spec["budgets"] == [0.1, 0.3] and spec["label"] == "sign_noise"
    assert budget_unit(spec) == "eps (L-inf, normalised units)"
    cell = cell_params(spec, spec["variants"][0], 0.3)
    assert cell == {"eps": 0.3}
    x, y = batch
    res = run_attack(spec["name"], trained_model, x, y, seed=0, **cell)
    assert float(res.norm_linf.max()) == pytest.approx(0.3)


def test_an_attack_without_quick_params_fails_the_contract_tests(sign_noise):
    @ATTACKS.register("no_quick", sign_noise.SignNoiseParams)
    class NoQuick(sign_noise.SignNoise):
        quick_params = None

    try:
        with pytest.raises(pytest.fail.Exception, match="no_quick.*quick_params"):
            quick_params("no_quick")
    finally:
        ATTACKS.entries.pop("no_quick", None)


def test_a_new_attack_is_evaluated(sign_noise, tiny_checkpoint, test_npz, tmp_path):
    from napari_cryoguard.evaluate import evaluate

    m = evaluate(
        [tiny_checkpoint], test_npz, attacks=[{"name": "sign_noise", "budgets": [0.0, 0.5]}],
        out=tmp_path / "eval", device="cpu", margins=False, max_samples=6,
    )
    (r,) = m["models"].values()
    curve = r["attacks"]["sign_noise"]
    assert curve["budget_unit"] == "eps (L-inf, normalised units)"
    zero, half = curve["points"]
    assert zero["robust_accuracy"] == pytest.approx(r["clean"]["accuracy"])
    assert half["robust_accuracy"] <= zero["robust_accuracy"] + 1e-12
