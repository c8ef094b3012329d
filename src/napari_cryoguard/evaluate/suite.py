"""Attack suites for :func:`napari_cryoguard.evaluate.evaluate`: specs, presets, parsing.

An attack spec is a plain dict::

    {"name": "pgd",                 # registry name (napari_cryoguard.attacks)
     "label": "PGD-100 CE",         # shown in tables and plots (default: name)
     "budgets": [0.01, 0.03],       # the x-axis of the accuracy curve
     "params": {"steps": 100, ...}, # fixed attack parameters
     "variants": [{"loss": "ce"}, {"loss": "margin"}],  # optional: worst case over these
     "mode": "bounded" | "minimal"} # optional, see below

* ``bounded`` attacks (fgsm, pgd, bim, cw_linf, and cw with norm linf) run once per
  budget with the budget as their ``eps``.
* ``minimal`` attacks (deepfool, cw L2, uniform_noise, salt_pepper, bpgd) look for the
  smallest perturbation that fools the model; they run once and a sample counts as
  fooled at budget ``b`` when the attack succeeded with a distance ``<= b`` (foolbox's
  convention for minimisation attacks). The distance is the perturbation norm in the
  attack's norm, the noise amplitude (``uniform_noise``), the fraction of voxels
  replaced (``salt_pepper``) or the margin (``bpgd``).
* ``variants``: every variant runs (with ``params`` updated by it) and a sample counts
  as robust only if it survives all of them, e.g. IMA's 100-PGD "run twice, with the
  margin loss and the cross-entropy loss"
  (Ma & Liang, IMA (arXiv:2005.09147), Experiments).

Budgets are in normalised units (z-scored subtomograms, DESIGN.md conventions).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from napari_cryoguard.errors import CryoGuardError

__all__ = [
    "MINIMAL_ATTACKS",
    "attack_mode",
    "budget_unit",
    "default_suite",
    "normalize_suite",
    "parse_attack_option",
    "quick_suite",
]

#: Attacks that search for a minimal perturbation (one run gives the whole curve).
MINIMAL_ATTACKS = ("deepfool", "cw", "uniform_noise", "salt_pepper", "bpgd")

#: FGSM budgets of Wu et al., RAT (IEEE BIBM 2019) Table II.
RAT_FGSM_EPS = (0.01, 0.03, 0.06, 0.12)


def default_suite() -> list[dict[str, Any]]:
    """The full suite: RAT Tables I-II attacks and IMA's 100-PGD with CE and margin loss.

    * FGSM at eps 0.01, 0.03, 0.06, 0.12 (RAT Table II; IV.C "max eps 0.03").
    * PGD-100, L-inf, random start, step ``2.5 eps / 100``, with the cross-entropy and
      with the margin loss, at the same eps (IMA, Experiments: "100-PGD").
    * DeepFool L2 and L-inf, Carlini-Wagner L2, additive uniform noise, salt and pepper
      (RAT Table I); minimal attacks, read at the budgets listed (L2 budgets are
      absolute L2 norms of the whole cube, our choice).
    """
    return [
        {"name": "fgsm", "label": "FGSM", "budgets": list(RAT_FGSM_EPS), "params": {}},
        {
            "name": "pgd",
            "label": "PGD-100 CE",
            "budgets": list(RAT_FGSM_EPS),
            "params": {
                "steps": 100,
                "step_size": None,
                "loss": "ce",
                "random_start": True,
                "seed": 0,
            },
        },
        {
            "name": "pgd",
            "label": "PGD-100 margin",
            "budgets": list(RAT_FGSM_EPS),
            "params": {
                "steps": 100,
                "step_size": None,
                "loss": "margin",
                "random_start": True,
                "seed": 0,
            },
        },
        {
            "name": "deepfool",
            "label": "DeepFool L2",
            "budgets": [0.5, 1.0, 2.0, 4.0],
            "params": {"norm": "l2", "steps": 50},
        },
        {
            "name": "deepfool",
            "label": "DeepFool Linf",
            "budgets": list(RAT_FGSM_EPS),
            "params": {"norm": "linf", "steps": 50},
        },
        {
            "name": "cw",
            "label": "CW L2",
            "budgets": [0.5, 1.0, 2.0, 4.0],
            "params": {"steps": 100, "binary_search_steps": 5},
        },
        {
            "name": "uniform_noise",
            "label": "Uniform noise",
            "budgets": [0.1, 0.25, 0.5, 1.0],
            "params": {"steps": 20, "seed": 0},
        },
        {
            "name": "salt_pepper",
            "label": "Salt & pepper",
            "budgets": [0.01, 0.02, 0.05, 0.1],
            "params": {"steps": 20, "seed": 0},
        },
    ]


def quick_suite() -> list[dict[str, Any]]:
    """The default suite with few budgets and steps, for smoke tests and CI."""
    return [
        {"name": "fgsm", "label": "FGSM", "budgets": [0.01, 0.03, 0.12], "params": {}},
        {
            "name": "pgd",
            "label": "PGD-10 CE",
            "budgets": [0.01, 0.03, 0.12],
            "params": {
                "steps": 10,
                "step_size": None,
                "loss": "ce",
                "random_start": True,
                "seed": 0,
            },
        },
        {
            "name": "deepfool",
            "label": "DeepFool L2",
            "budgets": [0.5, 1.0, 2.0],
            "params": {"norm": "l2", "steps": 10},
        },
        {
            "name": "cw",
            "label": "CW L2",
            "budgets": [0.5, 1.0, 2.0],
            "params": {"steps": 10, "binary_search_steps": 2},
        },
        {
            "name": "uniform_noise",
            "label": "Uniform noise",
            "budgets": [0.25, 0.5, 1.0],
            "params": {"steps": 5, "seed": 0},
        },
        {
            "name": "salt_pepper",
            "label": "Salt & pepper",
            "budgets": [0.02, 0.05, 0.1],
            "params": {"steps": 5, "seed": 0},
        },
    ]


def attack_mode(spec: dict[str, Any]) -> str:
    """``"bounded"`` or ``"minimal"`` for a normalised spec (see the module docstring)."""
    if spec.get("mode"):
        return str(spec["mode"])
    name = spec["name"]
    if name == "cw" and spec.get("params", {}).get("norm", "l2") == "linf":
        return "bounded"
    return "minimal" if name in MINIMAL_ATTACKS else "bounded"


def budget_unit(spec: dict[str, Any]) -> str:
    """A human-readable name of the budget axis of ``spec``."""
    name = spec["name"]
    if name == "uniform_noise":
        return "noise amplitude (L-inf, normalised units)"
    if name == "salt_pepper":
        return "fraction of voxels replaced"
    from napari_cryoguard.attacks import get_attack_params

    default = getattr(get_attack_params(name), "norm", "linf")
    norm = spec.get("params", {}).get("norm", default)
    if name == "bpgd":
        return f"margin ({'L2' if norm == 'l2' else 'L-inf'}, normalised units)"
    return f"eps ({'L2' if norm == 'l2' else 'L-inf'}, normalised units)"


def normalize_suite(
    attacks: list[dict[str, Any]] | None, *, quick: bool = False
) -> list[dict[str, Any]]:
    """Validate specs, fill defaults (label, params, mode, budget sorting), unique labels.

    Raises
    ------
    CryoGuardError
        Unknown attack or parameter, missing or negative budgets, duplicate labels.
    """
    from napari_cryoguard.attacks import get_attack_class, make_attack

    raw = (
        quick_suite()
        if (attacks is None and quick)
        else default_suite()
        if attacks is None
        else attacks
    )
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for item in raw:
        if not isinstance(item, dict) or "name" not in item:
            raise CryoGuardError(f"an attack spec must be a dict with a 'name', got {item!r}")
        unknown = set(item) - {"name", "label", "budgets", "params", "variants", "mode"}
        if unknown:
            raise CryoGuardError(f"unknown attack spec key(s) {sorted(unknown)} in {item!r}")
        spec = copy.deepcopy(item)
        cls = get_attack_class(spec["name"])
        spec["name"] = cls.name
        spec["label"] = str(spec.get("label") or cls.name)
        spec["params"] = dict(spec.get("params") or {})
        spec["variants"] = [dict(v) for v in (spec.get("variants") or [{}])]
        budgets = spec.get("budgets")
        if not budgets:
            raise CryoGuardError(f"attack {spec['label']!r} needs a non-empty list of budgets")
        try:
            spec["budgets"] = sorted({float(b) for b in budgets})
        except (TypeError, ValueError):
            raise CryoGuardError(
                f"budgets of {spec['label']!r} must be numbers, got {budgets!r}"
            ) from None
        if spec["budgets"][0] < 0:
            raise CryoGuardError(f"budgets of {spec['label']!r} must be >= 0")
        mode = attack_mode(spec)
        if mode not in ("bounded", "minimal"):
            raise CryoGuardError(f"mode of {spec['label']!r} must be 'bounded' or 'minimal'")
        spec["mode"] = mode
        if spec["label"] in seen:
            raise CryoGuardError(f"two attacks are labelled {spec['label']!r}; give them labels")
        seen.add(spec["label"])
        # validate every variant's parameters now, before any work
        for v in spec["variants"]:
            make_attack(cls.name, **cell_params(spec, v, spec["budgets"][-1]))
        out.append(spec)
    return out


def cell_params(spec: dict[str, Any], variant: dict[str, Any], budget: float) -> dict[str, Any]:
    """The attack parameters of one run: ``params`` + ``variant`` + the budget."""
    p = {**spec["params"], **variant}
    name = spec["name"]
    if attack_mode(spec) == "bounded":
        p["eps"] = float(budget)
    elif name == "uniform_noise":
        p.setdefault("eps_max", float(budget))
    elif name == "salt_pepper":
        p.setdefault("max_fraction", min(float(budget), 1.0))
    elif name == "bpgd":
        p.setdefault("eps", float(budget))
    return p


def _value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_attack_option(text: str) -> dict[str, Any]:
    """Parse a command-line attack: ``NAME[@B1,B2,...][:KEY=VALUE,...]``.

    Examples: ``fgsm@0.01,0.03``; ``pgd@0.01,0.03:steps=100,loss=margin,label=PGD-margin``;
    ``deepfool@0.5,1:norm=l2``. Values are JSON where they parse (numbers, true, null),
    strings otherwise. ``label=`` sets the label; budgets default to the default suite's
    for that attack name.
    """
    head, _, tail = text.partition(":")
    name, _, budgets = head.partition("@")
    spec: dict[str, Any] = {"name": name.strip(), "params": {}}
    if budgets.strip():
        try:
            spec["budgets"] = [float(b) for b in budgets.split(",") if b.strip()]
        except ValueError:
            raise CryoGuardError(f"bad budgets in --attack {text!r}: use NAME@0.01,0.03") from None
    for item in (t for t in tail.split(",") if t.strip()):
        key, sep, raw = item.partition("=")
        if not sep:
            raise CryoGuardError(f"bad parameter {item!r} in --attack {text!r}: use KEY=VALUE")
        key = key.strip()
        if key == "label":
            spec["label"] = raw.strip()
        elif key == "mode":
            spec["mode"] = raw.strip()
        else:
            spec["params"][key] = _value(raw.strip())
    if "budgets" not in spec:
        for d in default_suite():
            if d["name"] == spec["name"]:
                spec["budgets"] = list(d["budgets"])
                break
        else:
            raise CryoGuardError(f"--attack {text!r} needs budgets: NAME@B1,B2,...")
    return spec
