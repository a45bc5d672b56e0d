"""Tests of saferl.core.trust_region: Fisher-vector products, CG and the line search."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from saferl.core.trust_region import (
    backtracking_line_search,
    conjugate_gradient,
    fisher_vector_product,
    trust_region_accept,
)

pytestmark = pytest.mark.usefixtures("enable_x64")  # float64 for this module (conftest.py)


# --------------------------------------------------------------------------------------------
# A tiny Gaussian MLP policy and its mean KL to a fixed old policy
# --------------------------------------------------------------------------------------------


def _init_mlp(seed: int, obs: int = 3, hidden: int = 5, act: int = 2) -> dict:
    # numpy initialisation: avoids compiling one XLA op per eager jax.random call.
    rng = np.random.default_rng(seed)
    return {
        "l1": {"w": rng.normal(size=(obs, hidden)) / np.sqrt(obs), "b": np.zeros(hidden)},
        "l2": {"w": rng.normal(size=(hidden, act)) / np.sqrt(hidden), "b": np.zeros(act)},
        "log_std": 0.1 * rng.normal(size=act),
    }


def _mlp_policy(params: dict, states: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = jnp.tanh(states @ params["l1"]["w"] + params["l1"]["b"])
    mu = h @ params["l2"]["w"] + params["l2"]["b"]
    return mu, jnp.broadcast_to(params["log_std"], mu.shape)


def _gaussian_kl(mu0, ls0, mu1, ls1):
    """KL(N(mu0, exp(ls0)^2) || N(mu1, exp(ls1)^2)) summed over action dimensions."""
    var0, var1 = jnp.exp(2 * ls0), jnp.exp(2 * ls1)
    return jnp.sum(ls1 - ls0 + (var0 + (mu0 - mu1) ** 2) / (2 * var1) - 0.5, axis=-1)


def _make_kl_fn(policy, old_params, states, reverse: bool = False):
    mu_old, ls_old = jax.lax.stop_gradient(policy(old_params, states))

    def kl_fn(params):
        mu, ls = policy(params, states)
        if reverse:
            return jnp.mean(_gaussian_kl(mu, ls, mu_old, ls_old))
        return jnp.mean(_gaussian_kl(mu_old, ls_old, mu, ls))

    return kl_fn


def _explicit_hessian(kl_fn, params) -> np.ndarray:
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.jit(jax.hessian(lambda x: kl_fn(unravel(x))))(flat))


@pytest.mark.parametrize("at_old", [True, False])
def test_fvp_matches_explicit_hessian(at_old: bool) -> None:
    old = _init_mlp(0)
    states = np.random.default_rng(1).normal(size=(64, 3))
    kl_fn = _make_kl_fn(_mlp_policy, old, states)
    params = old
    if not at_old:
        flat, unravel = ravel_pytree(old)
        params = unravel(flat + 0.1 * np.random.default_rng(2).normal(size=flat.shape))
    H = _explicit_hessian(kl_fn, params)
    n = H.shape[0]
    vs = np.random.default_rng(0).normal(size=(4, n))
    for linearize in (False, True):

        @jax.jit
        def fvp_batch(V, damping, linearize=linearize):
            return jax.vmap(fisher_vector_product(kl_fn, params, damping, linearize=linearize))(V)

        for damping in (0.0, 0.1):
            expected = vs @ (H + damping * np.eye(n)).T
            np.testing.assert_allclose(fvp_batch(vs, damping), expected, atol=1e-12)
    if at_old:
        # At the old parameters the Hessian is the Fisher matrix: PSD, and the same for both
        # KL directions.
        assert np.linalg.eigvalsh(H).min() > -1e-12
        H_rev = _explicit_hessian(_make_kl_fn(_mlp_policy, old, states, reverse=True), params)
        np.testing.assert_allclose(H, H_rev, atol=1e-12)


def test_fvp_flax_linen_policy() -> None:
    class Policy(nn.Module):
        @nn.compact
        def __call__(self, s):
            h = nn.tanh(nn.Dense(6)(s))
            mu = nn.Dense(2)(h)
            log_std = self.param("log_std", nn.initializers.zeros, (2,))
            return mu, jnp.broadcast_to(log_std, mu.shape)

    module = Policy()
    states = np.random.default_rng(3).normal(size=(32, 4))
    params = jax.tree_util.tree_map(
        lambda p: p.astype(jnp.float64), module.init(jax.random.PRNGKey(4), states)
    )
    kl_fn = _make_kl_fn(module.apply, params, states)
    H = _explicit_hessian(kl_fn, params)
    fvp = jax.jit(fisher_vector_product(kl_fn, params, 0.01))
    v = np.random.default_rng(1).normal(size=H.shape[0])
    np.testing.assert_allclose(fvp(v), H @ v + 0.01 * v, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Conjugate gradient
# --------------------------------------------------------------------------------------------


def _random_spd(rng: np.random.Generator, n: int, cond: float = 1e3) -> np.ndarray:
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return (Q * np.logspace(0, np.log10(cond), n)) @ Q.T


@pytest.mark.parametrize("n", [5, 12, 25])
def test_cg_matches_direct_solve(n: int) -> None:
    rng = np.random.default_rng(n)
    cg = jax.jit(
        lambda A, b: conjugate_gradient(lambda v: A @ v, b, iterations=3 * n, residual_tol=1e-28)
    )
    for _ in range(5):
        A = _random_spd(rng, n, cond=1e2)
        b = rng.normal(size=n)
        x, res = cg(A, b)
        x_ref = np.linalg.solve(A, b)
        np.testing.assert_allclose(x, x_ref, rtol=1e-8, atol=1e-10)
        assert float(res) < 1e-9
        np.testing.assert_allclose(
            res, np.linalg.norm(A @ np.asarray(x) - b), rtol=1e-6, atol=1e-14
        )


def test_cg_truncated_reports_true_residual_and_vmaps() -> None:
    rng = np.random.default_rng(7)
    n, batch = 30, 6
    As = np.stack([_random_spd(rng, n, cond=1e4) for _ in range(batch)])
    bs = rng.normal(size=(batch, n))

    def solve(A, b):
        return conjugate_gradient(lambda v: A @ v, b, iterations=5)

    xs, res = jax.jit(jax.vmap(solve))(As, bs)
    solve_one = jax.jit(solve)
    for i in range(batch):
        x_i, res_i = solve_one(As[i], bs[i])
        np.testing.assert_allclose(xs[i], x_i, rtol=1e-10, atol=1e-12)
        true_res = np.linalg.norm(As[i] @ np.asarray(xs[i]) - bs[i])
        np.testing.assert_allclose(res[i], true_res, rtol=1e-8)
        np.testing.assert_allclose(res_i, true_res, rtol=1e-8)
        assert true_res > 1e-6  # 5 iterations cannot solve a 30-dim ill-conditioned system
        # CG minimises the A-norm error over the Krylov space: it beats x = 0.
        err = np.asarray(xs[i]) - np.linalg.solve(As[i], bs[i])
        x_star = np.linalg.solve(As[i], bs[i])
        assert err @ As[i] @ err < x_star @ As[i] @ x_star


def test_cg_zero_rhs_and_early_stop() -> None:
    A = np.diag([1.0, 2.0, 3.0])
    x, res = conjugate_gradient(lambda v: A @ v, jnp.zeros(3))
    assert np.all(np.asarray(x) == 0) and float(res) == 0
    # Diagonal with 3 distinct eigenvalues: exact after 3 iterations, stops early after that.
    x, res = jax.jit(lambda b: conjugate_gradient(lambda v: A @ v, b, iterations=50))(jnp.ones(3))
    np.testing.assert_allclose(x, [1.0, 0.5, 1.0 / 3.0], rtol=1e-12)
    assert float(res) < 1e-10


def test_cg_float32() -> None:
    rng = np.random.default_rng(3)
    A = _random_spd(rng, 8, cond=10).astype(np.float32)
    b = rng.normal(size=8).astype(np.float32)
    x, _ = conjugate_gradient(lambda v: A @ v, jnp.asarray(b), iterations=20)
    assert x.dtype == jnp.float32
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Line search
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("parallel", [False, True])
def test_line_search_first_accepted(parallel: bool) -> None:
    def evaluate(frac):
        return frac <= 0.5, {"frac": frac, "twice": 2 * frac}

    res = jax.jit(
        lambda: backtracking_line_search(evaluate, ratio=0.8, max_backtracks=15, parallel=parallel)
    )()
    # 0.8^3 = 0.512 > 0.5 >= 0.8^4 = 0.4096.
    np.testing.assert_allclose(res.fraction, 0.8**4)
    assert int(res.n_backtracks) == 4 and bool(res.accepted)
    np.testing.assert_allclose(res.metrics["frac"], 0.8**4)
    np.testing.assert_allclose(res.metrics["twice"], 2 * 0.8**4)

    # Full step accepted immediately; plain boolean evaluate.
    res = backtracking_line_search(lambda f: f > 0, parallel=parallel)
    assert float(res.fraction) == 1.0 and int(res.n_backtracks) == 0

    # Nothing accepted: fraction 0, all candidates counted, metrics of the smallest tried.
    res = backtracking_line_search(
        lambda f: (f < 0, f), ratio=0.5, max_backtracks=6, parallel=parallel
    )
    assert float(res.fraction) == 0.0 and int(res.n_backtracks) == 6
    assert not bool(res.accepted)
    np.testing.assert_allclose(res.metrics, 0.5**5)


@pytest.mark.parametrize("parallel", [False, True])
def test_line_search_with_full_step(parallel: bool) -> None:
    full = {"a": jnp.array([1.0, -2.0]), "b": jnp.array(4.0)}

    def evaluate(frac, step):
        # Accept once the step's "b" entry is at most 2 (fraction <= 0.5).
        return step["b"] <= 2.0, jnp.sum(step["a"])

    res = jax.jit(lambda s: backtracking_line_search(evaluate, s, parallel=parallel))(full)
    np.testing.assert_allclose(res.fraction, 0.8**4)
    np.testing.assert_allclose(res.step["a"], 0.8**4 * np.array([1.0, -2.0]))
    np.testing.assert_allclose(res.step["b"], 0.8**4 * 4.0)
    np.testing.assert_allclose(res.metrics, -(0.8**4))
    res = backtracking_line_search(lambda f, s: s["b"] < 0, full, parallel=parallel)
    assert float(res.fraction) == 0 and np.all(np.asarray(res.step["a"]) == 0)


def test_line_search_vmaps_over_thresholds() -> None:
    thresholds = jnp.array([1.0, 0.9, 0.3, 1e-9])

    def search(th):
        return backtracking_line_search(lambda f: f <= th, max_backtracks=10)

    res = jax.jit(jax.vmap(search))(thresholds)
    for i, th in enumerate(np.asarray(thresholds)):
        k = next((k for k in range(10) if 0.8**k <= th), None)
        if k is None:
            assert float(res.fraction[i]) == 0.0 and int(res.n_backtracks[i]) == 10
        else:
            np.testing.assert_allclose(res.fraction[i], 0.8**k)
            assert int(res.n_backtracks[i]) == k


def test_trust_region_accept() -> None:
    acc = trust_region_accept
    assert bool(acc(0.009, 0.01))
    assert not bool(acc(0.011, 0.01))
    assert bool(acc(0.011, 0.01, kl_slack=1.5))
    assert not bool(acc(0.005, 0.01, surrogate_improvement=-1.0))
    assert bool(acc(0.005, 0.01, surrogate_improvement=-1.0, recovery=True))
    # Satisfied constraint (c = -2): may spend up to 2 of slack.
    assert bool(acc(0.005, 0.01, 1.0, cost_surrogate_increase=1.5, c=-2.0))
    assert not bool(acc(0.005, 0.01, 1.0, cost_surrogate_increase=2.5, c=-2.0))
    # Violated constraint (c = 1): the cost surrogate must not increase.
    assert not bool(acc(0.005, 0.01, 1.0, cost_surrogate_increase=0.1, c=1.0))
    assert bool(acc(0.005, 0.01, -1.0, cost_surrogate_increase=-0.1, c=1.0, recovery=True))
    # Several constraints: all must pass.
    assert not bool(acc(0.0, 0.01, 1.0, jnp.array([0.0, 0.5]), c=jnp.array([-1.0, -0.1])))
    assert bool(acc(0.0, 0.01, 1.0, jnp.array([0.0, 0.05]), c=jnp.array([-1.0, -0.1])))
    with pytest.raises(ValueError):
        acc(0.0, 0.01, cost_surrogate_increase=0.0)


def test_line_search_on_policy_kl() -> None:
    """End to end: a natural-gradient step on the tiny policy, searched with the real KL."""
    old = _init_mlp(5)
    states = np.random.default_rng(6).normal(size=(128, 3))
    kl_fn = _make_kl_fn(_mlp_policy, old, states)
    flat, unravel = ravel_pytree(old)
    fvp = fisher_vector_product(kl_fn, old, damping=1e-3)
    g = np.random.default_rng(7).normal(size=flat.shape)
    delta = 0.01

    @jax.jit
    def run():
        v, res = conjugate_gradient(fvp, g, iterations=flat.shape[0] * 2, residual_tol=1e-24)
        step = jnp.sqrt(2 * delta / jnp.dot(g, v)) * 3.0 * v  # deliberately 3x too long

        def evaluate(frac, candidate):
            kl = kl_fn(unravel(flat + candidate))
            return trust_region_accept(kl, delta), kl

        return backtracking_line_search(evaluate, step), res, step

    ls, res, step = run()
    assert float(res) < 1e-8
    assert bool(ls.accepted) and int(ls.n_backtracks) > 0
    assert float(ls.metrics) <= delta
    np.testing.assert_allclose(ls.step, ls.fraction * step)
    # The previous (larger) candidate violated the KL bound.
    assert float(kl_fn(unravel(flat + ls.fraction / 0.8 * step))) > delta
