"""Packaging: the core install, the extras, the one version, the wheel, missing-extra messages."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

import saferl
import saferl.envs
from saferl.cli import main
from saferl.envs import MissingBackendError, make

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
# The module that defines list_envs (and looks up bullet_installed there).
LISTING_MODULE = sys.modules[saferl.envs.list_envs.__module__]


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()
            for requirement in requirements}


@pytest.mark.core
def test_core_install_has_no_simulator_viewer_or_cluster_packages() -> None:
    core = requirement_names(PROJECT["dependencies"])
    assert not core & {"pybullet", "bullet-safety-gym", "ray", "tensorboard", "imageio",
                       "rliable"}, core
    assert "tensorboardx" in core  # the event writer is pure Python and stays in the core
    extras = PROJECT["optional-dependencies"]
    assert requirement_names(extras["bullet"]) == {"bullet-safety-gym", "pybullet"}
    assert requirement_names(extras["ray"]) == {"ray"}
    assert requirement_names(extras["tensorboard"]) == {"tensorboard"}
    assert {"imageio", "imageio-ffmpeg"} <= requirement_names(extras["video"])
    assert {"mkdocs-material", "mkdocstrings"} <= requirement_names(extras["docs"])
    assert requirement_names(extras["report"]) == {"rliable", "pandas"}
    assert extras["all"] == ["saferl[bullet,ray,report,tensorboard,video]"]


@pytest.mark.core
def test_supported_pythons_are_declared_and_the_version_has_one_home() -> None:
    assert PROJECT["requires-python"] == ">=3.11"
    for minor in (11, 12, 13):
        assert f"Programming Language :: Python :: 3.{minor}" in PROJECT["classifiers"]
    assert "version" not in PROJECT and PROJECT["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "saferl.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", saferl.__version__)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {saferl.__version__}" in changelog


def one_sentence(message: str) -> bool:
    return message.endswith(".") and ". " not in message[:-1] and "\n" not in message


@pytest.mark.core
@pytest.mark.parametrize("env_id", ["SafetyBallCircle-v0", "SafetyAntRun-v0"])
def test_a_bullet_id_without_the_extra_names_the_extra(env_id, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "bullet_safety_gym", None)  # as if not installed
    with pytest.raises(MissingBackendError) as caught:
        make(env_id)
    message = str(caught.value)
    assert message.startswith(f"{env_id!r} is a Bullet-Safety-Gym id")
    assert "pip install 'saferl[bullet]'" in message and one_sentence(message), message
    with pytest.raises(MissingBackendError, match=re.escape("saferl[bullet]")):
        make(env_id, num_envs=2, workers=2)  # refused before any worker process starts
    assert main(["train", "ppo_lag", "--env", env_id, "--steps", "1000", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'saferl[bullet]'" in err


@pytest.mark.core
def test_list_without_the_bullet_extra_says_which_ids_need_it(monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one table row per line
    monkeypatch.setattr(LISTING_MODULE, "bullet_installed", lambda: False)
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    bullet = [line for line in lines if "SafetyBallCircle-v0" in line]
    native = [line for line in lines if "saferl/BallCircle-v0" in line]
    assert len(bullet) == 1 and "not installed: pip install 'saferl[bullet]'" in bullet[0]
    assert len(native) == 1 and "not installed" not in native[0]


def test_list_with_the_bullet_extra_says_nothing_about_it(monkeypatch) -> None:
    monkeypatch.setattr(LISTING_MODULE, "bullet_installed", lambda: True)
    assert not any("not installed" in text for text in saferl.list_envs().values())


def wheel_path(tmp_path: Path) -> Path:
    """The wheel CI built (``SAFERL_WHEEL``), or one built here from the working tree."""
    if os.environ.get("SAFERL_WHEEL"):
        return Path(os.environ["SAFERL_WHEEL"])
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(out), str(ROOT)],
                   check=True, cwd=tmp_path)
    (wheel,) = out.glob("saferl-*.whl")
    return wheel


def test_the_wheel_installs_in_a_fresh_venv_and_runs_saferl_list(tmp_path) -> None:
    wheel = wheel_path(tmp_path)
    assert wheel.name == f"saferl-{saferl.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"saferl-{saferl.__version__}.dist-info/METADATA").decode()
    assert "saferl/envs/native/circle.py" in names
    assert "saferl/experiments/recipes/ccpo-main.paper.toml" in names  # sweep --recipe
    assert not [name for name in names if name.startswith(("tests/", "benchmarks/"))]
    assert "Requires-Python: >=3.11" in metadata
    assert "Provides-Extra: bullet" in metadata
    assert re.search(r"^Requires-Dist: pybullet.*; extra == \"bullet\"$", metadata, re.M)
    # A fresh venv that sees this environment's packages only as plain path entries (so no
    # editable saferl of the working tree), with the wheel installed offline and without deps.
    target = tmp_path / "venv"
    venv.create(target, with_pip=False)
    python = target / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    Path(site.stdout.strip(), "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, cwd=tmp_path)
    where = subprocess.run([str(python), "-c", "import saferl; print(saferl.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path)
    assert where.stdout.strip().startswith(str(target)), where.stdout
    listed = subprocess.run([str(target / "bin" / "saferl"), "list"], capture_output=True,
                            text=True, cwd=tmp_path, env={**os.environ, "COLUMNS": "200"})
    assert listed.returncode == 0, listed.stderr
    assert "saferl/BallCircle-v0" in listed.stdout and "ppo_lag" in listed.stdout
