"""CVPO's E-step dual against SciPy, the E-step weights' conditions, the decoupled KL."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

from saferl.core.distributions import gaussian_kl
from saferl.core.inference import (
    decoupled_kl,
    estep_dual,
    estep_dual_derivatives,
    estep_weights,
    eta_for_kl,
    solve_estep_dual,
    weights_kl,
)


def random_q(seed, batch=64, samples=16, m=1, cost_shift=0.0):
    rng = np.random.default_rng(seed)
    q_reward = rng.normal(2.0, 1.0, (batch, samples))
    # Cost Q correlated with the reward Q: the best actions are also the costly ones.
    q_costs = (0.6 * q_reward[..., None] + rng.normal(0, 0.5, (batch, samples, m))
               + cost_shift)
    return q_reward, q_costs


def scipy_solution(q_reward, q_costs, kappa, limit, max_multiplier):
    m = q_costs.shape[-1]

    def f(x):
        return float(estep_dual(jnp.asarray(x), jnp.asarray(q_reward), jnp.asarray(q_costs),
                                kappa, jnp.asarray(limit)))

    grad = jax.grad(lambda x: estep_dual(x, jnp.asarray(q_reward), jnp.asarray(q_costs), kappa,
                                         jnp.asarray(limit)))
    best = None
    for eta0 in (0.1, 1.0, 10.0):
        result = minimize(f, np.r_[eta0, np.ones(m)],
                          jac=lambda x: np.asarray(grad(jnp.asarray(x))), method="L-BFGS-B",
                          bounds=[(1e-3, None)] + [(0.0, max_multiplier)] * m,
                          options={"ftol": 1e-14, "gtol": 1e-10, "maxiter": 2000})
        if best is None or result.fun < best.fun:
            best = result
    return best


@pytest.mark.parametrize("case", [
    # (seed, m, cost_shift, limit): slack constraint (λ = 0), active constraint(s) (λ > 0).
    (0, 1, 0.0, [5.0]),
    (1, 1, 0.0, [1.2]),
    (2, 2, 0.0, [1.0, 1.3]),
    (3, 2, 0.0, [1.1, 5.0]),
])
def test_dual_solution_matches_scipy(enable_x64, case):
    seed, m, shift, limit = case
    q_reward, q_costs = random_q(seed, m=m, cost_shift=shift)
    kappa, cap = 0.05, 100.0
    reference = scipy_solution(q_reward, q_costs, kappa, limit, cap)
    init = jnp.asarray(np.r_[1.0, np.zeros(m)])
    solution = solve_estep_dual(jnp.asarray(q_reward), jnp.asarray(q_costs), kappa,
                                jnp.asarray(limit), init, iterations=25, max_multiplier=cap)
    assert float(solution.value) == pytest.approx(reference.fun, abs=1e-7, rel=1e-7)
    np.testing.assert_allclose(np.asarray(solution.variables), reference.x, rtol=2e-3,
                               atol=2e-4)
    slack = limit[0] >= 5.0
    assert (float(solution.variables[1]) == 0.0) == slack


@pytest.mark.parametrize("m", [1, 3])
def test_closed_form_derivatives_match_autodiff(enable_x64, m):
    q_reward, q_costs = random_q(7, batch=32, samples=8, m=m)
    rng = np.random.default_rng(m)
    args = (jnp.asarray(q_reward), jnp.asarray(q_costs), 0.03,
            jnp.asarray(rng.uniform(0.5, 2.0, m)))
    for x in (np.r_[0.7, rng.uniform(0, 2, m)], np.r_[3.0, np.zeros(m)]):
        x = jnp.asarray(x)
        value, gradient, hessian = estep_dual_derivatives(x, *args)
        assert float(value) == pytest.approx(float(estep_dual(x, *args)), rel=1e-12)
        np.testing.assert_allclose(gradient, jax.grad(estep_dual)(x, *args), rtol=1e-9,
                                   atol=1e-12)
        np.testing.assert_allclose(hessian, jax.hessian(estep_dual)(x, *args), rtol=1e-9,
                                   atol=1e-12)


def test_few_warm_started_iterations_reach_the_optimum(enable_x64):
    """In training the solver gets ~10 iterations from the previous solution."""
    q_reward, q_costs = random_q(4, m=1)
    args = (jnp.asarray(q_reward), jnp.asarray(q_costs), 0.02, jnp.asarray([1.2]))
    exact = solve_estep_dual(*args, jnp.asarray([1.0, 0.0]), iterations=50)
    # The next update's samples: the Q-values move a little.
    nudged = args[0] + 0.05 * jnp.asarray(np.random.default_rng(0).normal(size=q_reward.shape))
    moved = solve_estep_dual(nudged, *args[1:], exact.variables, iterations=50)
    warm = solve_estep_dual(nudged, *args[1:], exact.variables, iterations=10)
    assert float(warm.value) == pytest.approx(float(moved.value), rel=1e-6)
    # It stops early: a converged start takes no step, a nearby one a few.
    assert int(solve_estep_dual(*args, exact.variables, iterations=10).iterations) == 0
    assert 1 <= int(warm.iterations) <= 4


def test_weights_meet_the_kl_bound_and_the_constraint(enable_x64):
    q_reward, q_costs = random_q(5, batch=128, samples=32, m=1)
    kappa, limit = 0.05, 1.2
    solution = solve_estep_dual(jnp.asarray(q_reward), jnp.asarray(q_costs), kappa,
                                jnp.asarray([limit]), jnp.asarray([1.0, 0.0]), iterations=40)
    weights = np.asarray(estep_weights(jnp.asarray(q_reward), jnp.asarray(q_costs),
                                       solution.variables))
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-10)
    samples = weights.shape[1]
    kl = np.mean(np.sum(weights * np.log(weights * samples + 1e-300), axis=1))
    # KKT: η > 0 makes the KL bound active; λ > 0 makes the cost constraint active.
    assert float(solution.variables[1]) > 0
    assert kl == pytest.approx(kappa, rel=1e-4)
    expected_cost = np.mean(np.sum(weights * q_costs[..., 0], axis=1))
    assert expected_cost == pytest.approx(limit, rel=1e-4)
    # The weights prefer high reward among the samples (positive correlation within a state).
    assert np.mean(np.sum(weights * q_reward, 1)) > np.mean(q_reward) - 1e-9


def test_infeasible_constraint_caps_the_multiplier(enable_x64):
    q_reward, q_costs = random_q(6, m=1, cost_shift=10.0)  # every action costs ≫ the limit
    solution = solve_estep_dual(jnp.asarray(q_reward), jnp.asarray(q_costs), 0.05,
                                jnp.asarray([1.0]), jnp.asarray([1.0, 0.0]), iterations=30,
                                max_multiplier=20.0)
    assert float(solution.variables[1]) == pytest.approx(20.0)
    assert np.isfinite(float(solution.value))


def test_decoupled_kl_parts():
    rng = np.random.default_rng(0)
    mean_old, mean = rng.normal(size=(2, 5, 3))
    std_old, std = np.exp(rng.normal(0, 0.3, (2, 5, 3)))
    kl_mean, kl_std = decoupled_kl(mean_old, std_old, mean, std)
    np.testing.assert_allclose(
        kl_mean, gaussian_kl(mean_old, np.log(std_old), mean, np.log(std_old)), rtol=1e-5)
    np.testing.assert_allclose(
        kl_std, gaussian_kl(mean_old, np.log(std_old), mean_old, np.log(std)), rtol=1e-5)


def test_float32_solution_is_close_to_the_float64_optimum():
    """Training runs in float32, where the solver stops at a relative decrement of 1e-6."""
    q_reward, q_costs = random_q(5, batch=128, samples=32, m=1)
    kappa, limit = 0.05, [1.2]
    reference = scipy_solution(q_reward, q_costs, kappa, limit, 100.0)
    solution = solve_estep_dual(jnp.asarray(q_reward, jnp.float32),
                                jnp.asarray(q_costs, jnp.float32), kappa,
                                jnp.asarray(limit, jnp.float32),
                                jnp.asarray([1.0, 0.0], jnp.float32), iterations=40)
    assert solution.variables.dtype == jnp.float32
    assert float(solution.value) == pytest.approx(reference.fun, rel=1e-5)
    np.testing.assert_allclose(np.asarray(solution.variables), reference.x, rtol=5e-3)
    assert int(solution.iterations) < 40


def test_masked_dual_is_the_dual_of_the_masked_states(enable_x64):
    """CCPO's per-condition dual: a 0/1 state mask gives the dual of those states alone, and a
    per-state Q threshold that is constant on them gives the ``[m]`` threshold's dual."""
    q_reward, q_costs = random_q(8, batch=48, samples=12, m=2)
    mask = np.zeros(48)
    mask[::3] = 1.0
    chosen = mask == 1
    limit = np.asarray([1.1, 1.4])
    per_state = np.where(chosen[:, None], limit, 99.0)  # other states' thresholds are ignored
    x = jnp.asarray([0.8, 0.3, 0.1])
    subset = (jnp.asarray(q_reward[chosen]), jnp.asarray(q_costs[chosen]), 0.04,
              jnp.asarray(limit))
    masked = (jnp.asarray(q_reward), jnp.asarray(q_costs), 0.04, jnp.asarray(per_state))
    assert float(estep_dual(x, *masked, jnp.asarray(mask))) == pytest.approx(
        float(estep_dual(x, *subset)), rel=1e-12)
    for got, want in zip(estep_dual_derivatives(x, *masked, jnp.asarray(mask)),
                         estep_dual_derivatives(x, *subset), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    init = jnp.asarray([1.0, 0.0, 0.0])
    alone = solve_estep_dual(*subset, init, iterations=30)
    inside = solve_estep_dual(*masked, init, iterations=30, state_mask=jnp.asarray(mask))
    np.testing.assert_allclose(inside.variables, alone.variables, rtol=1e-8, atol=1e-10)


def test_masked_derivatives_match_autodiff(enable_x64):
    q_reward, q_costs = random_q(9, batch=32, samples=8, m=1)
    rng = np.random.default_rng(1)
    mask = jnp.asarray(rng.random(32) < 0.4, jnp.float64)
    args = (jnp.asarray(q_reward), jnp.asarray(q_costs), 0.03,
            jnp.asarray(rng.uniform(0.5, 2.0, (32, 1))))
    x = jnp.asarray([0.9, 0.7])
    value, gradient, hessian = estep_dual_derivatives(x, *args, mask)
    assert float(value) == pytest.approx(float(estep_dual(x, *args, mask)), rel=1e-12)
    np.testing.assert_allclose(gradient, jax.grad(estep_dual)(x, *args, mask), rtol=1e-9)
    np.testing.assert_allclose(hessian, jax.hessian(estep_dual)(x, *args, mask), rtol=1e-9,
                               atol=1e-12)


def test_per_state_duals_weight_each_state_with_its_own(enable_x64):
    q_reward, q_costs = random_q(10, batch=6, samples=5, m=2)
    variables = jnp.asarray(np.random.default_rng(2).uniform(0.2, 2.0, (6, 3)))
    weights = estep_weights(jnp.asarray(q_reward), jnp.asarray(q_costs), variables)
    for b in range(6):
        row = estep_weights(jnp.asarray(q_reward[b:b + 1]), jnp.asarray(q_costs[b:b + 1]),
                            variables[b])
        np.testing.assert_allclose(weights[b], row[0], rtol=1e-12)


def training_scale_q(seed, reward_spread, batch=256, samples=32):
    """Q-values as the critics give them in training (γ = 0.99: rewards of ~1 per step give
    Q ≈ 100): a reward Q nearly flat over a state's samples, a cost Q spread and partly
    correlated with it."""
    rng = np.random.default_rng(seed)
    q_reward = rng.normal(100.0, reward_spread, (batch, samples))
    q_costs = rng.normal(40.0, 5.0, (batch, samples, 1)) + 0.5 * q_reward[..., None] - 50.0
    return q_reward, q_costs


# (reward spread, warm start, Q threshold): the starts are what the previous update leaves
# behind when the multiplier jumps between 0 and its cap (ccpo-main on native BallCircle): a
# temperature fitted to a flat reward Q meets a cost Q a hundred times wider, and the weights
# are one-hot. The limits are infeasible (10, 38: the cap binds) and slack (41).
SCALE_CASES = [(0.05, [0.02, 0.0], 10.0), (0.05, [0.02, 0.0], 38.0), (0.05, [0.02, 100.0], 38.0),
               (0.05, [1.0, 0.0], 38.0), (0.05, [0.001, 100.0], 10.0), (1.0, [0.001, 0.0], 38.0),
               (3.0, [1.0, 0.0], 41.0), (0.05, [2000.0, 100.0], 41.0)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", SCALE_CASES)
def test_training_scale_q_and_stale_warm_starts_reach_the_optimum(enable_x64, case, dtype):
    """Ten iterations (the default) from a stale start reach SciPy's optimum, in float32 too:
    nearly one-hot weights (a vanishing Hessian in η) and a dual nearly linear along rays
    (an infeasible constraint) once stopped the solver at the temperature floor with a KL of
    ``log K`` against a bound of 0.02, or part-way to the multiplier cap."""
    reward_spread, init, limit = case
    q_reward, q_costs = training_scale_q(len(SCALE_CASES), reward_spread)
    kappa = 0.02
    reference = scipy_solution(q_reward, q_costs, kappa, [limit], 100.0)
    solution = solve_estep_dual(jnp.asarray(q_reward, dtype), jnp.asarray(q_costs, dtype), kappa,
                                jnp.asarray([limit], dtype), jnp.asarray(init, dtype),
                                iterations=10)
    assert solution.variables.dtype == jnp.dtype(dtype)
    value = float(estep_dual(jnp.asarray(np.asarray(solution.variables, np.float64)),
                             jnp.asarray(q_reward), jnp.asarray(q_costs), kappa,
                             jnp.asarray([limit])))
    assert value == pytest.approx(reference.fun, rel=1e-6 if dtype == "float32" else 1e-10)
    np.testing.assert_allclose(np.asarray(solution.variables, np.float64), reference.x,
                               rtol=2e-3 if dtype == "float32" else 1e-5)
    # KKT: η above its floor, so the KL bound is active.
    kl = float(weights_kl(jnp.asarray(reference.x), jnp.asarray(q_reward), jnp.asarray(q_costs)))
    assert kl == pytest.approx(kappa, rel=1e-3)
    solved_kl = float(weights_kl(solution.variables, jnp.asarray(q_reward, dtype),
                                 jnp.asarray(q_costs, dtype)))
    assert solved_kl == pytest.approx(kappa, rel=0.011)  # the solver asks for the KL to 1 %


@pytest.mark.parametrize("lam", [0.0, 3.0, 100.0])
def test_eta_for_kl_is_the_minimiser_over_eta(enable_x64, lam):
    """The exact η step against a bounded scalar minimisation of ``g(·, λ)`` and the KL."""
    from scipy.optimize import minimize_scalar

    q_reward, q_costs = training_scale_q(3, 1.0, batch=64, samples=16)
    args = (jnp.asarray(q_reward), jnp.asarray(q_costs), 0.02, jnp.asarray([38.0]))
    lam_array = jnp.asarray([lam])
    eta = float(eta_for_kl(lam_array, *args[:3], eta_min=1e-3))
    reference = minimize_scalar(
        lambda log_eta: float(estep_dual(jnp.asarray([np.exp(log_eta), lam]), *args)),
        bounds=(np.log(1e-3), np.log(1e6)), method="bounded", options={"xatol": 1e-10})
    assert eta == pytest.approx(np.exp(reference.x), rel=1e-5)
    kl = float(weights_kl(jnp.asarray([eta, lam]), *args[:2]))
    assert kl == pytest.approx(0.02, rel=1e-6)


def test_eta_for_kl_stays_at_the_floor_when_the_bound_is_slack(enable_x64):
    q_reward = np.zeros((8, 4))  # every sample equal: uniform weights at any η, KL 0
    q_costs = np.zeros((8, 4, 1))
    eta = eta_for_kl(jnp.asarray([0.0]), jnp.asarray(q_reward), jnp.asarray(q_costs), 0.02,
                     eta_min=1e-3)
    assert float(eta) == pytest.approx(1e-3)


def test_dual_matches_a_direct_log_sum_exp():
    """``g`` against its definition evaluated in float64 with SciPy's ``logsumexp``, at
    temperatures from the floor up (the code evaluates it on a shifted exponent)."""
    from scipy.special import logsumexp

    q_reward, q_costs = training_scale_q(11, 1.0, batch=32, samples=8)
    kappa, limit = 0.02, np.array([38.0])
    for eta, lam in ((1e-3, 100.0), (0.5, 3.0), (300.0, 100.0), (20.0, 0.0)):
        advantage = q_reward - q_costs[..., 0] * lam
        direct = (eta * kappa + lam * limit[0]
                  + eta * np.mean(logsumexp(advantage / eta, axis=1) - np.log(8)))
        f32 = (jnp.asarray(a, jnp.float32) for a in ([eta, lam], q_reward, q_costs, limit))
        variables, rewards, costs, limits = f32
        value = estep_dual(variables, rewards, costs, kappa, limits)
        assert float(value) == pytest.approx(direct, rel=1e-6, abs=1e-3)


def ccpo_infeasible_condition_q(seed, batch=86, samples=32):
    """One CCPO condition's Q-values as recorded in training (native BallCircle, ε = 20, stage 1):
    a reward Q of ≈ 24 and a cost Q of ≈ 9 varying between states, correlated within a state,
    every state's least-costly sample above the Q threshold 8.66 (infeasible: λ goes to its cap,
    where ``|A| = |Q_r − 100 Q_c|`` ≈ 10³)."""
    rng = np.random.default_rng(seed)
    state = rng.normal(0.0, 1.0, (batch, 1))
    noise = rng.normal(0.0, 1.0, (batch, samples))
    q_reward = 24.0 + 9.0 * state + 1.9 * noise
    q_costs = 9.25 + 0.3 * (0.88 * noise + 0.47 * rng.normal(0.0, 1.0, (batch, samples)))
    q_costs = q_costs + 0.6 * np.abs(state)  # between-state spread, never below the limit
    return q_reward, q_costs[..., None]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float32_eta_gradient_at_the_floor_with_the_multiplier_at_its_cap(enable_x64, seed):
    """At η = 10⁻³ and λ = 100 the exponent ``A/η`` is ≈ 10⁷; ``∂g/∂η = κ − KL`` must still be
    ≈ κ − log K in float32. Computed from the unshifted exponent it cancelled to noise (+1.0
    instead of −3.45 on the recorded condition), which read as "KL within κ at the floor" and
    stopped the solver there with one-hot weights."""
    q_reward, q_costs = ccpo_infeasible_condition_q(seed)
    args64 = (jnp.asarray(q_reward), jnp.asarray(q_costs), 0.02, jnp.asarray([8.66]))
    args32 = tuple(a.astype(jnp.float32) if isinstance(a, jax.Array) else a for a in args64)
    for x in ([1e-3, 100.0], [1e-3, 0.0], [0.05, 100.0]):
        _, reference, _ = estep_dual_derivatives(jnp.asarray(x), *args64)
        _, gradient, _ = estep_dual_derivatives(jnp.asarray(x, jnp.float32), *args32)
        np.testing.assert_allclose(np.asarray(gradient, np.float64), reference, rtol=1e-4,
                                   atol=1e-4)
        kl = float(weights_kl(jnp.asarray(x), *args64[:2]))
        assert float(gradient[0]) == pytest.approx(0.02 - kl, abs=1e-4)


RECORDED = Path(__file__).parent / "data" / "ccpo_infeasible_condition.npz"


@pytest.mark.parametrize("init", ["recorded", [0.001, 100.0], [138.85, 100.0], [0.001, 0.0]])
def test_float32_masked_solve_of_a_recorded_condition_reaches_the_optimum(enable_x64, init):
    """A condition recorded from CCPO's E-step in training (native BallCircle, ε = 20, seed 1,
    stage 1: 86 states × 32 samples, every state's least-costly sample above the Q threshold,
    so λ goes to its cap), padded as its member list is. From the warm start training gave
    (η = 9.74, λ = 0) the float32 solve took the Newton step to (η_min, λ_cap), read a noise
    gradient there as "KL within κ at the floor" and stopped with one-hot weights (KL = log K;
    5 % of that run's solves ended so). It must end at SciPy's optimum with the KL at κ."""
    data = np.load(RECORDED)
    q_reward, q_costs, q_limit = data["q_reward"], data["q_costs"], data["q_limit"]
    reference = scipy_solution(q_reward.astype(np.float64), q_costs.astype(np.float64), 0.02,
                               [float(q_limit.astype(np.float64).mean())], 100.0)
    assert reference.x[1] == pytest.approx(100.0)
    pad = np.arange(10)  # a member list is padded with repeated states, weight 0
    mask = np.r_[np.ones(len(q_reward)), np.zeros(len(pad))].astype(np.float32)
    start = data["warm_start"] if init == "recorded" else np.asarray(init, np.float32)
    solution = solve_estep_dual(
        jnp.asarray(np.r_[q_reward, q_reward[pad]]), jnp.asarray(np.r_[q_costs, q_costs[pad]]),
        0.02, jnp.asarray(np.r_[q_limit, q_limit[pad]]), jnp.asarray(start),
        state_mask=jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(solution.variables, np.float64), reference.x,
                               rtol=2e-2)
    kl = float(weights_kl(solution.variables, jnp.asarray(q_reward), jnp.asarray(q_costs)))
    assert kl == pytest.approx(0.02, rel=0.011)


@pytest.mark.parametrize("case", [(0.0, [5.0, 1.0], 41.0), (1e3, [5.0, 1.0], 41.0),
                                  (1e4, [1.0, 0.0], 38.0), (1e5, [5.0, 1.0], 38.0)])
def test_float32_kl_meets_the_bound_whatever_the_reward_offset(enable_x64, case):
    """A constant added to ``Q_r`` leaves the weights and the optimal (η, λ) unchanged but adds
    itself to ``g``. In float32 the solve must still end with the KL within 1 % of κ. Without
    centring, ``g`` carried the offset: float32 could not resolve the last changes of ``g``,
    the relative decrement test loosened with ``|g|``, and these cases ended 2–14 % off κ."""
    offset, start, limit = case
    q_reward, q_costs = training_scale_q(13, 1.0, batch=128, samples=32)
    kappa = 0.02
    reference = scipy_solution(q_reward, q_costs, kappa, [limit], 100.0)
    rewards = jnp.asarray(q_reward + offset, jnp.float32)
    costs = jnp.asarray(q_costs, jnp.float32)
    solution = solve_estep_dual(rewards, costs, kappa, jnp.asarray([limit], jnp.float32),
                                jnp.asarray(start, jnp.float32))
    kl = float(weights_kl(solution.variables, rewards, costs))
    assert kl == pytest.approx(kappa, rel=0.011)
    np.testing.assert_allclose(np.asarray(solution.variables, np.float64), reference.x,
                               rtol=2e-2)
    assert float(solution.value) == pytest.approx(reference.fun + offset, rel=1e-6)
