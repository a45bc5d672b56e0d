"""PPO and PPO-Lagrangian (Schulman et al. 2017; Ray et al. 2019).

``ppo`` maximises the clipped surrogate of the reward advantage and ignores costs (the
unconstrained baseline). ``ppo_lag`` maximises the Lagrangian ``J_R − Σ λ_i (J_Ci − d_i)``:
once per iteration the multipliers are updated from the batch's episode cost (gradient ascent or
PID, :mod:`saferl.core.lagrange`), then the policy follows the clipped surrogate of

    Â = (Â_R − Σ_i λ_i Â_Ci) / (1 + Σ_i λ_i)            (docs/algorithms/lagrangian.md)

with ``Â_R`` normalised and ``Â_Ci`` centred only. The division keeps the advantage's scale
bounded as the multipliers grow. Critics for the reward and every cost regress their GAE
λ-returns in the same minibatch loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import jax
import jax.numpy as jnp
import optax
import tyro

from saferl.algos.policy_gradient import (
    AgentState,
    Batch,
    OnPolicyConfig,
    OnPolicyNetworks,
    init_network_params,
    reward_cost_advantages,
    value_loss,
)
from saferl.core.distributions import gaussian_entropy, gaussian_kl, gaussian_log_prob
from saferl.core.lagrange import LagrangeConfig, lagrange_init, lagrangian_advantage
from saferl.core.shuffle import minibatch_indices
from saferl.envs.core import EnvSpec


@dataclass(frozen=True)
class PPOParams:
    """PPO's own hyperparameters.

    Attributes:
        clip_ratio: Surrogate clipping ε.
        epochs: Passes over each batch.
        minibatches: Minibatches per pass, each of ``batch // minibatches`` samples (when it
            does not divide ``num_envs × rollout_steps``, the few samples left over sit out
            each pass, different ones every pass).
        policy_lr: Adam step size of the policy.
        critic_lr: Adam step size of the critics.
        entropy_coef: Weight of the entropy bonus.
        max_grad_norm: Global gradient-norm clip.
        target_kl: Stop policy updates for the rest of the iteration once a minibatch's
            approximate KL exceeds ``1.5 × target_kl`` (≤ 0 disables).
    """

    clip_ratio: float = 0.2
    epochs: int = 5
    minibatches: int = 4
    policy_lr: float = 3e-4
    critic_lr: float = 1e-3
    entropy_coef: float = 0.0
    max_grad_norm: float = 0.5
    target_kl: float = 0.02

    def __post_init__(self) -> None:
        for name in ("clip_ratio", "policy_lr", "critic_lr", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ppo.{name} must be > 0; got {getattr(self, name)}.")
        for name in ("epochs", "minibatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"ppo.{name} must be >= 1; got {getattr(self, name)}.")
        if self.entropy_coef < 0:
            raise ValueError(f"ppo.entropy_coef must be >= 0; got {self.entropy_coef}.")


def _check_minibatches(run: OnPolicyConfig, ppo: PPOParams) -> None:
    if ppo.minibatches > run.batch_size:
        raise ValueError(
            f"ppo.minibatches ({ppo.minibatches}) must be at most the batch num_envs × "
            f"rollout_steps = {run.num_envs} × {run.rollout_steps} = {run.batch_size}.")


@dataclass(frozen=True)
class PPOConfig:
    """Configuration of ``ppo``: the shared on-policy settings and PPO's hyperparameters."""

    run: Annotated[OnPolicyConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=OnPolicyConfig)
    ppo: PPOParams = field(default_factory=PPOParams)

    def __post_init__(self) -> None:
        _check_minibatches(self.run, self.ppo)


@dataclass(frozen=True)
class PPOLagConfig:
    """Configuration of ``ppo_lag``: PPO plus the multiplier update rule."""

    run: Annotated[OnPolicyConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=OnPolicyConfig)
    ppo: PPOParams = field(default_factory=PPOParams)
    lagrange: LagrangeConfig = field(default_factory=LagrangeConfig)

    def __post_init__(self) -> None:
        _check_minibatches(self.run, self.ppo)


def _optimizers(ppo: PPOParams) -> tuple[optax.GradientTransformation,
                                         optax.GradientTransformation]:
    clip = optax.clip_by_global_norm(ppo.max_grad_norm)
    return (optax.chain(clip, optax.adam(ppo.policy_lr, eps=1e-5)),
            optax.chain(clip, optax.adam(ppo.critic_lr, eps=1e-5)))


def init_agent(config: PPOConfig | PPOLagConfig, spec: EnvSpec, networks: OnPolicyNetworks,
               key: jax.Array) -> AgentState:
    """Fresh networks, Adam states and multipliers (unused by plain ``ppo``)."""
    policy_params, critic_params = init_network_params(networks, spec, key)
    policy_tx, critic_tx = _optimizers(config.ppo)
    lagrange_config = getattr(config, "lagrange", LagrangeConfig())
    return AgentState(policy_params, critic_params, policy_tx.init(policy_params),
                      critic_tx.init(critic_params), lagrange_init(lagrange_config, spec.num_costs))


def update(config: PPOConfig | PPOLagConfig, networks: OnPolicyNetworks, agent: AgentState,
           batch: Batch, key: jax.Array) -> tuple[AgentState, dict[str, jax.Array]]:
    """Multiplier step (``ppo_lag``), then epochs of clipped-surrogate and critic minibatches."""
    ppo = config.ppo
    policy_tx, critic_tx = _optimizers(ppo)
    lagrange = agent.lagrange
    metrics: dict[str, jax.Array] = {}

    # 1. Multipliers, once per iteration, from the batch's episode cost (before the policy step).
    reward_advantage, cost_advantage = reward_cost_advantages(batch.advantages)
    if isinstance(config, PPOLagConfig):
        lagrange, advantage, metrics = lagrangian_advantage(
            config.lagrange, lagrange, batch.episode_cost, batch.cost_limit,
            batch.has_episode_cost, reward_advantage, cost_advantage)
    else:
        advantage = reward_advantage

    # 2. Clipped surrogate and value regression over epochs × minibatches.
    def policy_loss(params: Any, idx: jax.Array) -> tuple[jax.Array, tuple]:
        mean, log_std = networks.policy.apply(params, batch.observations[idx])
        log_prob = gaussian_log_prob(mean, log_std, batch.actions[idx])
        log_ratio = log_prob - batch.log_probs[idx]
        ratio = jnp.exp(log_ratio)
        adv = advantage[idx]
        clipped = jnp.clip(ratio, 1 - ppo.clip_ratio, 1 + ppo.clip_ratio)
        surrogate = jnp.minimum(ratio * adv, clipped * adv).mean()
        entropy = gaussian_entropy(log_std).mean()
        approx_kl = jnp.mean(ratio - 1.0 - log_ratio)
        clip_fraction = jnp.mean(jnp.abs(ratio - 1.0) > ppo.clip_ratio)
        return -surrogate - ppo.entropy_coef * entropy, (approx_kl, clip_fraction, entropy)

    def minibatch(carry: tuple, idx: jax.Array) -> tuple[tuple, tuple]:
        policy_params, critic_params, policy_opt, critic_opt, stopped = carry
        (p_loss, (approx_kl, clip_fraction, entropy)), p_grads = jax.value_and_grad(
            policy_loss, has_aux=True)(policy_params, idx)
        # Early stopping: once the policy has moved too far, keep it (critics keep learning).
        stopped = stopped | ((ppo.target_kl > 0) & (approx_kl > 1.5 * ppo.target_kl))
        p_updates, new_policy_opt = policy_tx.update(p_grads, policy_opt, policy_params)
        new_policy_params = optax.apply_updates(policy_params, p_updates)
        keep = lambda new, old: jnp.where(stopped, old, new)  # noqa: E731
        policy_params = jax.tree_util.tree_map(keep, new_policy_params, policy_params)
        policy_opt = jax.tree_util.tree_map(keep, new_policy_opt, policy_opt)
        v_loss, v_grads = jax.value_and_grad(
            lambda p: value_loss(networks.critics, p, batch.observations[idx],
                                 batch.returns[idx]))(critic_params)
        v_updates, critic_opt = critic_tx.update(v_grads, critic_opt, critic_params)
        critic_params = optax.apply_updates(critic_params, v_updates)
        out = (p_loss, v_loss, approx_kl, clip_fraction, entropy, stopped)
        return (policy_params, critic_params, policy_opt, critic_opt, stopped), out

    size = batch.actions.shape[0]

    def epoch(carry: tuple, epoch_key: jax.Array) -> tuple[tuple, tuple]:
        order = minibatch_indices(epoch_key, size, ppo.minibatches)
        return jax.lax.scan(minibatch, carry, order)

    init = (agent.policy_params, agent.critic_params, agent.policy_opt_state,
            agent.critic_opt_state, jnp.zeros((), bool))
    (policy_params, critic_params, policy_opt, critic_opt, _), outs = jax.lax.scan(
        epoch, init, jax.random.split(key, ppo.epochs))
    p_loss, v_loss, approx_kl, clip_fraction, entropy, stopped = outs

    mean, log_std = networks.policy.apply(policy_params, batch.observations)
    metrics.update({
        "loss/policy": p_loss.mean(),
        "loss/value": v_loss.mean(),
        "policy/kl": gaussian_kl(batch.old_mean, batch.old_log_std, mean, log_std).mean(),
        "policy/approx_kl": approx_kl.mean(),
        "policy/clip_fraction": clip_fraction.mean(),
        "policy/entropy": entropy.mean(),
        "policy/std": jnp.exp(log_std).mean(),
        "policy/updates_done": 1.0 - stopped.astype(jnp.float32).mean(),
    })
    return AgentState(policy_params, critic_params, policy_opt, critic_opt, lagrange,
                      agent.extra), metrics
