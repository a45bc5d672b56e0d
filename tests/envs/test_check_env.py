"""check_env: one test per kind of malformed environment, each asserting the message."""

from __future__ import annotations

import warnings

import gymnasium
import numpy as np
import pytest

from saferl.envs import EnvError, NativeVecEnv, NonFiniteError, StepResult, check_env
from saferl.envs.checker import EnvCheckWarning
from saferl.envs.make import UnknownEnvError
from saferl.envs.native import make_task


class GoodEnv(gymnasium.Env):
    """A well-formed CMDP; each test breaks one thing by overriding a method or attribute."""

    observation_space = gymnasium.spaces.Box(-10.0, 10.0, (3,), np.float32)
    action_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def __init__(self) -> None:
        self.t = 0

    def observation(self) -> np.ndarray:
        return np.full(3, 0.01 * self.t + float(self.np_random.uniform(0, 1)), np.float32)

    def cost_info(self) -> dict:
        return {"cost": float(self.t % 3 == 0)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation(), {}

    def step(self, action):
        self.t += 1
        return self.observation(), float(np.sum(action)), False, self.t >= 20, self.cost_info()


def _check_quietly(env) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env)


def test_good_env_object_and_factory_pass_without_warnings() -> None:
    _check_quietly(GoodEnv())
    _check_quietly(GoodEnv)


def test_vector_costs_and_safety_gymnasium_six_tuple_pass() -> None:
    class VectorCosts(GoodEnv):
        def cost_info(self):
            return {"costs": np.array([0.0, 1.0])}

    class SixTuple(GoodEnv):
        def step(self, action):
            obs, reward, terminated, truncated, info = super().step(action)
            return obs, reward, info.pop("cost"), terminated, truncated, info

    _check_quietly(VectorCosts())
    _check_quietly(SixTuple())


def test_no_cost_key() -> None:
    class NoCost(GoodEnv):
        def cost_info(self):
            return {"speed": 1.0}

    with pytest.raises(EnvError, match=r"info has no 'cost' or 'costs' key after step\(\); "
                                       r"return the step's cost as info\['cost'\]"):
        check_env(NoCost())


def test_scalar_cost_with_vector_shape() -> None:
    class VectorInCost(GoodEnv):
        def cost_info(self):
            return {"cost": np.array([0.0, 1.0])}

    with pytest.raises(EnvError, match=r"info\['cost'\] has shape \(2,\) .* must be a scalar"):
        check_env(VectorInCost())


def test_costs_must_be_one_dimensional() -> None:
    class MatrixCosts(GoodEnv):
        def cost_info(self):
            return {"costs": np.zeros((2, 2))}

    with pytest.raises(EnvError, match=r"info\['costs'\] has shape \(2, 2\) .* 1-D vector"):
        check_env(MatrixCosts())


def test_cost_shape_must_not_change_between_steps() -> None:
    class ChangingCosts(GoodEnv):
        def cost_info(self):
            return {"costs": np.zeros(2 if self.t < 3 else 3)}

    with pytest.raises(EnvError, match=r"shape \(3,\) at step 2 but \(2,\) at the first step"):
        check_env(ChangingCosts())


def test_non_numeric_cost() -> None:
    class TextCost(GoodEnv):
        def cost_info(self):
            return {"cost": "high"}

    with pytest.raises(EnvError, match=r"info\['cost'\] at step 0 is 'high', not a number"):
        check_env(TextCost())


def test_non_finite_cost() -> None:
    class NaNCost(GoodEnv):
        def cost_info(self):
            return {"cost": float("nan") if self.t == 4 else 0.0}

    with pytest.raises(NonFiniteError, match=r"info\['cost'\] is nan at step 3, which is not "
                                             r"finite"):
        check_env(NaNCost())


def test_negative_cost_warns_but_passes() -> None:
    class NegativeCost(GoodEnv):
        def cost_info(self):
            return {"cost": -1.0}

    with pytest.warns(EnvCheckWarning, match="negative"):
        check_env(NegativeCost())


def test_discrete_action_space() -> None:
    class Discrete(GoodEnv):
        action_space = gymnasium.spaces.Discrete(3)

    with pytest.raises(EnvError, match=r"discrete action space .* not support"):
        check_env(Discrete())


def test_unbounded_action_space() -> None:
    class Unbounded(GoodEnv):
        action_space = gymnasium.spaces.Box(-np.inf, np.inf, (2,), np.float32)

    with pytest.raises(EnvError, match=r"unbounded action Box.*finite low and high"):
        check_env(Unbounded())


def test_observation_space_that_cannot_be_flattened() -> None:
    class Sequence(GoodEnv):
        observation_space = gymnasium.spaces.Sequence(gymnasium.spaces.Discrete(2))

    with pytest.raises(EnvError, match=r"observation space .* cannot be flattened"):
        check_env(Sequence())


def test_reset_returning_only_the_observation() -> None:
    class OldReset(GoodEnv):
        def reset(self, *, seed=None, options=None):
            return super().reset(seed=seed)[0]

    with pytest.raises(EnvError, match=r"reset\(\) returned only the observation; return "
                                       r"\(observation, info\)"):
        check_env(OldReset())


def test_observation_of_the_wrong_shape() -> None:
    class WrongShape(GoodEnv):
        def observation(self):
            return np.zeros(4, np.float32)

    with pytest.raises(EnvError, match=r"observation of shape \(4,\) but observation_space has "
                                       r"shape \(3,\)"):
        check_env(WrongShape())


def test_old_gym_four_tuple_step() -> None:
    class OldStep(GoodEnv):
        def step(self, action):
            obs, reward, terminated, truncated, info = super().step(action)
            return obs, reward, terminated or truncated, info

    with pytest.raises(EnvError, match="step\\(\\) returned 4 values, the old gym API"):
        check_env(OldStep())


def test_reward_must_be_a_finite_scalar() -> None:
    class VectorReward(GoodEnv):
        def step(self, action):
            obs, _, terminated, truncated, info = super().step(action)
            return obs, np.array([1.0, 2.0]), terminated, truncated, info

    class InfiniteReward(GoodEnv):
        def step(self, action):
            obs, _, terminated, truncated, info = super().step(action)
            return obs, float("inf"), terminated, truncated, info

    with pytest.raises(EnvError, match=r"returned reward array\(\[1\., 2\.\]\) .* one float"):
        check_env(VectorReward())
    with pytest.raises(NonFiniteError, match="reward inf at step 0, which is not finite"):
        check_env(InfiniteReward())


def test_terminated_must_be_a_bool() -> None:
    class IntFlags(GoodEnv):
        def step(self, action):
            obs, reward, terminated, truncated, info = super().step(action)
            return obs, reward, int(terminated), truncated, info

    with pytest.raises(EnvError, match="terminated=0 of type int; return a bool"):
        check_env(IntFlags())


def test_info_must_be_a_dict() -> None:
    class ListInfo(GoodEnv):
        def step(self, action):
            obs, reward, terminated, truncated, _ = super().step(action)
            return obs, reward, terminated, truncated, []

    with pytest.raises(EnvError, match="info of type list; return a dict"):
        check_env(ListInfo())


def test_reset_ignoring_its_seed_warns() -> None:
    class Unseeded(GoodEnv):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng()

        def observation(self):
            return self.rng.uniform(-1, 1, 3).astype(np.float32)

    with pytest.warns(EnvCheckWarning, match=r"reset\(seed=0\) gave a different first"):
        check_env(Unseeded())


def test_reset_drawing_from_the_global_rng_warns_with_the_workaround() -> None:
    class GlobalRng(GoodEnv):
        def observation(self):
            return np.random.uniform(-1, 1, 3).astype(np.float32)  # noqa: NPY002

    with pytest.warns(EnvCheckWarning, match="seed_global_rng=True"):
        check_env(GlobalRng())


def test_ids_and_vec_envs() -> None:
    _check_quietly("saferl/BallRun-v0")
    _check_quietly(NativeVecEnv(make_task("saferl/CarCircle-v0"), num_envs=3, seed=1))
    with pytest.raises(UnknownEnvError, match="saferl list"):
        check_env("NoSuchEnv-v0")
    with pytest.raises(EnvError, match="cannot check a int"):
        check_env(3)  # type: ignore[arg-type]


def test_vec_env_with_wrong_cost_shape() -> None:
    class BadCosts(NativeVecEnv):
        def step(self, actions):
            result = super().step(actions)
            return result._replace(costs=result.costs[:, 0])

    env = BadCosts(make_task("saferl/BallCircle-v0"), num_envs=2)
    with pytest.raises(EnvError, match=r"step\(\) costs has shape \(2,\) but should be \(2, 1\)"):
        check_env(env)


def test_vec_env_final_observation_must_match_where_no_episode_ended() -> None:
    class BadFinal(NativeVecEnv):
        def step(self, actions):
            result = super().step(actions)
            return StepResult(*result[:5], final_observation=result.final_observation + 1.0)

    env = BadFinal(make_task("saferl/BallCircle-v0"), num_envs=2)
    with pytest.raises(EnvError, match="final_observation differs from observation"):
        check_env(env)
