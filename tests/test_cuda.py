"""GPU readiness: device placement, channels-last on CUDA, AMP, and DDP with NCCL.

Every test is marked ``cuda``: skipped (never counted as passing) without a GPU.
``benchmarks/gpu_check.sh`` runs them on a GPU machine. TF32 is switched off inside
these tests so that GPU and CPU float32 results can be compared to 1e-4.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.cuda

CUBE = 16
ARCHS = ["cb3d", "dsrf3d_v2", "rb3d", "autoencoder"]


@pytest.fixture(autouse=True)
def _strict_fp32():
    """Plain float32 on the GPU (no TF32) for the duration of a test."""
    if not torch.cuda.is_available():  # pragma: no cover - skipped by the marker
        yield
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _model(arch: str = "cb3d", **extra):
    from napari_cryoguard.models import build_model, tiny_params

    torch.manual_seed(0)
    return build_model(arch, 3, CUBE, **tiny_params(arch), **extra).eval()


def _batch(n: int = 6):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, CUBE, CUBE, CUBE, generator=g), torch.arange(n) % 3


@pytest.mark.parametrize("arch", ARCHS)
def test_prepare_model_places_and_matches_cpu(arch):
    from napari_cryoguard.device import (
        model_memory_format,
        preferred_memory_format,
        prepare_model,
    )

    cpu = _model(arch)
    gpu = prepare_model(copy.deepcopy(cpu), "cuda")
    assert all(p.device.type == "cuda" for p in gpu.parameters())
    assert torch.backends.cudnn.benchmark is True
    assert model_memory_format(gpu) == preferred_memory_format("cuda", gpu)
    x, y = _batch()
    with torch.no_grad():
        ref = cpu(x)
        out = gpu(x.cuda()).cpu()
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_channels_last_on_cuda_equals_contiguous(arch):
    from napari_cryoguard.device import apply_memory_format, model_memory_format

    fast = apply_memory_format(_model(arch).cuda(), "channels_last_3d")
    plain = apply_memory_format(copy.deepcopy(fast), "contiguous")
    assert model_memory_format(fast) == torch.channels_last_3d
    x, y = _batch()
    x, y = x.cuda(), y.cuda()
    grads = []
    for m in (fast, plain):
        xg = x.clone().requires_grad_(True)
        logits = m(xg)
        (g,) = torch.autograd.grad(F.cross_entropy(logits, y), xg)
        grads.append((logits.detach(), g))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5, rtol=0)
    scale = float(grads[1][1].abs().max())
    assert float((grads[0][1] - grads[1][1]).abs().max()) <= 1e-5 * max(1.0, scale)


def test_measure_memory_format_on_cuda():
    from napari_cryoguard.device import measure_memory_format

    model = _model().cuda()
    fmt, ratio = measure_memory_format(model, "cuda", batch_size=4, reps=2)
    assert fmt in (torch.channels_last_3d, torch.contiguous_format)
    assert 0 < ratio < 100


def test_attack_runs_on_the_model_device_with_k_plus_two_passes():
    from napari_cryoguard.attacks import run_attack

    model = _model().cuda()
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a: calls.append(a[0].device.type))
    try:
        x, y = _batch()
        res = run_attack("pgd", model, x, y, eps=0.05, step_size=0.01, steps=5, seed=0)
    finally:
        handle.remove()
    assert calls == ["cuda"] * 7  # 5 steps, the clean logits, the logits of x_adv
    for name in ("x_adv", "perturbation", "pred_before", "pred_after", "success"):
        assert getattr(res, name).device.type == "cuda"
    assert float(res.norm_linf.max()) <= 0.05 + 1e-6
    assert not model.training
    cpu = run_attack("pgd", _model(), x, y, eps=0.05, step_size=0.01, steps=5, seed=0)
    # same model, same start: the GPU iterate differs only where a sign is a rounding call
    assert float((res.x_adv.cpu() - cpu.x_adv).abs().gt(1e-4).float().mean()) < 0.01


def test_predict_and_classify_on_cuda_match_cpu_and_restore_the_model():
    from napari_cryoguard.classify import LoadedModel, classify
    from napari_cryoguard.device import predict

    model = _model()
    x, _ = _batch(10)
    ref = predict(model, x, device="cpu", batch_size=4)
    out = predict(model, x, device="cuda", batch_size=4)
    np.testing.assert_allclose(out, ref, atol=1e-4)
    assert next(model.parameters()).device.type == "cpu"  # moved back
    loaded = LoadedModel(model=model, metadata={"cube": CUBE}, source="test")
    preds = classify(loaded, x[:, 0].numpy(), normalized=True, device="cuda", batch_size=4)
    np.testing.assert_allclose(preds.probabilities, ref, atol=1e-4)


def test_amp_is_bf16_where_supported_and_close_to_fp32():
    from napari_cryoguard.device import amp_dtype, autocast_context, predict

    dt = amp_dtype("cuda")
    assert dt == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    model = _model()
    x, y = _batch(8)
    ref = predict(model, x, device="cuda")
    amp = predict(model, x, device="cuda", amp=True)
    assert np.abs(amp - ref).max() < 0.05
    # a training step under autocast: finite loss and gradients
    m = _model().cuda().train()
    with autocast_context("cuda", True):
        loss = F.cross_entropy(m(x.cuda()).float(), y.cuda())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_pinned_non_blocking_batches():
    from napari_cryoguard.device import to_device_batch

    x, _ = _batch()
    out = to_device_batch(x, "cuda", memory_format=torch.channels_last_3d)
    torch.cuda.synchronize()
    assert out.device.type == "cuda" and out.dtype == torch.float32
    assert torch.equal(out.cpu(), x)


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2,
    reason="DDP with NCCL needs two GPUs (NCCL refuses two ranks on one GPU)",
)
def test_torchrun_two_gpu_processes_with_nccl(tmp_path):
    from napari_cryoguard.defenses import read_events
    from napari_cryoguard.models import load_checkpoint

    torchrun = Path(sys.executable).with_name("torchrun")
    ev, out = tmp_path / "events.jsonl", tmp_path / "ddp.safetensors"
    cmd = [
        str(torchrun), "--standalone", "--nproc_per_node", "2",
        "-m", "napari_cryoguard.cli", "train",
        "--simulate", "n_per_class=8,snr=1.0,cube=20,seed=1,classes=1bxn+6pxm",
        "--model", "cb3d", "--tiny", "--defense", "at", "--epochs", "2",
        "--batch-size", "4", "--device", "cuda",
        "--out", str(out), "--events", str(ev), "--json", "--quiet",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = read_events(ev)
    kinds = [e["event"] for e in events]
    assert kinds.count("start") == 1 and kinds.count("done") == 1
    assert events[0]["config"]["world_size"] == 2
    summaries = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and json.loads(summaries[0])["ok"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, meta = load_checkpoint(out, expect_arch="cb3d")
    assert meta["training"]["world_size"] == 2 and meta["epoch"] == 2
