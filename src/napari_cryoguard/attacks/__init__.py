"""Adversarial attacks on 3D subtomogram classifiers, native PyTorch and batched.

Every attack is a class with a typed parameter dataclass, registered by name:
``fgsm``, ``pgd``, ``bim`` (gradient.py), ``deepfool`` (deepfool.py), ``cw`` and
``cw_linf`` (cw.py), ``uniform_noise`` and ``salt_pepper`` (noise.py), ``bpgd``
(bpgd.py), ``apgd-ce`` and ``apgd-t`` (apgd.py, Croce & Hein, ICML 2020), ``square``
(square.py, Andriushchenko et al., ECCV 2020). The contract (inputs, bounds, units, the result object) is documented in
:mod:`napari_cryoguard.attacks.base`.

Example
-------
>>> from napari_cryoguard.attacks import run_attack, available_attacks
>>> res = run_attack("fgsm", model, x, y, eps=0.03)  # doctest: +SKIP
>>> res.summary()  # doctest: +SKIP
"""

from __future__ import annotations

from napari_cryoguard.attacks.apgd import APGDCE, APGDT, APGDCEParams, APGDTParams
from napari_cryoguard.attacks.base import (
    Attack,
    AttackParams,
    AttackResult,
    available_attacks,
    get_attack_class,
    get_attack_params,
    make_attack,
    register_attack,
    run_attack,
)
from napari_cryoguard.attacks.bpgd import BPGD, BPGDParams
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
    "APGDTParams",
    "AttackResult",
    "BIMParams",
    "BPGDParams",
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
    "UniformNoise",
    "UniformNoiseParams",
    "attack_dataset",
    "available_attacks",
    "get_attack_class",
    "get_attack_params",
    "iter_attack_dataset",
    "make_attack",
    "pgd_perturb",
    "register_attack",
    "run_attack",
]
