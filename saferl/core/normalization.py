"""Running mean / variance of observations (parallel Welford), saved with the policy."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class RunningStats(NamedTuple):
    """Mean, variance and (float) count of everything seen so far."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array


def running_stats_init(dim: int) -> RunningStats:
    """Empty statistics (mean 0, variance 1) for vectors of length ``dim``."""
    return RunningStats(jnp.zeros(dim, jnp.float32), jnp.ones(dim, jnp.float32),
                        jnp.asarray(1e-4, jnp.float32))


def running_stats_update(stats: RunningStats, batch: jax.Array) -> RunningStats:
    """Merge a batch ``[..., dim]`` into the statistics (Chan et al.'s parallel update)."""
    batch = batch.reshape(-1, batch.shape[-1])
    batch_mean, batch_var = batch.mean(0), batch.var(0)
    batch_count = jnp.asarray(batch.shape[0], jnp.float32)
    delta = batch_mean - stats.mean
    total = stats.count + batch_count
    mean = stats.mean + delta * batch_count / total
    m2 = (stats.var * stats.count + batch_var * batch_count
          + delta**2 * stats.count * batch_count / total)
    return RunningStats(mean, m2 / total, total)


def normalize(stats: RunningStats, obs: jax.Array, clip: float = 10.0) -> jax.Array:
    """``clip((obs − mean)/sqrt(var + 1e-8), ±clip)``."""
    return jnp.clip((obs - stats.mean) / jnp.sqrt(stats.var + 1e-8), -clip, clip)
