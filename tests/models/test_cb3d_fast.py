"""CB3D's CPU fast path (max pool before the ReLU) gives exactly the written order's results."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from napari_cryoguard.device import apply_memory_format
from napari_cryoguard.models import build_model, tiny_params

CUBE = 16


def _batch(n: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, CUBE, CUBE, CUBE, generator=g), torch.arange(n) % 3


def _grads(model, x, y, train: bool):
    model.train(train)
    model.zero_grad(set_to_none=True)
    xg = x.clone().requires_grad_(True)
    torch.manual_seed(3)  # the same dropout masks
    logits = model(xg)
    F.cross_entropy(logits, y).backward()
    weights = {n: p.grad.clone() for n, p in model.named_parameters()}
    return logits.detach(), xg.grad, weights


def test_fast_path_is_exactly_the_written_order_in_the_same_format():
    torch.manual_seed(0)
    fast = build_model("cb3d", 3, CUBE, **tiny_params("cb3d"))
    assert fast.fast_paths
    slow = copy.deepcopy(fast)
    slow.fast_paths = False  # same weights, same memory format, modules as written
    x, y = _batch()
    for train in (False, True):
        lf, gf, wf = _grads(fast, x, y, train)
        ls, gs, ws = _grads(slow, x, y, train)
        assert torch.equal(lf, ls) and torch.equal(gf, gs)
        assert float(gs.abs().max()) > 0
        for name, g in ws.items():
            assert torch.equal(wf[name], g), name


def test_fast_path_equals_the_contiguous_model_and_keeps_the_modules():
    torch.manual_seed(0)
    fast = build_model("cb3d", 3, CUBE, **tiny_params("cb3d"))
    plain = apply_memory_format(copy.deepcopy(fast), "contiguous")
    assert not plain.fast_paths
    # the modules keep the paper's order: ReLU, then the pool
    kinds = [type(m) for m in fast.features]
    assert isinstance(fast.features[0], nn.Conv3d) and kinds[1:3] == [nn.ReLU, nn.MaxPool3d]
    assert list(fast.state_dict()) == list(plain.state_dict())
    x, y = _batch()
    for train in (False, True):
        lf, gf, wf = _grads(fast, x, y, train)
        lp, gp, wp = _grads(plain, x, y, train)
        assert float((lf - lp).abs().max()) <= 1e-5 * max(1.0, float(lp.abs().max()))
        assert float((gf - gp).abs().max()) <= 1e-5 * max(1.0, float(gp.abs().max()))
        for name, g in wp.items():
            assert float((wf[name] - g).abs().max()) <= 1e-5 * max(1.0, float(g.abs().max()))


def test_drop_max_keeps_the_papers_order_on_the_fast_path():
    torch.manual_seed(0)
    fast = build_model("cb3d", 3, CUBE, drop_max=True, **tiny_params("cb3d"))
    slow = copy.deepcopy(fast)
    slow.fast_paths = False
    x, y = _batch()
    lf, gf, _ = _grads(fast, x, y, False)
    ls, gs, _ = _grads(slow, x, y, False)
    assert torch.equal(lf, ls) and torch.equal(gf, gs)
