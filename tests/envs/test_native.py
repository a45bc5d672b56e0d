"""Native pure-JAX tasks: formulas, dynamics, auto-reset, jit/vmap and the gymnasium wrapper."""

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saferl.envs.native import NativeVecEnv, batch_reset, batch_step, episode_reset, make_task
from saferl.envs.native.agents import BALL_ACCELERATION, BALL_DAMPING, BallState, CarState

IDS = ["saferl/BallCircle-v0", "saferl/CarCircle-v0", "saferl/BallRun-v0", "saferl/CarRun-v0"]


@pytest.mark.parametrize("env_id,obs_dim,steps", [
    ("saferl/BallCircle-v0", 8, 200), ("saferl/CarCircle-v0", 8, 300),
    ("saferl/BallRun-v0", 7, 100), ("saferl/CarRun-v0", 7, 200)])
def test_specs_follow_bullet_safety_gym(env_id, obs_dim, steps):
    spec = make_task(env_id).spec
    assert spec.obs_dim == obs_dim and spec.action_dim == 2
    assert spec.max_episode_steps == steps and spec.num_costs == 1


def test_ball_dynamics_match_the_closed_form_under_constant_action():
    task = make_task("saferl/BallRun-v0")
    state = BallState(jnp.zeros(2), jnp.zeros(2))
    action = jnp.array([1.0, -0.5])
    for _ in range(30):
        state, *_ = task.step(state, action)
    t = 30 / 30.0
    expected_v = BALL_ACCELERATION / BALL_DAMPING * (1 - np.exp(-BALL_DAMPING * t)) * np.array(
        [1.0, -0.5])
    np.testing.assert_allclose(state.velocity, expected_v, rtol=1e-4)
    # Position: the integral of v(t).
    k = BALL_ACCELERATION / BALL_DAMPING
    expected_p = k * (t - (1 - np.exp(-BALL_DAMPING * t)) / BALL_DAMPING) * np.array([1.0, -0.5])
    np.testing.assert_allclose(state.position, expected_p, rtol=1e-4)


def test_circle_reward_cost_and_observation_formulas():
    task = make_task("saferl/BallCircle-v0")
    state = BallState(jnp.array([6.4, 1.0]), jnp.array([0.0, -3.0]))
    action = jnp.array([0.0, 0.0])
    next_state, obs, reward, costs, terminated = task.step(state, action)
    p, v = np.asarray(next_state.position), np.asarray(next_state.velocity)
    dist = np.linalg.norm(p)
    expected = 0.1 * (p[0] * -v[1] + p[1] * v[0]) / (1 + abs(dist - 7.0))  # action term is 0
    assert float(reward) == pytest.approx(expected, rel=1e-5)
    assert float(costs[0]) == float(abs(p[0]) > 6.0) == 1.0
    np.testing.assert_allclose(obs[:4], [0.1 * p[0], 0.1 * p[1], 0.2 * v[0], 0.2 * v[1]],
                               rtol=1e-5)
    np.testing.assert_allclose(obs[4:7], 0.1 * np.array([-v[1], v[0], 0.0]) / 0.5, rtol=1e-5)
    assert float(obs[7]) == pytest.approx((dist - 7.0) / 10.0, rel=1e-5)
    assert not bool(terminated)
    # Inside the strip: no cost; the action penalty is 0.01·(−0.5‖a‖).
    inside = BallState(jnp.array([1.0, 3.0]), jnp.zeros(2))
    _s2, _, _r2, c2, _ = task.step(inside, jnp.array([0.0, 0.0]))
    assert float(c2[0]) == 0.0
    s3, _, r3, _, _ = task.step(inside, jnp.array([0.6, 0.8]))
    p3, v3 = np.asarray(s3.position), np.asarray(s3.velocity)
    base = 0.1 * (p3[0] * -v3[1] + p3[1] * v3[0]) / (1 + abs(np.linalg.norm(p3) - 7.0))
    assert float(r3) == pytest.approx(base - 0.005, rel=1e-5)


def test_circle_speed_limit_adds_a_second_cost():
    task = make_task("saferl/BallCircle-v0", speed_limit=1.0)
    assert task.spec.num_costs == 2
    assert task.spec.cost_names == ("cost_outside_bounds", "cost_speed")
    state = BallState(jnp.array([6.5, 0.0]), jnp.array([0.0, 2.0]))
    _, _, _, costs, _ = task.step(state, jnp.zeros(2))
    np.testing.assert_array_equal(np.asarray(costs), [1.0, 1.0])
    margin = task.safety_margin(BallState(jnp.array([5.0, 0.0]), jnp.array([0.0, 0.5])))
    np.testing.assert_allclose(margin, [1.0, 0.5])


def test_run_reward_is_potential_progress_and_cost_is_combined():
    task = make_task("saferl/CarRun-v0")
    state = CarState(jnp.array([0.0, 2.5]), jnp.zeros(()), jnp.asarray(1.0), jnp.zeros(()))
    next_state, _, reward, costs, _ = task.step(state, jnp.array([0.2, 0.0]))
    goal = np.array([1000.0, 0.0])
    expected = -60 * np.linalg.norm(np.asarray(next_state.position) - goal) + 60 * np.linalg.norm(
        np.asarray(state.position) - goal)
    assert float(reward) == pytest.approx(expected, rel=1e-3)
    assert costs.shape == (1,) and float(costs[0]) == 1.0  # outside |y| ≤ 2: capped at 1
    split = make_task("saferl/CarRun-v0", separate_costs=True)
    fast = CarState(jnp.array([0.0, 2.5]), jnp.zeros(()), jnp.asarray(3.0), jnp.zeros(()))
    _, _, _, costs2, _ = split.step(fast, jnp.array([1.0, 0.0]))
    np.testing.assert_array_equal(np.asarray(costs2), [1.0, 1.0])


@pytest.mark.parametrize("env_id", IDS)
def test_auto_reset_keeps_the_true_final_observation(env_id):
    task = make_task(env_id)
    limit = task.spec.max_episode_steps
    state = batch_reset(task, jax.random.PRNGKey(3), 4)
    step = jax.jit(lambda s, a: batch_step(task, s, a))
    actions = jnp.tile(jnp.array([0.5, 0.2]), (4, 1))
    for t in range(limit):
        before = state
        state, out = step(state, actions)
        if t < limit - 1:
            assert not bool(out.truncated.any())
            np.testing.assert_array_equal(out.final_observation, out.observation)
    assert bool(out.truncated.all()) and not bool(out.terminated.any())
    # The final observation is the observation of the last state, not the fresh reset.
    _, last_obs, *_ = jax.vmap(task.step)(before.task_state, actions)
    np.testing.assert_allclose(out.final_observation, last_obs, rtol=1e-5, atol=1e-6)
    assert not np.allclose(out.final_observation, out.observation)
    np.testing.assert_array_equal(state.episode_step, 0)


def test_circle_reset_distribution():
    task = make_task("saferl/BallCircle-v0")
    state = jax.vmap(lambda k: episode_reset(task, k))(jax.random.split(jax.random.PRNGKey(0),
                                                                        2000))
    radius = np.linalg.norm(np.asarray(state.task_state.position), axis=-1)
    assert radius.min() >= 2.0 - 1e-5 and radius.max() <= 4.0 + 1e-5
    # Uniform over the annulus' area: P(r ≤ 3) = (9 − 4)/(16 − 4).
    assert np.mean(radius <= 3.0) == pytest.approx(5 / 12, abs=0.04)


def test_vec_env_is_reproducible_and_gymnasium_make_works():
    a, b = NativeVecEnv(make_task(IDS[0]), 3), NativeVecEnv(make_task(IDS[0]), 3)
    np.testing.assert_array_equal(a.reset(seed=5), b.reset(seed=5))
    actions = np.full((3, 2), 0.3, np.float32)
    np.testing.assert_array_equal(a.step(actions).observation, b.step(actions).observation)
    env = gymnasium.make("saferl/BallCircle-v0")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (8,)
    for _ in range(200):
        obs, _reward, _terminated, truncated, info = env.step(env.action_space.sample())
    assert truncated and "cost" in info and info["costs"].shape == (1,)


def test_render_returns_an_image():
    env = NativeVecEnv(make_task("saferl/BallCircle-v0"), 2)
    env.reset(seed=0)
    frame = env.render(0)
    assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8
