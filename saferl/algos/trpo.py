"""TRPO and TRPO-Lagrangian (Schulman et al. 2015; Ray et al. 2019).

``trpo`` takes the natural-gradient step of the reward surrogate to the edge of the KL trust
region, ``x = √(2δ / gᵀH⁻¹g) · H⁻¹g``, then backtracks until the mean KL ≤ δ and the surrogate
improved. It ignores costs (the unconstrained trust-region baseline). ``trpo_lag`` first updates
the multipliers from the batch's episode cost, then takes the same step on the Lagrangian
advantage ``(Â_R − Σ λ_i Â_Ci)/(1 + Σ λ_i)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import jax
import jax.numpy as jnp
import tyro

from saferl.algos.policy_gradient import AgentState, Batch, OnPolicyConfig, OnPolicyNetworks
from saferl.algos.policy_gradient import reward_cost_advantages as split_advantages
from saferl.algos.trust_region_base import (
    TrustRegionParams,
    check_batch,
    fit_critics,
    line_search,
    line_search_metrics,
    policy_problem,
)
from saferl.algos.trust_region_base import init_agent as init_agent
from saferl.core.lagrange import LagrangeConfig, lagrangian_advantage
from saferl.core.trust_region import conjugate_gradient


@dataclass(frozen=True)
class TRPOConfig:
    """Configuration of ``trpo``."""

    run: Annotated[OnPolicyConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=OnPolicyConfig)
    trust_region: TrustRegionParams = field(default_factory=TrustRegionParams)

    def __post_init__(self) -> None:
        check_batch(self.run, self.trust_region)


@dataclass(frozen=True)
class TRPOLagConfig:
    """Configuration of ``trpo_lag``: TRPO plus the multiplier update rule."""

    run: Annotated[OnPolicyConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=OnPolicyConfig)
    trust_region: TrustRegionParams = field(default_factory=TrustRegionParams)
    lagrange: LagrangeConfig = field(default_factory=LagrangeConfig)

    def __post_init__(self) -> None:
        check_batch(self.run, self.trust_region)


def update(config: TRPOConfig | TRPOLagConfig, networks: OnPolicyNetworks, agent: AgentState,
           batch: Batch, key: jax.Array) -> tuple[AgentState, dict[str, jax.Array]]:
    """Multipliers (``trpo_lag``), the natural-gradient step with line search, then critics."""
    settings = config.trust_region
    problem_key, critic_key = jax.random.split(key)
    metrics: dict[str, jax.Array] = {}

    # 1. The advantage: reward only, or the Lagrangian one after the multiplier step.
    reward_advantage, cost_advantage = split_advantages(batch.advantages)
    lagrange = agent.lagrange
    if isinstance(config, TRPOLagConfig):
        lagrange, advantage, metrics = lagrangian_advantage(
            config.lagrange, lagrange, batch.episode_cost, batch.cost_limit,
            batch.has_episode_cost, reward_advantage, cost_advantage)
    else:
        advantage = reward_advantage

    # 2. Natural gradient to the edge of the trust region: x = √(2δ/q)·H⁻¹g, q = gᵀH⁻¹g.
    problem = policy_problem(networks, settings, agent.policy_params, batch, advantage,
                             cost_advantage, problem_key)
    direction, residual = conjugate_gradient(problem.fvp, problem.g, settings.cg_iterations)
    q = jnp.maximum(problem.g @ direction, 1e-12)
    step = jnp.sqrt(2.0 * settings.target_kl / q) * direction

    # 3. Backtrack until KL ≤ δ and the surrogate improved; else keep the policy.
    outcome = line_search(problem, step, settings)
    critic_params, critic_opt, critic_loss = fit_critics(
        networks, settings, agent.critic_params, agent.critic_opt_state, batch, critic_key)
    metrics.update(line_search_metrics(outcome))
    metrics.update({"trust_region/cg_residual": residual, "trust_region/q": q,
                    "loss/value": critic_loss})
    return AgentState(problem.unravel(outcome.theta), critic_params, (), critic_opt, lagrange,
                      agent.extra), metrics


__all__ = ["TRPOConfig", "TRPOLagConfig", "init_agent", "update"]
