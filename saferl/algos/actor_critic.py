"""What the off-policy actor-critic algorithms (SAC, DDPG/TD3, CVPO, CCPO) are written against:
the off-policy run settings, the six-function protocol the engine drives, and their building
blocks.

Q-critics regress TD targets from target networks that trail the online ones (Polyak
averaging); the Lagrangian variants take their multipliers from the episodes collected in an
iteration or from the batch's cost values against a Q threshold. Each algorithm file composes
these; the engine (:mod:`saferl.algos.off_policy`) never calls them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from saferl.core.conditioning import behaviour_set, threshold_bounds
from saferl.core.lagrange import LagrangeConfig, LagrangeState, lagrange_init, lagrange_update
from saferl.data.replay import SampledBatch
from saferl.engine.behaviour import behaviour_groups
from saferl.engine.config import SharedRunConfig, check_positive
from saferl.envs.core import EnvSpec


@dataclass(frozen=True)
class OffPolicyConfig(SharedRunConfig):
    """Settings shared by every off-policy algorithm: the shared run settings
    (:class:`~saferl.engine.config.SharedRunConfig`, with off-policy defaults: 200k steps,
    8 copies × 25 steps per iteration, 256×256 ReLU networks) plus replay, updates and targets.

    Attributes:
        buffer_size: Replay capacity in transitions per seed (capped at ``steps``).
        batch_size: Minibatch size of every gradient update.
        warmup_steps: Steps per seed collected with uniform random actions before learning.
        update_ratio: Gradient updates per collected environment step (update-to-data ratio).
        gamma: Discount of the reward and cost critics.
        n_step: Steps of the n-step returns of the critic targets.
        tau: Polyak averaging rate of the target networks.
        actor_lr: Adam step size of the actor.
        critic_lr: Adam step size of the critics.
        episode_length: ``T`` of the Q-threshold conversion (default: the env's time limit).
        overlap_collection: Host environments: collect the next iteration while this one's
            updates run, with the actor from before them (a one-iteration policy lag; see the
            module docstring). Native tasks collect inside XLA and must leave it off.
    """

    steps: int = 200_000
    num_envs: int = 8
    rollout_steps: int = 25
    hidden_sizes: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    checkpoint_every: int = 50
    buffer_size: int = 1_000_000
    batch_size: int = 256
    warmup_steps: int = 5_000
    update_ratio: float = 0.25
    gamma: float = 0.99
    n_step: int = 1
    tau: float = 0.005
    actor_lr: float = 3e-4
    critic_lr: float = 1e-3
    episode_length: int | None = None
    overlap_collection: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("buffer_size", "batch_size", "n_step"):
            check_positive(self, name)
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


class OffPolicyAlgorithm(Protocol):
    """What an off-policy algorithm module provides to the engine.

    **Threshold-conditioned algorithms** (CCPO; found by
    :func:`saferl.engine.behaviour.conditioning`) also define
    ``behaviour_thresholds(config) -> [N_b, m]`` (the behaviour set ``Ẽ``) and
    ``threshold_range(config) -> (low [m], high [m])`` (the range ``E``). The engine then
    draws one behaviour threshold per episode for every copy and passes the copies' thresholds
    ``[N, m]`` as a last argument to :meth:`sample_action` / :meth:`host_sample_action`, stores
    them with the transitions (``conditions``), and gives :meth:`update_multipliers` the mean
    episode cost per behaviour threshold ``[N_b, m]`` with ``fresh`` ``[N_b]``.
    """

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


@dataclass(frozen=True)
class VersatileParams:
    """The thresholds of a versatile baseline.

    Attributes:
        behaviour_thresholds: ``Ẽ`` in episode-cost units (as ``ccpo.behaviour_thresholds``:
            flat, ``m`` numbers per vector, strictly increasing, inside ``threshold_range``).
        threshold_range: ``E``: ``(low, high)``, or one pair per constraint; the networks see
            the thresholds normalised over it to ``[−1, 1]``.
        num_constraints: ``m``, the length of every threshold vector (the task's cost count).
    """

    behaviour_thresholds: tuple[float, ...] = (20.0, 40.0, 60.0)
    threshold_range: tuple[float, ...] = (10.0, 70.0)
    num_constraints: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "behaviour_thresholds", behaviour_set(
            self.behaviour_thresholds, self.threshold_range, self.num_constraints, "versatile"))

    @property
    def behaviour(self) -> np.ndarray:
        """``Ẽ`` as ``[N, m]``."""
        return np.asarray(self.behaviour_thresholds, np.float64).reshape(
            -1, self.num_constraints)

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``E`` as ``(low [m], high [m])``."""
        return threshold_bounds(self.threshold_range, self.num_constraints,
                                "versatile.threshold_range")


def versatile_bounds(params: VersatileParams, spec: EnvSpec
                     ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``E``'s ends as the conditioned networks take them, after checking that the threshold
    vectors have one entry per cost of ``spec``.

    Raises:
        ValueError: ``versatile.num_constraints`` differs from the task's cost count.
    """
    if params.num_constraints != spec.num_costs:
        raise ValueError(f"versatile.num_constraints must equal the {spec.num_costs} cost(s) of "
                         f"{spec.id}; got {params.num_constraints}.")
    low, high = (tuple(float(x) for x in end) for end in params.bounds)
    return low, high


def init_conditioned_actor_critics(networks: Any, spec: EnvSpec,
                                   key: jax.Array) -> tuple[Any, Any]:
    """Initial parameters of a conditioned ``networks.actor`` and ``networks.critics`` (they
    take a threshold ``[B, m]`` after the observations, and the actions for the critics)."""
    actor_key, critic_key = jax.random.split(key)
    obs, action = jnp.zeros((1, spec.obs_dim)), jnp.zeros((1, spec.action_dim))
    threshold = jnp.zeros((1, spec.num_costs))
    return (networks.actor.init(actor_key, obs, threshold),
            networks.critics.init(critic_key, obs, action, threshold))


def behaviour_lagrange_init(config: LagrangeConfig, behaviour: np.ndarray) -> LagrangeState:
    """One multiplier state per behaviour threshold (every leaf with a leading ``[N_b]`` axis),
    each at ``config.init``: the versatile Lagrangian baselines."""
    fresh = lagrange_init(config, behaviour.shape[1])
    return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (behaviour.shape[0], *x.shape)),
                                  fresh)


def behaviour_multiplier_step(config: LagrangeConfig, state: LagrangeState,
                              episode_cost: jax.Array, behaviour: np.ndarray, fresh: jax.Array
                              ) -> tuple[LagrangeState, dict[str, jax.Array]]:
    """The multipliers of each behaviour threshold ``ε_b`` step on the mean cost of the
    episodes collected under it (``episode_cost`` ``[N_b, m]``) against ``ε_b``, where
    ``fresh`` ``[N_b]`` says such episodes finished; the others keep their state.

    Returns:
        The new states and ``lagrange/lambda_b_i`` for every threshold ``b`` and constraint.
    """
    limits = jnp.asarray(behaviour, jnp.float32)
    stepped = jax.vmap(lambda s, cost, limit: lagrange_update(config, s, cost, limit))(
        state, episode_cost, limits)
    state = jax.tree_util.tree_map(
        lambda new, old: jnp.where(fresh.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
        stepped, state)
    lam = state.multiplier
    return state, {f"lagrange/lambda_{b}_{i}": lam[b, i]
                   for b in range(lam.shape[0]) for i in range(lam.shape[1])}


def sample_multipliers(state: LagrangeState, conditions: jax.Array,
                       behaviour: np.ndarray) -> jax.Array:
    """``[B, m]``: each sampled transition's multipliers, those of the behaviour threshold it
    was collected under (its stored ``conditions`` ``[B, m]``)."""
    return state.multiplier[behaviour_groups(conditions, jnp.asarray(behaviour, jnp.float32))]


def q_threshold(episode_limit: jax.Array, gamma: float, episode_length: int) -> jax.Array:
    """``ε_Q = ε (1 − γ^T) / ((1 − γ) T)``: the per-step discounted value of an episode limit.

    A policy that spreads its ``ε`` episode cost evenly over ``T`` steps has a cost value of
    ``ε/T · Σ_{t<T} γ^t`` at the start state (docs/algorithms/index.md).
    """
    return episode_limit * (1.0 - gamma**episode_length) / ((1.0 - gamma) * episode_length)


class Limits(NamedTuple):
    """The cost limits in both units: per episode and as a Q threshold, each ``[m]``."""

    episode: jax.Array
    q: jax.Array


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
                batch: SampledBatch, targets: jax.Array, num_reward: int,
                conditions: jax.Array | None = None) -> tuple[Any, Any, jax.Array]:
    """One Adam step of every Q-critic towards its target (reward critics share column 0);
    conditioned critics also take each sample's threshold ``conditions`` ``[B, m]``."""
    inputs = (batch.observations, batch.actions) + (() if conditions is None else (conditions,))

    def loss_fn(p: Any) -> jax.Array:
        q = critics.apply(p, *inputs)
        expanded = jnp.concatenate([jnp.repeat(targets[:, :1], num_reward, axis=1),
                                    targets[:, 1:]], axis=1)
        return jnp.mean(jnp.sum((q - expanded) ** 2, axis=-1))

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def polyak(target: Any, online: Any, tau: float) -> Any:
    """``target ← (1 − τ)·target + τ·online`` on every leaf."""
    return jax.tree_util.tree_map(lambda t, o: (1.0 - tau) * t + tau * o, target, online)
