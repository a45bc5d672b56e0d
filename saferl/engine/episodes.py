"""Episodes inside a batch of transitions: tracking, the cost estimate, metrics, non-finite steps.

Both engines collect ``[T, N]`` transitions (``T`` steps of ``N`` copies) whose episodes start
and end anywhere inside the batch. :func:`track_episodes` carries each copy's unfinished sums
from batch to batch and returns the sums over the episodes that finished; :func:`summarize`
turns them into means; :func:`update_cost_estimate` is the rule that keeps a constraint-cost
estimate when a batch finishes no episode; :func:`episode_metrics` are the logged figures;
:func:`nonfinite_location` and :func:`raise_if_nonfinite` report a non-finite step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from saferl.envs.core import NonFiniteError


class EpisodeTracker(NamedTuple):
    """Running sums of the unfinished episode in each environment copy."""

    episode_return: jax.Array  # [N]
    episode_cost: jax.Array  # [N, m]
    episode_length: jax.Array  # [N]
    discounted_cost: jax.Array  # [N, m]: Σ_t γ_c^t c_t, the quantity the constraint limits


def tracker_init(num_envs: int, num_costs: int) -> EpisodeTracker:
    """No episode under way in any copy."""
    return EpisodeTracker(jnp.zeros(num_envs), jnp.zeros((num_envs, num_costs)),
                          jnp.zeros(num_envs, jnp.int32), jnp.zeros((num_envs, num_costs)))


def tracker_reset(tracker: EpisodeTracker) -> EpisodeTracker:
    """The same tracker (any leading member axis kept) with every episode forgotten: host
    simulators restart their episodes on resume."""
    return EpisodeTracker(*(jnp.zeros_like(x) for x in tracker))


def track_episodes(tracker: EpisodeTracker, batch: Any, cost_gamma: float = 1.0,
                   constraint_costs: jax.Array | None = None, groups: jax.Array | None = None,
                   num_groups: int = 0) -> tuple[EpisodeTracker, dict[str, jax.Array]]:
    """Accumulate per-copy episode sums over ``[T, N]`` steps; sum over the finished episodes.

    Besides the undiscounted episode cost (what benchmarks report) it accumulates the
    discounted cost ``Σ_t γ_c^t c⁺_t`` that the constraint limits, where ``c⁺`` is
    ``constraint_costs`` (a shaped cost such as the safety predictor's) or the raw cost; with
    γ_c = 1 and no shaping the two are equal.

    Args:
        tracker: The copies' unfinished sums.
        batch: Transitions with ``rewards`` ``[T, N]``, ``costs`` ``[T, N, m]``, and
            ``terminated`` / ``truncated`` ``[T, N]`` (an on-policy rollout or off-policy
            transitions).
        cost_gamma: γ_c of the discounted cost.
        constraint_costs: ``[T, N, m]`` the cost the constraint sees (default: ``costs``).
        groups: ``[T, N]`` int, the group of each step's episode in ``[0, num_groups)`` (a
            conditioned policy's behaviour threshold, constant within an episode); an episode
            counts in the group of its last step.
        num_groups: ``G``, static; with ``groups`` the sums also hold ``episodes_by_group``
            ``[G]`` and ``sum_cost_by_group`` ``[G, m]``.

    Returns:
        The new tracker and the sums: ``episodes``, ``sum_return``, ``sum_cost`` ``[m]``,
        ``sum_length``, ``sum_discounted_cost`` ``[m]`` (and the per-group sums).
    """

    def one_step(carry: tuple[EpisodeTracker, tuple, tuple],
                 inputs: tuple) -> tuple[tuple, None]:
        tracked, (sum_return, sum_cost, sum_length, count, sum_discounted), by_group = carry
        reward, cost_t, shaped, ended, group = inputs
        ret = tracked.episode_return + reward
        cost = tracked.episode_cost + cost_t
        discount = jnp.power(cost_gamma, tracked.episode_length.astype(cost_t.dtype))
        discounted = tracked.discounted_cost + discount[:, None] * shaped
        length = tracked.episode_length + 1
        finished = ended.astype(ret.dtype)
        sums = (sum_return + jnp.sum(ret * finished),
                sum_cost + jnp.sum(cost * finished[:, None], 0),
                sum_length + jnp.sum(length * finished), count + jnp.sum(finished),
                sum_discounted + jnp.sum(discounted * finished[:, None], 0))
        if groups is not None:  # [N, G] one-hot of the finished episodes' groups
            member = jax.nn.one_hot(group, num_groups) * finished[:, None]
            by_group = (by_group[0] + member.sum(0), by_group[1] + member.T @ cost)
        keep = 1.0 - finished
        tracked = EpisodeTracker(ret * keep, cost * keep[:, None],
                                 (length * keep).astype(jnp.int32), discounted * keep[:, None])
        return (tracked, sums, by_group), None

    m = tracker.episode_cost.shape[-1]
    zero = jnp.zeros(())
    costs, done = batch.costs, batch.terminated | batch.truncated
    step_groups = jnp.zeros(done.shape, jnp.int32) if groups is None else groups
    (tracker, (sum_return, sum_cost, sum_length, count, sum_discounted), by_group), _ = \
        jax.lax.scan(one_step, (tracker, (zero, jnp.zeros(m), zero, zero, jnp.zeros(m)),
                                (jnp.zeros(num_groups), jnp.zeros((num_groups, m)))),
                     (batch.rewards, costs, costs if constraint_costs is None else
                      constraint_costs, done, step_groups))
    sums = {"episodes": count, "sum_return": sum_return, "sum_cost": sum_cost,
            "sum_length": sum_length, "sum_discounted_cost": sum_discounted}
    if groups is not None:
        sums["episodes_by_group"], sums["sum_cost_by_group"] = by_group
    return tracker, sums


class EpisodeMeans(NamedTuple):
    """Means over the episodes that finished in a batch (meaningful where ``finished``)."""

    finished: jax.Array  # bool: at least one episode finished
    count: jax.Array  # episodes finished (≥ 1 for the divisions)
    episodes: jax.Array  # episodes finished (may be 0)
    ret: jax.Array
    length: jax.Array
    cost: jax.Array  # [m] undiscounted episode cost
    constraint_cost: jax.Array  # [m] the (discounted, shaped) cost the constraint limits


def summarize(sums: dict[str, jax.Array]) -> EpisodeMeans:
    """Means of :func:`track_episodes`'s sums."""
    finished = sums["episodes"] > 0
    count = jnp.maximum(sums["episodes"], 1.0)
    return EpisodeMeans(finished, count, sums["episodes"], sums["sum_return"] / count,
                        sums["sum_length"] / count, sums["sum_cost"] / count,
                        sums["sum_discounted_cost"] / count)


def update_cost_estimate(finished: jax.Array, measured: jax.Array, previous: jax.Array,
                         has_previous: jax.Array, fallback: jax.Array
                         ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The constraint-cost estimate after a batch: never "0 cost" for want of an episode.

    The batch's finished episodes when there are some; else the previous estimate; before any
    episode has finished, ``fallback`` (the on-policy engine: the cost critics' λ-returns at the
    rollout's first states).

    Returns:
        ``(estimate [m], has_estimate, source)`` with ``source`` 0 (measured), 1 (previous) or
        2 (fallback).
    """
    estimate = jnp.where(finished, measured, jnp.where(has_previous, previous, fallback))
    source = jnp.where(finished, 0.0, jnp.where(has_previous, 1.0, 2.0))
    return estimate, finished | has_previous, source


def episode_metrics(means: EpisodeMeans, rewards: jax.Array, total_cost: jax.Array,
                    total_steps: jax.Array) -> dict[str, jax.Array]:
    """The logged episode figures; NaN where the batch finished no episode.

    ``rollout/ep_return``, ``rollout/ep_length``, ``rollout/episodes``,
    ``rollout/cost_estimate_stale``, ``rollout/step_reward``, and per constraint ``i``
    ``rollout/ep_cost_i`` and the training cost rate ``train/cost_rate_i`` (all cost so far
    over all steps so far).
    """
    nan = jnp.full((), jnp.nan)
    metrics = {
        "rollout/ep_return": jnp.where(means.finished, means.ret, nan),
        "rollout/ep_length": jnp.where(means.finished, means.length, nan),
        "rollout/episodes": means.episodes,
        "rollout/cost_estimate_stale": (~means.finished).astype(jnp.float32),
        "rollout/step_reward": rewards.mean(),
    }
    for i in range(total_cost.shape[0]):
        metrics[f"rollout/ep_cost_{i}"] = jnp.where(means.finished, means.cost[i], nan)
        metrics[f"train/cost_rate_{i}"] = total_cost[i] / total_steps
    return metrics


def nonfinite_location(rewards: jax.Array, costs: jax.Array,
                       observations: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(step, env)`` of the first non-finite reward, cost or observation in ``[T, N, ...]``
    arrays, or ``(-1, -1)``; reported as ``_nonfinite_step`` / ``_nonfinite_env`` metrics."""
    num_envs = rewards.shape[1]
    bad = ~(jnp.isfinite(rewards) & jnp.all(jnp.isfinite(costs), -1)
            & jnp.all(jnp.isfinite(observations), -1)).reshape(-1)
    first = jnp.argmax(bad)
    return (jnp.where(bad.any(), first // num_envs, -1), jnp.where(bad.any(), first % num_envs, -1))


def raise_if_nonfinite(metrics: dict[str, np.ndarray], env_id: str, iteration: int,
                       labels: tuple[str, ...]) -> None:
    """Raise :class:`~saferl.envs.core.NonFiniteError` if a member's batch had a non-finite
    step (the ``_nonfinite_*`` metrics of :func:`nonfinite_location`); ``labels`` name the
    members (:func:`~saferl.engine.members.member_labels`)."""
    steps = np.asarray(metrics["_nonfinite_step"])
    if not (steps >= 0).any():
        return
    member = int(np.argmax(steps >= 0))
    name = f"{'member' if '@' in str(labels[member]) else 'seed'} {labels[member]}"
    raise NonFiniteError(
        f"Environment {env_id!r} returned a non-finite observation, reward or cost at step "
        f"{int(steps[member])} of iteration {iteration} in env index "
        f"{int(np.asarray(metrics['_nonfinite_env'])[member])} ({name}); the run "
        f"stopped and the last checkpoint is intact.")
