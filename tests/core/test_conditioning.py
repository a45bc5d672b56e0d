"""Threshold conditioning: normalisation, polynomial features, interpolation, the conditioned
networks, and VVE's generalisation to thresholds held out from training
(docs/algorithms/ccpo.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from saferl.core.conditioning import (
    ConditionedQCritics,
    ConditionedTanhGaussianActor,
    ThresholdTable,
    VVECritics,
    host_conditioned_tanh_gaussian,
    interpolate_rows,
    normalize_thresholds,
    polynomial_features,
    threshold_array,
    threshold_bounds,
)
from saferl.core.networks import host_params


def test_normalisation_maps_the_range_onto_minus_one_one():
    eps = jnp.asarray([[10.0, 0.0], [40.0, 5.0], [70.0, 10.0], [100.0, 2.5]])
    np.testing.assert_allclose(normalize_thresholds(eps, [10.0, 0.0], [70.0, 10.0]),
                               [[-1, -1], [0, 0], [1, 1], [2, -0.5]], rtol=1e-6)


def test_polynomial_features_by_hand():
    np.testing.assert_allclose(polynomial_features(jnp.asarray([[0.5]]), 3),
                               [[1, 0.5, 0.25, 0.125]])
    # Several constraints: one polynomial each, no cross terms.
    np.testing.assert_allclose(polynomial_features(jnp.asarray([[0.5, -2.0]]), 2),
                               [[1, 0.5, 0.25, -2.0, 4.0]])


def test_interpolation_of_rows():
    knots = jnp.asarray([[-1.0], [0.0], [1.0]])
    values = jnp.asarray([[1.0, 10.0], [3.0, 20.0], [4.0, 60.0]])
    queries = jnp.asarray([[-0.5], [0.25], [2.0], [-3.0]])
    np.testing.assert_allclose(interpolate_rows(queries, knots, values),
                               [[2.0, 15.0], [3.25, 30.0], [4.0, 60.0], [1.0, 10.0]], rtol=1e-6)
    np.testing.assert_allclose(interpolate_rows(queries, knots, values, "nearest"),
                               [[1.0, 10.0], [3.0, 20.0], [4.0, 60.0], [1.0, 10.0]])
    # Several constraints: inverse-squared-distance weights (a knot returns its own value).
    knots2 = jnp.asarray([[-1.0, -1.0], [1.0, 1.0]])
    at = interpolate_rows(jnp.asarray([[1.0, 1.0], [0.0, 0.0]]), knots2, values[:2])
    np.testing.assert_allclose(at, [[3.0, 20.0], [2.0, 15.0]], rtol=1e-5)


def test_threshold_input_forms_and_messages():
    np.testing.assert_array_equal(threshold_array([20, 5, 40, 10], 2, "f"), [[20, 5], [40, 10]])
    np.testing.assert_array_equal(threshold_array([[20, 5], [40, 10]], 2, "f"),
                                  [[20, 5], [40, 10]])
    low, high = threshold_bounds([0, 1, 10, 20], 2, "r")
    np.testing.assert_array_equal(low, [0, 10])
    np.testing.assert_array_equal(high, [1, 20])
    with pytest.raises(ValueError, match=r"^f must hold vectors of 2 threshold\(s\), one per "
                                         r"constraint; got \[20\]\.$"):
        threshold_array([[20], [40]], 2, "f")
    with pytest.raises(ValueError, match=r"^f must hold at least one threshold"):
        threshold_array([], 1, "f")


def test_host_twin_of_the_conditioned_actor():
    actor = ConditionedTanhGaussianActor(2, (10.0,), (70.0,), (16, 16))
    obs = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 4))
    eps = jax.random.uniform(jax.random.PRNGKey(2), (3, 5, 1), minval=10, maxval=70)
    params = jax.vmap(lambda k: actor.init(k, obs[0], eps[0]))(jax.random.split(
        jax.random.PRNGKey(0), 3))
    mean, log_std = jax.vmap(actor.apply)(params, obs, eps)
    host_mean, host_log_std = host_conditioned_tanh_gaussian(actor, host_params(params),
                                                             np.asarray(obs), np.asarray(eps))
    np.testing.assert_allclose(host_mean, mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(host_log_std, log_std, rtol=1e-4, atol=1e-6)
    # The threshold changes the action distribution.
    other, _ = actor.apply(jax.tree_util.tree_map(lambda x: x[0], params), obs[0],
                           jnp.full((5, 1), 70.0))
    assert not np.allclose(other, mean[0])


def test_threshold_table_gives_the_per_state_values():
    """The conditioned networks take a table of conditions and each state's row; VVE then
    forms one ``[H, C]`` head for all states: the same values as per-state thresholds."""
    table = jnp.asarray([[20.0], [40.0], [60.0], [33.0]])
    index = jnp.asarray([0, 1, 2, 3, 1, 0])
    table_input, per_state = ThresholdTable(table, index), table[index]
    obs = jax.random.normal(jax.random.PRNGKey(0), (6, 4))
    samples = jax.random.normal(jax.random.PRNGKey(1), (5, 6, 2))  # K = 5 actions per state
    for module in (VVECritics(2, 1, (10.0,), (70.0,), (16, 16), feature_size=4),
                   ConditionedQCritics(2, 1, (10.0,), (70.0,), (16, 16))):
        params = module.init(jax.random.PRNGKey(2), obs, samples[0], per_state)
        for actions in (samples[0], samples):
            np.testing.assert_allclose(module.apply(params, obs, actions, table_input),
                                       module.apply(params, obs, actions, per_state),
                                       rtol=1e-5, atol=1e-6)
    actor = ConditionedTanhGaussianActor(2, (10.0,), (70.0,), (16, 16))
    params = actor.init(jax.random.PRNGKey(3), obs, per_state)
    for got, want in zip(actor.apply(params, obs, table_input),
                         actor.apply(params, obs, per_state), strict=True):
        np.testing.assert_array_equal(got, want)


def lagrange_basis_sum(x, nodes):
    """Lebesgue function Σ_k |l_k(x)| of polynomial interpolation at ``nodes``."""
    total = 0.0
    for k, node in enumerate(nodes):
        others = [n for j, n in enumerate(nodes) if j != k]
        total += abs(np.prod([(x - o) / (node - o) for o in others]))
    return total


def fit_critic(module, s, a, eps, y, steps=1500):
    params = module.init(jax.random.PRNGKey(0), s[:1], a[:1], eps[:1])
    tx = optax.adam(3e-3)

    @jax.jit
    def train(params):
        def one(carry, _):
            p, o = carry
            loss, g = jax.value_and_grad(
                lambda p: jnp.mean((module.apply(p, s, a, eps)[:, 0] - y) ** 2))(p)
            u, o = tx.update(g, o, p)
            return (optax.apply_updates(p, u), o), loss
        return jax.lax.scan(one, (params, tx.init(params)), None, length=steps)[0][0]

    return train(params)


def test_vve_generalises_to_held_out_thresholds():
    """Synthetic ``Q*(s, a | ε) = φ(s, a)ᵀ W Poly(ε̃, 2)`` (the paper's Assumptions 1–2), fitted
    on ``Ẽ = {20, 40, 60}`` only and evaluated at held-out thresholds on the same state-action
    pairs (isolating the generalisation over ε).

    Bounds: a VVE critic of degree 2 is, per ``(s, a)``, a quadratic in ε̃, and so is ``Q*``, so
    the error at any ε is the quadratic through the training errors: its RMSE is at most
    ``Σ_k |l_k(ε)| · RMSE_k`` (Lagrange basis at the nodes; 3.5 at ε = 10 and 70). In absolute
    terms every held-out RMSE is below 10 % of the std of ``Q*``; an MLP of ``(s, a, ε̃)``
    ("w/o VVE") fitted the same way does at least twice as badly at the worst held-out ε.
    """
    rng = np.random.default_rng(0)
    n, obs_dim, act_dim = 512, 3, 2
    projection, shift = rng.normal(size=(obs_dim + act_dim, 4)), rng.normal(size=4)
    weights = rng.normal(size=(4, 3))
    s = rng.normal(size=(n, obs_dim)).astype(np.float32)
    a = rng.uniform(-1, 1, (n, act_dim)).astype(np.float32)
    phi = np.tanh(np.concatenate([s, a], -1) @ projection + shift) @ weights  # [n, 3]

    def true_q(eps):
        x = (eps - 10.0) / 30.0 - 1.0
        return phi @ np.asarray([1.0, x, x * x])

    train = [20.0, 40.0, 60.0]
    held_out = [10.0, 15.0, 25.0, 30.0, 45.0, 50.0, 65.0, 70.0]
    tile = lambda x: jnp.asarray(np.tile(x, (3, 1)))  # noqa: E731
    eps_train = jnp.asarray(np.repeat(train, n)[:, None], jnp.float32)
    y = jnp.asarray(np.concatenate([true_q(e) for e in train]), jnp.float32)
    scale = float(np.std(y))

    def rmse(module, params, eps):
        q = module.apply(params, jnp.asarray(s), jnp.asarray(a), jnp.full((n, 1), eps))[:, 0]
        return float(np.sqrt(np.mean((np.asarray(q) - true_q(eps)) ** 2)))

    vve = VVECritics(1, 0, (10.0,), (70.0,), (32, 32), "relu", feature_size=8, degree=2)
    params = fit_critic(vve, tile(s), tile(a), eps_train, y)
    train_errors = [rmse(vve, params, e) for e in train]
    vve_errors = {e: rmse(vve, params, e) for e in held_out}
    nodes = [(e - 10.0) / 30.0 - 1.0 for e in train]
    for eps, error in vve_errors.items():
        bound = lagrange_basis_sum((eps - 10.0) / 30.0 - 1.0, nodes) * max(train_errors)
        assert error <= bound + 1e-4, (eps, error, bound)
        assert error <= 0.1 * scale, (eps, error, scale)

    plain = ConditionedQCritics(1, 0, (10.0,), (70.0,), (32, 32), "relu")
    plain_params = fit_critic(plain, tile(s), tile(a), eps_train, y)
    plain_worst = max(rmse(plain, plain_params, e) for e in held_out)
    assert plain_worst >= 2.0 * max(vve_errors.values())
