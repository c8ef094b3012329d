"""What every part of the reproduction shares: the :class:`Context` (sizes, folders,
the cached simulated data, training and evaluating with resume) and the helpers that
turn numbers into table cells and claims judged from 95 % intervals."""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_cryoguard._atomic import atomic_output
from napari_cryoguard.evaluate.inputs import sha
from napari_cryoguard.evaluate.metrics import accuracy_interval, interval_verdict, wilson_interval
from napari_cryoguard.evaluate.report import fmt, write_json
from napari_cryoguard.evaluate.run import evaluate


class Context:
    """What every part needs: sizes, folders, device, seed, progress, caches."""

    def __init__(
        self,
        out: Path,
        sizes: dict[str, Any],
        device: str,
        seed: int,
        progress: Callable[[dict], None] | None,
        quick: bool,
    ) -> None:
        self.out, self.sizes, self.device, self.seed = out, sizes, device, seed
        self.progress, self.quick = progress, quick
        self._sims: dict[Any, Any] = {}
        #: per part: {model name: check_collapse result (dict)}
        self.collapse: dict[str, dict[str, dict[str, Any]]] = {}

    def say(self, part: str, msg: str) -> None:
        """Report progress of ``part``."""
        if self.progress is not None:
            self.progress({"part": part, "message": msg})

    def sim(self, snr: float, tilt: float, split: str, n_train: int | None = None) -> Any:
        """The (cached) simulated train or test set at one imaging condition."""
        from napari_cryoguard.simulate import simulate_subtomograms

        s = self.sizes
        if split == "train":
            n = int(n_train if n_train is not None else s["n_train_per_class"])
        else:
            n = int(s["n_test_per_class"])
        key = (float(snr), float(tilt), split, n)
        if key not in self._sims:
            seed = (
                self.seed * 7919
                + (0 if split == "train" else 1000)
                + int(round(snr * 1e4))
                + int(tilt)
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "particles will be cut"
                self._sims[key] = simulate_subtomograms(
                    n_per_class=n,
                    cube=s["cube"],
                    voxel_size=s["voxel_size"],
                    snr=snr,
                    tilt_range=tilt,
                    seed=seed,
                )
        return self._sims[key]

    def train(
        self,
        part: str,
        name: str,
        data: Any,
        arch: str,
        defense: str,
        defense_params: dict[str, Any] | None = None,
        model_params: dict[str, Any] | None = None,
        init: Path | None = None,
        epochs: int | None = None,
    ) -> Path:
        """Train (or reuse) one checkpoint under ``<out>/checkpoints/<part>/``.

        ``init``: start from the weights of this checkpoint (same architecture) instead of
        a random initialisation.
        """
        from napari_cryoguard.defenses import train

        s = self.sizes
        mp, dp, epochs, lr = self._training(arch, defense_params, model_params, init, epochs)
        ckpt = self.out / "checkpoints" / part / f"{name}.safetensors"
        marker = ckpt.with_suffix(".done.json")
        key = self.checkpoint_key(data, arch, defense, defense_params, model_params, init, epochs)
        if ckpt.is_file() and marker.is_file():
            try:
                if json.loads(marker.read_text()).get("key") == key:
                    return ckpt
            except (OSError, json.JSONDecodeError):
                pass
        same = self._find_trained(key)
        if same is not None:  # the same training in another part: reuse it
            with atomic_output(ckpt) as tmp:
                shutil.copyfile(same, tmp)
            write_json(
                marker,
                {
                    **json.loads(same.with_suffix(".done.json").read_text()),
                    "copied_from": str(same.relative_to(self.out)),
                },
            )
            return ckpt
        self.say(part, f"training {name} ({arch}, {defense})")
        t0 = time.perf_counter()
        model: Any = arch
        if init is not None:
            from napari_cryoguard.models import build_model

            start = load_checkpoint(Path(init)).model
            model = build_model(arch, start.num_classes, start.cube, **mp)
            model.load_state_dict(start.state_dict())  # e.g. a drop-max variant of it
        res = train(
            data,
            model=model,
            defense=defense,
            model_params=None if init else mp,
            defense_params=dp,
            out=ckpt,
            epochs=epochs,
            lr=lr,
            batch_size=s["batch_size"],
            device=self.device,
            val_fraction=0.0,
            seed=self.seed,
        )
        write_json(
            marker,
            {
                "key": key,
                "seconds": round(time.perf_counter() - t0, 2),
                "train_acc": res.metrics.get("train_acc"),
            },
        )
        return ckpt

    def _training(self, arch: str, defense_params: dict[str, Any] | None,
                  model_params: dict[str, Any] | None, init: Path | None,
                  epochs: int | None) -> tuple[dict[str, Any], dict[str, Any], int, float]:
        """Model parameters, defense parameters, epochs and learning rate of one training."""
        s = self.sizes
        mp = {**s["widths"][arch], **(model_params or {})}
        dp = dict(defense_params or {})
        # defended models start from the natural one and may train for fewer epochs
        if epochs is None:
            epochs = int(s.get("robust_epochs", s["epochs"])) if init is not None else s["epochs"]
        lr = float(s.get("lr_by_arch", {}).get(arch, s["lr"]))
        return mp, dp, epochs, lr

    def checkpoint_key(self, data: Any, arch: str, defense: str,
                       defense_params: dict[str, Any] | None = None,
                       model_params: dict[str, Any] | None = None, init: Path | None = None,
                       epochs: int | None = None) -> str:
        """The key in a checkpoint's ``.done.json`` marker: a hash of everything the
        training depends on (a stored checkpoint with the same key is reused)."""
        mp, dp, epochs, lr = self._training(arch, defense_params, model_params, init, epochs)
        init_key = None
        if init is not None:
            init_key = json.loads(Path(init).with_suffix(".done.json").read_text())["key"]
        return sha(
            arch,
            mp,
            defense,
            dp,
            epochs,
            lr,
            self.sizes["batch_size"],
            self.seed,
            sha(np.asarray(data.volumes)),
            np.asarray(data.labels),
            self.device,
            init_key,
        )

    def _find_trained(self, key: str) -> Path | None:
        for marker in sorted((self.out / "checkpoints").glob("*/*.done.json")):
            try:
                if json.loads(marker.read_text()).get("key") != key:
                    continue
            except (OSError, json.JSONDecodeError):
                continue
            ckpt = marker.with_name(marker.name[: -len(".done.json")] + ".safetensors")
            if ckpt.is_file():
                return ckpt
        return None

    def evaluate(
        self,
        part: str,
        ckpts: dict[str, Path],
        data: Any,
        attacks: list[dict],
        *,
        max_samples: int | None = None,
        margins: bool = False,
        margin_params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The attack evaluation of ``ckpts`` on ``data`` under ``<out>/eval/<part>/``
        (resumed cell by cell)."""
        self.say(part, f"evaluating {', '.join(ckpts)}")
        return evaluate(
            list(ckpts.values()),
            data,
            attacks=attacks,
            out=self.out / "eval" / part,
            device=self.device,
            max_samples=max_samples,
            names=list(ckpts),
            margins=margins,
            margin_samples=self.sizes["margin_samples"],
            margin_params=margin_params,
            seed=self.seed,
            title=f"Reproduction part ({part}): attack evaluation",
        )


def load_checkpoint(ckpt: Path):
    """The checkpoint ``ckpt`` loaded on the CPU."""
    from napari_cryoguard.classify import load_model

    return load_model(ckpt, device="cpu")


def predict_volumes(loaded: Any, volumes: np.ndarray, batch: int = 64) -> np.ndarray:
    """Predicted classes of ``volumes`` (eval mode, in batches)."""
    preds = []
    model = loaded.model.eval()
    with torch.no_grad():
        for s in range(0, len(volumes), batch):
            x = torch.from_numpy(np.ascontiguousarray(volumes[s : s + batch], dtype=np.float32))
            preds.append(model(x.unsqueeze(1)).argmax(1).numpy())
    return np.concatenate(preds)


def accuracy_of(ckpt: Path, data: Any) -> float:
    """Test accuracy of the checkpoint ``ckpt`` on ``data``."""
    pred = predict_volumes(load_checkpoint(ckpt), data.volumes)
    return float((pred == np.asarray(data.labels)).mean())


def interval(value: float | None, n: int) -> dict[str, Any]:
    """An accuracy (or a proportion-like score) on ``n`` samples with its Wilson interval."""
    return accuracy_interval(value, n)


def pooled(values: Sequence[float | None], n: int) -> dict[str, Any]:
    """Mean of accuracies, each on ``n`` samples, with the Wilson interval of the pooled
    proportion (the samples of all cells together)."""
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not vals or n <= 0:
        return {"value": None, "n": 0, "lo": None, "hi": None}
    total = n * len(vals)
    lo, hi = wilson_interval(float(np.mean(vals)) * total, total)
    return {"value": float(np.mean(vals)), "n": total, "lo": lo, "hi": hi}


def cell_text(ci: dict[str, Any], collapsed: bool = False) -> str:
    """A table cell: value and its 95 % interval; ``*`` marks a collapsed model."""
    if ci.get("value") is None:
        return "—"
    text = f"{fmt(ci['value'])} ({fmt(ci['lo'])}-{fmt(ci['hi'])})"
    return text + (" *" if collapsed else "")


def make_claim(
    claim: str,
    source: str,
    paper: str,
    ours: dict[str, float | None],
    lhs: str,
    rhs: str,
    *,
    ci: dict[str, dict[str, Any]] | None = None,
    collapsed: Sequence[str] = (),
    higher_is_better: bool = True,
) -> dict[str, Any]:
    """A claimed direction "``lhs`` beats ``rhs``", judged from our numbers' intervals.

    ``verdict`` (:func:`..metrics.interval_verdict`): ``"agrees"`` when lhs's 95 %
    interval lies wholly above rhs's (below, for a lower-is-better number),
    ``"disagrees"`` when wholly on the other side, ``"within noise"`` when they overlap,
    ``"not compared"`` when a number or interval is missing or a model named in
    ``collapsed`` did not learn (:func:`..sanity.check_collapse`). ``direction`` is the
    bare comparison of the two values (for information; the verdict uses the intervals).
    """
    a, b = ours.get(lhs), ours.get(rhs)
    ci = ci or {}
    missing = a is None or b is None or not (np.isfinite(a) and np.isfinite(b))
    bad = [k for k in (lhs, rhs) if k in set(collapsed)]
    if bad:
        verdict, reason = "not compared", f"collapsed model: {', '.join(bad)}"
    elif missing:
        verdict, reason = "not compared", "missing number"
    else:
        verdict = interval_verdict(ci.get(lhs), ci.get(rhs), higher_is_better=higher_is_better)
        reason = "no interval" if verdict == "not compared" else ""
    direction = None if missing else bool(a > b if higher_is_better else a < b)

    def side(k: str, v: float | None) -> str:
        c = ci.get(k) or {}
        if c.get("lo") is None or v is None:
            return f"{k} {fmt(v, 4)}"
        return f"{k} {fmt(v, 4)} [{fmt(c['lo'])}, {fmt(c['hi'])}]"

    return {
        "claim": claim,
        "source": source,
        "paper": paper,
        "ours": {k: (None if v is None else float(v)) for k, v in ours.items()},
        "ours_ci": {
            k: [ci[k].get("lo"), ci[k].get("hi")] for k in (lhs, rhs) if ci.get(k) is not None
        },
        "lhs": lhs,
        "rhs": rhs,
        "higher_is_better": bool(higher_is_better),
        "ours_text": f"{side(lhs, a)} vs {side(rhs, b)}",
        "verdict": verdict,
        "reason": reason,
        "agrees": {"agrees": True, "disagrees": False}.get(verdict),
        "direction": direction,
    }


def record_collapse(ctx: Context, part: str, name: str, ckpt: Path, volumes: Any, labels: Any) -> dict:
    """:func:`..sanity.check_collapse` of one trained model on test data (cached per part)."""
    from napari_cryoguard.evaluate.sanity import check_collapse

    loaded = load_checkpoint(ckpt)
    c = check_collapse(loaded.model, volumes, labels, int(loaded.model.num_classes)).to_dict()
    ctx.collapse.setdefault(part, {})[name] = c
    return c


def collapsed_names(ctx: Context, part: str) -> list[str]:
    """The models of ``part`` whose collapse check failed."""
    return [n for n, c in ctx.collapse.get(part, {}).items() if c["status"] == "fail"]


def point_value(
    ev: dict, model: str, attack: str, budget: float, key: str = "robust_accuracy"
) -> float | None:
    """One number (``key``) of an evaluation's curve ``attack`` of ``model`` at ``budget``."""
    curve = ev["models"][model]["attacks"].get(attack)
    if not curve:
        return None
    for p in curve["points"]:
        if abs(p["budget"] - budget) <= 1e-9 * max(1.0, budget):
            return p[key]
    return None


def point_count(ev: dict, model: str, attack: str, budget: float) -> int:
    """Samples behind :func:`point_value` (0 when there is no such point)."""
    n = point_value(ev, model, attack, budget, "n")
    return int(n) if n is not None else 0
