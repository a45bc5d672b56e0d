"""Collection from host simulators (Bullet, gymnasium): one loop for both engines.

Host environments step in Python, one :class:`~saferl.envs.core.VecEnv` per member. Each step
the engine's *actor* maps the members' observations ``[S, N, obs_dim]`` to actions (and any
per-step extras it wants stored, such as log-probabilities) in numpy; the loop stores them,
steps every member's copies, checks the results are finite and stores rewards, costs, ends and
true final observations. No XLA call happens inside the loop, so it can run while the device
computes (the off-policy engine's overlapped collection).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from saferl.envs.core import EnvSpec, VecEnv, check_finite

#: ``actor(observations [S, N, obs_dim], starts [S, N]) -> {"actions": [S, N, A], extra name:
#: [S, N, ...]}``; ``starts`` marks the copies whose episode begins with this observation (all
#: after a reset, then those whose previous step ended an episode), for actors that keep
#: per-episode state (a conditioned policy's behaviour threshold).
Actor = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]


def environment_seed(seed: int, iteration: int = 0) -> int:
    """The base seed of a training member's host environments (copy ``i`` gets ``base + i``).

    A vectorised environment seeds copy ``i`` with ``seed + i`` (gymnasium's convention), so
    members seeded ``s`` and ``s + 1`` given their own seeds would share ``N − 1`` of their
    ``N`` copies' streams: on Bullet, the same start states episode after episode, and seeds that
    are not independent replicates. Each member's block starts instead at a number drawn from
    ``numpy.random.SeedSequence((seed, iteration))``: blocks of different seeds are disjoint
    but for a chance of about ``N / 2³¹`` per pair, and lie away from the evaluation's seeds
    (10,000 on) just as likely. Members of one seed under different cost limits share their
    block (common random numbers, as separate runs with that seed would). ``iteration`` is the
    iteration a resumed run restarts from: host simulators cannot be checkpointed, so a
    resumed run gets fresh streams rather than replaying the episodes it began with.
    """
    state = np.random.SeedSequence((int(seed), int(iteration))).generate_state(1)[0]
    return int(state) % 2**31  # room for + i below numpy's 2**32


def scale_action(spec: EnvSpec, action: Any) -> Any:
    """Map actions in ``[-1, 1]`` to the environment's bounds (numpy or JAX arrays alike).

    Off-policy actors act in ``[-1, 1]^A``; this (through :func:`scale_to_bounds`) is the one
    place that maps them to the box, in collection and in deployed policies.
    """
    return scale_to_bounds(spec.action_space.low, spec.action_space.high, action)


def scale_to_bounds(low: Any, high: Any, action: Any) -> Any:
    """``low + (clip(action, -1, 1) + 1)/2 · (high − low)`` in float32, numpy or JAX."""
    xp = np if isinstance(action, np.ndarray) else jnp
    low, high = xp.asarray(low, xp.float32), xp.asarray(high, xp.float32)
    return low + 0.5 * (xp.clip(action, -1.0, 1.0) + 1.0) * (high - low)


class HostCollector:
    """Steps every member's host environments and keeps their observations between batches.

    The environments were seeded when they were built (:func:`environment_seed`); the first
    collection resets them without a seed, continuing each copy's stream.

    Args:
        envs: One vectorised environment per member.
        spec: Their common spec.
    """

    def __init__(self, envs: Sequence[VecEnv], spec: EnvSpec) -> None:
        self.envs, self.spec = list(envs), spec
        self.observations: np.ndarray | None = None
        self.starts: np.ndarray | None = None  # [S, N]: episodes beginning at the next step
        self.env_steps = 0  # steps of one member's copies so far (for error messages)

    def collect(self, steps: int, actor: Actor, scale: bool = False) -> dict[str, np.ndarray]:
        """``steps`` steps of every member's copies.

        Args:
            steps: Steps per copy.
            actor: See :data:`Actor`.
            scale: Map the actor's ``[-1, 1]`` actions to the action bounds before stepping
                (the stored actions stay unscaled).

        Returns:
            ``[S, steps, N, ...]`` arrays: ``observations``, the actor's outputs (``actions``
            and extras), ``rewards``, ``costs``, ``terminated``, ``truncated`` and
            ``final_observations`` (the true next observation, before any auto-reset).
        """
        envs = self.envs
        if self.observations is None:
            self.observations = np.stack([env.reset() for env in envs]).astype(np.float32)
            self.starts = np.ones(self.observations.shape[:2], bool)
        members, n = len(envs), envs[0].num_envs
        obs_dim, m = self.spec.obs_dim, self.spec.num_costs
        buffers: dict[str, np.ndarray] = {
            "observations": np.empty((members, steps, n, obs_dim), np.float32),
            "rewards": np.empty((members, steps, n), np.float32),
            "costs": np.empty((members, steps, n, m), np.float32),
            "terminated": np.empty((members, steps, n), bool),
            "truncated": np.empty((members, steps, n), bool),
            "final_observations": np.empty((members, steps, n, obs_dim), np.float32),
        }
        observations, starts = self.observations, self.starts
        for t in range(steps):
            outputs = actor(observations, starts)
            for name, value in outputs.items():
                if name not in buffers:
                    buffers[name] = np.empty((members, steps, *value.shape[1:]), np.float32)
                buffers[name][:, t] = value
            buffers["observations"][:, t] = observations
            actions = outputs["actions"].astype(np.float32)
            env_actions = scale_action(self.spec, actions) if scale else actions
            next_observations = np.empty_like(observations)
            for s, env in enumerate(envs):
                result = env.step(env_actions[s])
                check_finite(result, self.env_steps, self.spec.id)
                buffers["rewards"][s, t] = result.reward
                buffers["costs"][s, t] = result.costs
                buffers["terminated"][s, t] = result.terminated
                buffers["truncated"][s, t] = result.truncated
                buffers["final_observations"][s, t] = result.final_observation
                next_observations[s] = result.observation
            observations = next_observations
            starts = buffers["terminated"][:, t] | buffers["truncated"][:, t]
            self.env_steps += n
        self.observations, self.starts = observations, starts
        return buffers
