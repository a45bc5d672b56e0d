"""Constrained trust-region steps: CPO (Achiam et al. 2017) and PCPO (Yang et al. 2020).

Both solve, at each policy iteration, a subproblem in the parameter change ``x = θ − θ_k``
built from

* ``g`` — gradient of the **reward** surrogate (we *ascend* it; reward-ascent signs are used
  everywhere in this module, unlike OmniSafe/SafePO which mix loss and ascent signs);
* ``B`` — gradients of the cost surrogates, one column ``b_i`` per constraint, shape ``[n, m]``,
  in the **same units** as ``c`` (episode units: see docs/algorithms/index.md);
* ``c`` — constraint values ``J_C(π_k) − d``, shape ``[m]`` (``c > 0``: violated);
* ``H`` — the Fisher matrix (Hessian of the mean KL), given as an explicit matrix or as a
  Hessian-vector product callable (then ``H⁻¹`` products are computed by conjugate
  gradient, ``H⁻¹b = ‖b‖·CG(b/‖b‖)``);
* ``delta`` (δ) — the trust-region size, ``½ xᵀHx ≤ δ``.

CPO (:func:`cpo_step`) solves the QCQP (Achiam et al. 2017, eq. 10)::

    maximise gᵀx   subject to   c + Bᵀx ≤ 0,   ½ xᵀHx ≤ δ.

With ``v = H⁻¹g``, ``W = H⁻¹B``, ``q = gᵀv``, ``r = Bᵀv`` (``[m]``), ``S = BᵀW``
(``[m, m]``), its dual is (eq. 11 / Appendix 10.2, written for reward ascent)::

    max_{λ>0, ν≥0}  −(1/2λ)(q − 2rᵀν + νᵀSν) + νᵀc − λδ

and the primal solution is ``x = (1/λ)H⁻¹(g − Bν)``.

Case numbers (``CPOInfo.case``), following the table of docs/algorithms/trust-region.md (which is
jachiam/cpo's ``optim_case``), for ``m = 1`` with ``w = H⁻¹b``, ``r = gᵀw``, ``s = bᵀw``,
``A = q − r²/s`` and ``Bm = 2δ − c²/s`` (the ``B`` of docs/algorithms/trust-region.md):

====  ===================================================  =========================
case  condition                                            step
====  ===================================================  =========================
4     ``m = 1``: ``‖b‖² ≤ b_tol`` and ``c < 0``;           TRPO ``√(2δ/q)·v``
      ``m > 1``: every column has ``‖b_i‖² ≤ b_tol`` and
      ``c_i < 0``
3     every ``c_i < 0`` and every plane misses the region  TRPO ``√(2δ/q)·v``
      (``2δ − c_i²/S_ii < 0``): the whole region is
      feasible
2     every ``c_i < 0``, some plane cuts the region        dual solution
1     some ``c_i ≥ 0`` and a feasible point exists in the  dual solution
      region (``m = 1``: ``Bm ≥ 0``)
0     ``m = 1``: ``c > 0``, ``Bm < 0`` (infeasible)        recovery ``−√(2δ/s)·w``
5     ``m > 1``: no point of the region satisfies all the  multi-constraint recovery
      linearised constraints                               (below)
====  ===================================================  =========================

``CPOInfo.recovery`` is True for cases 0 and 5; use it (rather than comparing case numbers) to
skip the surrogate-improvement test of the line search.

**Single constraint** (``m = 1``): closed form. For fixed ``λ`` the best ``ν`` is
``(λc + r)₊/s``, which splits the one-dimensional dual into two pieces meeting at
``λ_mid = −r/c``: piece *a* (``λc + r > 0``) with maximiser ``λ_a = √(A/Bm)`` and piece *b*
(``ν = 0``) with maximiser ``λ_b = √(q/2δ)``. Each maximiser is projected onto its piece
and the better one is kept (Achiam et al. 2017, Theorem 2 / Appendix 10.2). When
``λ_mid ≤ 0`` one piece is **empty** and is excluded — clamping onto an interval with
``lower > upper`` (as several public implementations do) would return a negative ``λ``.

**Several constraints** (``m > 1``): exact active-set enumeration. For a set ``T`` of active
constraints, stationarity in ``ν_T`` gives ``ν_T = S_TT⁻¹(r_T + λc_T)`` and stationarity
in ``λ`` gives ``λ = √(A_T/B_T)`` with ``A_T = q − r_Tᵀ S_TT⁻¹ r_T`` and
``B_T = 2δ − c_Tᵀ S_TT⁻¹ c_T`` (the ``m = 1`` formulas with ``s`` replaced by ``S_TT``).
All ``2ᵐ`` subsets are evaluated in parallel; each candidate ``ν`` is clipped to ``ν ≥ 0``
and scored by the dual objective minimised over ``λ`` in closed form,
``h(ν) = √(2δ·Q(ν)) − cᵀν`` with ``Q(ν) = q − 2rᵀν + νᵀSν``. Every
``ν ≥ 0`` gives an upper bound on the primal optimum (weak duality) and the true active set
attains it (strong duality under Slater), so the smallest score is the exact dual optimum —
no tolerance-based KKT test is needed. ``m`` is static; the cost is ``2ᵐ`` tiny ``m × m``
Cholesky solves (``m ≤ max_enumeration``, default 10).

**Multi-constraint recovery** (case 5): feasibility is decided by the H-norm distance to the
linearised feasible set, ``p_min = min {½ xᵀHx : c + Bᵀx ≤ 0}``, a QP solved in the
same way through its dual ``max_{μ≥0} −½ μᵀSμ + μᵀc`` (active-set enumeration,
minimiser ``x_min = −Wμ``). The problem is infeasible iff ``p_min > δ``; the recovery step
is then ``x_min`` scaled back onto the trust-region boundary, ``x = √(δ/p_min)·x_min``:
the step towards the nearest (in the KL metric) point satisfying every linearised constraint.
Because each constraint is linear and holds at ``x_min``, along the segment ``[0, x_min]``
every satisfied constraint stays satisfied and every violated one strictly decreases. For
``m = 1`` it is exactly CPO's recovery ``−√(2δ/s)·w``.

Degenerate constraints: a column with ``‖b_i‖² ≤ b_tol`` and ``c_i < 0`` can never become
active and is dropped (``m > 1``). With ``c_i ≥ 0`` it is kept, as jachiam/cpo does for
``m = 1`` (the recovery direction is then dominated by the tiny gradient); an exactly zero
column with ``c_i > 0`` cannot be acted on and is effectively ignored for ``m > 1`` (its subsets
fail the Cholesky test) and gives a zero step for ``m = 1``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from saferl.core.trust_region import conjugate_gradient

Array = jax.Array
HessianLike = Array | Callable[[Array], Array]

__all__ = [
    "CASE_DUAL_FEASIBLE",
    "CASE_DUAL_INFEASIBLE",
    "CASE_MULTI_RECOVERY",
    "CASE_RECOVERY",
    "CASE_TRPO_DEGENERATE",
    "CASE_TRPO_FEASIBLE",
    "CPOInfo",
    "PCPOInfo",
    "cpo_step",
    "pcpo_step",
]

CASE_RECOVERY = 0  # m = 1: c > 0 and the plane misses the region → −√(2δ/s)·w
CASE_DUAL_INFEASIBLE = 1  # some c ≥ 0, a feasible point exists in the region → dual solution
CASE_DUAL_FEASIBLE = 2  # c < 0 and some plane cuts the region → dual solution
CASE_TRPO_FEASIBLE = 3  # c < 0 and the whole region is feasible → TRPO step
CASE_TRPO_DEGENERATE = 4  # b ≈ 0 and c < 0 → TRPO step
CASE_MULTI_RECOVERY = 5  # m > 1: no feasible point in the region → scaled min-H-norm step


class CPOInfo(NamedTuple):
    """Diagnostics of :func:`cpo_step` (all arrays; batchable under ``vmap``).

    Attributes:
        case: Case number (int32), see the module docstring.
        recovery: True for a recovery step (cases 0 and 5).
        feasible: Whether some point of the trust region satisfies every linearised constraint.
        lam: Trust-region multiplier λ (0 in recovery).
        nu: Constraint multipliers ν, shape ``[m]``. In recovery: the coefficients of the
            recovery step ``x = −H⁻¹Bν`` (``m = 1``: ``√(2δ/s)``, as jachiam/cpo).
        q: ``gᵀH⁻¹g``.
        r: ``BᵀH⁻¹g``, shape ``[m]``.
        s: ``BᵀH⁻¹B``, shape ``[m, m]``.
        min_kl_to_feasible: ``p_min``, the smallest ``½ xᵀHx`` over the linearised feasible
            set (0 when ``c ≤ 0``); infeasible iff ``p_min > δ``.
        cg_residual: Largest ``‖Hx − b‖`` over the linear solves (CG or direct).
        predicted_kl: ``½ xᵀHx`` of the returned step (from the scalars above).
        predicted_reward_gain: ``gᵀx``.
        predicted_constraint: Linearised constraint values after the step, ``c + Bᵀx``
            (shape ``[m]``).
    """

    case: Array
    recovery: Array
    feasible: Array
    lam: Array
    nu: Array
    q: Array
    r: Array
    s: Array
    min_kl_to_feasible: Array
    cg_residual: Array
    predicted_kl: Array
    predicted_reward_gain: Array
    predicted_constraint: Array


class PCPOInfo(NamedTuple):
    """Diagnostics of :func:`pcpo_step`.

    Attributes:
        q: ``gᵀH⁻¹g``.
        r: ``BᵀH⁻¹g``, shape ``[m]``.
        step_scale: ``√(2δ/q)``, the coefficient of the reward step.
        projection_coef: Total projection coefficients ``t``, shape ``[m]``: the final step is
            ``x_½ − L⁻¹Bt`` (``L = H`` or ``I``). For Dykstra's method these are the
            multipliers of the projection problem.
        projection_denominator: ``b_iᵀL⁻¹b_i``, shape ``[m]``.
        constraint_before: Linearised constraints at the reward step ``x_½``, ``c + Bᵀx_½``.
        constraint_after: Linearised constraints after projection, ``c + Bᵀx``.
        projected: Whether any projection moved the step.
        cg_residual: Largest ``‖Hx − b‖`` over the linear solves.
        predicted_kl: ``½ xᵀHx`` of the final step.
        predicted_reward_gain: ``gᵀx``.
    """

    q: Array
    r: Array
    step_scale: Array
    projection_coef: Array
    projection_denominator: Array
    constraint_before: Array
    constraint_after: Array
    projected: Array
    cg_residual: Array
    predicted_kl: Array
    predicted_reward_gain: Array


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _prepare(g: Array, B: Array, c: Array) -> tuple[Array, Array, Array]:
    """Casts to a common float dtype; ``B`` to ``[n, m]`` and ``c`` to ``[m]``."""
    g, B, c = jnp.asarray(g), jnp.asarray(B), jnp.asarray(c)
    dtype = jnp.result_type(g, B, c, float)
    g = jnp.asarray(g, dtype)
    B = jnp.asarray(B, dtype)
    if B.ndim == 1:
        B = B[:, None]
    if B.ndim != 2 or B.shape[0] != g.shape[0]:
        raise ValueError(f"B must have shape [n] or [n, m] with n = {g.shape[0]}, got {B.shape}")
    c = jnp.asarray(c, dtype).reshape(-1)
    if c.shape[0] != B.shape[1]:
        raise ValueError(f"c must have {B.shape[1]} entries, got {c.shape[0]}")
    return g, B, c


def _solve_many(
    hvp_or_matrix: HessianLike,
    rhs: Array,
    cg_iterations: int,
    cg_residual_tol: float,
) -> tuple[Array, Array, Callable[[Array], Array]]:
    """Solves ``HX = rhs`` for the columns of ``rhs`` (``[n, k]``).

    Returns ``(X, max residual norm, matvec)``. With a callable, each column is solved by CG on
    the normalised right-hand side, ``H⁻¹b = ‖b‖·CG(b/‖b‖)`` (jachiam/cpo), so that
    the early-stopping tolerance is relative and tiny gradients (e.g. ``b ≈ 0``) are handled.
    With a matrix, a Cholesky solve is used (exact up to rounding).
    """
    dtype = rhs.dtype
    if callable(hvp_or_matrix):
        matvec = hvp_or_matrix

        def one(b: Array) -> tuple[Array, Array]:
            nb = jnp.linalg.norm(b)
            safe = jnp.where(nb > 0, nb, 1.0)
            x, res = conjugate_gradient(matvec, b / safe, cg_iterations, cg_residual_tol)
            return x * nb, res * nb

        xs, res = jax.vmap(one, in_axes=1, out_axes=(1, 0))(rhs)
        return xs, jnp.max(res), matvec

    H = jnp.asarray(hvp_or_matrix, dtype)
    H = 0.5 * (H + H.T)
    chol = jax.scipy.linalg.cho_factor(H, lower=True)
    xs = jax.scipy.linalg.cho_solve(chol, rhs)
    res = jnp.max(jnp.linalg.norm(H @ xs - rhs, axis=0))
    return xs, res, lambda v: H @ v


def _safe(x: Array, ok: Array) -> Array:
    """``x`` where ``ok`` else 1 (a denominator that is never used but keeps NaNs out)."""
    return jnp.where(ok, x, jnp.ones_like(x))


def _subset_masks(m: int) -> np.ndarray:
    """All ``2ᵐ`` subsets of ``range(m)`` as a boolean ``[2ᵐ, m]`` array (static)."""
    k = np.arange(2**m)[:, None]
    return ((k >> np.arange(m)[None, :]) & 1).astype(bool)


def _masked_solve(S: Array, mask: Array, rhs: Array) -> tuple[Array, Array]:
    """Solves ``S_TT y_T = rhs_T`` (``y = 0`` off ``T``) for the subset ``T = mask``.

    The inactive block is replaced by the identity and the coupling by zeros, so one
    fixed-shape Cholesky solve serves every subset. Returns ``(Y, ok)`` with ``rhs`` of shape
    ``[m, k]``; ``ok`` is False when ``S_TT`` is numerically singular: a pivot of its Cholesky
    factor carries less than ``1e3·eps`` of the corresponding diagonal entry (i.e. ``b_i`` is
    almost in the span of the preceding active columns, in the ``H⁻¹`` metric).
    """
    m = S.shape[0]
    eye = jnp.eye(m, dtype=S.dtype)
    mm = mask[:, None] & mask[None, :]
    Sm = jnp.where(mm, S, eye)
    L = jnp.linalg.cholesky(Sm)
    diag = jnp.diagonal(L)
    eps = jnp.finfo(S.dtype).eps
    pivots_ok = jnp.where(mask, diag**2 > 1e3 * eps * jnp.abs(jnp.diagonal(S)), True)
    ok = jnp.all(jnp.isfinite(L)) & jnp.all(pivots_ok)
    Lsafe = jnp.where(ok, L, eye)
    rhs_m = jnp.where(mask[:, None], rhs, 0.0)
    Y = jax.scipy.linalg.cho_solve((Lsafe, True), rhs_m)
    Y = jnp.where(mask[:, None], Y, 0.0)
    return Y, ok


# --------------------------------------------------------------------------------------------
# CPO
# --------------------------------------------------------------------------------------------


def _cpo_single(
    q: Array, r: Array, s: Array, c: Array, delta: Array, b_small: Array
) -> tuple[Array, Array, Array, Array, Array, Array]:
    """Closed-form CPO dual for one constraint (scalars ``q, r, s, c``).

    Returns ``(case, lam, nu, coef_v, coef_w, p_min)`` with the step
    ``x = coef_v·v + coef_w·w``.
    """
    dtype = q.dtype
    zero = jnp.zeros((), dtype)
    inf = jnp.asarray(jnp.inf, dtype)
    s_ok = s > 0
    s_safe = _safe(s, s_ok)
    # A ≥ 0 by Cauchy-Schwarz in the H⁻¹ inner product; clip rounding.
    A = jnp.maximum(q - r**2 / s_safe, 0.0)
    Bm = 2.0 * delta - c**2 / s_safe  # Bm ≥ 0 ⇔ the plane c + bᵀx = 0 cuts the region
    Bm = jnp.where(s_ok, Bm, jnp.where(c > 0, -inf, 2.0 * delta))

    case = jnp.where(
        b_small & (c < 0),
        CASE_TRPO_DEGENERATE,
        jnp.where(
            c < 0,
            jnp.where(Bm < 0, CASE_TRPO_FEASIBLE, CASE_DUAL_FEASIBLE),
            jnp.where(Bm >= 0, CASE_DUAL_INFEASIBLE, CASE_RECOVERY),
        ),
    ).astype(jnp.int32)

    # --- TRPO step (cases 3, 4): λ = √(q/2δ), ν = 0 ---------------------------------------
    lam_trpo = jnp.sqrt(q / (2.0 * delta))

    # --- Dual solution (cases 1, 2): Achiam et al. 2017, Appendix 10.2 ---------------------
    # ν(λ) = (λc + r)₊/s; the two pieces meet at λ_mid = −r/c.
    c_neg, c_pos = c < 0, c > 0
    c_zero = ~c_neg & ~c_pos
    lam_mid = -r / _safe(c, ~c_zero)
    mid0 = jnp.maximum(lam_mid, 0.0)
    mid_pos = lam_mid > 0
    # Piece a (λc + r > 0): [0, λ_mid) for c < 0, (λ_mid, ∞) for c > 0,
    # everything if c = 0 and r > 0. Piece b (ν = 0) is the complement.
    lo_a = jnp.where(c_pos, mid0, zero)
    hi_a = jnp.where(c_neg, mid0, inf)
    valid_a = jnp.where(c_neg, mid_pos, jnp.where(c_pos, True, r > 0))
    lo_b = jnp.where(c_neg, mid0, zero)
    hi_b = jnp.where(c_pos, mid0, inf)
    valid_b = jnp.where(c_pos, mid_pos, jnp.where(c_neg, True, r <= 0))
    # Unconstrained maximisers of each piece. Bm = 0 (plane tangent to the region) means
    # λ_a → ∞; a floor of eps·2δ keeps λ_a finite (no ∞·0 below) while
    # leaving the step on the tangent point to rounding accuracy.
    Bm_floor = jnp.maximum(Bm, jnp.finfo(dtype).eps * 2.0 * delta)
    lam_a = jnp.clip(jnp.sqrt(A / Bm_floor), lo_a, hi_a)
    lam_b = jnp.clip(lam_trpo, lo_b, hi_b)

    def inv_term(num: Array, lam: Array) -> Array:
        # num/λ with the limits num/0 = ∞ (num > 0) and 0/0 = 0.
        return jnp.where(lam > 0, num / _safe(lam, lam > 0), jnp.where(num > 0, inf, zero))

    rc_s = r * c / s_safe
    f_a = -0.5 * (inv_term(A, lam_a) + Bm_floor * lam_a) + rc_s  # −√(A·Bm) + rc/s unclipped
    f_b = -0.5 * (inv_term(q, lam_b) + 2.0 * delta * lam_b)  # = −√(2δq) unclipped
    f_a = jnp.where(valid_a, f_a, -inf)
    f_b = jnp.where(valid_b, f_b, -inf)
    lam_dual = jnp.where(f_a >= f_b, lam_a, lam_b)
    nu_dual = jnp.maximum(lam_dual * c + r, 0.0) / s_safe

    # --- Recovery (case 0): minimise the linearised cost within the region -----------------
    nu_rec = jnp.where(s_ok, jnp.sqrt(2.0 * delta / s_safe), zero)

    is_trpo = (case == CASE_TRPO_FEASIBLE) | (case == CASE_TRPO_DEGENERATE)
    is_rec = case == CASE_RECOVERY
    lam = jnp.where(is_trpo, lam_trpo, jnp.where(is_rec, zero, lam_dual))
    nu = jnp.where(is_trpo, zero, jnp.where(is_rec, nu_rec, nu_dual))

    # x = (1/λ)(v − νw). λ = 0 outside recovery only in degenerate limits (g = 0, or
    # g parallel to b in the H⁻¹ metric so A = 0); then any feasible point on the active
    # plane is optimal and we return the min-norm one, −(c/s)·w (0 if the plane is inactive).
    lam_pos = lam > 0
    inv_lam = jnp.where(lam_pos, 1.0 / _safe(lam, lam_pos), zero)
    plane = jnp.where((nu > 0) | (c > 0), c / s_safe, zero)
    coef_v = jnp.where(is_rec, zero, inv_lam)
    coef_w = jnp.where(is_rec, -nu, jnp.where(lam_pos, -nu * inv_lam, -plane))
    p_min = jnp.where(s_ok & c_pos, c**2 / (2.0 * s_safe), zero)
    return case, lam, nu, coef_v, coef_w, p_min


def _cpo_multi(
    q: Array,
    r: Array,
    S: Array,
    c: Array,
    delta: Array,
    b_small: Array,
    recovery_case: int,
) -> tuple[Array, Array, Array, Array, Array, Array]:
    """Active-set-enumeration CPO dual for ``m`` constraints.

    Returns ``(case, lam, nu, coef_v, coef_w, p_min)`` with ``x = coef_v·v + W·coef_w``.
    """
    dtype = q.dtype
    m = c.shape[0]
    zero = jnp.zeros((), dtype)
    inf = jnp.asarray(jnp.inf, dtype)
    dropped = b_small & (c < 0)  # can never become active: drop from the subproblem
    masks = jnp.asarray(_subset_masks(m))
    allowed = ~jnp.any(masks & dropped[None, :], axis=1)  # subsets of the kept constraints

    def candidate(mask: Array):
        Y, ok = _masked_solve(S, mask, jnp.stack([r, c], axis=1))
        y, z = Y[:, 0], Y[:, 1]  # S_TT⁻¹ r_T, S_TT⁻¹ c_T
        # -- main dual: ν_T = S⁻¹(r + λc), λ = √(A_T/B_T) ------------------------------------
        A_T = q - jnp.dot(r, y)
        B_T = 2.0 * delta - jnp.dot(c, z)
        ok_main = ok & (A_T > 0) & (B_T > 0)
        lam = jnp.sqrt(A_T / _safe(B_T, ok_main))
        nu = jnp.maximum(y + lam * z, 0.0)  # clipping keeps it a valid dual point
        Q = jnp.maximum(q - 2.0 * jnp.dot(r, nu) + nu @ S @ nu, 0.0)
        h = jnp.sqrt(2.0 * delta * Q) - jnp.dot(c, nu)  # dual objective minimised over λ
        h = jnp.where(ok_main & jnp.isfinite(h), h, inf)
        # -- min-H-norm feasibility QP: max_{μ≥0} −½ μᵀSμ + μᵀc ------------------------------
        mu = jnp.maximum(z, 0.0)
        a = jnp.dot(mu, c)
        sq = mu @ S @ mu
        good = ok & (a > 0) & (sq > 0)
        t = jnp.where(good, a / _safe(sq, good), zero)  # best scaling of μ
        phi = jnp.where(good, 0.5 * a * t, zero)  # = max_t −½ t²·sq + t·a (lower bound)
        phi = jnp.where(jnp.isfinite(phi), phi, zero)
        return h, nu, phi, mu * t

    h, nus, phi, mus = jax.vmap(candidate)(masks)
    h = jnp.where(allowed, h, inf)
    phi = jnp.where(allowed, phi, zero)
    best = jnp.argmin(h)
    nu_dual = nus[best]
    best_f = jnp.argmax(phi)
    p_min = phi[best_f]
    mu_min = mus[best_f]

    feasible = p_min <= delta
    kept = ~dropped
    diag = jnp.diagonal(S)
    Bi = 2.0 * delta - c**2 / _safe(diag, diag > 0)
    plane_misses = jnp.where(kept, (diag > 0) & (Bi < 0), True)
    all_neg = jnp.all(c < 0)
    case = jnp.where(
        jnp.all(dropped),
        CASE_TRPO_DEGENERATE,
        jnp.where(
            ~feasible,
            recovery_case,
            jnp.where(
                all_neg,
                jnp.where(jnp.all(plane_misses), CASE_TRPO_FEASIBLE, CASE_DUAL_FEASIBLE),
                CASE_DUAL_INFEASIBLE,
            ),
        ),
    ).astype(jnp.int32)
    is_trpo = (case == CASE_TRPO_FEASIBLE) | (case == CASE_TRPO_DEGENERATE)
    is_rec = case == recovery_case

    nu = jnp.where(is_trpo, jnp.zeros_like(nu_dual), nu_dual)
    # λ from Q(ν) = ‖g − Bν‖²_{H⁻¹} (closed form for fixed ν).
    Q = jnp.maximum(q - 2.0 * jnp.dot(r, nu) + nu @ S @ nu, 0.0)
    lam = jnp.sqrt(Q / (2.0 * delta))
    lam_pos = lam > 0
    inv_lam = jnp.where(lam_pos, 1.0 / _safe(lam, lam_pos), zero)
    # Recovery: x = √(δ/p_min)·x_min with x_min = −Wμ.
    scale = jnp.sqrt(delta / _safe(p_min, p_min > 0))
    nu_rec = mu_min * scale
    lam = jnp.where(is_rec, zero, lam)
    nu = jnp.where(is_rec, nu_rec, nu)
    coef_v = jnp.where(is_rec, zero, inv_lam)
    # λ = 0 outside recovery only in degenerate limits (g = 0, or g in the cone of the active
    # b_i in the H⁻¹ metric): every feasible point of the active face is then optimal and we
    # return the min-H-norm feasible point x_min = −Wμ (0 when c ≤ 0), as for m = 1.
    coef_w = jnp.where(is_rec, -nu_rec, jnp.where(lam_pos, -nu * inv_lam, -mu_min))
    return case, lam, nu, coef_v, coef_w, p_min


def cpo_step(
    g: Array,
    B: Array,
    c: Array,
    hvp_or_matrix: HessianLike,
    delta: float | Array,
    cg_iterations: int = 10,
    cg_residual_tol: float = 1e-10,
    *,
    b_tol: float = 1e-8,
    method: str = "auto",
    max_enumeration: int = 10,
) -> tuple[Array, CPOInfo]:
    """Solves the CPO subproblem ``max gᵀx s.t. c + Bᵀx ≤ 0, ½ xᵀHx ≤ δ``.

    Achiam et al. 2017, eq. (10)-(13) and Appendix 10.2; see the module docstring for the
    cases, the multi-constraint dual and the recovery steps. Reward-ascent signs throughout:
    ``g`` is the gradient of the reward surrogate to *increase*, ``B`` the gradients of the cost
    surrogates, ``c = J_C − d`` (positive when violated), all in consistent (episode) units.

    Jittable and vmappable: all case distinctions are ``jnp.where`` selections.

    Args:
        g: Reward-surrogate gradient, shape ``[n]``.
        B: Cost-surrogate gradients, shape ``[n, m]`` (one column per constraint) or ``[n]``.
        c: Constraint values ``J_C(π_k) − d``, shape ``[m]`` or scalar.
        hvp_or_matrix: The Fisher matrix ``H`` as an ``[n, n]`` positive-definite array, or a
            callable ``v → Hv`` (e.g. :func:`saferl.core.trust_region.fisher_vector_product`).
        delta: Trust-region size δ (``½ xᵀHx ≤ δ``).
        cg_iterations: Conjugate-gradient iterations per ``H⁻¹`` product (callable ``H``).
        cg_residual_tol: CG early-stopping tolerance on the squared residual.
        b_tol: A constraint with ``‖b_i‖² ≤ b_tol`` counts as having no gradient (case 4).
        method: ``"auto"`` (closed form for ``m = 1``, enumeration otherwise), ``"analytic"``
            (``m = 1`` only) or ``"enumerate"`` (any ``m``; for ``m = 1`` it reproduces the
            closed form).
        max_enumeration: Largest ``m`` accepted by the enumeration (``2ᵐ`` subsets).

    Returns:
        ``(x, info)``: the step ``x`` (shape ``[n]``) and a :class:`CPOInfo`.

    Raises:
        ValueError: On inconsistent shapes, an unknown ``method`` or ``m > max_enumeration``.
    """
    g, B, c = _prepare(g, B, c)
    dtype = g.dtype
    m = B.shape[1]
    if method not in ("auto", "analytic", "enumerate"):
        raise ValueError(f"unknown method {method!r}")
    if method == "analytic" and m != 1:
        raise ValueError("method='analytic' needs exactly one constraint")
    if m > 1 and m > max_enumeration:
        raise ValueError(f"m = {m} constraints exceeds max_enumeration = {max_enumeration}")
    delta = jnp.asarray(delta, dtype)

    # H⁻¹g and H⁻¹B in one batch of solves (CG with a callable).
    sol, cg_res, _ = _solve_many(
        hvp_or_matrix, jnp.concatenate([g[:, None], B], axis=1), cg_iterations, cg_residual_tol
    )
    v, W = sol[:, 0], sol[:, 1:]
    q = jnp.dot(g, v)
    r = B.T @ v
    S = B.T @ W
    S = 0.5 * (S + S.T)
    b_small = jnp.sum(B**2, axis=0) <= b_tol

    if m == 1 and method != "enumerate":
        case, lam, nu, coef_v, coef_w, p_min = _cpo_single(
            q, r[0], S[0, 0], c[0], delta, b_small[0]
        )
        nu = nu[None]
        coef_w = coef_w[None]
    else:
        recovery_case = CASE_RECOVERY if m == 1 else CASE_MULTI_RECOVERY
        case, lam, nu, coef_v, coef_w, p_min = _cpo_multi(q, r, S, c, delta, b_small, recovery_case)
    x = coef_v * v + W @ coef_w
    recovery = (case == CASE_RECOVERY) | (case == CASE_MULTI_RECOVERY)

    # Predicted quantities from the scalars: x = a·v + Wk  ⇒  xᵀHx = a²q + 2a·rᵀk
    # + kᵀSk, gᵀx = aq + rᵀk, Bᵀx = ar + Sk.
    pred_kl = 0.5 * (coef_v**2 * q + 2.0 * coef_v * jnp.dot(r, coef_w) + coef_w @ S @ coef_w)
    info = CPOInfo(
        case=case,
        recovery=recovery,
        feasible=p_min <= delta,
        lam=lam,
        nu=nu,
        q=q,
        r=r,
        s=S,
        min_kl_to_feasible=p_min,
        cg_residual=cg_res,
        predicted_kl=pred_kl,
        predicted_reward_gain=coef_v * q + jnp.dot(r, coef_w),
        predicted_constraint=c + coef_v * r + S @ coef_w,
    )
    return x, info


# --------------------------------------------------------------------------------------------
# PCPO
# --------------------------------------------------------------------------------------------


def pcpo_step(
    g: Array,
    B: Array,
    c: Array,
    hvp_or_matrix: HessianLike,
    delta: float | Array,
    projection: str = "kl",
    cg_iterations: int = 10,
    cg_residual_tol: float = 1e-10,
    *,
    sweeps: int | None = None,
    method: str = "cyclic",
) -> tuple[Array, PCPOInfo]:
    """Projection-based CPO step (Yang et al. 2020, eq. (8)-(9); docs/algorithms/trust-region.md).

    Step 1, the TRPO reward step: ``x_½ = √(2δ/q)·H⁻¹g`` (``x_half`` in the code).
    Step 2, projection of ``x_½`` onto the linearised constraint set
    ``{x : b_iᵀx + c_i ≤ 0}`` in the norm ``‖x‖_L = √(xᵀLx)``, ``L = H`` (``"kl"``)
    or ``L = I`` (``"l2"``). For one half-space the projection is closed form::

        x = x_½ − max(0, (bᵀx_½ + c)/(bᵀL⁻¹b))·L⁻¹b

    where ``bᵀx_½ = √(2δ/q)·bᵀH⁻¹g`` uses ``H⁻¹g`` itself (OmniSafe
    and SafePO replace it by ``g``, i.e. assume ``H·H⁻¹g ≈ g`` where ``H⁻¹g``
    belongs).

    Several constraints (``m > 1``): alternating projections onto the half-spaces for a fixed
    number of sweeps (static, so jittable). ``method="cyclic"`` is plain cyclic projection
    (the paper's suggestion): it converges to *a* point of the intersection, not necessarily
    the L-projection. ``method="dykstra"`` runs Dykstra's algorithm, which converges to the
    exact L-projection of ``x_½`` onto the intersection at the same cost per sweep. For
    ``m = 1`` both are the exact one-shot projection.

    Args:
        g: Reward-surrogate gradient (ascent direction), shape ``[n]``.
        B: Cost-surrogate gradients ``a_i`` as columns, shape ``[n, m]`` or ``[n]``.
        c: Constraint values ``J_C − d`` (the paper's ``b``), shape ``[m]`` or scalar.
        hvp_or_matrix: Fisher matrix ``[n, n]`` or a callable ``v → Hv``.
        delta: Trust-region size δ.
        projection: ``"kl"`` (``L = H``) or ``"l2"`` (``L = I``).
        cg_iterations: CG iterations per ``H⁻¹`` product (callable ``H``).
        cg_residual_tol: CG early-stopping tolerance on the squared residual.
        sweeps: Number of passes over the constraints (default 1 for ``m = 1``, 100
            otherwise).
        method: ``"cyclic"`` or ``"dykstra"`` (only matters for ``m > 1``).

    Returns:
        ``(x, info)``: the step (shape ``[n]``) and a :class:`PCPOInfo`.

    Raises:
        ValueError: On inconsistent shapes or unknown ``projection`` / ``method``.
    """
    if projection not in ("kl", "l2"):
        raise ValueError(f"projection must be 'kl' or 'l2', got {projection!r}")
    if method not in ("cyclic", "dykstra"):
        raise ValueError(f"method must be 'cyclic' or 'dykstra', got {method!r}")
    g, B, c = _prepare(g, B, c)
    dtype = g.dtype
    m = B.shape[1]
    if sweeps is None:
        sweeps = 1 if m == 1 else 100
    delta = jnp.asarray(delta, dtype)

    rhs = jnp.concatenate([g[:, None], B], axis=1) if projection == "kl" else g[:, None]
    sol, cg_res, matvec = _solve_many(hvp_or_matrix, rhs, cg_iterations, cg_residual_tol)
    v = sol[:, 0]
    Linv_B = sol[:, 1:] if projection == "kl" else B  # columns L⁻¹b_i
    q = jnp.dot(g, v)
    r = B.T @ v
    q_ok = q > 0
    step_scale = jnp.where(q_ok, jnp.sqrt(2.0 * delta / _safe(q, q_ok)), 0.0)
    x_half = step_scale * v
    den = jnp.sum(B * Linv_B, axis=0)  # b_iᵀL⁻¹b_i
    den_ok = den > 0
    den_safe = _safe(den, den_ok)

    def project(i: Array, state: tuple[Array, Array]) -> tuple[Array, Array]:
        # One half-space projection in the L-norm. For Dykstra the correction removed at the
        # previous visit of constraint i (κ_i L⁻¹b_i) is added back first; the
        # increment of each half-space is always a multiple of L⁻¹b_i, so a scalar suffices.
        x, coef = state
        j = i % m
        a, w = B[:, j], Linv_B[:, j]
        prev = coef[j] if method == "dykstra" else jnp.zeros((), dtype)
        y = x + prev * w
        t = jnp.where(den_ok[j], jnp.maximum((jnp.dot(a, y) + c[j]) / den_safe[j], 0.0), 0.0)
        x = y - t * w
        new = t if method == "dykstra" else coef[j] + t
        return x, coef.at[j].set(new)

    x, coef = jax.lax.fori_loop(0, sweeps * m, project, (x_half, jnp.zeros((m,), dtype)))
    # Total coefficients: x = x_½ − L⁻¹B·coef (true for both methods).
    Hx = matvec(x)
    info = PCPOInfo(
        q=q,
        r=r,
        step_scale=step_scale,
        projection_coef=coef,
        projection_denominator=den,
        constraint_before=c + B.T @ x_half,
        constraint_after=c + B.T @ x,
        projected=jnp.any(coef > 0),
        cg_residual=cg_res,
        predicted_kl=0.5 * jnp.dot(x, Hx),
        predicted_reward_gain=jnp.dot(g, x),
    )
    return x, info
