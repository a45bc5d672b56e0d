"""The off-policy engine: collection, the replay buffer, fused gradient updates, multipliers.

An off-policy algorithm (``sac``, ``sac_lag``, ``ddpg_lag``, ``td3_lag``, ``cvpo``) is a module
with six pure functions (:class:`OffPolicyAlgorithm`); everything else lives here once. One
iteration of one seed:

1. **Collect** ``num_envs × rollout_steps`` transitions: uniform random actions while the seed
   has collected fewer than ``warmup_steps`` steps, then the algorithm's exploration policy. For
   native tasks the collection is a ``lax.scan`` inside ``jit``; for host environments (Bullet,
   gymnasium) a Python loop steps them and acts with the algorithm's numpy twin of its policy
   (``host_sample_action``, parameters copied to the host once per iteration).
2. **Store** them in the replay buffer (device arrays, :mod:`saferl.data.replay`) and track the
   episodes that finished.
3. **Multipliers**: once per iteration, from the mean cost of the episodes collected in this
   iteration against the episode limit (FSRL found replay-based estimates worse); skipped, and
   flagged, when no episode finished.
4. **Learn** (after warm-up): ``round(update_ratio × steps collected)`` gradient updates fused in
   one ``lax.scan``; each samples a minibatch (n-step returns, truncation bootstraps,
   termination does not) inside ``jit``.

**Overlapped collection** (``overlap_collection``, host environments only): while iteration
``i``'s updates run (XLA computes asynchronously), the Python thread collects iteration
``i + 1``'s transitions with the actor from *before* those updates. The environment steps,
minibatches and update-to-data ratio are unchanged; the data lags the learner by one iteration's
updates, as in asynchronous actor–learner designs. The simulator's stepping then costs almost no
wall time (measured on Bullet BallCircle; see benchmarks/RESULTS.md). Off by default: the default
schedule is the textbook one (collect with the current actor, then learn).

Actions live in ``[-1, 1]^A`` inside the algorithms and the buffer; they are scaled to the
environment's bounds when stepping. Several seeds train at once: every leaf of the state has a
leading seed axis, steps 1–4 are ``vmap``-ped (a single seed runs unbatched, see
:func:`saferl.algos.on_policy.over_seeds`) and the seed axis is sharded over the XLA CPU
devices, as in the on-policy engine. Cost limits are traced arrays.

**Q thresholds.** The critics estimate discounted per-step cost values, so an episode limit
``ε`` becomes ``ε_Q = ε (1 − γ^T) / ((1 − γ) T)`` (ALGORITHMS.md §1) with ``T`` the episode
length: ``episode_length`` if given, else the environment's time limit. For tasks whose
episodes can end early this ``T`` is an upper bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from saferl.algos.on_policy import (
    EpisodeTracker,
    RunSchedule,
    abstract_placed,
    check_shared_run_fields,
    nonfinite_location,
    over_seeds,
    place_seeds,
    track_episodes,
)
from saferl.core.lagrange import LagrangeConfig, LagrangeState, lagrange_update
from saferl.core.networks import host_params
from saferl.core.precompile import BackgroundCompile, stacked_initial_states
from saferl.data.replay import (
    Replay,
    SampledBatch,
    Transitions,
    replay_add,
    replay_init,
    replay_resize,
    replay_sample,
)
from saferl.envs.core import EnvSpec, NonFiniteError, VecEnv, check_finite
from saferl.envs.native import NativeTask, batch_reset, batch_step


@dataclass(frozen=True)
class OffPolicyConfig(RunSchedule):
    """Settings shared by every off-policy algorithm: the task, the budget, replay, networks.

    Attributes:
        env: Environment id (``saferl list`` shows them).
        env_kwargs: Keyword arguments for the environment.
        env_workers: Worker processes that step the copies of a host environment (Bullet,
            gymnasium) in parallel; 1 steps them in the learner's process. Native tasks: 1.
        cost_limit: One limit per constraint, in episode-cost units.
        steps: Environment steps to train for, per seed.
        seed: Random seed (ignored when ``seeds`` is given).
        seeds: Several seeds trained at once in one process (vectorised).
        num_envs: Environment copies per seed.
        rollout_steps: Steps per copy per iteration (an iteration collects
            ``num_envs × rollout_steps`` transitions, then learns).
        buffer_size: Replay capacity in transitions per seed (capped at ``steps``).
        batch_size: Minibatch size of every gradient update.
        warmup_steps: Steps per seed collected with uniform random actions before learning.
        update_ratio: Gradient updates per collected environment step (update-to-data ratio).
        gamma: Discount of the reward and cost critics.
        n_step: Steps of the n-step returns of the critic targets.
        tau: Polyak averaging rate of the target networks.
        hidden_sizes: Hidden layer sizes of the actor and of every critic.
        activation: Hidden activation (``relu``, ``tanh``, ``elu``, ``gelu``).
        actor_lr: Adam step size of the actor.
        critic_lr: Adam step size of the critics.
        episode_length: ``T`` of the Q-threshold conversion (default: the env's time limit).
        checkpoint_every: Save a checkpoint every this many iterations (and at the end).
        eval_episodes: At the end of the run, evaluate the deployed policy of every seed for
            this many episodes per mode (deterministic and stochastic) and record it in
            ``eval.json``; 0 skips it.
        run_dir: Run directory (default: a new folder under ``runs/``).
        cost_transform: ``sparse`` (the env's cost), ``dense`` or ``barrier`` (native tasks).
        cost_buffer: Safety buffer of the dense/barrier transforms.
        overlap_collection: Host environments: collect the next iteration while this one's
            updates run, with the actor from before them (a one-iteration policy lag; see the
            module docstring). Native tasks collect inside XLA and must leave it off.
    """

    env: str = "saferl/BallCircle-v0"
    env_kwargs: dict[str, float | int | bool | str] = field(default_factory=dict)
    env_workers: int = 1
    cost_limit: tuple[float, ...] = (10.0,)
    steps: int = 200_000
    seed: int = 0
    seeds: tuple[int, ...] = ()
    num_envs: int = 8
    rollout_steps: int = 25
    buffer_size: int = 1_000_000
    batch_size: int = 256
    warmup_steps: int = 5_000
    update_ratio: float = 0.25
    gamma: float = 0.99
    n_step: int = 1
    tau: float = 0.005
    hidden_sizes: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    actor_lr: float = 3e-4
    critic_lr: float = 1e-3
    episode_length: int | None = None
    checkpoint_every: int = 50
    eval_episodes: int = 10
    run_dir: str | None = None
    cost_transform: str = "sparse"
    cost_buffer: float = 1.0
    overlap_collection: bool = False

    def __post_init__(self) -> None:
        check_shared_run_fields(self, ("steps", "num_envs", "rollout_steps", "buffer_size",
                                       "batch_size", "n_step", "checkpoint_every"))
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0; got {self.warmup_steps}.")
        if not (self.update_ratio > 0 and math.isfinite(self.update_ratio)):
            raise ValueError(f"update_ratio must be a finite number > 0; got {self.update_ratio}.")
        if not 0 <= self.gamma < 1:
            raise ValueError(f"gamma must be in [0, 1) for off-policy critics; got {self.gamma}.")
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau must be in (0, 1]; got {self.tau}.")
        for name in ("actor_lr", "critic_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0; got {getattr(self, name)}.")
        if self.n_step > self.rollout_steps:
            raise ValueError(f"n_step ({self.n_step}) must be <= rollout_steps "
                             f"({self.rollout_steps}) so that one iteration fills a window.")
        if self.episode_length is not None and self.episode_length < 1:
            raise ValueError(f"episode_length must be >= 1 or None; got {self.episode_length}.")

    @property
    def steps_per_iteration(self) -> int:
        """Environment steps collected per iteration per seed."""
        return self.num_envs * self.rollout_steps

    @property
    def updates_per_iteration(self) -> int:
        """Gradient updates fused into one iteration's learning scan."""
        return max(1, round(self.update_ratio * self.steps_per_iteration))

    @property
    def warmup_iterations(self) -> int:
        """Iterations that act at random and do not learn."""
        return math.ceil(self.warmup_steps / self.steps_per_iteration)

    @property
    def replay_rows(self) -> int:
        """Rows (steps of all copies) of the replay ring."""
        capacity = min(self.buffer_size, self.iterations * self.steps_per_iteration)
        return max(self.rollout_steps, math.ceil(capacity / self.num_envs))

    # Off-policy agents keep raw observations (as FSRL, SB3): nothing to normalise.
    normalize_observations = False


def q_threshold(episode_limit: jax.Array, gamma: float, episode_length: int) -> jax.Array:
    """``ε_Q = ε (1 − γ^T) / ((1 − γ) T)``: the per-step discounted value of an episode limit.

    A policy that spreads its ``ε`` episode cost evenly over ``T`` steps has a cost value of
    ``ε/T · Σ_{t<T} γ^t`` at the start state (ALGORITHMS.md §1).
    """
    return episode_limit * (1.0 - gamma**episode_length) / ((1.0 - gamma) * episode_length)


class Limits(NamedTuple):
    """The cost limits in both units: per episode and as a Q threshold, each ``[m]``."""

    episode: jax.Array
    q: jax.Array


class OffPolicyState(NamedTuple):
    """The whole training state of one seed (a leading seed axis when several train at once)."""

    agent: Any
    replay: Replay
    tracker: EpisodeTracker
    env_state: Any  # EpisodeState for native tasks, () for host environments
    key: jax.Array
    iteration: jax.Array
    total_cost: jax.Array  # [m]
    cost_estimate: jax.Array  # [m] the latest episode-cost estimate
    has_cost_estimate: jax.Array  # bool


class OffPolicyAlgorithm(Protocol):
    """What an off-policy algorithm module provides to the engine."""

    def make_networks(self, config: Any, spec: EnvSpec) -> Any:
        """Its Flax modules (a NamedTuple with an ``actor``)."""
        ...

    def init_agent(self, config: Any, spec: EnvSpec, networks: Any, key: jax.Array) -> Any:
        """Initial parameters, targets, optimiser states and multipliers."""
        ...

    def sample_action(self, config: Any, networks: Any, actor_params: Any,
                      observations: jax.Array, key: jax.Array) -> jax.Array:
        """Exploration actions in ``[-1, 1]`` for ``[N, obs_dim]`` observations (native
        collection; it sees only the actor's parameters, ``agent.actor_params``)."""
        ...

    def host_sample_action(self, config: Any, networks: Any, actor_params: Any,
                           observations: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """numpy twin of :meth:`sample_action` for host rollouts: every seed's actions
        ``[S, N, A]`` from observations ``[S, N, obs_dim]``, float64 host parameters with a
        leading seed axis and standard-normal ``noise`` ``[S, N, A]`` (what ``sample_action``
        draws from its key)."""
        ...

    def update(self, config: Any, networks: Any, agent: Any, batch: SampledBatch,
               limits: Limits, key: jax.Array) -> tuple[Any, dict[str, jax.Array]]:
        """One gradient update from a sampled minibatch."""
        ...

    def update_multipliers(self, config: Any, agent: Any, episode_cost: jax.Array,
                           limits: Limits, fresh: jax.Array) -> tuple[Any, dict[str, jax.Array]]:
        """Once per iteration: multipliers from the iteration's episode cost (if ``fresh``)."""
        ...


def scale_action(spec: EnvSpec, action: jax.Array) -> jax.Array:
    """Map ``[-1, 1]`` to the environment's action bounds."""
    low = jnp.asarray(spec.action_space.low, jnp.float32)
    high = jnp.asarray(spec.action_space.high, jnp.float32)
    return low + 0.5 * (jnp.clip(action, -1.0, 1.0) + 1.0) * (high - low)


def init_state(algo: OffPolicyAlgorithm, config: Any, spec: EnvSpec, networks: Any,
               seed: int | jax.Array, task: NativeTask | None) -> OffPolicyState:
    """The initial state of one seed (native tasks also reset their environments here)."""
    run: OffPolicyConfig = config.run
    key = jax.random.PRNGKey(seed)
    key, agent_key, env_key = jax.random.split(key, 3)
    m = spec.num_costs
    return OffPolicyState(
        agent=algo.init_agent(config, spec, networks, agent_key),
        replay=replay_init(run.replay_rows, run.num_envs, spec.obs_dim, spec.action_dim, m),
        tracker=EpisodeTracker(jnp.zeros(run.num_envs), jnp.zeros((run.num_envs, m)),
                               jnp.zeros(run.num_envs, jnp.int32), jnp.zeros((run.num_envs, m))),
        env_state=() if task is None else batch_reset(task, env_key, run.num_envs),
        key=key,
        iteration=jnp.zeros((), jnp.int32),
        total_cost=jnp.zeros(m),
        cost_estimate=jnp.zeros(m),
        has_cost_estimate=jnp.zeros((), bool),
    )


def initial_states(algo: OffPolicyAlgorithm, config: Any, spec: EnvSpec,
                   task: NativeTask | None) -> OffPolicyState:
    """Initial states of every seed of ``config``, stacked along a leading seed axis (built
    by one quickly compiled program, :func:`~saferl.core.precompile.stacked_initial_states`)."""
    networks = algo.make_networks(config, spec)
    return stacked_initial_states(
        lambda seed: init_state(algo, config, spec, networks, seed, task), config.run.seed_list)


def needs_q_threshold(config: Any) -> bool:
    """Whether a configuration uses the Q-threshold form of the limits (CVPO, ``source="q"``)."""
    multiplier = getattr(config, "multiplier", None)
    return hasattr(config, "cvpo") or (multiplier is not None and multiplier.source == "q")


def limits_for(config: Any, spec: EnvSpec, cost_limit: jax.Array) -> Limits:
    """Both forms of the limits for a run (see :func:`q_threshold`).

    Without an episode length (no time limit and no ``episode_length``) the Q threshold is NaN;
    the engine refuses such a run up front when the algorithm needs it.
    """
    run: OffPolicyConfig = config.run
    length = run.episode_length or spec.max_episode_steps
    if length is None:
        return Limits(cost_limit, jnp.full_like(cost_limit, jnp.nan))
    return Limits(cost_limit, q_threshold(cost_limit, run.gamma, length))


def learn(algo: OffPolicyAlgorithm, config: Any, networks: Any, agent: Any, replay: Replay,
          limits: Limits, key: jax.Array) -> tuple[Any, dict[str, jax.Array]]:
    """``updates_per_iteration`` sampled gradient updates fused in one ``lax.scan``."""
    run: OffPolicyConfig = config.run

    def one_update(agent: Any, update_key: jax.Array) -> tuple[Any, dict[str, jax.Array]]:
        sample_key, step_key = jax.random.split(update_key)
        batch = replay_sample(replay, sample_key, run.batch_size, run.n_step, run.gamma)
        return algo.update(config, networks, agent, batch, limits, step_key)

    agent, metrics = jax.lax.scan(one_update, agent,
                                  jax.random.split(key, run.updates_per_iteration))
    return agent, {name: value.mean() for name, value in metrics.items()}


def finish_iteration(algo: OffPolicyAlgorithm, config: Any, networks: Any, spec: EnvSpec,
                     state: OffPolicyState, transitions: Transitions, limits: Limits,
                     learning: bool) -> tuple[OffPolicyState, dict[str, jax.Array]]:
    """Store the iteration's transitions, update the multipliers, learn (one seed; pure)."""
    m = spec.num_costs
    steps, num_envs = transitions.rewards.shape
    replay = replay_add(state.replay, transitions)
    tracker, episodes = track_episodes(state.tracker, transitions)  # type: ignore[arg-type]
    finished = episodes["episodes"] > 0
    count = jnp.maximum(episodes["episodes"], 1.0)
    batch_cost = episodes["sum_cost"] / count
    cost_estimate = jnp.where(finished, batch_cost, state.cost_estimate)
    has_estimate = finished | state.has_cost_estimate

    # Warm-up episodes come from random actions, not from the policy: they say nothing about
    # the policy's cost, so the multipliers wait for the first learning iteration.
    agent, metrics = algo.update_multipliers(config, state.agent, batch_cost, limits,
                                             finished & learning)
    key, learn_key = jax.random.split(state.key)
    if learning:
        agent, learn_metrics = learn(algo, config, networks, agent, replay, limits, learn_key)
    else:
        # Same metric names during warm-up (NaN), so that every logged row has every column.
        shapes = jax.eval_shape(lambda: learn(algo, config, networks, agent, replay, limits,
                                              learn_key))[1]
        learn_metrics = {name: jnp.full((), jnp.nan) for name in shapes}
    metrics.update(learn_metrics)

    total_cost = state.total_cost + transitions.costs.sum(axis=(0, 1))
    iteration = state.iteration + 1
    new_state = OffPolicyState(agent, replay, tracker, state.env_state, key, iteration,
                               total_cost, cost_estimate, has_estimate)
    nan = jnp.full((), jnp.nan)
    metrics.update({
        "rollout/ep_return": jnp.where(finished, episodes["sum_return"] / count, nan),
        "rollout/ep_length": jnp.where(finished, episodes["sum_length"] / count, nan),
        "rollout/episodes": episodes["episodes"],
        "rollout/cost_estimate_stale": (~finished).astype(jnp.float32),
        "rollout/step_reward": transitions.rewards.mean(),
        "train/learning": jnp.asarray(float(learning)),
    })
    total_steps = iteration.astype(jnp.float32) * steps * num_envs
    for i in range(m):
        metrics[f"rollout/ep_cost_{i}"] = jnp.where(finished, batch_cost[i], nan)
        metrics[f"train/cost_rate_{i}"] = total_cost[i] / total_steps
    metrics["_nonfinite_step"], metrics["_nonfinite_env"] = nonfinite_location(
        transitions.rewards, transitions.costs, transitions.next_observations)
    return new_state, metrics


def native_collect(algo: OffPolicyAlgorithm, config: Any, networks: Any, task: NativeTask,
                   state: OffPolicyState, random: bool) -> tuple[OffPolicyState, Transitions]:
    """Collect ``rollout_steps`` steps of every copy with ``lax.scan`` (one seed)."""
    run: OffPolicyConfig = config.run
    spec = task.spec

    def one_step(carry: tuple[Any, jax.Array], _: None) -> tuple[Any, Transitions]:
        env_state, key = carry
        key, act_key = jax.random.split(key)
        observations = env_state.observation
        if random:
            actions = jax.random.uniform(act_key, (run.num_envs, spec.action_dim),
                                         minval=-1.0, maxval=1.0)
        else:
            actions = algo.sample_action(config, networks, state.agent.actor_params,
                                            observations, act_key)
        env_state, out = batch_step(task, env_state, scale_action(spec, actions))
        return (env_state, key), Transitions(observations, actions, out.reward, out.costs,
                                             out.terminated, out.truncated,
                                             out.final_observation)

    (env_state, key), transitions = jax.lax.scan(one_step, (state.env_state, state.key), None,
                                                 length=run.rollout_steps)
    return state._replace(env_state=env_state, key=key), transitions


class Engine:
    """Compiled iteration functions for one off-policy algorithm, config and environment.

    ``iterate(states, cost_limit)`` runs one iteration of every seed (leading seed axis) and
    returns the new states and per-seed metrics as numpy arrays. Warm-up iterations (random
    actions, no learning) and learning iterations are two compiled functions; which one runs is
    decided on the host from the iteration count, which all seeds share.
    """

    def __init__(self, algo: OffPolicyAlgorithm, config: Any, spec: EnvSpec,
                 task: NativeTask | None = None, envs: list[VecEnv] | None = None) -> None:
        self.algo, self.config, self.spec, self.task, self.envs = algo, config, spec, task, envs
        run: OffPolicyConfig = config.run
        self.networks = algo.make_networks(config, spec)
        self.num_seeds = len(run.seed_list)
        self._iteration = 0
        if run.overlap_collection and task is not None:
            raise ValueError(
                f"overlap_collection=True: {spec.id!r} is a native task, collected inside the "
                f"compiled iteration, so there is nothing to overlap; leave it False (it is "
                f"for host environments such as Bullet and gymnasium).")
        if needs_q_threshold(config) and not (run.episode_length or spec.max_episode_steps):
            raise ValueError(
                f"{spec.id!r} has no time limit, so the episode length T that converts the "
                f"episode cost limit into a Q threshold is unknown; set episode_length "
                f"(e.g. --episode-length 1000).")

        def finish(states: OffPolicyState, transitions: Transitions, cost_limit: jax.Array,
                   learning: bool) -> tuple[OffPolicyState, dict[str, jax.Array]]:
            limits = limits_for(config, spec, cost_limit)
            return over_seeds(lambda s, t: finish_iteration(algo, config, self.networks, spec, s,
                                                            t, limits, learning),
                              self.num_seeds)(states, transitions)

        if task is not None:
            def iteration(states: OffPolicyState, cost_limit: jax.Array,
                          learning: bool) -> tuple[OffPolicyState, dict[str, jax.Array]]:
                states, transitions = over_seeds(
                    lambda s: native_collect(algo, config, self.networks, task, s,
                                             random=not learning), self.num_seeds)(states)
                return finish(states, transitions, cost_limit, learning)

            self._iterate = jax.jit(iteration, static_argnums=2)
        else:
            if envs is None or len(envs) != self.num_seeds:
                raise ValueError("host environments need one VecEnv per seed")
            self._finish = jax.jit(finish, static_argnums=3)
            self._observations: np.ndarray | None = None
            self._env_steps = 0
            # Overlapped collection: the next iteration's transitions (or the error that
            # stopped them), collected while the current iteration's updates ran.
            self._ahead: Transitions | None = None
            self._ahead_error: Exception | None = None
        self._compiling: BackgroundCompile | None = None

    def init_states(self) -> OffPolicyState:
        """Initial states of every seed, stacked along a leading axis and placed.

        On native tasks the first iteration compiles in the background meanwhile (see
        :mod:`saferl.core.precompile`).
        """
        self._start_compiling(None)
        return self.place(initial_states(self.algo, self.config, self.spec, self.task))

    def close(self) -> None:
        """Stop background compilation: skip jobs not started, wait for the running one (an
        interrupted start-up must not exit while XLA compiles in another thread)."""
        if self._compiling is not None:
            self._compiling.close()

    def place(self, states: OffPolicyState) -> OffPolicyState:
        """Shard the seed axis over the local devices."""
        self._iteration = int(np.asarray(jax.device_get(states.iteration)).reshape(-1)[0])
        self._ahead = self._ahead_error = None
        placed = place_seeds(states, self.num_seeds)
        self._start_compiling(placed)
        return placed

    def _start_compiling(self, states: OffPolicyState | None) -> None:
        """On native tasks, compile the next iterations (warm-up and/or learning variant) in a
        background thread; ``states`` are the placed states, or ``None`` for fresh ones (their
        shapes are traced). Host environments compile on first call: measured, overlapping the
        compilation with the first collection gained nothing beyond noise."""
        if self._compiling is not None or self.task is None:
            return
        run: OffPolicyConfig = self.config.run
        first = self._iteration >= run.warmup_iterations
        flags = [first] + ([True] if not first and run.iterations > run.warmup_iterations else [])
        memo: list[OffPolicyState] = []

        def placed() -> OffPolicyState:  # traced once, in the compiling thread
            if not memo:
                memo.append(abstract_placed(states, lambda: initial_states(
                    self.algo, self.config, self.spec, self.task), self.num_seeds))
            return memo[0]

        limit = jax.ShapeDtypeStruct((self.spec.num_costs,), jnp.float32)
        self._compiling = BackgroundCompile([
            (learning, lambda flag=learning: self._iterate.lower(placed(), limit, flag).compile())
            for learning in flags])

    def iterate(self, states: OffPolicyState,
                cost_limit: jax.Array) -> tuple[OffPolicyState, dict[str, np.ndarray]]:
        """One iteration of every seed; metrics come back as numpy ``[num_seeds]`` arrays."""
        run: OffPolicyConfig = self.config.run
        learning = self._iteration >= run.warmup_iterations
        if self.task is not None:
            if self._compiling is not None:
                self._compiling.wait(learning)
            states, metrics = self._iterate(states, cost_limit, learning)
        else:
            if self._ahead_error is not None:  # the overlapped collection failed
                error, self._ahead_error = self._ahead_error, None
                raise error
            transitions, self._ahead = self._ahead, None
            if transitions is None:
                states, transitions = self._host_collect(states, random=not learning)
            ahead = run.overlap_collection and self._iteration + 1 < run.iterations
            if ahead:  # the key and actor of the next collection, before the updates
                states, collect = self._collection_inputs(states)
            states, metrics = self._finish(states, transitions, cost_limit, learning)
            if ahead:  # runs while XLA computes the updates dispatched above
                next_random = self._iteration + 1 < run.warmup_iterations
                try:
                    self._ahead = self._collect(*collect, random=next_random)
                except Exception as error:  # raised by the next iterate(), once this
                    self._ahead_error = error  # iteration is logged and checkpointed
        self._iteration += 1
        metrics = jax.device_get(metrics)
        if (metrics["_nonfinite_step"] >= 0).any():
            seed_index = int(np.argmax(metrics["_nonfinite_step"] >= 0))
            raise NonFiniteError(
                f"Environment {self.spec.id!r} returned a non-finite observation, reward or cost "
                f"at step {int(metrics['_nonfinite_step'][seed_index])} of iteration "
                f"{self._iteration} in env index {int(metrics['_nonfinite_env'][seed_index])} "
                f"(seed {self.config.run.seed_list[seed_index]}); the run stopped and the last "
                f"checkpoint is intact.")
        return states, {k: np.asarray(v) for k, v in metrics.items() if not k.startswith("_")}

    def _host_collect(self, states: OffPolicyState,
                      random: bool) -> tuple[OffPolicyState, Transitions]:
        """Collect one iteration of every seed from host environments with the current actor."""
        states, collect = self._collection_inputs(states)
        return states, self._collect(*collect, random=random)

    def _collection_inputs(self, states: OffPolicyState
                           ) -> tuple[OffPolicyState, tuple[Any, list[np.random.Generator]]]:
        """Split every seed's key for a collection: the states with their next keys, and the
        collection's inputs (the actor's parameters on the host, one numpy generator per seed,
        seeded from its key, so runs stay reproducible)."""
        keys = jax.vmap(lambda k: jax.random.split(k))(states.key)  # [S, 2, 2]
        collect_keys = np.asarray(jax.device_get(keys[:, 1])).reshape(self.num_seeds, -1)
        rngs = [np.random.default_rng([int(x) for x in key]) for key in collect_keys]
        actor = host_params(states.agent.actor_params)
        return states._replace(key=keys[:, 0]), (actor, rngs)

    def _collect(self, actor: Any, rngs: list[np.random.Generator],
                 random: bool) -> Transitions:
        """Step every seed's host environments ``rollout_steps`` times (numpy only: no XLA call,
        so it can run while an update computes)."""
        run: OffPolicyConfig = self.config.run
        envs = self.envs
        assert envs is not None
        if self._observations is None:
            self._observations = np.stack([
                env.reset(seed=seed) for env, seed in zip(envs, run.seed_list, strict=True)
            ]).astype(np.float32)
        steps, seeds, n = run.rollout_steps, self.num_seeds, run.num_envs
        obs_dim, act_dim, m = self.spec.obs_dim, self.spec.action_dim, self.spec.num_costs
        buffers = {
            "observations": np.empty((seeds, steps, n, obs_dim), np.float32),
            "actions": np.empty((seeds, steps, n, act_dim), np.float32),
            "rewards": np.empty((seeds, steps, n), np.float32),
            "costs": np.empty((seeds, steps, n, m), np.float32),
            "terminated": np.empty((seeds, steps, n), bool),
            "truncated": np.empty((seeds, steps, n), bool),
            "next_observations": np.empty((seeds, steps, n, obs_dim), np.float32),
        }
        low = np.asarray(self.spec.action_space.low, np.float32)
        high = np.asarray(self.spec.action_space.high, np.float32)
        observations = self._observations
        for t in range(steps):
            if random:
                actions = np.stack([rng.uniform(-1.0, 1.0, (n, act_dim)) for rng in rngs])
            else:
                noise = np.stack([rng.standard_normal((n, act_dim)) for rng in rngs])
                actions = self.algo.host_sample_action(self.config, self.networks, actor,
                                                       observations, noise)
            actions = actions.astype(np.float32)
            buffers["observations"][:, t] = observations
            buffers["actions"][:, t] = actions
            env_actions = low + 0.5 * (np.clip(actions, -1.0, 1.0) + 1.0) * (high - low)
            next_observations = np.empty_like(observations)
            for s, env in enumerate(envs):
                result = env.step(env_actions[s])
                check_finite(result, self._env_steps, self.spec.id)
                buffers["rewards"][s, t] = result.reward
                buffers["costs"][s, t] = result.costs
                buffers["terminated"][s, t] = result.terminated
                buffers["truncated"][s, t] = result.truncated
                buffers["next_observations"][s, t] = result.final_observation
                next_observations[s] = result.observation
            observations = next_observations
            self._env_steps += n
        self._observations = observations
        return Transitions(**{k: jnp.asarray(v) for k, v in buffers.items()})


def cut_open_episodes(states: OffPolicyState) -> OffPolicyState:
    """Mark the newest stored step of every copy as truncated (resuming with host envs).

    Host simulators cannot be checkpointed, so their episodes restart on resume; without this
    an n-step window would join the interrupted episode to the new one. A truncation
    bootstraps from the stored true next observation, which is what the cut episode needs.
    """
    replay = states.replay
    capacity = replay.truncated.shape[-2]

    def cut(r: Replay) -> Replay:
        last = (r.position - 1) % capacity
        marked = r.truncated.at[last].set(True)
        return r._replace(truncated=jnp.where(r.size > 0, marked, r.truncated))

    return states._replace(replay=jax.vmap(cut)(replay))


@dataclass(frozen=True)
class MultiplierParams:
    """Where the Lagrangian algorithms' multipliers get their cost signal.

    Attributes:
        source: ``"episode"``: once per iteration from the mean cost of the episodes collected
            in it, against the episode limit (default; FSRL's choice). ``"q"``: at every
            gradient update from the batch mean of ``Q_C(s, π(s))`` against the Q threshold
            ``ε_Q`` (the rule then takes thousands of steps per iteration: use a small
            ``lagrange.lr``).
    """

    source: str = "episode"

    def __post_init__(self) -> None:
        if self.source not in ("episode", "q"):
            raise ValueError(
                f"multiplier.source must be 'episode' or 'q'; got {self.source!r}.")


def episode_multipliers(lagrange: LagrangeConfig, source: MultiplierParams,
                        state: LagrangeState, episode_cost: jax.Array, limits: Limits,
                        fresh: jax.Array) -> tuple[LagrangeState, dict[str, jax.Array]]:
    """The once-per-iteration multiplier step of the episode form (no-op for the Q form)."""
    if source.source == "episode":
        updated = lagrange_update(lagrange, state, episode_cost, limits.episode)
        state = jax.tree_util.tree_map(lambda new, old: jnp.where(fresh, new, old), updated,
                                       state)
    return state, {f"lagrange/lambda_{i}": state.multiplier[i]
                   for i in range(state.multiplier.shape[0])}


def q_multipliers(lagrange: LagrangeConfig, source: MultiplierParams, state: LagrangeState,
                  cost_values: jax.Array, limits: Limits) -> LagrangeState:
    """The per-update multiplier step of the Q form: ``mean Q_C(s, π(s))`` against ``ε_Q``."""
    if source.source != "q":
        return state
    return lagrange_update(lagrange, state, jax.lax.stop_gradient(cost_values.mean(0)), limits.q)


def init_actor_critics(networks: Any, spec: EnvSpec, key: jax.Array) -> tuple[Any, Any]:
    """Fresh parameters of ``networks.actor`` (of observations) and ``networks.critics`` (of
    observations and actions), from two halves of ``key``."""
    actor_key, critic_key = jax.random.split(key)
    obs = jnp.zeros((1, spec.obs_dim))
    return (networks.actor.init(actor_key, obs),
            networks.critics.init(critic_key, obs, jnp.zeros((1, spec.action_dim))))


def td_targets(batch: SampledBatch, next_reward: jax.Array, next_costs: jax.Array) -> jax.Array:
    """Critic targets ``[B, 1 + m]``: each signal plus ``discount ×`` its next-state value.

    ``batch.discount`` is ``γ^h`` for an n-step window and 0 after a termination, so a
    time-limit truncation still bootstraps (from the stored true last observation).
    """
    signals = jnp.concatenate([batch.rewards[:, None], batch.costs], axis=-1)
    values = jnp.concatenate([next_reward[:, None], next_costs], axis=-1)
    return jax.lax.stop_gradient(signals + batch.discount[:, None] * values)


def critic_step(critics: Any, tx: optax.GradientTransformation, params: Any, opt_state: Any,
                batch: SampledBatch, targets: jax.Array, num_reward: int
                ) -> tuple[Any, Any, jax.Array]:
    """One Adam step of every Q-critic towards its target (reward critics share column 0)."""

    def loss_fn(p: Any) -> jax.Array:
        q = critics.apply(p, batch.observations, batch.actions)
        expanded = jnp.concatenate([jnp.repeat(targets[:, :1], num_reward, axis=1),
                                    targets[:, 1:]], axis=1)
        return jnp.mean(jnp.sum((q - expanded) ** 2, axis=-1))

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def resize_replay(states: OffPolicyState, config: Any) -> OffPolicyState:
    """Grow every seed's replay ring to the configuration's size (a run extended on resume)."""
    rows = config.run.replay_rows
    if states.replay.rewards.shape[1] >= rows:
        return states
    return states._replace(replay=jax.vmap(lambda r: replay_resize(r, rows))(states.replay))


def polyak(target: Any, online: Any, tau: float) -> Any:
    """``target ← (1 − τ)·target + τ·online`` on every leaf."""
    return jax.tree_util.tree_map(lambda t, o: (1.0 - tau) * t + tau * o, target, online)


OffPolicyIterate = Callable[[OffPolicyState, jax.Array],
                            tuple[OffPolicyState, dict[str, np.ndarray]]]
