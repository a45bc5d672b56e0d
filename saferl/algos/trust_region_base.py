"""Shared pieces of the trust-region algorithms (TRPO, TRPO-Lag, CPO, PCPO).

The maths lives in :mod:`saferl.core.trust_region` and :mod:`saferl.core.cpo`; this module only
connects it to the policy and the batch: the flat-parameter surrogates and their gradients, the
Fisher-vector product of the batch's mean KL, the line search with the acceptance tests of
docs/algorithms/trust-region.md, and the critic regression. Each algorithm's ``update`` (in
``trpo.py``, ``cpo.py``, ``pcpo.py``) reads top to bottom using these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from saferl.algos.policy_gradient import (
    AgentState,
    Batch,
    OnPolicyConfig,
    OnPolicyNetworks,
    init_network_params,
    value_loss,
)
from saferl.core.distributions import gaussian_kl, gaussian_log_prob
from saferl.core.lagrange import LagrangeConfig, lagrange_init
from saferl.core.shuffle import minibatch_indices, permutation
from saferl.core.trust_region import (
    backtracking_line_search,
    fisher_vector_product,
    trust_region_accept,
)
from saferl.envs.core import EnvSpec


@dataclass(frozen=True)
class TrustRegionParams:
    """Hyperparameters of a trust-region policy step and of the critic regression.

    Attributes:
        target_kl: The trust region δ on the mean KL (CPO paper: 0.01).
        cg_iterations: Conjugate-gradient iterations for H⁻¹ products.
        cg_damping: Damping added to the Fisher matrix (H + damping·I).
        fvp_fraction: Fraction of the batch's states used for Fisher-vector products.
        line_search_ratio: Backtracking shrink factor.
        line_search_steps: Backtracking candidates tried (then the policy is kept).
        critic_lr: Adam step size of the critics.
        critic_epochs: Passes of critic regression over each batch.
        critic_minibatches: Critic minibatches per pass, each of ``batch // critic_minibatches``
            samples (a remainder sits out each pass, different samples every pass).
        max_grad_norm: Gradient-norm clip of the critic update.
    """

    target_kl: float = 0.01
    cg_iterations: int = 15
    cg_damping: float = 0.1
    fvp_fraction: float = 0.2
    line_search_ratio: float = 0.8
    line_search_steps: int = 15
    critic_lr: float = 1e-3
    critic_epochs: int = 5
    critic_minibatches: int = 4
    max_grad_norm: float = 0.5

    def __post_init__(self) -> None:
        for name in ("target_kl", "critic_lr", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"trust_region.{name} must be > 0; got {getattr(self, name)}.")
        if self.cg_damping < 0:
            raise ValueError(f"trust_region.cg_damping must be >= 0; got {self.cg_damping}.")
        if not 0 < self.fvp_fraction <= 1:
            raise ValueError(
                f"trust_region.fvp_fraction must be in (0, 1]; got {self.fvp_fraction}.")
        if not 0 < self.line_search_ratio < 1:
            raise ValueError(f"trust_region.line_search_ratio must be in (0, 1); got "
                             f"{self.line_search_ratio}.")
        for name in ("cg_iterations", "line_search_steps", "critic_epochs",
                     "critic_minibatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"trust_region.{name} must be >= 1; got {getattr(self, name)}.")


def check_batch(run: OnPolicyConfig, settings: TrustRegionParams) -> None:
    """There are at most as many critic minibatches as samples in the batch."""
    if settings.critic_minibatches > run.batch_size:
        raise ValueError(
            f"trust_region.critic_minibatches ({settings.critic_minibatches}) must be at most "
            f"the batch num_envs × rollout_steps = {run.batch_size}.")


def critic_optimizer(settings: TrustRegionParams) -> optax.GradientTransformation:
    """Adam with gradient clipping for the critics."""
    return optax.chain(optax.clip_by_global_norm(settings.max_grad_norm),
                       optax.adam(settings.critic_lr, eps=1e-5))


def init_agent(config: Any, spec: EnvSpec, networks: OnPolicyNetworks,
               key: jax.Array) -> AgentState:
    """Policy and critics; only the critics have an optimiser (the policy moves by steps)."""
    policy_params, critic_params = init_network_params(networks, spec, key)
    lagrange_config = getattr(config, "lagrange", LagrangeConfig())
    return AgentState(policy_params, critic_params, (),
                      critic_optimizer(config.trust_region).init(critic_params),
                      lagrange_init(lagrange_config, spec.num_costs))


def fit_critics(networks: OnPolicyNetworks, settings: TrustRegionParams, critic_params: Any,
                opt_state: Any, batch: Batch, key: jax.Array) -> tuple[Any, Any, jax.Array]:
    """Regress every critic on its λ-returns: epochs × minibatches of Adam."""
    tx = critic_optimizer(settings)
    size = batch.observations.shape[0]

    def minibatch(carry: tuple, idx: jax.Array) -> tuple[tuple, jax.Array]:
        p, o = carry
        loss, grads = jax.value_and_grad(
            lambda q: value_loss(networks.critics, q, batch.observations[idx],
                                 batch.returns[idx]))(p)
        updates, o = tx.update(grads, o, p)
        return (optax.apply_updates(p, updates), o), loss

    def epoch(carry: tuple, k: jax.Array) -> tuple[tuple, jax.Array]:
        order = minibatch_indices(k, size, settings.critic_minibatches)
        return jax.lax.scan(minibatch, carry, order)

    (critic_params, opt_state), losses = jax.lax.scan(
        epoch, (critic_params, opt_state), jax.random.split(key, settings.critic_epochs))
    return critic_params, opt_state, losses.mean()


class PolicyProblem(NamedTuple):
    """The local trust-region problem at the current policy, over flat parameters.

    Attributes:
        theta: Flat current parameters ``[n]``.
        unravel: Flat vector → parameter pytree.
        surrogates: ``theta → [1 + m]``: the reward surrogate, then each cost surrogate in
            **episode units** (the per-sample surrogate times the mean episode length T).
        g: ``[n]`` reward-surrogate gradient.
        B: ``[n, m]`` cost-surrogate gradients (episode units).
        kl: ``theta → mean KL(π_old ‖ π_theta)`` over the batch.
        fvp: Fisher-vector product ``v → (H + damping·I) v``.
        base: Surrogate values at ``theta`` (``[1 + m]``).
    """

    theta: jax.Array
    unravel: Callable[[jax.Array], Any]
    surrogates: Callable[[jax.Array], jax.Array]
    g: jax.Array
    B: jax.Array
    kl: Callable[[jax.Array], jax.Array]
    fvp: Callable[[jax.Array], jax.Array]
    base: jax.Array


def policy_problem(networks: OnPolicyNetworks, settings: TrustRegionParams, policy_params: Any,
                   batch: Batch, reward_advantage: jax.Array, cost_advantage: jax.Array,
                   key: jax.Array) -> PolicyProblem:
    """Build the surrogates, their gradients and the Fisher-vector product.

    The cost surrogate is scaled by the mean episode length T so that its gradient is in the
    units of the episode-level constraint value ``c = Ĵ_C − d`` (docs/algorithms/index.md; jachiam's
    convention). Without this, ``c`` (episode units) would be compared with a per-step gradient
    and almost every update would fall into the pure-TRPO or pure-recovery case.
    """
    theta, unravel = ravel_pytree(policy_params)
    horizon = batch.episode_length

    def surrogates(flat: jax.Array) -> jax.Array:
        mean, log_std = networks.policy.apply(unravel(flat), batch.observations)
        ratio = jnp.exp(gaussian_log_prob(mean, log_std, batch.actions) - batch.log_probs)
        reward = jnp.mean(ratio * reward_advantage)
        costs = horizon * jnp.mean(ratio[:, None] * cost_advantage, axis=0)
        return jnp.concatenate([reward[None], costs])

    def kl(flat: jax.Array) -> jax.Array:
        mean, log_std = networks.policy.apply(unravel(flat), batch.observations)
        return gaussian_kl(batch.old_mean, batch.old_log_std, mean, log_std).mean()

    size = batch.observations.shape[0]
    count = max(1, round(settings.fvp_fraction * size))
    subset = permutation(key, size)[:count] if count < size else None

    def fvp_kl(p: Any) -> jax.Array:
        obs = batch.observations if subset is None else batch.observations[subset]
        old_mean = batch.old_mean if subset is None else batch.old_mean[subset]
        old_log_std = batch.old_log_std if subset is None else batch.old_log_std[subset]
        mean, log_std = networks.policy.apply(p, obs)
        return gaussian_kl(jax.lax.stop_gradient(old_mean), jax.lax.stop_gradient(old_log_std),
                           mean, log_std).mean()

    jacobian = jax.jacrev(surrogates)(theta)  # [1 + m, n]
    fvp = fisher_vector_product(fvp_kl, policy_params, damping=settings.cg_damping)
    return PolicyProblem(theta, unravel, surrogates, jacobian[0], jacobian[1:].T, kl, fvp,
                         surrogates(theta))


class LineSearchOutcome(NamedTuple):
    """The accepted parameters and what the line search saw."""

    theta: jax.Array
    fraction: jax.Array
    backtracks: jax.Array
    accepted: jax.Array
    kl: jax.Array
    reward_improvement: jax.Array
    cost_change: jax.Array  # [m], episode units


def line_search(problem: PolicyProblem, step: jax.Array, settings: TrustRegionParams,
                constraint: jax.Array | None = None,
                recovery: jax.Array | bool = False) -> LineSearchOutcome:
    """Backtrack along ``step`` until the candidate passes the acceptance tests.

    Accept when the mean KL ≤ δ, the reward surrogate improved (skipped in recovery), and —
    when ``constraint`` (the values ``c``) is given — every cost surrogate rose by at most
    ``max(−c_i, 0)``. If no candidate passes, the policy stays (fraction 0).
    """

    def evaluate(fraction: jax.Array) -> tuple[jax.Array, tuple]:
        theta = problem.theta + fraction * step
        change = problem.surrogates(theta) - problem.base
        kl = problem.kl(theta)
        accept = trust_region_accept(
            kl, settings.target_kl, surrogate_improvement=change[0],
            cost_surrogate_increase=None if constraint is None else change[1:],
            c=constraint, recovery=recovery)
        return accept, (kl, change)

    result = backtracking_line_search(evaluate, ratio=settings.line_search_ratio,
                                      max_backtracks=settings.line_search_steps)
    kl, change = result.metrics
    theta = problem.theta + result.fraction * step
    zero = jnp.zeros_like(change)
    change = jnp.where(result.accepted, change, zero)
    return LineSearchOutcome(theta, result.fraction, result.n_backtracks, result.accepted,
                             jnp.where(result.accepted, kl, 0.0), change[0], change[1:])


def line_search_metrics(outcome: LineSearchOutcome) -> dict[str, jax.Array]:
    """Standard metrics of an accepted (or rejected) step."""
    metrics = {
        "trust_region/step_fraction": outcome.fraction,
        "trust_region/backtracks": outcome.backtracks.astype(jnp.float32),
        "trust_region/accepted": outcome.accepted.astype(jnp.float32),
        "policy/kl": outcome.kl,
        "trust_region/reward_surrogate_change": outcome.reward_improvement,
    }
    for i in range(outcome.cost_change.shape[0]):
        metrics[f"trust_region/cost_surrogate_change_{i}"] = outcome.cost_change[i]
    return metrics
