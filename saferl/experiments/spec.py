"""Sweep specifications: a TOML file naming axes and their grid, checked and expanded into runs.

A spec (``saferl sweep SPEC.toml``)::

    name = "limits"                    # optional: default the file's stem
    out = "sweeps/limits"              # optional: default sweeps/<name>, beside the spec

    [axes]                             # every combination of these values is one run
    algo = ["ppo_lag", "trpo_lag"]
    env = ["saferl/BallCircle-v0"]
    seed = [0, 1, 2]
    cost_limit = [10, 20]              # a number, or one per constraint: [[10, 5], [20, 5]]
    "lagrange.lr" = [0.01, 0.05]       # any configuration field, by its dotted path

    [config]                           # fixed fields of every run (as in a --config file)
    steps = 200000
    hidden_sizes = [64, 64]

    [evaluation]                       # after training, written into each run directory
    episodes = 10                      # per mode (or per threshold) and run; 0: none
    modes = ["deterministic", "stochastic"]
    thresholds = [10, 20, 30, 40]      # conditioned policies: evaluated at these

Several grids with their own axes and fixed fields (an on-policy baseline given more steps than
an off-policy method, say) are ``[[grid]]`` tables instead of ``[axes]``; each grid's
``config`` is merged over the spec's ``[config]``::

    [config]
    env = "saferl/BallCircle-v0"
    [[grid]]
    axes = { algo = ["ccpo"], seed = [0, 1] }
    config = { steps = 100000 }
    [[grid]]
    axes = { algo = ["cppo_lag"], seed = [0, 1] }
    config = { steps = 1000000 }

``description`` and ``source`` are free text (the recipes of ``saferl sweep --recipe`` say what
they reproduce there).

A run's identity is a short hash of its resolved configuration and algorithm
(:func:`run_hash`), never of resources, worker counts or the backend, so the same spec names
the same run directories wherever and however it runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saferl.config import ConfigError, config_to_dict, merge_tables

TOP_LEVEL = ("name", "description", "source", "out", "axes", "config", "grid", "evaluation")
GRID_KEYS = ("axes", "config")
EVALUATION_KEYS = ("episodes", "modes", "thresholds", "env_seed")
MODES = ("deterministic", "stochastic")
#: Shared settings that say how a run is executed, not what it computes: left out of its hash
#: (worker processes step the same copies to the same numbers as one process).
RESOURCE_FIELDS = ("run_dir", "env_workers", "checkpoint_every")
#: Settings that change what a run computes but were once hashed as resources: in the hash only
#: away from their default, so that runs without them keep the names they always had.
#: ``overlap_collection`` collects with the actor from before the last updates (other data).
HASHED_WHEN_SET = {"overlap_collection": False}


class SpecError(ValueError):
    """A sweep specification that cannot run (one sentence: which key, which value, why)."""


@dataclass(frozen=True)
class Evaluation:
    """The evaluation stage run after training (see the module docstring)."""

    episodes: int = 10
    modes: tuple[str, ...] = MODES
    thresholds: tuple[float, ...] = ()
    env_seed: int = 10_000


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its algorithm, resolved configuration, label and identity."""

    algo: str
    config: Any
    values: dict[str, Any]  # the axis values that made it, by axis name
    label: str
    run_id: str  # label-hash: the run directory's name

    def record(self) -> dict[str, Any]:
        """JSON-ready: what ``sweep.json`` and the worker need to (re)build the run."""
        return {"algo": self.algo, "config": config_to_dict(self.config),
                "values": self.values, "label": self.label, "run_id": self.run_id}


@dataclass(frozen=True)
class Sweep:
    """A checked, expanded sweep specification."""

    name: str
    out: Path
    axes: dict[str, list[Any]]  # every axis and the values it takes in any grid
    runs: list[PlannedRun]
    evaluation: Evaluation = field(default_factory=Evaluation)
    description: str = ""
    source: str = ""


def load_spec(path: str | Path) -> Sweep:
    """Read, check and expand a sweep specification (nothing runs).

    Raises:
        SpecError: One sentence naming the problem: an unknown key (with the nearest valid
            one), an empty axis, a value of the wrong type, two axes that set the same field,
            or a combination the algorithm's configuration refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"sweep spec {str(path)!r} does not exist.")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SpecError(f"sweep spec {str(path)!r} is not valid TOML: {error}.") from None
    return parse_spec(data, path.stem, path.parent)


def parse_spec(data: dict[str, Any], default_name: str, base: Path) -> Sweep:
    """:func:`load_spec` on an already parsed table (``base``: where relative paths start)."""
    _check_keys(data, TOP_LEVEL, "sweep spec")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise SpecError(f"name must be a non-empty string; got {name!r}.")
    out = base / data.get("out", f"sweeps/{name}")
    for key in ("description", "source"):
        if not isinstance(data.get(key, ""), str):
            raise SpecError(f"{key} must be a string; got {data[key]!r}.")
    fixed = data.get("config", {})
    if not isinstance(fixed, dict):
        raise SpecError(f"[config] must be a table of configuration fields; got {fixed!r}.")
    if "axes" in data and "grid" in data:
        raise SpecError("the spec has both [axes] and [[grid]] tables: put the axes of each "
                        "grid in its own [[grid]] table, or use [axes] alone.")
    grids = data.get("grid", [{"axes": data.get("axes")}])
    if not isinstance(grids, list) or not grids or not all(isinstance(g, dict) for g in grids):
        raise SpecError("[[grid]] must be one or more tables, each with axes = {...}.")
    evaluation = _evaluation(data.get("evaluation", {}))
    runs: list[PlannedRun] = []
    seen: dict[str, dict[str, Any]] = {}
    union: dict[str, list[Any]] = {}
    for number, grid in enumerate(grids, start=1):
        where = "[axes]" if "grid" not in data else f"[[grid]] number {number}"
        _check_keys(grid, GRID_KEYS, where)
        own = grid.get("config", {})
        if not isinstance(own, dict):
            raise SpecError(f"config of {where} must be a table of configuration fields; got "
                            f"{own!r}.")
        for run in _expand(grid.get("axes"), merge_tables(fixed, own), where):
            if run.run_id in seen:
                raise SpecError(f"axis values {seen[run.run_id]} and {run.values} give the "
                                f"same run (the same resolved configuration): drop one of "
                                f"them.")
            seen[run.run_id] = run.values
            runs.append(run)
            for key, value in run.values.items():
                if value not in union.setdefault(key, []):
                    union[key].append(value)
    return Sweep(name, out, union, runs, evaluation, data.get("description", ""),
                 data.get("source", ""))


def _expand(axes: Any, fixed: dict[str, Any], where: str) -> list[PlannedRun]:
    """Every run of one grid: the product of its axes on top of ``fixed``."""
    if not isinstance(axes, dict) or not axes:
        raise SpecError(f"the spec has no axes in {where}: name at least one axis, e.g. "
                        f"algo = [\"ppo_lag\"].")
    axes = {key: _axis_values(key, values) for key, values in axes.items()}
    algos = axes.get("algo", [fixed.get("algo")] if "algo" in fixed else [])
    if not algos:
        raise SpecError("no algorithm: add an axis algo = [\"ppo_lag\", ...].")
    for algo in algos:
        _check_algorithm(algo)
    _check_axis_names(axes, algos, _flatten(fixed))
    names = list(axes)
    return [plan_run(dict(zip(names, combination, strict=True)), fixed)
            for combination in itertools.product(*(axes[n] for n in names))]


def plan_run(values: dict[str, Any], fixed: dict[str, Any]) -> PlannedRun:
    """The run of one combination of axis values on top of the fixed fields.

    Raises:
        SpecError: The algorithm's configuration refuses the values (its own sentence, with
            the axis values that led to it).
    """
    from saferl.algos.registry import get_algorithm
    from saferl.envs.core import EnvError
    from saferl.envs.resolve import check_env_id
    from saferl.training import build_config, check_grid

    algo = values.get("algo", fixed.get("algo"))
    overrides: dict[str, Any] = {}
    for source in ({k: v for k, v in fixed.items() if k != "algo"}, _nest(values)):
        for key, value in source.items():
            if isinstance(value, dict) and isinstance(overrides.get(key), dict):
                overrides[key] = {**overrides[key], **value}
            else:
                overrides[key] = value
    overrides.pop("algo", None)
    try:
        config = build_config(algo, overrides=overrides)
        check_grid(get_algorithm(algo), config)
        check_env_id(config.run.env, config.run.env_kwargs)  # not only in the worker
    except (ConfigError, EnvError, ValueError, TypeError) as error:
        shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
        raise SpecError(f"the run {shown} is not a valid {algo} configuration: "
                        f"{str(error).rstrip('.')}.") from None
    digest = run_hash(algo, config)
    label = run_label(algo, values)
    return PlannedRun(algo, config, dict(values), label, f"{label}-{digest}")


def run_hash(algo: str, config: Any) -> str:
    """A short stable hash of what a run computes: its algorithm and resolved configuration,
    without the fields that only say how it runs (:data:`RESOURCE_FIELDS`)."""
    text = json.dumps({"algo": algo, "config": computed_fields(config_to_dict(config))},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def computed_fields(data: dict[str, Any]) -> dict[str, Any]:
    """A configuration dict (``config_to_dict``) without :data:`RESOURCE_FIELDS`, nor the
    fields of :data:`HASHED_WHEN_SET` at their defaults: what a run computes, the part of it
    that names the run."""
    def hashed(key: str, value: Any) -> bool:
        if key in HASHED_WHEN_SET:
            return value != HASHED_WHEN_SET[key]
        return key not in RESOURCE_FIELDS

    return {**data, "run": {k: v for k, v in data["run"].items() if hashed(k, v)}}


def run_label(algo: str, values: dict[str, Any]) -> str:
    """A readable, path-safe name from the axis values (``ppo_lag_BallCircle_seed0_cost20``)."""
    parts = [algo]
    for key, value in values.items():
        if key == "algo":
            continue
        if key == "env":
            parts.append(str(value).split("/")[-1].removesuffix("-v0"))
            continue
        short = key.split(".")[-1].replace("cost_limit", "cost").replace("_", "")
        shown = "-".join(f"{x:g}" if isinstance(x, float) else str(x) for x in
                         (value if isinstance(value, list) else [value]))
        parts.append(f"{short}{shown}")
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", "_".join(parts))


def _axis_values(key: str, values: Any) -> list[Any]:
    if not isinstance(values, list):
        raise SpecError(f"axis {key!r} must be a list of values; got {values!r} (write "
                        f"{key} = [{json.dumps(values)}] for one value).")
    if not values:
        raise SpecError(f"axis {key!r} is empty, so the grid has no run: give it at least one "
                        f"value.")
    kinds = {type(v) for v in values}
    if len(kinds) > 1 and not kinds <= {int, float}:
        raise SpecError(f"axis {key!r} mixes values of different types "
                        f"{sorted(t.__name__ for t in kinds)}: {values!r}.")
    return list(values)


def _check_keys(table: dict[str, Any], valid: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SpecError(f"unknown key {key!r} in the {where}.{hint} Valid keys: "
                            f"{', '.join(valid)}.")


def _check_algorithm(algo: Any) -> None:
    from saferl.algos.registry import UnknownAlgorithmError, get_algorithm

    if not isinstance(algo, str):
        raise SpecError(f"axis 'algo' holds names of algorithms; got {algo!r}.")
    try:
        get_algorithm(algo)
    except UnknownAlgorithmError as error:
        raise SpecError(f"axis 'algo': {error}") from None


def _field_path(key: str, algo: str) -> str | None:
    """The dotted path of configuration field ``key`` in ``algo``'s configuration, or
    ``None``: a shared setting (``steps``) lives under ``run``."""
    from saferl.algos.registry import get_algorithm

    if key == "algo":
        return key
    cls = get_algorithm(algo).config_class
    parts = key.split(".")
    top = {f.name: f for f in dataclasses.fields(cls) if f.init}
    run_type = _field_type(cls, "run")
    if len(parts) == 1 and parts[0] not in top and run_type is not None and \
            parts[0] in _names(run_type):
        parts = ["run", parts[0]]
    current: Any = cls
    for part in parts:
        if not dataclasses.is_dataclass(current) or part not in _names(current):
            return None
        current = _field_type(current, part)
    return ".".join(parts)


def _names(cls: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


def _field_type(cls: Any, name: str) -> Any:
    import typing

    hint = typing.get_type_hints(cls, include_extras=True).get(name)
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    return hint


def _all_paths(algos: list[str]) -> list[str]:
    """Every dotted field path of the algorithms' configurations (for suggestions)."""
    from saferl.algos.registry import get_algorithm

    paths: set[str] = {"algo"}

    def walk(cls: Any, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            kind = _field_type(cls, f.name)
            if dataclasses.is_dataclass(kind):
                walk(kind, f"{prefix}{f.name}.")
            else:
                paths.add(f"{prefix}{f.name}")
                if prefix == "run.":
                    paths.add(f.name)

    for algo in algos:
        walk(get_algorithm(algo).config_class, "")
    return sorted(paths)


def _check_axis_names(axes: dict[str, list[Any]], algos: list[str],
                      fixed: dict[str, Any]) -> None:
    owners: dict[str, str] = {}
    for key in list(axes) + [f"config.{k}" for k in fixed]:
        name = key.removeprefix("config.")
        paths = {p for p in (_field_path(name, a) for a in algos) if p is not None}
        if name == "algo":
            paths = {"algo"}
        if not paths:
            close = difflib.get_close_matches(name, _all_paths(algos), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            where = "axis" if not key.startswith("config.") else "[config] field"
            raise SpecError(f"unknown {where} {name!r}: no configuration field of "
                            f"{', '.join(algos)} has that name.{hint}")
        for path in paths:
            if path in owners and owners[path] != key:
                raise SpecError(f"{_shown(owners[path])} and {_shown(key)} both set "
                                f"{path}; keep one of them.")
            owners[path] = key


def _shown(key: str) -> str:
    return f"[config] field {key.removeprefix('config.')!r}" if key.startswith("config.") \
        else f"axis {key!r}"


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted keys (``{"ppo": {"epochs": 5}}`` → ``{"ppo.epochs": 5}``)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict) and key != "env_kwargs":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _nest(values: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys as nested tables; ``seed`` is the run's seed (one per run directory)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        parts = key.split(".")
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return out


def _evaluation(table: Any) -> Evaluation:
    if not isinstance(table, dict):
        raise SpecError(f"[evaluation] must be a table; got {table!r}.")
    _check_keys(table, EVALUATION_KEYS, "[evaluation] table")
    episodes = table.get("episodes", 10)
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 0:
        raise SpecError(f"evaluation.episodes must be an integer >= 0; got {episodes!r}.")
    modes = table.get("modes", list(MODES))
    if not isinstance(modes, list) or not modes or any(m not in MODES for m in modes):
        raise SpecError(f"evaluation.modes must be a list of {list(MODES)}; got {modes!r}.")
    thresholds = table.get("thresholds", [])
    if not isinstance(thresholds, list) or any(
            isinstance(t, bool) or not isinstance(t, int | float) or t < 0 for t in thresholds):
        raise SpecError(f"evaluation.thresholds must be a list of numbers >= 0; got "
                        f"{thresholds!r}.")
    env_seed = table.get("env_seed", 10_000)
    if isinstance(env_seed, bool) or not isinstance(env_seed, int) or env_seed < 0:
        raise SpecError(f"evaluation.env_seed must be an integer >= 0; got {env_seed!r}.")
    return Evaluation(episodes, tuple(modes), tuple(float(t) for t in thresholds), env_seed)
