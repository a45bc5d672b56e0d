"""Writing files whole or not at all; imports nothing heavier than the standard library.

Every JSON record saferl leaves on disk (a run's ``config.json`` and checkpoint metadata, a
sweep's ``sweep.json`` and each run's ``status.json``, ``eval.json``) is written through here,
so a process killed at any moment leaves either the previous file or the new one, never half of
one. The sweep driver uses it without importing JAX.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (a temporary file beside it, fsync,
    rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_json(path: Path, payload: Any, default: Callable[[Any], Any] | None = None) -> None:
    """Write ``payload`` as indented JSON to ``path`` atomically (see :func:`atomic_write`).

    ``default`` converts values JSON cannot hold (``str`` for paths); without it such a value
    raises ``TypeError`` before anything is written. A float that is not finite (an R-G with no
    threshold outside the behaviour set) is written as ``null``: ``NaN`` is not JSON, and
    strict parsers refuse the file.
    """
    text = json.dumps(_finite(payload), indent=2, default=default, allow_nan=False)
    atomic_write(path, text.encode())


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (at any depth of dicts, lists and tuples) as
    ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
