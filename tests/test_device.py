"""Device choice, autocast, and batched prediction with out-of-memory fallback."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
import torch

from napari_cryoguard import CryoGuardError
from napari_cryoguard.device import (
    PredictProgress,
    autocast_context,
    iter_predict,
    predict,
    resolve_device,
)
from napari_cryoguard.models import build_model, tiny_params


# ---------------------------------------------------------------- resolve_device
def _fake_hardware(monkeypatch, cuda: bool, mps: bool, count: int = 1):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count if cuda else 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    _fake_hardware(monkeypatch, cuda, mps)
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected


def test_explicit_devices(monkeypatch):
    _fake_hardware(monkeypatch, cuda=True, mps=False, count=2)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device(torch.device("cuda", 0)) == torch.device("cuda:0")
    with pytest.raises(CryoGuardError, match="2 CUDA"):
        resolve_device("cuda:2")
    with pytest.raises(CryoGuardError, match="MPS"):
        resolve_device("mps")
    with pytest.raises(CryoGuardError, match="unknown device"):
        resolve_device("banana")


def test_cuda_requested_without_cuda(monkeypatch):
    _fake_hardware(monkeypatch, cuda=False, mps=False)
    with pytest.raises(CryoGuardError, match="CUDA is not available"):
        resolve_device("cuda")


def test_autocast_only_on_cuda():
    assert isinstance(autocast_context(torch.device("cpu"), True), contextlib.nullcontext)
    assert isinstance(autocast_context("cuda", False), contextlib.nullcontext)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CPU-only torch warns that it disables autocast
        ctx = autocast_context("cuda", True)
    assert isinstance(ctx, torch.autocast)
    assert ctx.fast_dtype == torch.float16
    a = torch.randn(4, 4)
    with autocast_context("cpu", True):
        assert (a @ a).dtype == torch.float32


# ---------------------------------------------------------------- predict
CUBE = 16


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("cb3d", 3, CUBE, **tiny_params("cb3d"))


def _volumes(n: int = 10) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, CUBE, CUBE, CUBE)).astype(np.float32)


def _expected(model, vols: np.ndarray) -> np.ndarray:
    was = model.training
    model.eval()
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy(vols)[:, None]), dim=1).numpy()
    model.train(was)
    return p


def _record_batches(monkeypatch, model, fail_above: int | None = None, error=None):
    """Wrap model.forward: record batch sizes, raise an OOM for batches > fail_above."""
    seen: list[int] = []
    original = model.forward

    def forward(x):
        assert torch.is_inference_mode_enabled()
        assert not model.training
        if fail_above is not None and x.shape[0] > fail_above:
            raise error if error is not None else torch.cuda.OutOfMemoryError("CUDA out of memory.")
        seen.append(int(x.shape[0]))
        return original(x)

    monkeypatch.setattr(model, "forward", forward)
    return seen


def test_predict_probabilities_match_softmax_and_batches(monkeypatch, model):
    vols = _volumes(10)
    want = _expected(model, vols)
    seen = _record_batches(monkeypatch, model)
    calls = []
    got = predict(
        model, vols, device="cpu", batch_size=4, progress=lambda d, t: calls.append((d, t))
    )
    assert got.dtype == np.float32 and got.shape == (10, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)
    assert seen == [4, 4, 2]
    assert calls == [(4, 10), (8, 10), (10, 10)]


def test_predict_accepts_channel_axis_tensor_and_tqdm_like_progress(model):
    vols = _volumes(5)

    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    a = predict(model, torch.from_numpy(vols)[:, None], device="cpu", batch_size=2, progress=bar)
    b = predict(model, vols, device="cpu")
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert bar.n == 5


@pytest.mark.parametrize("train_mode", [True, False])
def test_predict_restores_the_model_mode(model, train_mode):
    model.train(train_mode)
    vols = _volumes(4)
    first = predict(model, vols, device="cpu")
    assert model.training is train_mode
    np.testing.assert_array_equal(first, predict(model, vols, device="cpu"))  # dropout off
    assert model.training is train_mode


def test_iter_predict_yields_progress_and_returns_result(model):
    gen = iter_predict(model, _volumes(5), device="cpu", batch_size=2)
    steps = []
    while True:
        try:
            steps.append(next(gen))
            assert not torch.is_inference_mode_enabled()  # never held across a yield
        except StopIteration as stop:
            result = stop.value
            break
    assert steps == [PredictProgress(2, 5, 2), PredictProgress(4, 5, 2), PredictProgress(5, 5, 2)]
    assert result.shape == (5, 3)


def test_iter_predict_closed_early_restores_mode(model):
    model.train()
    gen = iter_predict(model, _volumes(6), device="cpu", batch_size=2)
    next(gen)
    assert not model.training
    gen.close()
    assert model.training


def test_oom_halves_the_batch_and_retries(monkeypatch, model):
    vols = _volumes(10)
    want = _expected(model, vols)
    seen = _record_batches(monkeypatch, model, fail_above=3)
    halvings = []
    with pytest.warns(RuntimeWarning, match="out of memory") as rec:
        got = predict(model, vols, device="cpu", batch_size=16, on_oom=halvings.append)
    assert halvings == [8, 4, 2]
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 3
    assert seen == [2, 2, 2, 2, 2]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_oom_as_runtime_error_message_is_recognised(monkeypatch, model):
    seen = _record_batches(
        monkeypatch, model, fail_above=4, error=RuntimeError("CUDA error: out of memory")
    )
    with pytest.warns(RuntimeWarning):
        predict(model, _volumes(6), device="cpu", batch_size=8)
    assert seen == [4, 2]


def test_oom_at_batch_size_one_is_a_clear_error(monkeypatch, model):
    model.train()
    _record_batches(monkeypatch, model, fail_above=0)
    with pytest.warns(RuntimeWarning), pytest.raises(CryoGuardError, match="batch size 1"):
        predict(model, _volumes(3), device="cpu", batch_size=4)
    assert model.training


def test_other_errors_propagate_unchanged(monkeypatch, model):
    _record_batches(monkeypatch, model, fail_above=0, error=ValueError("boom"))
    with pytest.raises(ValueError, match="boom"):
        predict(model, _volumes(3), device="cpu")


def test_bad_inputs(model):
    with pytest.raises(CryoGuardError, match="16"):
        predict(model, np.zeros((2, 20, 20, 20), np.float32), device="cpu")
    with pytest.raises(CryoGuardError, match="shape"):
        predict(model, np.zeros((CUBE, CUBE, CUBE), np.float32), device="cpu")
    with pytest.raises(CryoGuardError, match="batch_size"):
        predict(model, _volumes(2), device="cpu", batch_size=0)
    empty = predict(model, np.zeros((0, CUBE, CUBE, CUBE), np.float32), device="cpu")
    assert empty.shape == (0, 3) and empty.dtype == np.float32
