"""The documentation: every code block of the getting-started page runs as written, and every
sweep spec shown in the docs expands into runs."""

from __future__ import annotations

import importlib
import re
import shlex
import textwrap
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


def shown_specs() -> list[tuple[str, str]]:
    """Every sweep spec the docs show: the TOML blocks of docs/experiments.md and the example
    in :mod:`saferl.experiments.spec`'s docstring, as (where, text)."""
    import saferl.experiments.spec as spec_module

    page = ROOT / "docs" / "experiments.md"
    specs = [(f"{page.name} block {i}", code) for i, (language, code)
             in enumerate(code_blocks(page)) if language == "toml"]
    example = re.search(r"::\n\n(.*?)\n\n(?=\S)", spec_module.__doc__ or "", re.S)
    assert example, "the spec module's docstring lost its example"
    specs.append(("saferl.experiments.spec docstring", textwrap.dedent(example[1])))
    return specs


@pytest.mark.parametrize("where,text", shown_specs(), ids=[where for where, _ in shown_specs()])
def test_every_spec_the_docs_show_expands(where, text, tmp_path) -> None:
    # A spec example that names a field one of its algorithms lacks (``lagrange.lr`` with
    # ``cpo``) once stood in both places; planning checks every run without training any.
    from saferl.experiments.spec import parse_spec

    sweep = parse_spec(tomllib.loads(text), "example", tmp_path)
    assert sweep.runs, where


def test_the_command_line_page_opens_with_the_usage_the_cli_prints() -> None:
    # docs/cli.md once listed train, eval and list only, after sweep and report existed
    from saferl.cli import USAGE

    first = next(code for language, code in code_blocks(ROOT / "docs" / "cli.md")
                 if language == "text")
    assert first.strip() == USAGE.strip()
