"""RAT (Wu et al., BIBM 2019) in range units and its constant-output fixed point.

The part-c reproduction collapsed RAT to chance; these pin the two facts behind it:
the regulariser's ball ``B(x_adv, eps2)`` is measured in each sample's intensity range
(as the training attack's ball), and a constant classifier is a stationary point of
``CE(f(x_adv), y) + gamma KL`` with loss ``ln C`` (the "all-one classifier" the paper
names for large gamma), which the model falls into when the adversarial CE stays above
``ln C``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from napari_cryoguard.attacks.units import sample_range
from napari_cryoguard.defenses.base import Batch
from napari_cryoguard.defenses.rat import RATParams, rat_loss, rat_regulariser_examples
from napari_cryoguard.models import build_model, tiny_params

CUBE = 16


def _data(n: int = 6, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    scale = torch.linspace(0.5, 4.0, n).reshape(-1, 1, 1, 1, 1)  # ranges differ per sample
    x = torch.randn(n, 1, CUBE, CUBE, CUBE, generator=g) * scale
    return x, torch.arange(n) % classes


def test_regulariser_ball_is_a_fraction_of_each_samples_range():
    torch.manual_seed(0)
    net = build_model("cb3d", 3, CUBE, **tiny_params("cb3d"))
    x, _ = _data()
    p = RATParams(eps_unit="range", eps_prime=0.02, step_size_prime=0.01, steps_prime=3)
    x2 = rat_regulariser_examples(net, x, p)
    d = (x2 - x).flatten(1).abs().amax(1)
    r = sample_range(x)
    assert bool((d <= 0.02 * r * (1 + 1e-5)).all())
    # sign steps of half the budget from a random start reach its edge for every sample
    torch.testing.assert_close(d.double(), 0.02 * r.double(), rtol=1e-4, atol=0.0)
    # in normalised units the same numbers are an absolute ball
    pn = RATParams(eps_prime=0.02, step_size_prime=0.01, steps_prime=3)
    dn = (rat_regulariser_examples(net, x, pn) - x).flatten(1).abs().amax(1)
    torch.testing.assert_close(dn.double(), torch.full_like(dn.double(), 0.02), rtol=1e-4, atol=0.0)


class _Constant(nn.Module):
    """Input-independent logits: what the collapsed RAT model computes."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.w = nn.Conv3d(1, 1, 1)
        self.bias = nn.Parameter(torch.zeros(classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], -1) + 0.0 * self.w(x).flatten(1).sum(1, keepdim=True)


def test_constant_classifier_is_rat_fixed_point_with_loss_ln_c():
    x, y = _data(n=6, classes=3)  # balanced labels
    net = _Constant(3)
    batch = Batch(x=x, y=y, index=torch.arange(6), epoch=0)
    p = RATParams(eps_unit="range", steps=2, step_size=0.005, steps_prime=2, step_size_prime=0.005)
    loss, logs = rat_loss(net, batch, p)
    assert logs["kl"] == 0.0 or abs(logs["kl"]) < 1e-7
    assert abs(float(loss.detach()) - math.log(3)) < 1e-6
    loss.backward()
    assert float(net.bias.grad.abs().max()) < 1e-6  # no gradient leaves the constant
