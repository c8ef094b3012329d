"""RB3D's CPU fast paths give the plain model's results: values, input and weight gradients.

The fast paths (``fast_paths``, on in ``channels_last_3d``) are checked against a
contiguous copy of the same model, which runs its modules as written: logits, input
gradients (eval, the attacks' pass) and every weight gradient (train mode, with the same
dropout seed), for both block variants; and the two helpers of
:mod:`napari_cryoguard.models.layers` on their own.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_cryoguard.device import apply_memory_format
from napari_cryoguard.models import build_model, layers, tiny_params
from napari_cryoguard.models.layers import (
    FAST_LINEAR_MIN_FEATURES,
    dropout_as_contiguous,
    flatten_linear,
    relu_cat,
)
from napari_cryoguard.models.rb3d import BottleneckBlock3d

CL = torch.channels_last_3d
CUBE = 16


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30)


def _pair(variant: str):
    torch.manual_seed(0)
    fast = build_model("rb3d", 3, CUBE, variant=variant, **tiny_params("rb3d"))
    plain = apply_memory_format(copy.deepcopy(fast), "contiguous")
    return fast, plain


def _batch(n: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, CUBE, CUBE, CUBE, generator=g), torch.arange(n) % 3


def test_fast_paths_follow_the_memory_format_and_keep_the_state_dict():
    fast, plain = _pair("paper")
    blocks = [m for m in fast.modules() if isinstance(m, BottleneckBlock3d)]
    assert fast.fast_paths and blocks and all(b.fast_paths for b in blocks)
    assert not plain.fast_paths
    assert not any(b.fast_paths for b in plain.modules() if isinstance(b, BottleneckBlock3d))
    # the tiny paper model's first layer is large enough for the oneDNN path
    assert fast.classifier[0].in_features >= FAST_LINEAR_MIN_FEATURES
    sd, sp = fast.state_dict(), plain.state_dict()
    assert list(sd) == list(sp)
    assert all(torch.equal(sd[k], sp[k]) for k in sd)
    apply_memory_format(fast, "contiguous")
    assert not fast.fast_paths and not any(b.fast_paths for b in blocks)
    apply_memory_format(fast, "channels_last_3d")
    assert fast.fast_paths and all(b.fast_paths for b in blocks)


@pytest.mark.parametrize("variant", ["paper", "residual-bn"])
def test_eval_logits_and_input_gradients_equal_the_plain_model(variant):
    fast, plain = _pair(variant)
    x, y = _batch()
    out = []
    for m in (fast, plain):
        m.eval()
        xg = x.clone().requires_grad_(True)
        logits = m(xg)
        (g,) = torch.autograd.grad(F.cross_entropy(logits, y), xg)
        out.append((logits.detach(), g))
    (lf, gf), (lp, gp) = out
    assert float(gp.abs().max()) > 0
    assert _rel(lf, lp) <= 1e-5
    assert _rel(gf, gp) <= 1e-5


@pytest.mark.parametrize("n", [5, 16])  # under 16 samples 1x1x1 convolutions skip oneDNN
@pytest.mark.parametrize("variant", ["paper", "residual-bn"])
def test_train_step_equals_the_plain_model_with_the_same_dropout_seed(variant, n):
    fast, plain = _pair(variant)
    x, y = _batch(n)
    for step in range(2):  # the second step reuses the first layer's gradient buffer
        res = []
        for m in (fast, plain):
            m.train()
            m.zero_grad(set_to_none=True)
            torch.manual_seed(10 + step)  # the same dropout masks in both
            logits = m(x)
            F.cross_entropy(logits, y).backward()
            res.append((logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
        (lf, wf), (lp, wp) = res
        # residual-bn: the channels-last format's own rounding, through batch statistics
        tol = 1e-4 if variant == "residual-bn" else 1e-5
        assert _rel(lf, lp) <= tol
        for name, g in wp.items():
            assert float((wf[name] - g).abs().max()) <= tol * max(1.0, float(g.abs().max())), name


def test_paper_dropout_masks_are_those_of_the_plain_model():
    fast, plain = _pair("paper")
    x, y = _batch()
    fast.train()
    plain.train()
    with torch.no_grad():
        torch.manual_seed(4)
        a = fast(x)
        torch.manual_seed(4)
        b = plain(x)
        torch.manual_seed(5)  # another seed: other masks, other logits
        c = fast(x)
    assert _rel(a, b) <= 1e-5
    assert _rel(c, b) > 1e-3


def test_a_held_gradient_is_not_overwritten_by_the_next_step():
    fast, _ = _pair("paper")
    fast.train()
    x, y = _batch()
    w = fast.classifier[0].weight
    torch.manual_seed(1)
    F.cross_entropy(fast(x), y).backward()
    held = w.grad
    first = held.clone()
    fast.zero_grad(set_to_none=True)
    torch.manual_seed(2)
    F.cross_entropy(fast(x.flip(0)), y).backward()
    assert torch.equal(held, first)  # the old gradient kept its values
    assert w.grad.data_ptr() != held.data_ptr()
    assert not torch.equal(w.grad, first)


def test_a_released_gradient_buffer_is_reused():
    fast, _ = _pair("paper")
    fast.train()
    x, y = _batch()
    w = fast.classifier[0].weight
    ptrs = []
    for seed in (1, 2, 3):
        fast.zero_grad(set_to_none=True)  # the previous gradient let go of
        torch.manual_seed(seed)
        F.cross_entropy(fast(x), y).backward()
        ptrs.append(w.grad.data_ptr())
    _, buffer, _ = layers._GRAD_BUFFERS[id(w)]
    assert ptrs == [buffer.data_ptr()] * 3  # the kept buffer each time, no fresh memory


def test_gradients_accumulate_like_the_plain_layer():
    fast, plain = _pair("paper")
    x, y = _batch()
    grads = []
    for m in (fast, plain):
        m.train()
        m.zero_grad(set_to_none=True)
        for seed in (1, 2):  # two backward passes summed into .grad
            torch.manual_seed(seed)
            F.cross_entropy(m(x), y).backward()
        grads.append(m.classifier[0].weight.grad.clone())
    assert _rel(grads[0], grads[1]) <= 1e-5


# ------------------------------------------------------------------ the helpers on their own
@pytest.mark.parametrize("fmt", [CL, torch.contiguous_format])
def test_flatten_linear_equals_flatten_then_linear(fmt):
    torch.manual_seed(0)
    lin = nn.Linear(8 * 8 * 8 * 8, 6)
    h0 = torch.randn(5, 8, 8, 8, 8).contiguous(memory_format=fmt)
    res = []
    for fn in (lambda h: flatten_linear(h, lin), lambda h: lin(torch.flatten(h, 1))):
        lin.zero_grad(set_to_none=True)
        h = h0.clone(memory_format=torch.preserve_format).requires_grad_(True)
        out = fn(h)
        (out * torch.arange(6.0)).sum().backward()
        res.append((out.detach(), h.grad, lin.weight.grad.clone(), lin.bias.grad.clone()))
    (of, hf, wf, bf), (op, hp, wp, bp) = res
    assert _rel(of, op) <= 1e-5 and _rel(hf, hp) <= 1e-5
    assert _rel(wf, wp) <= 1e-5 and _rel(bf, bp) <= 1e-5
    # the input gradient comes back in the activation's own memory format
    assert hf.is_contiguous(memory_format=fmt)


def test_flatten_linear_input_gradient_only_and_twice():
    torch.manual_seed(0)
    lin = nn.Linear(8 * 8 * 8 * 8, 4)
    h0 = torch.randn(3, 8, 8, 8, 8).contiguous(memory_format=CL)
    res = []
    for fn in (lambda h: flatten_linear(h, lin), lambda h: lin(torch.flatten(h, 1))):
        lin.zero_grad(set_to_none=True)
        h = h0.clone(memory_format=torch.preserve_format).requires_grad_(True)
        loss = fn(h).square().sum()
        (g,) = torch.autograd.grad(loss, h, create_graph=True)
        assert lin.weight.grad is None  # autograd.grad(loss, h) leaves .grad alone
        (g * g).sum().backward()  # a gradient penalty: the double backward
        res.append((g.detach(), h.grad, lin.weight.grad.clone()))
    for a, b in zip(res[0], res[1], strict=True):
        assert _rel(a, b) <= 1e-5


def test_dropout_as_contiguous_draws_the_contiguous_mask():
    x = torch.randn(4, 6, 5, 5, 5) + 3.0
    torch.manual_seed(3)
    ref = F.dropout(x, 0.7, True)
    torch.manual_seed(3)
    same = dropout_as_contiguous(x, 0.7, True)
    assert torch.equal(same, ref)
    torch.manual_seed(3)
    cl = dropout_as_contiguous(x.contiguous(memory_format=CL), 0.7, True)
    assert torch.equal(cl, ref) and cl.is_contiguous(memory_format=CL)
    assert torch.equal(dropout_as_contiguous(x, 0.7, False), x)
    assert torch.equal(dropout_as_contiguous(x, 1.0, True), torch.zeros_like(x))
    assert 0.6 < float((ref == 0).float().mean()) < 0.8


@pytest.mark.parametrize("fmt", [CL, torch.contiguous_format])
def test_relu_cat_is_exactly_the_blocks_relu_of_the_concatenation(fmt):
    torch.manual_seed(0)
    a0 = torch.randn(3, 4, 5, 5, 5).contiguous(memory_format=fmt)
    b0 = torch.randn(3, 6, 5, 5, 5).contiguous(memory_format=fmt)
    w0 = torch.randn(3, 10, 5, 5, 5)
    res = []
    for fn in (relu_cat, lambda a, b: torch.relu(torch.cat([torch.relu(a), b], 1))):
        a = a0.clone(memory_format=torch.preserve_format).requires_grad_(True)
        b = b0.clone(memory_format=torch.preserve_format).requires_grad_(True)
        w = w0.clone().requires_grad_(True)
        out = fn(a, b)
        ga, gb = torch.autograd.grad((out * w).sum(), [a, b], create_graph=True)
        (ga.square().sum() + gb.square().sum()).backward()  # a double backward to w
        res.append((out.detach(), ga.detach(), gb.detach(), w.grad))
    (of, gaf, gbf, wf), (op, gap, gbp, wp) = res
    assert torch.equal(of, op) and torch.equal(gaf, gap) and torch.equal(gbf, gbp)
    assert torch.equal(wf, wp) and float(wp.abs().max()) > 0
    assert float(gap.abs().max()) > 0 and float(gbp.abs().max()) > 0
    assert gaf.is_contiguous(memory_format=fmt) and gbf.is_contiguous(memory_format=fmt)
