"""Sanity checks flag the failure modes they are there for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_cryoguard.evaluate.sanity import (
    check_eval_mode,
    check_input_gradients,
    check_monotonic,
    run_sanity_checks,
    verdict,
)


class SmallNet(nn.Module):
    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 3, padding=1)
        self.drop = nn.Dropout(p)
        self.fc = nn.Linear(2 * 8**3, 3)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.conv(x)).flatten(1)))


class IgnoresInput(nn.Module):
    """Logits from a learned bias only: the output does not depend on the input."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.3, -0.2, 0.1]))

    def forward(self, x):
        return self.bias.expand(x.shape[0], -1) + 0.0 * x.flatten(1).sum(1, keepdim=True)


def _batch(n=6, seed=0):
    g = np.random.default_rng(seed)
    return g.standard_normal((n, 8, 8, 8)).astype(np.float32), g.integers(0, 3, n)


def test_train_mode_with_dropout_is_flagged_and_mode_restored():
    torch.manual_seed(0)
    net = SmallNet().train()
    x, y = _batch()
    checks = run_sanity_checks(net, x, y)
    by = {c.name: c for c in checks}
    assert by["eval_mode"].status == "fail"
    assert "dropout" in by["eval_mode"].message
    assert "drop" in by["eval_mode"].details["stochastic_modules"]
    assert verdict(checks) == "fail"
    assert net.training and net.drop.training  # the checks restored the mode
    # the same model in eval mode passes every gradient and mode check; on 6 samples the
    # collapse check cannot tell whether this untrained net learned, and says so (warn)
    ok = run_sanity_checks(net.eval(), x, y)
    by_ok = {c.name: c for c in ok}
    assert verdict([c for c in ok if c.name != "collapse"]) == "pass", [c.message for c in ok]
    assert by_ok["collapse"].status in ("warn", "fail")
    if by_ok["collapse"].status == "warn":
        assert "too few samples" in by_ok["collapse"].message
    assert not net.training


def test_sanity_checks_flag_a_collapsed_model_and_pass_a_learned_one():
    """run_sanity_checks includes check_collapse: a model predicting one class fails, and a
    model that separates the classes on 60 samples passes."""
    g = np.random.default_rng(3)
    y = np.repeat(np.arange(3), 20)
    x = g.standard_normal((60, 8, 8, 8)).astype(np.float32) * 0.1
    for i, label in enumerate(y):  # class k: a bright corner k
        x[i, label * 2: label * 2 + 2, :2, :2] += 3.0

    class Corners(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(3, 3)
            with torch.no_grad():
                self.fc1.weight.copy_(torch.eye(3))
                self.fc1.bias.zero_()

        def forward(self, v):
            v = v[:, 0] if v.dim() == 5 else v
            feats = torch.stack([v[:, 2 * k: 2 * k + 2, :2, :2].mean((1, 2, 3)) for k in range(3)], 1)
            return self.fc1(torch.relu(feats))

    learned = {c.name: c for c in run_sanity_checks(Corners().eval(), x, y)}
    assert learned["collapse"].status == "pass", learned["collapse"].message
    assert learned["collapse"].details["accuracy"] == 1.0

    class OneClass(Corners):
        def forward(self, v):
            return super().forward(v) * 0.0 + torch.tensor([5.0, 0.0, 0.0])

    flat = {c.name: c for c in run_sanity_checks(OneClass().eval(), x, y)}
    assert flat["collapse"].status == "fail"
    assert "predicted as one class" in flat["collapse"].message


def test_zero_gradient_model_is_flagged():
    x, y = _batch()
    c = check_input_gradients(IgnoresInput(), x, y)
    assert c.status == "fail"
    assert c.details["zero_gradient_samples"] == len(y)
    assert check_input_gradients(SmallNet().eval(), x, y).status == "pass"
    checks = run_sanity_checks(IgnoresInput(), x, y)
    assert verdict(checks) == "fail"


def test_attack_whose_accuracy_rises_with_eps_is_flagged():
    rising = {"weak PGD": ([0.0, 0.01, 0.03, 0.06], [0.9, 0.5, 0.6, 0.2])}
    c = check_monotonic(rising)
    assert c.status == "warn"
    (v,) = c.details["violations"]
    assert (v["from_budget"], v["to_budget"]) == (0.01, 0.03)
    assert v["to_accuracy"] > v["from_accuracy"]
    # unsorted budgets are sorted first; flat or falling curves pass
    ok = {"FGSM": ([0.06, 0.0, 0.03], [0.1, 0.9, 0.4]), "flat": ([0.0, 0.1], [0.5, 0.5])}
    assert check_monotonic(ok).status == "pass"
    # a tolerance accepts small rises
    assert check_monotonic(rising, tolerance=0.2).status == "pass"


def test_eval_mode_check_on_eval_model_passes():
    assert check_eval_mode(SmallNet().eval()).status == "pass"


# --------------------------------------------------------------------------- collapse
class _Dead(nn.Module):
    """Conv -> ReLU -> FC -> ReLU (bias -5: every final feature dead) -> FC."""

    def __init__(self, dead: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4**3, 8)
        self.fc2 = nn.Linear(8, 3)
        with torch.no_grad():
            self.fc1.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
            self.fc1.bias.fill_(-50.0 if dead else 0.0)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class _Oracle(nn.Module):
    """Predicts the label stored in voxel 0 (a model that has 'learned')."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(3) * 10)
            self.fc.bias.zero_()

    def forward(self, x):
        v = x.flatten(1)[:, 0].long().clamp(0, 2)
        return self.fc(torch.nn.functional.one_hot(v, 3).float())


def test_collapsed_model_is_flagged_with_its_numbers():
    from napari_cryoguard.evaluate.sanity import check_collapse, final_features

    x = torch.randn(30, 1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    y = np.arange(30) % 3
    dead = _Dead(dead=True).train()
    c = check_collapse(dead, x, y, 3)
    assert c.status == "fail" and "collapsed" in c.message
    assert c.details["live_share"] == 0.0 and c.details["positive_share"] == 0.0
    assert c.details["top_class_share"] == 1.0  # constant logits -> one class
    assert c.details["accuracy"] == pytest.approx(1 / 3)
    assert dead.training  # mode restored
    assert final_features(dead.eval(), x).shape == (30, 8)


def test_learned_model_passes_and_chance_accuracy_fails():
    from napari_cryoguard.evaluate.metrics import wilson_interval
    from napari_cryoguard.evaluate.sanity import check_collapse

    y = np.arange(60) % 3
    x = torch.zeros(60, 1, 4, 4, 4)
    x.view(60, -1)[:, 0] = torch.from_numpy(y).float()
    c = check_collapse(_Oracle(), x, y, 3)
    assert c.status == "pass", c.message
    assert c.details["accuracy"] == 1.0
    assert c.details["accuracy_lo"] == pytest.approx(wilson_interval(60, 60)[0])
    # labels shuffled against the stored value: accuracy 1/3, interval reaches chance
    c = check_collapse(_Oracle(), x, np.roll(y, 1), 3)
    assert c.status == "fail" and "reaches chance" in c.message
