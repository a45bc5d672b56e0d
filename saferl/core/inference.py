"""Safe RL as inference (CVPO, Liu et al. 2022): the E-step dual and the M-step KL terms.

**E-step.** Given ``K`` actions sampled per state from the old policy with Q-values ``Q_r``
``[B, K]`` and ``Q_c`` ``[B, K, m]``, the non-parametric target

    max_q  E_s E_q[Q_r]   s.t.   E_s E_q[Q_ci] ≤ ε_Q,i,   E_s KL(q ‖ π_old) ≤ κ

has the solution ``q(a_j|s) ∝ exp((Q_r − λᵀQ_c)/η)`` over the samples, where ``(η, λ)``
minimise the convex dual (docs/algorithms/cvpo.md)

    g(η, λ) = ηκ + λᵀε_Q + η · E_s[ log (1/K) Σ_j exp((Q_r,j − λᵀQ_c,j)/η) ],   η > 0, λ ≥ 0.

:func:`solve_estep_dual` minimises it inside ``jit`` with a few projected Newton iterations on
the ``1 + m`` variables (exact gradient and Hessian in closed form; variables at an active
bound are held fixed; each step is the best of a backtracking ladder, so ``g`` never
increases; it stops at a small Newton decrement), warm-started from the previous solution.
Where the weights' KL is far from κ the Newton model is useless (nearly one-hot weights have
almost no variance, so the Hessian in η vanishes and every Newton step overshoots), and the
iteration instead minimises ``g`` over η exactly for the current λ (:func:`eta_for_kl`).
``λ`` is capped at ``max_multiplier``: when no sampled action satisfies a constraint, the dual
is unbounded below in that ``λ`` and the cap makes the weights put all their mass on the
least-costly actions.

**Conditions (CCPO, docs/algorithms/ccpo.md).** Every function of the dual takes an optional
``state_mask`` ``[B]`` (the states of the minibatch that belong to one condition, as 0/1 or any
non-negative weights) that turns ``E_s`` into the mean over those states, and ``q_limit`` may be
per state (``[B, m]``), entering as its mean over the same states: one solve per condition
gives its dual ``(η_i, λ_i)`` (:func:`saferl.algos.cvpo.estep_solve` maps it over the
conditions). Without a mask the code is the plain CVPO path.

**M-step.** :func:`decoupled_kl` gives the mean and covariance parts of the KL between Gaussian
policies used by the decoupled trust region (Abdolmaleki et al. 2018).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


def state_mean(values: jax.Array, state_mask: jax.Array | None) -> jax.Array:
    """``E_s`` over the leading (state) axis: the plain mean, or the ``state_mask``-weighted one.

    An all-zero mask (a condition no state of the minibatch was paired with) gives 0, not NaN.
    """
    if state_mask is None:
        return values.mean(0)
    weights = state_mask / jnp.maximum(state_mask.sum(), 1e-12)
    return jnp.tensordot(weights.astype(values.dtype), values, axes=1)


def _limit(q_limit: jax.Array, state_mask: jax.Array | None) -> jax.Array:
    """The ``[m]`` Q threshold of the dual: ``q_limit`` itself, or its state mean if per state."""
    return q_limit if q_limit.ndim == 1 else state_mean(q_limit, state_mask)


def _shifted(advantage: jax.Array, eta: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``((A − max_j A) / η, max_j A)`` per state: the exponent of the weights, shifted so that
    its largest entry is exactly 0.

    Every function of the dual works on the shifted exponent. ``A / η`` itself reaches ~10⁷ at
    training scale (``|A| ≈ 10⁴`` once λ is at its cap, ``η`` at its floor of 10⁻³), where a
    float32 rounds to units: ``LSE(A/η) − E_w[A]/η`` in ``∂g/∂η`` then cancels to noise (it gave
    +1 where the value is −3.45, i.e. "KL ≤ κ at the floor", and the solver stopped there).
    """
    top = jnp.max(advantage, axis=1, keepdims=True)
    return (advantage - top) / eta, top[:, 0]


def estep_dual(variables: jax.Array, q_reward: jax.Array, q_costs: jax.Array, kl_bound: float,
               q_limit: jax.Array, state_mask: jax.Array | None = None) -> jax.Array:
    """The dual ``g(η, λ)`` at ``variables = [η, λ_1, …, λ_m]``.

    Args:
        variables: ``[1 + m]``.
        q_reward: ``[B, K]`` reward Q-values of the sampled actions.
        q_costs: ``[B, K, m]`` cost Q-values.
        kl_bound: κ.
        q_limit: ``[m]`` the Q thresholds ε_Q (docs/algorithms/index.md), or ``[B, m]`` one per
            state.
        state_mask: ``[B]`` optional weights of the states in ``E_s`` (one condition's states).
    """
    eta, lam = variables[0], variables[1:]
    scaled, top = _shifted(q_reward - q_costs @ lam, eta)
    # η · log mean_j exp(A_j/η) = max_j A + η · log mean_j exp(scaled_j), the second term small.
    log_mean = jax.nn.logsumexp(scaled, axis=1) - math.log(q_reward.shape[1])
    if state_mask is None and q_limit.ndim == 1:  # CVPO's path, unchanged
        return eta * kl_bound + lam @ q_limit + top.mean() + eta * log_mean.mean()
    return (eta * kl_bound + lam @ _limit(q_limit, state_mask) + state_mean(top, state_mask)
            + eta * state_mean(log_mean, state_mask))


def estep_dual_derivatives(variables: jax.Array, q_reward: jax.Array, q_costs: jax.Array,
                           kl_bound: float, q_limit: jax.Array,
                           state_mask: jax.Array | None = None
                           ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``g``, its gradient and its Hessian at ``variables = [η, λ]``, in one pass over the samples.

    With ``A = Q_r − λᵀQ_c``, per-state weights ``w = softmax(A/η)`` and ``E_w``/``Cov_w`` their
    moments over the samples:

    * ``∂g/∂η = κ + E_s[LSE(A/η) − log K − E_w[A]/η]``, ``∂g/∂λ_i = ε_Q,i − E_s E_w[Q_ci]``;
    * ``∂²g/∂η² = E_s Var_w(A)/η³``, ``∂²g/∂η∂λ_i = E_s Cov_w(A, Q_ci)/η²``,
      ``∂²g/∂λ_i∂λ_k = E_s Cov_w(Q_ci, Q_ck)/η``.

    (Autodiff of :func:`estep_dual` gives the same numbers, tested, at several times the cost.)
    ``q_limit`` and ``state_mask`` as in :func:`estep_dual` (``E_s`` then weights the states).

    Returns:
        ``(g, gradient [1 + m], Hessian [1 + m, 1 + m])``.
    """
    eta, lam = variables[0], variables[1:]
    advantage = q_reward - q_costs @ lam  # [B, K]
    scaled, top = _shifted(advantage, eta)  # (A − max A)/η: no cancellation at a small η
    log_sum = jax.nn.logsumexp(scaled, axis=1, keepdims=True)
    weights = jnp.exp(scaled - log_sum)  # [B, K]
    # LSE(A/η) − log K − E_w[A]/η = H(w) − log K = −KL(w ‖ uniform), from the shifted exponent.
    neg_kl = log_sum[:, 0] - jnp.sum(weights * scaled, axis=1) - math.log(q_reward.shape[1])
    log_mean = log_sum[:, 0] - math.log(q_reward.shape[1])  # relative to max A / η
    values = jnp.concatenate([advantage[..., None], q_costs], axis=-1)  # [B, K, 1 + m]
    moments = jnp.einsum("bk,bki->bi", weights, values)  # E_w per state
    centred = values - moments[:, None, :]
    if state_mask is None and q_limit.ndim == 1:  # CVPO's path, unchanged
        covariance = jnp.einsum("bk,bki,bkj->ij", weights, centred, centred) / q_reward.shape[0]
        mean_moments = moments.mean(0)
        mean_top, mean_log, mean_neg_kl = top.mean(), log_mean.mean(), neg_kl.mean()
    else:
        state_weights = (jnp.ones(q_reward.shape[0], q_reward.dtype) if state_mask is None
                         else state_mask.astype(q_reward.dtype))
        state_weights = state_weights / jnp.maximum(state_weights.sum(), 1e-12)
        covariance = jnp.einsum("b,bk,bki,bkj->ij", state_weights, weights, centred, centred)
        mean_moments = state_weights @ moments
        mean_top, mean_log = state_weights @ top, state_weights @ log_mean
        mean_neg_kl = state_weights @ neg_kl
        q_limit = _limit(q_limit, state_mask)
    value = eta * kl_bound + lam @ q_limit + mean_top + eta * mean_log
    gradient = jnp.concatenate([jnp.reshape(kl_bound + mean_neg_kl, (1,)),
                                q_limit - mean_moments[1:]])
    size = variables.shape[0]
    power = 1.0 + (jnp.arange(size) == 0)  # η-rows and -columns carry extra 1/η factors
    hessian = covariance / eta ** (power[:, None] + power[None, :] - 1.0)
    return value, gradient, hessian


def weights_kl(variables: jax.Array, q_reward: jax.Array, q_costs: jax.Array,
               state_mask: jax.Array | None = None) -> jax.Array:
    """``E_s KL(w ‖ uniform)`` of the weights ``w = softmax((Q_r − λᵀQ_c)/η)`` at ``[η, λ]``.

    ``∂g/∂η = κ − weights_kl``: the KL bound is active at the optimum unless η is at its floor.
    """
    scaled, _ = _shifted(q_reward - q_costs @ variables[1:], variables[0])
    log_weights = jax.nn.log_softmax(scaled, axis=1)
    per_state = jnp.sum(jnp.exp(log_weights) * log_weights, axis=1) + math.log(q_reward.shape[1])
    return state_mean(per_state, state_mask)


def eta_for_kl(lam: jax.Array, q_reward: jax.Array, q_costs: jax.Array, kl_bound: float,
               eta_min: float, state_mask: jax.Array | None = None,
               iterations: int = 30) -> jax.Array:
    """The η that minimises ``g(·, λ)`` over ``η ≥ eta_min``: the root of ``weights_kl = κ``.

    The KL of the weights falls monotonically as η grows, from at most ``log K`` to 0, so the
    root is bracketed by ``eta_min`` and ``R/κ`` (``R`` the largest spread of ``Q_r − λᵀQ_c``
    over the samples of a state: ``KL ≤ R/η``) and found by bisection on ``log η``; if the KL at
    ``eta_min`` is already within κ the minimiser is ``eta_min``. ``g`` is convex in η, so the
    result never has a larger ``g`` than any other η: a safe step from any starting point, and
    the one that works where Newton's does not (nearly one-hot weights, a vanishing Hessian).

    Returns:
        The scalar η (the bracket's upper end after ``iterations`` halvings of ``log η``: within
        a relative ``2⁻³⁰`` of the root, on its side where the KL bound holds).
    """
    dtype = q_reward.dtype
    advantage = q_reward - q_costs @ lam
    spread = jnp.max(jnp.max(advantage, axis=1) - jnp.min(advantage, axis=1))
    low = jnp.log(jnp.asarray(eta_min, dtype))
    high = jnp.log(jnp.maximum(spread / kl_bound, 2.0 * eta_min).astype(dtype))

    def kl_at(log_eta: jax.Array) -> jax.Array:
        return weights_kl(jnp.concatenate([jnp.exp(log_eta)[None], lam]), q_reward, q_costs,
                          state_mask)

    def halve(_: int, bracket: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        low, high = bracket
        middle = 0.5 * (low + high)
        above = kl_at(middle) > kl_bound
        return jnp.where(above, middle, low), jnp.where(above, high, middle)

    low, high = jax.lax.cond(kl_at(low) > kl_bound,
                             lambda: jax.lax.fori_loop(0, iterations, halve, (low, high)),
                             lambda: (low, low))
    return jnp.maximum(jnp.exp(high), eta_min)


class DualSolution(NamedTuple):
    """The minimiser found and diagnostics."""

    variables: jax.Array  # [1 + m]: η, then λ
    value: jax.Array  # g at the solution
    gradient_norm: jax.Array  # norm of the projected gradient (0 at the optimum)
    iterations: jax.Array  # Newton iterations taken


def solve_estep_dual(q_reward: jax.Array, q_costs: jax.Array, kl_bound: float,
                     q_limit: jax.Array, init: jax.Array, iterations: int = 10,
                     eta_min: float = 1e-3, max_multiplier: float = 100.0,
                     tolerance: float | None = None,
                     state_mask: jax.Array | None = None) -> DualSolution:
    """Minimise :func:`estep_dual` over ``η ≥ eta_min``, ``0 ≤ λ ≤ max_multiplier``.

    Each iteration takes the exact gradient and Hessian (:func:`estep_dual_derivatives`), holds
    the variables at an active bound fixed, and takes the full projected Newton step if it lowers
    ``g`` (one pass over the samples gives its value and the next derivatives); otherwise it
    moves to the best of a backtracking ladder of shorter Newton steps and projected-gradient
    steps, or stays, so ``g`` never increases. It stops early once the Newton decrement
    ``½ gᵀH⁻¹g`` of the free variables is at most ``tolerance · (1 + |g|)`` or no candidate
    improves ``g``, and (where η is free) the weights' KL is within 1 % of κ: warm-started from
    the previous update's solution, one or two iterations usually suffice. It works on centred
    Q-values (each state's ``Q_r`` less its max, ``Q_c`` and ``ε_Q`` less the mean ``Q_c``),
    which moves ``g`` by a constant and not its minimiser.

    Args:
        q_reward: ``[B, K]``.
        q_costs: ``[B, K, m]``.
        kl_bound: κ.
        q_limit: ``[m]``, or ``[B, m]`` per state (see :func:`estep_dual`).
        init: ``[1 + m]`` warm start (projected onto the bounds).
        iterations: The most projected Newton iterations.
        eta_min: Lower bound of η (keeps ``Q/η`` finite).
        max_multiplier: Upper bound of every λ.
        tolerance: Relative Newton decrement at which to stop; default ``1e-6`` in float32
            (about where rounding swamps further progress: the dual value is then within a
            few parts per million of its minimum) and ``1e-10`` in float64.
        state_mask: ``[B]`` optional weights of the states in ``E_s``: the dual of the
            condition those states are paired with (CCPO's E-step solves one per condition).

    Returns:
        A :class:`DualSolution`.
    """
    size = init.shape[0]
    dtype = jnp.result_type(q_reward, init)
    init = init.astype(dtype)
    # Centred: shifting each state's Q_r by a constant moves g by the constants' mean and not
    # its minimiser, nor do Q_c and ε_Q shifted together. Without it, g carries E_s[max Q_r] +
    # λᵀ·mean Q_c (10³–10⁴ at training scale), and float32 cannot see the changes in g that
    # decide the last per cent of the KL, nor can the relative decrement test.
    reward_shift = jnp.max(q_reward, axis=1)
    cost_shift = jnp.mean(q_costs, axis=(0, 1))
    q_reward = q_reward - reward_shift[:, None]
    q_costs = q_costs - cost_shift
    q_limit = q_limit - cost_shift
    lower = jnp.concatenate([jnp.asarray([eta_min]), jnp.zeros(size - 1)]).astype(dtype)
    upper = jnp.concatenate([jnp.asarray([jnp.inf]),
                             jnp.full((size - 1,), max_multiplier)]).astype(dtype)
    eye = jnp.eye(size, dtype=dtype)
    if tolerance is None:
        tolerance = 1e-10 if dtype == jnp.float64 else 1e-6

    def objective(x: jax.Array) -> jax.Array:
        return estep_dual(x, q_reward, q_costs, kl_bound, q_limit, state_mask)

    def projected_gradient(x: jax.Array, g: jax.Array) -> jax.Array:
        blocked = ((x <= lower) & (g > 0)) | ((x >= upper) & (g < 0))
        return jnp.where(blocked, 0.0, g)

    newton_ladder = (0.5 ** jnp.arange(1.0, 8.0)).astype(dtype)  # the full step is tried first
    gradient_ladder = (4.0 ** -jnp.arange(4.0)).astype(dtype)
    box_ladder = (0.5 ** jnp.arange(3.0)).astype(dtype)

    class Carry(NamedTuple):
        x: jax.Array
        value: jax.Array
        gradient: jax.Array
        hessian: jax.Array
        count: jax.Array
        done: jax.Array

    def evaluate(x: jax.Array, count: jax.Array, done: jax.Array) -> Carry:
        value, gradient, hessian = estep_dual_derivatives(x, q_reward, q_costs, kl_bound, q_limit,
                                                          state_mask)
        return Carry(x, value, gradient, hessian, count, done)

    def newton_direction(carry: Carry) -> tuple[jax.Array, jax.Array, jax.Array]:
        free = projected_gradient(carry.x, carry.gradient) != 0
        both = free[:, None] & free[None, :]
        reduced = jnp.where(both, carry.hessian, eye)
        scale = jnp.maximum(jnp.max(jnp.abs(jnp.diag(carry.hessian))), 1e-12)
        gradient = jnp.where(free, carry.gradient, 0.0)
        newton = -jnp.linalg.solve(reduced + 1e-9 * scale * eye, gradient)
        newton = jnp.where(jnp.all(jnp.isfinite(newton)), newton, 0.0)
        # g is nearly linear along rays (η, λ)·t when a constraint cannot be met: the Hessian
        # is then singular to rounding and the solve may return an ascent direction; its
        # reverse descends (towards the multiplier cap).
        slope = gradient @ newton
        newton = jnp.where(slope > 0, -newton, newton)
        return newton, gradient / scale, 0.5 * jnp.abs(slope)

    def keep_going(carry: Carry) -> jax.Array:
        return (carry.count < iterations) & ~carry.done

    def backtrack(carry: Carry, newton: jax.Array, gradient_step: jax.Array) -> Carry:
        # The full Newton step did not lower g: the best of shorter Newton steps and a
        # projected-gradient ladder, or stay (and stop) if none improves.
        # The Newton direction also cut where it leaves the box (clipping alone bends it).
        to_bound = jnp.where(newton > 0, (upper - carry.x) / newton,
                             jnp.where(newton < 0, (lower - carry.x) / newton, jnp.inf))
        inside = jnp.clip(jnp.min(to_bound), 0.0, 1.0)
        candidates = jnp.concatenate([
            carry.x[None] + newton_ladder[:, None] * newton[None],
            carry.x[None] + (inside * box_ladder)[:, None] * newton[None],
            carry.x[None] - gradient_ladder[:, None] * gradient_step[None]])
        candidates = jnp.clip(candidates, lower, upper)
        values = jax.vmap(objective)(candidates)
        values = jnp.where(jnp.isfinite(values), values, jnp.inf)
        best = jnp.argmin(values)
        improved = values[best] < carry.value
        return jax.lax.cond(improved,
                            lambda: evaluate(candidates[best], carry.count + 1, carry.done),
                            lambda: carry._replace(done=jnp.asarray(True)))

    def newton_step(carry: Carry, newton: jax.Array, gradient_step: jax.Array) -> Carry:
        # The full step first: one pass gives its value and the next iteration's derivatives.
        trial = evaluate(jnp.clip(carry.x + newton, lower, upper), carry.count + 1, carry.done)
        return jax.lax.cond(trial.value < carry.value, lambda: trial,
                            lambda: backtrack(carry, newton, gradient_step))

    def newton_iteration(carry: Carry) -> Carry:
        newton, gradient_step, decrement = newton_direction(carry)
        # The decrement's scale |g| holds E_s[max A] + λᵀε_Q, which can dwarf the KL term: also
        # ask for the KL bound met to 1 % where η is free (∂g/∂η = κ − KL).
        eta_free = (carry.x[0] > eta_min) | (carry.gradient[0] < 0)
        kl_met = ~eta_free | (jnp.abs(carry.gradient[0]) <= 0.01 * kl_bound)
        converged = (decrement <= tolerance * (1.0 + jnp.abs(carry.value))) & kl_met
        return jax.lax.cond(converged, lambda: carry._replace(done=jnp.asarray(True)),
                            lambda: newton_step(carry, newton, gradient_step))

    def eta_iteration(carry: Carry) -> Carry:
        # Exact minimisation over η for the current λ: g cannot increase (convex in η).
        eta = eta_for_kl(carry.x[1:], q_reward, q_costs, kl_bound, eta_min, state_mask)
        trial = evaluate(carry.x.at[0].set(eta.astype(dtype)), carry.count + 1, carry.done)
        return jax.lax.cond(jnp.isfinite(trial.value), lambda: trial,
                            lambda: carry._replace(done=jnp.asarray(True)))

    def step(carry: Carry) -> Carry:
        # ∂g/∂η = κ − KL(w ‖ uniform): far from 0, the weights are nearly one-hot (KL ≫ κ) or
        # nearly uniform (KL ≪ κ) and Newton's quadratic model of η is poor.
        kl = kl_bound - carry.gradient[0]
        at_floor = (carry.x[0] <= eta_min) & (kl <= kl_bound)
        far = ((kl > 2.0 * kl_bound) | (kl < 0.5 * kl_bound)) & ~at_floor
        return jax.lax.cond(far, eta_iteration, newton_iteration, carry)

    start = evaluate(jnp.clip(init, lower, upper), jnp.asarray(0, jnp.int32),
                     jnp.asarray(False))
    final = jax.lax.while_loop(keep_going, step, start)
    gradient = projected_gradient(final.x, final.gradient)
    value = final.value + state_mean(reward_shift, state_mask)  # g of the uncentred Q-values
    return DualSolution(final.x, value, jnp.linalg.norm(gradient), final.count)


def estep_weights(q_reward: jax.Array, q_costs: jax.Array, variables: jax.Array) -> jax.Array:
    """The non-parametric target ``q_j ∝ exp((Q_r,j − λᵀQ_c,j)/η)`` over samples, ``[B, K]``.

    ``variables`` is ``[1 + m]`` (one dual for every state, CVPO) or ``[B, 1 + m]`` (each
    state's own condition's dual, CCPO).
    """
    if variables.ndim == 1:
        eta, lam = variables[0], variables[1:]
        return jax.nn.softmax(_shifted(q_reward - q_costs @ lam, eta)[0], axis=1)
    eta, lam = variables[:, :1], variables[:, 1:]
    advantage = q_reward - jnp.einsum("bkm,bm->bk", q_costs, lam)
    return jax.nn.softmax(_shifted(advantage, eta)[0], axis=1)


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
