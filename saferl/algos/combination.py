"""C-PPO-Lag and C-TRPO-Lag: one policy per behaviour threshold, deployed as their combination.

The linear-combination baselines of Yao et al. 2023 (docs/algorithms/ccpo.md). Training is the
limits grid of the engine: ``ppo_lag`` (``trpo_lag``) under every behaviour threshold ``ε_1 < … <
ε_N`` of ``versatile.behaviour_thresholds`` at once, one member per (seed, threshold), in one
process (:func:`saferl.engine.members.members`; the configuration's :attr:`limit_grid` names the
thresholds). The deployed policy of a seed is threshold-conditioned: at ``ε ∈ [ε_k, ε_{k+1}]`` it is
``π = w₁ π_k + w₂ π_{k+1}`` with

    w₁ = (ε_{k+1} − ε) / (ε_{k+1} − ε_k),   w₂ = 1 − w₁,

outside ``[ε_1, ε_N]`` the nearest policy (:func:`combination_weights`). Acting
deterministically it takes the weighted mean of the two policies' mean actions; sampling, it
draws from the mixture (a policy with probability ``w``, then its Gaussian). With several
constraints the behaviour thresholds must differ in one constraint only, the one combined over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from saferl.algos.actor_critic import VersatileParams
from saferl.algos.ppo import PPOLagConfig
from saferl.algos.trpo import TRPOLagConfig
from saferl.core.normalization import normalize
from saferl.engine.family import Conditioning, PolicyParts


def combination_weights(thresholds: jax.Array, grid: jax.Array) -> jax.Array:
    """The weights ``[B, N]`` of the policies trained at ``grid`` ``[N]`` (increasing) for
    thresholds ``[B]``: ``w₁ = (ε_{k+1} − ε)/(ε_{k+1} − ε_k)`` on the bracketing ``π_k`` and
    ``1 − w₁`` on ``π_{k+1}``; outside the grid all weight on the nearest policy."""
    count = grid.shape[0]
    if count == 1:
        return jnp.ones((thresholds.shape[0], 1), thresholds.dtype)
    eps = jnp.clip(thresholds, grid[0], grid[-1])
    k = jnp.clip(jnp.searchsorted(grid, eps, side="right") - 1, 0, count - 2)
    low, high = grid[k], grid[k + 1]
    w_low = (high - eps) / (high - low)
    columns = jnp.arange(count)
    return (jnp.where(columns == k[:, None], w_low[:, None], 0.0)
            + jnp.where(columns == k[:, None] + 1, 1.0 - w_low[:, None], 0.0))


def combined_axis(behaviour: np.ndarray, name: str = "versatile.behaviour_thresholds") -> int:
    """The constraint the behaviour thresholds ``[N, m]`` vary in (0 when they do not vary).

    Raises:
        ValueError: They vary in more than one constraint.
    """
    varying = [i for i in range(behaviour.shape[1]) if len(set(behaviour[:, i])) > 1]
    if len(varying) > 1:
        raise ValueError(
            f"{name} differ in constraints {varying}; a linear combination of policies is "
            f"taken along one threshold, so the behaviour thresholds may differ in one "
            f"constraint only; got {behaviour.tolist()}.")
    return varying[0] if varying else 0


@dataclass(frozen=True)
class LinearCombination:
    """The deployed policy of a linear-combination baseline, as a module for
    :class:`~saferl.policy.Policy`: ``apply(params, observations [B, d], thresholds [B, m])``
    returns ``(means [B, N, A], log_stds [B, N, A], weights [B, N])``.

    ``params`` holds the ``N`` policies stacked (``"members"``) and their observation
    normalisers (``"stats"``, ``None`` when observations are not normalised).
    """

    policy: Any  # the Flax Gaussian policy every member shares
    grid: tuple[float, ...]  # the behaviour thresholds along the combined constraint
    axis: int  # which constraint the thresholds vary in

    def apply(self, params: dict[str, Any], observations: jax.Array,
              thresholds: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Every member's action distribution and the members' weights at ``thresholds``."""
        def one(member_params: Any, stats: Any) -> tuple[jax.Array, jax.Array]:
            x = observations if stats is None else normalize(stats, observations)
            return self.policy.apply(member_params, x)

        means, log_stds = jax.vmap(one)(params["members"], params["stats"])  # [N, B, A]
        weights = combination_weights(thresholds[:, self.axis],
                                      jnp.asarray(self.grid, thresholds.dtype))
        return jnp.swapaxes(means, 0, 1), jnp.swapaxes(log_stds, 0, 1), weights


def combined_parts(config: Any, parts: list[PolicyParts]) -> PolicyParts:
    """The conditioned policy of one seed from its members' parts (one per behaviour
    threshold, in the order of ``versatile.behaviour_thresholds``)."""
    behaviour = config.versatile.behaviour
    axis = combined_axis(behaviour)
    stack = lambda *xs: jnp.stack(xs)  # noqa: E731
    stats = None if parts[0].obs_stats is None else jax.tree_util.tree_map(
        stack, *[p.obs_stats for p in parts])
    params = {"members": jax.tree_util.tree_map(stack, *[p.params for p in parts]),
              "stats": stats}
    low, high = config.versatile.bounds
    module = LinearCombination(parts[0].module, tuple(float(x) for x in behaviour[:, axis]),
                               axis)
    return PolicyParts(module, params, None, squashed=parts[0].squashed,
                       conditioning=Conditioning(behaviour, low, high))


def _limit_grid(versatile: VersatileParams) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(x) for x in row) for row in versatile.behaviour)


def _check_grid(name: str, config: Any) -> None:
    if config.run.limits:
        raise ValueError(
            f"{name} trains one policy per behaviour threshold: give them as "
            f"versatile.behaviour_thresholds (--versatile.behaviour-thresholds 20 40 60), not "
            f"as limits; got limits {[list(x) for x in config.run.limits]}.")
    combined_axis(config.versatile.behaviour)


@dataclass(frozen=True)
class CPPOLagConfig(PPOLagConfig):
    """Configuration of ``cppo_lag``: ``ppo_lag`` per behaviour threshold (``versatile``)."""

    versatile: VersatileParams = field(default_factory=VersatileParams)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_grid("cppo_lag", self)

    @property
    def limit_grid(self) -> tuple[tuple[float, ...], ...]:
        """The members' cost limits: the behaviour thresholds."""
        return _limit_grid(self.versatile)


@dataclass(frozen=True)
class CTRPOLagConfig(TRPOLagConfig):
    """Configuration of ``ctrpo_lag``: ``trpo_lag`` per behaviour threshold (``versatile``)."""

    versatile: VersatileParams = field(default_factory=VersatileParams)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_grid("ctrpo_lag", self)

    @property
    def limit_grid(self) -> tuple[tuple[float, ...], ...]:
        """The members' cost limits: the behaviour thresholds."""
        return _limit_grid(self.versatile)
