"""A checkpoint's metadata read from its ``.safetensors`` header alone: no weights, and
no torch import (the widgets call it on the Qt thread, before torch may be loaded).

The format (huggingface/safetensors): 8 bytes little-endian header length N, then N
bytes of JSON whose ``__metadata__`` maps strings to strings; napari-cryoguard's
checkpoints keep their description as JSON text under the key ``cryoguard``.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from napari_cryoguard.errors import CryoGuardError

#: the ``__metadata__`` key holding a checkpoint's description (``models.checkpoint``)
METADATA_KEY = "cryoguard"
#: a larger header is not a checkpoint of ours (theirs are a few kB)
MAX_HEADER = 100_000_000


def read_checkpoint_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The description (architecture, cube, classes...) of the checkpoint at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise CryoGuardError(f"checkpoint not found: {path}")
    bad = f"{path} is not a readable .safetensors checkpoint (corrupt or another format)"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CryoGuardError(f"{bad}: {len(head)} bytes")
            (n,) = struct.unpack("<Q", head)
            if not 2 <= n <= MAX_HEADER:
                raise CryoGuardError(f"{bad}: a header of {n} bytes")
            header = json.loads(f.read(n).decode("utf-8"))
    except OSError as exc:
        raise CryoGuardError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CryoGuardError(f"{bad}: its header is not JSON") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or METADATA_KEY not in meta:
        raise CryoGuardError(f"{path} is a safetensors file but has no '{METADATA_KEY}' "
                             "metadata; it was not written by napari-cryoguard")
    try:
        out = json.loads(meta[METADATA_KEY])
    except (TypeError, json.JSONDecodeError) as exc:
        raise CryoGuardError(f"{path}: the '{METADATA_KEY}' metadata is not valid JSON") from exc
    if not isinstance(out, dict):
        raise CryoGuardError(f"{path}: checkpoint metadata must be a JSON object, "
                             f"got {type(out).__name__}")
    return out
