"""IMA (Algorithms 1-3) on a toy 2D problem: a linear classifier on 2-feature inputs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_cryoguard import CryoGuardError
from napari_cryoguard.attacks import run_attack
from napari_cryoguard.defenses import Batch, ModelHandle, get_defense
from napari_cryoguard.defenses.ima import (
    IMAParams,
    bpgd_per_sample,
    ima_loss,
    ima_update_margins,
    initial_delta,
)


class Toy2D(nn.Module):
    """Class 1 iff feature 0 > 0 (logits -x0, x0); input (N, 1, 1, 1, 2).

    The L-inf and L2 distance of a point to the decision boundary is |x0|.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
            self.lin.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))


def _points(x0, x1=None):
    x0 = torch.tensor(x0, dtype=torch.float32)
    x1 = torch.full_like(x0, 0.3) if x1 is None else torch.tensor(x1, dtype=torch.float32)
    return torch.stack([x0, x1], 1).reshape(-1, 1, 1, 1, 2)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_margin_update_follows_algorithm_2(norm):
    model = Toy2D()
    delta, eps_max = 0.02, 0.2
    p = IMAParams(eps_max=eps_max, delta=delta, norm=norm)
    #             stays correct  flips   wrong   at eps_max  boundary < delta  unlabelled
    x = _points([0.5, 0.05, -0.3, 0.9, 0.005, 0.4])
    y = torch.tensor([1, 1, 1, 1, 1, -1])
    margins = torch.tensor([0.1, 0.1, 0.15, 0.2, 0.1, 0.07])
    new = ima_update_margins(model, x, y, margins, p, delta)
    tol = 4 * 0.1 / 20 / 2**10 + 1e-6  # BPGD bisection bracket: step / 2^n_binary
    assert new[0] == pytest.approx(0.1 + delta, abs=1e-6)  # expand
    assert 0.05 - 1e-6 <= float(new[1]) <= 0.05 + tol  # shrink to the boundary distance
    assert new[2] == pytest.approx(delta)  # misclassified: re-initialised
    assert new[3] == pytest.approx(eps_max)  # expanded, then clipped to eps_max
    assert new[4] == pytest.approx(delta)  # boundary at 0.005, clipped up to delta
    assert new[5] == pytest.approx(0.07)  # unlabelled: untouched
    assert torch.equal(margins, torch.tensor([0.1, 0.1, 0.15, 0.2, 0.1, 0.07]))


def test_bpgd_per_sample_matches_the_bpgd_attack():
    model = Toy2D()
    x = _points([0.5, 0.05, -0.3, 0.12, 0.02])
    y = torch.ones(5, dtype=torch.long)
    res = run_attack("bpgd", model, x, y, eps=0.15, n_pgd=20, alpha=4.0, n_binary=10)
    x_n, found, margins = bpgd_per_sample(model, x, y, torch.full((5,), 0.15))
    torch.testing.assert_close(margins, res.margins)
    torch.testing.assert_close(x_n, res.x_adv)
    assert found.tolist() == [False, True, False, True, True]
    # the radius is per sample: a larger ball reaches the first sample's boundary
    _, found2, m2 = bpgd_per_sample(model, x, y, torch.tensor([0.6, 0.01, 0.1, 0.1, 0.1]))
    assert found2.tolist() == [True, False, False, False, True]
    assert float(m2[0]) == pytest.approx(0.5, abs=1e-3)
    assert float(m2[1]) == pytest.approx(0.01)  # case-0: the radius
    assert float(m2[2]) == 0.0  # misclassified already


def test_ima_loss_is_algorithm_1():
    model = Toy2D()
    x = _points([0.5, 0.05, -0.3, 0.2])
    y = torch.tensor([1, 1, 1, 0])  # the last one is wrong too
    b = Batch(x=x, y=y, index=torch.arange(4))
    margins = torch.tensor([0.1, 0.1, 0.1, 0.1])
    p = IMAParams(beta=0.5, eps_max=0.2, delta=0.02)
    loss, logs = ima_loss(ModelHandle(model), b, p, margins)
    rows = torch.tensor([0, 1])  # correctly classified: X1
    x_n, found, _ = bpgd_per_sample(model, x[rows], y[rows], margins[rows])
    with torch.no_grad():
        l01 = F.cross_entropy(model(x), y, reduction="sum")
        l2 = F.cross_entropy(model(x_n), y[rows], reduction="sum")
    torch.testing.assert_close(loss.detach(), (0.5 * l01 + 0.5 * l2) / 4)
    assert logs["noisy_frac"] == pytest.approx(0.5)
    # without case-0 samples only the boundary point of sample 1 is used
    loss2, _ = ima_loss(ModelHandle(model), b, IMAParams(eps_max=0.2, use_max_noise=False), margins)
    with torch.no_grad():
        l2b = F.cross_entropy(model(x_n[found]), y[rows][found], reduction="sum")
    assert found.tolist() == [False, True]
    torch.testing.assert_close(loss2.detach(), (0.5 * l01 + 0.5 * l2b) / 4)
    # beta = 0: the mean clean cross-entropy
    loss0, _ = ima_loss(ModelHandle(model), b, IMAParams(beta=0.0), margins)
    torch.testing.assert_close(loss0.detach(), l01 / 4)


def _fake_trainer(model, x, labels, train_index, epochs=10):
    return SimpleNamespace(
        model=ModelHandle(model),
        device=torch.device("cpu"),
        num_samples=x.shape[0],
        volumes=x[:, 0],
        labels=np.asarray(labels, dtype=np.int64),
        train_index=np.asarray(train_index),
        rank=0,
        world_size=1,
        recipe=SimpleNamespace(epochs=epochs, batch_size=2),
        all_reduce_tensor=lambda t, op="sum": t,
    )


def test_defense_hooks_and_state():
    model = Toy2D()
    x = _points([0.5, 0.05, -0.3, 0.9, 0.04])
    trainer = _fake_trainer(model, x, [1, 1, 1, 1, 1], train_index=[0, 1, 2, 3])
    d = get_defense("ima", eps_max=0.2)
    d.setup(trainer)
    assert d.delta == pytest.approx(0.02) == initial_delta(d.params, 10)  # eps_max / epochs
    assert torch.allclose(d.margins, torch.full((5,), 0.02))
    d.margins[:] = 0.1
    d.on_epoch_end(trainer)
    m = d.margins
    assert m[0] == pytest.approx(0.12) and m[2] == pytest.approx(0.02)
    assert m[3] == pytest.approx(0.12) and 0.05 - 1e-6 <= float(m[1]) < 0.0501
    assert m[4] == pytest.approx(0.1)  # a validation row: not updated
    # the loss reads the margins through batch.index
    b = Batch(x=x[[1, 0]], y=torch.tensor([1, 1]), index=torch.tensor([1, 0]))
    _, logs = d.loss(trainer.model, b)
    assert logs["margin"] == pytest.approx(float(m[[1, 0]].mean()))
    # checkpoint round trip
    state = d.state_tensors()
    assert set(state) == {"margins", "delta"}
    d2 = get_defense("ima", eps_max=0.2)
    d2.setup(_fake_trainer(model, x, [1] * 5, [0, 1, 2, 3], epochs=3))
    d2.load_state_tensors(state)
    assert torch.equal(d2.margins, m) and d2.delta == pytest.approx(0.02)
    d3 = get_defense("ima")
    d3.setup(_fake_trainer(model, x[:3], [1] * 3, [0, 1]))
    with pytest.raises(CryoGuardError, match="margins"):
        d3.load_state_tensors(state)
