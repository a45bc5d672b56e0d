"""The on-policy engine: rollouts, GAE for reward and costs, episode statistics, the update loop.

An on-policy algorithm (``ppo``, ``ppo_lag``, later ``trpo``, ``cpo``, …) supplies only two pure
functions, ``init_agent`` and ``update``; everything else lives here once:

1. **Collect** ``num_envs × rollout_steps`` transitions. For native tasks the whole rollout is a
   ``lax.scan`` inside ``jit``; for host environments (Bullet, gymnasium) a Python loop calls a
   jitted ``act``. Observations are normalised with statistics frozen during the rollout.
2. **Process** (jitted, shared by both paths): values of every observation and of every true next
   observation, GAE per channel (reward with (γ, λ), each cost with (γ_c, λ_c)), episode
   statistics of the episodes that finished in the batch, the training cost rate, then the
   observation statistics are updated.
3. **Update**: the algorithm's ``update`` on the flattened batch.

Several seeds train at once: every leaf of :class:`TrainState` carries a leading seed axis and
steps 1–3 are ``vmap``-ped over it. When the process has several XLA CPU devices (the ``saferl``
command asks for one per core) the seed axis is also sharded across them, so that seeds run on
different cores: one seed's small matrix products keep only ~1.5 of 2 cores busy. Cost limits are
traced arrays, never static configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from saferl.algos.policy_gradient import (
    AgentState,
    Batch,
    OnPolicyAlgorithm,
    OnPolicyConfig,
    OnPolicyFunctions,
    OnPolicyNetworks,
    init_network_params,
    make_networks,
    reward_cost_advantages,
    value_loss,
)
from saferl.core.distributions import gaussian_log_prob, gaussian_sample
from saferl.core.networks import host_mlp, host_params
from saferl.core.normalization import (
    RunningStats,
    normalize,
    running_stats_init,
    running_stats_update,
)
from saferl.core.precompile import BackgroundCompile
from saferl.core.returns import gae
from saferl.core.shaping import PredictorState, predictor_init, shaped_costs
from saferl.engine.episodes import (
    EpisodeTracker,
    episode_metrics,
    nonfinite_location,
    raise_if_nonfinite,
    summarize,
    track_episodes,
    tracker_init,
    tracker_reset,
    update_cost_estimate,
)
from saferl.engine.family import PolicyParts
from saferl.engine.host import HostCollector
from saferl.engine.members import (
    abstract_placed,
    member_labels,
    members,
    over_members,
    place_members,
    stacked_initial_states,
)
from saferl.envs.core import EnvSpec, VecEnv
from saferl.envs.native import EpisodeState, NativeTask, batch_reset, batch_step

# What algorithms are written against (algos/policy_gradient.py), importable from here as before.
__all__ = ["ON_POLICY", "AgentState", "Batch", "Engine", "HostActor", "OnPolicyAlgorithm",
           "OnPolicyConfig", "OnPolicyFunctions", "OnPolicyNetworks", "Rollout", "TrainState",
           "init_network_params", "initial_states", "make_networks", "process_and_update",
           "reward_cost_advantages", "value_loss"]


class TrainState(NamedTuple):
    """The whole training state of one seed (a leading seed axis when several train at once)."""

    agent: AgentState
    obs_stats: RunningStats
    tracker: EpisodeTracker
    env_state: Any  # EpisodeState for native tasks, () for host environments
    key: jax.Array
    iteration: jax.Array
    predictor: PredictorState
    total_cost: jax.Array  # [m] all cost incurred so far (for the cost rate)
    cost_estimate: jax.Array  # [m] latest episode-cost estimate
    has_cost_estimate: jax.Array  # bool: an episode has finished at least once
    cost_limit: jax.Array  # [m] this member's cost limits (a grid of limits: its own)


class Rollout(NamedTuple):
    """Raw transitions ``[T, N, ...]``."""

    observations: jax.Array
    actions: jax.Array
    log_probs: jax.Array
    rewards: jax.Array
    costs: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    final_observations: jax.Array


def init_train_state(algo: OnPolicyAlgorithm, config: Any, spec: EnvSpec,
                     networks: OnPolicyNetworks, seed: int | jax.Array, cost_limit: jax.Array,
                     task: NativeTask | None) -> TrainState:
    """The initial state of one member: its seed and cost limits ``[m]`` (native tasks also
    reset their environments here)."""
    run: OnPolicyConfig = config.run
    key = jax.random.PRNGKey(seed)
    key, agent_key, env_key, predictor_key = jax.random.split(key, 4)
    m = spec.num_costs
    env_state: Any = () if task is None else batch_reset(task, env_key, run.num_envs)
    return TrainState(
        agent=algo.init_agent(config, spec, networks, agent_key),
        obs_stats=running_stats_init(spec.obs_dim),
        tracker=tracker_init(run.num_envs, m),
        env_state=env_state,
        key=key,
        iteration=jnp.zeros((), jnp.int32),
        predictor=predictor_init(networks.predictor, spec.obs_dim, run.predictor_lr,
                                 predictor_key),
        total_cost=jnp.zeros(m),
        cost_estimate=jnp.zeros(m),
        has_cost_estimate=jnp.zeros((), bool),
        cost_limit=jnp.asarray(cost_limit, jnp.float32).reshape(m),
    )


def initial_states(algo: OnPolicyAlgorithm, config: Any, spec: EnvSpec, networks: OnPolicyNetworks,
                   task: NativeTask | None) -> TrainState:
    """Initial states of every member of ``config`` (:func:`~saferl.engine.members.members`),
    stacked along a leading member axis (built by one quickly compiled program,
    :func:`~saferl.engine.members.stacked_initial_states`)."""
    return stacked_initial_states(
        lambda seed, limit: init_train_state(algo, config, spec, networks, seed, limit, task),
        members(config))


def act(networks: OnPolicyNetworks, policy_params: Any, obs_stats: RunningStats,
        observations: jax.Array, key: jax.Array,
        normalize_observations: bool) -> tuple[jax.Array, jax.Array]:
    """Sample actions and their log-probabilities for raw observations ``[N, obs_dim]``."""
    obs = normalize(obs_stats, observations) if normalize_observations else observations
    mean, log_std = networks.policy.apply(policy_params, obs)
    actions = gaussian_sample(key, mean, log_std)
    return actions, gaussian_log_prob(mean, log_std, actions)


class HostActor:
    """A numpy twin of :func:`act` for rollouts in host simulators.

    A jitted call plus fetching its result per step costs more than this small numpy forward
    pass (benchmarks/RESULTS.md D4). The parameters are copied to the host once per rollout;
    the noise comes from a numpy generator seeded from each member's JAX key, so runs stay
    reproducible.
    """

    def __init__(self, config: OnPolicyConfig) -> None:
        self.normalize_observations = config.normalize_observations
        self.activation = config.activation

    def load(self, states: TrainState) -> None:
        """Copy every seed's policy parameters, normaliser and an RNG to the host."""
        params = host_params(states.agent.policy_params)["params"]
        self.mlp = params["MLP_0"]
        self.log_std = params["log_std"]  # [S, A]
        stats = jax.device_get(states.obs_stats)
        self.mean = np.asarray(stats.mean, np.float64)[:, None]
        self.scale = 1.0 / np.sqrt(np.asarray(stats.var, np.float64)[:, None] + 1e-8)
        keys = np.asarray(jax.device_get(states.key)).reshape(len(self.log_std), -1)
        self.rngs = [np.random.default_rng([int(x) for x in key]) for key in keys]

    def __call__(self, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Actions and log-probabilities for raw observations ``[S, N, obs_dim]``."""
        x = observations.astype(np.float64)
        if self.normalize_observations:
            x = np.clip((x - self.mean) * self.scale, -10.0, 10.0)
        x = host_mlp(self.mlp, x, self.activation)
        noise = np.stack([rng.standard_normal(x.shape[1:]) for rng in self.rngs])
        std = np.exp(self.log_std)[:, None]
        actions = x + std * noise
        log_probs = np.sum(-0.5 * noise**2 - self.log_std[:, None] - 0.5 * np.log(2 * np.pi),
                           axis=-1)
        return actions.astype(np.float32), log_probs.astype(np.float32)


def native_rollout(config: OnPolicyConfig, networks: OnPolicyNetworks, task: NativeTask,
                   state: TrainState) -> tuple[TrainState, Rollout]:
    """Collect ``rollout_steps`` steps of every copy with ``lax.scan`` (one seed)."""

    def one_step(carry: tuple[EpisodeState, jax.Array], _: None) -> tuple[Any, Rollout]:
        env_state, key = carry
        key, act_key = jax.random.split(key)
        observations = env_state.observation
        actions, log_probs = act(networks, state.agent.policy_params, state.obs_stats,
                                 observations, act_key, config.normalize_observations)
        env_state, out = batch_step(task, env_state, actions)
        transition = Rollout(observations, actions, log_probs, out.reward, out.costs,
                             out.terminated, out.truncated, out.final_observation)
        return (env_state, key), transition

    (env_state, key), rollout = jax.lax.scan(one_step, (state.env_state, state.key), None,
                                             length=config.rollout_steps)
    return state._replace(env_state=env_state, key=key), rollout


def constraint_signal(run: OnPolicyConfig, networks: OnPolicyNetworks, state: TrainState,
                      observations: jax.Array, rollout: Rollout
                      ) -> tuple[PredictorState, jax.Array, dict[str, jax.Array]]:
    """The cost the constraint sees: the raw cost, or with CPO's safety predictor (refit on this
    batch first, :func:`saferl.core.shaping.shaped_costs`) ``c + α·P(unsafe soon | s)``."""
    if not run.safety_predictor:
        return state.predictor, rollout.costs, {}
    return shaped_costs(networks.predictor, state.predictor, run.predictor_lr,
                        run.predictor_steps, run.predictor_horizon, run.predictor_alpha,
                        observations, rollout.costs, rollout.terminated | rollout.truncated)


def advantages_and_returns(run: OnPolicyConfig, networks: OnPolicyNetworks, critic_params: Any,
                           observations: jax.Array, final_observations: jax.Array,
                           rollout: Rollout, constraint_costs: jax.Array
                           ) -> tuple[jax.Array, jax.Array]:
    """GAE per channel ``[T, N, 1 + m]``: the reward with (γ, λ), each cost with (γ_c, λ_c)."""
    m = constraint_costs.shape[-1]
    values = networks.critics.apply(critic_params, observations)
    next_values = networks.critics.apply(critic_params, final_observations)
    signals = jnp.concatenate([rollout.rewards[..., None], constraint_costs], axis=-1)
    gamma = jnp.asarray([run.gamma] + [run.cost_gamma] * m)
    lam = jnp.asarray([run.gae_lambda] + [run.cost_gae_lambda] * m)
    return gae(signals, values, next_values, rollout.terminated, rollout.truncated, gamma, lam)


def episode_statistics(run: OnPolicyConfig, spec: EnvSpec, state: TrainState, rollout: Rollout,
                       constraint_costs: jax.Array, returns: jax.Array
                       ) -> tuple[EpisodeTracker, Any, jax.Array, jax.Array, jax.Array,
                                  jax.Array]:
    """The batch's finished episodes and the constraint-cost estimate the update uses.

    Returns:
        ``(tracker, means, cost_estimate [m], has_estimate, source, episode_length)``: the
        estimate is the mean (γ_c-discounted, shaped) cost of the finished episodes; with none,
        the previous estimate; before any, the cost critics' λ-returns at the rollout's first
        states (:func:`~saferl.engine.episodes.update_cost_estimate`). ``episode_length`` is the
        finished episodes' mean length, or the time limit when none finished.
    """
    tracker, sums = track_episodes(state.tracker, rollout, run.cost_gamma, constraint_costs)
    means = summarize(sums)
    start_value = returns[0, :, 1:].mean(axis=0)
    estimate, has_estimate, source = update_cost_estimate(
        means.finished, means.constraint_cost, state.cost_estimate, state.has_cost_estimate,
        start_value)
    limit_steps = spec.max_episode_steps or rollout.rewards.shape[0]
    episode_length = jnp.where(means.finished, means.length, float(limit_steps))
    return tracker, means, estimate, has_estimate, source, episode_length


def process_and_update(algo: OnPolicyAlgorithm, config: Any, networks: OnPolicyNetworks,
                       spec: EnvSpec, state: TrainState, rollout: Rollout
                       ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One member's batch: the constraint's cost, GAE, episode statistics, the algorithm's
    update under the member's own cost limits, the new state and the metrics (pure)."""
    run: OnPolicyConfig = config.run
    steps, num_envs = rollout.rewards.shape

    def prepare(obs: jax.Array) -> jax.Array:
        return normalize(state.obs_stats, obs) if run.normalize_observations else obs

    observations = prepare(rollout.observations)
    predictor, constraint_costs, predictor_metrics = constraint_signal(
        run, networks, state, observations, rollout)
    advantages, returns = advantages_and_returns(
        run, networks, state.agent.critic_params, observations,
        prepare(rollout.final_observations), rollout, constraint_costs)
    tracker, means, cost_estimate, has_estimate, source, episode_length = episode_statistics(
        run, spec, state, rollout, constraint_costs, returns)

    flat = lambda x: x.reshape((steps * num_envs, *x.shape[2:]))  # noqa: E731
    old_mean, old_log_std = networks.policy.apply(state.agent.policy_params, flat(observations))
    batch = Batch(flat(observations), flat(rollout.actions), flat(rollout.log_probs), old_mean,
                  old_log_std, flat(advantages), flat(returns), cost_estimate, has_estimate,
                  episode_length, state.cost_limit)
    key, update_key = jax.random.split(state.key)
    agent, update_metrics = algo.update(config, networks, state.agent, batch, update_key)

    obs_stats = (running_stats_update(state.obs_stats, rollout.observations)
                 if run.normalize_observations else state.obs_stats)
    total_cost = state.total_cost + rollout.costs.sum(axis=(0, 1))
    iteration = state.iteration + 1
    new_state = TrainState(agent, obs_stats, tracker, state.env_state, key, iteration, predictor,
                           total_cost, cost_estimate, has_estimate, state.cost_limit)

    metrics = episode_metrics(means, rollout.rewards, total_cost,
                              iteration.astype(jnp.float32) * steps * num_envs)
    metrics["rollout/cost_estimate_source"] = source
    if run.cost_gamma < 1.0 or run.safety_predictor:
        nan = jnp.full((), jnp.nan)
        for i in range(spec.num_costs):  # the cost the constraint sees: discounted, shaped
            metrics[f"rollout/ep_constraint_cost_{i}"] = jnp.where(
                means.finished, means.constraint_cost[i], nan)
    metrics.update(predictor_metrics)
    metrics.update(update_metrics)
    metrics["_nonfinite_step"], metrics["_nonfinite_env"] = nonfinite_location(
        rollout.rewards, rollout.costs, rollout.final_observations)
    return new_state, metrics


class Engine:
    """Compiled iteration functions for one algorithm, config and environment.

    ``iterate(states)`` runs one full iteration of every member (``states`` carries a leading
    member axis; each member's cost limits are in its state) and returns the new states and
    per-member metrics as numpy arrays.
    """

    def __init__(self, algo: OnPolicyAlgorithm, config: Any, spec: EnvSpec,
                 task: NativeTask | None = None, envs: list[VecEnv] | None = None) -> None:
        self.algo, self.config, self.spec, self.task = algo, config, spec, task
        self.networks = make_networks(config.run, spec)
        run: OnPolicyConfig = config.run
        self.labels = member_labels(config)
        self.members = len(self.labels)
        process = over_members(
            lambda s, r: process_and_update(algo, config, self.networks, spec, s, r),
            self.members)
        if task is not None:
            def iteration(states: TrainState) -> tuple[TrainState, dict]:
                states, rollouts = over_members(
                    lambda s: native_rollout(run, self.networks, task, s), self.members)(states)
                return process(states, rollouts)
            self._iterate = jax.jit(iteration)
        else:
            if envs is None or len(envs) != self.members:
                raise ValueError("host environments need one VecEnv per member")
            self._process = jax.jit(process)
            self._actor = HostActor(run)
            self._collector = HostCollector(envs, spec)
        self._compiling: BackgroundCompile | None = None

    def init_states(self) -> TrainState:
        """Initial states of every member, stacked along a leading axis and placed.

        On native tasks the iteration compiles in the background meanwhile (see
        :mod:`saferl.core.precompile`).
        """
        self._start_compiling(None)
        return self.place(initial_states(self.algo, self.config, self.spec, self.networks,
                                         self.task))

    def close(self) -> None:
        """Stop background compilation: skip jobs not started, wait for the running one (an
        interrupted start-up must not exit while XLA compiles in another thread)."""
        if self._compiling is not None:
            self._compiling.close()

    def place(self, states: TrainState) -> TrainState:
        """Shard the member axis over the local devices (see :func:`place_members`)."""
        placed = place_members(states, self.members)
        self._start_compiling(placed)
        return placed

    def _start_compiling(self, states: TrainState | None) -> None:
        """On native tasks, compile the iteration in a background thread; ``states`` are the
        placed states, or ``None`` for fresh ones (their shapes are traced). Host environments
        compile the update on first call (benchmarks/RESULTS.md D6)."""
        if self._compiling is not None or self.task is None:
            return
        def compile_iteration() -> None:
            placed = abstract_placed(states, lambda: initial_states(
                self.algo, self.config, self.spec, self.networks, self.task), self.members)
            self._iterate.lower(placed).compile()

        self._compiling = BackgroundCompile([("iteration", compile_iteration)])

    def iterate(self, states: TrainState) -> tuple[TrainState, dict[str, np.ndarray]]:
        """One iteration of every member; metrics come back as numpy ``[members]`` arrays."""
        if self.task is not None:
            if self._compiling is not None:
                self._compiling.wait("iteration")
            states, metrics = self._iterate(states)
        else:
            states, rollout = self._host_rollout(states)
            states, metrics = self._process(states, rollout)
        metrics = jax.device_get(metrics)
        raise_if_nonfinite(metrics, self.spec.id, int(np.asarray(states.iteration)[0]),
                           self.labels)
        return states, {k: np.asarray(v) for k, v in metrics.items() if not k.startswith("_")}

    def _host_rollout(self, states: TrainState) -> tuple[TrainState, Rollout]:
        """Collect one rollout of every member from host environments."""
        self._actor.load(states)

        def actor(observations: np.ndarray, _starts: np.ndarray) -> dict[str, np.ndarray]:
            actions, log_probs = self._actor(observations)
            return {"actions": actions, "log_probs": log_probs}

        buffers = self._collector.collect(self.config.run.rollout_steps, actor)
        states = states._replace(key=jax.vmap(lambda k: jax.random.split(k)[0])(states.key))
        return states, Rollout(**{k: jnp.asarray(v) for k, v in buffers.items()})


class OnPolicyFamily:
    """The on-policy :class:`~saferl.engine.family.EngineFamily` (the registry's ``engine``)."""

    name = "on_policy"

    def initial_states(self, algorithm: OnPolicyAlgorithm, config: Any, spec: EnvSpec,
                       task: NativeTask | None) -> TrainState:
        """Fresh member-stacked states (see :func:`initial_states`)."""
        return initial_states(algorithm, config, spec, make_networks(config.run, spec), task)

    def make_engine(self, algorithm: OnPolicyAlgorithm, config: Any, spec: EnvSpec,
                    task: NativeTask | None, envs: list[VecEnv] | None) -> Engine:
        """The on-policy :class:`Engine`."""
        return Engine(algorithm, config, spec, task=task, envs=envs)

    def prepare_resume(self, states: TrainState, config: Any, host: bool) -> TrainState:
        """Host simulators restart their episodes on resume: forget the partial sums."""
        if not host:
            return states
        return states._replace(tracker=tracker_reset(states.tracker))

    def policy_parts(self, algorithm: OnPolicyAlgorithm, config: Any, spec: EnvSpec,
                     states: TrainState, index: int) -> PolicyParts:
        """Member ``index``'s Gaussian policy and observation normaliser (actions clipped)."""
        pick = lambda x: x[index]  # noqa: E731
        stats = (jax.tree_util.tree_map(pick, states.obs_stats)
                 if config.run.normalize_observations else None)
        return PolicyParts(make_networks(config.run, spec).policy,
                           jax.tree_util.tree_map(pick, states.agent.policy_params), stats,
                           squashed=False)


ON_POLICY = OnPolicyFamily()


def metric_names(spec: EnvSpec) -> list[str]:
    """Names of the engine's per-episode metrics for ``spec`` (algorithms add their own)."""
    names = ["rollout/ep_return", "rollout/ep_length", "rollout/episodes"]
    names += [f"rollout/ep_cost_{i}" for i in range(spec.num_costs)]
    return names


OnPolicyIterate = Callable[[TrainState], tuple[TrainState, dict[str, np.ndarray]]]
