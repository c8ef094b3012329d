"""Docking the widgets through the manifest does not import torch on the Qt thread.

torch and the model/defense/attack registries take 1-2 s to import; the widgets build
their choice lists and parameter forms once a background thread has imported them
(``_models.when_torch_ready``). Checked in a fresh process (this one has torch loaded),
with a real viewer docked as the *Plugins* menu does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = r"""
import json, sys
import napari
from napari_cryoguard._napari._probe import dock, pump, wait_until

names = ["Pick particles", "Classify", "Attack", "Train", "Evaluate"]
viewer = napari.Viewer(show=True)
pump(0.2)
widgets = {}
torch_after = {}
for name in names:
    widgets[name] = dock(viewer, name, tabify=True)
    torch_after[name] = "torch" in sys.modules
    pump(0.05)
attack, train = widgets["Attack"], widgets["Train"]
before = {"attacks": list(attack.attack.choices), "form": attack.form.params_cls is not None}
# the background import fills the lists and forms at idle
wait_until(lambda: train.model_form.params_cls is not None
           and attack.form.params_cls is not None, timeout=120)
print(json.dumps({
    "torch_after": torch_after, "before": before,
    "torch_loaded": "torch" in sys.modules,
    "attacks": list(attack.attack.choices),
    "attack_form": attack.form.params_cls.__name__,
    "models": list(train.model.choices),
    "model_form": train.model_form.params_cls.__name__,
    "defense_form": train.defense_form.params_cls.__name__,
    "model_choices": [str(c) for c in widgets["Classify"].picker.model.choices],
}))
viewer.close()
"""


def test_docking_imports_no_torch(tmp_path):
    env = dict(os.environ, CRYOGUARD_RUNS_DIR=str(tmp_path / "runs"))
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["torch_after"] == dict.fromkeys(out["torch_after"], False), out["torch_after"]
    assert len(out["torch_after"]) == 5
    # before the import: only the default attack, no form yet
    assert out["before"] == {"attacks": ["fgsm"], "form": False}
    # after it: the full lists and the forms of the defaults
    assert out["torch_loaded"]
    assert {"fgsm", "pgd", "deepfool"} <= set(out["attacks"]), out["attacks"]
    assert out["attack_form"] == "FGSMParams"
    assert {"cb3d", "autoencoder", "dsrf3d_v2", "rb3d"} <= set(out["models"])
    assert out["model_form"] == "CB3DParams"
    assert out["defense_form"] == "StandardParams"
    # the bundled weights are listed without torch (from the package's data folder)
    from napari_cryoguard.models import bundled_models

    assert set(bundled_models()) <= set(out["model_choices"])
