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

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from saferl.core.distributions import gaussian_log_prob, gaussian_sample
from saferl.core.lagrange import LagrangeState
from saferl.core.networks import (
    ACTIVATIONS,
    MLP,
    GaussianPolicy,
    ValueCritics,
    host_mlp,
    host_params,
)
from saferl.core.normalization import (
    RunningStats,
    normalize,
    running_stats_init,
    running_stats_update,
)
from saferl.core.precompile import BackgroundCompile, abstract, stacked_initial_states
from saferl.core.returns import gae
from saferl.envs.core import EnvSpec, NonFiniteError, VecEnv, check_finite
from saferl.envs.native import EpisodeState, NativeTask, batch_reset, batch_step


def check_shared_run_fields(run: Any, positive: tuple[str, ...]) -> None:
    """Validate the fields every run configuration has (on- and off-policy).

    Checks the cost limits, the ``positive`` integer fields, activation, hidden sizes, the cost
    transform and its buffer, and that the seeds are distinct; raises ``ValueError`` naming the
    field, the value and what is allowed.
    """
    if not run.cost_limit:
        raise ValueError("cost_limit needs at least one value (one per constraint).")
    for limit in run.cost_limit:
        if not (math.isfinite(limit) and limit >= 0):
            raise ValueError(
                f"cost_limit values must be finite and >= 0; got {list(run.cost_limit)}.")
    for name in positive:
        if getattr(run, name) < 1:
            raise ValueError(f"{name} must be a positive integer; got {getattr(run, name)}.")
    if run.activation not in ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATIONS)}; got {run.activation!r}.")
    if not run.hidden_sizes or min(run.hidden_sizes) < 1:
        raise ValueError(f"hidden_sizes must be positive sizes; got {run.hidden_sizes}.")
    if run.cost_transform not in ("sparse", "dense", "barrier"):
        raise ValueError(f"cost_transform must be 'sparse', 'dense' or 'barrier'; got "
                         f"{run.cost_transform!r}.")
    if not (run.cost_buffer > 0 and math.isfinite(run.cost_buffer)):
        raise ValueError(f"cost_buffer must be a finite number > 0; got {run.cost_buffer}.")
    if run.eval_episodes < 0:
        raise ValueError(f"eval_episodes must be >= 0 (0: no evaluation at the end); got "
                         f"{run.eval_episodes}.")
    if not 1 <= run.env_workers <= run.num_envs:
        raise ValueError(f"env_workers must be between 1 and num_envs={run.num_envs}; got "
                         f"{run.env_workers}.")
    seeds = tuple(run.seeds) if run.seeds else (run.seed,)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct; got {list(run.seeds)}.")
    for seed in seeds:
        if not 0 <= seed < 2**32:  # a JAX key's and numpy's (env reset) seed range
            raise ValueError(f"seeds must be integers in [0, 2**32); got {seed}.")


def nonfinite_location(rewards: jax.Array, costs: jax.Array,
                       observations: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(step, env)`` of the first non-finite reward, cost or observation in ``[T, N, ...]``
    arrays, or ``(-1, -1)``; reported as ``_nonfinite_step`` / ``_nonfinite_env`` metrics."""
    num_envs = rewards.shape[1]
    bad = ~(jnp.isfinite(rewards) & jnp.all(jnp.isfinite(costs), -1)
            & jnp.all(jnp.isfinite(observations), -1)).reshape(-1)
    first = jnp.argmax(bad)
    return (jnp.where(bad.any(), first // num_envs, -1), jnp.where(bad.any(), first % num_envs, -1))


class RunSchedule:
    """``seed_list`` and ``iterations`` of a run configuration (on- and off-policy), derived
    from its ``seed``/``seeds``, ``steps`` and ``steps_per_iteration``."""

    seed: int
    seeds: tuple[int, ...]
    steps: int

    @property
    def steps_per_iteration(self) -> int:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    @property
    def seed_list(self) -> tuple[int, ...]:
        """The seeds trained: ``seeds`` if given, else ``(seed,)``."""
        return tuple(self.seeds) if self.seeds else (self.seed,)

    @property
    def iterations(self) -> int:
        """Iterations needed to reach ``steps`` (the last one may overshoot)."""
        return max(1, math.ceil(self.steps / self.steps_per_iteration))


@dataclass(frozen=True)
class OnPolicyConfig(RunSchedule):
    """Settings shared by every on-policy algorithm: the task, the budget, rollouts, networks.

    Attributes:
        env: Environment id (``saferl list`` shows them).
        env_kwargs: Keyword arguments for the environment (e.g. ``speed_limit`` for native Circle).
        env_workers: Worker processes that step the copies of a host environment (Bullet,
            gymnasium) in parallel; 1 steps them in the learner's process. Native tasks: 1.
        cost_limit: One limit per constraint, in episode-cost units (undiscounted by default).
        steps: Environment steps to train for, per seed.
        seed: Random seed (ignored when ``seeds`` is given).
        seeds: Several seeds trained at once in one process (vectorised).
        num_envs: Environment copies per seed.
        rollout_steps: Steps per copy per iteration (batch = ``num_envs × rollout_steps``).
        gamma: Reward discount γ.
        gae_lambda: Reward GAE λ.
        cost_gamma: Cost discount γ_c (1: constrain the undiscounted episode cost).
        cost_gae_lambda: Cost GAE λ_c.
        normalize_observations: Normalise observations with running statistics.
        hidden_sizes: Hidden layer sizes of the policy and of every critic.
        activation: Hidden activation (``tanh``, ``relu``, ``elu``, ``gelu``).
        init_log_std: Initial log standard deviation of the Gaussian policy.
        checkpoint_every: Save a checkpoint every this many iterations (and at the end).
        eval_episodes: At the end of the run, evaluate the deployed policy of every seed for
            this many episodes per mode (deterministic and stochastic) and record it in
            ``eval.json``; 0 skips it.
        run_dir: Run directory (default: a new folder under ``runs/``).
        cost_transform: ``sparse`` (the env's cost), ``dense`` or ``barrier`` costs from the
            task's safety margin (native tasks; see :mod:`saferl.envs.wrappers`).
        cost_buffer: Safety buffer of the dense/barrier transforms, in the margin's units.
        safety_predictor: CPO's learned safety predictor (CPO paper §6.3): constrain
            ``c + α·P(a cost within the next T steps | s)`` instead of ``c``.
        predictor_alpha: The weight α of the predicted probability.
        predictor_horizon: The horizon T of the predictor's target.
        predictor_steps: Adam steps refitting the predictor on each batch.
        predictor_lr: Adam step size of the predictor.
    """

    env: str = "saferl/BallCircle-v0"
    env_kwargs: dict[str, float | int | bool | str] = field(default_factory=dict)
    env_workers: int = 1
    cost_limit: tuple[float, ...] = (10.0,)
    steps: int = 2_000_000
    seed: int = 0
    seeds: tuple[int, ...] = ()
    num_envs: int = 64
    rollout_steps: int = 200
    gamma: float = 0.99
    gae_lambda: float = 0.95
    cost_gamma: float = 1.0
    cost_gae_lambda: float = 0.95
    normalize_observations: bool = True
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    init_log_std: float = -0.5
    checkpoint_every: int = 20
    eval_episodes: int = 10
    run_dir: str | None = None
    cost_transform: str = "sparse"
    cost_buffer: float = 1.0
    safety_predictor: bool = False
    predictor_alpha: float = 1.0
    predictor_horizon: int = 5
    predictor_steps: int = 25
    predictor_lr: float = 1e-3

    def __post_init__(self) -> None:
        check_shared_run_fields(self, ("steps", "num_envs", "rollout_steps", "checkpoint_every"))
        for name in ("gamma", "gae_lambda", "cost_gamma", "cost_gae_lambda"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1]; got {value}.")
        if not (self.predictor_alpha >= 0 and math.isfinite(self.predictor_alpha)):
            raise ValueError(
                f"predictor_alpha must be a finite number >= 0; got {self.predictor_alpha}.")
        for name in ("predictor_horizon", "predictor_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}.")
        if not self.predictor_lr > 0:
            raise ValueError(f"predictor_lr must be > 0; got {self.predictor_lr}.")

    @property
    def batch_size(self) -> int:
        """Transitions per iteration per seed."""
        return self.num_envs * self.rollout_steps

    @property
    def steps_per_iteration(self) -> int:
        """Environment steps per iteration per seed (the batch)."""
        return self.batch_size


class Networks(NamedTuple):
    """The policy, critic and safety-predictor modules (parameters live in the state)."""

    policy: GaussianPolicy
    critics: ValueCritics
    predictor: MLP


class PredictorState(NamedTuple):
    """Parameters and Adam state of the safety predictor (unused unless enabled)."""

    params: Any
    opt_state: Any


class AgentState(NamedTuple):
    """Everything an algorithm learns: parameters, optimiser states, multipliers, extras."""

    policy_params: Any
    critic_params: Any
    policy_opt_state: Any
    critic_opt_state: Any
    lagrange: LagrangeState
    extra: Any = ()


class EpisodeTracker(NamedTuple):
    """Running sums of the unfinished episode in each environment copy."""

    episode_return: jax.Array  # [N]
    episode_cost: jax.Array  # [N, m]
    episode_length: jax.Array  # [N]
    discounted_cost: jax.Array  # [N, m]: Σ_t γ_c^t c_t, the quantity the constraint limits


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


class Batch(NamedTuple):
    """A processed, flattened batch handed to an algorithm's ``update``.

    ``advantages`` and ``returns`` have ``1 + m`` channels: the reward, then each cost. They are
    raw GAE values: each algorithm normalises the reward channel and centres the cost channels
    (ALGORITHMS.md §1). ``episode_cost`` (``[m]``) is the constraint-cost estimate in episode
    units: the mean (γ_c-discounted) cost of the batch's finished episodes; if none finished,
    the previous estimate; before any episode has finished, the cost critics' λ-returns at the
    rollout's first states (then ``has_episode_cost`` is false). ``episode_length`` is the mean
    length of the batch's finished episodes (or the time limit when none finished), which CPO
    needs to put gradients in episode units.
    """

    observations: jax.Array
    actions: jax.Array
    log_probs: jax.Array
    old_mean: jax.Array
    old_log_std: jax.Array
    advantages: jax.Array
    returns: jax.Array
    episode_cost: jax.Array
    has_episode_cost: jax.Array
    episode_length: jax.Array
    cost_limit: jax.Array


class OnPolicyAlgorithm(Protocol):
    """What an on-policy algorithm module provides to the engine."""

    def init_agent(self, config: Any, spec: EnvSpec, networks: Networks,
                   key: jax.Array) -> AgentState:
        """Initial parameters, optimiser states and multipliers."""
        ...

    def update(self, config: Any, networks: Networks, agent: AgentState, batch: Batch,
               key: jax.Array) -> tuple[AgentState, dict[str, jax.Array]]:
        """One update from a processed batch; returns the new agent and scalar metrics."""
        ...


def make_networks(config: OnPolicyConfig, spec: EnvSpec) -> Networks:
    """The policy, the ``1 + m`` critics and the safety predictor (1×32, m logits)."""
    return Networks(
        GaussianPolicy(spec.action_dim, tuple(config.hidden_sizes), config.activation,
                       config.init_log_std),
        ValueCritics(1 + spec.num_costs, tuple(config.hidden_sizes), config.activation),
        MLP((32,), spec.num_costs, "tanh"))


def _predictor_tx(config: OnPolicyConfig) -> optax.GradientTransformation:
    return optax.adam(config.predictor_lr)


def unsafe_soon(costs: jax.Array, done: jax.Array, horizon: int) -> jax.Array:
    """Predictor targets ``y_t = min(1, Σ_{j<T} c_{t+j})`` within each episode.

    Args:
        costs: ``[T, N, m]`` costs of a rollout.
        done: ``[T, N]`` episode ended at this step (the window stops after it).
        horizon: The window ``T`` (the window is cut at the rollout's end).

    Returns:
        ``[T, N, m]`` targets in {0, 1} for indicator costs.
    """
    steps = costs.shape[0]
    total = jnp.zeros_like(costs)
    alive = jnp.ones(costs.shape[:2], costs.dtype)  # no boundary between t and t + k
    for k in range(horizon):
        shifted = jnp.concatenate([costs[k:], jnp.zeros_like(costs[:k])], axis=0)[:steps]
        total = total + alive[..., None] * shifted
        ended = jnp.concatenate([done[k:], jnp.ones_like(done[:k])], axis=0)[:steps]
        alive = alive * (1.0 - ended.astype(costs.dtype))
    return jnp.minimum(1.0, total)


def fit_predictor(config: OnPolicyConfig, networks: Networks, predictor: PredictorState,
                  observations: jax.Array, targets: jax.Array) -> tuple[PredictorState, jax.Array]:
    """``predictor_steps`` Adam steps of binary cross-entropy on the whole batch."""
    tx = _predictor_tx(config)
    obs = observations.reshape(-1, observations.shape[-1])
    y = targets.reshape(-1, targets.shape[-1])

    def loss_fn(params: Any) -> jax.Array:
        logits = networks.predictor.apply(params, obs)
        return optax.sigmoid_binary_cross_entropy(logits, y).mean()

    def step(carry: PredictorState, _: None) -> tuple[PredictorState, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(carry.params)
        updates, opt_state = tx.update(grads, carry.opt_state, carry.params)
        return PredictorState(optax.apply_updates(carry.params, updates), opt_state), loss

    predictor, losses = jax.lax.scan(step, predictor, None, length=config.predictor_steps)
    return predictor, losses[-1]


def init_network_params(networks: Networks, spec: EnvSpec, key: jax.Array) -> tuple[Any, Any]:
    """Fresh policy and critic parameters."""
    policy_key, critic_key = jax.random.split(key)
    dummy = jnp.zeros((1, spec.obs_dim), jnp.float32)
    return networks.policy.init(policy_key, dummy), networks.critics.init(critic_key, dummy)


def value_loss(critics: nn.Module, critic_params: Any, observations: jax.Array,
               returns: jax.Array) -> jax.Array:
    """Mean squared error of every critic against its λ-returns, summed over channels."""
    values = critics.apply(critic_params, observations)
    return jnp.mean(jnp.sum((values - returns) ** 2, axis=-1))


def reward_cost_advantages(advantages: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Split raw GAE channels: the reward advantage normalised, the cost advantages centred.

    Cost advantages are centred but **not** scaled: their magnitude is the constraint's
    magnitude, which the Lagrangian, CPO and PCPO rely on (ALGORITHMS.md §1).
    """
    reward = advantages[:, 0]
    reward = (reward - reward.mean()) / (reward.std() + 1e-8)
    costs = advantages[:, 1:]
    return reward, costs - costs.mean(axis=0)


def init_train_state(algo: OnPolicyAlgorithm, config: Any, spec: EnvSpec, networks: Networks,
                     seed: int | jax.Array, task: NativeTask | None) -> TrainState:
    """The initial state of one seed (native tasks also reset their environments here)."""
    run: OnPolicyConfig = config.run
    key = jax.random.PRNGKey(seed)
    key, agent_key, env_key, predictor_key = jax.random.split(key, 4)
    m = spec.num_costs
    predictor_params = networks.predictor.init(predictor_key, jnp.zeros((1, spec.obs_dim)))
    env_state: Any = () if task is None else batch_reset(task, env_key, run.num_envs)
    return TrainState(
        agent=algo.init_agent(config, spec, networks, agent_key),
        obs_stats=running_stats_init(spec.obs_dim),
        tracker=EpisodeTracker(jnp.zeros(run.num_envs), jnp.zeros((run.num_envs, m)),
                               jnp.zeros(run.num_envs, jnp.int32), jnp.zeros((run.num_envs, m))),
        env_state=env_state,
        key=key,
        iteration=jnp.zeros((), jnp.int32),
        predictor=PredictorState(predictor_params,
                                 _predictor_tx(run).init(predictor_params)),
        total_cost=jnp.zeros(m),
        cost_estimate=jnp.zeros(m),
        has_cost_estimate=jnp.zeros((), bool),
    )


def initial_states(algo: OnPolicyAlgorithm, config: Any, spec: EnvSpec, networks: Networks,
                   task: NativeTask | None) -> TrainState:
    """Initial states of every seed of ``config``, stacked along a leading seed axis (built
    by one quickly compiled program, :func:`~saferl.core.precompile.stacked_initial_states`)."""
    return stacked_initial_states(
        lambda seed: init_train_state(algo, config, spec, networks, seed, task),
        config.run.seed_list)


def act(networks: Networks, policy_params: Any, obs_stats: RunningStats, observations: jax.Array,
        key: jax.Array, normalize_observations: bool) -> tuple[jax.Array, jax.Array]:
    """Sample actions and their log-probabilities for raw observations ``[N, obs_dim]``."""
    obs = normalize(obs_stats, observations) if normalize_observations else observations
    mean, log_std = networks.policy.apply(policy_params, obs)
    actions = gaussian_sample(key, mean, log_std)
    return actions, gaussian_log_prob(mean, log_std, actions)


class HostActor:
    """A numpy twin of :func:`act` for rollouts in host simulators.

    A jitted call plus fetching its result costs ~0.6 ms on CPU, a sixth of a Bullet step of
    8 copies; this numpy forward pass costs ~0.24 ms per step inside the loop (measured by
    benchmarks/host_loop_breakdown.py). The
    parameters are copied to the host once per rollout; the noise comes from a numpy generator
    seeded from each seed's JAX key, so runs stay reproducible.
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


def native_rollout(config: OnPolicyConfig, networks: Networks, task: NativeTask,
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


def track_episodes(tracker: EpisodeTracker, rollout: Rollout, cost_gamma: float = 1.0,
                   constraint_costs: jax.Array | None = None
                   ) -> tuple[EpisodeTracker, dict[str, jax.Array]]:
    """Accumulate per-copy episode sums; return sums over the episodes that finished.

    Besides the undiscounted episode cost (what benchmarks report) it accumulates the
    discounted cost ``Σ_t γ_c^t c⁺_t`` that the constraint limits, where ``c⁺`` is
    ``constraint_costs`` (the predictor-shaped cost) or the raw cost; with γ_c = 1 and no
    shaping the two are equal.
    """

    def one_step(carry: tuple[EpisodeTracker, tuple], inputs: tuple) -> tuple[Any, None]:
        tracked, (sum_return, sum_cost, sum_length, count, sum_discounted) = carry
        reward, costs, shaped, done = inputs
        ret = tracked.episode_return + reward
        cost = tracked.episode_cost + costs
        discount = jnp.power(cost_gamma, tracked.episode_length.astype(costs.dtype))
        discounted = tracked.discounted_cost + discount[:, None] * shaped
        length = tracked.episode_length + 1
        finished = done.astype(ret.dtype)
        sums = (sum_return + jnp.sum(ret * finished),
                sum_cost + jnp.sum(cost * finished[:, None], 0),
                sum_length + jnp.sum(length * finished), count + jnp.sum(finished),
                sum_discounted + jnp.sum(discounted * finished[:, None], 0))
        keep = 1.0 - finished
        tracked = EpisodeTracker(ret * keep, cost * keep[:, None],
                                 (length * keep).astype(jnp.int32), discounted * keep[:, None])
        return (tracked, sums), None

    m = tracker.episode_cost.shape[-1]
    zero = jnp.zeros(())
    done = rollout.terminated | rollout.truncated
    (tracker, (sum_return, sum_cost, sum_length, count, sum_discounted)), _ = jax.lax.scan(
        one_step, (tracker, (zero, jnp.zeros(m), zero, zero, jnp.zeros(m))),
        (rollout.rewards, rollout.costs,
         rollout.costs if constraint_costs is None else constraint_costs, done))
    return tracker, {"episodes": count, "sum_return": sum_return, "sum_cost": sum_cost,
                     "sum_length": sum_length, "sum_discounted_cost": sum_discounted}


def process_and_update(algo: OnPolicyAlgorithm, config: Any, networks: Networks, spec: EnvSpec,
                       state: TrainState, rollout: Rollout,
                       cost_limit: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    """Values, GAE, episode statistics, then the algorithm's update (one seed; pure)."""
    run: OnPolicyConfig = config.run
    steps, num_envs = rollout.rewards.shape
    m = spec.num_costs

    def prepare(obs: jax.Array) -> jax.Array:
        return normalize(state.obs_stats, obs) if run.normalize_observations else obs

    observations = prepare(rollout.observations)
    final_observations = prepare(rollout.final_observations)
    done = rollout.terminated | rollout.truncated

    # CPO's safety predictor: refit on this batch, then constrain c + α·P(unsafe soon | s).
    predictor, predictor_metrics = state.predictor, {}
    constraint_costs = rollout.costs
    if run.safety_predictor:
        targets = unsafe_soon(rollout.costs, done, run.predictor_horizon)
        predictor, predictor_loss = fit_predictor(run, networks, predictor, observations,
                                                  targets)
        probability = jax.nn.sigmoid(networks.predictor.apply(predictor.params, observations))
        constraint_costs = rollout.costs + run.predictor_alpha * probability
        predictor_metrics = {"predictor/loss": predictor_loss,
                             "predictor/mean_probability": probability.mean()}

    critic_params = state.agent.critic_params
    values = networks.critics.apply(critic_params, observations)
    next_values = networks.critics.apply(critic_params, final_observations)
    signals = jnp.concatenate([rollout.rewards[..., None], constraint_costs], axis=-1)
    gamma = jnp.asarray([run.gamma] + [run.cost_gamma] * m)
    lam = jnp.asarray([run.gae_lambda] + [run.cost_gae_lambda] * m)
    advantages, returns = gae(signals, values, next_values, rollout.terminated,
                              rollout.truncated, gamma, lam)

    tracker, episodes = track_episodes(state.tracker, rollout, run.cost_gamma,
                                       constraint_costs)
    finished = episodes["episodes"] > 0
    count = jnp.maximum(episodes["episodes"], 1.0)
    batch_cost = episodes["sum_cost"] / count
    # The constraint limits the (γ_c-)discounted episode cost; with γ_c = 1 it is batch_cost.
    constraint_cost = episodes["sum_discounted_cost"] / count
    # No finished episode in this batch: keep the previous estimate; before any episode has
    # finished, use the cost critics' λ-returns at the rollout's first states. Never "0 cost".
    start_value = returns[0, :, 1:].mean(axis=0)
    cost_estimate = jnp.where(finished, constraint_cost,
                              jnp.where(state.has_cost_estimate, state.cost_estimate, start_value))
    has_estimate = finished | state.has_cost_estimate
    source = jnp.where(finished, 0.0, jnp.where(state.has_cost_estimate, 1.0, 2.0))
    limit_steps = spec.max_episode_steps or steps
    episode_length = jnp.where(finished, episodes["sum_length"] / count, float(limit_steps))

    flat = lambda x: x.reshape((steps * num_envs, *x.shape[2:]))  # noqa: E731
    old_mean, old_log_std = networks.policy.apply(state.agent.policy_params, flat(observations))
    batch = Batch(flat(observations), flat(rollout.actions), flat(rollout.log_probs), old_mean,
                  old_log_std, flat(advantages), flat(returns), cost_estimate, has_estimate,
                  episode_length, cost_limit)
    key, update_key = jax.random.split(state.key)
    agent, update_metrics = algo.update(config, networks, state.agent, batch, update_key)

    obs_stats = (running_stats_update(state.obs_stats, rollout.observations)
                 if run.normalize_observations else state.obs_stats)
    total_cost = state.total_cost + rollout.costs.sum(axis=(0, 1))
    iteration = state.iteration + 1
    new_state = TrainState(agent, obs_stats, tracker, state.env_state, key, iteration, predictor,
                           total_cost, cost_estimate, has_estimate)

    nan = jnp.full((), jnp.nan)
    metrics: dict[str, jax.Array] = {
        "rollout/ep_return": jnp.where(finished, episodes["sum_return"] / count, nan),
        "rollout/ep_length": jnp.where(finished, episodes["sum_length"] / count, nan),
        "rollout/episodes": episodes["episodes"],
        "rollout/cost_estimate_stale": (~finished).astype(jnp.float32),
        "rollout/cost_estimate_source": source,
        "rollout/step_reward": rollout.rewards.mean(),
    }
    total_steps = iteration.astype(jnp.float32) * steps * num_envs
    for i in range(m):
        metrics[f"rollout/ep_cost_{i}"] = jnp.where(finished, batch_cost[i], nan)
        metrics[f"train/cost_rate_{i}"] = total_cost[i] / total_steps
        if run.cost_gamma < 1.0 or run.safety_predictor:
            # The cost the constraint sees: discounted and/or shaped by the predictor.
            metrics[f"rollout/ep_constraint_cost_{i}"] = jnp.where(finished, constraint_cost[i],
                                                                   nan)
    metrics.update(predictor_metrics)
    metrics.update(update_metrics)
    metrics["_nonfinite_step"], metrics["_nonfinite_env"] = nonfinite_location(
        rollout.rewards, rollout.costs, rollout.final_observations)
    return new_state, metrics


def over_seeds(fn: Callable[..., Any], num_seeds: int,
               in_axes: int | tuple[int | None, ...] = 0) -> Callable[..., Any]:
    """``jax.vmap(fn, in_axes)`` over the leading seed axis; for one seed, ``fn`` on the squeezed
    arguments with the axis put back on its outputs.

    The single-seed path matters for speed: under ``vmap`` every ``lax.cond`` turns into a
    ``select`` that computes both branches, so a solver's rarely taken fallback (a line search,
    a backtracking ladder) would run on every step.
    """
    if num_seeds > 1:
        return jax.vmap(fn, in_axes=in_axes)
    axes = in_axes if isinstance(in_axes, tuple) else None

    def single(*args: Any) -> Any:
        squeezed = [arg if axes is not None and axes[i] is None
                    else jax.tree_util.tree_map(lambda x: x[0], arg)
                    for i, arg in enumerate(args)]
        return jax.tree_util.tree_map(lambda x: x[None], fn(*squeezed))

    return single


def seed_sharding(num_seeds: int) -> jax.sharding.Sharding:
    """Where a seed-stacked pytree lives: its seed axis split over the largest number of local
    devices that divides ``num_seeds`` (one device: all of it on the first).

    With one XLA CPU device per core, seeds then run on different cores.
    """
    devices = jax.local_devices()
    count = max(d for d in range(1, min(len(devices), num_seeds) + 1) if num_seeds % d == 0)
    if count == 1:
        return jax.sharding.SingleDeviceSharding(devices[0])
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    return NamedSharding(Mesh(np.array(devices[:count]), ("seed",)), PartitionSpec("seed"))


def place_seeds(states: Any, num_seeds: int) -> Any:
    """Put a seed-stacked pytree where :func:`seed_sharding` says."""
    return jax.device_put(states, seed_sharding(num_seeds))


def abstract_placed(states: Any | None, initial: Callable[[], Any], num_seeds: int) -> Any:
    """Shapes, dtypes and shardings of placed states, for compiling ahead of the first call:
    those of ``states`` (already placed), or, if ``None``, of what ``initial()`` would build
    (traced, not run) placed by :func:`place_seeds`."""
    if states is not None:
        return abstract(states)
    return abstract(jax.eval_shape(initial), seed_sharding(num_seeds))


class Engine:
    """Compiled iteration functions for one algorithm, config and environment.

    ``iterate(states, cost_limit)`` runs one full iteration of every seed (``states`` carries a
    leading seed axis) and returns the new states and per-seed metrics as numpy arrays.
    """

    def __init__(self, algo: OnPolicyAlgorithm, config: Any, spec: EnvSpec,
                 task: NativeTask | None = None, envs: list[VecEnv] | None = None) -> None:
        self.algo, self.config, self.spec, self.task = algo, config, spec, task
        self.envs = envs
        self.networks = make_networks(config.run, spec)
        run: OnPolicyConfig = config.run
        self.num_seeds = len(run.seed_list)
        process = over_seeds(
            lambda s, r, d: process_and_update(algo, config, self.networks, spec, s, r, d),
            self.num_seeds, in_axes=(0, 0, None))
        if task is not None:
            def iteration(states: TrainState, cost_limit: jax.Array) -> tuple[TrainState, dict]:
                states, rollouts = over_seeds(
                    lambda s: native_rollout(run, self.networks, task, s), self.num_seeds)(states)
                return process(states, rollouts, cost_limit)
            self._iterate = jax.jit(iteration)
        else:
            if envs is None or len(envs) != self.num_seeds:
                raise ValueError("host environments need one VecEnv per seed")
            self._process = jax.jit(process)
            self._actor = HostActor(run)
            self._observations: np.ndarray | None = None
            self._env_steps = 0
        self._compiling: BackgroundCompile | None = None

    def init_states(self) -> TrainState:
        """Initial states of every seed, stacked along a leading axis and placed.

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
        """Shard the seed axis over the local devices (see :func:`place_seeds`)."""
        placed = place_seeds(states, self.num_seeds)
        self._start_compiling(placed)
        return placed

    def _start_compiling(self, states: TrainState | None) -> None:
        """On native tasks, compile the iteration in a background thread; ``states`` are the
        placed states, or ``None`` for fresh ones (their shapes are traced). Host environments
        compile the update on first call (overlapping it with the first rollout was measured
        for the off-policy engine and gained nothing beyond noise)."""
        if self._compiling is not None or self.task is None:
            return
        limit = jax.ShapeDtypeStruct((self.spec.num_costs,), jnp.float32)

        def compile_iteration() -> None:
            placed = abstract_placed(states, lambda: initial_states(
                self.algo, self.config, self.spec, self.networks, self.task), self.num_seeds)
            self._iterate.lower(placed, limit).compile()

        self._compiling = BackgroundCompile([("iteration", compile_iteration)])

    def iterate(self, states: TrainState,
                cost_limit: jax.Array) -> tuple[TrainState, dict[str, np.ndarray]]:
        """One iteration of every seed; metrics come back as numpy ``[num_seeds]`` arrays."""
        if self.task is not None:
            if self._compiling is not None:
                self._compiling.wait("iteration")
            states, metrics = self._iterate(states, cost_limit)
        else:
            states, rollout = self._host_rollout(states)
            states, metrics = self._process(states, rollout, cost_limit)
        metrics = jax.device_get(metrics)
        if (metrics["_nonfinite_step"] >= 0).any():
            seed_index = int(np.argmax(metrics["_nonfinite_step"] >= 0))
            raise NonFiniteError(
                f"Environment {self.spec.id!r} returned a non-finite observation, reward or cost "
                f"at rollout step {int(metrics['_nonfinite_step'][seed_index])} of iteration "
                f"{int(np.asarray(states.iteration)[seed_index])} in env index "
                f"{int(metrics['_nonfinite_env'][seed_index])} (seed "
                f"{self.config.run.seed_list[seed_index]}); the run stopped and the last "
                f"checkpoint is intact.")
        return states, {k: np.asarray(v) for k, v in metrics.items() if not k.startswith("_")}

    def _host_rollout(self, states: TrainState) -> tuple[TrainState, Rollout]:
        """Collect one rollout of every seed from host environments (numpy buffers)."""
        run: OnPolicyConfig = self.config.run
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
            "log_probs": np.empty((seeds, steps, n), np.float32),
            "rewards": np.empty((seeds, steps, n), np.float32),
            "costs": np.empty((seeds, steps, n, m), np.float32),
            "terminated": np.empty((seeds, steps, n), bool),
            "truncated": np.empty((seeds, steps, n), bool),
            "final_observations": np.empty((seeds, steps, n, obs_dim), np.float32),
        }
        self._actor.load(states)
        observations = self._observations
        for t in range(steps):
            actions, log_probs = self._actor(observations)
            buffers["observations"][:, t] = observations
            buffers["actions"][:, t] = actions
            buffers["log_probs"][:, t] = log_probs
            next_observations = np.empty_like(observations)
            for s, env in enumerate(envs):
                result = env.step(actions[s])
                check_finite(result, self._env_steps, self.spec.id)
                buffers["rewards"][s, t] = result.reward
                buffers["costs"][s, t] = result.costs
                buffers["terminated"][s, t] = result.terminated
                buffers["truncated"][s, t] = result.truncated
                buffers["final_observations"][s, t] = result.final_observation
                next_observations[s] = result.observation
            observations = next_observations
            self._env_steps += n
        self._observations = observations
        states = states._replace(key=jax.vmap(lambda k: jax.random.split(k)[0])(states.key))
        return states, Rollout(**{k: jnp.asarray(v) for k, v in buffers.items()})


def metric_names(spec: EnvSpec) -> list[str]:
    """Names of the engine's per-episode metrics for ``spec`` (algorithms add their own)."""
    names = ["rollout/ep_return", "rollout/ep_length", "rollout/episodes"]
    names += [f"rollout/ep_cost_{i}" for i in range(spec.num_costs)]
    return names


OnPolicyIterate = Callable[[TrainState, jax.Array], tuple[TrainState, dict[str, np.ndarray]]]
