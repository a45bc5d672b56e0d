"""GAE for reward and costs against a direct per-episode loop."""

import numpy as np
import pytest

from saferl.core.returns import gae


def direct_gae(signal, values, next_values, terminated, truncated, gamma, lam):
    """Textbook GAE, one copy and one channel at a time, walking backwards explicitly."""
    T = len(signal)
    adv = np.zeros(T)
    running = 0.0
    for t in reversed(range(T)):
        bootstrap = 0.0 if terminated[t] else next_values[t]
        delta = signal[t] + gamma * bootstrap - values[t]
        if terminated[t] or truncated[t]:
            running = 0.0  # the next step belongs to another episode
        running = delta + gamma * lam * running
        adv[t] = running
    return adv


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_matches_direct_loop_with_mixed_boundaries(seed):
    rng = np.random.default_rng(seed)
    T, N, K = 37, 5, 3  # reward + two costs
    signals = rng.normal(size=(T, N, K)).astype(np.float32)
    values = rng.normal(size=(T, N, K)).astype(np.float32)
    next_values = rng.normal(size=(T, N, K)).astype(np.float32)
    terminated = rng.random((T, N)) < 0.08
    truncated = (rng.random((T, N)) < 0.08) & ~terminated
    gamma = np.array([0.99, 1.0, 0.95], np.float32)
    lam = np.array([0.95, 0.97, 0.5], np.float32)
    adv, ret = gae(signals, values, next_values, terminated, truncated, gamma, lam)
    adv, ret = np.asarray(adv), np.asarray(ret)
    assert terminated.any() and truncated.any()
    for n in range(N):
        for k in range(K):
            expected = direct_gae(
                signals[:, n, k],
                values[:, n, k],
                next_values[:, n, k],
                terminated[:, n],
                truncated[:, n],
                gamma[k],
                lam[k],
            )
            np.testing.assert_allclose(adv[:, n, k], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, adv + values, rtol=1e-6)


def test_truncation_bootstraps_cost_and_termination_does_not():
    # One step episodes: advantage = signal + γ·bootstrap − value.
    signals = np.array([[[1.0, 2.0]], [[1.0, 2.0]]], np.float32)  # [T=2, N=1, K=2]
    values = np.zeros((2, 1, 2), np.float32)
    next_values = np.full((2, 1, 2), 10.0, np.float32)
    terminated = np.array([[True], [False]])
    truncated = np.array([[False], [True]])
    adv, _ = gae(
        signals,
        values,
        next_values,
        terminated,
        truncated,
        np.array([0.5, 1.0], np.float32),
        np.array([1.0, 1.0], np.float32),
    )
    np.testing.assert_allclose(np.asarray(adv)[:, 0], [[1.0, 2.0], [6.0, 12.0]])


def test_undiscounted_cost_return_is_the_remaining_episode_cost():
    # γ_c = λ_c = 1 and zero values: the cost "return" is the cost still to come.
    costs = np.array([1, 0, 1, 1, 0], np.float32)[:, None, None]
    zeros = np.zeros_like(costs)
    terminated = np.array([0, 0, 0, 0, 1], bool)[:, None]
    adv, _ = gae(
        costs,
        zeros,
        zeros,
        terminated,
        np.zeros_like(terminated),
        np.array([1.0], np.float32),
        np.array([1.0], np.float32),
    )
    np.testing.assert_allclose(np.asarray(adv)[:, 0, 0], [3, 2, 2, 1, 0])
