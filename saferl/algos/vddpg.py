"""V-DDPG-Lag: the versatile DDPG-Lagrangian baseline of CCPO (Yao et al. 2023; docs: ccpo.md).

DDPG-Lag (:mod:`saferl.algos.ddpg`) whose actor and critics take the normalised threshold
``ε̃`` as an extra input, ``a = μ(s, ε)`` and ``Q(s, a | ε)``, trained on the behaviour
thresholds ``Ẽ`` only: the engine draws one per episode for every copy and stores it with each
transition, and each sampled transition is learnt under its own stored threshold ``ε``:

1. **Critics** regress ``y_r = r + γ^h Q'_r(s', μ'(s', ε) | ε)`` and
   ``y_ci = c_i + γ^h Q'_ci(s', μ'(s', ε) | ε)`` (target actor and critics).
2. **Actor** minimises, per transition, ``(−Q_r + λ_bᵀ Q_c)(s, μ(s, ε) | ε) / (1 + Σ_i λ_b,i)``
   with ``λ_b`` the multipliers of the transition's behaviour threshold ``b``.
3. **Targets** by Polyak averaging.

**Multipliers**: one vector per behaviour threshold, stepped once per iteration from the
episodes collected under it (:func:`~saferl.algos.actor_critic.behaviour_multiplier_step`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tyro

from saferl.algos.actor_critic import (
    Limits,
    OffPolicyConfig,
    VersatileParams,
    behaviour_lagrange_init,
    behaviour_multiplier_step,
    critic_step,
    init_conditioned_actor_critics,
    polyak,
    sample_multipliers,
    td_targets,
    versatile_bounds,
)
from saferl.algos.ddpg import DDPGAgent, DDPGParams
from saferl.core.conditioning import (
    ConditionedDeterministicActor,
    ConditionedQCritics,
    host_conditioned_deterministic,
)
from saferl.core.lagrange import LagrangeConfig
from saferl.data.replay import SampledBatch
from saferl.envs.core import EnvSpec


@dataclass(frozen=True)
class VDDPGLagConfig:
    """Configuration of ``vddpg_lag``: DDPG's exploration noise, the multiplier rule and the
    thresholds."""

    run: Annotated[OffPolicyConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=OffPolicyConfig)
    ddpg: DDPGParams = field(default_factory=DDPGParams)
    lagrange: LagrangeConfig = field(default_factory=LagrangeConfig)
    versatile: VersatileParams = field(default_factory=VersatileParams)


class VDDPGNetworks(NamedTuple):
    """The conditioned deterministic actor and the ``1 + m`` conditioned Q-critics."""

    actor: ConditionedDeterministicActor
    critics: ConditionedQCritics


def behaviour_thresholds(config: VDDPGLagConfig) -> np.ndarray:
    """``Ẽ`` ``[N, m]`` (the conditioned-algorithm protocol)."""
    return config.versatile.behaviour


def threshold_range(config: VDDPGLagConfig) -> tuple[np.ndarray, np.ndarray]:
    """``E`` as ``(low [m], high [m])``."""
    return config.versatile.bounds


def make_networks(config: VDDPGLagConfig, spec: EnvSpec) -> VDDPGNetworks:
    """Actor and critics of ``[s, ε̃]`` with the configured hidden sizes.

    Raises:
        ValueError: ``versatile.num_constraints`` differs from the task's cost count.
    """
    run = config.run
    low, high = versatile_bounds(config.versatile, spec)
    hidden = tuple(run.hidden_sizes)
    return VDDPGNetworks(
        ConditionedDeterministicActor(spec.action_dim, low, high, hidden, run.activation),
        ConditionedQCritics(1, spec.num_costs, low, high, hidden, run.activation))


def _optimizers(config: VDDPGLagConfig) -> tuple[optax.GradientTransformation, ...]:
    return optax.adam(config.run.actor_lr), optax.adam(config.run.critic_lr)


def init_agent(config: VDDPGLagConfig, spec: EnvSpec, networks: VDDPGNetworks,
               key: jax.Array) -> DDPGAgent:
    """Fresh networks with equal targets, Adam states and the multipliers of every behaviour
    threshold at ``lagrange.init``."""
    actor_params, critic_params = init_conditioned_actor_critics(networks, spec, key)
    actor_tx, critic_tx = _optimizers(config)
    return DDPGAgent(actor_params, critic_params, actor_params, critic_params,
                     actor_tx.init(actor_params), critic_tx.init(critic_params),
                     behaviour_lagrange_init(config.lagrange, config.versatile.behaviour),
                     jnp.zeros((), jnp.int32))


def sample_action(config: VDDPGLagConfig, networks: VDDPGNetworks, actor_params: Any,
                  observations: jax.Array, key: jax.Array, thresholds: jax.Array) -> jax.Array:
    """Exploration: ``clip(μ(s, ε) + N(0, σ²), −1, 1)``, each copy at its threshold."""
    action = networks.actor.apply(actor_params, observations, thresholds)
    noise = config.ddpg.exploration_noise * jax.random.normal(key, action.shape)
    return jnp.clip(action + noise, -1.0, 1.0)


def host_sample_action(config: VDDPGLagConfig, networks: VDDPGNetworks, actor_params: Any,
                       observations: np.ndarray, noise: np.ndarray,
                       thresholds: np.ndarray) -> np.ndarray:
    """numpy twin of :func:`sample_action` (leading seed axis; thresholds ``[S, N, m]``)."""
    action = host_conditioned_deterministic(networks.actor, actor_params, observations,
                                            thresholds)
    return np.clip(action + config.ddpg.exploration_noise * noise, -1.0, 1.0)


def update_multipliers(config: VDDPGLagConfig, agent: DDPGAgent, episode_cost: jax.Array,
                       limits: Limits, fresh: jax.Array) -> tuple[DDPGAgent, dict[str, jax.Array]]:
    """Once per iteration, per behaviour threshold (``limits`` is not used)."""
    lagrange, metrics = behaviour_multiplier_step(config.lagrange, agent.lagrange, episode_cost,
                                                  config.versatile.behaviour, fresh)
    return agent._replace(lagrange=lagrange), metrics


def update(config: VDDPGLagConfig, networks: VDDPGNetworks, agent: DDPGAgent,
           batch: SampledBatch, limits: Limits, key: jax.Array
           ) -> tuple[DDPGAgent, dict[str, jax.Array]]:
    """One V-DDPG-Lag update: every transition under its stored behaviour threshold."""
    run = config.run
    actor_tx, critic_tx = _optimizers(config)
    conditions = batch.conditions
    multipliers = sample_multipliers(agent.lagrange, conditions, config.versatile.behaviour)

    # 1. Critics towards the targets of the target actor and critics.
    next_action = networks.actor.apply(agent.target_actor_params, batch.next_observations,
                                       conditions)
    next_q = networks.critics.apply(agent.target_critic_params, batch.next_observations,
                                    next_action, conditions)
    targets = td_targets(batch, next_q[:, 0], next_q[:, 1:])
    critic_params, critic_opt, critic_loss = critic_step(
        networks.critics, critic_tx, agent.critic_params, agent.critic_opt_state, batch, targets,
        num_reward=1, conditions=conditions)

    # 2. Actor on each transition's normalised Lagrangian.
    def actor_loss(actor_params: Any) -> tuple[jax.Array, jax.Array]:
        action = networks.actor.apply(actor_params, batch.observations, conditions)
        q = networks.critics.apply(critic_params, batch.observations, action, conditions)
        objective = -q[:, 0] + jnp.sum(q[:, 1:] * multipliers, axis=-1)
        return jnp.mean(objective / (1.0 + multipliers.sum(-1))), q[:, 1:]

    (loss_actor, cost_q), grads = jax.value_and_grad(actor_loss, has_aux=True)(
        agent.actor_params)
    updates, actor_opt = actor_tx.update(grads, agent.actor_opt_state, agent.actor_params)
    actor_params = optax.apply_updates(agent.actor_params, updates)

    # 3. Targets follow.
    new_agent = DDPGAgent(actor_params, critic_params,
                          polyak(agent.target_actor_params, actor_params, run.tau),
                          polyak(agent.target_critic_params, critic_params, run.tau),
                          actor_opt, critic_opt, agent.lagrange, agent.step + 1)
    metrics = {"loss/critic": critic_loss, "loss/actor": loss_actor,
               "q/reward": targets[:, 0].mean()}
    for i in range(cost_q.shape[-1]):
        metrics[f"q/cost_{i}"] = cost_q[:, i].mean()
    return new_agent, metrics
