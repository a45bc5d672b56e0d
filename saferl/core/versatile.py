"""Metrics of a versatile (threshold-conditioned) policy over evaluation thresholds (numpy).

docs/algorithms/ccpo.md / Yao et al. 2023, Table 1. For evaluation thresholds ``ε ∈ E_eval``
and one seed:

* **Avg R** — the mean over ``ε`` of the mean episode return at ``ε``;
* **Avg CV** — the mean over ``ε`` of the violation ``max(0, mean episode cost − ε)``; with ``m``
  constraints the violation of each constraint (``CV_i``) and their sum (Avg CV);
* **R-G**, **CV-G** — the same over the *generalised* thresholds, those not in the behaviour set
  ``Ẽ`` the policy was trained on (NaN when every evaluation threshold is in ``Ẽ``).

The violation is of the mean cost over the episodes at ``ε`` (not the mean of per-episode
violations), as the paper's "average constraint violation" of the policy at ``ε``. Results are
reported as mean ± std over seeds (:meth:`VersatileMetrics.summary`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VersatileMetrics:
    """Per-seed versatile metrics (each ``[S]``, per constraint ``[S, m]``)."""

    avg_return: np.ndarray
    avg_violation: np.ndarray
    avg_violation_per_constraint: np.ndarray
    generalized_return: np.ndarray
    generalized_violation: np.ndarray
    generalized_violation_per_constraint: np.ndarray

    def columns(self) -> dict[str, np.ndarray]:
        """``{name: [S] per seed}``: ``Avg R``, ``Avg CV``, ``R-G``, ``CV-G``, and ``CV_i`` /
        ``CV-G_i`` per constraint ``i`` (the two Avg CV / CV-G are their sums)."""
        columns = {"Avg R": self.avg_return, "Avg CV": self.avg_violation,
                   "R-G": self.generalized_return, "CV-G": self.generalized_violation}
        for i in range(self.avg_violation_per_constraint.shape[1]):
            columns[f"CV_{i}"] = self.avg_violation_per_constraint[:, i]
            columns[f"CV-G_{i}"] = self.generalized_violation_per_constraint[:, i]
        return columns

    def summary(self, ddof: int = 0) -> dict[str, tuple[float, float]]:
        """``{name: (mean, std)}`` over seeds of every :meth:`columns` entry. ``ddof`` of the
        std (0: population, as numpy; one seed gives std 0)."""
        return {name: (float(np.mean(values)),
                       float(np.std(values, ddof=ddof)) if values.size > ddof else float("nan"))
                for name, values in self.columns().items()}


def trained_on(thresholds: np.ndarray, behaviour: Sequence[float] | np.ndarray) -> np.ndarray:
    """``[T]`` booleans: is each threshold vector of ``thresholds`` (``[T, m]``) one of the
    behaviour thresholds ``Ẽ`` (``[N]`` or ``[N, m]``)? Every component must match, to 1e-9."""
    eps = np.asarray(thresholds, np.float64)
    known = np.asarray(behaviour, np.float64).reshape(-1, eps.shape[-1])
    return np.any(np.all(np.isclose(eps[:, None, :], known[None], rtol=0, atol=1e-9), axis=-1),
                  axis=1)


def versatile_metrics(thresholds: Sequence[float] | np.ndarray, returns: np.ndarray,
                      costs: np.ndarray,
                      behaviour: Sequence[float] | np.ndarray | None = None) -> VersatileMetrics:
    """Avg R, Avg CV, R-G and CV-G of every seed from evaluation episodes.

    Args:
        thresholds: ``[T]`` (one constraint) or ``[T, m]`` evaluation thresholds.
        returns: ``[S, T, E]`` episode returns: seeds × thresholds × episodes.
        costs: ``[S, T, E, m]`` episode costs (``[S, T, E]`` with one constraint).
        behaviour: ``[N]`` or ``[N, m]`` behaviour thresholds ``Ẽ`` (``None``: none, so the
            generalised metrics are over every threshold).

    Returns:
        :class:`VersatileMetrics`.

    Raises:
        ValueError: No thresholds, or arrays whose shapes disagree (one sentence each).
    """
    eps = np.asarray(thresholds, np.float64)
    if eps.size == 0:
        raise ValueError("thresholds must hold at least one evaluation threshold; got an empty "
                         "list.")
    eps = eps.reshape(eps.shape[0], -1)  # [T, m]
    returns = np.asarray(returns, np.float64)
    costs = np.asarray(costs, np.float64)
    if costs.ndim == 3:
        costs = costs[..., None]
    count, m = eps.shape
    if returns.ndim != 3 or returns.shape[1] != count:
        raise ValueError(f"returns must be [seeds, {count} thresholds, episodes]; got shape "
                         f"{returns.shape}.")
    if costs.shape != (*returns.shape, m):
        raise ValueError(f"costs must be [seeds, thresholds, episodes, {m}] matching returns "
                         f"{returns.shape}; got shape {costs.shape}.")
    seen = np.zeros(count, bool) if behaviour is None else trained_on(eps, behaviour)
    mean_return = returns.mean(axis=2)  # [S, T]
    violation = np.maximum(0.0, costs.mean(axis=2) - eps[None])  # [S, T, m]
    new = ~seen
    nan = np.full(returns.shape[0], np.nan)
    if new.any():
        g_return = mean_return[:, new].mean(axis=1)
        g_violation = violation[:, new].mean(axis=1)
    else:
        g_return, g_violation = nan, np.full((returns.shape[0], m), np.nan)
    per_constraint = violation.mean(axis=1)
    return VersatileMetrics(mean_return.mean(axis=1), per_constraint.sum(axis=1), per_constraint,
                            g_return, g_violation.sum(axis=1), g_violation)
