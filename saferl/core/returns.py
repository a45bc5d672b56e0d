"""Generalised advantage estimation for the reward and every cost, in one pass.

Reward and costs travel side by side as *channels*: rewards ``[T, N]`` and costs ``[T, N, m]``
are stacked into ``[T, N, 1 + m]``, each channel with its own discount and GAE λ (the cost
discount γ_c is honoured, not ignored). Episode boundaries follow the auto-reset convention of
:mod:`saferl.envs.core`: ``next_values[t]`` is the value of the *true* next observation
(``final_observation``), so a time-limit truncation bootstraps both the reward and the cost
values, while a termination bootstraps nothing. The recursion is cut at every boundary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gae(signals: jax.Array, values: jax.Array, next_values: jax.Array, terminated: jax.Array,
        truncated: jax.Array, gamma: jax.Array, lam: jax.Array) -> tuple[jax.Array, jax.Array]:
    """GAE(γ, λ) advantages and λ-returns for every channel.

    Args:
        signals: ``[T, N, K]`` per-step signals (reward, then costs).
        values: ``[T, N, K]`` value estimates of the observations at each step.
        next_values: ``[T, N, K]`` value estimates of the true next observations.
        terminated: ``[T, N]`` the episode ended at this step for good.
        truncated: ``[T, N]`` a time limit ended the episode at this step.
        gamma: ``[K]`` discount per channel.
        lam: ``[K]`` GAE λ per channel.

    Returns:
        ``(advantages, returns)``, each ``[T, N, K]``; ``returns = advantages + values`` are the
        value-function targets.
    """
    not_terminal = 1.0 - terminated.astype(signals.dtype)[..., None]
    not_done = 1.0 - (terminated | truncated).astype(signals.dtype)[..., None]
    deltas = signals + gamma * not_terminal * next_values - values

    def backward(carry: jax.Array, inputs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array,
                                                                               jax.Array]:
        delta, continues = inputs
        advantage = delta + gamma * lam * continues * carry
        return advantage, advantage

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(deltas[0]), (deltas, not_done),
                                 reverse=True)
    return advantages, advantages + values
