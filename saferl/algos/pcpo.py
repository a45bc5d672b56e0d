"""Projection-based Constrained Policy Optimization (Yang et al., 2020).

Two steps per iteration (docs/algorithms/trust-region.md):

1. the TRPO reward step ``θ½ = θ_k + √(2δ/q)·H⁻¹g``;
2. the projection of θ½ back onto the linearised constraint set ``{θ : aᵢᵀ(θ − θ_k) + cᵢ ≤ 0}``
   in the L-norm: L = H (``projection="kl"``) or L = I (``projection="l2"``). Several
   constraints are handled by cyclic projections (:func:`saferl.core.cpo.pcpo_step`).

``a`` and ``c`` are in episode units, as in CPO. The result is backtracked until the mean KL is
within the trust region (the projection can leave it) and no cost surrogate rose by more than
its slack ``max(−c_i, 0)``; PCPO does not require the reward surrogate to improve, since the
projection may trade reward for feasibility.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

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
from saferl.core.cpo import pcpo_step


@dataclass(frozen=True)
class PCPOParams:
    """PCPO's own choice.

    Attributes:
        projection: ``"kl"`` (L = H, the Fisher metric) or ``"l2"`` (L = I).
    """

    projection: Literal["kl", "l2"] = "kl"

    def __post_init__(self) -> None:
        if self.projection not in ("kl", "l2"):
            raise ValueError(f"pcpo.projection must be 'kl' or 'l2'; got {self.projection!r}.")


@dataclass(frozen=True)
class PCPOConfig:
    """Configuration of ``pcpo``."""

    run: Annotated[OnPolicyConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=OnPolicyConfig)
    trust_region: TrustRegionParams = field(default_factory=TrustRegionParams)
    pcpo: PCPOParams = field(default_factory=PCPOParams)

    def __post_init__(self) -> None:
        check_batch(self.run, self.trust_region)


def update(config: PCPOConfig, networks: OnPolicyNetworks, agent: AgentState, batch: Batch,
           key: jax.Array) -> tuple[AgentState, dict[str, jax.Array]]:
    """One PCPO iteration: reward step, projection, KL backtracking, then the critics."""
    settings = config.trust_region
    problem_key, critic_key = jax.random.split(key)
    reward_advantage, cost_advantage = split_advantages(batch.advantages)
    problem = policy_problem(networks, settings, agent.policy_params, batch, reward_advantage,
                             cost_advantage, problem_key)
    constraint = batch.episode_cost - batch.cost_limit

    step, info = pcpo_step(problem.g, problem.B, constraint, problem.fvp, settings.target_kl,
                           projection=config.pcpo.projection, cg_iterations=settings.cg_iterations)
    # The reward test is skipped (recovery=True): projection may lower the reward on purpose.
    outcome = line_search(problem, step, settings, constraint=constraint, recovery=True)
    critic_params, critic_opt, critic_loss = fit_critics(
        networks, settings, agent.critic_params, agent.critic_opt_state, batch, critic_key)

    metrics = line_search_metrics(outcome)
    metrics.update({"pcpo/projected": jnp.any(info.projected).astype(jnp.float32),
                    "trust_region/cg_residual": info.cg_residual, "loss/value": critic_loss})
    for i in range(constraint.shape[0]):
        metrics[f"pcpo/constraint_{i}"] = constraint[i]
    return AgentState(problem.unravel(outcome.theta), critic_params, (), critic_opt,
                      agent.lagrange, agent.extra), metrics
