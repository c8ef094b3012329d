"""The fast paths give the results of the plain ones: memory format, PGD's passes.

* Models are built with their 3D convolution weights in ``channels_last_3d`` on the
  CPU (the measured decision table of ``napari_cryoguard.device``); logits, input
  gradients and probabilities equal those of a contiguous copy within 1e-5.
* PGD-k and its relatives run the model exactly as often as the docstrings state,
  counted with a forward pre-hook: k forward + backward passes plus what the result
  needs (the clean logits and the logits of x_adv), one pass fewer where the first
  iterate is the clean input.
* BIM gives the iterate of a plain 12-line fp32 PGD loop on the same model.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_cryoguard import CryoGuardError
from napari_cryoguard.attacks import run_attack
from napari_cryoguard.device import (
    MEMORY_FORMAT_TABLE,
    apply_memory_format,
    measure_memory_format,
    model_memory_format,
    predict,
    preferred_memory_format,
    to_device_batch,
    to_model_layout,
)
from napari_cryoguard.models import available_models, build_model, tiny_params

CUBE = 16
CL = torch.channels_last_3d


def _pair(arch: str, **extra):
    torch.manual_seed(0)
    fast = build_model(arch, 3, CUBE, **tiny_params(arch), **extra).eval()
    plain = copy.deepcopy(fast)
    apply_memory_format(plain, "contiguous")
    return fast, plain


def _batch(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, CUBE, CUBE, CUBE, generator=g), torch.arange(n) % 3


def _input_grad(model, x, y):
    xg = x.clone().requires_grad_(True)
    logits = model(xg)
    (g,) = torch.autograd.grad(F.cross_entropy(logits, y), xg)
    return logits.detach(), g


# ------------------------------------------------------------------ memory format
def test_cpu_builds_channels_last_by_the_table():
    assert MEMORY_FORMAT_TABLE["cpu"] == "channels_last_3d"
    model = build_model("cb3d", 3, CUBE, **tiny_params("cb3d"))
    assert model_memory_format(model) == CL
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    conv = convs[1].weight  # (4, 4, 3, 3, 3): 4 input channels
    assert conv.shape[1] == 4
    assert conv.is_contiguous(memory_format=CL) and not conv.is_contiguous()


@pytest.mark.parametrize("arch", ["cb3d", "dsrf3d_v2", "rb3d", "autoencoder"])
def test_channels_last_equals_contiguous(arch):
    if arch not in available_models():  # pragma: no cover
        pytest.skip(f"{arch} not registered")
    fast, plain = _pair(arch)
    assert model_memory_format(fast) == CL
    assert model_memory_format(plain) == torch.contiguous_format
    x, y = _batch()
    lf, gf = _input_grad(fast, to_model_layout(x, fast), y)
    lp, gp = _input_grad(plain, x, y)
    assert torch.allclose(lf, lp, atol=1e-5, rtol=0)
    scale = float(gp.abs().max())
    assert scale > 0
    assert float((gf - gp).abs().max()) <= 1e-5 * max(1.0, scale)
    pf = predict(fast, x, device="cpu", batch_size=4)
    pp = predict(plain, x, device="cpu", batch_size=4)
    np.testing.assert_allclose(pf, pp, atol=1e-5, rtol=0)


def test_drop_max_model_in_channels_last_equals_contiguous():
    fast, plain = _pair("cb3d", drop_max=True)
    x, y = _batch()
    lf, gf = _input_grad(fast, x, y)
    lp, gp = _input_grad(plain, x, y)
    assert torch.allclose(lf, lp, atol=1e-5, rtol=0)
    assert float((gf - gp).abs().max()) <= 1e-5 * max(1.0, float(gp.abs().max()))


def test_state_dict_is_contiguous_and_round_trips(tmp_path):
    from napari_cryoguard.models import load_checkpoint, save_checkpoint

    fast, plain = _pair("cb3d")
    sd = fast.state_dict()
    assert all(v.is_contiguous() for v in sd.values())
    for k, v in plain.state_dict().items():
        assert torch.equal(sd[k], v)
    path = save_checkpoint(tmp_path / "m.safetensors", fast, {"class_names": ["a", "b", "c"]})
    loaded, _ = load_checkpoint(path)
    assert model_memory_format(loaded) == CL
    x, _ = _batch()
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), fast(x))


def test_training_step_equal_in_both_formats():
    fast, plain = _pair("cb3d")
    x, y = _batch(8)
    grads = []
    for m in (fast, plain):
        m.train()
        torch.manual_seed(3)  # the same dropout masks
        F.cross_entropy(m(x), y).backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    for name, g in grads[1].items():
        assert float((grads[0][name] - g).abs().max()) <= 1e-5 * max(1.0, float(g.abs().max()))


def test_env_override_and_bad_value(monkeypatch):
    monkeypatch.setenv("CRYOGUARD_MEMORY_FORMAT", "contiguous")
    model = build_model("cb3d", 3, CUBE, **tiny_params("cb3d"))
    assert model_memory_format(model) == torch.contiguous_format
    monkeypatch.setenv("CRYOGUARD_MEMORY_FORMAT", "channels_last")
    assert preferred_memory_format("cpu", model) == CL
    monkeypatch.setenv("CRYOGUARD_MEMORY_FORMAT", "fastest")
    with pytest.raises(CryoGuardError, match="CRYOGUARD_MEMORY_FORMAT"):
        preferred_memory_format("cpu", model)


def test_the_choice_is_logged_once_per_device_and_model_kind(caplog):
    caplog.set_level(logging.INFO, logger="napari_cryoguard.device")
    build_model("cb3d", 3, 17, **tiny_params("cb3d"))  # a kind no other test builds
    build_model("cb3d", 3, 17, **tiny_params("cb3d"))
    lines = [r.getMessage() for r in caplog.records if "memory format" in r.getMessage()]
    assert lines == ["cb3d on cpu runs in channels_last_3d memory format (decision table)"]


def test_measure_is_cached_and_leaves_the_model_alone(monkeypatch):
    model = build_model("cb3d", 3, CUBE, **tiny_params("cb3d"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fmt, ratio = measure_memory_format(model, "cpu", batch_size=2, reps=1)
    assert fmt in (CL, torch.contiguous_format) and ratio > 0
    assert measure_memory_format(model, "cpu") == (fmt, ratio)  # cached: same numbers
    monkeypatch.setenv("CRYOGUARD_MEMORY_FORMAT", "measure")
    assert preferred_memory_format("cpu", model) == fmt
    assert model_memory_format(model) == CL and model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_one_channel_batch_is_not_copied():
    model = build_model("cb3d", 3, CUBE, **tiny_params("cb3d"))
    x, _ = _batch()
    assert to_model_layout(x, model).data_ptr() == x.data_ptr()
    out = to_device_batch(x.double(), "cpu", memory_format=CL)
    assert out.dtype == torch.float32 and torch.equal(out, x)


# ------------------------------------------------------------------ forward passes
class _Counter:
    """Forward calls of a model, split into those with and without autograd."""

    def __init__(self, model):
        self.grad = self.nograd = 0
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        if torch.is_grad_enabled():
            self.grad += 1
        else:
            self.nograd += 1

    @property
    def total(self) -> int:
        return self.grad + self.nograd


@pytest.fixture
def counted():
    fast, _ = _pair("cb3d")
    c = _Counter(fast)
    yield fast, c
    c.handle.remove()


@pytest.mark.parametrize("k", [1, 5, 10])
def test_pgd_k_runs_k_plus_two_forward_passes(counted, k):
    model, c = counted
    x, y = _batch()
    res = run_attack("pgd", model, x, y, eps=0.05, step_size=0.01, steps=k, seed=0)
    # k forward + backward passes, the clean logits, the logits of x_adv
    assert (c.grad, c.nograd) == (k, 2)
    assert res.steps == k


@pytest.mark.parametrize("name", ["bim", "pgd"])
def test_no_random_start_reuses_the_clean_pass(counted, name):
    model, c = counted
    x, y = _batch()
    extra = {"random_start": False} if name == "pgd" else {}
    run_attack(name, model, x, y, eps=0.05, step_size=0.01, steps=7, **extra)
    # the clean forward pass is the first step's: 7 with gradient, 1 for x_adv
    assert (c.grad, c.nograd) == (7, 1)


def test_pgd_restarts_reuse_the_last_comparison(counted):
    model, c = counted
    x, y = _batch()
    run_attack("pgd", model, x, y, eps=0.05, step_size=0.01, steps=4, restarts=3, seed=0)
    # per restart 4 steps + 1 pass to compare restarts; + the clean logits
    assert (c.grad, c.nograd) == (12, 3 + 1)


def test_cw_linf_and_fgsm_pass_counts(counted):
    model, c = counted
    x, y = _batch()
    run_attack("cw_linf", model, x, y, steps=6)
    assert (c.grad, c.nograd) == (6, 1)
    c.grad = c.nograd = 0
    run_attack("fgsm", model, x, y, eps=0.03)
    assert (c.grad, c.nograd) == (1, 1)


def test_restarts_result_logits_are_those_of_x_adv():
    fast, _ = _pair("cb3d")
    x, y = _batch()
    res = run_attack("pgd", fast, x, y, eps=0.2, step_size=0.05, steps=3, restarts=3, seed=2)
    with torch.no_grad():
        probs = torch.softmax(fast(res.x_adv), 1)
    assert torch.allclose(res.probs_after, probs, atol=1e-6)
    assert torch.equal(res.pred_after, probs.argmax(1))


def _plain_pgd(model, x, y, eps, alpha, steps, start=None):
    """A plain fp32 PGD loop, as written in every tutorial."""
    x_adv = x.clone() if start is None else x + start
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (g,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * g.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
    return x_adv


def test_bim_is_the_plain_loop():
    fast, plain = _pair("cb3d")
    x, y = _batch()
    res = run_attack("bim", fast, x, y, eps=0.05, step_size=0.01, steps=6)
    ref = _plain_pgd(fast, x, y, 0.05, 0.01, 6)
    assert float((res.x_adv - ref).abs().max()) <= 1e-6
    # and on the contiguous model: equal but where rounding flips a gradient sign
    ref_plain = _plain_pgd(plain, x, y, 0.05, 0.01, 6)
    differs = (res.x_adv - ref_plain).abs() > 1e-5
    assert float(differs.float().mean()) < 1e-3


def test_pgd_random_start_is_the_plain_loop_from_that_start():
    from napari_cryoguard.attacks.ops import make_generator, random_start

    fast, _ = _pair("cb3d")
    x, y = _batch()
    res = run_attack("pgd", fast, x, y, eps=0.05, step_size=0.01, steps=5, seed=4)
    start = random_start(x, "linf", 0.05, make_generator(4, x.device))
    ref = _plain_pgd(fast, x, y, 0.05, 0.01, 5, start=start)
    assert float((res.x_adv - ref).abs().max()) <= 1e-6


# ------------------------------------------------------------------ the stem's input gradient
def test_stem_conv_is_swapped_in_and_out_with_the_format():
    from napari_cryoguard.device import StemConv3d

    fast, plain = _pair("cb3d")
    stems = [m for m in fast.modules() if isinstance(m, StemConv3d)]
    assert len(stems) == 1 and stems[0].in_channels == 1
    assert not any(isinstance(m, StemConv3d) for m in plain.modules())
    assert set(fast.state_dict()) == set(plain.state_dict())


@pytest.mark.parametrize("arch", ["cb3d", "rb3d", "autoencoder"])
def test_stem_conv_gradients_equal_the_plain_conv_also_twice(arch):
    fast, plain = _pair(arch)
    x, y = _batch()
    grads = []
    for m in (fast, plain):
        m.zero_grad(set_to_none=True)
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(m(xg), y), xg, create_graph=True)
        (g * g).sum().backward()  # the double backward of a gradient penalty (gr)
        grads.append((g.detach(), {n: p.grad for n, p in m.named_parameters()}))
    (gf, wf), (gp, wp) = grads
    assert float((gf - gp).abs().max()) <= 1e-5 * max(1.0, float(gp.abs().max()))
    for name, g in wp.items():
        if g is not None:
            assert float((wf[name] - g).abs().max()) <= 1e-5 * max(1.0, float(g.abs().max()))


def test_cw_l2_passes_and_result_logits(counted):
    model, c = counted
    x, y = _batch()
    res = run_attack("cw", model, x, y, steps=5, binary_search_steps=2, initial_const=1.0,
                     abort_early=False)
    # the clean logits, then one forward + backward pass per Adam step; the logits of
    # the returned iterate are kept from the step that found it
    assert (c.grad, c.nograd) == (10, 1)
    with torch.no_grad():
        probs = torch.softmax(model(res.x_adv), 1)
    assert torch.allclose(res.probs_after, probs, atol=1e-5)
    assert torch.equal(res.pred_after, probs.argmax(1))
