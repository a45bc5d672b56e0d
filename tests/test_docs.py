"""The documentation: every code block of the getting-started page runs as written."""

from __future__ import annotations

import importlib
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from saferl.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "getting-started.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)


def code_blocks(page: Path) -> list[tuple[str, str]]:
    """The fenced blocks of a Markdown page, as (language, code), in order."""
    return [(match[1], match[2]) for match in FENCE.finditer(page.read_text())]


def check_pip_install(argv: list[str]) -> None:
    """``pip install -e .`` or ``-e ".[extra,...]"`` with extras that pyproject.toml defines.

    Installing is what the CI job does (core on Python 3.13, extras on 3.11); here the command
    is checked, not run, so that the test needs no network.
    """
    assert argv[:3] == ["pip", "install", "-e"] and len(argv) == 4, argv
    match = re.fullmatch(r"\.(?:\[([\w,]+)\])?", argv[3])
    assert match, f"not an install of the checkout: {argv}"
    extras = PYPROJECT_EXTRAS
    for extra in (match[1] or "").split(","):
        assert not extra or extra in extras, f"no extra {extra!r} in pyproject.toml"


PYPROJECT_EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
    "optional-dependencies"]


def run_shell_block(code: str) -> int:
    """Run each ``saferl`` line through the CLI's ``main`` (in this process); check pip lines."""
    ran = 0
    for line in code.splitlines():
        argv = shlex.split(line, comments=True)
        if not argv:
            continue
        if argv[0] == "pip":
            check_pip_install(argv)
        elif argv[0] == "saferl":
            assert main(argv[1:]) == 0, line
            ran += 1
        else:
            pytest.fail(f"the getting-started page runs a command the test does not know: {line}")
    return ran


def test_the_page_has_blocks_of_both_kinds() -> None:
    languages = [language for language, _ in code_blocks(PAGE)]
    assert "bash" in languages and "python" in languages
    assert set(languages) <= {"bash", "python"}, languages


@pytest.mark.core
def test_every_getting_started_block_runs(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the page writes runs/first and runs/python
    namespace: dict = {"__name__": "__getting_started__"}
    commands = 0
    for language, code in code_blocks(PAGE):
        if language == "bash":
            commands += run_shell_block(code)
        else:
            exec(compile(code, str(PAGE), "exec"), namespace)  # our own page, run as written
    assert commands >= 4
    assert (tmp_path / "runs" / "first" / "curves.png").is_file()
    rows = (tmp_path / "runs" / "first" / "progress.csv").read_text().splitlines()
    assert len(rows) == 1 + 10  # header + 10 iterations of 800 steps after the resume
    assert (tmp_path / "runs" / "python" / "config.json").is_file()


def resolve(dotted: str) -> object:
    """Import the longest module prefix of ``dotted`` and walk the rest as attributes."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for name in parts[split:]:
            target = getattr(target, name)
        return target
    raise ModuleNotFoundError(dotted)


def test_every_api_reference_entry_exists() -> None:
    """Each ``::: dotted.path`` of docs/ names a module or object (a module moved or renamed
    must move in docs/reference/ too, or ``mkdocs build --strict`` fails in CI)."""
    entries = [(page.name, match[1]) for page in sorted((ROOT / "docs").rglob("*.md"))
               for match in re.finditer(r"^::: ([\w.]+)$", page.read_text(), re.M)]
    assert len(entries) > 30
    for page, dotted in entries:
        try:
            resolve(dotted)
        except (ImportError, AttributeError) as error:
            pytest.fail(f"docs/{page}: '::: {dotted}' does not exist ({error})")
