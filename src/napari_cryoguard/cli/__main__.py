"""``python -m napari_cryoguard.cli`` (and ``torchrun -m napari_cryoguard.cli``)."""

import sys

from napari_cryoguard.cli import main

sys.exit(main())
