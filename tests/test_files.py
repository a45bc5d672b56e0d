"""Whole-or-nothing writes (saferl.files), and the sweep driver staying free of JAX."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from saferl import files


def test_write_json_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    files.write_json(path, {"state": "running"})
    files.write_json(path, {"state": "done", "where": tmp_path}, default=str)
    assert json.loads(path.read_text()) == {"state": "done", "where": str(tmp_path)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def test_a_value_json_cannot_hold_raises_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / "eval.json"
    files.write_json(path, {"episodes": 5})
    with pytest.raises(TypeError):
        files.write_json(path, {"episodes": object()})
    assert json.loads(path.read_text()) == {"episodes": 5}
    assert not (tmp_path / "eval.json.tmp").exists()


def test_a_write_cut_short_before_the_rename_keeps_the_previous_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sweep.json"
    files.write_json(path, {"counts": {"done": 1}})

    def killed(*_: object) -> None:
        raise KeyboardInterrupt  # as if the process stopped between the fsync and the rename

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        files.write_json(path, {"counts": {"done": 2}})
    assert json.loads(path.read_text()) == {"counts": {"done": 1}}


def test_the_sweep_driver_and_worker_modules_do_not_import_jax() -> None:
    # The driver starts workers with subprocess (never fork after JAX starts) and the worker
    # pins its CPUs before JAX starts its threads: neither module may pull JAX in on import.
    code = ("import sys, saferl.experiments.sweep, saferl.experiments.worker, saferl.files; "
            "print(sorted(m for m in sys.modules if m == 'jax' or m.startswith('jax.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_a_value_that_is_not_finite_is_written_as_null(tmp_path: Path) -> None:
    # versatile.json held a bare NaN (R-G with every threshold a behaviour one), which is not
    # JSON: strict parsers refused the file
    import numpy as np

    path = tmp_path / "versatile.json"
    files.write_json(path, {"R-G": {"mean": float("nan"), "std": np.float64("inf")},
                            "table": [1.5, (float("-inf"), 2)]})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=pytest.fail) == {
        "R-G": {"mean": None, "std": None}, "table": [1.5, [None, 2]]}
