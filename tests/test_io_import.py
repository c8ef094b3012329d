"""Opening files never imports torch: ``napari_cryoguard.io`` and the napari readers.

napari imports a plugin's reader module to ask it whether it takes a file; importing
torch there would add seconds and gigabytes to every file opened in napari, and make the
readers unusable where torch is not installed. Each check runs in a fresh interpreter
so that modules imported by other tests do not hide an import.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"


def _modules_after(code: str) -> dict:
    """Run ``code`` in a new interpreter; it must print one JSON object last."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=240, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_io_does_not_import_torch():
    res = _modules_after(
        "import json, sys\n"
        "import napari_cryoguard.io\n"
        "print(json.dumps({'torch': 'torch' in sys.modules,\n"
        "                  'cryoguard': 'napari_cryoguard' in sys.modules}))\n"
    )
    assert res == {"torch": False, "cryoguard": True}


def test_napari_readers_do_not_import_torch(tmp_path):
    import mrcfile

    mrc = tmp_path / "tomo.mrc"
    with mrcfile.new(str(mrc)) as f:
        f.set_data(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6))
        f.voxel_size = 7.0
    star = DATA / "relion" / "warp_tomogram_particle_files.star"
    code = (
        "import json, sys\n"
        "from napari_cryoguard._napari import _reader\n"
        "after_import = 'torch' in sys.modules\n"
        f"read = _reader.get_reader({str(mrc)!r})\n"
        f"layers = read({str(mrc)!r})\n"
        "data, kwargs, kind = layers[0]\n"
        f"picks_read = _reader.get_picks_reader({str(star)!r})\n"
        "print(json.dumps({'after_import': after_import, 'torch': 'torch' in sys.modules,\n"
        "                  'kind': kind, 'shape': list(data.shape),\n"
        "                  'scale': list(kwargs['scale']),\n"
        "                  'picks_reader': picks_read is not None}))\n"
    )
    res = _modules_after(code)
    assert res["after_import"] is False
    assert res["torch"] is False
    assert res["kind"] == "image" and res["shape"] == [4, 5, 6]
    assert res["scale"] == [7.0, 7.0, 7.0]
    assert res["picks_reader"] is True


def test_reading_every_format_does_not_import_torch():
    paths = {k: str(v) for k, v in {
        "star": DATA / "relion" / "warp_tomogram_particle_files.star",
        "tbl": DATA / "dynamo" / "t_double.tbl",
        "mod": DATA / "imod" / "points.mod",
        "cbox": DATA / "cryolo" / "boxmanager_3d_particle.cbox",
        "json": DATA / "copick" / "TS_6_4_ribosome.json",
        "zarr": DATA / "omezarr" / "TS_demo.zarr",
        "tif": DATA / "tiff" / "TS_demo.tif",
        "em": DATA / "em" / "TS_demo.em",
    }.items()}
    code = (
        "import json, sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "from napari_cryoguard.io import read_picks, read_tomogram\n"
        "n = {}\n"
        f"for kind, p in {paths!r}.items():\n"
        "    if kind in ('zarr', 'tif', 'em'):\n"
        "        n[kind] = list(read_tomogram(p).shape)\n"
        "    else:\n"
        "        n[kind] = len(read_picks(p, voxel_size=10.0))\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'n': n}))\n"
    )
    res = _modules_after(code)
    assert res["torch"] is False
    assert res["n"]["tbl"] == 300 and res["n"]["mod"] == 3 and res["n"]["cbox"] == 3
    assert res["n"]["zarr"] == [16, 24, 32] and res["n"]["em"] == [16, 24, 32]
