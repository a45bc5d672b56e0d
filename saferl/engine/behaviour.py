"""The behaviour-threshold axis of threshold-conditioned algorithms (CCPO), for the engines.

A conditioned algorithm (see :class:`~saferl.algos.actor_critic.OffPolicyAlgorithm`) names its
behaviour thresholds ``Ẽ`` ``[N_b, m]`` and range ``E``. Collection keeps, per environment copy,
an index into ``Ẽ`` drawn anew at every episode start (:func:`draw_behaviour`); the copies'
thresholds are stored with the transitions, from which :func:`behaviour_groups` recovers the
index to track episodes per threshold (:func:`behaviour_metrics` are the logged figures).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from saferl.engine.family import Conditioning


def conditioning(algorithm: Any, config: Any) -> Conditioning | None:
    """The behaviour set and range of a threshold-conditioned algorithm (see
    :class:`OffPolicyAlgorithm`), ``None`` for every other."""
    if not hasattr(algorithm, "behaviour_thresholds"):
        return None
    low, high = algorithm.threshold_range(config)
    return Conditioning(np.asarray(algorithm.behaviour_thresholds(config), np.float64),
                        np.asarray(low, np.float64), np.asarray(high, np.float64))


def behaviour_table(algo: Any, config: Any) -> jax.Array | None:
    """A conditioned algorithm's behaviour thresholds ``[N_b, m]`` (float32), else ``None``."""
    conditioned = conditioning(algo, config)
    return None if conditioned is None else jnp.asarray(conditioned.behaviour, jnp.float32)


def draw_behaviour(key: jax.Array, table: jax.Array, count: int) -> jax.Array:
    """``count`` indices into the behaviour table, uniform (one per copy and episode)."""
    return jax.random.randint(key, (count,), 0, table.shape[0])


def behaviour_groups(conditions: jax.Array, table: jax.Array) -> jax.Array:
    """The index into ``table`` ``[N_b, m]`` of every stored condition ``[..., m]`` (exact:
    they are copies of its rows)."""
    return jnp.argmax(jnp.all(conditions[..., None, :] == table, axis=-1), axis=-1)


def behaviour_metrics(table: jax.Array, episodes: jax.Array,
                      cost: jax.Array) -> dict[str, jax.Array]:
    """``rollout/behaviour_b/episodes`` and ``rollout/behaviour_b/ep_cost_i`` (NaN without a
    finished episode) for every behaviour threshold ``b`` (its row of ``table``)."""
    metrics = {}
    for b in range(table.shape[0]):
        metrics[f"rollout/behaviour_{b}/episodes"] = episodes[b]
        for i in range(table.shape[1]):
            metrics[f"rollout/behaviour_{b}/ep_cost_{i}"] = jnp.where(
                episodes[b] > 0, cost[b, i], jnp.nan)
    return metrics
