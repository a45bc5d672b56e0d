"""The batched constrained-MDP interface that every saferl learner talks to.

A constrained MDP (CMDP) has a reward and ``m >= 1`` cost signals. saferl's learners never see a
single environment: they see a *batch* of ``num_envs`` copies behind the :class:`VecEnv` protocol,

* ``reset(seed)`` → observations ``[num_envs, obs_dim]``;
* ``step(actions)`` → :class:`StepResult` with observations, reward ``[n]``, **costs ``[n, m]``**,
  terminated ``[n]`` and truncated ``[n]``.

Environments reset themselves when an episode ends (auto-reset). The observation returned for a
finished environment is the first observation of its *next* episode; the true last observation of
the finished episode is kept in ``StepResult.final_observation`` so that a learner can bootstrap a
truncated episode from it. Termination means "the episode really ended" (no bootstrap);
truncation means "a time limit cut it" (bootstrap both the reward and the cost values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

import gymnasium
import numpy as np


class EnvError(ValueError):
    """An environment broke the CMDP contract (bad spaces, missing or malformed costs, ...)."""


class NonFiniteError(EnvError):
    """An environment returned a NaN or infinite observation, reward or cost."""


@dataclass(frozen=True)
class EnvSpec:
    """Static description of a (batched) CMDP.

    Attributes:
        id: The environment id, e.g. ``"saferl/BallCircle-v0"`` or ``"SafetyBallCircle-v0"``.
        observation_space: Space of one observation (a flat ``Box``).
        action_space: Space of one action (a flat, bounded ``Box``).
        num_costs: Number ``m`` of cost signals (constraints).
        cost_names: One name per cost signal, used in logs (``rollout/ep_cost_<i>``) and plots.
        max_episode_steps: The time limit, or ``None`` when episodes end only by termination.
    """

    id: str
    observation_space: gymnasium.spaces.Box
    action_space: gymnasium.spaces.Box
    num_costs: int
    cost_names: tuple[str, ...] = field(default=())

    max_episode_steps: int | None = None

    def __post_init__(self) -> None:
        if self.num_costs < 1:
            raise EnvError(
                f"EnvSpec.num_costs must be >= 1 (a CMDP has a cost); got {self.num_costs}.")
        if not self.cost_names:
            names = ("cost",) if self.num_costs == 1 else tuple(
                f"cost_{i}" for i in range(self.num_costs))
            object.__setattr__(self, "cost_names", names)
        if len(self.cost_names) != self.num_costs:
            raise EnvError(
                f"EnvSpec.cost_names has {len(self.cost_names)} names for "
                f"{self.num_costs} costs; give one name per cost.")

    @property
    def obs_dim(self) -> int:
        """Length of a flat observation."""
        return int(np.prod(self.observation_space.shape))

    @property
    def action_dim(self) -> int:
        """Length of a flat action."""
        return int(np.prod(self.action_space.shape))


class StepResult(NamedTuple):
    """What a batched environment returns for one step of every copy.

    Attributes:
        observation: ``[n, obs_dim]`` next observations, already reset where an episode ended.
        reward: ``[n]`` rewards.
        costs: ``[n, m]`` cost vectors.
        terminated: ``[n]`` true where the episode ended for good (do not bootstrap).
        truncated: ``[n]`` true where a time limit cut the episode (bootstrap from
            ``final_observation``).
        final_observation: ``[n, obs_dim]`` the true last observation of each episode that ended;
            equal to ``observation`` where no episode ended.
    """

    observation: np.ndarray
    reward: np.ndarray
    costs: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    final_observation: np.ndarray


@runtime_checkable
class VecEnv(Protocol):
    """A batch of ``num_envs`` CMDP copies with auto-reset (see the module docstring)."""

    spec: EnvSpec
    num_envs: int

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Reset every copy; copy ``i`` is seeded with ``seed + i``. Returns ``[n, obs_dim]``."""
        ...

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every copy with ``actions`` of shape ``[n, action_dim]``."""
        ...

    def close(self) -> None:
        """Release simulator resources."""
        ...


def check_finite(result: StepResult, step: int, env_id: str) -> None:
    """Raise :class:`NonFiniteError` naming the env index and step if anything is not finite.

    Args:
        result: The batched step result to check.
        step: Environment steps taken before this one, all copies together, since the
            process started stepping (for the message).
        env_id: The environment id (for the message).

    Raises:
        NonFiniteError: If an observation, reward or cost is NaN or infinite.
    """
    for name, value in (("observation", result.final_observation), ("reward", result.reward),
                        ("cost", result.costs)):
        bad = ~np.isfinite(np.asarray(value, dtype=np.float64))
        if bad.any():
            rows = np.nonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0]
            raise NonFiniteError(
                f"Environment {env_id!r} returned a non-finite {name} in env index "
                f"{int(rows[0])} (of {bad.shape[0]} copies), after {step:,} environment steps "
                f"(all copies together) in this process; the run stopped before using it and "
                f"the last checkpoint is intact. Check the environment's dynamics or clip its "
                f"outputs.")


class MissingBackendError(ImportError):
    """An optional environment backend (Safety-Gymnasium, Bullet-Safety-Gym) is not installed.

    The message names the package and the exact ``pip install`` command.
    """
