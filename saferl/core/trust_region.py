"""Trust-region building blocks shared by TRPO, CPO and PCPO.

Everything here is pure JAX: jittable, vmappable and dtype-agnostic (it follows the dtype of its
inputs, so it is exact in float64 when ``jax_enable_x64`` is on).

* :func:`fisher_vector_product` — products with the Hessian of the mean KL (the Fisher
  information matrix at the old policy), Pearlmutter-style, never forming the matrix.
* :func:`conjugate_gradient` — solves ``Hx = b`` with a fixed maximum number of iterations
  (Schulman et al. 2015, Appendix C; Achiam et al. 2017, Section 6.1).
* :func:`backtracking_line_search` — the step-size search of TRPO/CPO, with a pluggable
  acceptance test; :func:`trust_region_accept` is the CPO test of docs/algorithms/trust-region.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

Array = jax.Array
MatVec = Callable[[Array], Array]

__all__ = [
    "LineSearchResult",
    "backtracking_line_search",
    "conjugate_gradient",
    "fisher_vector_product",
    "trust_region_accept",
]


def fisher_vector_product(
    kl_fn: Callable[[Any], Array],
    params: Any,
    damping: float | Array = 0.0,
    *,
    linearize: bool = False,
) -> MatVec:
    """Builds ``v → (H + damping·I)v`` with ``H`` the Hessian of the mean KL at ``params``.

    ``kl_fn(params)`` must return the **mean KL divergence between the policy at ``params`` and a
    fixed old policy** whose outputs were computed at the current parameters and wrapped in
    ``jax.lax.stop_gradient`` (or precomputed outside the differentiated function). At
    ``params == old params`` the KL and its gradient vanish and its Hessian is the Fisher
    information matrix, which is the metric of the trust region ``½ xᵀHx ≤ δ``
    (TRPO, Schulman et al. 2015, eq. 14 and Appendix C; CPO, Achiam et al. 2017, eq. 10). Either
    direction, KL(old ‖ new) or KL(new ‖ old), has this Hessian at the old parameters.

    The product is computed forward-over-reverse — ``jax.jvp`` of ``jax.grad`` on the flattened
    parameter vector (``jax.flatten_util.ravel_pytree``) — which costs a small constant times a
    gradient evaluation and never materialises ``H`` (Pearlmutter 1994).

    Args:
        kl_fn: Maps a parameter pytree (same structure as ``params``) to the scalar mean KL.
        params: Current policy parameters (a pytree), where the Hessian is taken.
        damping: Tikhonov damping added to the product, ``damping·v`` (CPO uses ≈0.1 in
            jachiam/cpo, TRPO ≈0.1; 1e-5 in some implementations). Keeps CG well posed.
        linearize: If True, linearise the gradient once with ``jax.linearize`` and reuse the
            stored residuals for every product (faster inside a CG loop, costs the memory of one
            backward pass). If False every product re-runs the forward pass.

    Returns:
        A function mapping a flat vector ``v`` of shape ``[n]`` (``n`` = number of parameters, in
        the order of ``ravel_pytree(params)``) to ``(H + damping·I)v`` of shape ``[n]``.
    """
    flat, unravel = ravel_pytree(params)

    def flat_kl(x: Array) -> Array:
        return kl_fn(unravel(x))

    grad_kl = jax.grad(flat_kl)

    if linearize:
        _, lin = jax.linearize(grad_kl, flat)

        def hvp(v: Array) -> Array:
            v = jnp.asarray(v, dtype=flat.dtype)
            return lin(v) + damping * v

        return hvp

    def hvp(v: Array) -> Array:
        v = jnp.asarray(v, dtype=flat.dtype)
        # Forward-over-reverse: directional derivative of the gradient along v is Hv.
        return jax.jvp(grad_kl, (flat,), (v,))[1] + damping * v

    return hvp


def conjugate_gradient(
    matvec: MatVec,
    b: Array,
    iterations: int = 10,
    residual_tol: float = 1e-10,
) -> tuple[Array, Array]:
    """Approximately solves ``Ax = b`` for a symmetric positive-definite ``A``, from ``x₀ = 0``.

    Standard CG (Hestenes & Stiefel; the variant in TRPO's Appendix C). It runs at most
    ``iterations`` iterations inside a ``lax.while_loop`` and stops early once the squared
    residual ``rᵀr`` falls below ``residual_tol`` (the convention of the TRPO/CPO reference
    code). Jittable and vmappable; no Python control flow depends on traced values.

    Args:
        matvec: ``v → Av`` for a symmetric positive-definite ``A`` (e.g. from
            :func:`fisher_vector_product`).
        b: Right-hand side, shape ``[n]``.
        iterations: Maximum number of CG iterations (static).
        residual_tol: Early stop when the squared residual norm ``rᵀr`` is below this.

    Returns:
        ``(x, residual_norm)``: the approximate solution (shape ``[n]``, dtype of ``b``) and the
        true residual norm ``‖b − Ax‖₂`` (recomputed with one extra product, so that float32
        drift of the recurrence cannot hide a bad solve).
    """
    b = jnp.asarray(b)
    dtype = b.dtype if jnp.issubdtype(b.dtype, jnp.floating) else jnp.result_type(float)
    b = b.astype(dtype)
    tol = jnp.asarray(residual_tol, dtype)

    def cond(state):
        i, _, _, _, rdotr = state
        return (i < iterations) & (rdotr >= tol)

    def body(state):
        i, x, r, p, rdotr = state
        ap = matvec(p)
        pap = jnp.vdot(p, ap)
        # Guard a non-positive curvature (numerically singular A): take no step, then stop.
        ok = pap > 0
        alpha = jnp.where(ok, rdotr / jnp.where(ok, pap, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * ap
        new_rdotr = jnp.where(ok, jnp.vdot(r, r), 0.0)
        beta = jnp.where(rdotr > 0, new_rdotr / jnp.where(rdotr > 0, rdotr, 1.0), 0.0)
        p = r + beta * p
        return i + 1, x, r, p, new_rdotr

    x0 = jnp.zeros_like(b)
    state = (jnp.asarray(0), x0, b, b, jnp.vdot(b, b))
    _, x, _, _, _ = jax.lax.while_loop(cond, body, state)
    residual = jnp.linalg.norm(b - matvec(x))
    return x, residual


class LineSearchResult(NamedTuple):
    """Outcome of :func:`backtracking_line_search`.

    Attributes:
        fraction: Accepted step fraction ``ratioᵏ`` (0 if no candidate was accepted: the caller
            then keeps the old parameters and should log it).
        n_backtracks: Number of rejected candidates before the accepted one (``max_backtracks``
            when none was accepted).
        accepted: Whether any candidate was accepted.
        metrics: Metrics pytree returned by ``evaluate`` for the accepted candidate, or for the
            last (smallest) candidate tried when none was accepted.
        step: ``fraction · full_step`` (zeros when nothing was accepted) if ``full_step`` was
            given, else None.
    """

    fraction: Array
    n_backtracks: Array
    accepted: Array
    metrics: Any
    step: Any = None


def _split_eval(out: Any) -> tuple[Array, Any]:
    """Normalises ``evaluate``'s output to ``(accept, metrics)``."""
    if isinstance(out, tuple) and len(out) == 2:
        accept, metrics = out
    else:
        accept, metrics = out, ()
    return jnp.asarray(accept, dtype=bool).reshape(()), metrics


def backtracking_line_search(
    evaluate: Callable[..., Any],
    full_step: Any = None,
    *,
    ratio: float = 0.8,
    max_backtracks: int = 15,
    dtype: Any = None,
    parallel: bool = False,
) -> LineSearchResult:
    """Backtracking line search over step fractions ``1, ratio, ratio², …``.

    ``evaluate(frac)`` evaluates the candidate ``θ_k + frac·x`` (the caller closes over
    the parameters and the full step ``x``) — or, when ``full_step`` is given,
    ``evaluate(frac, frac * full_step)`` receives the scaled step directly — and decides
    acceptance. The first accepted candidate is returned. This keeps the search
    agnostic to the test: TRPO accepts when KL ≤ δ and the surrogate improved; CPO adds
    "cost-surrogate increase ≤ max(−c, 0)" and drops the surrogate test in recovery (Achiam et
    al. 2017, Section 6.1; docs/algorithms/trust-region.md) — see :func:`trust_region_accept`.

    Args:
        evaluate: ``frac → accept`` or ``frac → (accept, metrics)`` where ``frac`` is a scalar
            array, ``accept`` a boolean scalar and ``metrics`` any pytree of arrays (for
            logging, e.g. KL and surrogate values); with ``full_step`` it is called as
            ``evaluate(frac, step)``. Must be traceable.
        full_step: Optional pytree (e.g. a flat parameter step): the full step ``x``.
        ratio: Multiplicative shrink factor per backtrack (0.8 in CPO).
        max_backtracks: Number of candidates tried (static); fractions ``ratioᵏ`` for
            ``k = 0, …, max_backtracks − 1``.
        dtype: Dtype of the fraction (default: JAX's default float dtype).
        parallel: If True, evaluate every candidate at once with ``jax.vmap`` and take the first
            accepted one (more memory, no sequential dependency — useful on accelerators). If
            False, evaluate sequentially in a ``lax.while_loop`` and stop at the first accepted.

    Returns:
        A :class:`LineSearchResult`.
    """
    if max_backtracks < 1:
        raise ValueError("max_backtracks must be >= 1")
    dtype = jnp.result_type(float) if dtype is None else dtype
    ratio_a = jnp.asarray(ratio, dtype)

    def scaled(frac: Array) -> Any:
        return jax.tree_util.tree_map(lambda s: (frac * s).astype(jnp.result_type(s)), full_step)

    def run(frac: Array) -> tuple[Array, Any]:
        if full_step is None:
            return _split_eval(evaluate(frac))
        return _split_eval(evaluate(frac, scaled(frac)))

    if parallel:
        fracs = ratio_a ** jnp.arange(max_backtracks, dtype=dtype)
        accepts, metrics = jax.vmap(run)(fracs)
        any_ok = jnp.any(accepts)
        first = jnp.argmax(accepts)  # first True; 0 if none
        idx = jnp.where(any_ok, first, max_backtracks - 1)
        picked = jax.tree_util.tree_map(lambda m: m[idx], metrics)
        fraction = jnp.where(any_ok, fracs[idx], jnp.zeros((), dtype))
        return LineSearchResult(
            fraction=fraction,
            n_backtracks=jnp.where(any_ok, first, max_backtracks).astype(jnp.int32),
            accepted=any_ok,
            metrics=picked,
            step=None if full_step is None else scaled(fraction),
        )

    metrics_shape = jax.eval_shape(lambda f: run(f)[1], jnp.ones((), dtype))
    metrics0 = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape)

    def cond(state):
        k, accepted, _ = state
        return (k < max_backtracks) & ~accepted

    def body(state):
        k, _, _ = state
        accepted, metrics = run(ratio_a**k)
        return k + 1, accepted, metrics

    k, accepted, metrics = jax.lax.while_loop(
        cond, body, (jnp.asarray(0, jnp.int32), jnp.asarray(False), metrics0)
    )
    # k counts evaluated candidates; the accepted one (if any) is number k − 1.
    n_back = jnp.where(accepted, k - 1, max_backtracks).astype(jnp.int32)
    fraction = jnp.where(accepted, ratio_a ** (k - 1), jnp.zeros((), dtype))
    step = None if full_step is None else scaled(fraction)
    return LineSearchResult(fraction, n_back, accepted, metrics, step)


def trust_region_accept(
    kl: Array,
    delta: float | Array,
    surrogate_improvement: Array | None = None,
    cost_surrogate_increase: Array | None = None,
    c: Array | None = None,
    recovery: Array | bool = False,
    kl_slack: float = 1.0,
) -> Array:
    """The TRPO/CPO acceptance test for one line-search candidate.

    Accepts when (docs/algorithms/trust-region.md; Achiam et al. 2017, Section 6.1):

    * ``kl ≤ kl_slack · δ`` (the quadratic model of the KL may be optimistic);
    * ``surrogate_improvement > 0`` — skipped when ``recovery`` is True, since the recovery step
      ignores the reward;
    * for every constraint ``i``: ``cost_surrogate_increase[i] ≤ max(−c[i], 0)``, i.e. a
      satisfied constraint may use up its slack, a violated one must not get worse. Both sides
      must be in the same (episode) units as ``c``.

    Args:
        kl: Mean KL between the candidate and the old policy.
        delta: Trust-region size δ.
        surrogate_improvement: New minus old reward surrogate, or None to skip the test.
        cost_surrogate_increase: New minus old cost surrogate(s), scalar or ``[m]``, or None to
            skip the cost test.
        c: Constraint value(s) ``J_C − d`` (scalar or ``[m]``); required with
            ``cost_surrogate_increase``.
        recovery: Whether the step is a recovery step (e.g. ``CPOInfo.recovery``).
        kl_slack: Multiplier on ``delta`` (δ) for the KL test (1.0 = exact test).

    Returns:
        Boolean scalar.
    """
    ok = jnp.asarray(kl) <= kl_slack * jnp.asarray(delta)
    if surrogate_improvement is not None:
        ok = ok & (jnp.asarray(recovery) | (jnp.asarray(surrogate_improvement) > 0))
    if cost_surrogate_increase is not None:
        if c is None:
            raise ValueError("c is required with cost_surrogate_increase")
        inc = jnp.atleast_1d(jnp.asarray(cost_surrogate_increase))
        slack = jnp.maximum(-jnp.atleast_1d(jnp.asarray(c)), 0.0)
        ok = ok & jnp.all(inc <= slack)
    return ok
