"""Adversarial attacks on 3D subtomogram classifiers, native PyTorch and batched.

Every attack is a class with a typed parameter dataclass, registered by name:
``fgsm``, ``pgd``, ``bim`` (gradient.py), ``deepfool`` (deepfool.py), ``cw`` and
``cw_linf`` (cw.py), ``uniform_noise`` and ``salt_pepper`` (noise.py), ``bpgd``
(bpgd.py), ``apgd-ce`` and ``apgd-t`` (apgd.py, Croce & Hein, ICML 2020), ``square``
(square.py, Andriushchenko et al., ECCV 2020). The contract (inputs, bounds, units, the
result object, the registry and the facts an attack class declares) is documented in
:mod:`napari_cryoguard.attacks.base`; the tensor helpers every attack is built from
(norms, balls, bounds, losses, input gradients) are public in
:mod:`napari_cryoguard.attacks.ops`.

Adding an attack is one module of this package (a parameter dataclass, the class with
its facts and ``quick_params``, ``@register_attack``) and nothing else: it is found by
:func:`available_attacks`, contract-tested by ``tests/attacks/test_attack_contract.py``
and evaluated by :mod:`napari_cryoguard.evaluate.suite` from its class facts.

Example
-------
>>> from napari_cryoguard.attacks import run_attack, available_attacks
>>> res = run_attack("fgsm", model, x, y, eps=0.03)  # doctest: +SKIP
>>> res.summary()  # doctest: +SKIP
"""

from __future__ import annotations

from napari_cryoguard.attacks import ops
from napari_cryoguard.attacks.apgd import APGDCE, APGDT, APGDCEParams, APGDParams, APGDTParams
from napari_cryoguard.attacks.base import (
    ATTACKS,
    Attack,
    AttackParams,
    AttackResult,
    BallParams,
    StepParams,
    available_attacks,
    get_attack_class,
    get_attack_params,
    make_attack,
    register_attack,
    run_attack,
)
from napari_cryoguard.attacks.bpgd import BPGD, BPGDParams, bpgd_search
from napari_cryoguard.attacks.cw import CW, CWLinf, CWLinfParams, CWParams
from napari_cryoguard.attacks.dataset import AttackProgress, attack_dataset, iter_attack_dataset
from napari_cryoguard.attacks.deepfool import DeepFool, DeepFoolParams
from napari_cryoguard.attacks.gradient import (
    BIM,
    FGSM,
    PGD,
    BIMParams,
    FGSMParams,
    PGDParams,
    pgd_perturb,
)
from napari_cryoguard.attacks.noise import (
    SaltPepper,
    SaltPepperParams,
    UniformNoise,
    UniformNoiseParams,
)
from napari_cryoguard.attacks.square import Square, SquareParams

__all__ = [
    "ATTACKS",
    "APGDCE",
    "APGDT",
    "BIM",
    "BPGD",
    "CW",
    "FGSM",
    "PGD",
    "Attack",
    "AttackParams",
    "AttackProgress",
    "APGDCEParams",
    "APGDParams",
    "APGDTParams",
    "AttackResult",
    "BIMParams",
    "BPGDParams",
    "BallParams",
    "CWLinf",
    "CWLinfParams",
    "CWParams",
    "DeepFool",
    "DeepFoolParams",
    "FGSMParams",
    "PGDParams",
    "SaltPepper",
    "SaltPepperParams",
    "Square",
    "SquareParams",
    "StepParams",
    "UniformNoise",
    "UniformNoiseParams",
    "attack_dataset",
    "available_attacks",
    "bpgd_search",
    "get_attack_class",
    "get_attack_params",
    "iter_attack_dataset",
    "make_attack",
    "ops",
    "pgd_perturb",
    "register_attack",
    "run_attack",
]
