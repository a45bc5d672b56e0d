"""Cost shaping: margin transforms, the safety predictor's targets and fit, discounted costs."""

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saferl
from saferl.algos.on_policy import Rollout
from saferl.core.shaping import unsafe_soon
from saferl.engine.episodes import EpisodeTracker, track_episodes
from saferl.envs.native import make_task
from saferl.envs.native.agents import BallState
from saferl.envs.wrappers import SafetyMarginCost, ShapedCostTask, shape_cost


def test_dense_and_barrier_formulas():
    margins = np.array([3.0, 1.0, 0.5, 0.1, 0.01, 0.0, -2.0])
    np.testing.assert_allclose(shape_cost(margins, 1.0, "dense"),
                               [0, 0, 0.5, 0.9, 0.99, 1.0, 3.0])
    barrier = shape_cost(margins, 1.0, "barrier")
    np.testing.assert_allclose(barrier[:5], [0, 0, np.log(2), np.log(10), np.log(100)], rtol=1e-9)
    assert barrier[5] == barrier[6] == pytest.approx(-np.log(1e-3))  # capped, finite
    # Grows without bound as the margin shrinks (up to the cap).
    assert np.all(np.diff(shape_cost(np.logspace(0, -3, 20), 1.0, "barrier")) > 0)
    jax_value = shape_cost(jnp.asarray(margins), 1.0, "dense")
    np.testing.assert_allclose(jax_value, shape_cost(margins, 1.0, "dense"), rtol=1e-6)


def test_shaped_native_task_uses_the_margin():
    task = ShapedCostTask(make_task("saferl/BallCircle-v0"), "dense", buffer=2.0)
    state = BallState(jnp.array([5.0, 0.0]), jnp.zeros(2))
    next_state, _, _, costs, _ = jax.jit(task.step)(state, jnp.zeros(2))
    margin = 6.0 - abs(float(next_state.position[0]))
    assert margin > 0 and float(costs[0]) > 0  # a cost before the boundary is reached
    assert float(costs[0]) == pytest.approx(1 - margin / 2.0, rel=1e-5)
    with pytest.raises(ValueError, match="cost_buffer must be a finite number > 0"):
        ShapedCostTask(make_task("saferl/BallCircle-v0"), "dense", buffer=0.0)


def test_gym_wrapper_replaces_the_cost_and_keeps_the_raw_one():
    env = SafetyMarginCost(gymnasium.make("saferl/BallCircle-v0"),
                           margin_fn=lambda obs, info: 0.6 - abs(obs[0]), transform="barrier",
                           buffer=1.0)
    env.reset(seed=0)
    obs, _, _, _, info = env.step(np.zeros(2, np.float32))
    expected = -np.log(np.clip((0.6 - abs(obs[0])) / 1.0, 1e-3, 1.0))
    assert info["raw_cost"] == 0.0 and info["cost"] == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(info["costs"], [expected], rtol=1e-5)


def direct_targets(costs, done, horizon):
    T, N, m = costs.shape
    out = np.zeros_like(costs)
    for t in range(T):
        for n in range(N):
            total = np.zeros(m)
            for k in range(horizon):
                if t + k >= T:
                    break
                total += costs[t + k, n]
                if done[t + k, n]:
                    break
            out[t, n] = np.minimum(1.0, total)
    return out


def test_predictor_targets_match_a_direct_loop():
    rng = np.random.default_rng(0)
    costs = (rng.random((40, 3, 2)) < 0.1).astype(np.float32)
    done = rng.random((40, 3)) < 0.1
    for horizon in (1, 5, 20):
        np.testing.assert_array_equal(unsafe_soon(jnp.asarray(costs), jnp.asarray(done), horizon),
                                      direct_targets(costs, done, horizon))


def test_discounted_constraint_cost_is_tracked():
    costs = np.array([1, 0, 1, 1], np.float32)[:, None, None]
    done = np.array([0, 0, 0, 1], bool)[:, None]
    rollout = Rollout(None, None, None, jnp.zeros((4, 1)), jnp.asarray(costs),
                      jnp.asarray(done), jnp.zeros((4, 1), bool), None)
    tracker = EpisodeTracker(jnp.zeros(1), jnp.zeros((1, 1)), jnp.zeros(1, jnp.int32),
                             jnp.zeros((1, 1)))
    _, sums = track_episodes(tracker, rollout, cost_gamma=0.5)
    assert float(sums["sum_cost"][0]) == 3.0
    assert float(sums["sum_discounted_cost"][0]) == pytest.approx(1 + 0.25 + 0.125)


def test_safety_predictor_shapes_the_constrained_cost(tmp_path):
    run = saferl.train("ppo_lag", "saferl/BallRun-v0", cost_limit=5, run_dir=tmp_path / "p",
                       progress=False,
                       overrides={"run": {"num_envs": 8, "rollout_steps": 100, "steps": 2400,
                                          "safety_predictor": True, "predictor_alpha": 2.0},
                                  "ppo": {"epochs": 1}})
    rows = run.history
    assert all(np.isfinite(r["predictor/loss"]) for r in rows)
    # c⁺ = c + α·P ≥ c: the constrained episode cost is at least the raw one.
    assert all(r["rollout/ep_constraint_cost_0"] >= r["rollout/ep_cost_0"] for r in rows)
    assert rows[-1]["predictor/loss"] < rows[0]["predictor/loss"]


def test_cost_transform_on_a_host_env_asks_for_a_margin(tmp_path):
    with pytest.raises(ValueError, match="SafetyMarginCost"):
        saferl.train("ppo_lag", "SafetyBallCircle-v0", run_dir=tmp_path / "x", progress=False,
                     overrides={"cost_transform": "dense"})
