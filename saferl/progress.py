"""Terminal output: a progress bar with live safety figures, and the final summary table.

On a terminal the figures live in a rich progress bar. Anywhere else (``> log``, ``nohup``, a
cluster job, ``| tee``) a plain line is printed every ``interval`` seconds (default 10;
``SAFERL_PROGRESS_INTERVAL`` sets it), so that a log shows progress while the run goes on.
Iterations that finish no episode (common off-policy) show the latest finished episodes,
marked as carried: ``R 412.3 C0 5.00/10 (latest episodes: 3 it. ago)``.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column, Table

from saferl.envs.core import EnvSpec

EPISODE_METRICS = ("rollout/ep_return", "rollout/ep_cost_", "rollout/behaviour_")


class PipeSafeConsole(Console):
    """A rich console that falls silent when its reader goes away.

    rich's default answer to a closed pipe (``saferl train 2>&1 | tee log`` after Ctrl-C killed
    ``tee``) is ``SystemExit(1)``, which would end a run before its checkpoint is written.
    """

    def on_broken_pipe(self) -> None:
        """Stop writing; the run goes on (and saves) without its display."""
        self.quiet = True


def _mean(values: Any) -> float:
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _clock(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def default_interval() -> float:
    """Seconds between plain progress lines off a terminal (``SAFERL_PROGRESS_INTERVAL``)."""
    try:
        return max(0.0, float(os.environ.get("SAFERL_PROGRESS_INTERVAL", "10")))
    except ValueError:
        return 10.0


class EpisodeCarry:
    """The latest finished-episode figures per seed, carried over iterations that finished none.

    ``update(metrics)`` returns the metrics with every episode figure (return, each cost)
    replaced, per seed, by its latest finite value, and records how many iterations ago that
    value was measured (``age``: 0 when fresh).
    """

    def __init__(self) -> None:
        self.latest: dict[str, np.ndarray] = {}
        self.age: np.ndarray | None = None

    def update(self, metrics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Metrics with carried episode figures (see the class docstring)."""
        out = dict(metrics)
        ages = None
        for name, value in metrics.items():
            if not name.startswith(EPISODE_METRICS):
                continue
            value = np.atleast_1d(np.asarray(value, dtype=float))
            fresh = np.isfinite(value)
            last = self.latest.get(name, np.full(value.shape, np.nan))
            self.latest[name] = np.where(fresh, value, last)
            out[name] = self.latest[name]
            if name == "rollout/ep_return":
                previous = self.age if self.age is not None else np.zeros(value.shape, int)
                ages = np.where(fresh, 0, previous + 1)
        if ages is not None:
            self.age = ages
        return out

    def carried_for(self) -> int:
        """Iterations since the oldest of the shown figures was measured (0: all fresh)."""
        if self.age is None or not np.isfinite(self.latest.get("rollout/ep_return", [0])).any():
            return 0
        return int(self.age.max())


class ProgressDisplay:
    """A progress display: steps, steps/s, episode return, cost per constraint, λ, ETA."""

    def __init__(self, total_steps: int, spec: EnvSpec, cost_limit: tuple[float, ...],
                 enabled: bool = True, start_steps: int = 0,
                 console: Console | None = None, interval: float | None = None,
                 behaviour: np.ndarray | None = None,
                 member_limits: np.ndarray | None = None) -> None:
        """A display over ``total_steps`` starting at ``start_steps`` (on stderr by default).

        Args:
            total_steps: Steps per seed at the end of the run.
            spec: The environment spec.
            cost_limit: One limit per constraint.
            enabled: ``False`` shows nothing.
            start_steps: Steps already trained (resume).
            console: Where to write (default: stderr).
            interval: Seconds between plain lines when ``console`` is not a terminal (default
                :func:`default_interval`); the first and the last update are always printed.
            behaviour: A threshold-conditioned run's behaviour thresholds ``[N_b, m]``: each
                cost is shown per behaviour threshold against it (``C0@20 12.3``), not
                against ``cost_limit``.
            member_limits: A grid of cost limits' members' limits ``[members, m]``: each cost
                is shown per limit, the mean of that limit's members against it
                (``C0 8.1/20 17.9/40``).
        """
        self.enabled = enabled
        self.behaviour = behaviour
        self.member_limits = member_limits
        self.spec, self.cost_limit = spec, cost_limit
        self.console = console or stderr_console()
        self.total_steps = total_steps
        self.plain = not self.console.is_terminal
        self.interval = default_interval() if interval is None else interval
        self.carry = EpisodeCarry()
        if self.plain:
            # Wide enough for every figure: rich would cut a line at 80 columns off a terminal.
            self.console.width = max(self.console.width, 120 + 24 * len(cost_limit))
        # The times before the figures: on an 80-column terminal rich shrinks the columns, and
        # the figures (last, cut at their end) are what may go, not the elapsed time and ETA.
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=16),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f}"), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[sps]} steps/s"),
            TextColumn("{task.fields[stats]}",
                       table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
            console=self.console, disable=not enabled or self.plain, transient=False,
            expand=True)
        self._task = self._progress.add_task("train", total=total_steps, completed=start_steps,
                                             sps="-", stats="")
        self._start_steps = self._last_steps = start_steps
        self._started = time.time()
        self._last_time: float | None = None
        self._last_line: float | None = None
        self._pending: str | None = None

    def __enter__(self) -> ProgressDisplay:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)
        if self._pending is not None:  # the last line off a terminal is always shown
            self._print(self._pending)
            self._pending = None

    def note(self, message: str) -> None:
        """Print one line of information (above the bar on a terminal)."""
        if self.enabled:
            self._print(message)

    def _print(self, line: str) -> None:
        try:
            self.console.print(line, highlight=False, markup=False, soft_wrap=True)
        except OSError:  # a closed pipe (`| tee` ended by Ctrl-C) must not stop the run
            pass

    def stats(self, metrics: dict[str, np.ndarray]) -> str:
        """The figures of one update: return, each cost against its limit, λ, carry marker."""
        metrics = self.carry.update(metrics)
        ret = _mean(metrics.get("rollout/ep_return", np.nan))
        if math.isnan(ret):
            return "no episode finished yet"
        parts = [f"R {ret:.1f}"]
        for i, limit in enumerate(self.cost_limit):
            if self.behaviour is not None:
                parts += [f"C{i}@{threshold:g} "
                          f"{_mean(metrics.get(f'rollout/behaviour_{b}/ep_cost_{i}', np.nan)):.2f}"
                          for b, threshold in enumerate(self.behaviour[:, i])]
                continue
            cost = np.atleast_1d(np.asarray(metrics.get(f"rollout/ep_cost_{i}", np.nan), float))
            multiplier = metrics.get(f"lagrange/lambda_{i}")
            if self.member_limits is not None and cost.shape[0] == len(self.member_limits):
                grid = self.member_limits[:, i]  # per limit: its members' mean
                values = list(dict.fromkeys(grid.tolist()))
                parts.append(f"C{i} " + " ".join(f"{_mean(cost[grid == v]):.2f}/{v:g}"
                                                 for v in values))
                if multiplier is not None:
                    multiplier = np.atleast_1d(np.asarray(multiplier, float))
                    parts.append(f"λ{i} " + "/".join(f"{_mean(multiplier[grid == v]):.3f}"
                                                     for v in values))
                continue
            parts.append(f"C{i} {_mean(cost):.2f}/{limit:g}")
            if multiplier is not None:
                parts.append(f"λ{i} {_mean(multiplier):.3f}")
        age = self.carry.carried_for()
        if age:
            parts.append(f"(latest episodes: {age} it. ago)")
        return " ".join(parts)

    def update(self, steps: int, metrics: dict[str, np.ndarray]) -> None:
        """Advance to ``steps`` and refresh the figures (means over seeds)."""
        now = time.time()
        stats = self.stats(metrics)
        if not self.enabled:
            return
        sps = "-"
        if self._last_time is not None and now > self._last_time:
            sps = f"{(steps - self._last_steps) / (now - self._last_time):,.0f}"
        self._last_steps, self._last_time = steps, now
        if not self.plain:
            self._progress.update(self._task, completed=steps, sps=sps, stats=stats)
            return
        elapsed = now - self._started
        done = steps - self._start_steps
        eta = (self.total_steps - steps) * elapsed / done if done > 0 else math.nan
        line = (f"train {steps:,}/{self.total_steps:,} steps "
                f"({100 * steps / max(1, self.total_steps):.1f}%) {sps} steps/s {stats} "
                f"elapsed {_clock(elapsed)} ETA {_clock(eta) if math.isfinite(eta) else '-'}")
        if self._last_line is None or now - self._last_line >= self.interval:
            self._print(line)
            self._last_line, self._pending = now, None
        else:
            self._pending = line


def stderr_console() -> Console:
    """A console on stderr; off a terminal wide enough that tables keep one line per row."""
    return wide_console(stderr=True)


def wide_console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr); off a terminal (a file, a pipe) 160 columns wide, so
    that tables keep one line per row instead of rich's default 80 (``saferl eval > file``
    split ``42.30 ±`` from ``29.76``)."""
    console = PipeSafeConsole(stderr=stderr)
    if not console.is_terminal:
        console.width = max(console.width, 160)
    return console


def _window_text(windows: dict[int, int]) -> str:
    ks = sorted(set(windows.values()))
    if not ks or ks == [0]:
        return "no iteration finished an episode"
    span = f"{ks[0]}" if len(ks) == 1 else f"{ks[0]}–{ks[-1]}"
    return f"mean of the last {span} iteration{'s' if ks[-1] != 1 else ''} with finished episodes"


def print_summary(summary: dict[str, Any], spec: EnvSpec, cost_limit: tuple[float, ...],
                  run_dir: Path, console: Console | None = None) -> None:
    """Print the final training figures, the deployed policy's evaluation and the verdicts."""
    console = console or stderr_console()
    windows = summary.get("windows", {s: summary["window"] for s in summary["per_seed"]})
    console.print(f"saferl: training figures of {run_dir} ({_window_text(windows)}; the "
                  f"stochastic policy's training batches)", highlight=False, soft_wrap=True)
    table = Table()
    member_limits = summary.get("member_limits")  # a grid of cost limits
    table.add_column("seed" if member_limits is None else "seed@limit")
    table.add_column("return", justify="right")
    keys = ["rollout/ep_return"]
    behaviour = summary.get("behaviour_thresholds")
    for i, name in enumerate(spec.cost_names):
        if behaviour is None:
            table.add_column(f"{name} (≤ {cost_limit[i]:g})" if member_limits is None else
                             f"{name} (≤ its limit)", justify="right")
            keys.append(f"rollout/ep_cost_{i}")
        for b, thresholds in enumerate(behaviour or []):  # conditioned: per threshold
            table.add_column(f"{name} at ε = {thresholds[i]:g}", justify="right")
            keys.append(f"behaviour_{b}/ep_cost_{i}")
        table.add_column(f"cost rate {i}", justify="right")
        keys.append(f"train/cost_rate_{i}")
    for seed, figures in summary["per_seed"].items():
        table.add_row(str(seed), *(f"{figures[k]:.3f}" if "rate" in k else f"{figures[k]:.2f}"
                                   for k in keys))
    groups = {"": list(summary["per_seed"].values())} if member_limits is None else {
        f" @{label.split('@', 1)[1]}": [summary["per_seed"][m] for m in summary["per_seed"]
                                        if m.split("@", 1)[1] == label.split("@", 1)[1]]
        for label in summary["per_seed"]}
    for group, rows in groups.items():  # mean ± std over the seeds (of each limit)
        if len(rows) > 1:
            table.add_row(f"mean ± std{group}", *(
                f"{np.mean([r[k] for r in rows]):.2f} ± {np.std([r[k] for r in rows]):.2f}"
                for k in keys))
    console.print(table)
    verdict = {True: "every constraint satisfied", False: "a constraint is violated",
               None: "no episode finished, so constraint satisfaction is unknown"}[
        summary["constraints_satisfied"]]
    if behaviour is not None:
        verdict = {True: "at every behaviour threshold the episode cost is within it",
                   False: "at a behaviour threshold the episode cost exceeds it",
                   None: "no episode finished at some behaviour threshold, so whether its "
                         "cost is within it is unknown"}[summary["constraints_satisfied"]]
    console.print(f"training: {verdict}.")
    evaluation = summary.get("evaluation")
    if evaluation:
        print_evaluation(evaluation, spec.cost_names, cost_limit, console)
    if summary.get("versatile"):
        console.print("deployed policy at the behaviour thresholds (saferl eval RUN "
                      "--thresholds … evaluates any):", highlight=False)
        print_versatile(summary["versatile"], console)
    timing = summary.get("timing")
    if timing:
        console.print(
            f"{timing['env_steps']:,} steps per {_count_text(timing)} in "
            f"{_clock(timing['wall_time'])} "
            f"({timing['steps_per_second']:,.0f} environment steps/s in all); curves: "
            f"{run_dir / 'curves.png'}", highlight=False)
    else:
        console.print(f"curves: {run_dir / 'curves.png'}", highlight=False)


def _count_text(timing: dict[str, Any]) -> str:
    """``seed × 2 seeds``, or in a grid of cost limits ``member × 6 members (2 seeds × 3
    limits)``."""
    seeds, count = timing["seeds"], timing.get("members", timing["seeds"])
    text = f"{seeds} seed{'s' if seeds > 1 else ''}"
    if count == seeds:
        return f"seed × {text}"
    return f"member × {count} members ({text} × {count // seeds} limits)"


def print_evaluation(evaluation: dict[str, Any], cost_names: tuple[str, ...],
                     cost_limit: tuple[float, ...], console: Console | None = None) -> None:
    """Print a deployed-policy evaluation record (see :func:`saferl.evaluation.evaluate_run`)."""
    console = console or stderr_console()
    member_limits = evaluation.get("member_limits")  # a grid of cost limits
    console.print(f"deployed policy: {evaluation['episodes']} evaluation episodes per mode and "
                  f"{'seed' if member_limits is None else 'member'} (environment seed "
                  f"{evaluation['env_seed']})", highlight=False)
    table = Table()
    table.add_column("seed" if member_limits is None else "seed@limit")
    table.add_column("mode")
    table.add_column("return", justify="right")
    for i, name in enumerate(cost_names):
        table.add_column(f"{name} (≤ {cost_limit[i]:g})" if member_limits is None else
                         f"{name} (≤ its limit)", justify="right")
        table.add_column("episodes over", justify="right")
        table.add_column("verdict")
    for seed, modes in evaluation["per_seed"].items():
        for mode, figures in modes.items():
            row = [str(seed), mode, f"{figures['return_mean']:.2f} ± {figures['return_std']:.2f}"]
            for i in range(len(cost_names)):
                row += [f"{figures[f'cost_{i}_mean']:.2f} ± {figures[f'cost_{i}_std']:.2f}",
                        f"{100 * figures[f'cost_{i}_over_share']:.0f}%",
                        "within" if figures[f"cost_{i}_within"] else "OVER"]
            table.add_row(*row)
    console.print(table)
    # One line per mode, never wrapped off a terminal: ``grep "over the limit"`` finds it whole.
    console.print(evaluation_verdict(evaluation, cost_names, cost_limit), highlight=False,
                  soft_wrap=True)


def evaluation_verdict(evaluation: dict[str, Any], cost_names: tuple[str, ...],
                       cost_limit: tuple[float, ...]) -> str:
    """One sentence per mode, one line each: is every constraint's mean episode cost within its
    limit?"""
    sentences = []
    for mode in ("deterministic", "stochastic"):
        limits = evaluation.get("member_limits", {})
        over = [f"{name} of {'member' if seed in limits else 'seed'} {seed} "
                f"({modes[mode][f'cost_{i}_mean']:.2f} > "
                f"{limits.get(seed, cost_limit)[i]:g})"
                for seed, modes in evaluation["per_seed"].items() if mode in modes
                for i, name in enumerate(cost_names) if not modes[mode][f"cost_{i}_within"]]
        if not any(mode in modes for modes in evaluation["per_seed"].values()):
            continue
        sentences.append(f"deployed {mode} policy: " + (
            "every constraint within its limit." if not over else
            f"over the limit on {', '.join(over)}."))
    return "\n".join(sentences)


def print_versatile(record: dict[str, Any], console: Console | None = None) -> None:
    """Print a versatile evaluation (:meth:`saferl.versatile.VersatileResult.record`): per
    threshold the return and each cost beside the threshold (mean ± std over seeds), then Avg R,
    Avg CV, R-G and CV-G (docs/algorithms/ccpo.md)."""
    console = console or stderr_console()
    seeds = len(record["seeds"])
    mode = "deterministic" if record["deterministic"] else "stochastic"
    console.print(f"{record['episodes']} {mode} episodes per threshold and seed, {seeds} "
                  f"seed{'s' if seeds > 1 else ''}" +
                  (" (mean ± std over seeds)" if seeds > 1 else ""), highlight=False)
    table = Table()
    m = len(record["cost_names"])
    table.add_column("threshold" if m == 1 else "thresholds", justify="right")
    table.add_column("return", justify="right")
    for name in record["cost_names"]:
        table.add_column(f"{name}", justify="right")
        table.add_column("violation", justify="right")
    table.add_column("trained on")
    for row in record["table"]:
        thresholds = ", ".join(f"{row[f'threshold_{i}']:g}" for i in range(m))
        cells = [thresholds, f"{row['return_mean']:.2f} ± {row['return_std']:.2f}"]
        for i in range(m):
            cells += [f"{row[f'cost_{i}_mean']:.2f} ± {row[f'cost_{i}_std']:.2f}",
                      f"{row[f'violation_{i}']:.2f}"]
        cells.append("yes" if row["trained_on"] else "")
        table.add_row(*cells)
    console.print(table)
    figures = []
    for name in ("Avg R", "Avg CV", "R-G", "CV-G"):
        mean, std = record["metrics"][name]["mean"], record["metrics"][name]["std"]
        figures.append(f"{name} n/a (every threshold is a behaviour threshold)"
                       if math.isnan(mean) else f"{name} {mean:.2f} ± {std:.2f}")
    console.print("; ".join(figures) + (" (over seeds)" if seeds > 1 else ""), highlight=False)
