"""``saferl report DIR [DIR ...]``: tables and figures across run directories.

Reads saferl run directories (a sweep's ``OUT`` folder, whose runs are ``OUT/runs/*/run``, or
run directories given one by one) and writes into ``--out``:

- ``report.md`` with every table and figure, and each table as ``tables/<name>.csv`` and
  ``tables/<name>.tex``;
- **final figures** per task × algorithm × cost limit (× settings): the training return, each
  episode cost and the cost rate (the stochastic policy's training batches, mean of the last
  5 iterations with finished episodes), the deployed policy's evaluation (``eval.json``:
  deterministic and stochastic) when present, mean ± std over seeds, the number of seeds and
  the share of seeds within the limit;
- **aggregates**: the interquartile mean over seeds with a 95 % stratified-bootstrap
  confidence interval, computed by ``rliable`` (``pip install 'saferl[report]'``; without it
  the table says so);
- for threshold-conditioned policies (``versatile.json``): Avg R, Avg CV, R-G and CV-G in the
  paper's layout, and cost and return against the threshold;
- **normalised metrics** of Safety Gym (Ray et al. 2019) on every task with a ``ppo`` run:
  ``J_r / J_r^PPO``, ``max(0, J_c − d) / max(1e-6, J_c^PPO − d)`` and ``ρ_c / ρ_c^PPO``;
- **curves** per task: return, each cost and each training cost rate against environment
  steps, one line per algorithm (× limit) with a mean ± std band over seeds and the limit
  drawn.

Runs whose settings differ in anything but the seed and the cost limit are never averaged
together: each set of settings is its own row, labelled by the fields that differ.

Only finished runs (every configured iteration logged) are reported: a run still training or
interrupted would put an early policy's figures beside final ones. The report lists those it
left out with how far each got, and for a sweep folder how many runs of its index it holds.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Fields that differ between the members of one row (or only say how a run ran).
IGNORED = ("seed", "seeds", "cost_limit", "limits", "run_dir", "env_workers",
           "checkpoint_every", "eval_episodes")
LAST = 5  # iterations averaged for the final training figures (as the run summary)


@dataclass
class MemberFigures:
    """One trained policy's figures (a member of a run: a seed, or a seed at a limit)."""

    run_dir: Path
    env: str
    algo: str
    seed: int
    limit: tuple[float, ...]
    settings: dict[str, Any]  # the flattened configuration without :data:`IGNORED`
    train: dict[str, float]  # return, cost_i, cost_rate_i
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)  # mode -> figures
    versatile: dict[str, float] | None = None  # Avg R, Avg CV, R-G, CV-G (this seed)
    versatile_table: list[dict[str, float]] | None = None
    #: A threshold-conditioned policy trained on a mixture of behaviour thresholds: its
    #: training batches belong to no single limit.
    conditioned: bool = False


def find_runs(paths: list[str | Path]) -> list[Path]:
    """The saferl run directories under ``paths``: each path itself if it is one, else every
    ``config.json`` folder below it (a sweep's ``runs/*/run``) but a sweep's packs.

    Raises:
        FileNotFoundError: A path does not exist, or holds no run directory.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"{str(path)!r} does not exist.")
        if (path / "config.json").is_file():
            found.append(path)
            continue
        # A pack's multi-member run (OUT/packs/*/run) is written out as its runs' directories:
        # reading it too would count each of its members twice.
        below = sorted(p.parent for p in path.rglob("config.json")
                       if not (p.parent.parent / "pack.json").is_file())
        if not below:
            raise FileNotFoundError(f"{str(path)!r} holds no saferl run directory (no "
                                    f"config.json below it).")
        found += below
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class Unfinished:
    """A run directory left out of a report: ``iteration`` of its ``iterations`` logged."""

    run_dir: Path
    iteration: int
    iterations: int
    steps_per_iteration: int

    def text(self) -> str:
        """``runs/x/run: 175 of 1,000 iterations (35,000 of 200,000 steps per seed)``."""
        return (f"`{self.run_dir}`: {self.iteration:,} of {self.iterations:,} iterations "
                f"({self.iteration * self.steps_per_iteration:,} of "
                f"{self.iterations * self.steps_per_iteration:,} steps per seed)")


def unfinished(run_dir: Path) -> Unfinished | None:
    """How far an unfinished run directory got; ``None`` when its last configured iteration is
    logged (``--steps`` given on resume counts: ``config.json`` holds the new total)."""
    from saferl.runs import RunDirectory, read_run_config

    _, _, config = read_run_config(run_dir)
    logged = RunDirectory(run_dir).logged_iteration()
    if logged >= config.run.iterations:
        return None
    return Unfinished(run_dir, logged, config.run.iterations, config.run.steps_per_iteration)


def sweep_coverage(paths: list[str | Path], reported: set[Path]) -> list[str]:
    """One line per sweep folder among ``paths`` (it has ``sweep.json``): how many of the runs
    in its index this report holds, and the states of the others."""
    resolved = {path.resolve() for path in reported}

    def held(record: dict[str, Any]) -> bool:
        return (Path(str(record.get("directory", ""))) / "run").resolve() in resolved

    lines = []
    for raw in paths:
        index = _read_json(Path(raw) / "sweep.json")
        if not index or not isinstance(index.get("runs"), dict):
            continue
        runs = index["runs"]
        others: dict[str, int] = {}
        for record in runs.values():
            if not held(record):
                state = str(record.get("state", "pending"))
                others[state] = others.get(state, 0) + 1
        rest = ", ".join(f"{count} {state}" for state, count in sorted(others.items()))
        count = len(runs) - sum(others.values())
        lines.append(f"Sweep `{raw}`: {count} of its {len(runs)} runs are in this report"
                     + (f"; the others are not finished ({rest}, as its `sweep.json` last "
                        f"recorded)." if others else "."))
    return lines


def read_members(run_dir: Path) -> list[MemberFigures]:
    """Every member's figures of one run directory."""
    from saferl.engine.members import has_limit_grid, member_label, members
    from saferl.runs import RunDirectory, read_run_config, spec_from_record
    from saferl.training import summarize

    record, entry, config = read_run_config(run_dir)
    spec = spec_from_record(record)
    directory = RunDirectory(run_dir)
    history = directory.read_progress()
    grid = members(config)
    labelled = has_limit_grid(config)
    summary = summarize(history, config.run.seed_list, spec, grid[0].cost_limit,
                        members=grid if labelled else None, last=LAST)
    settings = _settings(record["config"])
    evaluation = _read_json(run_dir / "eval.json")
    versatile = _read_json(run_dir / "versatile.json")
    out = []
    for member in grid:
        label = member_label(member, labelled)
        key: Any = label if labelled else member.seed
        figures = summary["per_seed"].get(key, {})
        train = {"return": figures.get("rollout/ep_return", math.nan)}
        for i in range(spec.num_costs):
            train[f"cost_{i}"] = figures.get(f"rollout/ep_cost_{i}", math.nan)
            train[f"cost_rate_{i}"] = figures.get(f"train/cost_rate_{i}", math.nan)
        modes = (evaluation or {}).get("per_seed", {}).get(label, {})
        out.append(MemberFigures(run_dir, config.run.env, entry.name, member.seed,
                                 member.cost_limit, settings, train,
                                 {mode: dict(f) for mode, f in modes.items()},
                                 conditioned=bool(versatile) and not labelled))
    if versatile:  # per seed: the metrics come from the saved table of every seed
        _attach_versatile(out, versatile)
    return out


def _attach_versatile(members: list[MemberFigures], record: dict[str, Any]) -> None:
    """Each seed's Avg R / Avg CV / R-G / CV-G from a ``versatile.json`` record
    (:meth:`~saferl.versatile.VersatileResult.record`)."""
    for seed, figures in record.get("per_seed", {}).items():
        for member in members:
            if str(member.seed) == seed:
                # null: a metric with nothing to average (R-G with no new threshold)
                member.versatile = {k: math.nan if v is None else float(v)
                                    for k, v in figures.items()}
                member.versatile_table = record.get("table")


def _settings(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and key != "env_kwargs":
            out.update(_settings(value, f"{prefix}{key}."))
        elif key not in IGNORED:
            out[f"{prefix}{key}"] = json.dumps(value, sort_keys=True)
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class Row:
    """One line of the final-figures table: the members of one task × algorithm × limit ×
    settings."""

    env: str
    algo: str
    limit: tuple[float, ...]
    differs: str  # the settings that tell this row from others of its task × algorithm
    members: list[MemberFigures]


def group(members: list[MemberFigures]) -> list[Row]:
    """Rows of members that share task, algorithm, limit and every other setting."""
    keyed: dict[tuple, list[MemberFigures]] = {}
    for member in members:
        key = (member.env, member.algo, member.limit,
               tuple(sorted(member.settings.items())))
        keyed.setdefault(key, []).append(member)
    rows = []
    for (env, algo, limit, settings), group_members in keyed.items():
        siblings = [dict(k[3]) for k in keyed if k[0] == env and k[1] == algo]
        mine = dict(settings)
        differing = sorted(name for name in mine
                           if any(other.get(name) != mine[name] for other in siblings))
        differs = ", ".join(f"{name}={mine[name]}" for name in differing)
        rows.append(Row(env, algo, limit, differs, sorted(group_members, key=lambda m: m.seed)))
    return sorted(rows, key=lambda r: (r.env, r.algo, r.limit, r.differs))


def _count(count: int, stem: str, one: str, many: str) -> str:
    """``1 run directory``, ``5 run directories``."""
    return f"{count} {stem}{one if count == 1 else many}"


def repeated_seeds(rows: list[Row]) -> list[str]:
    """One sentence per row in which a seed comes from more than one run directory (copies of
    a run, or the same run trained twice): its figures count once per directory."""
    notes = []
    for row in rows:
        where: dict[int, list[Path]] = {}
        for member in row.members:
            where.setdefault(member.seed, []).append(member.run_dir)
        for seed, dirs in where.items():
            if len(set(dirs)) > 1:
                shown = ", ".join(f"`{d}`" for d in dict.fromkeys(dirs))
                notes.append(f"**{row_label(row, with_limit=True)}**: seed {seed} comes from "
                             f"{len(set(dirs))} run directories ({shown}); each counts as a "
                             f"seed of its own in this row's figures.")
    return notes


def limit_label(row: Row) -> str:
    """The row's training limit, or ``conditioned`` for a policy trained on a mixture of
    behaviour thresholds."""
    return "conditioned" if row.members[0].conditioned else ",".join(f"{x:g}" for x in row.limit)


def row_label(row: Row, with_limit: bool = False) -> str:
    """A row's name in a figure's legend: the algorithm (``@`` its limit), then the settings
    that tell it from the task's other rows of that algorithm."""
    name = row.algo
    if with_limit:
        name += " (conditioned)" if row.members[0].conditioned else f" @{limit_label(row)}"
    return name + (f" ({row.differs})" if row.differs else "")


def _colour(k: int, count: int) -> Any:
    """The ``k``-th of ``count`` line colours: matplotlib's 10 defaults, or 20 distinct ones
    when there are more lines than 10 (a library sweep draws 20 rows on one task)."""
    import matplotlib

    return f"C{k}" if count <= 10 else matplotlib.colormaps["tab20"](k % 20)


def _legend_below(fig: Any, ax: Any, height: float) -> None:
    """``ax``'s legend under the panels, so that long or many entries hide no curve."""
    handles, labels = ax.get_legend_handles_labels()
    columns = min(len(labels), 2 if max(map(len, labels), default=0) > 40 else 4) or 1
    legend_inches = 0.16 * math.ceil(len(labels) / columns) + 0.1
    fig.set_size_inches(fig.get_size_inches()[0], height + legend_inches)
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, legend_inches / (height + legend_inches), 1, 1))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation over the finite values (NaN if none)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return float(np.mean(finite)), float(np.std(finite))


def final_table(rows: list[Row], num_costs: int) -> list[dict[str, Any]]:
    """The final-figures table: one dict per row (see the module docstring)."""
    table = []
    for row in rows:
        out: dict[str, Any] = {"task": row.env, "algorithm": row.algo,
                               "limit": limit_label(row),
                               "settings": row.differs, "seeds": len(row.members)}
        returns = [m.train["return"] for m in row.members]
        out["train_return_mean"], out["train_return_std"] = mean_std(returns)
        for i in range(num_costs):
            costs = [m.train.get(f"cost_{i}", math.nan) for m in row.members]
            out[f"train_cost_{i}_mean"], out[f"train_cost_{i}_std"] = mean_std(costs)
            rates = [m.train.get(f"cost_rate_{i}", math.nan) for m in row.members]
            out[f"cost_rate_{i}_mean"], out[f"cost_rate_{i}_std"] = mean_std(rates)
        within = [all(m.train.get(f"cost_{i}", math.nan) <= m.limit[i] for i in range(num_costs))
                  for m in row.members]
        out["train_within_share"] = (float(np.mean(within)) if within and
                                     not row.members[0].conditioned else math.nan)
        for mode in ("deterministic", "stochastic"):
            evaluated = [m for m in row.members if mode in m.evaluation]
            if not evaluated:
                continue
            short = "det" if mode == "deterministic" else "sto"
            out[f"eval_{short}_return_mean"], out[f"eval_{short}_return_std"] = mean_std(
                [m.evaluation[mode]["return_mean"] for m in evaluated])
            for i in range(num_costs):
                out[f"eval_{short}_cost_{i}_mean"], out[f"eval_{short}_cost_{i}_std"] = \
                    mean_std([m.evaluation[mode][f"cost_{i}_mean"] for m in evaluated])
            out[f"eval_{short}_within_share"] = float(np.mean([
                all(m.evaluation[mode][f"cost_{i}_mean"] <= m.limit[i]
                    for i in range(num_costs)) for m in evaluated]))
        table.append(out)
    return table


def conditioned_groups(rows: list[Row]) -> list[tuple[Row, list[MemberFigures]]]:
    """The members with a ``versatile.json``, one group per task × algorithm × settings.

    A limits-grid baseline (C-PPO-Lag: one policy per training limit, combined) has one row per
    limit in the final table but one versatile evaluation per seed: its rows are merged here
    and each seed counted once. Returns (the group's first row, its members, one per run × seed).
    """
    keyed: dict[tuple[str, str, str], tuple[Row, dict[tuple[Path, int], MemberFigures]]] = {}
    for row in rows:
        for member in row.members:
            if member.versatile is None:
                continue
            _, chosen = keyed.setdefault((row.env, row.algo, row.differs), (row, {}))
            chosen.setdefault((member.run_dir, member.seed), member)
    return [(row, list(chosen.values())) for row, chosen in keyed.values()]


def versatile_table(rows: list[Row]) -> list[dict[str, Any]]:
    """Avg R, Avg CV, R-G, CV-G (mean ± std over seeds) of the conditioned rows; with several
    constraints also each one's ``CV_i`` and ``CV-G_i`` (Avg CV and CV-G are their sums)."""
    table = []
    for row, members in conditioned_groups(rows):
        out: dict[str, Any] = {"task": row.env, "algorithm": row.algo, "settings": row.differs,
                               "seeds": len(members)}
        names = ["Avg R", "Avg CV", "R-G", "CV-G"]
        per_constraint = sorted({k for m in members for k in (m.versatile or {})
                                 if k.startswith(("CV_", "CV-G_"))},
                                key=lambda k: (int(k.rsplit("_", 1)[1]), k.startswith("CV-G")))
        if len(per_constraint) > 2:  # several constraints: each one's CV and CV-G, too
            names += per_constraint
        for name in names:
            key = name.replace(" ", "_").replace("-", "_")
            out[f"{key}_mean"], out[f"{key}_std"] = mean_std(
                [m.versatile[name] for m in members
                 if m.versatile is not None and name in m.versatile])
        table.append(out)
    return table


def pooled_threshold_table(members: list[MemberFigures]) -> list[dict[str, float]]:
    """The per-threshold table over every seed of ``members``' runs, from each run's table
    (means and population stds over that run's seeds, weighted by its number of seeds): the
    same numbers as one table over all the seeds."""
    runs: dict[Path, tuple[int, list[dict[str, float]]]] = {}
    for member in members:
        count, table = runs.get(member.run_dir, (0, member.versatile_table or []))
        runs[member.run_dir] = (count + 1, table)
    tables = [(n, t) for n, t in runs.values() if t]
    if not tables:
        return []
    total = sum(n for n, _ in tables)
    pooled = []
    for t, first in enumerate(tables[0][1]):
        row = {k: v for k, v in first.items() if k.startswith("threshold_") or k == "trained_on"}
        for key in [k[:-5] for k in first if k.endswith("_mean")]:
            mean = sum(n * table[t][f"{key}_mean"] for n, table in tables) / total
            second = sum(n * (table[t][f"{key}_std"] ** 2 + table[t][f"{key}_mean"] ** 2)
                         for n, table in tables) / total
            row[f"{key}_mean"], row[f"{key}_std"] = mean, math.sqrt(max(0.0, second - mean ** 2))
        pooled.append(row)
    return pooled


def bootstrap_iqm(scores: np.ndarray, repetitions: int, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """rliable's interquartile mean of ``scores`` ``[runs, tasks]`` and its 95 %
    stratified-bootstrap interval, reproducibly: rliable 1.2 draws the resampled indices from
    numpy's global generator whatever ``random_state`` says, so that generator is seeded for
    the call and restored after it."""
    from rliable import library as rly
    from rliable import metrics

    saved = np.random.get_state()  # noqa: NPY002 - see the docstring
    np.random.seed(seed)  # noqa: NPY002
    try:
        with warnings.catch_warnings():  # arch's notice about its future default generator
            warnings.simplefilter("ignore", FutureWarning)
            point, interval = rly.get_interval_estimates(
                {"row": scores}, lambda x: np.array([metrics.aggregate_iqm(x)]),
                reps=repetitions, random_state=np.random.RandomState(seed))
    finally:
        np.random.set_state(saved)  # noqa: NPY002
    return point["row"], interval["row"]


def aggregate_table(rows: list[Row], metric: str = "return", repetitions: int = 2000,
                    seed: int = 0) -> tuple[list[dict[str, Any]], str]:
    """The interquartile mean over seeds of a final figure (``return`` or ``cost_0``; the
    deterministic evaluation when every member has one, else training) with its 95 %
    stratified-bootstrap interval, per task × algorithm × limit, computed by ``rliable``.

    Returns:
        The rows and a note saying which figures were aggregated (or why none were).
    """
    try:
        import rliable  # noqa: F401 - only to say whether it is installed
    except ImportError:
        return [], ("Aggregates need rliable: pip install 'saferl[report]' (interquartile "
                    "mean and stratified-bootstrap confidence intervals).")
    table = []
    sources = set()
    alone = 0  # rows of one seed
    for index, row in enumerate(rows):
        evaluated = all("deterministic" in m.evaluation for m in row.members)
        key = f"{metric}_mean" if metric != "return" else "return_mean"
        values = [m.evaluation["deterministic"][key] if evaluated else m.train[metric]
                  for m in row.members]
        source = "deterministic evaluation" if evaluated else "training"
        sources.add(source)
        scores = np.asarray([v for v in values if math.isfinite(v)], float)[:, None]
        if scores.shape[0] == 0:
            continue
        point, interval = bootstrap_iqm(scores, repetitions, seed + index)
        if scores.shape[0] == 1:  # resampling one seed gives it back: [x, x] is no interval
            interval = np.full((2, 1), math.nan)
            alone += 1
        table.append({"task": row.env, "algorithm": row.algo,
                      "limit": limit_label(row), "settings": row.differs,
                      "figures": source, "seeds": scores.shape[0],
                      f"{metric}_iqm": float(point[0]),
                      "ci_low": float(interval[0, 0]), "ci_high": float(interval[1, 0])})
    note = (f"Interquartile mean over seeds of the {metric.replace('_', ' ')} "
            f"({' / '.join(sorted(sources))} figures), 95 % stratified-bootstrap interval "
            f"({repetitions} resamples, rliable)."
            + (f" {_count(alone, 'row', '', 's')} of one seed: no interval (–)." if alone else ""))
    return table, note


def normalised_table(rows: list[Row], num_costs: int) -> tuple[list[dict[str, Any]], str]:
    """The Safety Gym normalised metrics (Ray et al. 2019) of every row on a
    task that has one unconstrained ``ppo`` row, per seed against PPO's mean over its seeds:
    ``J_r / J_r^PPO``, ``max(0, J_c − d) / max(1e-6, J_c^PPO − d)`` (``d`` the row's limit)
    and ``ρ_c / ρ_c^PPO`` (the training cost rate). ``J`` is the deterministic evaluation when
    the row and PPO both have one, else the training figures. Conditioned rows (no single
    limit) are left out. Where PPO's own cost is within the row's limit the normalised cost
    has no scale (the ``1e-6`` floor would turn a cost of 1 over the limit into a million), so
    it is left blank (NaN) and the note says where.

    Returns:
        The rows (mean ± std over seeds) and a note on what was normalised, or why not.
    """
    table: list[dict[str, Any]] = []
    notes: list[str] = []
    unscaled: list[str] = []
    for env in sorted({r.env for r in rows}):
        references = [r for r in rows if r.env == env and r.algo == "ppo"]
        if len(references) != 1:
            if references:
                notes.append(f"{env} has {len(references)} ppo rows with different settings "
                             f"({'; '.join(r.differs for r in references)}): not normalised.")
            continue
        reference = references[0]
        for row in rows:
            if row.env != env or row is reference or row.members[0].conditioned:
                continue
            evaluated = all("deterministic" in m.evaluation
                            for m in row.members + reference.members)

            def figure(member: MemberFigures, key: str, evaluated: bool = evaluated) -> float:
                if evaluated:
                    return member.evaluation["deterministic"][
                        "return_mean" if key == "return" else f"{key}_mean"]
                return member.train.get(key, math.nan)

            def ppo(key: str, reference: Row = reference) -> float:
                return mean_std([figure(m, key) if "rate" not in key else m.train.get(
                    key, math.nan) for m in reference.members])[0]

            out: dict[str, Any] = {
                "task": env, "algorithm": row.algo, "limit": limit_label(row),
                "settings": row.differs, "seeds": len(row.members),
                "figures": "deterministic evaluation" if evaluated else "training"}
            with np.errstate(divide="ignore", invalid="ignore"):
                ppo_return = ppo("return")
                out["norm_return_mean"], out["norm_return_std"] = mean_std(
                    [figure(m, "return") / ppo_return if ppo_return else math.nan
                     for m in row.members])
                for i in range(num_costs):
                    limit = row.limit[i]
                    ppo_cost = ppo(f"cost_{i}")  # NaN (no finished episode) stays NaN
                    excess = ppo_cost - limit if ppo_cost > limit else math.nan
                    if ppo_cost <= limit:
                        unscaled.append(f"{row.algo} @{limit:g} on {env}")
                    out[f"norm_cost_{i}_mean"], out[f"norm_cost_{i}_std"] = mean_std(
                        [max(0.0, figure(m, f"cost_{i}") - limit) / excess
                         for m in row.members])
                    rate = ppo(f"cost_rate_{i}")
                    out[f"norm_cost_rate_{i}_mean"], out[f"norm_cost_rate_{i}_std"] = mean_std(
                        [m.train.get(f"cost_rate_{i}", math.nan) / rate if rate else math.nan
                         for m in row.members])
            table.append(out)
    if unscaled:
        notes.append(f"The normalised cost is blank where PPO's own cost is within the limit, "
                     f"so that there is no excess to scale by: {', '.join(unscaled)}.")
    if not table and not notes:
        notes.append("No task has a ppo run to normalise against (add algo = \"ppo\" to the "
                     "sweep).")
    return table, " ".join(notes)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.3g}" if abs(value) < 1 \
            else f"{value:.2f}"
    return str(value)


def write_table(rows: list[dict[str, Any]], folder: Path, name: str) -> tuple[Path, Path]:
    """Write one table as ``name.csv`` and ``name.tex`` (a LaTeX ``tabular``)."""
    folder.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    csv_path, tex_path = folder / f"{name}.csv", folder / f"{name}.tex"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    escape = lambda text: str(text).replace("_", r"\_").replace("%", r"\%")  # noqa: E731
    lines = [r"\begin{tabular}{" + "l" * len(columns) + "}", r"\hline",
             " & ".join(escape(c) for c in columns) + r" \\", r"\hline"]
    lines += [" & ".join(escape(_cell(row.get(c, ""))) for c in columns) + r" \\"
              for row in rows]
    lines += [r"\hline", r"\end{tabular}"]
    tex_path.write_text("\n".join(lines) + "\n")
    return csv_path, tex_path


def markdown(rows: list[dict[str, Any]]) -> str:
    """A table as Markdown, ``mean`` / ``std`` column pairs shown as ``mean ± std``."""
    if not rows:
        return "(no rows)\n"
    keys = list(dict.fromkeys(k for row in rows for k in row))
    columns = [k for k in keys if not (k.endswith("_std") and k[:-4] + "_mean" in keys)]

    def show(row: dict[str, Any], key: str) -> str:
        if key.endswith("_mean") and key[:-5] + "_std" in keys:
            if key not in row:
                return ""
            mean, std = row[key], row[key[:-5] + "_std"]
            if not math.isfinite(mean):
                return "–"
            return f"{mean:.2f}" if row.get("seeds") == 1 else f"{mean:.2f} ± {std:.2f}"
        if key.endswith("_share"):
            value = row.get(key, math.nan)
            return "–" if not math.isfinite(value) else f"{100 * value:.0f} %"
        return _cell(row.get(key, ""))

    names = [c.removesuffix("_mean") for c in columns]
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(show(row, c) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def curves_figure(rows: list[Row], env: str, path: Path, num_costs: int) -> Path:
    """Return, each cost and each training cost rate against environment steps on one task: one
    line per row (algorithm × limit × settings), mean ± std over its members of the latest
    finished episodes (the rate: all cost so far / all steps so far), each row's limit dashed
    in its colour on the cost panels (a conditioned row has none); reward and cost smoothed
    alike (none: raw iterations)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from saferl.runs import RunDirectory, carried_series, row_limit

    panels = (["rollout/ep_return"] + [f"rollout/ep_cost_{i}" for i in range(num_costs)]
              + [f"train/cost_rate_{i}" for i in range(num_costs)])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.8), squeeze=False)
    drawn = [r for r in rows if r.env == env]
    for k, row in enumerate(drawn):
        color = _colour(k, len(drawn))
        label = row_label(row, with_limit=True)
        history = []
        for member in row.members:
            for r in RunDirectory(member.run_dir).read_progress():
                mine = row_limit(r)
                if int(r["seed"]) == member.seed and (mine is None or mine == member.limit):
                    history.append({**r, "seed": float(hash((str(member.run_dir),
                                                             member.seed)) % 2**31)})
        for ax, name in zip(axes[0], panels, strict=True):
            steps, values, _ = carried_series(history, name)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # steps no seed reached yet
                mean, std = np.nanmean(values, axis=1), np.nanstd(values, axis=1)
            ax.plot(steps, mean, color=color, label=label)
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.15)
            if name.startswith("rollout/ep_cost_") and not row.members[0].conditioned:
                ax.axhline(row.limit[int(name.rsplit("_", 1)[1])], color=color,
                           linestyle="--", linewidth=1)
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    from saferl.runs import steps_formatter

    for ax, name in zip(axes[0], panels, strict=True):
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.xaxis.set_major_formatter(FuncFormatter(steps_formatter))
        ax.set_xlabel("environment steps (per seed)")
        index = name.rsplit("_", 1)[1]
        ax.set_ylabel("episode return" if name == "rollout/ep_return" else
                      f"episode cost {index} (dashed: limit)" if "ep_cost" in name else
                      f"training cost rate {index} (cost per step)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{env}: mean ± std over seeds of the latest training episodes", fontsize=10)
    _legend_below(fig, axes[0][0], 3.8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def versatile_figure(rows: list[Row], env: str, path: Path) -> Path | None:
    """Cost (with cost = threshold) and return against the threshold, one line per
    conditioned row on the task (the saved per-threshold tables)."""
    chosen = [(row, pooled_threshold_table(members))
              for row, members in conditioned_groups(rows) if row.env == env]
    chosen = [(row, table) for row, table in chosen if table]
    if not chosen:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cost_ax, return_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    top = 0.0
    for k, (row, table) in enumerate(chosen):
        eps = np.array([t["threshold_0"] for t in table])
        for ax, key in ((cost_ax, "cost_0"), (return_ax, "return")):
            mean = np.array([t[f"{key}_mean"] for t in table])
            std = np.array([t[f"{key}_std"] for t in table])
            ax.plot(eps, mean, color=_colour(k, len(chosen)), label=row_label(row))
            ax.fill_between(eps, mean - std, mean + std, color=_colour(k, len(chosen)),
                            alpha=0.15)
        top = max(top, float(eps.max()))
    cost_ax.plot([0, top], [0, top], "k--", linewidth=1, label="cost = threshold")
    for ax, name in ((cost_ax, "episode cost"), (return_ax, "episode return")):
        ax.set_xlabel("threshold ε")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{env}: conditioned policies, mean ± std over seeds", fontsize=10)
    _legend_below(fig, cost_ax, 3.8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(paths: list[str | Path], out: str | Path) -> Path:
    """Read the run directories under ``paths`` and write ``OUT/report.md`` with its tables
    (``OUT/tables``) and figures (``OUT/figures``); see the module docstring.

    Raises:
        FileNotFoundError: A path does not exist or holds no run directory.
    """
    from saferl.runs import safe_name

    out = Path(out)
    runs = find_runs(paths)
    left_out: list[Unfinished] = []
    damaged: dict[Path, str] = {}  # a damaged run is named and left out; the others go on
    members: list[MemberFigures] = []
    finished: list[Path] = []
    for run in runs:
        try:
            late = unfinished(run)
            if late is None:
                members += read_members(run)
                finished.append(run)
            else:
                left_out.append(late)
        except (ValueError, FileNotFoundError) as error:  # RunDirectoryError is a ValueError
            damaged[run] = str(error)
    if not finished:
        shown = ", ".join(repr(str(p)) for p in paths)
        if not left_out:
            raise FileNotFoundError(next(iter(damaged.values())) if len(damaged) == 1 else
                                    f"{shown} holds no readable run directory: every one is "
                                    f"damaged, e.g. {next(iter(damaged.values()))}")
        raise FileNotFoundError(f"{shown} holds no finished run directory ({len(left_out)} "
                                f"still training or interrupted, e.g. {left_out[0].text()}).")
    rows = group(members)
    num_costs = max((sum(1 for k in m.train if k.startswith("cost_") and "rate" not in k)
                     for m in members), default=1)
    tables, figures = out / "tables", out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    final = final_table(rows, num_costs)
    write_table(final, tables, "final")
    lines = ["# saferl report", "",
             f"{_count(len({m.run_dir for m in members}), 'run director', 'y', 'ies')}, "
             f"{_count(len(members), 'trained polic', 'y', 'ies')}."
             + "".join(f" {_count(len(group), kind + ' run director', 'y is', 'ies are')} "
                       f"left out (see the end)." for kind, group
                       in (("unfinished", left_out), ("damaged", damaged)) if group), "",
             *[line + "\n" for line in sweep_coverage(paths, set(finished))],
             *[f"Warning: {line}\n" for line in repeated_seeds(rows)],
             "## Final figures", "",
             f"**train_***: the stochastic policy's training batches, mean of the last {LAST} "
             "iterations with finished episodes"
             + ("; **eval_det** / **eval_sto**: the deployed policy's evaluation (`eval.json`), "
                "deterministic / stochastic" if any(k.startswith("eval_") for r in final
                                                    for k in r) else
                " (no run here has an `eval.json`: no evaluation columns)")
             + ". Mean ± std over seeds (a row of one seed shows its value alone); "
             "`within_share`: the share of seeds whose cost is within the limit. Rows "
             "whose settings differ are listed apart, the differing fields under `settings`.",
             "", markdown(final), "Tables: `tables/final.csv`, `tables/final.tex`.", ""]
    aggregate, note = aggregate_table(rows)
    lines += ["## Aggregates", "", note, ""]
    if aggregate:
        write_table(aggregate, tables, "aggregate")
        lines += [markdown(aggregate), "Tables: `tables/aggregate.csv`, `.tex`.", ""]
    versatile = versatile_table(rows)
    if versatile:
        write_table(versatile, tables, "versatile")
        lines += ["## Conditioned policies", "", "Avg R, Avg CV, R-G, CV-G over the evaluation "
                  "thresholds (`versatile.json`; R-G / CV-G over those not trained on), mean ± "
                  "std over seeds.", "", markdown(versatile), ""]
    normalised, note = normalised_table(rows, num_costs)
    if normalised or "ppo rows" in note:
        lines += ["## Normalised against PPO", "", "Safety Gym's metrics (Ray et al. 2019), per "
                  "seed against unconstrained PPO's mean on the same task: `norm_return` = "
                  "J_r / J_r^PPO, `norm_cost` = max(0, J_c − d) / max(1e-6, J_c^PPO − d), "
                  "`norm_cost_rate` = ρ_c / ρ_c^PPO (training cost rate). " + note, ""]
        if normalised:
            write_table(normalised, tables, "normalised")
            lines += [markdown(normalised), "Tables: `tables/normalised.csv`, `.tex`.", ""]
    lines += ["## Figures", ""]
    for env in sorted({r.env for r in rows}):
        stem = safe_name(env)
        curve = curves_figure(rows, env, figures / f"curves_{stem}.png", num_costs)
        lines += [f"![{env}](figures/{curve.name})", ""]
        threshold = versatile_figure(rows, env, figures / f"versatile_{stem}.png")
        if threshold is not None:
            lines += [f"![{env} against the threshold](figures/{threshold.name})", ""]
    if left_out or damaged:
        lines += ["## Not in this report", ""]
    if left_out:
        lines += ["Unfinished runs (still training, or interrupted: `saferl train --resume` or "
                  "the sweep's command finishes them):", "",
                  *[f"- {u.text()}" for u in left_out], ""]
    if damaged:
        lines += ["Damaged run directories (a file missing or unreadable):", "",
                  *[f"- `{run}`: {reason}" for run, reason in damaged.items()], ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
