"""Lagrange multipliers, one per constraint: gradient ascent or PID (Stooke et al., 2020).

The Lagrangian is ``L(π, λ) = J_R(π) − Σ_i λ_i (J_Ci(π) − d_i)`` with ``λ ≥ 0``. The multipliers
are updated once per iteration from the batch's episode-cost estimate ``Ĵ_C`` (a vector ``[m]``)
against the limits ``d`` (a traced array, so one compilation serves any limits):

* ``"gradient"``: ``λ ← clip(λ + η (Ĵ_C − d), 0, λ_max)`` — pure integral control.
* ``"pid"``: with ``e = Ĵ_C − d``,
  ``I ← max(0, I + K_I e)``, ``P = K_P·EMA_α_p(e)``,
  ``D = K_D·max(0, EMA_α_d(Ĵ_C)_k − EMA_α_d(Ĵ_C)_{k−τ})``, ``λ = clip(P + I + D, 0, λ_max)``.
  The EMAs start at 0 and the delayed-cost history is filled with 0, as in Stooke et al.'s
  reference implementation; ``EMA ← α·EMA + (1 − α)·x`` (α weights the past).

State is a small pytree and updates are pure functions, vectorised over constraints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class LagrangeConfig:
    """How the multipliers are updated.

    Attributes:
        method: ``"gradient"`` (projected gradient ascent) or ``"pid"`` (PID control).
        init: Initial multiplier value (also the initial integral term of PID).
        lr: Step size η of gradient ascent.
        kp: PID proportional gain K_P.
        ki: PID integral gain K_I.
        kd: PID derivative gain K_D.
        ema_alpha_p: PID: weight of the past in the EMA of the error (proportional term).
        ema_alpha_d: PID: weight of the past in the EMA of the cost (derivative term).
        delay: PID: the derivative compares the cost EMA with its value ``delay`` updates ago.
        max_multiplier: Upper clip of every multiplier.
    """

    method: Literal["gradient", "pid"] = "gradient"
    init: float = 0.0
    lr: float = 0.05
    kp: float = 0.1
    ki: float = 0.01
    kd: float = 0.01
    ema_alpha_p: float = 0.95
    ema_alpha_d: float = 0.95
    delay: int = 10
    max_multiplier: float = 100.0

    def __post_init__(self) -> None:
        if self.method not in ("gradient", "pid"):
            raise ValueError(
                f"lagrange.method must be 'gradient' or 'pid'; got {self.method!r}.")
        for name in ("init", "lr", "kp", "ki", "kd"):
            value = getattr(self, name)
            if not (value >= 0 and value < float("inf")):
                raise ValueError(f"lagrange.{name} must be a finite number >= 0; got {value}.")
        for name in ("ema_alpha_p", "ema_alpha_d"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"lagrange.{name} must be in [0, 1); got {value}.")
        if self.delay < 1:
            raise ValueError(f"lagrange.delay must be >= 1; got {self.delay}.")
        if not self.max_multiplier > 0:
            raise ValueError(
                f"lagrange.max_multiplier must be > 0; got {self.max_multiplier}.")


class LagrangeState(NamedTuple):
    """Multipliers and PID memory, each leading axis ``[m]`` (history ``[delay, m]``)."""

    multiplier: jax.Array
    integral: jax.Array
    error_ema: jax.Array
    cost_ema: jax.Array
    cost_history: jax.Array


def lagrange_init(config: LagrangeConfig, num_costs: int) -> LagrangeState:
    """Initial state for ``num_costs`` constraints."""
    value = jnp.full((num_costs,), config.init, jnp.float32)
    zeros = jnp.zeros((num_costs,), jnp.float32)
    return LagrangeState(value, value, zeros, zeros,
                         jnp.zeros((config.delay, num_costs), jnp.float32))


def lagrange_update(config: LagrangeConfig, state: LagrangeState, episode_cost: jax.Array,
                    cost_limit: jax.Array) -> LagrangeState:
    """One multiplier update from the episode-cost estimate.

    Args:
        config: The update rule and its gains.
        state: The current multipliers and PID memory.
        episode_cost: ``[m]`` estimate of the expected episode cost of the current policy.
        cost_limit: ``[m]`` the limits ``d``.

    Returns:
        The updated state.
    """
    error = episode_cost - cost_limit
    if config.method == "gradient":
        multiplier = jnp.clip(state.multiplier + config.lr * error, 0.0, config.max_multiplier)
        return state._replace(multiplier=multiplier)
    integral = jnp.maximum(0.0, state.integral + config.ki * error)
    error_ema = config.ema_alpha_p * state.error_ema + (1 - config.ema_alpha_p) * error
    cost_ema = config.ema_alpha_d * state.cost_ema + (1 - config.ema_alpha_d) * episode_cost
    derivative = jnp.maximum(0.0, cost_ema - state.cost_history[0])
    multiplier = jnp.clip(config.kp * error_ema + integral + config.kd * derivative, 0.0,
                          config.max_multiplier)
    history = jnp.concatenate([state.cost_history[1:], cost_ema[None]], axis=0)
    return LagrangeState(multiplier, integral, error_ema, cost_ema, history)


def lagrangian_advantage(config: LagrangeConfig, state: LagrangeState, episode_cost: jax.Array,
                         cost_limit: jax.Array, has_estimate: jax.Array,
                         reward_advantage: jax.Array, cost_advantage: jax.Array
                         ) -> tuple[LagrangeState, jax.Array, dict[str, jax.Array]]:
    """Update the multipliers once, then combine the advantages (docs/algorithms/lagrangian.md).

    Before any episode has finished (``has_estimate`` false) the multipliers are left alone.
    The advantage is ``(Â_R − Σ_i λ_i Â_Ci) / (1 + Σ_i λ_i)``: dividing by ``1 + Σλ`` keeps its
    scale bounded as the multipliers grow.

    Args:
        config: The update rule.
        state: Multipliers and PID memory.
        episode_cost: ``[m]`` the batch's episode-cost estimate.
        cost_limit: ``[m]`` the limits.
        has_estimate: Whether ``episode_cost`` comes from finished episodes.
        reward_advantage: ``[B]`` normalised reward advantages.
        cost_advantage: ``[B, m]`` centred cost advantages.

    Returns:
        The new state, the combined advantage ``[B]`` and ``lagrange/lambda_<i>`` metrics.
    """
    updated = lagrange_update(config, state, episode_cost, cost_limit)
    state = jax.tree_util.tree_map(lambda new, old: jnp.where(has_estimate, new, old), updated,
                                   state)
    multipliers = state.multiplier
    advantage = (reward_advantage - cost_advantage @ multipliers) / (1.0 + multipliers.sum())
    metrics = {f"lagrange/lambda_{i}": multipliers[i] for i in range(multipliers.shape[0])}
    return state, advantage, metrics
