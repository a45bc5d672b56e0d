"""Safe RL as inference (CVPO, Liu et al. 2022): the E-step dual and the M-step KL terms.

**E-step.** Given ``K`` actions sampled per state from the old policy with Q-values ``Q_r``
``[B, K]`` and ``Q_c`` ``[B, K, m]``, the non-parametric target

    max_q  E_s E_q[Q_r]   s.t.   E_s E_q[Q_ci] ≤ ε_i,   E_s KL(q ‖ π_old) ≤ κ

has the solution ``q(a_j|s) ∝ exp((Q_r − λᵀQ_c)/η)`` over the samples, where ``(η, λ)``
minimise the convex dual (ALGORITHMS.md §5)

    g(η, λ) = ηκ + λᵀε + η · E_s[ log (1/K) Σ_j exp((Q_r,j − λᵀQ_c,j)/η) ],   η > 0, λ ≥ 0.

:func:`solve_estep_dual` minimises it inside ``jit`` with a few projected Newton iterations on
the ``1 + m`` variables (exact gradient and Hessian by autodiff; variables at an active bound
are held fixed; each step is the best of a backtracking ladder, so ``g`` never increases),
warm-started from the previous solution. ``λ`` is capped at ``max_multiplier``: when no sampled
action satisfies a constraint, the dual is unbounded below in that ``λ`` and the cap makes the
weights put all their mass on the least-costly actions.

**M-step.** :func:`decoupled_kl` gives the mean and covariance parts of the KL between Gaussian
policies used by the decoupled trust region (Abdolmaleki et al. 2018).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


def estep_dual(variables: jax.Array, q_reward: jax.Array, q_costs: jax.Array, kl_bound: float,
               q_limit: jax.Array) -> jax.Array:
    """The dual ``g(η, λ)`` at ``variables = [η, λ_1, …, λ_m]``.

    Args:
        variables: ``[1 + m]``.
        q_reward: ``[B, K]`` reward Q-values of the sampled actions.
        q_costs: ``[B, K, m]`` cost Q-values.
        kl_bound: κ.
        q_limit: ``[m]`` the Q thresholds ε.
    """
    eta, lam = variables[0], variables[1:]
    advantage = q_reward - q_costs @ lam
    num_samples = q_reward.shape[1]
    log_mean = jax.nn.logsumexp(advantage / eta, axis=1) - math.log(num_samples)
    return eta * kl_bound + lam @ q_limit + eta * log_mean.mean()


class DualSolution(NamedTuple):
    """The minimiser found and diagnostics."""

    variables: jax.Array  # [1 + m]: η, then λ
    value: jax.Array  # g at the solution
    gradient_norm: jax.Array  # norm of the projected gradient (0 at the optimum)


def solve_estep_dual(q_reward: jax.Array, q_costs: jax.Array, kl_bound: float,
                     q_limit: jax.Array, init: jax.Array, iterations: int = 10,
                     eta_min: float = 1e-3, max_multiplier: float = 100.0) -> DualSolution:
    """Minimise :func:`estep_dual` over ``η ≥ eta_min``, ``0 ≤ λ ≤ max_multiplier``.

    Args:
        q_reward: ``[B, K]``.
        q_costs: ``[B, K, m]``.
        kl_bound: κ.
        q_limit: ``[m]``.
        init: ``[1 + m]`` warm start (projected onto the bounds).
        iterations: Projected Newton iterations.
        eta_min: Lower bound of η (keeps ``Q/η`` finite).
        max_multiplier: Upper bound of every λ.

    Returns:
        A :class:`DualSolution`.
    """
    size = init.shape[0]
    lower = jnp.concatenate([jnp.asarray([eta_min]), jnp.zeros(size - 1)]).astype(init.dtype)
    upper = jnp.concatenate([jnp.asarray([jnp.inf]),
                             jnp.full((size - 1,), max_multiplier)]).astype(init.dtype)

    def objective(x: jax.Array) -> jax.Array:
        return estep_dual(x, q_reward, q_costs, kl_bound, q_limit)

    def projected_gradient(x: jax.Array, g: jax.Array) -> jax.Array:
        blocked = ((x <= lower) & (g > 0)) | ((x >= upper) & (g < 0))
        return jnp.where(blocked, 0.0, g)

    newton_ladder = 0.5 ** jnp.arange(8.0)
    gradient_ladder = 4.0 ** -jnp.arange(4.0)

    def step(x: jax.Array, _: None) -> tuple[jax.Array, None]:
        g = jax.grad(objective)(x)
        hessian = jax.hessian(objective)(x)
        free = projected_gradient(x, g) != 0
        both = free[:, None] & free[None, :]
        reduced = jnp.where(both, hessian, jnp.eye(size, dtype=x.dtype))
        scale = jnp.maximum(jnp.max(jnp.abs(jnp.diag(hessian))), 1e-12)
        newton = -jnp.linalg.solve(reduced + 1e-9 * scale * jnp.eye(size, dtype=x.dtype),
                                   jnp.where(free, g, 0.0))
        newton = jnp.where(jnp.all(jnp.isfinite(newton)), newton, 0.0)
        # Candidates: the Newton ladder and a projected-gradient ladder; keep the best (or x).
        gradient_step = -jnp.where(free, g, 0.0) / scale
        candidates = jnp.concatenate([
            x[None] + newton_ladder[:, None] * newton[None],
            x[None] + gradient_ladder[:, None] * gradient_step[None]])
        candidates = jnp.clip(candidates, lower, upper)
        candidates = jnp.concatenate([x[None], candidates])
        values = jax.vmap(objective)(candidates)
        values = jnp.where(jnp.isfinite(values), values, jnp.inf)
        return candidates[jnp.argmin(values)], None

    x = jnp.clip(init, lower, upper)
    x, _ = jax.lax.scan(step, x, None, length=iterations)
    g = projected_gradient(x, jax.grad(objective)(x))
    return DualSolution(x, objective(x), jnp.linalg.norm(g))


def estep_weights(q_reward: jax.Array, q_costs: jax.Array, variables: jax.Array) -> jax.Array:
    """The non-parametric target ``q_j ∝ exp((Q_r,j − λᵀQ_c,j)/η)`` over samples, ``[B, K]``."""
    eta, lam = variables[0], variables[1:]
    return jax.nn.softmax((q_reward - q_costs @ lam) / eta, axis=1)


def decoupled_kl(mean_old: jax.Array, std_old: jax.Array, mean: jax.Array,
                 std: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and covariance parts of ``KL(π_old ‖ π)`` for diagonal Gaussians, per state.

    ``KL_μ = KL(N(μ_old, σ_old) ‖ N(μ, σ_old))`` and ``KL_σ = KL(N(μ_old, σ_old) ‖ N(μ_old, σ))``
    (summed over action dimensions): the first moves only the mean, the second only the std.
    """
    kl_mean = 0.5 * jnp.sum(((mean - mean_old) / std_old) ** 2, axis=-1)
    ratio = (std_old / std) ** 2
    kl_std = 0.5 * jnp.sum(ratio - 1.0 - jnp.log(ratio), axis=-1)
    return kl_mean, kl_std
