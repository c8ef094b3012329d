"""``python -m napari_cryoguard.evaluate.reproduce``: the ``cryoguard reproduce`` command.

Only a launcher: the code is in :mod:`napari_cryoguard.evaluate.reproduction`. Import
``reproduce`` / ``reproduce_main`` from ``napari_cryoguard.evaluate`` or from
``napari_cryoguard.evaluate.reproduction``, not from this module: importing this module
by name would replace the package's ``reproduce`` function with it.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    from napari_cryoguard.evaluate.reproduction import reproduce_main

    sys.exit(reproduce_main())
