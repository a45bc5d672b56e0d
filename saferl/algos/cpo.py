"""Constrained Policy Optimization (Achiam et al., 2017).

Each iteration solves, around the current policy θ_k (x = θ − θ_k),

    maximise gᵀx   subject to   c + Bᵀx ≤ 0,   ½ xᵀHx ≤ δ                (CPO paper, eq. 10)

with g the reward-surrogate gradient, B the cost-surrogate gradients, c = Ĵ_C − d the constraint
values and H the Fisher matrix of the mean KL. ``c`` and ``B`` are both in **episode units**
(the per-sample cost surrogate is scaled by the mean episode length; docs/algorithms/index.md),
and cost advantages are centred, not scaled. :func:`saferl.core.cpo.cpo_step` returns the exact
solution (all five cases for one constraint, the empty-piece case of the dual, the recovery step
when no point of the trust region is feasible, and the numerically exact dual for several
constraints).

The step is then backtracked (ratio 0.8) until: mean KL ≤ δ; the reward surrogate improved
(skipped for recovery steps); and each cost surrogate rose by at most ``max(−c_i, 0)``. If no
candidate passes, the policy stays and ``trust_region/accepted`` is 0.
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
from saferl.core.cpo import cpo_step

#: CPO's learned safety predictor (CPO paper §6.3) is on by default, at α = 0.15. Plain CPO's
#: last iterate swings around the limit: on native CarCircle (2M steps, seeds 0–4, one run
#: each) its stochastic policy cost 11.8 against a limit of 10; with the predictor 7.9, with
#: deterministic return 808 against plain CPO's 802 and PCPO's 684. On BallCircle: 492.5 /
#: 7.6 against 494.8 / 9.8 (benchmarks/RESULTS.md, issue 16). ``--no-safety-predictor`` gives
#: plain CPO.
PREDICTOR_ALPHA = 0.15


@dataclass(frozen=True)
class CPOConfig:
    """Configuration of ``cpo``: the shared on-policy settings, with the safety predictor on
    (α = :data:`PREDICTOR_ALPHA`), and the trust-region hyperparameters."""

    run: Annotated[OnPolicyConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=lambda: OnPolicyConfig(safety_predictor=True,
                                               predictor_alpha=PREDICTOR_ALPHA))
    trust_region: TrustRegionParams = field(default_factory=TrustRegionParams)

    def __post_init__(self) -> None:
        check_batch(self.run, self.trust_region)


def update(config: CPOConfig, networks: OnPolicyNetworks, agent: AgentState, batch: Batch,
           key: jax.Array) -> tuple[AgentState, dict[str, jax.Array]]:
    """One CPO iteration: the exact constrained step, the line search, then the critics."""
    settings = config.trust_region
    problem_key, critic_key = jax.random.split(key)

    # 1. The local problem: g, B (episode units), c = Ĵ_C − d, and Hv products.
    reward_advantage, cost_advantage = split_advantages(batch.advantages)
    problem = policy_problem(networks, settings, agent.policy_params, batch, reward_advantage,
                             cost_advantage, problem_key)
    constraint = batch.episode_cost - batch.cost_limit

    # 2. The exact solution of the quadratic subproblem (docs/algorithms/trust-region.md).
    step, info = cpo_step(problem.g, problem.B, constraint, problem.fvp, settings.target_kl,
                          cg_iterations=settings.cg_iterations)

    # 3. Backtracking with the KL, reward (not in recovery) and cost tests.
    outcome = line_search(problem, step, settings, constraint=constraint, recovery=info.recovery)
    critic_params, critic_opt, critic_loss = fit_critics(
        networks, settings, agent.critic_params, agent.critic_opt_state, batch, critic_key)

    metrics = line_search_metrics(outcome)
    metrics.update({"cpo/case": info.case.astype(jnp.float32), "cpo/lambda": info.lam,
                    "cpo/recovery": info.recovery.astype(jnp.float32),
                    "cpo/q": info.q, "trust_region/cg_residual": info.cg_residual,
                    "loss/value": critic_loss})
    for i in range(constraint.shape[0]):
        metrics[f"cpo/nu_{i}"] = info.nu[i]
        metrics[f"cpo/constraint_{i}"] = constraint[i]
    return AgentState(problem.unravel(outcome.theta), critic_params, (), critic_opt,
                      agent.lagrange, agent.extra), metrics
