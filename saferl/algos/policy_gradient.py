"""What a policy-gradient algorithm (PPO, TRPO, CPO, PCPO and their Lagrangians) is written
against: the on-policy run settings, the networks, the agent state it learns, the processed
:class:`Batch` it receives from the engine, and shared pieces of its losses.

An algorithm is two pure functions (:class:`OnPolicyAlgorithm`); the engine that collects and
processes the batches is :mod:`saferl.algos.on_policy`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

from saferl.core.lagrange import LagrangeState
from saferl.core.networks import GaussianPolicy, ValueCritics
from saferl.core.shaping import MLP, make_predictor
from saferl.engine.config import SharedRunConfig
from saferl.envs.core import EnvSpec


@dataclass(frozen=True)
class OnPolicyConfig(SharedRunConfig):
    """Settings shared by every on-policy algorithm: the shared run settings
    (:class:`~saferl.engine.config.SharedRunConfig`: task, budget, seeds, networks, checkpoints)
    plus rollouts, returns, observation normalisation and the safety predictor.

    Attributes:
        gamma: Reward discount γ.
        gae_lambda: Reward GAE λ.
        cost_gamma: Cost discount γ_c (1: constrain the undiscounted episode cost).
        cost_gae_lambda: Cost GAE λ_c.
        normalize_observations: Normalise observations with running statistics.
        init_log_std: Initial log standard deviation of the Gaussian policy.
        safety_predictor: CPO's learned safety predictor (CPO paper §6.3): constrain
            ``c + α·P(a cost within the next T steps | s)`` instead of ``c``.
        predictor_alpha: The weight α of the predicted probability.
        predictor_horizon: The horizon T of the predictor's target.
        predictor_steps: Adam steps refitting the predictor on each batch.
        predictor_lr: Adam step size of the predictor.
    """

    gamma: float = 0.99
    gae_lambda: float = 0.95
    cost_gamma: float = 1.0
    cost_gae_lambda: float = 0.95
    normalize_observations: bool = True
    init_log_std: float = -0.5
    safety_predictor: bool = False
    predictor_alpha: float = 1.0
    predictor_horizon: int = 5
    predictor_steps: int = 25
    predictor_lr: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
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
        return self.steps_per_iteration


class OnPolicyNetworks(NamedTuple):
    """The policy, critic and safety-predictor modules (parameters live in the state)."""

    policy: GaussianPolicy
    critics: ValueCritics
    predictor: MLP


class AgentState(NamedTuple):
    """Everything an algorithm learns: parameters, optimiser states, multipliers, extras."""

    policy_params: Any
    critic_params: Any
    policy_opt_state: Any
    critic_opt_state: Any
    lagrange: LagrangeState
    extra: Any = ()


class Batch(NamedTuple):
    """A processed, flattened batch handed to an algorithm's ``update``.

    ``advantages`` and ``returns`` have ``1 + m`` channels: the reward, then each cost. They are
    raw GAE values: each algorithm normalises the reward channel and centres the cost channels
    (docs/algorithms/index.md). ``episode_cost`` (``[m]``) is the constraint-cost estimate in
    episode units: the mean (γ_c-discounted) cost of the batch's finished episodes; if none
    finished, the previous estimate; before any episode has finished, the cost critics' λ-returns at
    the rollout's first states (then ``has_episode_cost`` is false). ``episode_length`` is the mean
    length of the batch's finished episodes (or the time limit when none finished), which CPO needs
    to put gradients in episode units.
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

    def init_agent(self, config: Any, spec: EnvSpec, networks: OnPolicyNetworks,
                   key: jax.Array) -> AgentState:
        """Initial parameters, optimiser states and multipliers."""
        ...

    def update(self, config: Any, networks: OnPolicyNetworks, agent: AgentState, batch: Batch,
               key: jax.Array) -> tuple[AgentState, dict[str, jax.Array]]:
        """One update from a processed batch; returns the new agent and scalar metrics."""
        ...


@dataclass(frozen=True)
class OnPolicyFunctions:
    """An on-policy algorithm's two pure functions (what the registry hands the engine)."""

    init_agent: Callable[..., AgentState]
    update: Callable[..., tuple[AgentState, dict[str, jax.Array]]]


def make_networks(config: OnPolicyConfig, spec: EnvSpec) -> OnPolicyNetworks:
    """The policy, the ``1 + m`` critics and the safety predictor (1×32, m logits)."""
    return OnPolicyNetworks(
        GaussianPolicy(spec.action_dim, tuple(config.hidden_sizes), config.activation,
                       config.init_log_std),
        ValueCritics(1 + spec.num_costs, tuple(config.hidden_sizes), config.activation),
        make_predictor(spec.num_costs))


def init_network_params(networks: OnPolicyNetworks, spec: EnvSpec,
                        key: jax.Array) -> tuple[Any, Any]:
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
    magnitude, which the Lagrangian, CPO and PCPO rely on (docs/algorithms/index.md).
    """
    reward = advantages[:, 0]
    reward = (reward - reward.mean()) / (reward.std() + 1e-8)
    costs = advantages[:, 1:]
    return reward, costs - costs.mean(axis=0)
