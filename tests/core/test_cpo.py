"""Tests of saferl.core.cpo against independent oracles (numpy closed forms and scipy solvers).

Random instances have an explicit positive-definite H (dimension 3-8) so that a generic
constrained solver (scipy SLSQP, several starts, tight tolerances) can solve the CPO QCQP
``max g^T x s.t. c + B^T x <= 0, 1/2 x^T H x <= delta`` independently of our dual formulas.
Instances of one shape are solved in a single jit(vmap(cpo_step)) call to keep the suite fast.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

from saferl.core.cpo import (
    CASE_DUAL_FEASIBLE,
    CASE_DUAL_INFEASIBLE,
    CASE_MULTI_RECOVERY,
    CASE_RECOVERY,
    CASE_TRPO_DEGENERATE,
    CASE_TRPO_FEASIBLE,
    cpo_step,
    pcpo_step,
)
from saferl.core.trust_region import fisher_vector_product

pytestmark = pytest.mark.usefixtures("enable_x64")  # float64 for this module (conftest.py)


_cpo = jax.jit(cpo_step, static_argnames=("method", "max_enumeration"))
_vmapped_cpo = jax.jit(jax.vmap(cpo_step))
_vmapped_cpo_enum = jax.jit(
    jax.vmap(lambda g, B, c, H, d: cpo_step(g, B, c, H, d, method="enumerate"))
)


def _to_numpy(tree):
    """One device-to-host transfer per leaf (indexing jax arrays eagerly is slow)."""
    return jax.tree_util.tree_map(np.asarray, tree)


def _batched_cpo(*args):
    return _to_numpy(_vmapped_cpo(*args))


def _batched_cpo_enum(*args):
    return _to_numpy(_vmapped_cpo_enum(*args))


# --------------------------------------------------------------------------------------------
# Instance generation and oracles
# --------------------------------------------------------------------------------------------


def _spd(rng: np.random.Generator, n: int) -> np.ndarray:
    A = rng.normal(size=(n, n))
    return A @ A.T / n + 0.2 * np.eye(n)


def _scalars(g, B, H):
    v = np.linalg.solve(H, g)
    W = np.linalg.solve(H, B)
    return g @ v, B.T @ v, B.T @ W, v, W


def _qcqp_oracle(g, B, c, H, delta, rng, starts: int = 4):
    """max g^T x s.t. c + B^T x <= 0, 1/2 x^T H x <= delta, by SLSQP from several starts."""
    n = g.shape[0]
    cons = [
        {"type": "ineq", "fun": lambda x: -(c + B.T @ x), "jac": lambda x: -B.T},
        {"type": "ineq", "fun": lambda x: delta - 0.5 * x @ H @ x, "jac": lambda x: -(H @ x)},
    ]
    best = None
    scale = np.sqrt(2 * delta / np.trace(H) * n)
    for k in range(starts):
        x0 = np.zeros(n) if k == 0 else scale * rng.normal(size=n)
        res = minimize(
            lambda x: -g @ x,
            x0,
            jac=lambda x: -g,
            constraints=cons,
            method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 1000},
        )
        x = res.x
        viol = max(np.max(c + B.T @ x), 0.5 * x @ H @ x - delta)
        if viol < 1e-10 and (best is None or g @ x > g @ best):
            best = x
    return best


def _min_norm_oracle(B, c, H):
    """min 1/2 x^T H x s.t. c + B^T x <= 0 (the H-norm distance to the linearised feasible set)."""
    n = B.shape[0]
    res = minimize(
        lambda x: 0.5 * x @ H @ x,
        np.zeros(n),
        jac=lambda x: H @ x,
        constraints=[{"type": "ineq", "fun": lambda x: -(c + B.T @ x), "jac": lambda x: -B.T}],
        method="SLSQP",
        options={"ftol": 1e-16, "maxiter": 1000},
    )
    assert np.max(c + B.T @ res.x) < 1e-9
    return res.x


def _expected_case_single(q, r, s, c, delta, b_sq):
    """The table of docs/algorithms/trust-region.md (the CPO case table), evaluated with numpy."""
    Bm = 2 * delta - c**2 / s
    if b_sq <= 1e-8 and c < 0:
        return CASE_TRPO_DEGENERATE
    if c < 0:
        return CASE_TRPO_FEASIBLE if Bm < 0 else CASE_DUAL_FEASIBLE
    return CASE_DUAL_INFEASIBLE if Bm >= 0 else CASE_RECOVERY


def _assert_close_to_oracle(x, x_ref, g):
    x, x_ref = np.asarray(x), np.asarray(x_ref)
    obj, obj_ref = g @ x, g @ x_ref
    assert abs(obj - obj_ref) <= 1e-5 * max(abs(obj_ref), 1e-8), (obj, obj_ref)
    assert np.linalg.norm(x - x_ref) <= 1e-5 * max(np.linalg.norm(x_ref), 1e-8)


def _single_instances(rng, n: int, kind: str, count: int):
    """Random single-constraint instances of a given kind (see test docstring)."""
    gs, Bs, cs, Hs, ds = [], [], [], [], []
    for _ in range(count):
        H = _spd(rng, n)
        g = rng.normal(size=n)
        b = rng.normal(size=n)
        delta = rng.uniform(0.005, 0.05)
        if kind == "degenerate":
            b = 1e-6 * b
        s = b @ np.linalg.solve(H, b)
        radius = np.sqrt(2 * delta * s)  # |c| at which the plane touches the region
        alpha = {
            "feasible_cut": rng.uniform(0.05, 0.95),
            "plane_outside": rng.uniform(1.05, 3.0),
            "recoverable": rng.uniform(0.05, 0.95),
            "recovery": rng.uniform(1.05, 3.0),
        }.get(kind, 0.0)
        sign = 1.0 if kind in ("recoverable", "recovery") else -1.0
        c = sign * alpha * radius if kind != "degenerate" else -rng.uniform(0.1, 1.0)
        gs.append(g), Bs.append(b[:, None]), cs.append([c]), Hs.append(H), ds.append(delta)
    return tuple(np.asarray(a) for a in (gs, Bs, cs, Hs, ds))


def _multi_instances(rng, n: int, m: int, count: int):
    """Random m-constraint instances, with the oracle's feasibility class, away from ties."""
    out = []
    while len(out) < count:
        H = _spd(rng, n)
        g = rng.normal(size=n)
        B = rng.normal(size=(n, m))
        delta = rng.uniform(0.005, 0.05)
        s = np.diag(B.T @ np.linalg.solve(H, B))
        radius = np.sqrt(2 * delta * s)
        if rng.uniform() < 0.15:
            alpha = -rng.uniform(1.05, 3.0, size=m)  # every plane outside: case 3
        else:
            alpha = rng.uniform(-1.5, 1.2, size=m)
        c = alpha * radius
        if np.any(np.abs(np.abs(alpha) - 1) < 0.02):
            continue
        x_min = _min_norm_oracle(B, c, H)
        p_min = 0.5 * x_min @ H @ x_min
        if abs(p_min / delta - 1) < 1e-2:  # ambiguous feasibility: resample
            continue
        out.append((g, B, c, H, delta, x_min, p_min))
    return out


def _expected_case_multi(c, s_diag, delta, p_min):
    if p_min > delta:
        return CASE_MULTI_RECOVERY
    if np.all(c < 0):
        return CASE_TRPO_FEASIBLE if np.all(2 * delta - c**2 / s_diag < 0) else CASE_DUAL_FEASIBLE
    return CASE_DUAL_INFEASIBLE


# --------------------------------------------------------------------------------------------
# Instance pools, solved once per module (one compilation per shape)
# --------------------------------------------------------------------------------------------

_SINGLE_KINDS = ("feasible_cut", "plane_outside", "recoverable", "degenerate", "recovery")
_SINGLE_DIMS = (3, 4, 5, 6, 7, 8)


@pytest.fixture(scope="module")
def single_pool(enable_x64):
    """n -> (inputs, x, info) for 8 instances of every kind, dimensions 3-8 (240 in all)."""
    rng = np.random.default_rng(0)
    pool = {}
    for n in _SINGLE_DIMS:
        parts = [_single_instances(rng, n, kind, 8) for kind in _SINGLE_KINDS]
        inputs = tuple(np.concatenate(p) for p in zip(*parts, strict=True))
        pool[n] = (inputs, *_batched_cpo(*inputs))
    return pool


@pytest.fixture(scope="module")
def multi_pool(enable_x64):
    """(n, m) -> (instances, x, info) for m = 2, 3 (with the oracle's min-norm points)."""
    rng = np.random.default_rng(1)
    pool = {}
    for m in (2, 3):
        for n in (m + 1, 8):
            inst = _multi_instances(rng, n, m, 32)
            inputs = tuple(np.asarray([t[k] for t in inst]) for k in range(5))
            pool[(n, m)] = (inst, *_batched_cpo(*inputs))
    return pool


# --------------------------------------------------------------------------------------------
# CPO, one constraint
# --------------------------------------------------------------------------------------------


def test_cpo_single_constraint_matches_qcqp_oracle(single_pool) -> None:
    """Cases 1-4 against SLSQP, over dimensions 3-8 and all the feasible kinds."""
    rng = np.random.default_rng(2)
    seen = {"case": [], "c_neg_empty_a": 0, "c_pos_empty_b": 0, "active": 0, "inactive": 0}
    for (g, B, c, H, d), xs, info in single_pool.values():
        for i in range(g.shape[0]):
            q, r, S, v, w = _scalars(g[i], B[i], H[i])
            r, s, ci = r[0], S[0, 0], c[i, 0]
            expected = _expected_case_single(q, r, s, ci, d[i], B[i, :, 0] @ B[i, :, 0])
            assert int(info.case[i]) == expected
            seen["case"].append(expected)
            if expected == CASE_RECOVERY:
                continue  # test_cpo_single_recovery_formula
            np.testing.assert_allclose(info.q[i], q, rtol=1e-10)
            np.testing.assert_allclose(info.r[i, 0], r, rtol=1e-10, atol=1e-14)
            np.testing.assert_allclose(info.s[i, 0, 0], s, rtol=1e-10, atol=1e-20)
            assert float(info.lam[i]) > 0 and float(info.nu[i, 0]) >= 0
            assert not bool(info.recovery[i]) and bool(info.feasible[i])
            x_ref = _qcqp_oracle(g[i], B[i], c[i], H[i], d[i], rng)
            _assert_close_to_oracle(xs[i], x_ref, g[i])
            # The dual certificate reproduces the step: x = (1/lam)(v - nu w).
            lam, nu = float(info.lam[i]), float(info.nu[i, 0])
            np.testing.assert_allclose(xs[i], (v - nu * w[:, 0]) / lam, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(info.predicted_kl[i], 0.5 * xs[i] @ H[i] @ xs[i], rtol=1e-8)
            if expected in (CASE_DUAL_FEASIBLE, CASE_DUAL_INFEASIBLE):
                seen["active" if nu > 0 else "inactive"] += 1
                seen["c_neg_empty_a"] += ci < 0 and r <= 0  # lam_mid <= 0: piece a empty
                seen["c_pos_empty_b"] += ci > 0 and r >= 0  # lam_mid <= 0: piece b empty
    assert set(seen["case"]) == {0, 1, 2, 3, 4}
    # Both dual pieces, and the empty-piece situations, were exercised.
    assert seen["active"] > 20 and seen["inactive"] > 5
    assert seen["c_neg_empty_a"] > 5 and seen["c_pos_empty_b"] > 5


def test_cpo_single_recovery_formula(single_pool) -> None:
    """Case 0: x = -sqrt(2 delta / s) w, the minimiser of b^T x within the region."""
    n_checked = 0
    for n, ((_, B, c, H, d), xs, info) in single_pool.items():
        for i in np.flatnonzero(info.case == CASE_RECOVERY):
            n_checked += 1
            b = B[i, :, 0]
            w = np.linalg.solve(H[i], b)
            s = b @ w
            assert bool(info.recovery[i]) and not bool(info.feasible[i])
            np.testing.assert_allclose(xs[i], -np.sqrt(2 * d[i] / s) * w, rtol=1e-10, atol=1e-14)
            np.testing.assert_allclose(info.nu[i, 0], np.sqrt(2 * d[i] / s), rtol=1e-10)
            assert float(info.lam[i]) == 0.0
            # Largest possible decrease of the linearised cost inside the trust region.
            res = minimize(
                lambda x, b=b: b @ x,
                np.zeros(n),
                jac=lambda x, b=b: b,
                constraints=[
                    {
                        "type": "ineq",
                        "fun": lambda x, Hi=H[i], di=d[i]: di - 0.5 * x @ Hi @ x,
                        "jac": lambda x, Hi=H[i]: -(Hi @ x),
                    }
                ],
                method="SLSQP",
                options={"ftol": 1e-15, "maxiter": 500},
            )
            np.testing.assert_allclose(b @ xs[i], res.fun, rtol=1e-6)
            np.testing.assert_allclose(0.5 * xs[i] @ H[i] @ xs[i], d[i], rtol=1e-10)
            assert c[i, 0] + b @ xs[i] < c[i, 0]
    assert n_checked == 8 * len(_SINGLE_DIMS)


def test_cpo_empty_piece_regression() -> None:
    """lam_mid = -r/c <= 0: clamping onto [lam_mid, 0] would give a negative lambda."""
    H = np.eye(3)
    delta = 0.5  # trust region: ||x|| <= 1
    g = np.array([1.0, 0.0, 0.0])
    # c < 0, r = g^T H^{-1} b < 0: the TRPO step lowers the cost, piece a is empty.
    x, info = _cpo(g, np.array([-1.0, 1.0, 0.0]), -0.5, H, delta)
    assert int(info.case) == CASE_DUAL_FEASIBLE
    np.testing.assert_allclose(x, [1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(info.lam, 1.0)
    np.testing.assert_allclose(info.nu, [0.0])
    # c > 0, r > 0: piece b is empty; the best point of the region on the feasible side.
    b = np.array([1.0, 1.0, 0.0]) / np.sqrt(2)
    x, info = _cpo(g, b, 0.5, H, delta)
    assert int(info.case) == CASE_DUAL_INFEASIBLE and float(info.lam) > 0
    # Optimum on the circle with b^T x = -0.5: x = -0.5 b + t b_perp, t = sqrt(1 - 0.25).
    b_perp = np.array([1.0, -1.0, 0.0]) / np.sqrt(2)
    np.testing.assert_allclose(x, -0.5 * b + np.sqrt(0.75) * b_perp, atol=1e-12)


def test_cpo_sign_convention_by_hand() -> None:
    """Reward and cost gradients aligned, H = I: the step ascends the reward up to the slack."""
    H = np.eye(3)
    g = np.array([2.0, 0.0, 0.0])
    b = np.array([1.0, 0.0, 0.0])
    delta = 0.5  # ||x|| <= 1
    x, info = _cpo(g, b, -0.3, H, delta)  # slack 0.3 < 1: constraint active
    np.testing.assert_allclose(x, [0.3, 0.0, 0.0], atol=1e-12)
    assert int(info.case) == CASE_DUAL_FEASIBLE
    x, info = _cpo(g, b, -3.0, H, delta)  # plane outside the region: TRPO
    np.testing.assert_allclose(x, [1.0, 0.0, 0.0], atol=1e-12)
    assert int(info.case) == CASE_TRPO_FEASIBLE
    x, info = _cpo(g, b, 3.0, H, delta)  # unreachable: recover against the cost gradient
    np.testing.assert_allclose(x, [-1.0, 0.0, 0.0], atol=1e-12)
    assert int(info.case) == CASE_RECOVERY
    x, info = _cpo(g, b, 0.4, H, delta)  # violated but reachable
    np.testing.assert_allclose(x, [-0.4, 0.0, 0.0], atol=1e-12)
    assert int(info.case) == CASE_DUAL_INFEASIBLE


def test_cpo_degenerate_inputs_are_finite() -> None:
    H = np.diag([1.0, 2.0, 4.0])
    g = np.array([1.0, -1.0, 0.5])
    # b exactly zero: case 4 for c < 0; no NaN for c >= 0.
    for c, case in ((-1.0, CASE_TRPO_DEGENERATE), (0.0, CASE_DUAL_INFEASIBLE), (1.0, 0)):
        x, info = _cpo(g, np.zeros(3), c, H, 0.01)
        assert int(info.case) == case
        assert np.all(np.isfinite(np.asarray(x))) and np.isfinite(float(info.lam))
    # g = 0, violated but reachable constraint: the min-norm feasible point.
    b = np.array([1.0, 0.0, 0.0])
    x, info = _cpo(np.zeros(3), b, 0.05, H, 0.01)
    np.testing.assert_allclose(x, [-0.05, 0.0, 0.0], atol=1e-12)
    x, info = _cpo(np.zeros(3), np.stack([b, b[::-1]], 1), [0.05, -1.0], H, 0.01)
    np.testing.assert_allclose(x, [-0.05, 0.0, 0.0], atol=1e-10)
    x, info = _cpo(np.zeros(3), b, -0.05, H, 0.01)
    np.testing.assert_allclose(x, 0.0, atol=1e-14)


def test_enumeration_reproduces_closed_form_for_one_constraint(single_pool) -> None:
    (g, B, c, H, d), x1, i1 = single_pool[5]
    x2, i2 = _batched_cpo_enum(g, B, c, H, d)
    np.testing.assert_array_equal(i1.case, i2.case)
    np.testing.assert_allclose(x1, x2, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(i1.lam, i2.lam, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(i1.nu, i2.nu, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("m", [2, 3])
def test_cpo_multi_constraint_matches_oracle(m: int, multi_pool) -> None:
    """Cases 1, 2, 3 against SLSQP; case 5 against the scipy min-norm point, m = 2, 3."""
    rng = np.random.default_rng(10 + m)
    counts: dict[int, int] = {}
    for (_, mm), (inst, xs, info) in multi_pool.items():
        if mm != m:
            continue
        g, B, c, H, d = (np.asarray([t[k] for t in inst]) for k in range(5))
        for i, (_, _, _, _, _, x_min, p_min) in enumerate(inst):
            _, _, S, v, W = _scalars(g[i], B[i], H[i])
            expected = _expected_case_multi(c[i], np.diag(S), d[i], p_min)
            assert int(info.case[i]) == expected, (i, expected, int(info.case[i]))
            counts[expected] = counts.get(expected, 0) + 1
            np.testing.assert_allclose(info.min_kl_to_feasible[i], p_min, rtol=1e-6, atol=1e-12)
            x = np.asarray(xs[i])
            # Always on the trust-region boundary (linear objective / recovery scaling).
            np.testing.assert_allclose(0.5 * x @ H[i] @ x, d[i], rtol=1e-8)
            if expected == CASE_MULTI_RECOVERY:
                assert bool(info.recovery[i]) and not bool(info.feasible[i])
                # The nearest feasible point in the H-norm, scaled onto the region boundary.
                x_ref = np.sqrt(d[i] / p_min) * x_min
                np.testing.assert_allclose(x, x_ref, rtol=1e-5, atol=1e-7 * np.linalg.norm(x_ref))
                # Satisfied constraints stay satisfied; violated ones strictly decrease.
                after = c[i] + B[i].T @ x
                sat = c[i] <= 0
                assert np.all(after[sat] <= 1e-12)
                assert np.all(after[~sat] < c[i][~sat])
                continue
            assert float(info.lam[i]) > 0 and np.all(np.asarray(info.nu[i]) >= 0)
            x_ref = _qcqp_oracle(g[i], B[i], c[i], H[i], d[i], rng)
            _assert_close_to_oracle(x, x_ref, g[i])
            # KKT certificate: x = (1/lam) H^{-1}(g - B nu), complementary slackness.
            lam, nu = float(info.lam[i]), np.asarray(info.nu[i])
            np.testing.assert_allclose(x, (v - W @ nu) / lam, rtol=1e-8, atol=1e-12)
            slack = c[i] + B[i].T @ x
            assert np.all(np.abs(nu * slack) <= 1e-8 * (1 + np.abs(nu)))
            np.testing.assert_allclose(info.predicted_constraint[i], slack, atol=1e-10)
    assert set(counts) == {1, 2, 3, 5}, counts


def test_cpo_multi_degenerate_and_dropped() -> None:
    rng = np.random.default_rng(4)
    n = 3
    H = _spd(rng, n)
    g = rng.normal(size=n)
    B = 1e-6 * rng.normal(size=(n, 2))
    x, info = _cpo(g, B, [-1.0, -0.5], H, 0.01)
    v = np.linalg.solve(H, g)
    assert int(info.case) == CASE_TRPO_DEGENERATE
    np.testing.assert_allclose(x, np.sqrt(0.02 / (g @ v)) * v, rtol=1e-10)
    # One degenerate (dropped) column plus a real one: same answer as the real one alone.
    B2 = np.stack([B[:, 0], rng.normal(size=n)], 1)
    for c2 in (-0.01, 0.01):
        x2, info2 = _cpo(g, B2, [-1.0, c2], H, 0.01)
        x1, info1 = _cpo(g, B2[:, 1], c2, H, 0.01)
        np.testing.assert_allclose(x2, x1, rtol=1e-9, atol=1e-14)
        assert int(info2.case) == int(info1.case)


def test_cpo_multi_too_many_constraints_raises() -> None:
    with pytest.raises(ValueError):
        cpo_step(np.ones(3), np.ones((3, 4)), np.ones(4), np.eye(3), 0.01, max_enumeration=3)
    with pytest.raises(ValueError):
        cpo_step(np.ones(3), np.ones((3, 2)), np.ones(2), np.eye(3), 0.01, method="analytic")


# --------------------------------------------------------------------------------------------
# Hessian-vector products, jit/vmap, float32
# --------------------------------------------------------------------------------------------


def test_cpo_with_hvp_callable_matches_matrix(single_pool, multi_pool) -> None:
    """H as a product callable (CG) gives the explicit-matrix answer; CG exact in n steps."""

    @jax.jit
    @jax.vmap
    def with_cg(g, B, c, H, d):
        n = g.shape[0]
        return cpo_step(g, B, c, lambda v: H @ v, d, cg_iterations=3 * n, cg_residual_tol=1e-30)

    inst, x_multi, info_multi = multi_pool[(4, 3)]
    multi_inputs = tuple(np.asarray([t[k] for t in inst]) for k in range(5))
    for (g, B, c, H, d), x_m, info_m in (single_pool[6], (multi_inputs, x_multi, info_multi)):
        x_f, info_f = _to_numpy(with_cg(g, B, c, H, d))
        np.testing.assert_array_equal(info_f.case, info_m.case)
        np.testing.assert_allclose(x_f, x_m, rtol=1e-7, atol=1e-10)
        assert np.all(info_f.cg_residual < 1e-8)


def test_cpo_with_fisher_vector_product_of_a_policy() -> None:
    """cpo_step driven by fisher_vector_product agrees with the explicit-Hessian answer."""
    from jax.flatten_util import ravel_pytree

    rng = np.random.default_rng(6)
    params = {"w": rng.normal(size=(3, 2)), "log_std": np.zeros(2)}
    states = rng.normal(size=(50, 3))

    def policy(p):
        return jnp.tanh(states @ p["w"]), p["log_std"]

    mu_old, ls_old = jax.lax.stop_gradient(policy(params))

    def kl_fn(p):
        mu, ls = policy(p)
        var_old, var = jnp.exp(2 * ls_old), jnp.exp(2 * ls)
        kl = ls - ls_old + (var_old + (mu_old - mu) ** 2) / (2 * var) - 0.5
        return jnp.mean(jnp.sum(kl, -1))

    flat, unravel = ravel_pytree(params)
    n = flat.shape[0]
    H = np.asarray(jax.jit(jax.hessian(lambda x: kl_fn(unravel(x))))(flat)) + 1e-3 * np.eye(n)
    fvp = fisher_vector_product(kl_fn, params, damping=1e-3)
    g, B = rng.normal(size=n), rng.normal(size=(n, 2))
    c = np.array([0.01, -0.02])
    x_m, info_m = _cpo(g, B, c, H, 0.01)
    x_f, info_f = jax.jit(
        lambda g, B, c: cpo_step(g, B, c, fvp, 0.01, cg_iterations=4 * n, cg_residual_tol=1e-30)
    )(g, B, c)
    np.testing.assert_allclose(x_f, x_m, rtol=1e-6, atol=1e-9)
    assert int(info_f.case) == int(info_m.case)


def test_cpo_vmap_equals_loop(multi_pool) -> None:
    inst, xs, info = multi_pool[(8, 2)]
    g, B, c, H, d = (np.asarray([t[k] for t in inst]) for k in range(5))
    for i in range(12):
        x_i, info_i = _to_numpy(_cpo(g[i], B[i], c[i], H[i], d[i]))
        np.testing.assert_allclose(xs[i], x_i, rtol=1e-10, atol=1e-14)
        for field in ("case", "lam", "nu", "q", "r", "s", "min_kl_to_feasible"):
            np.testing.assert_allclose(
                getattr(info, field)[i], getattr(info_i, field), rtol=1e-10, atol=1e-14
            )


def test_cpo_float32_inputs(multi_pool) -> None:
    inst, x64, i64 = multi_pool[(8, 2)]
    f32 = [np.asarray([t[k] for t in inst], dtype=np.float32) for k in range(5)]
    x32, i32 = _batched_cpo(*f32)
    assert x32.dtype == np.float32 and i32.lam.dtype == np.float32
    assert np.all(np.isfinite(x32))
    np.testing.assert_array_equal(i32.case, i64.case)
    np.testing.assert_allclose(x32, x64, rtol=2e-3, atol=2e-3 * np.abs(x64).max())


# --------------------------------------------------------------------------------------------
# PCPO
# --------------------------------------------------------------------------------------------


def _pcpo_numpy(g, b, c, H, delta, projection):
    """docs/algorithms/trust-region.md (PCPO), one constraint, with numpy."""
    v = np.linalg.solve(H, g)
    q = g @ v
    x_half = np.sqrt(2 * delta / q) * v
    Linv_b = np.linalg.solve(H, b) if projection == "kl" else b
    t = max(0.0, (np.sqrt(2 * delta / q) * (b @ v) + c) / (b @ Linv_b))
    return x_half - t * Linv_b, x_half


def _projection_qp(x_half, B, c, L):
    """argmin_x 1/2 (x - x_half)^T L (x - x_half) s.t. c + B^T x <= 0, by SLSQP."""
    res = minimize(
        lambda x: 0.5 * (x - x_half) @ L @ (x - x_half),
        x_half,
        jac=lambda x: L @ (x - x_half),
        constraints=[{"type": "ineq", "fun": lambda x: -(c + B.T @ x), "jac": lambda x: -B.T}],
        method="SLSQP",
        options={"ftol": 1e-16, "maxiter": 1000},
    )
    return res.x


@pytest.mark.parametrize("projection", ["kl", "l2"])
def test_pcpo_single_constraint_closed_form_and_qp(projection: str) -> None:
    rng = np.random.default_rng(20)
    step = jax.jit(jax.vmap(lambda g, B, c, H, d: pcpo_step(g, B, c, H, d, projection)))
    n_projected = 0
    for n in (3, 8):
        parts = [_single_instances(rng, n, k, 8) for k in ("feasible_cut", "recoverable")]
        parts.append(_single_instances(rng, n, "plane_outside", 4))
        g, B, c, H, d = (np.concatenate(p) for p in zip(*parts, strict=True))
        xs, info = step(g, B, c, H, d)
        for i in range(g.shape[0]):
            x_ref, x_half = _pcpo_numpy(g[i], B[i, :, 0], c[i, 0], H[i], d[i], projection)
            np.testing.assert_allclose(xs[i], x_ref, rtol=1e-9, atol=1e-12)
            L = H[i] if projection == "kl" else np.eye(n)
            x_qp = _projection_qp(x_half, B[i], c[i], L)
            np.testing.assert_allclose(xs[i], x_qp, rtol=1e-6, atol=1e-8)
            assert float(info.constraint_after[i, 0]) <= 1e-10
            n_projected += bool(info.projected[i])
            np.testing.assert_allclose(info.predicted_kl[i], 0.5 * xs[i] @ H[i] @ xs[i], rtol=1e-9)
    assert 10 < n_projected < 60  # both projected and unprojected steps occurred


@pytest.mark.parametrize("projection", ["kl", "l2"])
def test_pcpo_multi_constraint(projection: str) -> None:
    """Dykstra = exact L-projection onto the intersection; cyclic = a feasible point."""
    rng = np.random.default_rng(21)
    n, m = 6, 3
    dyk = jax.jit(
        lambda g, B, c, H: pcpo_step(g, B, c, H, 0.02, projection, method="dykstra", sweeps=2000)
    )
    cyc = jax.jit(lambda g, B, c, H: pcpo_step(g, B, c, H, 0.02, projection))
    for _ in range(6):
        H = _spd(rng, n)
        g = rng.normal(size=n)
        B = rng.normal(size=(n, m))
        c = rng.uniform(-0.1, 0.1, size=m)
        x_d, info_d = dyk(g, B, c, H)
        x_c, info_c = cyc(g, B, c, H)
        v = np.linalg.solve(H, g)
        x_half = np.sqrt(0.04 / (g @ v)) * v
        L = H if projection == "kl" else np.eye(n)
        np.testing.assert_allclose(x_d, _projection_qp(x_half, B, c, L), rtol=1e-5, atol=1e-7)
        assert np.all(np.asarray(c + B.T @ np.asarray(x_c)) <= 1e-6)
        np.testing.assert_allclose(info_c.constraint_before, c + B.T @ x_half, atol=1e-12)
        # Both report x = x_half - L^{-1} B coef.
        Linv_B = np.linalg.solve(H, B) if projection == "kl" else B
        for x, info in ((x_d, info_d), (x_c, info_c)):
            coef = np.asarray(info.projection_coef)
            assert np.all(coef >= 0)
            np.testing.assert_allclose(x, x_half - Linv_B @ coef, rtol=1e-8, atol=1e-10)


def test_pcpo_hvp_callable_matches_matrix() -> None:
    rng = np.random.default_rng(22)
    n = 7
    H = _spd(rng, n)
    g, B = rng.normal(size=n), rng.normal(size=(n, 2))
    c = np.array([0.05, -0.01])
    for projection in ("kl", "l2"):
        x_m, _ = pcpo_step(g, B, c, H, 0.01, projection)
        x_f, info = jax.jit(
            lambda g, B, c, p=projection: pcpo_step(
                g, B, c, lambda v: H @ v, 0.01, p, cg_iterations=3 * n
            )
        )(g, B, c)
        np.testing.assert_allclose(x_f, x_m, rtol=1e-7, atol=1e-10)
        assert float(info.cg_residual) < 1e-8
    with pytest.raises(ValueError):
        pcpo_step(g, B, c, H, 0.01, "l1")
