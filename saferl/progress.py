"""Terminal output: a progress bar with live safety figures, and the final summary table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from saferl.envs.core import EnvSpec


def _mean(values: Any) -> float:
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


class ProgressDisplay:
    """A rich progress bar: steps, steps/s, episode return, cost per constraint, λ, ETA."""

    def __init__(self, total_steps: int, spec: EnvSpec, cost_limit: tuple[float, ...],
                 enabled: bool = True, start_steps: int = 0,
                 console: Console | None = None) -> None:
        """A bar over ``total_steps`` starting at ``start_steps`` (on stderr by default).

        Output that is not a terminal (a log file, CI) gets a line wide enough for every
        figure (rich would cut it at 80 columns), written when the bar stops.
        """
        self.enabled = enabled
        self.spec, self.cost_limit = spec, cost_limit
        console = console or Console(stderr=True)
        if not console.is_terminal:
            console.width = max(console.width, 100 + 24 * len(cost_limit))
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=24),
            MofNCompleteColumn(), TextColumn("{task.fields[sps]} steps/s"),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=console, disable=not enabled, transient=False)
        self._task = self._progress.add_task("train", total=total_steps, completed=start_steps,
                                             sps="-", stats="")
        self._last_steps = start_steps
        self._last_time: float | None = None

    def __enter__(self) -> ProgressDisplay:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)

    def update(self, steps: int, metrics: dict[str, np.ndarray]) -> None:
        """Advance to ``steps`` and refresh the figures (means over seeds)."""
        if not self.enabled:
            return
        import time

        now = time.time()
        sps = "-"
        if self._last_time is not None and now > self._last_time:
            sps = f"{(steps - self._last_steps) / (now - self._last_time):,.0f}"
        self._last_steps, self._last_time = steps, now
        parts = [f"R {_mean(metrics.get('rollout/ep_return', np.nan)):.1f}"]
        for i, limit in enumerate(self.cost_limit):
            parts.append(f"C{i} {_mean(metrics.get(f'rollout/ep_cost_{i}', np.nan)):.2f}/{limit:g}")
            if f"lagrange/lambda_{i}" in metrics:
                parts.append(f"λ{i} {_mean(metrics[f'lagrange/lambda_{i}']):.3f}")
        self._progress.update(self._task, completed=steps, sps=sps, stats=" ".join(parts))


def print_summary(summary: dict[str, Any], spec: EnvSpec, cost_limit: tuple[float, ...],
                  run_dir: Path) -> None:
    """Print the per-seed and mean ± std final figures as a table."""
    console = Console(stderr=True)
    table = Table(title=f"saferl: final figures (mean of the last {summary['window']} "
                        f"iterations) — {run_dir}")
    table.add_column("seed")
    table.add_column("return", justify="right")
    for i, name in enumerate(spec.cost_names):
        table.add_column(f"{name} (≤ {cost_limit[i]:g})", justify="right")
        table.add_column(f"cost rate {i}", justify="right")
    keys = ["rollout/ep_return"]
    for i in range(spec.num_costs):
        keys += [f"rollout/ep_cost_{i}", f"train/cost_rate_{i}"]
    for seed, figures in summary["per_seed"].items():
        table.add_row(str(seed), *(f"{figures[k]:.3f}" if "rate" in k else f"{figures[k]:.2f}"
                                   for k in keys))
    if len(summary["per_seed"]) > 1:
        table.add_row("mean ± std", *(f"{summary['mean_std'][k][0]:.2f} ± "
                                      f"{summary['mean_std'][k][1]:.2f}" for k in keys))
    console.print(table)
    verdict = {True: "every constraint satisfied", False: "a constraint is violated",
               None: "no episode finished, so constraint satisfaction is unknown"}[
        summary["constraints_satisfied"]]
    console.print(f"{verdict}; curves: {run_dir / 'curves.png'}")
