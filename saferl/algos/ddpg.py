"""DDPG-Lagrangian and TD3-Lagrangian (Lillicrap et al. 2016; Fujimoto et al. 2018).

A deterministic actor ``a = tanh(f(s))`` explores with Gaussian noise. Per gradient update:

1. **Critics** regress ``y_r = r + γ^h Q'_r(s', a')`` and ``y_ci = c_i + γ^h Q'_ci(s', a')`` with
   ``a' = μ'(s')`` from the target actor. TD3 adds its three fixes: twin reward critics with
   ``min_k Q'_rk`` in the target, target-policy smoothing (``a' = clip(μ'(s') + clip(ε, ±c))``),
   and delayed actor/target updates (every ``policy_delay`` critic updates).
2. **Actor** minimises ``(−Q_r(s, μ(s)) + Σ_i λ_i Q_ci(s, μ(s))) / (1 + Σ_i λ_i)``
   (docs/algorithms/lagrangian.md; TD3 uses its first reward critic, as the paper does).
3. **Targets** (actor and critics) by Polyak averaging.

The multipliers are updated once per iteration from the collected episodes' cost (default) or
at every actor update from ``Q_C`` against the Q threshold. The module reads top to bottom as
DDPG-Lag; each TD3 difference is marked where it enters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tyro

from saferl.algos.actor_critic import (
    Limits,
    MultiplierParams,
    OffPolicyConfig,
    critic_step,
    episode_multipliers,
    init_actor_critics,
    polyak,
    q_multipliers,
    td_targets,
)
from saferl.core.lagrange import LagrangeConfig, LagrangeState, lagrange_init
from saferl.core.networks import DeterministicActor, QCritics, host_deterministic
from saferl.data.replay import SampledBatch
from saferl.envs.core import EnvSpec


@dataclass(frozen=True)
class DDPGParams:
    """Exploration and TD3's three fixes (ignored by ``ddpg_lag`` except the noise).

    Attributes:
        exploration_noise: Std of the Gaussian exploration noise (actions in ``[-1, 1]``).
        policy_noise: TD3 target-policy smoothing noise std.
        noise_clip: TD3 clip of the smoothing noise.
        policy_delay: TD3 critic updates per actor and target update.
    """

    exploration_noise: float = 0.1
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_delay: int = 2

    def __post_init__(self) -> None:
        for name in ("exploration_noise", "policy_noise", "noise_clip"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"ddpg.{name} must be a finite number >= 0; got {value}.")
        if self.policy_delay < 1:
            raise ValueError(f"ddpg.policy_delay must be >= 1; got {self.policy_delay}.")


@dataclass(frozen=True)
class DDPGLagConfig:
    """Configuration of ``ddpg_lag``."""

    run: Annotated[OffPolicyConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=OffPolicyConfig)
    ddpg: DDPGParams = field(default_factory=DDPGParams)
    lagrange: LagrangeConfig = field(default_factory=LagrangeConfig)
    multiplier: MultiplierParams = field(default_factory=MultiplierParams)


@dataclass(frozen=True)
class TD3LagConfig(DDPGLagConfig):
    """Configuration of ``td3_lag``: the same fields; the type switches TD3's fixes on."""


class DDPGNetworks(NamedTuple):
    """The deterministic actor and the ``k + m`` Q-critics (k = 1 DDPG, 2 TD3)."""

    actor: DeterministicActor
    critics: QCritics


class DDPGAgent(NamedTuple):
    """Online and target parameters, optimiser states, multipliers, update counter."""

    actor_params: Any
    critic_params: Any
    target_actor_params: Any
    target_critic_params: Any
    actor_opt_state: Any
    critic_opt_state: Any
    lagrange: LagrangeState
    step: jax.Array


def _twin(config: DDPGLagConfig | TD3LagConfig) -> bool:
    return isinstance(config, TD3LagConfig)


def make_networks(config: DDPGLagConfig | TD3LagConfig, spec: EnvSpec) -> DDPGNetworks:
    """Actor and critics with the configured hidden sizes."""
    run = config.run
    hidden = tuple(run.hidden_sizes)
    return DDPGNetworks(DeterministicActor(spec.action_dim, hidden, run.activation),
                    QCritics(2 if _twin(config) else 1, spec.num_costs, hidden, run.activation))


def _optimizers(config: DDPGLagConfig | TD3LagConfig) -> tuple[optax.GradientTransformation, ...]:
    return optax.adam(config.run.actor_lr), optax.adam(config.run.critic_lr)


def init_agent(config: DDPGLagConfig | TD3LagConfig, spec: EnvSpec, networks: DDPGNetworks,
               key: jax.Array) -> DDPGAgent:
    """Fresh networks with equal targets, Adam states and multipliers."""
    actor_params, critic_params = init_actor_critics(networks, spec, key)
    actor_tx, critic_tx = _optimizers(config)
    return DDPGAgent(actor_params, critic_params, actor_params, critic_params,
                     actor_tx.init(actor_params), critic_tx.init(critic_params),
                     lagrange_init(config.lagrange, spec.num_costs), jnp.zeros((), jnp.int32))


def sample_action(config: DDPGLagConfig | TD3LagConfig, networks: DDPGNetworks, actor_params: Any,
                  observations: jax.Array, key: jax.Array) -> jax.Array:
    """Exploration: ``clip(μ(s) + N(0, σ²), −1, 1)``."""
    action = networks.actor.apply(actor_params, observations)
    noise = config.ddpg.exploration_noise * jax.random.normal(key, action.shape)
    return jnp.clip(action + noise, -1.0, 1.0)


def host_sample_action(config: DDPGLagConfig | TD3LagConfig, networks: DDPGNetworks,
                       actor_params: Any, observations: np.ndarray,
                       noise: np.ndarray) -> np.ndarray:
    """numpy twin of :func:`sample_action` for host rollouts (leading seed axis), given the
    standard-normal ``noise`` ``[S, N, A]``; ``actor_params`` from ``host_params``."""
    action = host_deterministic(networks.actor, actor_params, observations)
    return np.clip(action + config.ddpg.exploration_noise * noise, -1.0, 1.0)


def update_multipliers(config: DDPGLagConfig | TD3LagConfig, agent: DDPGAgent,
                       episode_cost: jax.Array, limits: Limits,
                       fresh: jax.Array) -> tuple[DDPGAgent, dict[str, jax.Array]]:
    """The episode form: one multiplier step per iteration."""
    lagrange, metrics = episode_multipliers(config.lagrange, config.multiplier, agent.lagrange,
                                            episode_cost, limits, fresh)
    return agent._replace(lagrange=lagrange), metrics


def update(config: DDPGLagConfig | TD3LagConfig, networks: DDPGNetworks, agent: DDPGAgent,
           batch: SampledBatch, limits: Limits, key: jax.Array
           ) -> tuple[DDPGAgent, dict[str, jax.Array]]:
    """One DDPG-Lag / TD3-Lag gradient update."""
    run, settings = config.run, config.ddpg
    twin = _twin(config)
    num_reward = 2 if twin else 1
    actor_tx, critic_tx = _optimizers(config)

    # 1. Critics towards the targets of the target actor and critics.
    next_action = networks.actor.apply(agent.target_actor_params, batch.next_observations)
    if twin:  # TD3: target-policy smoothing
        noise = jnp.clip(settings.policy_noise * jax.random.normal(key, next_action.shape),
                         -settings.noise_clip, settings.noise_clip)
        next_action = jnp.clip(next_action + noise, -1.0, 1.0)
    next_q = networks.critics.apply(agent.target_critic_params, batch.next_observations,
                                    next_action)
    next_reward = jnp.min(next_q[:, :num_reward], axis=-1)  # TD3: clipped double Q
    targets = td_targets(batch, next_reward, next_q[:, num_reward:])
    critic_params, critic_opt, critic_loss = critic_step(
        networks.critics, critic_tx, agent.critic_params, agent.critic_opt_state, batch, targets,
        num_reward)

    # 2. Actor on the normalised Lagrangian (TD3: only every policy_delay-th update).
    multipliers = agent.lagrange.multiplier

    def actor_loss(actor_params: Any) -> tuple[jax.Array, jax.Array]:
        action = networks.actor.apply(actor_params, batch.observations)
        q = networks.critics.apply(critic_params, batch.observations, action)
        cost_q = q[:, num_reward:]
        objective = -q[:, 0] + cost_q @ multipliers
        return jnp.mean(objective) / (1.0 + multipliers.sum()), cost_q

    (loss_actor, cost_q), grads = jax.value_and_grad(actor_loss, has_aux=True)(
        agent.actor_params)
    updates, new_actor_opt = actor_tx.update(grads, agent.actor_opt_state, agent.actor_params)
    new_actor = optax.apply_updates(agent.actor_params, updates)
    act_now = (agent.step % (settings.policy_delay if twin else 1)) == 0
    pick = lambda new, old: jax.tree_util.tree_map(  # noqa: E731
        lambda n, o: jnp.where(act_now, n, o), new, old)
    actor_params = pick(new_actor, agent.actor_params)
    actor_opt = pick(new_actor_opt, agent.actor_opt_state)
    lagrange = pick(q_multipliers(config.lagrange, config.multiplier, agent.lagrange, cost_q,
                                  limits), agent.lagrange)

    # 3. Targets follow (TD3: at the actor's pace).
    target_actor = pick(polyak(agent.target_actor_params, actor_params, run.tau),
                        agent.target_actor_params)
    target_critic = pick(polyak(agent.target_critic_params, critic_params, run.tau),
                         agent.target_critic_params)
    new_agent = DDPGAgent(actor_params, critic_params, target_actor, target_critic, actor_opt,
                          critic_opt, lagrange, agent.step + 1)
    metrics = {"loss/critic": critic_loss, "loss/actor": loss_actor,
               "q/reward": targets[:, 0].mean()}
    for i in range(cost_q.shape[-1]):
        metrics[f"q/cost_{i}"] = cost_q[:, i].mean()
    return new_agent, metrics
