"""Losses of the robust-training defenses (at, trades, rat, rst, mirst, gr, llr, simclr)
and the 3D augmentations, each against a case computed independently here."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_cryoguard import CryoGuardError
from napari_cryoguard.defenses import Batch, ModelHandle, defense_params_class, get_defense
from napari_cryoguard.defenses.at import ATParams, at_loss, pgd_examples
from napari_cryoguard.defenses.augment import (
    AugmentParams,
    add_gaussian_noise,
    augment_batch,
    missing_wedge_remask,
    random_flip,
    random_rot90,
    rot90_3d,
)
from napari_cryoguard.defenses.gr import (
    GRParams,
    LLRParams,
    gr_loss,
    llr_loss,
    llr_perturbation,
    local_linearity,
)
from napari_cryoguard.defenses.mirst import MIRSTParams, RSTParams, mirst_loss, rst_loss
from napari_cryoguard.defenses.rat import RATParams, rat_loss, rat_regulariser_examples
from napari_cryoguard.defenses.simclr import SimCLR, SimCLRParams, nt_xent, simclr_loss
from napari_cryoguard.defenses.standard import StandardParams, standard_loss
from napari_cryoguard.defenses.trades import TradesParams, trades_examples, trades_loss
from napari_cryoguard.models import build_model, tiny_params

CUBE = 16


@pytest.fixture()
def net():
    torch.manual_seed(0)
    return build_model("cb3d", 3, CUBE, **tiny_params("cb3d"))


@pytest.fixture()
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, CUBE, CUBE, CUBE, generator=g)
    return Batch(x=x, y=torch.tensor([0, 2, 1, 2]), index=torch.arange(4))


def _grads(model: nn.Module) -> list[torch.Tensor]:
    out = [
        p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
        for p in model.parameters()
    ]
    model.zero_grad(set_to_none=True)
    return out


def _run(loss_fn, net, batch, params, seed=7):
    """Loss value and weight gradients of ``loss_fn`` (train mode, seeded RNG)."""
    handle = ModelHandle(net)
    handle.train()
    torch.manual_seed(seed)
    loss, logs = loss_fn(handle, batch, params)
    loss.backward()
    return loss.detach(), logs, _grads(net)


def _assert_same(a, b):
    la, _, ga = a
    lb, _, gb = b
    assert torch.equal(la, lb)
    assert all(torch.equal(x, y) for x, y in zip(ga, gb, strict=True))


# --------------------------------------------------------------------------- registry


def test_paper_defaults():
    d = {
        n: {f.name: f.default for f in dataclasses.fields(defense_params_class(n))}
        for n in ("at", "trades", "rat", "rst", "mirst", "gr", "llr", "ima", "simclr")
    }
    assert (d["at"]["eps"], d["at"]["step_size"], d["at"]["steps"]) == (0.01, 0.001, 10)
    assert d["at"]["random_start"] is True
    assert d["rat"]["gamma"] == 1.0 and d["rat"]["eps_prime"] == 0.01
    assert d["rat"]["steps_prime"] == 10 and d["rat"]["step_size_prime"] == 0.001
    assert d["mirst"]["weights"] == (0.34, 0.28, 0.22, 0.16)
    assert d["mirst"]["alpha"] == 1.0 and d["rst"]["alpha"] == 1.0
    assert d["mirst"]["eps"] == pytest.approx(5 / 255)
    assert (d["llr"]["lambda_lin"], d["llr"]["mu_grad"]) == (3.0, 4.0)
    assert d["gr"]["weight"] == 1.0 and d["trades"]["beta"] == 1.0
    assert (d["ima"]["beta"], d["ima"]["n_pgd"], d["ima"]["n_binary"]) == (0.5, 20, 10)
    assert d["ima"]["alpha"] == 4.0
    with pytest.raises(CryoGuardError, match="valid"):
        get_defense("rat", gama=1.0)
    with pytest.raises(CryoGuardError):
        get_defense("at", norm="l3")
    with pytest.raises(CryoGuardError):
        get_defense("mirst", instance_steps=[3, 2, 9, 10])


# --------------------------------------------------------------------------- at


def test_at_one_step_matches_hand_computed(net, batch):
    net.eval()  # no dropout: the example and the loss are deterministic
    p = ATParams(steps=1, random_start=False, step_size=0.004, eps=0.003)
    xg = batch.x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(net(xg), batch.y, reduction="sum"), xg)
    x_adv = batch.x + (0.004 * g.sign()).clamp(-0.003, 0.003)
    expected = F.cross_entropy(net(x_adv), batch.y)
    loss, logs = at_loss(ModelHandle(net), batch, p)
    torch.testing.assert_close(loss, expected)
    assert logs["adv_ce"] == pytest.approx(float(expected.detach()))
    assert not net.training  # the mode is restored


def test_at_examples_stay_in_ball_and_restore_mode(net, batch):
    net.train()
    torch.manual_seed(0)
    x_adv = pgd_examples(
        net, batch.x, batch.y, norm="linf", eps=0.01, step_size=0.004, steps=3, random_start=True
    )
    assert net.training and all(m.training for m in net.modules())
    d = (x_adv - batch.x).abs().amax()
    assert 0.0 < float(d) <= 0.01 + 1e-6
    assert all(p.grad is None for p in net.parameters())
    # the attack raises the loss on the labelled batch
    net.eval()
    with torch.no_grad():
        assert F.cross_entropy(net(x_adv), batch.y) > F.cross_entropy(net(batch.x), batch.y)


def test_at_ignores_unlabelled(net, batch):
    net.eval()
    b = Batch(x=batch.x, y=torch.tensor([0, -1, 1, -1]), index=batch.index)
    loss, _ = at_loss(ModelHandle(net), b, ATParams(steps=1, random_start=False))
    x_adv = pgd_examples(
        net, b.x, b.y, norm="linf", eps=0.01, step_size=0.001, steps=1, random_start=False
    )
    assert torch.equal(x_adv[1], b.x[1]) and torch.equal(x_adv[3], b.x[3])
    lab = torch.tensor([0, 2])
    torch.testing.assert_close(loss, F.cross_entropy(net(x_adv[lab]), b.y[lab]))


# --------------------------------------------------------------------------- trades


def test_trades_beta0_equals_standard(net, batch):
    a = _run(trades_loss, net, batch, TradesParams(beta=0.0, steps=2))
    b = _run(standard_loss, net, batch, StandardParams())
    _assert_same(a, b)


def test_trades_loss_is_ce_plus_beta_kl(net, batch):
    net.eval()
    p = TradesParams(beta=2.0, steps=2, step_size=0.004)
    torch.manual_seed(3)
    loss, logs = trades_loss(ModelHandle(net), batch, p)
    torch.manual_seed(3)
    x_adv = trades_examples(net, batch.x, p)
    assert float((x_adv - batch.x).abs().amax()) <= p.eps + 1e-6
    with torch.no_grad():
        lp, lq = F.log_softmax(net(batch.x), 1), F.log_softmax(net(x_adv), 1)
        ce = F.cross_entropy(net(batch.x), batch.y)
    kl = F.kl_div(lq, lp, reduction="batchmean", log_target=True)
    torch.testing.assert_close(loss.detach(), ce + 2.0 * kl)
    assert logs["kl"] == pytest.approx(float(kl), rel=1e-4) and float(kl) > 0


# --------------------------------------------------------------------------- rat


def test_rat_gamma0_equals_at(net, batch):
    a = _run(rat_loss, net, batch, RATParams(gamma=0.0, steps=2, step_size=0.004))
    b = _run(at_loss, net, batch, ATParams(steps=2, step_size=0.004))
    _assert_same(a, b)


def test_rat_regulariser(net, batch):
    net.eval()
    p = RATParams(gamma=1.5, steps=1, steps_prime=2, step_size_prime=0.004)
    torch.manual_seed(4)
    loss, logs = rat_loss(ModelHandle(net), batch, p)
    # the same random stream reproduces x_adv and x'_adv
    torch.manual_seed(4)
    x_adv = pgd_examples(
        net,
        batch.x,
        batch.y,
        norm="linf",
        eps=p.eps,
        step_size=p.step_size,
        steps=p.steps,
        random_start=True,
    )
    x2 = rat_regulariser_examples(net, x_adv, p)
    assert float((x2 - x_adv).abs().amax()) <= p.eps_prime + 1e-6
    assert float((x2 - x_adv).abs().amax()) > 0
    with torch.no_grad():
        la, l2 = F.log_softmax(net(x_adv), 1), F.log_softmax(net(x2), 1)
        ce = F.cross_entropy(net(x_adv), batch.y)
    kl = (la.exp() * (la - l2)).sum(1).mean()
    torch.testing.assert_close(loss.detach(), ce + 1.5 * kl)
    assert logs["adv_ce"] == pytest.approx(float(ce), rel=1e-5)


# --------------------------------------------------------------------------- rst / mirst


def test_mirst_single_instance_equals_rst(net, batch):
    kw = {"steps": 3, "step_size": 0.004, "alpha": 0.7}
    a = _run(mirst_loss, net, batch, MIRSTParams(weights=(1.0,), instance_steps=(3,), **kw))
    b = _run(rst_loss, net, batch, RSTParams(**kw))
    _assert_same(a, b)


def test_rst_is_standard_plus_alpha_at(net, batch):
    net.eval()
    h = ModelHandle(net)
    rst, _ = rst_loss(h, batch, RSTParams(alpha=0.5, steps=2, eps=0.01, step_size=0.004))
    std, _ = standard_loss(h, batch, StandardParams())
    at, _ = at_loss(h, batch, ATParams(steps=2, eps=0.01, step_size=0.004, random_start=False))
    torch.testing.assert_close(rst, std + 0.5 * at, rtol=1e-5, atol=1e-6)


def test_mirst_instances_follow_one_trajectory(net, batch):
    net.eval()
    p = MIRSTParams(weights=(0.6, 0.4), instance_steps=(1, 3), steps=3, step_size=0.004, alpha=2.0)
    loss, _ = mirst_loss(ModelHandle(net), batch, p)
    with torch.no_grad():
        expected = F.cross_entropy(net(batch.x), batch.y)
    for w, s in zip(p.weights, (1, 3), strict=True):
        xs = pgd_examples(
            net,
            batch.x,
            batch.y,
            norm="linf",
            eps=p.eps,
            step_size=p.step_size,
            steps=s,
            random_start=False,
        )
        with torch.no_grad():
            expected = expected + 2.0 * w * F.cross_entropy(net(xs), batch.y)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_mirst_default_instances():
    assert MIRSTParams().resolved_instance_steps() == (3, 6, 9, 10)
    assert MIRSTParams(steps=1).resolved_instance_steps() == (1, 1, 1, 1)
    assert sum(MIRSTParams().weights) == pytest.approx(1.0)
    with pytest.raises(CryoGuardError):
        MIRSTParams(instance_steps=(3, 6))
    with pytest.raises(CryoGuardError):
        MIRSTParams(steps=5, instance_steps=(1, 2, 3, 6))


# --------------------------------------------------------------------------- gr / llr


def test_gr_penalty_is_squared_input_gradient_norm(net, batch):
    net.eval()
    loss, logs = gr_loss(ModelHandle(net), batch, GRParams(weight=3.0))
    sq, ces = [], []
    for i in range(batch.x.shape[0]):  # one sample at a time, plain backprop
        xi = batch.x[i : i + 1].clone().requires_grad_(True)
        ce = F.cross_entropy(net(xi), batch.y[i : i + 1])
        (g,) = torch.autograd.grad(ce, xi)
        sq.append(float(g.pow(2).sum()))
        ces.append(float(ce.detach()))
    assert logs["grad_sq"] == pytest.approx(np.mean(sq), rel=1e-4)
    assert float(loss.detach()) == pytest.approx(np.mean(ces) + 3.0 * np.mean(sq), rel=1e-5)
    # double backprop: the penalty changes the weight gradient
    loss.backward()
    g3 = _grads(net)
    gr_loss(ModelHandle(net), batch, GRParams(weight=0.0))[0].backward()
    g0 = _grads(net)
    assert any(not torch.allclose(a, b) for a, b in zip(g3, g0, strict=True))


def test_llr_vanishes_on_a_linear_model():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    x = torch.randn(5, 1, 4, 4, 4)
    y = torch.tensor([0, 1, 2, 1, 0])
    delta = 0.01 * (2 * torch.rand_like(x) - 1)
    gamma, grad_term, ce, _ = local_linearity(lin, x, y, delta)
    # exact Taylor remainder bound of CE(Wx + b): the logit Hessian of CE is <= 1/2
    wd = lin[1].weight @ delta.flatten(1).t()
    bound = 0.25 * wd.pow(2).sum(0)
    assert bool((gamma <= bound + 1e-6).all())
    assert float(gamma.detach().max()) < 1e-2 * float(grad_term.max())
    assert float(grad_term.min()) > 0
    b = Batch(x=x, y=y, index=torch.arange(5))
    loss, logs = llr_loss(ModelHandle(lin), b, LLRParams(steps=2, step_size=0.005))
    assert logs["linearity"] < 1e-2 * logs["grad_term"]
    expected = logs["ce"] + 3.0 * logs["linearity"] + 4.0 * logs["grad_term"]
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_llr_perturbation_in_ball_and_loss_trains(net, batch):
    net.train()
    p = LLRParams(steps=2, step_size=0.005)
    d = llr_perturbation(net, batch.x, batch.y, p)
    assert float(d.abs().amax()) <= p.eps + 1e-6 and net.training
    loss, logs = llr_loss(ModelHandle(net), batch, p)
    loss.backward()
    assert any(float(g.abs().sum()) > 0 for g in _grads(net))
    assert net.training and all(m.training for m in net.modules())


# --------------------------------------------------------------------------- simclr


@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_nt_xent_closed_form(tau):
    n = 4
    z = torch.eye(8)[:n] * 3.0  # orthogonal embeddings (scale does not matter)
    # identical views: positive cos 1, the 2N - 2 negatives cos 0
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / tau))
    assert float(nt_xent(z, z.clone(), tau)) == pytest.approx(expected, rel=1e-6)
    # opposite views: positive cos -1, negatives still 0
    expected = 1 / tau + math.log(math.exp(-1 / tau) + 2 * n - 2)
    assert float(nt_xent(z, -z, tau)) == pytest.approx(expected, rel=1e-6)


def test_simclr_trains_backbone_and_head_only(net, batch):
    d = SimCLR(SimCLRParams(proj_hidden=8, proj_dim=4))
    head = d.build_head(net)
    assert head[0].in_features == 8  # tiny cb3d: 8 channels x 1 x 1 x 1 on a 16 cube
    net.train()
    torch.manual_seed(0)
    loss, logs = simclr_loss(ModelHandle(net), batch, d.params, head)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and -1 <= logs["pos_sim"] <= 1
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in head.parameters())
    assert float(net.features[0].weight.grad.abs().sum()) > 0
    assert all(p.grad is None for p in net.classifier.parameters())
    state = d.state_tensors()
    assert set(state) == {f"head.{k}" for k in head.state_dict()}
    d2 = SimCLR(d.params)
    d2.build_head(net)
    d2.load_state_tensors(state)
    assert all(
        torch.equal(a, b)
        for a, b in zip(d2.head.state_dict().values(), head.state_dict().values(), strict=True)
    )


# --------------------------------------------------------------------------- augmentations


@pytest.fixture()
def vol():
    g = torch.Generator().manual_seed(5)
    return torch.randn(6, 1, 6, 6, 6, generator=g)


def test_rot90_is_exact(vol):
    a = vol[0, 0].numpy()
    planes = {0: (1, 2), 1: (0, 2), 2: (0, 1)}
    for axis, plane in planes.items():
        for k in range(4):
            r = rot90_3d(vol, k, axis)
            assert r.shape == vol.shape
            np.testing.assert_array_equal(r[0, 0].numpy(), np.rot90(a, k, axes=plane))
        assert torch.equal(rot90_3d(rot90_3d(vol, 1, axis), 3, axis), vol)


def _rotations(v):
    return [rot90_3d(v, k, ax) for ax in range(3) for k in range(4)]


def _flips(v):
    out = []
    for m in range(8):
        dims = [d for b, d in enumerate((-3, -2, -1)) if m >> b & 1]
        out.append(v.flip(dims) if dims else v)
    return out


def test_random_rot90_and_flip_are_exact_symmetries(vol):
    g = torch.Generator().manual_seed(0)
    before = vol.clone()
    r = random_rot90(vol, g)
    f = random_flip(vol, g)
    assert torch.equal(vol, before)  # input untouched
    assert r.shape == vol.shape and f.shape == vol.shape
    for i in range(vol.shape[0]):
        assert any(torch.equal(r[i], c) for c in _rotations(vol[i]))
        assert any(torch.equal(f[i], c) for c in _flips(vol[i]))
    # over many draws, more than one rotation and flip occur
    big = vol[:1].expand(40, -1, -1, -1, -1)
    assert len({tuple(s.flatten()[:8].tolist()) for s in random_rot90(big, g)}) > 3
    assert len({tuple(s.flatten()[:8].tolist()) for s in random_flip(big, g)}) > 3


def test_noise_and_wedge(vol):
    g = torch.Generator().manual_seed(2)
    zeros = torch.zeros(50, 1, 6, 6, 6)
    n = add_gaussian_noise(zeros, 0.2, g)
    assert float(n.std()) == pytest.approx(0.2, rel=0.05)
    from napari_cryoguard.simulate import missing_wedge_mask

    w = missing_wedge_remask(vol, 60.0)
    assert w.shape == vol.shape
    torch.testing.assert_close(missing_wedge_remask(w, 60.0), w, atol=1e-5, rtol=0)
    mask = torch.from_numpy(missing_wedge_mask((6, 6, 6), 60.0, "y"))
    spec = torch.fft.rfftn(w, dim=(-3, -2, -1))
    assert float(spec[..., ~mask].abs().max()) < 1e-4
    assert float((w - vol).abs().max()) > 1e-2  # something was removed
    torch.testing.assert_close(missing_wedge_remask(vol, 90.0), vol, atol=1e-5, rtol=0)


def test_augment_batch_shape_and_determinism(vol):
    p = AugmentParams(noise_std=0.05, wedge_prob=0.5)
    a = augment_batch(vol, p, torch.Generator().manual_seed(9))
    b = augment_batch(vol, p, torch.Generator().manual_seed(9))
    assert a.shape == vol.shape and torch.equal(a, b)
    assert not torch.equal(a, vol)
    plain = augment_batch(
        vol, AugmentParams(noise_std=0.0, wedge_prob=0.0), torch.Generator().manual_seed(1)
    )
    for i in range(vol.shape[0]):  # rotation then flip: the values are only permuted
        assert torch.equal(plain[i].flatten().sort().values, vol[i].flatten().sort().values)
    with pytest.raises(CryoGuardError):
        AugmentParams(wedge_prob=2.0)
