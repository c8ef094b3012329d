"""Attack suites for :func:`napari_cryoguard.evaluate.evaluate`: specs, presets, parsing.

An attack spec is a plain dict::

    {"name": "pgd",                 # registry name (napari_cryoguard.attacks)
     "label": "PGD-100 CE",         # shown in tables and plots (default: name)
     "budgets": [0.01, 0.03],       # the x-axis of the accuracy curve
     "params": {"steps": 100, ...}, # fixed attack parameters
     "variants": [{"loss": "ce"}, {"loss": "margin"}],  # optional: worst case over these
     "mode": "bounded" | "minimal"} # optional, see below

What an attack is, the suite reads from its class (:class:`~napari_cryoguard.attacks.
base.Attack`), never from its name, so a newly registered attack takes part unchanged:

* ``bounded`` attacks (``minimal = False``: fgsm, pgd, bim, cw_linf, apgd, square, and
  cw with norm linf, ``Attack.is_minimal``) run once per budget with the budget as
  their ``Attack.budget_field`` (``eps``).
* ``minimal`` attacks (``minimal = True``: deepfool, cw L2, uniform_noise, salt_pepper,
  bpgd) look for the smallest perturbation that fools the model; they run once (their
  ``Attack.search_limit`` set to the largest budget) and a sample counts as fooled at
  budget ``b`` when the attack succeeded with a distance ``<= b`` (foolbox's
  convention for minimisation attacks). The distance (``Attack.distance``) is the
  perturbation norm in the attack's norm, the noise level that worked
  (``distance_key = "level"`` of the noise attacks) or the margin (``bpgd``).
* The budget axis is named by ``Attack.budget_label`` (``budget_name``, the norm and
  the unit).
* ``variants``: every variant runs (with ``params`` updated by it) and a sample counts
  as robust only if it survives all of them, e.g. IMA's 100-PGD "run twice, with the
  margin loss and the cross-entropy loss"
  (Ma & Liang, IMA (arXiv:2005.09147), Experiments).
* ``worst_case``: a combination of different bounded attacks (all in one norm), run at
  each budget as one curve::

      {"name": "worst_case", "label": "AutoAttack", "budgets": [0.01, 0.03],
       "members": [{"name": "apgd-ce", "label": "APGD-CE", "params": {...}}, ...],
       "keep": "first"}

  Per sample, misclassified under any member means not robust. ``keep="first"`` (the
  default, AutoAttack's protocol) runs the members in order, each only on the samples
  still robust, and keeps the first successful attack; ``keep="smallest"`` runs every
  member on every correctly classified sample and keeps, among the successful ones,
  the smallest perturbation in the members' norm (ties: the earlier member). Samples
  misclassified on the clean volume are not attacked (they are not robust anyway).
  Each point lists, per member, the samples it fooled and the robust accuracy left
  after it (``"members"``), and per sample the index of the member kept
  (``"attack_by_sample"``, -1: none).

Named suites (:func:`named_suite`): ``"default"`` (the papers' attacks),
``"autoattack"`` (:func:`autoattack_suite`: the worst case over APGD-CE, APGD-T and
Square, as in Croce & Hein, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML 2020, arXiv:2003.01690); each with a
quick version.

Budgets are in normalised units (z-scored subtomograms, DESIGN.md conventions).
"""

from __future__ import annotations

import copy
import typing
from typing import Any, get_args

from napari_cryoguard.checks import check_choice
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.params import Norm, Suite, parse_value

__all__ = [
    "SUITES",
    "WORST_CASE",
    "attack_mode",
    "autoattack_suite",
    "budget_unit",
    "default_suite",
    "member_params",
    "minimal_distance",
    "named_suite",
    "normalize_suite",
    "parse_attack_option",
    "quick_suite",
]

#: FGSM budgets of Wu et al., RAT (IEEE BIBM 2019) Table II.
RAT_FGSM_EPS = (0.01, 0.03, 0.06, 0.12)

#: The name of the combination spec (see the module docstring).
WORST_CASE = "worst_case"

#: The named suites of :func:`named_suite` (``cryoguard evaluate --suite``).
SUITES: tuple[str, ...] = typing.get_args(Suite)


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


def autoattack_suite(
    budgets: list[float] | None = None,
    *,
    quick: bool = False,
    norm: Norm = "linf",
    eps_unit: str = "normalized",
) -> list[dict[str, Any]]:
    """AutoAttack: the per-sample worst case over APGD-CE, APGD-T and Square.

    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks", ICML 2020, arXiv:2003.01690 (its standard
    version): APGD-CE (100 iterations, 1 run), APGD-T (targeted DLR, 100
    iterations, 9 target classes), Square (5000 queries, ``p_init = 0.8``), each on the
    samples the earlier ones left robust (``keep="first"``). Departure: AutoAttack's
    standard version also runs FAB-T, which is not implemented here (so this is the
    worst case over three of its four attacks).

    Parameters
    ----------
    budgets
        eps values; default the L-inf budgets of the default suite (0.01, 0.03, 0.06,
        0.12; quick: 0.01, 0.03, 0.12), in normalised units.
    quick
        10 APGD iterations, 3 target classes, 100 Square queries (smoke tests).
    norm
        ``"linf"`` or ``"l2"`` (L2 budgets must then be given).
    eps_unit
        ``"normalized"`` (default) or ``"range"``: the budgets as fractions of each
        sample's intensity range (:mod:`napari_cryoguard.attacks.units`), given to every
        member.
    """
    from napari_cryoguard.attacks.units import EPS_UNITS

    check_choice("norm", norm, get_args(Norm))
    check_choice("eps_unit", eps_unit, EPS_UNITS)
    if budgets is None:
        if norm == "l2":
            raise CryoGuardError("an L2 autoattack suite needs its budgets (L2 norms)")
        budgets = [0.01, 0.03, 0.12] if quick else list(RAT_FGSM_EPS)
    steps, targets, queries = (10, 3, 100) if quick else (100, 9, 5000)
    members: list[dict[str, Any]] = [
        {
            "name": "apgd-ce",
            "label": "APGD-CE",
            "params": {"norm": norm, "steps": steps, "restarts": 1, "seed": 0},
        },
        {
            "name": "apgd-t",
            "label": "APGD-T",
            "params": {"norm": norm, "steps": steps, "n_target_classes": targets, "seed": 0},
        },
    ]
    members.append(
        {
            "name": "square",
            "label": "Square",
            "params": {"norm": norm, "n_queries": queries, "p_init": 0.8, "seed": 0},
        }
    )
    if eps_unit == "range":
        for m in members:
            m["params"]["eps_unit"] = "range"
    label = "AutoAttack" + (" (quick)" if quick else "") + (" L2" if norm == "l2" else "")
    return [
        {
            "name": WORST_CASE,
            "label": label,
            "budgets": [float(b) for b in budgets],
            "members": members,
            "keep": "first",
        }
    ]


def named_suite(name: str, *, quick: bool = False) -> list[dict[str, Any]]:
    """A suite by name: ``"default"`` (the papers' attacks) or ``"autoattack"``."""
    key = str(name).strip().lower().replace("_", "-")
    if key == "default":
        return quick_suite() if quick else default_suite()
    if key in ("autoattack", "auto-attack"):
        return autoattack_suite(quick=quick)
    raise CryoGuardError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")


def _attack(name: str):
    """The attack class of a spec's name (its facts: mode, budget, norm, distance)."""
    from napari_cryoguard.attacks import get_attack_class

    return get_attack_class(name)


def member_params(member: dict[str, Any], budget: float) -> dict[str, Any]:
    """The parameters of one member of a worst-case spec at ``budget`` (a bounded
    attack: the budget in its ``budget_field``)."""
    return _attack(member["name"]).cell_params(member["params"], budget, minimal=False)


def _member_norm(member: dict[str, Any]) -> str:
    return _attack(member["name"]).norm_of(member["params"])


def _normalize_worst_case(spec: dict[str, Any]) -> None:
    """Validate and fill the members of a worst-case spec in place."""
    label = spec["label"]
    keep = spec.setdefault("keep", "first")
    if keep not in ("first", "smallest"):
        raise CryoGuardError(f"keep of {label!r} must be 'first' or 'smallest', got {keep!r}")
    members = spec.get("members")
    if not isinstance(members, list) or not members:
        raise CryoGuardError(f"the worst-case spec {label!r} needs a non-empty list of members")
    if spec.get("params") or spec["variants"] != [{}]:
        raise CryoGuardError(
            f"the worst-case spec {label!r} takes its parameters per member, not params/variants"
        )
    out, seen = [], set()
    for m in members:
        if not isinstance(m, dict) or "name" not in m:
            raise CryoGuardError(f"a member of {label!r} must be a dict with a 'name', got {m!r}")
        unknown = set(m) - {"name", "label", "params"}
        if unknown:
            raise CryoGuardError(f"unknown member key(s) {sorted(unknown)} in {m!r}")
        cls = _attack(m["name"])
        mm = {
            "name": cls.name,
            "label": str(m.get("label") or cls.name),
            "params": dict(m.get("params") or {}),
        }
        if cls.is_minimal(mm["params"]) or cls.budget_field is None:
            raise CryoGuardError(
                f"member {mm['label']!r} of {label!r} is a minimal attack; a worst case "
                "combines bounded attacks (they take the budget as eps)"
            )
        if mm["label"] in seen:
            raise CryoGuardError(f"two members of {label!r} are labelled {mm['label']!r}")
        seen.add(mm["label"])
        out.append(mm)
    norms = {_member_norm(m) for m in out}
    if len(norms) > 1:
        raise CryoGuardError(
            f"the members of {label!r} mix norms {sorted(norms)}; a worst case needs one norm"
        )
    units = {str(m["params"].get("eps_unit", "normalized")) for m in out}
    if len(units) > 1:
        raise CryoGuardError(
            f"the members of {label!r} mix budget units {sorted(units)}; give them one eps_unit"
        )
    spec["members"] = out


def attack_mode(spec: dict[str, Any]) -> str:
    """``"bounded"`` or ``"minimal"`` for a normalised spec (see the module docstring):
    the spec's own ``mode``, else what its attack class says."""
    if spec.get("mode"):
        return str(spec["mode"])
    if spec["name"] == WORST_CASE:
        return "bounded"
    return "minimal" if _attack(spec["name"]).is_minimal(spec.get("params", {})) else "bounded"


def budget_unit(spec: dict[str, Any]) -> str:
    """A human-readable name of the budget axis of ``spec`` (``Attack.budget_label``)."""
    if spec["name"] == WORST_CASE:
        first = spec["members"][0]
        return _attack(first["name"]).budget_label(first["params"])
    return _attack(spec["name"]).budget_label(spec.get("params", {}))


def minimal_distance(spec: dict[str, Any], res: Any) -> Any:
    """Per sample, the distance (a float64 numpy array) a minimal attack's result
    reached: what is compared with each budget (``Attack.distance``)."""
    return _attack(spec["name"]).distance(res).double().cpu().numpy()


def normalize_suite(
    attacks: list[dict[str, Any]] | str | None, *, quick: bool = False
) -> list[dict[str, Any]]:
    """Validate specs, fill defaults (label, params, mode, budget sorting), unique labels.

    ``attacks`` may also be a suite name (:func:`named_suite`, with ``quick``).

    Raises
    ------
    CryoGuardError
        Unknown attack or parameter, missing or negative budgets, duplicate labels.
    """
    from napari_cryoguard.attacks import make_attack

    if isinstance(attacks, str):
        attacks = named_suite(attacks, quick=quick)
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
        keys = {"name", "label", "budgets", "params", "variants", "mode"}
        wc = str(item["name"]).strip().lower().replace("-", "_") == WORST_CASE
        unknown = set(item) - (keys | {"members", "keep"} if wc else keys)
        if unknown:
            raise CryoGuardError(f"unknown attack spec key(s) {sorted(unknown)} in {item!r}")
        spec = copy.deepcopy(item)
        if wc:
            spec["name"] = WORST_CASE
            spec["label"] = str(spec.get("label") or "worst case")
        else:
            cls = _attack(spec["name"])
            spec["name"] = cls.name
            spec["label"] = str(spec.get("label") or cls.name)
        spec["params"] = dict(spec.get("params") or {})
        spec["variants"] = [dict(v) for v in (spec.get("variants") or [{}])]
        if wc:
            _normalize_worst_case(spec)
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
        if wc and mode != "bounded":
            raise CryoGuardError(f"a worst-case spec is bounded; {spec['label']!r} says {mode!r}")
        if mode not in ("bounded", "minimal"):
            raise CryoGuardError(f"mode of {spec['label']!r} must be 'bounded' or 'minimal'")
        if mode == "bounded" and not wc and _attack(spec["name"]).budget_field is None:
            raise CryoGuardError(
                f"{spec['label']!r}: the attack {spec['name']!r} takes no budget; run it "
                "as a minimal attack"
            )
        spec["mode"] = mode
        if spec["label"] in seen:
            raise CryoGuardError(f"two attacks are labelled {spec['label']!r}; give them labels")
        seen.add(spec["label"])
        # validate every variant's (member's) parameters now, before any work
        if wc:
            for m in spec["members"]:
                make_attack(m["name"], **member_params(m, spec["budgets"][-1]))
        else:
            for v in spec["variants"]:
                make_attack(spec["name"], **cell_params(spec, v, spec["budgets"][-1]))
        out.append(spec)
    return out


def cell_params(spec: dict[str, Any], variant: dict[str, Any], budget: float) -> dict[str, Any]:
    """The attack parameters of one run: ``params`` + ``variant`` + the budget
    (``Attack.cell_params``: a bounded run takes the budget, a minimal one its cap)."""
    p = {**spec["params"], **variant}
    return _attack(spec["name"]).cell_params(p, budget, minimal=attack_mode(spec) == "minimal")


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
            spec["params"][key] = parse_value(raw)
    if "budgets" not in spec:
        for d in default_suite():
            if d["name"] == spec["name"]:
                spec["budgets"] = list(d["budgets"])
                break
        else:
            raise CryoGuardError(f"--attack {text!r} needs budgets: NAME@B1,B2,...")
    return spec
