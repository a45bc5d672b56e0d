"""GymVecEnv: the batched contract on Bullet, and exact values on hand-computable envs."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

from saferl.envs import EnvError, GymVecEnv, StepResult, VecEnv


class LineEnv(gymnasium.Env):
    """A point on a line: ``x += a``; obs ``[x, t]``; reward ``a``; cost ``1[x > 1.5]``.

    Terminates when ``x >= 2.5``. With ``costs=True`` it reports ``info["costs"] =
    [1[x > 1.5], |a|]`` instead of ``info["cost"]``.
    """

    observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (2,), np.float64)
    action_space = gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, costs: bool = False, cost_names: tuple[str, ...] | None = None) -> None:
        self.costs = costs
        self.cost_names = cost_names
        self.x = 0.0
        self.t = 0
        self.seeds: list[int | None] = []

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.seeds.append(seed)
        self.x, self.t = 0.0, 0
        return np.array([self.x, self.t], np.float64), {}

    def step(self, action):
        a = float(np.asarray(action).reshape(()))
        self.x += a
        self.t += 1
        info: dict = {}
        if self.costs:
            info["costs"] = np.array([float(self.x > 1.5), abs(a)])
            if self.cost_names:
                info["cost_names"] = self.cost_names
        else:
            info["cost"] = float(self.x > 1.5)
        return np.array([self.x, self.t]), a, self.x >= 2.5, False, info


class SafetyGymnasiumStyleEnv(LineEnv):
    """Same dynamics, Safety-Gymnasium's 6-tuple: ``(obs, reward, cost, term, trunc, info)``."""

    def __init__(self, vector: bool = False) -> None:
        super().__init__(costs=vector)
        self.vector = vector

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        cost = info.pop("costs") if self.vector else info.pop("cost")
        return obs, reward, cost, terminated, truncated, info


def test_bullet_ball_circle_contract() -> None:
    env = GymVecEnv("SafetyBallCircle-v0", num_envs=2, seed=0)
    try:
        assert isinstance(env, VecEnv)
        spec = env.spec
        assert (spec.id, spec.obs_dim, spec.action_dim) == ("SafetyBallCircle-v0", 8, 2)
        assert (spec.num_costs, spec.cost_names, spec.max_episode_steps) == (1, ("cost",), 200)
        assert spec.observation_space.dtype == np.float32

        first = env.reset(seed=3)
        assert first.shape == (2, 8) and first.dtype == np.float32
        assert not np.array_equal(first[0], first[1])  # copies are seeded 3 and 4

        push_right = np.tile(np.array([1.0, 0.0], np.float32), (2, 1))
        all_costs = []
        for t in range(1, 201):
            result = env.step(push_right)
            assert isinstance(result, StepResult)
            assert result.observation.shape == (2, 8) and result.observation.dtype == np.float32
            assert result.final_observation.shape == (2, 8)
            assert result.reward.shape == (2,) and result.reward.dtype == np.float32
            assert result.costs.shape == (2, 1) and result.costs.dtype == np.float32
            assert result.terminated.dtype == np.bool_ and result.truncated.dtype == np.bool_
            assert not result.terminated.any()
            all_costs.append(result.costs)
            if t < 200:
                assert not result.truncated.any()
                np.testing.assert_array_equal(result.final_observation, result.observation)
        assert result.truncated.all()
        # The final observation is the pushed ball's, not the fresh episode's nor the first one.
        assert not np.allclose(result.final_observation, result.observation)
        assert not np.allclose(result.final_observation, first)
        costs = np.concatenate(all_costs)
        assert set(np.unique(costs)) <= {0.0, 1.0}
        assert costs.max() == 1.0  # pushed along +x the ball leaves the safe strip |x| <= 6
    finally:
        env.close()


def _trajectory(env: GymVecEnv, seed: int, steps: int) -> list[np.ndarray]:
    out = [env.reset(seed)]
    actions = np.random.default_rng(1).uniform(-1, 1, (steps, env.num_envs, 2))
    for action in actions:
        result = env.step(action)
        out += [result.observation, result.reward, result.costs, result.final_observation]
    return out


def test_bullet_reset_seeding_is_reproducible_and_leaves_global_rng_alone() -> None:
    np.random.seed(42)  # noqa: NPY002
    before = np.random.get_state()[1].copy()  # noqa: NPY002
    env = GymVecEnv("SafetyBallRun-v0", num_envs=2, seed=5)
    other = GymVecEnv("SafetyBallRun-v0", num_envs=2, seed=5)
    try:
        # 120 steps cross the 100-step time limit, so the auto-reset is covered too.
        first, second = _trajectory(env, 11, 120), _trajectory(env, 11, 120)
        for a, b in zip(first, second, strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(first, _trajectory(other, 11, 120), strict=True):
            np.testing.assert_array_equal(a, b)
        assert not np.array_equal(env.reset(11), env.reset(12))
        np.testing.assert_array_equal(np.random.get_state()[1], before)  # noqa: NPY002
    finally:
        env.close()
        other.close()


def test_one_cost_exact_values_terminated_truncated_and_final_observation() -> None:
    env = GymVecEnv(LineEnv, num_envs=2, max_episode_steps=4)
    assert (env.spec.num_costs, env.spec.cost_names, env.spec.max_episode_steps) == (
        1, ("cost",), 4)
    np.testing.assert_array_equal(env.reset(0), np.zeros((2, 2), np.float32))
    # Copy 0 moves +1 per step (5.0 is clipped to 1.0), copy 1 moves +0.5.
    actions = np.array([[5.0], [0.5]])

    r = env.step(actions)
    np.testing.assert_array_equal(r.observation, [[1, 1], [0.5, 1]])
    np.testing.assert_array_equal(r.reward, [1.0, 0.5])
    np.testing.assert_array_equal(r.costs, [[0.0], [0.0]])

    r = env.step(actions)
    np.testing.assert_array_equal(r.observation, [[2, 2], [1, 2]])
    np.testing.assert_array_equal(r.costs, [[1.0], [0.0]])

    r = env.step(actions)  # copy 0 reaches x = 3 >= 2.5: terminated, reset to [0, 0]
    np.testing.assert_array_equal(r.terminated, [True, False])
    np.testing.assert_array_equal(r.truncated, [False, False])
    np.testing.assert_array_equal(r.observation, [[0, 0], [1.5, 3]])
    np.testing.assert_array_equal(r.final_observation, [[3, 3], [1.5, 3]])
    np.testing.assert_array_equal(r.costs, [[1.0], [0.0]])

    r = env.step(actions)  # copy 1 hits the 4-step limit at x = 2 (not terminal): truncated
    np.testing.assert_array_equal(r.terminated, [False, False])
    np.testing.assert_array_equal(r.truncated, [False, True])
    np.testing.assert_array_equal(r.observation, [[1, 1], [0, 0]])
    np.testing.assert_array_equal(r.final_observation, [[1, 1], [2, 4]])
    np.testing.assert_array_equal(r.costs, [[0.0], [1.0]])
    # The two arrays never alias, even on steps where they are equal.
    assert r.observation is not r.final_observation


def test_time_limit_wrapper_gives_truncated_and_the_spec_limit() -> None:
    env = GymVecEnv(lambda: gymnasium.wrappers.TimeLimit(LineEnv(), 2), num_envs=1)
    assert env.spec.max_episode_steps == 2
    env.reset(0)
    assert not env.step(np.array([[0.25]])).truncated[0]
    r = env.step(np.array([[0.25]]))
    assert r.truncated[0] and not r.terminated[0]
    np.testing.assert_array_equal(r.final_observation, [[0.5, 2]])
    np.testing.assert_array_equal(r.observation, [[0, 0]])


def test_cost_vector_from_info_costs() -> None:
    env = GymVecEnv(lambda: LineEnv(costs=True), num_envs=2)
    assert (env.spec.num_costs, env.spec.cost_names) == (2, ("cost_0", "cost_1"))
    env.reset(0)
    env.step(np.array([[1.0], [-0.25]]))
    r = env.step(np.array([[1.0], [-0.25]]))
    np.testing.assert_array_equal(r.costs, [[1.0, 1.0], [0.0, 0.25]])
    assert r.costs.shape == (2, 2) and r.costs.dtype == np.float32


def test_cost_names_from_info_and_declared() -> None:
    named = GymVecEnv(lambda: LineEnv(costs=True, cost_names=("position", "effort")))
    assert named.spec.cost_names == ("position", "effort")
    declared = GymVecEnv(lambda: LineEnv(costs=True), cost_names=["x", "a"], num_costs=2)
    assert declared.spec.cost_names == ("x", "a")


def test_declared_num_costs_must_match_the_probe() -> None:
    with pytest.raises(EnvError, match=r"num_costs=1 but its first step reports 2"):
        GymVecEnv(lambda: LineEnv(costs=True), num_costs=1)
    with pytest.raises(EnvError, match=r"3 cost_names but reports 2"):
        GymVecEnv(lambda: LineEnv(costs=True), cost_names=("a", "b", "c"))


def test_reset_seeds_copy_i_with_seed_plus_i() -> None:
    env = GymVecEnv(LineEnv, num_envs=3, seed=7)
    assert [e.seeds[-1] for e in env.envs] == [7, 8, 9]
    env.reset(100)
    assert [e.seeds[-1] for e in env.envs] == [100, 101, 102]
    env.reset()
    assert [e.seeds[-1] for e in env.envs] == [None, None, None]


def test_safety_gymnasium_six_tuple_scalar_and_vector_costs() -> None:
    env = GymVecEnv(SafetyGymnasiumStyleEnv, num_envs=2)
    assert (env.spec.num_costs, env.spec.cost_names) == (1, ("cost",))
    env.reset(0)
    env.step(np.array([[1.0], [0.5]]))
    r = env.step(np.array([[1.0], [0.5]]))
    np.testing.assert_array_equal(r.costs, [[1.0], [0.0]])
    np.testing.assert_array_equal(r.reward, [1.0, 0.5])
    r = env.step(np.array([[1.0], [0.5]]))
    np.testing.assert_array_equal(r.terminated, [True, False])
    np.testing.assert_array_equal(r.final_observation[0], [3, 3])

    vector = GymVecEnv(lambda: SafetyGymnasiumStyleEnv(vector=True), num_envs=1)
    assert vector.spec.num_costs == 2
    vector.reset(0)
    np.testing.assert_array_equal(vector.step(np.array([[-0.5]])).costs, [[0.0, 0.5]])


def test_env_object_factory_and_id_inputs() -> None:
    single = GymVecEnv(LineEnv(), num_envs=1, env_id="line")
    assert single.spec.id == "line" and single.num_envs == 1
    with pytest.raises(EnvError, match="factory"):
        GymVecEnv(LineEnv(), num_envs=2)
    with pytest.raises(EnvError, match=r"not a gymnasium\.Env"):
        GymVecEnv(lambda: object(), num_envs=1)
    with pytest.raises(EnvError, match="num_envs"):
        GymVecEnv(LineEnv, num_envs=0)


def test_flattens_multidimensional_box_observations() -> None:
    class Grid(LineEnv):
        observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (2, 2), np.float64)

        def reset(self, *, seed=None, options=None):
            _, info = super().reset(seed=seed)
            return np.array([[1.0, 2.0], [3.0, 4.0]]), info

        def step(self, action):
            _, *rest = super().step(action)
            return (np.array([[5.0, 6.0], [7.0, 8.0]]), *rest)

    env = GymVecEnv(Grid)
    assert env.spec.obs_dim == 4
    np.testing.assert_array_equal(env.reset(0), [[1, 2, 3, 4]])
    np.testing.assert_array_equal(env.step(np.zeros((1, 1))).observation, [[5, 6, 7, 8]])


def test_malformed_steps_and_actions_raise_env_error() -> None:
    class LosesCost(LineEnv):
        def step(self, action):
            obs, reward, terminated, truncated, info = super().step(action)
            return obs, reward, terminated, truncated, ({} if self.t > 1 else info)

    env = GymVecEnv(LosesCost)
    env.reset(0)
    env.step(np.zeros((1, 1)))  # step 1 still reports a cost; step 2 does not
    with pytest.raises(EnvError, match="no 'cost' or 'costs' key"):
        env.step(np.zeros((1, 1)))
    with pytest.raises(EnvError, match=r"needs \(1, 1\)"):
        GymVecEnv(LineEnv).step(np.zeros((2, 3)))
    with pytest.raises(EnvError, match="no 'cost' or 'costs' key"):
        GymVecEnv("Pendulum-v1")


def test_flattens_dict_observations_with_one_hot_discrete_parts() -> None:
    class DictObs(LineEnv):
        observation_space = gymnasium.spaces.Dict(
            {"x": gymnasium.spaces.Box(-np.inf, np.inf, (1,)), "t": gymnasium.spaces.Discrete(3)})

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return {"x": np.array([self.x]), "t": self.t}, {}

        def step(self, action):
            _, *rest = super().step(action)
            return ({"x": np.array([self.x]), "t": self.t % 3}, *rest)

    env = GymVecEnv(DictObs)
    assert env.spec.obs_dim == 4  # Dict keys are sorted: one-hot t (3), then x (1)
    np.testing.assert_array_equal(env.reset(0), [[1, 0, 0, 0]])
    np.testing.assert_array_equal(env.step(np.array([[0.5]])).observation, [[0, 1, 0, 0.5]])
