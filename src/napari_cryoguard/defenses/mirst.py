"""``rst`` and ``mirst``: (multi-instance) robust self-training, MIRST-DM.

Source: Sun et al., MIRST-DM (MICCAI 2022) section 3.1, Eq. (1)-(3),
and section 4.1 for the settings.

* **RST** (supervised form, Eq. (1); the paper uses "only labeled images and a loss
  function with the standard cross-entropy loss and the adversarial loss")::

      L_RST = mean_i [ CE(f(x_i), y_i) + alpha * CE(f(x_bar_i), y_i) ]

  with ``x_bar`` the most aggressive adversarial instance: the last iterate of a
  T-step PGD (Eq. (3)).
* **MIRST** (Eq. (2)): the same clean term, and the adversarial term spread over ``m``
  instances of *one* PGD trajectory::

      L_MIRST = mean_i [ CE(f(x_i), y_i) + alpha * sum_j beta_j * CE(f(x_bar_j,i), y_i) ]

  with ``beta = (0.34, 0.28, 0.22, 0.16)`` (section 4.1, summing to 1, the heaviest
  weight on the least perturbed instance) and ``alpha = 1`` ("MIRST-DM uses weight 1 for
  the adversarial loss for a fair comparison with RST").

How they differ, exactly: RST is MIRST with one instance, ``instance_steps = (T,)``
and ``weights = (1.0,)``; the code path is the same, so ``mirst`` with those two
settings returns bit-for-bit RST's loss. Both differ from ``at`` by the clean
cross-entropy term: with the same start, ``rst = standard + alpha * at``.

The trajectory (Eq. (3)): ``x^adv_(t+1) = Proj_[x-eps, x+eps](x^adv_t + gamma *
sign(grad CE(f(x^adv_t), y)))``, ``x^adv_1 = x`` (no random start), ``T = 10``. The
paper takes ``x_bar_j = x^adv_(3j+1)``, i.e. the iterate after ``3j`` steps; its fourth
instance (12 steps) lies beyond ``T = 10``, so by default the instances are taken after
``min(3j, T)`` steps: (3, 6, 9, 10) for T = 10 (our reading of the paper's indexing).
The budget is the paper's, eps = 5/255 = 0.0196 (section 4.1, all attacks); the paper
does not print the training step ``gamma``: its attacks use 0.001, with which 10 steps
could not leave a 0.01-ball, so we use 0.002 (our choice) to let the last instance reach
the eps boundary. The drop-max layer ("DM") is a model parameter (``drop_max=True``);
SimCLR pre-training is the ``simclr`` defense. Instances are generated in eval mode (see
:mod:`napari_cryoguard.defenses.at`); the paper does not say which mode its PGD runs in.

Cost, and the one exact saving (``fuse``)
-----------------------------------------
Eq. (2) scores ``m + 1`` batches (the clean one and ``m`` instances: 5N for MIRST) in the
training forward pass, in the mode the trainer set (train mode), on top of the ``T``
forward + backward passes of the PGD run (eval mode). At most ``T + m + 1`` standard
passes, not the ``T + 1`` of single-instance adversarial training. The weight gradient
of the instance terms can *not* be taken from the PGD passes at those iterates: on a
model with dropout (CB3D's and RB3D's ``nn.Dropout`` layers) Eq. (2)'s terms are
``CE(f_train(x_bar_j), y)`` with random dropout masks and the 1/(1-p) scaling, while
PGD differentiates ``CE(f_eval(x_bar_j), y)`` (no dropout); their gradients differ at
every layer below the dropout, and batch norm differs the same way (batch statistics,
running-statistics update). Only the computation *before* the first layer whose
behaviour depends on the mode is shared: the *trunk* (CB3D: every convolution, pool and
the first fully connected layer with its ReLU; a model with no mode-dependent layer, or
one already in eval mode: all of it). With ``fuse=True`` (default) the PGD run keeps the
trunk's graph at the clean batch and at each instance it visits (iterates after fewer
than ``T`` steps; the clean batch when there is no random start), and the training pass
runs only the trunk of the points PGD did not visit (the last instance, after ``T``
steps) and the head, once, on all ``(m + 1) N`` trunk outputs, in train mode: the same
function, the same dropout draws (one call on the same (m + 1) N rows) and the same
weight gradient as the separate pass, up to float rounding, with ``m`` fewer trunk
forward passes (``T + 1`` forward and ``T + m + 1`` backward passes per batch). Not
fused (the separate pass, exactly as without it): under DistributedDataParallel (which
synchronises only the gradients of work done through its own forward), or a model with
a mode-dependent layer in train mode outside its ``classifier`` (RB3D's in-block
dropout) or no ``classifier`` to cut.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from napari_cryoguard.attacks import ops
from napari_cryoguard.attacks.units import check_eps_unit, range_coordinates
from napari_cryoguard.checks import check_number
from napari_cryoguard.defenses.at import (
    InnerMaxParams,
    Objective,
    adversarial_ce_objective,
    attack_mode,
    masked_accuracy,
    pgd_trajectory,
    random_start,
)
from napari_cryoguard.defenses.base import (
    Batch,
    Defense,
    ModelHandle,
    masked_cross_entropy,
    register_defense,
    unwrap,
)
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.registry import number

__all__ = [
    "MIRST",
    "RST",
    "MIRSTParams",
    "RSTParams",
    "mirst_loss",
    "mode_dependent",
    "multi_instance_loss",
    "rst_loss",
]

_EPS_5_255 = 5.0 / 255.0


@dataclass
class RSTParams(InnerMaxParams):
    """Parameters of the ``rst`` defense (MIRST-DM Eq. (1), (3); section 4.1): the ball
    and PGD iteration of :class:`~napari_cryoguard.defenses.at.InnerMaxParams` with the
    paper's L-inf budget 5/255 = 0.0196 (section 4.1), the step ``gamma`` of Eq. (3)
    0.002 (our choice, see the module docstring) and ``T`` = 10 steps (section 3.1), and

    Attributes
    ----------
    alpha
        Weight of the adversarial loss: 1.0 (section 4.1).
    random_start
        Eq. (3) starts at the clean image: False.
    fuse
        Reuse the PGD run's forward passes of the model's mode-independent trunk at the
        clean batch and the instances it visits, instead of a second forward pass over
        them (the same loss and gradient up to float rounding; see the module
        docstring): True. False: always the separate training pass.
    """

    eps: float = number(_EPS_5_255, help="L-inf budget (MIRST-DM 4.1: 5/255)")
    step_size: float = number(0.002, help="PGD step gamma of Eq. (3): 0.002")
    alpha: float = number(1.0)
    random_start: bool = False
    fuse: bool = field(
        default=True,
        metadata={
            "help": "reuse the PGD passes' trunk forward at the instances (exact up to rounding)"
        },
    )

    def instances(self) -> tuple[tuple[float, ...], tuple[int, ...]]:
        """(weights, step counts) of the adversarial instances: RST's one, the last iterate."""
        return (1.0,), (self.steps,)


@dataclass
class MIRSTParams(RSTParams):
    """Parameters of the ``mirst`` defense (MIRST-DM Eq. (2)-(3); section 4.1).

    Attributes
    ----------
    weights
        ``beta_j`` of the adversarial instances: (0.34, 0.28, 0.22, 0.16).
    instance_steps
        PGD steps after which each instance is taken (one per weight, non-decreasing,
        at most ``steps``); None: ``min(3j, steps)`` for ``j = 1..m`` (the paper's
        ``x^adv_(3j+1)``), i.e. (3, 6, 9, 10) for 10 steps.

    The other fields are those of :class:`RSTParams`.
    """

    weights: tuple[float, ...] = (0.34, 0.28, 0.22, 0.16)
    instance_steps: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.weights = tuple(self.weights)
        if not self.weights:
            raise CryoGuardError("weights must be one or more numbers >= 0, got ()")
        for w in self.weights:
            check_number("weights", w)
        self.weights = tuple(float(w) for w in self.weights)
        if self.instance_steps is not None:
            self.instance_steps = tuple(self.instance_steps)
            for step in self.instance_steps:
                check_number("instance_steps", step, integer=True)
        self.resolved_instance_steps()  # validates

    def instances(self) -> tuple[tuple[float, ...], tuple[int, ...]]:
        """(weights, step counts) of the adversarial instances."""
        return self.weights, self.resolved_instance_steps()

    def resolved_instance_steps(self) -> tuple[int, ...]:
        """The step count of each instance (see ``instance_steps``)."""
        m = len(self.weights)
        if self.instance_steps is None:
            return tuple(min(3 * j, self.steps) for j in range(1, m + 1))
        steps = tuple(self.instance_steps)
        if len(steps) != m:
            raise CryoGuardError(f"instance_steps needs {m} values (one per weight), got {steps!r}")
        if any(s < 0 or s > self.steps for s in steps) or list(steps) != sorted(steps):
            raise CryoGuardError(
                f"instance_steps must be non-decreasing in [0, steps={self.steps}], got {steps!r}"
            )
        return steps


# --------------------------------------------------------------------------- the trunk

#: torch.nn layer modules that compute the same in train and eval mode (the others, and
#: dropout with p > 0, batch norm, instance norm with running statistics, RReLU, count
#: as mode-dependent)
_MODE_FREE_TORCH = (
    "torch.nn.modules.activation",
    "torch.nn.modules.container",
    "torch.nn.modules.conv",
    "torch.nn.modules.flatten",
    "torch.nn.modules.linear",
    "torch.nn.modules.normalization",
    "torch.nn.modules.padding",
    "torch.nn.modules.pixelshuffle",
    "torch.nn.modules.pooling",
    "torch.nn.modules.upsampling",
)
#: words in a custom module's ``forward`` source that make it count as mode-dependent
_MODE_WORDS = ("training", "dropout", "rand", "bernoulli", "normal_")


@functools.lru_cache(maxsize=256)
def _forward_is_mode_free(cls: type) -> bool:
    """No :data:`_MODE_WORDS` in the ``forward`` of ``cls`` or of its non-torch bases
    (read once per class: reading source costs milliseconds)."""
    for klass in cls.__mro__:
        if "forward" not in vars(klass) or klass.__module__.startswith("torch."):
            continue
        try:
            src = inspect.getsource(vars(klass)["forward"])
        except (OSError, TypeError):
            return False
        if any(w in src for w in _MODE_WORDS):
            return False
    return True


def _own_mode_dependent(m: nn.Module) -> bool:
    """:func:`mode_dependent` for ``m`` alone (not its submodules)."""
    if not m.training:
        return False
    if isinstance(m, nn.modules.dropout._DropoutNd):
        return m.p > 0
    if isinstance(m, nn.modules.instancenorm._InstanceNorm):
        return m.track_running_stats
    cls = type(m)
    if cls.__module__.startswith("torch."):
        return cls.__module__ not in _MODE_FREE_TORCH or isinstance(
            m, (nn.RReLU, nn.MultiheadAttention)
        )
    return not _forward_is_mode_free(cls)


def mode_dependent(module: nn.Module) -> bool:
    """Whether ``module``, in its current modes, may compute something else than in eval
    mode (or draw random numbers): a submodule in train mode that is dropout with
    ``p > 0``, batch norm, instance norm with running statistics, RReLU or another torch
    layer outside the known mode-free families, or a custom module whose ``forward``
    mentions ``training``, dropout or random draws. Conservative: False is a guarantee
    for every torch layer, a source check for custom modules."""
    return any(_own_mode_dependent(m) for m in module.modules())


def _run(layers: Sequence[nn.Module], h: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        h = layer(h)
    return h


class _Cut(Exception):
    """Internal: the trunk's forward pass stopped at the head's input."""


class _NoCut(Exception):
    """Internal: the model's forward did not call its ``classifier`` (no split)."""


def trunk_and_head(
    plain: nn.Module,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]] | None:
    """``(trunk, head)`` with ``plain(x) == head(trunk(x))`` and ``trunk`` computing the
    same in the model's current modes as in eval mode; None when no such split with a
    non-empty trunk is known.

    A model with no mode-dependent layer (or in eval mode) is all trunk. A model whose
    forward ends in a ``classifier`` (``nn.Sequential``: CB3D, DSRF3D-v2, RB3D), with no
    mode-dependent layer outside it, is cut before the classifier's first mode-dependent
    layer: the trunk runs the model's own forward (its fast paths included) up to the
    classifier's input, stopped there by a forward pre-hook, then the classifier's
    layers before the cut (:class:`_NoCut` when the forward never calls the classifier).
    """
    if not mode_dependent(plain):
        return plain, _identity
    classifier = getattr(plain, "classifier", None)
    if not isinstance(classifier, nn.Sequential):
        return None
    inside = set(classifier.modules())
    if any(_own_mode_dependent(m) for m in plain.modules() if m not in inside):
        return None
    layers = list(classifier)
    k = next(i for i, m in enumerate(layers) if mode_dependent(m))
    first, rest = layers[:k], layers[k:]

    def trunk(x: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []

        def stop(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            seen.append(args[0])
            raise _Cut

        hook = classifier.register_forward_pre_hook(stop)
        try:
            plain(x)
        except _Cut:
            pass
        finally:
            hook.remove()
        if not seen:
            raise _NoCut
        return _run(first, seen[0])

    return trunk, lambda h: _run(rest, h)


#: model -> (its class and fast-path flag, whether its output is its classifier's)
_ENDS_IN_CLASSIFIER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _ends_in_classifier(plain: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``plain(x)`` returns its ``classifier``'s output as it is (nothing after
    it); checked once per model (and fast-path setting) on one sample, in eval mode
    (no random draw), without gradient."""
    key = (type(plain), getattr(plain, "fast_paths", None))
    known = _ENDS_IN_CLASSIFIER.get(plain)
    if known is not None and known[0] == key:
        return known[1]
    outs: list[torch.Tensor] = []
    hook = plain.classifier.register_forward_hook(lambda _m, _i, out: outs.append(out))
    modes = [(m, m.training) for m in plain.modules()]
    plain.eval()
    try:
        with torch.no_grad():
            ok = plain(x[:1]) is (outs[-1] if outs else None)
    finally:
        hook.remove()
        for m, mode in modes:
            m.training = mode
    _ENDS_IN_CLASSIFIER[plain] = (key, ok)
    return ok


def _identity(h: torch.Tensor) -> torch.Tensor:
    return h


def _distributed(model: nn.Module) -> bool:
    """Whether ``model`` (a handle, DDP or dispatch wrapper) runs through DDP."""
    for _ in range(8):
        if isinstance(model, nn.parallel.DistributedDataParallel):
            return True
        if isinstance(model, ModelHandle):
            model = model.engine
        elif hasattr(model, "inner") and not isinstance(model.inner, torch.Tensor):
            model = model.inner  # the DDP dispatch wrapper
        else:
            return False
    return False


# --------------------------------------------------------------------------- the trajectory


def _segment(
    trunk: Callable[[torch.Tensor], torch.Tensor],
    head: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    fn: Objective,
    *,
    norm: str,
    eps: float,
    step_size: float,
    steps: int,
    start: torch.Tensor | None,
    first: int,
    keep: set[int],
    kept: dict[int, torch.Tensor],
) -> torch.Tensor:
    """:func:`~napari_cryoguard.attacks.gradient.pgd_perturb` (no box), the same float
    operations, with the model split into ``head(trunk(.))``; at global step
    ``first + t`` in ``keep`` the trunk output keeps its graph in ``kept``."""
    delta = torch.zeros_like(x) if start is None else ops.project(start, norm, eps)
    x_adv = x + delta
    del delta
    if steps <= 0:
        return x_adv.detach()
    if norm == "linf":
        lo, hi = x - eps, x + eps
    for t in range(steps):
        retain = first + t in keep
        # a kept graph holds its input for the weight gradient: a copy, not the iterate
        # that the step below updates in place
        xg = (x_adv.clone() if retain else x_adv).detach().requires_grad_(True)
        h = trunk(xg)
        (grad,) = torch.autograd.grad(fn(head(h)).sum(), xg, retain_graph=retain)
        if retain:
            kept[first + t] = h
        with torch.no_grad():
            if norm == "linf":
                x_adv.add_(grad.sign(), alpha=step_size).clamp_(lo, hi)
            else:
                x_adv.add_(ops.normalized_step(grad, norm), alpha=step_size)
                x_adv = x + ops.project(x_adv.sub_(x), norm, eps)
    return x_adv.detach()


def _fused_trajectory(
    trunk: Callable[[torch.Tensor], torch.Tensor],
    head: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    fn: Objective,
    *,
    norm: str,
    eps: float,
    step_size: float,
    checkpoints: tuple[int, ...],
    start: torch.Tensor | None,
    keep: set[int],
) -> tuple[list[torch.Tensor], dict[int, torch.Tensor]]:
    """:func:`~napari_cryoguard.defenses.at.pgd_trajectory` (normalised units: the same
    segments, the same iterates) that also returns the trunk outputs, with their graphs,
    at the step counts in ``keep`` that the run visits."""
    out: list[torch.Tensor] = []
    kept: dict[int, torch.Tensor] = {}
    done = 0
    cur_start = start
    x_cur: torch.Tensor | None = None
    for c in checkpoints:
        c = int(c)
        if x_cur is None or c > done:
            x_cur = _segment(
                trunk,
                head,
                x,
                fn,
                norm=norm,
                eps=float(eps),
                step_size=float(step_size),
                steps=c - done,
                start=cur_start,
                first=done,
                keep=keep,
                kept=kept,
            )
            cur_start = x_cur - x
            done = c
        out.append(x_cur)
    return out, kept


def _fused_logits(
    model: nn.Module, batch: Batch, params: RSTParams, instance_steps: tuple[int, ...]
) -> torch.Tensor | None:
    """The training logits of ``[x, *instances]`` (the separate pass's, up to rounding)
    with the trunk's forward passes shared with the PGD run; None where not exact."""
    if _distributed(model):
        return None
    plain = unwrap(model)
    split = trunk_and_head(plain)
    if split is None or (split[1] is not _identity and not _ends_in_classifier(plain, batch.x)):
        return None
    x = batch.x
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(x.device) if x.device.type == "cuda" else None
    try:
        return _shared_trunk_logits(model, batch, params, instance_steps, *split)
    except _NoCut:  # the forward did not run its classifier: the separate pass, same draws
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, x.device)
        return None


def _shared_trunk_logits(
    model: nn.Module,
    batch: Batch,
    params: RSTParams,
    instance_steps: tuple[int, ...],
    trunk: Callable[[torch.Tensor], torch.Tensor],
    head: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    x = batch.x
    range_unit = check_eps_unit(params.eps_unit) == "range"
    keep = set(instance_steps)
    clean_visited = not (params.random_start and params.eps > 0)
    if clean_visited:
        keep.add(0)
    with attack_mode(model) as eval_model:
        start = None
        if params.random_start and params.eps > 0:
            start = random_start(x, params.norm, params.eps)
        fn = adversarial_ce_objective(batch.y)
        if range_unit:
            rc = range_coordinates(eval_model, x)
            s = rc.scale.reshape(-1, *([1] * (x.dim() - 1)))
            outs, kept = _fused_trajectory(
                lambda u: trunk(u * s.to(u.dtype)),
                head,
                rc.u,
                fn,
                norm=params.norm,
                eps=params.eps,
                step_size=params.step_size,
                checkpoints=tuple(instance_steps),
                start=start,
                keep=keep,
            )
            instances = [rc.to_data(o) for o in outs]
        else:
            instances, kept = _fused_trajectory(
                trunk,
                head,
                x,
                fn,
                norm=params.norm,
                eps=params.eps,
                step_size=params.step_size,
                checkpoints=tuple(instance_steps),
                start=start,
                keep=keep,
            )
    # train mode again (the trainer's): the points PGD did not visit, then the head once
    feats = [kept[0] if clean_visited and 0 in kept else trunk(x)]
    for step, inst in zip(instance_steps, instances, strict=True):
        if step not in kept:  # one pass per distinct point (equal steps: one iterate)
            kept[step] = trunk(inst)
        feats.append(kept[step])
    return head(torch.cat(feats))


def multi_instance_loss(
    model: nn.Module, batch: Batch, params: RSTParams
) -> tuple[torch.Tensor, dict[str, float]]:
    """``CE(f(x), y) + alpha * sum_j w_j CE(f(x_bar_j), y)`` (MIRST-DM Eq. (2)).

    The instances ``x_bar_j`` (weights and step counts from ``params.instances()``)
    are the iterates of one PGD run (Eq. (3), eval mode) after ``instance_steps[j]``
    steps; one forward pass (train mode) scores the clean batch and all instances, its
    trunk shared with the PGD run where ``params.fuse`` and exact (module docstring).
    RST (Eq. (1)) is the case of one instance, the last iterate, of weight 1.

    Returns
    -------
    (loss, logs)
        Logs: ``ce`` (clean), ``adv_ce`` (the weighted adversarial sum), ``acc``
        (clean) and ``adv_acc`` (on the last instance).
    """
    weights, instance_steps = params.instances()
    x = batch.x
    n = x.shape[0]
    logits = None
    if params.fuse:
        logits = _fused_logits(model, batch, params, tuple(instance_steps))
    if logits is None:
        with attack_mode(model) as plain:
            start = None
            if params.random_start and params.eps > 0:
                start = random_start(x, params.norm, params.eps)
            instances = pgd_trajectory(
                plain,
                x,
                adversarial_ce_objective(batch.y),
                norm=params.norm,
                eps=params.eps,
                step_size=params.step_size,
                checkpoints=tuple(instance_steps),
                start=start,
                eps_unit=params.eps_unit,
            )
        logits = model(torch.cat([x, *instances]))
    logits = logits.float()
    ce, _ = masked_cross_entropy(logits[:n], batch.y)
    adv = logits.new_zeros(())
    for j, w in enumerate(weights):
        cj, _ = masked_cross_entropy(logits[(j + 1) * n : (j + 2) * n], batch.y)
        adv = adv + float(w) * cj
    loss = ce + float(params.alpha) * adv
    logs = {k: float(v.detach().item()) for k, v in (("ce", ce), ("adv_ce", adv))}
    logs["acc"] = masked_accuracy(logits[:n].detach(), batch.y)
    logs["adv_acc"] = masked_accuracy(logits[-n:].detach(), batch.y)
    return loss, logs


def rst_loss(
    model: nn.Module, batch: Batch, params: RSTParams
) -> tuple[torch.Tensor, dict[str, float]]:
    """RST (MIRST-DM Eq. (1)): clean CE + ``alpha`` * CE of the last PGD iterate."""
    return multi_instance_loss(model, batch, params)


def mirst_loss(
    model: nn.Module, batch: Batch, params: MIRSTParams
) -> tuple[torch.Tensor, dict[str, float]]:
    """MIRST (MIRST-DM Eq. (2)): clean CE + ``alpha`` * weighted CE of several PGD iterates."""
    return multi_instance_loss(model, batch, params)


@register_defense("rst", RSTParams)
class RST(Defense):
    """Robust self-training, supervised form (MIRST-DM Eq. (1)); see :func:`rst_loss`."""

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return rst_loss(model, batch, self.params)


@register_defense("mirst", MIRSTParams)
class MIRST(Defense):
    """Multi-instance robust self-training (MIRST-DM Eq. (2)); see :func:`mirst_loss`.

    For MIRST-DM train a model built with ``drop_max=True``
    (``--set model.drop_max=true``).
    """

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return mirst_loss(model, batch, self.params)
