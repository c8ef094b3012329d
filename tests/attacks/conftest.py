"""Fixtures for the attack tests: toy 3D data, a small trained 3D CNN, odd test models.

The data are three classes of Gaussian blobs of different widths (sigma 1.2, 2.2, 3.5
voxels) at random offsets, plus Gaussian noise, z-scored per sample: simulated-ish
subtomograms on which a ~2000-parameter 3D CNN trained for a couple of seconds is
accurate, so the attacks have something meaningful to break.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

CUBE = 16
BOUNDS = (-3.0, 6.0)


def make_blobs(
    n: int, cube: int = CUBE, seed: int = 0, sigmas=(1.2, 2.2, 3.5), noise: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """(n, cube, cube, cube) float32 z-scored blobs and their int64 labels."""
    rng = np.random.default_rng(seed)
    g = np.arange(cube, dtype=np.float64) - (cube - 1) / 2
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    labels = rng.integers(0, len(sigmas), n)
    out = np.empty((n, cube, cube, cube), np.float32)
    for i in range(n):
        c = rng.uniform(-2, 2, 3)
        s = sigmas[labels[i]]
        v = np.exp(-((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / (2 * s * s))
        v = v + noise * rng.standard_normal(v.shape)
        out[i] = (v - v.mean()) / v.std()
    return out, labels.astype(np.int64)


class TinyCNN3D(nn.Module):
    """conv3d 1->4 -> pool -> conv3d 4->8 -> adaptive pool 2^3 -> FC 16 (dropout) -> classes."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool3d(2),
            nn.Conv3d(4, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool3d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class LinearVolumeClassifier(nn.Module):
    """A conv-free linear classifier on the flattened volume: logits = W x + b."""

    def __init__(self, cube: int = CUBE, num_classes: int = 2, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(cube**3, num_classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=gen) * 0.01)
            self.fc.bias.copy_(torch.randn(num_classes, generator=gen) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class GradientForbidden(nn.Module):
    """Wraps a model and raises if it is called with autograd enabled (for decision attacks)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.requires_grad:
            raise AssertionError("a decision-based attack asked for gradients")
        return self.inner(x)


@pytest.fixture(scope="session")
def toy() -> SimpleNamespace:
    """The helpers above, for test modules (they cannot import conftest)."""
    return SimpleNamespace(
        CUBE=CUBE,
        BOUNDS=BOUNDS,
        make_blobs=make_blobs,
        TinyCNN3D=TinyCNN3D,
        LinearVolumeClassifier=LinearVolumeClassifier,
        GradientForbidden=GradientForbidden,
    )


@pytest.fixture(scope="session")
def trained_model() -> TinyCNN3D:
    """The tiny 3D CNN trained on 512 blobs (150 Adam steps, a couple of seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is faster on a busy machine
    try:
        return _train_tiny()
    finally:
        torch.set_num_threads(threads)


def _train_tiny() -> TinyCNN3D:
    torch.manual_seed(0)
    x, y = make_blobs(512, seed=0)
    xt, yt = torch.from_numpy(x)[:, None], torch.from_numpy(y)
    model = TinyCNN3D(3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(x), (32,), generator=gen)
        loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


@pytest.fixture(scope="session")
def batch(trained_model) -> tuple[torch.Tensor, torch.Tensor]:
    """16 held-out blobs (N, 1, 16, 16, 16), clipped to BOUNDS, and their labels."""
    x, y = make_blobs(16, seed=1)
    x = np.clip(x, *BOUNDS)
    xt, yt = torch.from_numpy(x)[:, None], torch.from_numpy(y)
    with torch.no_grad():
        acc = (trained_model(xt).argmax(1) == yt).float().mean().item()
    assert acc >= 0.9, f"toy model too weak for meaningful attack tests (accuracy {acc})"
    return xt, yt
