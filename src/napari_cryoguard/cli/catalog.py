"""``cryoguard models``, ``attacks`` and ``templates``: what is registered and bundled
(architectures and weights, attacks with their parameters and defaults, macromolecule
templates), read from the registries themselves."""

from __future__ import annotations

import argparse
import dataclasses

from napari_cryoguard.cli._common import AddCommand, log
from napari_cryoguard.params import fields_of


def cmd_models(args: argparse.Namespace) -> dict:
    from napari_cryoguard.classify import load_model
    from napari_cryoguard.models import available_models, bundled_models, model_params_class

    archs = {}
    for name in available_models():
        cls = model_params_class(name)
        archs[name] = {f.name: repr(f.default) for f in dataclasses.fields(cls)}
    bundled = {}
    for name in bundled_models():
        lm = load_model(name)
        bundled[name] = {"arch": lm.metadata.get("arch"), "cube": lm.cube,
                         "class_names": lm.class_names, "metrics": lm.metadata.get("metrics", {})}
    log(args, "architectures: " + ", ".join(archs))
    log(args, "bundled weights: " + (", ".join(bundled) or "none"))
    return {"architectures": sorted(archs), "parameters": archs, "bundled": bundled}


def _first_line(obj) -> str:
    doc = (obj.__doc__ or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def cmd_attacks(args: argparse.Namespace) -> dict:
    from napari_cryoguard.attacks import available_attacks, get_attack_class

    defaults, helps, descriptions, facts = {}, {}, {}, {}
    for name in available_attacks():
        cls = get_attack_class(name)
        fields = fields_of(cls.params_cls)
        defaults[name] = {f.name: f.default for f in fields}
        helps[name] = {f.name: f.help for f in fields}
        descriptions[name] = _first_line(cls)
        facts[name] = {"norms": list(getattr(cls, "norms", ())),
                       "minimal": bool(getattr(cls, "minimal", False)),
                       "budget_field": getattr(cls, "budget_field", None)}
        log(args, f"{name}: {descriptions[name]}" if descriptions[name] else name)
        for f in fields:
            log(args, f"    {f.name} = {f.default!r}" + (f"  ({f.help})" if f.help else ""))
    log(args, "set them with `cryoguard attack --attack NAME --eps ... --set KEY=VALUE`")
    return {"attacks": sorted(defaults), "parameters": defaults, "help": helps,
            "descriptions": descriptions, "facts": facts}


def cmd_templates(args: argparse.Namespace) -> dict:
    from napari_cryoguard.simulate import DEFAULT_CLASSES, list_templates

    names = list_templates()
    log(args, "bundled templates (10 A): " + ", ".join(names))
    log(args, "default classes: " + ", ".join(DEFAULT_CLASSES))
    return {"templates": names, "default_classes": list(DEFAULT_CLASSES)}


def add_commands(add: AddCommand) -> None:
    add("models", "list the registered architectures (with their parameters) and the bundled "
        "weights", cmd_models)
    add("attacks", "list the registered attacks with their parameters and defaults (what "
        "`cryoguard attack --attack NAME --set KEY=VALUE` takes)", cmd_attacks)
    add("templates", "list the bundled macromolecule templates and the default classes",
        cmd_templates)
