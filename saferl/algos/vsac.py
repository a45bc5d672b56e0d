"""V-SAC-Lag: the versatile SAC-Lagrangian baseline of CCPO (Yao et al. 2023; docs: ccpo.md).

SAC-Lag (:mod:`saferl.algos.sac`) whose actor and critics take the normalised threshold ``ε̃``
as an extra input, ``π(a | s, ε)`` and ``Q(s, a | ε)``, trained on the behaviour thresholds
``Ẽ`` only. The engine draws a behaviour threshold per episode for every copy and stores it with
each transition (the conditioned protocol of :class:`~saferl.algos.off_policy.
OffPolicyAlgorithm`); per gradient update, each sampled transition is learnt under its own
stored threshold ``ε``:

1. **Critics** — ``y_r = r + γ^h (min_k Q'_rk(s', a' | ε) − α log π(a'|s', ε))`` and
   ``y_ci = c_i + γ^h Q'_ci(s', a' | ε)``, ``a' ~ π(·|s', ε)``.
2. **Actor** — per transition ``(α log π(a|s, ε) − min_k Q_rk + λ_bᵀ Q_c) / (1 + Σ_i λ_b,i)``,
   with ``λ_b`` the multipliers of the transition's behaviour threshold ``b``.
3. **Temperature** and **targets** — as SAC.

**Multipliers**: one vector ``λ_b ∈ ℝ^m`` per behaviour threshold, updated once per iteration
(gradient ascent or PID, :mod:`saferl.core.lagrange`) from the mean cost of the episodes collected
under ``ε_b`` against ``ε_b``, and only when such episodes finished.
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
from saferl.algos.sac import SACAgent, SACParams, temperature_step
from saferl.core.conditioning import (
    ConditionedQCritics,
    ConditionedTanhGaussianActor,
    host_conditioned_tanh_gaussian,
)
from saferl.core.distributions import gaussian_sample, tanh_gaussian_sample_and_log_prob
from saferl.core.lagrange import LagrangeConfig
from saferl.data.replay import SampledBatch
from saferl.envs.core import EnvSpec


@dataclass(frozen=True)
class VSACLagConfig:
    """Configuration of ``vsac_lag``: SAC's settings, the multiplier rule and the thresholds."""

    run: Annotated[OffPolicyConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=OffPolicyConfig)
    sac: SACParams = field(default_factory=SACParams)
    lagrange: LagrangeConfig = field(default_factory=LagrangeConfig)
    versatile: VersatileParams = field(default_factory=VersatileParams)


class VSACNetworks(NamedTuple):
    """The conditioned tanh-Gaussian actor and the ``2 + m`` conditioned Q-critics."""

    actor: ConditionedTanhGaussianActor
    critics: ConditionedQCritics


def behaviour_thresholds(config: VSACLagConfig) -> np.ndarray:
    """``Ẽ`` ``[N, m]`` (the conditioned-algorithm protocol)."""
    return config.versatile.behaviour


def threshold_range(config: VSACLagConfig) -> tuple[np.ndarray, np.ndarray]:
    """``E`` as ``(low [m], high [m])``."""
    return config.versatile.bounds


def make_networks(config: VSACLagConfig, spec: EnvSpec) -> VSACNetworks:
    """Actor and critics of ``[s, ε̃]`` with the configured hidden sizes.

    Raises:
        ValueError: ``versatile.num_constraints`` differs from the task's cost count.
    """
    run = config.run
    low, high = versatile_bounds(config.versatile, spec)
    hidden = tuple(run.hidden_sizes)
    return VSACNetworks(
        ConditionedTanhGaussianActor(spec.action_dim, low, high, hidden, run.activation),
        ConditionedQCritics(2, spec.num_costs, low, high, hidden, run.activation))


def _optimizers(config: VSACLagConfig) -> tuple[optax.GradientTransformation, ...]:
    return (optax.adam(config.run.actor_lr), optax.adam(config.run.critic_lr),
            optax.adam(config.sac.alpha_lr))


def init_agent(config: VSACLagConfig, spec: EnvSpec, networks: VSACNetworks,
               key: jax.Array) -> SACAgent:
    """Fresh networks (targets equal to the critics), Adam states, α, and the multipliers of
    every behaviour threshold at ``lagrange.init``."""
    actor_params, critic_params = init_conditioned_actor_critics(networks, spec, key)
    actor_tx, critic_tx, alpha_tx = _optimizers(config)
    log_alpha = jnp.asarray(math.log(config.sac.init_alpha), jnp.float32)
    lagrange = behaviour_lagrange_init(config.lagrange, config.versatile.behaviour)
    return SACAgent(actor_params, critic_params, critic_params, actor_tx.init(actor_params),
                     critic_tx.init(critic_params), log_alpha, alpha_tx.init(log_alpha),
                     lagrange)


def sample_action(config: VSACLagConfig, networks: VSACNetworks, actor_params: Any,
                  observations: jax.Array, key: jax.Array, thresholds: jax.Array) -> jax.Array:
    """Exploration: ``tanh(u)``, ``u ~ π(·|s, ε)``, each copy at its threshold ``[N, m]``."""
    mean, log_std = networks.actor.apply(actor_params, observations, thresholds)
    return jnp.tanh(gaussian_sample(key, mean, log_std))


def host_sample_action(config: VSACLagConfig, networks: VSACNetworks, actor_params: Any,
                       observations: np.ndarray, noise: np.ndarray,
                       thresholds: np.ndarray) -> np.ndarray:
    """numpy twin of :func:`sample_action` (leading seed axis; thresholds ``[S, N, m]``)."""
    mean, log_std = host_conditioned_tanh_gaussian(networks.actor, actor_params, observations,
                                                   thresholds)
    return np.tanh(mean + np.exp(log_std) * noise)


def update_multipliers(config: VSACLagConfig, agent: SACAgent, episode_cost: jax.Array,
                       limits: Limits, fresh: jax.Array) -> tuple[SACAgent, dict[str, jax.Array]]:
    """Once per iteration, per behaviour threshold (:func:`~saferl.algos.actor_critic.
    behaviour_multiplier_step`; ``limits``, the run's single cost limit, is not used)."""
    lagrange, metrics = behaviour_multiplier_step(config.lagrange, agent.lagrange, episode_cost,
                                                  config.versatile.behaviour, fresh)
    return agent._replace(lagrange=lagrange), metrics


def update(config: VSACLagConfig, networks: VSACNetworks, agent: SACAgent, batch: SampledBatch,
           limits: Limits, key: jax.Array) -> tuple[SACAgent, dict[str, jax.Array]]:
    """One V-SAC-Lag update: every transition under its stored behaviour threshold."""
    run = config.run
    actor_tx, critic_tx, alpha_tx = _optimizers(config)
    next_key, actor_key = jax.random.split(key)
    alpha = jnp.exp(agent.log_alpha)
    conditions = batch.conditions
    multipliers = sample_multipliers(agent.lagrange, conditions,
                                     config.versatile.behaviour)  # [B, m]

    # 1. Critics towards the soft Bellman targets, at each transition's threshold.
    mean, log_std = networks.actor.apply(agent.actor_params, batch.next_observations, conditions)
    next_action, next_log_prob = tanh_gaussian_sample_and_log_prob(next_key, mean, log_std)
    next_q = networks.critics.apply(agent.target_critic_params, batch.next_observations,
                                    next_action, conditions)
    targets = td_targets(batch, jnp.minimum(next_q[:, 0], next_q[:, 1]) - alpha * next_log_prob,
                         next_q[:, 2:])
    critic_params, critic_opt, critic_loss = critic_step(
        networks.critics, critic_tx, agent.critic_params, agent.critic_opt_state, batch, targets,
        num_reward=2, conditions=conditions)

    # 2. Actor on each transition's normalised Lagrangian.
    def actor_loss(params: Any) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        mean, log_std = networks.actor.apply(params, batch.observations, conditions)
        action, log_prob = tanh_gaussian_sample_and_log_prob(actor_key, mean, log_std)
        q = networks.critics.apply(critic_params, batch.observations, action, conditions)
        reward_q = jnp.minimum(q[:, 0], q[:, 1])
        objective = alpha * log_prob - reward_q + jnp.sum(q[:, 2:] * multipliers, axis=-1)
        return jnp.mean(objective / (1.0 + multipliers.sum(-1))), (log_prob, q[:, 2:])

    (loss_actor, (log_prob, cost_q)), grads = jax.value_and_grad(actor_loss, has_aux=True)(
        agent.actor_params)
    updates, actor_opt = actor_tx.update(grads, agent.actor_opt_state, agent.actor_params)
    actor_params = optax.apply_updates(agent.actor_params, updates)

    # 3. Temperature, as SAC.
    log_alpha, alpha_opt = temperature_step(config.sac, alpha_tx, agent.log_alpha,
                                            agent.alpha_opt_state, log_prob,
                                            batch.actions.shape[-1])

    target = polyak(agent.target_critic_params, critic_params, run.tau)
    new_agent = SACAgent(actor_params, critic_params, target, actor_opt, critic_opt, log_alpha,
                          alpha_opt, agent.lagrange)
    metrics = {"loss/critic": critic_loss, "loss/actor": loss_actor, "sac/alpha": alpha,
               "sac/entropy": -log_prob.mean(), "q/reward": targets[:, 0].mean()}
    for i in range(cost_q.shape[-1]):
        metrics[f"q/cost_{i}"] = cost_q[:, i].mean()
    return new_agent, metrics
