"""Pure-JAX tasks: the functional task protocol, auto-reset, and the adapters around it.

A native task is a frozen dataclass with three pure functions,

* ``reset(key) -> (state, obs)``,
* ``step(state, action) -> (state, obs, reward, costs, terminated)``,
* ``safety_margin(state) -> [m]`` (distance to each cost boundary; ≤ 0 means unsafe),

on a single environment. :func:`episode_reset` / :func:`episode_step` add the time limit, the
episode counter and auto-reset (keeping the true final observation); ``jax.vmap`` of those gives
the batched environment, which the on-policy engine scans inside ``jit``. :class:`NativeVecEnv`
exposes the same functions through the host :class:`~saferl.envs.core.VecEnv` protocol, and
:class:`NativeGymEnv` as a single ``gymnasium.Env`` (so ``gymnasium.make("saferl/BallCircle-v0")``
works).
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple, Protocol

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np

from saferl.envs.core import EnvSpec, StepResult


class NativeTask(Protocol):
    """The functional interface of a pure-JAX task (one environment, no time limit)."""

    spec: EnvSpec

    def reset(self, key: jax.Array) -> tuple[Any, jax.Array]:
        """Sample an initial state; return it and its observation."""
        ...

    def step(self, state: Any, action: jax.Array) -> tuple[Any, jax.Array, jax.Array, jax.Array,
                                                             jax.Array]:
        """Advance one step: ``(state, obs, reward, costs [m], terminated)``."""
        ...

    def safety_margin(self, state: Any) -> jax.Array:
        """Distance to each cost's unsafe set, ``[m]``; cost is incurred when it is ≤ 0."""
        ...


class EpisodeState(NamedTuple):
    """A task state plus what auto-reset needs: the step within the episode and an RNG key."""

    task_state: Any
    observation: jax.Array
    episode_step: jax.Array
    key: jax.Array


class EpisodeStep(NamedTuple):
    """One step's outputs (the jnp twin of :class:`~saferl.envs.core.StepResult`)."""

    observation: jax.Array
    reward: jax.Array
    costs: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    final_observation: jax.Array


def episode_reset(task: NativeTask, key: jax.Array) -> EpisodeState:
    """Start an episode of ``task`` from ``key``."""
    key, reset_key = jax.random.split(key)
    task_state, obs = task.reset(reset_key)
    return EpisodeState(task_state, obs, jnp.zeros((), jnp.int32), key)


def episode_step(task: NativeTask, state: EpisodeState,
                 action: jax.Array) -> tuple[EpisodeState, EpisodeStep]:
    """Step with the time limit and auto-reset; the final observation is kept for bootstrapping.

    Args:
        task: The native task.
        state: The current episode state.
        action: One action ``[action_dim]``; it is clipped to the action space.

    Returns:
        The next episode state (a fresh episode if this one ended) and the step's outputs.
    """
    low = jnp.asarray(task.spec.action_space.low)
    high = jnp.asarray(task.spec.action_space.high)
    action = jnp.clip(action, low, high)
    task_state, obs, reward, costs, terminated = task.step(state.task_state, action)
    episode_step_count = state.episode_step + 1
    limit = task.spec.max_episode_steps
    truncated = (episode_step_count >= limit) & ~terminated if limit else jnp.zeros((), bool)
    done = terminated | truncated
    key, reset_key = jax.random.split(state.key)
    reset_state, reset_obs = task.reset(reset_key)
    next_task_state = jax.tree_util.tree_map(
        lambda fresh, old: jnp.where(done, fresh, old), reset_state, task_state)
    next_obs = jnp.where(done, reset_obs, obs)
    # Select the final observation from `next_obs` where nothing ended, so that the two are
    # bit-identical there (XLA may otherwise evaluate `obs` twice with different rounding).
    final_obs = jnp.where(done, obs, next_obs)
    next_state = EpisodeState(next_task_state, next_obs,
                              jnp.where(done, 0, episode_step_count).astype(jnp.int32), key)
    return next_state, EpisodeStep(next_obs, reward, costs, terminated, truncated, final_obs)


def batch_reset(task: NativeTask, key: jax.Array, num_envs: int) -> EpisodeState:
    """Reset ``num_envs`` independent copies (a leading env axis on every leaf)."""
    return jax.vmap(lambda k: episode_reset(task, k))(jax.random.split(key, num_envs))


def batch_step(task: NativeTask, state: EpisodeState,
               actions: jax.Array) -> tuple[EpisodeState, EpisodeStep]:
    """Step every copy of a batched episode state."""
    return jax.vmap(lambda s, a: episode_step(task, s, a))(state, actions)


class NativeVecEnv:
    """A native task behind the host :class:`~saferl.envs.core.VecEnv` protocol (numpy in/out).

    Used for evaluation, `check_env` and the generic engine paths; training on native tasks
    bypasses it and scans :func:`batch_step` inside ``jit``.
    """

    def __init__(self, task: NativeTask, num_envs: int = 1, seed: int = 0) -> None:
        self.task = task
        self.spec = task.spec
        self.num_envs = num_envs
        self._reset = jax.jit(jax.vmap(lambda key: episode_reset(task, key)))
        self._step = jax.jit(lambda state, actions: batch_step(task, state, actions))
        self._state = self._reset(self._keys(seed))

    def _keys(self, seed: int) -> jax.Array:
        return jax.vmap(jax.random.PRNGKey)(seed + jnp.arange(self.num_envs))

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Reset every copy: copy ``i`` from ``seed + i``, or continue each copy's stream."""
        keys = (self._keys(seed) if seed is not None
                else jax.vmap(lambda k: jax.random.fold_in(k, 7))(self._state.key))
        self._state = self._reset(keys)
        return np.asarray(self._state.observation)

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every copy; returns numpy arrays."""
        actions = jnp.asarray(actions, jnp.float32).reshape(self.num_envs, -1)
        self._state, out = self._step(self._state, actions)
        return StepResult(*(np.asarray(x) for x in out))

    def render(self, index: int = 0) -> np.ndarray:
        """An RGB frame of copy ``index`` (tasks that implement ``render``)."""
        state = jax.tree_util.tree_map(lambda x: x[index], self._state.task_state)
        return self.task.render(state)  # type: ignore[attr-defined]

    def close(self) -> None:
        """Nothing to release."""


class NativeGymEnv(gymnasium.Env):
    """One copy of a native task as a standard ``gymnasium.Env``.

    The cost vector is reported as ``info["costs"]`` (and ``info["cost"]`` when there is one cost),
    the convention saferl's gymnasium adapter reads. The time limit is applied by gymnasium's
    ``TimeLimit`` wrapper from the registration, so this class only reports termination.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    def __init__(self, task: NativeTask, render_mode: str | None = None) -> None:
        self.task = task
        self.observation_space = task.spec.observation_space
        self.action_space = task.spec.action_space
        self.render_mode = render_mode
        self._reset = jax.jit(task.reset)
        self._step = jax.jit(task.step)
        self._key: jax.Array | None = None  # from the first reset's seed (or fresh entropy)
        self._state: Any = None

    def reset(self, *, seed: int | None = None,
              options: dict | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode; ``seed`` reseeds the task's RNG. Unseeded, the first reset draws
        the key from fresh entropy (gymnasium's ``np_random``), as gymnasium envs do."""
        super().reset(seed=seed)
        if seed is not None:
            self._key = jax.random.PRNGKey(seed)
        elif self._key is None:
            self._key = jax.random.PRNGKey(int(self.np_random.integers(2**31)))
        self._key, key = jax.random.split(self._key)
        self._state, obs = self._reset(key)
        return np.asarray(obs), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Advance one step; costs are in ``info``."""
        action = np.clip(np.asarray(action, np.float32), self.action_space.low,
                         self.action_space.high)
        self._state, obs, reward, costs, terminated = self._step(self._state, action)
        costs = np.asarray(costs)
        info: dict[str, Any] = {"costs": costs}
        if costs.shape[0] == 1:
            info["cost"] = float(costs[0])
        return np.asarray(obs), float(reward), bool(terminated), False, info

    def render(self) -> np.ndarray | None:
        """An RGB frame of the current state."""
        if self.render_mode != "rgb_array" or self._state is None:
            return None
        return self.task.render(self._state)  # type: ignore[attr-defined]
