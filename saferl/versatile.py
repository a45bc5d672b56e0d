"""Evaluate a threshold-conditioned policy across cost thresholds (versatile safe RL).

One conditioned policy (CCPO) acts at every threshold ``ε`` of a list; each threshold runs the
same episodes (same initial states and action noise on native tasks, the same environment seed
on host ones), so the thresholds differ only by the policy's response. The result holds every
episode, the per-threshold table (mean ± std over seeds of each seed's mean return and cost),
the metrics of docs/algorithms/ccpo.md (Avg R, Avg CV, R-G, CV-G; :mod:`saferl.core.versatile`),
a CSV and the ``versatile.png`` plot: episode cost against threshold beside the line cost =
threshold, and return against threshold.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saferl.core.conditioning import threshold_array
from saferl.core.versatile import VersatileMetrics, trained_on, versatile_metrics
from saferl.envs.native import NATIVE_TASKS, make_task
from saferl.evaluation import evaluate, native_episodes
from saferl.files import write_json


@dataclass
class VersatileResult:
    """Every evaluation episode of one or more seeds' policies at every threshold.

    Attributes:
        thresholds: ``[T, m]`` evaluation thresholds.
        returns: ``[S, T, E]`` episode returns (seeds × thresholds × episodes).
        costs: ``[S, T, E, m]`` episode costs.
        seeds: The policies' training seeds.
        behaviour: ``[N_b, m]`` the behaviour thresholds the policies were trained on.
        cost_names: One name per constraint.
        deterministic: Mean actions (``True``) or samples.
    """

    thresholds: np.ndarray
    returns: np.ndarray
    costs: np.ndarray
    seeds: tuple[int, ...]
    behaviour: np.ndarray
    cost_names: tuple[str, ...]
    deterministic: bool

    def metrics(self) -> VersatileMetrics:
        """Avg R, Avg CV, R-G and CV-G per seed (see
        :func:`saferl.core.versatile.versatile_metrics`)."""
        return versatile_metrics(self.thresholds, self.returns, self.costs, self.behaviour)

    def table(self) -> list[dict[str, float]]:
        """One row per threshold: ``threshold_i``, ``return_mean``/``_std`` and, per
        constraint, ``cost_i_mean``/``_std`` and ``violation_i`` (``max(0, cost − ε)`` of the
        mean over seeds); means and population stds over seeds of each seed's episode mean."""
        rows = []
        seed_returns = self.returns.mean(axis=2)  # [S, T]
        seed_costs = self.costs.mean(axis=2)  # [S, T, m]
        for t, threshold in enumerate(self.thresholds):
            row = {f"threshold_{i}": float(x) for i, x in enumerate(threshold)}
            row["return_mean"] = float(seed_returns[:, t].mean())
            row["return_std"] = float(seed_returns[:, t].std())
            for i in range(self.costs.shape[-1]):
                row[f"cost_{i}_mean"] = float(seed_costs[:, t, i].mean())
                row[f"cost_{i}_std"] = float(seed_costs[:, t, i].std())
                row[f"violation_{i}"] = max(0.0, row[f"cost_{i}_mean"] - float(threshold[i]))
            row["trained_on"] = float(bool(trained_on(threshold[None], self.behaviour)[0]))
            rows.append(row)
        return rows

    def record(self) -> dict[str, Any]:
        """JSON-ready: the table, the metrics' mean and std over seeds, and what was run."""
        return {"thresholds": self.thresholds.tolist(), "seeds": list(self.seeds),
                "episodes": int(self.returns.shape[2]), "deterministic": self.deterministic,
                "behaviour_thresholds": self.behaviour.tolist(),
                "cost_names": list(self.cost_names), "table": self.table(),
                "metrics": {name: {"mean": mean, "std": std}
                            for name, (mean, std) in self.metrics().summary().items()},
                "per_seed": self.per_seed()}

    def per_seed(self) -> dict[str, dict[str, float]]:
        """Each seed's ``Avg R``, ``Avg CV``, ``R-G``, ``CV-G`` and, per constraint ``i``,
        ``CV_i`` / ``CV-G_i`` (``{seed: {name: value}}``)."""
        columns = self.metrics().columns()
        return {str(seed): {name: float(values[index]) for name, values in columns.items()}
                for index, seed in enumerate(self.seeds)}

    def write_csv(self, path: str | Path) -> Path:
        """Write :meth:`table` as CSV (one row per threshold)."""
        path = Path(path)
        rows = self.table()
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return path

    def plot(self, path: str | Path, title: str = "") -> Path:
        """Write ``versatile.png``: per constraint, the mean episode cost against the threshold
        with the line cost = threshold; then the return against the threshold (the first
        constraint's threshold on the x axis); mean ± std over seeds, behaviour thresholds
        marked."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        m = self.thresholds.shape[1]
        seed_returns = self.returns.mean(axis=2)
        seed_costs = self.costs.mean(axis=2)
        several = len(self.seeds) > 1
        band = f"mean ± std over {len(self.seeds)} seeds" if several else "mean"
        fig, axes = plt.subplots(1, m + 1, figsize=(4.8 * (m + 1), 3.8), squeeze=False)
        for i in range(m + 1):
            ax = axes[0][i]
            x = self.thresholds[:, i if i < m else 0]
            values = seed_costs[:, :, i] if i < m else seed_returns
            mean, std = values.mean(axis=0), values.std(axis=0)
            color = "C3" if i < m else "C0"
            ax.plot(x, mean, "o-", color=color, markersize=3.5, label=band)
            if several:
                ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2)
            for b, threshold in enumerate(self.behaviour[:, 0 if i == m else i]):
                ax.axvline(threshold, color="0.6", linestyle=":", linewidth=1,
                           label="trained on (Ẽ)" if b == 0 else None)
            if i < m:
                ax.plot(x, x, "k--", linewidth=1, label="cost = threshold")
                ax.set_ylabel(f"episode cost: {self.cost_names[i]}")
                ax.set_xlabel(f"threshold ε{'_' + str(i) if m > 1 else ''}")
            else:
                ax.set_ylabel("episode return")
                ax.set_xlabel(f"threshold ε{'_0' if m > 1 else ''}")
            ax.grid(alpha=0.3)
            ax.legend(loc="best", fontsize=7)
        mode = "deterministic" if self.deterministic else "stochastic"
        episodes = self.returns.shape[2]
        fig.suptitle(f"{title + ' — ' if title else ''}{episodes} {mode} episodes per threshold"
                     f" and seed", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def evaluate_versatile(policy: Any | Sequence[Any], thresholds: Sequence[Any] | np.ndarray,
                       episodes: int = 10, deterministic: bool = True, seed: int = 10_000,
                       env: str | None = None,
                       env_kwargs: dict[str, Any] | None = None) -> VersatileResult:
    """Evaluate a threshold-conditioned policy (or one per seed) at every threshold.

    On native tasks every policy × threshold × episode runs in one vmapped, jitted call; on host
    environments (Bullet, gymnasium) one :func:`~saferl.evaluation.evaluate` per policy and
    threshold, with the same environment seed.

    Args:
        policy: A conditioned :class:`~saferl.policy.Policy`, or several of one run (seeds).
        thresholds: Evaluation thresholds: numbers with one constraint; with ``m``, vectors of
            ``m`` (or ``m`` consecutive numbers per vector).
        episodes: Episodes per threshold and policy (≥ 1).
        deterministic: Mean actions (``True``) or samples.
        seed: Seed of the evaluation environments.
        env: Environment id (default: the one the policies were trained on).
        env_kwargs: Its keyword arguments (default: the training ones).

    Returns:
        A :class:`VersatileResult`.

    Raises:
        ValueError: A policy that is not threshold-conditioned, an empty threshold list, a
            negative or non-finite threshold, a vector of the wrong length, or ``episodes < 1``.
    """
    policies = list(policy) if isinstance(policy, Sequence) else [policy]
    if not policies:
        raise ValueError("evaluate_versatile needs at least one policy; got none.")
    for candidate in policies:
        if not hasattr(candidate, "conditioning"):
            raise TypeError(f"evaluate_versatile takes saferl policies (saferl.load(RUN_DIR)); "
                            f"got {type(candidate).__name__}.")
        if candidate.conditioning is None:
            algo = candidate.info.get("algo", "given")
            raise ValueError(f"evaluate_versatile needs a threshold-conditioned policy (ccpo); "
                             f"the {algo} policy was trained for fixed cost limits.")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1; got {episodes}.")
    first = policies[0]
    m = first.conditioning.low.shape[0]
    if isinstance(thresholds, np.ndarray):
        thresholds = thresholds.tolist()
    grid = threshold_array(thresholds, m, "thresholds")
    first.thresholds_for(grid, grid.shape[0])  # warns once if a threshold extrapolates
    info = first.info
    env_id = env or info["env"]
    kwargs = dict(info.get("env_kwargs") or {}) if env_kwargs is None and env is None \
        else dict(env_kwargs or {})
    if env_id in NATIVE_TASKS:
        task = make_task(env_id, **kwargs)
        returns, costs, _ = native_episodes(policies, task, episodes, deterministic, seed, grid)
        names = tuple(task.spec.cost_names)
    else:
        results = [[evaluate(p, env=env_id, episodes=episodes, deterministic=deterministic,
                             seed=seed, env_kwargs=kwargs, threshold=threshold)
                    for threshold in grid] for p in policies]
        returns = np.asarray([[r.returns for r in row] for row in results])
        costs = np.asarray([[r.costs for r in row] for row in results])
        names = results[0][0].cost_names
    return VersatileResult(grid, returns, costs,
                           tuple(int(p.info.get("seed", i)) for i, p in enumerate(policies)),
                           first.conditioning.behaviour, names, deterministic)


def write_versatile(run_dir: str | Path, result: VersatileResult, title: str = "",
                    stem: str | Path | None = None) -> dict[str, Path]:
    """Write ``versatile.csv``, ``versatile.json`` and ``versatile.png`` into ``run_dir`` (or
    ``STEM.csv``, ``STEM.json`` and ``STEM.png``)."""
    stem = Path(run_dir) / "versatile" if stem is None else Path(stem)
    json_path = stem.with_name(stem.name + ".json")
    write_json(json_path, result.record())
    return {"csv": result.write_csv(stem.with_name(stem.name + ".csv")), "json": json_path,
            "plot": result.plot(stem.with_name(stem.name + ".png"), title)}
