"""A replay buffer with costs, kept as device arrays and sampled inside ``jit``.

Transitions are stored time-major, one row per environment step of all ``N`` copies:
``[rows, N, ...]``, written in a ring. Reward, the cost vector, ``terminated`` and ``truncated``
are stored separately, and ``next_observations`` is the *true* next observation (the final one
of an episode that ended, not the first of the next), so that:

* termination stops bootstrapping (the episode really ended);
* truncation by a time limit bootstraps from the true last observation (docs/algorithms/index.md).

Because rows are contiguous in time per copy, :func:`replay_sample` can assemble n-step returns
``Σ_{k<h} γ^k r_{t+k} + γ^h·Q(s_{t+h}, ·)`` that stop at the first episode end inside the
window (then ``h`` is the number of steps up to and including it, and the bootstrap is dropped
if that end was a termination). Only windows that lie entirely in written rows are sampled.

Threshold-conditioned algorithms (CCPO) also store each transition's *condition*, the episode's
behaviour threshold ``[m]`` the copy acted with; for every other algorithm ``conditions`` has
width 0 (``[rows, N, 0]``), so the buffer costs nothing more.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Replay(NamedTuple):
    """Ring buffer of ``rows × num_envs`` transitions (leading axes ``[rows, N]``)."""

    observations: jax.Array  # [L, N, obs_dim]
    actions: jax.Array  # [L, N, action_dim]
    rewards: jax.Array  # [L, N]
    costs: jax.Array  # [L, N, m]
    terminated: jax.Array  # [L, N] bool
    truncated: jax.Array  # [L, N] bool
    next_observations: jax.Array  # [L, N, obs_dim]
    conditions: jax.Array  # [L, N, c]: the behaviour threshold acted with (c = 0: none)
    position: jax.Array  # int32: the next row to write
    size: jax.Array  # int32: rows written so far, at most L


class Transitions(NamedTuple):
    """Transitions to add, ``[T, N, ...]`` (``T`` consecutive steps of every copy);
    ``conditions`` ``[T, N, c]`` may be left ``None`` when the buffer stores none (``c = 0``)."""

    observations: jax.Array
    actions: jax.Array
    rewards: jax.Array
    costs: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    next_observations: jax.Array
    conditions: jax.Array | None = None


class SampledBatch(NamedTuple):
    """An n-step batch: ``target = reward + discount·Q'(next_observations, a')`` per channel.

    ``rewards`` ``[B]`` and ``costs`` ``[B, m]`` are the discounted sums over the window,
    ``discount`` ``[B]`` is ``γ^h`` (0 when the window ended by termination); ``conditions``
    ``[B, c]`` are the stored conditions of the sampled transitions (``None`` when a batch is
    built by hand without them).
    """

    observations: jax.Array
    actions: jax.Array
    rewards: jax.Array
    costs: jax.Array
    discount: jax.Array
    next_observations: jax.Array
    conditions: jax.Array | None = None


def replay_init(rows: int, num_envs: int, obs_dim: int, action_dim: int,
                num_costs: int, num_conditions: int = 0) -> Replay:
    """An empty buffer holding ``rows × num_envs`` transitions (with conditions of length
    ``num_conditions``)."""
    if rows < 1:
        raise ValueError(f"replay rows must be >= 1; got {rows}.")
    zeros = lambda *shape: jnp.zeros((rows, num_envs, *shape), jnp.float32)  # noqa: E731
    return Replay(zeros(obs_dim), zeros(action_dim), zeros(), zeros(num_costs),
                  jnp.zeros((rows, num_envs), bool), jnp.zeros((rows, num_envs), bool),
                  zeros(obs_dim), zeros(num_conditions), jnp.zeros((), jnp.int32),
                  jnp.zeros((), jnp.int32))


def replay_add(buffer: Replay, transitions: Transitions) -> Replay:
    """Write ``T`` rows at the ring position (oldest rows are overwritten when full)."""
    capacity = buffer.rewards.shape[0]
    steps = transitions.rewards.shape[0]
    if steps > capacity:
        raise ValueError(f"cannot add {steps} rows to a replay buffer of {capacity} rows.")
    index = (buffer.position + jnp.arange(steps)) % capacity
    if transitions.conditions is None:
        width = buffer.conditions.shape[-1]
        if width:
            raise ValueError(f"this replay buffer stores conditions of length {width}; the "
                             f"transitions to add have none.")
        transitions = transitions._replace(
            conditions=jnp.zeros((*transitions.rewards.shape, 0), jnp.float32))
    fields = [getattr(buffer, name).at[index].set(getattr(transitions, name).astype(
        getattr(buffer, name).dtype)) for name in Transitions._fields]
    return Replay(*fields, position=(buffer.position + steps) % capacity,
                  size=jnp.minimum(buffer.size + steps, capacity))


def replay_sample(buffer: Replay, key: jax.Array, batch_size: int, n_step: int = 1,
                  gamma: float = 0.99) -> SampledBatch:
    """Sample ``batch_size`` n-step transitions uniformly (with replacement).

    The start ``(row, copy)`` is uniform over the rows whose whole n-step window has been
    written (all rows when ``n_step == 1``) and over the copies. Call only once at least
    ``n_step`` rows are written.
    """
    capacity, num_envs = buffer.rewards.shape
    row_key, env_key = jax.random.split(key)
    oldest = (buffer.position - buffer.size) % capacity
    starts = jnp.maximum(buffer.size - (n_step - 1), 1)
    offset = jax.random.randint(row_key, (batch_size,), 0, starts)
    env = jax.random.randint(env_key, (batch_size,), 0, num_envs)
    row = (oldest + offset) % capacity

    rewards = jnp.zeros(batch_size)
    costs = jnp.zeros((batch_size, buffer.costs.shape[-1]))
    alive = jnp.ones(batch_size, bool)  # no episode end before step k of the window
    discount = jnp.ones(batch_size)
    next_observations = buffer.next_observations[row, env]
    for k in range(n_step):
        r = (row + k) % capacity
        weight = jnp.where(alive, gamma**k, 0.0)
        rewards = rewards + weight * buffer.rewards[r, env]
        costs = costs + weight[:, None] * buffer.costs[r, env]
        terminated, truncated = buffer.terminated[r, env], buffer.truncated[r, env]
        next_observations = jnp.where(alive[:, None], buffer.next_observations[r, env],
                                      next_observations)
        discount = jnp.where(alive, gamma ** (k + 1) * (1.0 - terminated), discount)
        alive = alive & ~(terminated | truncated)
    return SampledBatch(buffer.observations[row, env], buffer.actions[row, env], rewards, costs,
                        discount, next_observations, buffer.conditions[row, env])


def replay_resize(buffer: Replay, rows: int) -> Replay:
    """A buffer of ``rows`` rows holding the newest ``min(size, rows)`` rows in time order.

    Used when a finished run is extended: its ring was sized for the old step budget.
    """
    capacity = buffer.rewards.shape[0]
    keep = jnp.minimum(buffer.size, rows)
    # Source row of destination row i: the (size − keep + i)-th oldest row, for i < keep.
    oldest = (buffer.position - buffer.size) % capacity
    source = (oldest + buffer.size - keep + jnp.arange(rows)) % capacity
    valid = jnp.arange(rows) < keep
    fields = []
    for name in Transitions._fields:
        data = getattr(buffer, name)[source]
        mask = valid.reshape((rows,) + (1,) * (data.ndim - 1))
        fields.append(jnp.where(mask, data, jnp.zeros_like(data)))
    return Replay(*fields, position=(keep % rows).astype(jnp.int32), size=keep.astype(jnp.int32))
