"""MIRST's fused training pass (``fuse=True``): the trunk's forward passes shared with
the PGD run give the same training as the separate (m + 1) N pass (``fuse=False``),
and really make fewer forward passes; which layers count as mode-dependent."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_cryoguard.defenses import Batch, ModelHandle
from napari_cryoguard.defenses.mirst import (
    MIRSTParams,
    RSTParams,
    mirst_loss,
    mode_dependent,
    rst_loss,
    trunk_and_head,
)
from napari_cryoguard.device import apply_memory_format
from napari_cryoguard.models import build_model, tiny_params
from napari_cryoguard.models.layers import DropMax3d

CUBE = 16


def _net(arch: str = "cb3d", channels_last: bool = False, **kw) -> nn.Module:
    torch.manual_seed(0)
    net = build_model(arch, 3, CUBE, **{**tiny_params(arch), **kw})
    if channels_last:  # the models' fast paths (their own forward)
        apply_memory_format(net, torch.channels_last_3d)
    return net


def _train(net: nn.Module, params, *, steps: int = 3, eval_mode: bool = False, loss_fn=mirst_loss):
    """A few SGD steps of ``loss_fn`` from a fixed start and random stream; the
    final weights, every step's loss and logs."""
    handle = ModelHandle(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)  # linear in the gradient
    gen = torch.Generator().manual_seed(1)
    net.eval() if eval_mode else net.train()
    torch.manual_seed(5)  # dropout masks and random starts
    losses, logs = [], []
    for _ in range(steps):
        x = torch.randn(4, 1, CUBE, CUBE, CUBE, generator=gen)
        y = torch.tensor([0, 2, 1, -1])  # one unlabelled sample
        loss, log = loss_fn(handle, Batch(x=x, y=y, index=torch.arange(4)), params)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        logs.append(log)
    return [p.detach().clone() for p in net.parameters()], losses, logs


BASE = {"steps": 4, "eps": 0.02, "step_size": 0.006}
CASES = {
    "cb3d-train": ("cb3d", {}, {}, False),
    "cb3d-eval": ("cb3d", {}, {}, True),
    "cb3d-no-dropout": ("cb3d", {"dropout": 0.0}, {}, False),
    "cb3d-drop-max": ("cb3d", {"drop_max": True}, {}, False),
    "cb3d-channels-last": ("cb3d", {"channels_last": True}, {}, False),
    "rb3d-train": ("rb3d", {}, {}, False),
    "random-start": ("cb3d", {}, {"random_start": True}, False),
    "range-unit": ("cb3d", {}, {"eps_unit": "range", "eps": 0.01, "step_size": 0.003}, False),
    "l2": ("cb3d", {}, {"norm": "l2", "eps": 0.5, "step_size": 0.2}, False),
    "equal-steps": ("cb3d", {}, {"instance_steps": (0, 2, 2, 4)}, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fused_training_equals_the_separate_pass(case):
    arch, model_kw, kw, eval_mode = CASES[case]
    runs = {}
    for fuse in (True, False):
        params = MIRSTParams(**{**BASE, **kw, "fuse": fuse})
        runs[fuse] = _train(_net(arch, **model_kw), params, eval_mode=eval_mode)
    (wf, lf, logf), (wu, lu, logu) = runs[True], runs[False]
    assert lf == pytest.approx(lu, rel=1e-5, abs=1e-6)
    for a, b in zip(logf, logu, strict=True):
        assert a.keys() == b.keys()
        assert (a["ce"], a["adv_ce"]) == pytest.approx((b["ce"], b["adv_ce"]), rel=1e-5, abs=1e-6)
        if arch == "cb3d":  # RB3D's dropout (0.7 in every block) leaves exact logit ties
            assert (a["acc"], a["adv_acc"]) == (b["acc"], b["adv_acc"])
    for a, b in zip(wf, wu, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    start = _net(arch, **model_kw).parameters()
    moved = max(float((a - b.detach()).abs().max()) for a, b in zip(wf, start, strict=True))
    assert moved > 1e-4  # the steps trained something


def test_fused_rst_equals_the_separate_pass():
    params = {f: RSTParams(**{**BASE, "fuse": f}) for f in (True, False)}
    wf, lf, _ = _train(_net(), params[True], loss_fn=rst_loss)
    wu, lu, _ = _train(_net(), params[False], loss_fn=rst_loss)
    assert lf == pytest.approx(lu, rel=1e-5)
    for a, b in zip(wf, wu, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def _stem_samples(net: nn.Module, params: MIRSTParams) -> tuple[int, int]:
    """(forward, backward) samples through the first convolution in one training step."""
    counts = [0, 0]

    def on_forward(_m, _inp, out):
        counts[0] += out.shape[0]
        if out.requires_grad:
            out.register_hook(lambda g: counts.__setitem__(1, counts[1] + g.shape[0]))

    _train(net, params, steps=1)  # the first step also checks the model's output once
    hook = net.features[0].register_forward_hook(on_forward)
    try:
        _train(net, params, steps=1)
    finally:
        hook.remove()
    return counts[0], counts[1]


def test_fused_pass_makes_m_fewer_trunk_forwards():
    n, t, m = 4, 4, 4
    fused = _stem_samples(_net(), MIRSTParams(**BASE))  # instances after (3, 4, 4, 4) steps
    separate = _stem_samples(_net(), MIRSTParams(**BASE, fuse=False))
    assert separate == ((t + m + 1) * n, (t + m + 1) * n)
    # forward: the PGD run's T passes and the last iterate's (equal step counts share it)
    assert fused == ((t + 1) * n, (t + 1 + 2) * n)  # backward: clean, step 3, step 4
    assert fused[0] < separate[0]


def test_cb3d_trunk_stops_at_the_first_dropout():
    net = _net()
    net.train()
    trunk, head = trunk_and_head(net)
    x = torch.randn(2, 1, CUBE, CUBE, CUBE)
    h = trunk(x)
    assert h.shape == (2, tiny_params("cb3d")["fc_widths"][0])  # after Linear + ReLU
    net.eval()
    torch.testing.assert_close(head(h), net(x), rtol=0, atol=0)
    net.train()
    torch.manual_seed(3)
    a = head(trunk(x))
    torch.manual_seed(3)
    torch.testing.assert_close(a, net(x), rtol=0, atol=0)  # the same dropout draws


def test_whole_model_is_trunk_without_mode_dependent_layers():
    net = _net(dropout=0.0)
    net.train()
    trunk, head = trunk_and_head(net)
    x = torch.randn(2, 1, CUBE, CUBE, CUBE)
    assert trunk is net
    torch.testing.assert_close(head(trunk(x)), net(x), rtol=0, atol=0)


class _OwnHead(nn.Module):
    """A model with a ``classifier`` that its forward does not call."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv3d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool3d(2))
        self.classifier = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Dropout(0.5))
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.flatten(self.features(x), 1)
        for layer in self.classifier:
            h = layer(h)
        return self.out(h)


class _AfterHead(_OwnHead):
    """A model whose output is not its classifier's (a step after it)."""

    def forward(self, x):
        return self.out(self.classifier(torch.flatten(self.features(x), 1))) * 0.5


@pytest.mark.parametrize("model_cls", [_OwnHead, _AfterHead])
def test_a_model_not_ending_in_its_classifier_takes_the_separate_pass(model_cls):
    runs = {}
    for fuse in (True, False):
        torch.manual_seed(0)
        runs[fuse] = _train(model_cls(), MIRSTParams(**{**BASE, "fuse": fuse}))
    assert runs[True][1] == runs[False][1]  # the same random draws: bit for bit
    for a, b in zip(runs[True][0], runs[False][0], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class _Noisy(nn.Module):
    def forward(self, x):
        return x + 0.1 * torch.randn_like(x) if self.training else x


class _Plain(nn.Module):
    def forward(self, x):
        return F.relu(x) * 2


def test_mode_dependent_layers():
    train = {
        nn.Dropout(0.5): True,
        nn.Dropout(0.0): False,
        nn.BatchNorm3d(4): True,
        nn.InstanceNorm3d(4): False,
        nn.InstanceNorm3d(4, track_running_stats=True): True,
        nn.RReLU(): True,
        nn.Conv3d(1, 2, 3): False,
        nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.GroupNorm(1, 3)): False,
        nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.2)): True,
        DropMax3d(2): False,
        _Noisy(): True,
        _Plain(): False,
    }
    for module, expected in train.items():
        module.train()
        assert mode_dependent(module) is expected, module
        module.eval()
        assert mode_dependent(module) is False, module


def test_distributed_model_takes_the_separate_pass(tmp_path):
    import torch.distributed as dist

    from napari_cryoguard.defenses.base import _Dispatch

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        net = _net()
        engine = nn.parallel.DistributedDataParallel(_Dispatch(net))
        handle = ModelHandle(net, engine)
        seen = []
        hook = net.features[0].register_forward_hook(lambda _m, _i, out: seen.append(out.shape[0]))
        x = torch.randn(4, 1, CUBE, CUBE, CUBE)
        batch = Batch(x=x, y=torch.tensor([0, 1, 2, 0]), index=torch.arange(4))
        loss, _ = mirst_loss(handle, batch, MIRSTParams(**BASE))
        hook.remove()
        loss.backward()
        assert seen[-1] == 5 * 4  # one forward over the clean batch and the 4 instances
        assert all(p.grad is not None for p in net.parameters())
    finally:
        dist.destroy_process_group()
