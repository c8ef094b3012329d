"""The training recipe: every training setting and its default, declared once.

:class:`Recipe` is read by the training loop (:func:`napari_cryoguard.defenses.trainer.train`),
the ``cryoguard train`` options (generated from its fields by
:func:`napari_cryoguard.cli._options.add_options`), the background runs
(:func:`napari_cryoguard.runs.train_command`) and the Train widget, so a default such as
``epochs`` is written here and nowhere else.

Defaults: Adam at lr 1e-4 and batch size 16 (RAT paper section IV.B; the
semi-supervised paper SEMI3D section 4 also uses Adam at 1e-4); ``optimizer="sgd"`` is
SGD with Nesterov momentum 0.9 at lr 0.005 (CB3D paper section 2.3; its Keras-style
learning-rate decay of 1e-7 per step is negligible and left out). The 0.2 validation
split is the 80/20 split of RAT section IV.B and CB3D section 3.

This module imports neither torch nor Qt (``cryoguard train --help`` and the widget's
form read it without loading torch).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from napari_cryoguard.checks import check_float, check_positive_int, check_prob
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.params import Optimizer, Schedule, choices_of

__all__ = ["DEFAULT_LR", "Recipe"]

#: the learning rate each optimizer's paper uses, taken when ``Recipe.lr`` is None
DEFAULT_LR = {"adam": 1e-4, "sgd": 0.005}


def _choice(name: str, value: Any, hint: Any) -> str:
    """``value`` lower-cased, one of the ``Literal`` ``hint``'s choices."""
    known = choices_of(hint) or ()
    text = str(value).strip().lower()
    if text not in known:
        raise CryoGuardError(f"unknown {name} {value!r}; known: {', '.join(known)}")
    return text


@dataclass
class Recipe:
    """How to train: optimizer, schedule, split, early stopping, robust evaluation.

    Attributes
    ----------
    optimizer
        adam (RAT paper IV.B; semi-supervised paper section 4) or sgd with Nesterov
        momentum 0.9 (CB3D paper section 2.3).
    lr
        Learning rate; none picks 1e-4 for adam and 0.005 for sgd (the papers').
    weight_decay
        L2 weight decay added by the optimizer (0: the papers use none).
    momentum
        SGD (Nesterov) momentum.
    adam_betas
        Adam's (beta1, beta2); (0.9, 0.999) is Adam's default (RAT); the
        semi-supervised paper uses (0.9, 0.99).
    epochs
        Total epochs (a resumed run trains up to this count).
    batch_size
        Samples per step per process (16, RAT paper IV.B); under DDP the effective
        batch is batch_size * world_size.
    schedule
        Learning-rate schedule per epoch: none, cosine (to 0 at the last epoch) or
        step (times gamma every step_size epochs).
    step_size
        Epochs between the steps of the step schedule; 0 means a third of epochs.
    gamma
        Factor of the step schedule.
    val_fraction
        Fraction of each class held out for validation; 0 trains on all.
    patience
        Early stopping after this many epochs without a lower validation loss,
        keeping the best weights (0 = off).
    seed
        Seeds the split, the initial weights, the shuffling and dropout.
    robust_every
        Measure the validation accuracy under robust_attack every this many epochs
        (0 = off).
    robust_attack
        Attack for the robust accuracy (a name of napari_cryoguard.attacks).
    robust_params
        Parameters of robust_attack, e.g. {"eps": 0.1}.
    robust_samples
        At most this many validation samples are attacked (attacks are costly).
    train_eval_samples
        Clean train accuracy is measured on a fixed subset of this many training
        samples, in eval mode.
    amp
        float16 mixed precision (CUDA only; a no-op elsewhere).
    """

    optimizer: Optimizer = "adam"
    lr: float | None = None
    weight_decay: float = 0.0
    momentum: float = 0.9
    adam_betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = 20
    batch_size: int = 16
    schedule: Schedule = "none"
    step_size: int = 0
    gamma: float = 0.1
    val_fraction: float = 0.2
    patience: int = 0
    seed: int = 0
    robust_every: int = 0
    robust_attack: str = "pgd"
    robust_params: dict[str, Any] = field(default_factory=dict)
    robust_samples: int = 128
    train_eval_samples: int = 512
    amp: bool = False

    def __post_init__(self) -> None:
        self.optimizer = _choice("optimizer", self.optimizer, Optimizer)  # type: ignore[assignment]
        self.schedule = _choice("schedule", self.schedule, Schedule)  # type: ignore[assignment]
        if self.lr is not None:
            check_float("lr", self.lr, minimum=0.0, strict=True)
        for name in ("epochs", "batch_size", "robust_samples", "train_eval_samples"):
            setattr(self, name, check_positive_int(name, getattr(self, name)))
        for name in ("patience", "robust_every", "step_size", "seed"):
            setattr(self, name, check_positive_int(name, getattr(self, name), minimum=0))
        check_prob("val_fraction", self.val_fraction)
        if self.patience > 0 and float(self.val_fraction) == 0.0:
            raise CryoGuardError("early stopping (patience > 0) needs val_fraction > 0")
        check_float("weight_decay", self.weight_decay, minimum=0.0)
        if not isinstance(self.robust_params, dict):
            raise CryoGuardError("robust_params must be a dict of attack parameters")
        self.adam_betas = tuple(float(b) for b in self.adam_betas)  # type: ignore[assignment]
        if len(self.adam_betas) != 2:
            raise CryoGuardError(f"adam_betas needs two values, got {self.adam_betas!r}")
        self.val_fraction = float(self.val_fraction)
        self.amp = bool(self.amp)

    def resolved_lr(self) -> float:
        """The learning rate in use (the optimizer's paper default if ``lr`` is None)."""
        return float(self.lr) if self.lr is not None else DEFAULT_LR[self.optimizer]

    def lr_factor(self, epoch: int) -> float:
        """Multiplier of the base learning rate at 0-based ``epoch``."""
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, self.epochs)))
        if self.schedule == "step":
            size = self.step_size or max(1, self.epochs // 3)
            return float(self.gamma) ** (epoch // size)
        return 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with the resolved ``lr``."""
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        d["lr"] = self.resolved_lr()
        return d

    @classmethod
    def field_names(cls) -> list[str]:
        """The recipe's option names, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides: Any) -> Recipe:
        """Build from a stored dict (unknown keys ignored) with ``overrides`` applied."""
        names = set(cls.field_names())
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise CryoGuardError(
                f"unknown recipe option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
            )
        kw = {k: v for k, v in d.items() if k in names}
        kw.update(overrides)
        if isinstance(kw.get("adam_betas"), list):
            kw["adam_betas"] = tuple(kw["adam_betas"])
        return cls(**kw)
