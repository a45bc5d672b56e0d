"""The seeds' experiments as sweep recipes: ``saferl sweep --recipe NAME --scale SCALE``.

A recipe is an ordinary sweep spec shipped with saferl, one TOML file per scale in
``saferl/experiments/recipes/NAME.SCALE.toml`` (copy one to change it and run it as
``saferl sweep FILE``). The scales:

- ``quick``: saferl's native tasks and small budgets (a smoke-scale reproduction: ten minutes
  to an hour on 2 CPU cores, the CCPO recipes the longest);
- ``native``: the published protocol (5 seeds, 50 evaluation episodes, the paper's thresholds)
  on the native counterparts of the paper's tasks;
- ``paper``: the published protocol on the paper's Bullet-Safety-Gym tasks (``saferl[bullet]``),
  meant for a cluster (``--backend ray``); ``library``, which reproduces no paper, has 5 seeds
  and full budgets on the native tasks there;
- ``bullet-quick`` (``ccpo-main`` only): two of the paper's Bullet tasks at the budget one
  2-core machine affords in about an hour.

Each file's ``description`` and ``source`` say what it reproduces and where a setting is ours.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saferl.experiments.packing import evaluated_at_thresholds
from saferl.experiments.spec import SpecError, Sweep, parse_spec

RECIPES_DIR = Path(__file__).with_name("recipes")
SCALES = ("quick", "native", "paper", "bullet-quick")


@dataclass(frozen=True)
class Recipe:
    """A named experiment and the spec file of each of its scales."""

    name: str
    files: dict[str, Path]


def recipes() -> dict[str, Recipe]:
    """Every recipe shipped with saferl, by name, its scales in :data:`SCALES` order."""
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(RECIPES_DIR.glob("*.toml")):
        name, _, scale = path.stem.rpartition(".")
        found.setdefault(name, {})[scale] = path
    return {name: Recipe(name, {s: files[s] for s in sorted(files, key=_scale_order)})
            for name, files in found.items()}


def _scale_order(scale: str) -> int:
    return SCALES.index(scale) if scale in SCALES else len(SCALES)


def recipe_file(name: str, scale: str) -> Path:
    """The spec file of recipe ``name`` at ``scale``.

    Raises:
        SpecError: No such recipe (with the nearest name) or no such scale of it (with the
            scales it has), one sentence.
    """
    known = recipes()
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise SpecError(f"unknown recipe {name!r}.{hint} Recipes: {', '.join(known)} "
                        f"(saferl sweep --list-recipes describes them).")
    files = known[name].files
    if scale not in files:
        raise SpecError(f"recipe {name!r} has no scale {scale!r}; its scales: "
                        f"{', '.join(files)}.")
    return files[scale]


def load_recipe(name: str, scale: str, out: str | Path | None = None) -> Sweep:
    """The checked, expanded sweep of recipe ``name`` at ``scale``, written to ``out``
    (default ``sweeps/NAME-SCALE`` in the working directory).

    Raises:
        SpecError: Unknown recipe or scale (:func:`recipe_file`).
    """
    path = recipe_file(name, scale)
    sweep = parse_spec(tomllib.loads(path.read_text()), f"{name}-{scale}", Path.cwd())
    return dataclasses.replace(sweep, out=Path(out)) if out is not None else sweep


def describe(sweep: Sweep) -> dict[str, Any]:
    """A sweep's size: runs, environment steps in all, evaluation episodes in all, and its
    algorithms, tasks and seeds.

    The steps count every member a run trains (its iterations × steps per iteration, per
    member): a linear-combination baseline trains one policy per behaviour threshold, each for
    the run's ``steps``, so C-TRPO-Lag on {20, 40, 60} takes 3 × its ``steps``.
    """
    from saferl.engine.members import members

    episodes = sweep.evaluation.episodes
    evaluations = 0
    for run in sweep.runs:
        thresholds = (len(sweep.evaluation.thresholds)
                      if evaluated_at_thresholds(run.algo, run.config) else 0)
        evaluations += episodes * (thresholds or len(sweep.evaluation.modes))
    return {"runs": len(sweep.runs),
            "env_steps": sum(run.config.run.iterations * run.config.run.steps_per_iteration
                             * len(members(run.config)) for run in sweep.runs),
            "eval_episodes": evaluations,
            "algorithms": list(dict.fromkeys(run.algo for run in sweep.runs)),
            "envs": list(dict.fromkeys(run.config.run.env for run in sweep.runs)),
            "seeds": sorted({run.config.run.seed for run in sweep.runs})}


def listing() -> str:
    """``saferl sweep --list-recipes``: every recipe and scale with its size and what it
    reproduces."""
    lines = []
    for recipe in recipes().values():
        lines.append(recipe.name)
        for scale, path in recipe.files.items():
            sweep = load_recipe(recipe.name, scale)
            size = describe(sweep)
            lines.append(f"  --scale {scale}: {size['runs']} runs, "
                         f"{size['env_steps'] / 1e6:,.1f}M environment steps in all, "
                         f"{size['eval_episodes']:,} evaluation episodes; "
                         f"{_count(size['algorithms'], 'algorithm')} x "
                         f"{_count(size['envs'], 'task')} x {_count(size['seeds'], 'seed')} "
                         f"({', '.join(size['envs'])})")
            if scale == next(iter(recipe.files)):
                lines.append(f"    {sweep.source}")
            lines.append(f"    {sweep.description}")
            lines.append(f"    spec: {path}")
    return "\n".join(lines)


def _count(items: list[Any], noun: str) -> str:
    return f"{len(items)} {noun}{'s' if len(items) != 1 else ''}"
