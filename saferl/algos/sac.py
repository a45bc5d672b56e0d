"""SAC and SAC-Lagrangian (Haarnoja et al. 2018; Ha et al. 2020 / FSRL's SAC-Lag).

``sac`` ignores costs (the unconstrained baseline; its cost critics are still trained, so that
their estimates can be logged). ``sac_lag`` maximises the Lagrangian with one multiplier per
constraint (docs/algorithms/lagrangian.md); per gradient update:

1. **Critics** — twin reward critics and one critic per cost regress
   ``y_r = r + γ^h (min_k Q'_rk(s', a') − α log π(a'|s'))`` and ``y_ci = c_i + γ^h Q'_ci(s', a')``
   with ``a' ~ π(·|s')`` and target networks ``Q'`` (n-step windows; ``γ^h = 0`` after a
   termination, :mod:`saferl.data.replay`).
2. **Actor** — minimise ``(α log π(a|s) − min_k Q_rk(s, a) + Σ_i λ_i Q_ci(s, a)) / (1 + Σ_i λ_i)``
   with reparametrised ``a = tanh(u)``; dividing by ``1 + Σλ`` keeps the step size bounded as
   the multipliers grow.
3. **Temperature** — ``α`` follows the target entropy ``−dim(A)`` (or stays fixed).
4. **Targets** — Polyak averaging with rate τ.

The multipliers are updated once per iteration from the collected episodes' cost (default) or
at every update from ``Q_C`` against the Q threshold (:class:`~saferl.algos.off_policy.
MultiplierParams`).
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
from saferl.core.distributions import gaussian_sample, tanh_gaussian_sample_and_log_prob
from saferl.core.lagrange import LagrangeConfig, LagrangeState, lagrange_init
from saferl.core.networks import QCritics, TanhGaussianActor, host_tanh_gaussian
from saferl.data.replay import SampledBatch
from saferl.envs.core import EnvSpec


@dataclass(frozen=True)
class SACParams:
    """SAC's own hyperparameters.

    Attributes:
        init_alpha: Initial entropy temperature α.
        auto_alpha: Tune α towards ``target_entropy`` (else α stays ``init_alpha``).
        alpha_lr: Adam step size of ``log α``.
        target_entropy: Target entropy (default ``−dim(A)``).
    """

    init_alpha: float = 0.2
    auto_alpha: bool = True
    alpha_lr: float = 3e-4
    target_entropy: float | None = None

    def __post_init__(self) -> None:
        if not (self.init_alpha > 0 and math.isfinite(self.init_alpha)):
            raise ValueError(f"sac.init_alpha must be a finite number > 0; got {self.init_alpha}.")
        if not self.alpha_lr > 0:
            raise ValueError(f"sac.alpha_lr must be > 0; got {self.alpha_lr}.")


@dataclass(frozen=True)
class SACConfig:
    """Configuration of ``sac``: the shared off-policy settings and SAC's hyperparameters."""

    run: Annotated[OffPolicyConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=OffPolicyConfig)
    sac: SACParams = field(default_factory=SACParams)


@dataclass(frozen=True)
class SACLagConfig:
    """Configuration of ``sac_lag``: SAC plus the multiplier rule and its cost signal."""

    run: Annotated[OffPolicyConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=OffPolicyConfig)
    sac: SACParams = field(default_factory=SACParams)
    lagrange: LagrangeConfig = field(default_factory=LagrangeConfig)
    multiplier: MultiplierParams = field(default_factory=MultiplierParams)


class SACNetworks(NamedTuple):
    """The tanh-Gaussian actor and the ``2 + m`` Q-critics."""

    actor: TanhGaussianActor
    critics: QCritics


class SACAgent(NamedTuple):
    """Parameters, target critics, optimiser states, temperature and multipliers (``vsac_lag``:
    one multiplier state per behaviour threshold, a leading ``[N]`` axis on every leaf)."""

    actor_params: Any
    critic_params: Any
    target_critic_params: Any
    actor_opt_state: Any
    critic_opt_state: Any
    log_alpha: jax.Array
    alpha_opt_state: Any
    lagrange: LagrangeState


def make_networks(config: SACConfig | SACLagConfig, spec: EnvSpec) -> SACNetworks:
    """Actor and critics with the configured hidden sizes."""
    run = config.run
    hidden = tuple(run.hidden_sizes)
    return SACNetworks(TanhGaussianActor(spec.action_dim, hidden, run.activation),
                    QCritics(2, spec.num_costs, hidden, run.activation))


def _optimizers(config: SACConfig | SACLagConfig) -> tuple[optax.GradientTransformation, ...]:
    return (optax.adam(config.run.actor_lr), optax.adam(config.run.critic_lr),
            optax.adam(config.sac.alpha_lr))


def init_agent(config: SACConfig | SACLagConfig, spec: EnvSpec, networks: SACNetworks,
               key: jax.Array) -> SACAgent:
    """Fresh networks (targets equal to the critics), Adam states, α and multipliers."""
    actor_params, critic_params = init_actor_critics(networks, spec, key)
    actor_tx, critic_tx, alpha_tx = _optimizers(config)
    log_alpha = jnp.asarray(math.log(config.sac.init_alpha), jnp.float32)
    lagrange = lagrange_init(getattr(config, "lagrange", LagrangeConfig()), spec.num_costs)
    return SACAgent(actor_params, critic_params, critic_params, actor_tx.init(actor_params),
                    critic_tx.init(critic_params), log_alpha, alpha_tx.init(log_alpha), lagrange)


def sample_action(config: SACConfig | SACLagConfig, networks: SACNetworks, actor_params: Any,
                  observations: jax.Array, key: jax.Array) -> jax.Array:
    """Exploration: ``tanh(u)``, ``u ~ N(μ(s), σ(s)²)``."""
    mean, log_std = networks.actor.apply(actor_params, observations)
    return jnp.tanh(gaussian_sample(key, mean, log_std))


def host_sample_action(config: SACConfig | SACLagConfig, networks: SACNetworks, actor_params: Any,
                       observations: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """numpy twin of :func:`sample_action` for host rollouts (leading seed axis), given the
    standard-normal ``noise`` ``[S, N, A]``; ``actor_params`` from ``host_params``."""
    mean, log_std = host_tanh_gaussian(networks.actor, actor_params, observations)
    return np.tanh(mean + np.exp(log_std) * noise)


def temperature_step(params: SACParams, tx: optax.GradientTransformation, log_alpha: jax.Array,
                     opt_state: Any, log_prob: jax.Array, action_dim: int
                     ) -> tuple[jax.Array, Any]:
    """One Adam step of ``log α`` towards the target entropy (``−action_dim`` by default), given
    the batch's ``log π(a|s)``; unchanged when ``auto_alpha`` is off."""
    if not params.auto_alpha:
        return log_alpha, opt_state
    target_entropy = (params.target_entropy if params.target_entropy is not None
                      else -float(action_dim))
    entropy_gap = jax.lax.stop_gradient(-log_prob - target_entropy).mean()
    # d/d log α of  log α · (H − H_target)
    step, opt_state = tx.update(entropy_gap, opt_state, log_alpha)
    return optax.apply_updates(log_alpha, step), opt_state


def update_multipliers(config: SACConfig | SACLagConfig, agent: SACAgent,
                       episode_cost: jax.Array, limits: Limits,
                       fresh: jax.Array) -> tuple[SACAgent, dict[str, jax.Array]]:
    """``sac_lag`` with the episode form: one multiplier step per iteration."""
    if not isinstance(config, SACLagConfig):
        return agent, {}
    lagrange, metrics = episode_multipliers(config.lagrange, config.multiplier, agent.lagrange,
                                            episode_cost, limits, fresh)
    return agent._replace(lagrange=lagrange), metrics


def update(config: SACConfig | SACLagConfig, networks: SACNetworks, agent: SACAgent,
           batch: SampledBatch, limits: Limits, key: jax.Array
           ) -> tuple[SACAgent, dict[str, jax.Array]]:
    """One SAC(-Lag) gradient update: critics, actor, temperature, targets."""
    run = config.run
    actor_tx, critic_tx, alpha_tx = _optimizers(config)
    next_key, actor_key = jax.random.split(key)
    alpha = jnp.exp(agent.log_alpha)
    lagrangian = isinstance(config, SACLagConfig)

    # 1. Critics towards the soft Bellman targets of the target networks.
    mean, log_std = networks.actor.apply(agent.actor_params, batch.next_observations)
    next_action, next_log_prob = tanh_gaussian_sample_and_log_prob(next_key, mean, log_std)
    next_q = networks.critics.apply(agent.target_critic_params, batch.next_observations,
                                    next_action)
    targets = td_targets(batch, jnp.minimum(next_q[:, 0], next_q[:, 1]) - alpha * next_log_prob,
                         next_q[:, 2:])
    critic_params, critic_opt, critic_loss = critic_step(
        networks.critics, critic_tx, agent.critic_params, agent.critic_opt_state, batch, targets,
        num_reward=2)

    # 2. Actor on the (normalised) Lagrangian of the updated critics.
    multipliers = agent.lagrange.multiplier if lagrangian else jnp.zeros_like(
        agent.lagrange.multiplier)

    def actor_loss(params: Any) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        mean, log_std = networks.actor.apply(params, batch.observations)
        action, log_prob = tanh_gaussian_sample_and_log_prob(actor_key, mean, log_std)
        q = networks.critics.apply(critic_params, batch.observations, action)
        reward_q = jnp.minimum(q[:, 0], q[:, 1])
        objective = alpha * log_prob - reward_q + q[:, 2:] @ multipliers
        return jnp.mean(objective) / (1.0 + multipliers.sum()), (log_prob, q[:, 2:])

    (loss_actor, (log_prob, cost_q)), grads = jax.value_and_grad(actor_loss, has_aux=True)(
        agent.actor_params)
    updates, actor_opt = actor_tx.update(grads, agent.actor_opt_state, agent.actor_params)
    actor_params = optax.apply_updates(agent.actor_params, updates)

    # 3. Temperature: raise α when the entropy is below target, lower it when above.
    log_alpha, alpha_opt = temperature_step(config.sac, alpha_tx, agent.log_alpha,
                                            agent.alpha_opt_state, log_prob,
                                            batch.actions.shape[-1])

    lagrange = agent.lagrange
    if lagrangian:
        lagrange = q_multipliers(config.lagrange, config.multiplier, lagrange, cost_q, limits)

    target = polyak(agent.target_critic_params, critic_params, run.tau)
    new_agent = SACAgent(actor_params, critic_params, target, actor_opt, critic_opt, log_alpha,
                         alpha_opt, lagrange)
    metrics = {"loss/critic": critic_loss, "loss/actor": loss_actor, "sac/alpha": alpha,
               "sac/entropy": -log_prob.mean(), "q/reward": targets[:, 0].mean()}
    for i in range(cost_q.shape[-1]):
        metrics[f"q/cost_{i}"] = cost_q[:, i].mean()
    return new_agent, metrics
