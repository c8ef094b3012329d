"""napari-cryoguard: can this subtomogram classifier be trusted?

A Qt-free core (``io``, ``simulate``, ``picking``, ``data``, ``models``, ``attacks``,
``defenses``, ``evaluate``) with a ``cryoguard`` command line and napari widgets on top.
"""

from __future__ import annotations

from napari_cryoguard.errors import CryoGuardError

__version__ = "0.1.0"
__all__ = ["CryoGuardError", "__version__"]
