"""Writing files whole or not at all; imports nothing heavier than the standard library.

Every JSON record saferl leaves on disk (a run's ``config.json`` and checkpoint metadata, a
sweep's ``sweep.json`` and each run's ``status.json``, ``eval.json``) is written through here,
so a process killed at any moment leaves either the previous file or the new one, never half of
one. The sweep driver uses it without importing JAX.
"""

from __future__ import annotations

import json
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
    raises ``TypeError`` before anything is written.
    """
    atomic_write(path, json.dumps(payload, indent=2, default=default).encode())
