"""make / list_envs: resolution of ids, clear errors, optional backends."""

from __future__ import annotations

import sys
import types

import gymnasium
import numpy as np
import pytest

import saferl.envs as envs
from saferl.envs import (
    EnvError,
    GymVecEnv,
    MissingBackendError,
    NativeVecEnv,
    list_envs,
    make,
)
from saferl.envs.make import UnknownEnvError
from saferl.envs.safety_gymnasium import is_safety_gymnasium_id
from tests.envs.test_gym_adapter import LineEnv, SafetyGymnasiumStyleEnv


def test_public_exports() -> None:
    for name in ("EnvSpec", "StepResult", "VecEnv", "EnvError", "NonFiniteError",
                 "MissingBackendError", "make", "list_envs", "check_env", "GymVecEnv",
                 "NativeVecEnv"):
        assert hasattr(envs, name), name
    assert issubclass(MissingBackendError, ImportError)


def test_native_id_gives_native_vec_env_with_its_spec() -> None:
    env = make("saferl/BallCircle-v0", num_envs=3, seed=1)
    assert isinstance(env, NativeVecEnv) and env.num_envs == 3
    spec = env.spec
    assert (spec.id, spec.obs_dim, spec.action_dim, spec.num_costs, spec.max_episode_steps) == (
        "saferl/BallCircle-v0", 8, 2, 1, 200)
    assert env.reset(1).shape == (3, 8)
    # Keyword arguments go to the task: a speed limit adds a second cost.
    assert make("saferl/BallCircle-v0", speed_limit=2.0).spec.num_costs == 2


def test_bullet_id_gives_gym_vec_env() -> None:
    env = make("SafetyBallRun-v0", num_envs=2, seed=0)
    try:
        assert isinstance(env, GymVecEnv)
        assert (env.spec.obs_dim, env.spec.num_costs, env.spec.max_episode_steps) == (7, 1, 100)
    finally:
        env.close()


def test_unknown_id_suggests_the_nearest_match() -> None:
    with pytest.raises(UnknownEnvError) as caught:
        make("SafetyBalCircle-v0")
    message = str(caught.value)
    assert "did you mean 'SafetyBallCircle-v0'" in message and "saferl list" in message
    assert isinstance(caught.value, EnvError)
    with pytest.raises(UnknownEnvError, match="did you mean 'saferl/BallCircle-v0'"):
        make("saferl/BallCirle-v0")
    # with worker processes too (saferl train gives host on-policy runs 2): before, a mistyped
    # native id was told that native tasks cannot use workers
    with pytest.raises(UnknownEnvError, match="did you mean 'saferl/BallCircle-v0'"):
        make("saferl/BallCirce-v0", workers=2)
    with pytest.raises(UnknownEnvError, match="run `saferl list`"):
        make("qwertyuiop")


def test_safety_gymnasium_id_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "safety_gymnasium", None)  # makes the import fail
    with pytest.raises(MissingBackendError, match=r"'SafetyPointGoal1-v0' is a Safety-Gymnasium "
                                                  r"id.*`pip install safety-gymnasium`"):
        make("SafetyPointGoal1-v0")
    with pytest.raises(ImportError, match="pip install safety-gymnasium"):
        make("SafetyHopperVelocity-v1", num_envs=2)


def test_safety_gymnasium_id_through_an_installed_backend(
        monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[str, dict]] = []

    def fake_make(env_id: str, **kwargs) -> gymnasium.Env:
        made.append((env_id, kwargs))
        return SafetyGymnasiumStyleEnv()

    fake = types.ModuleType("safety_gymnasium")
    fake.make = fake_make  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "safety_gymnasium", fake)
    env = make("SafetyCarGoal2-v0", num_envs=2, seed=3, render_mode=None)
    assert isinstance(env, GymVecEnv) and env.spec.id == "SafetyCarGoal2-v0"
    assert made == [("SafetyCarGoal2-v0", {"render_mode": None})] * 2
    assert env.spec.num_costs == 1
    env.step(np.ones((2, 1)))
    np.testing.assert_array_equal(env.step(np.ones((2, 1))).costs, [[1.0], [1.0]])


def test_recognises_safety_gymnasium_ids() -> None:
    for env_id in ("SafetyPointGoal1-v0", "SafetyDoggoButton2-v0", "SafetyRacecarPush0-v0",
                   "SafetyAntCircle1-v0", "SafetyCarRun0-v0", "SafetyPointGoal1Vision-v0",
                   "SafetyPointGoal1Gymnasium-v0", "SafetyHalfCheetahVelocity-v1",
                   "SafetyHumanoidVelocity-v0", "SafetyWalker2dVelocity-v1"):
        assert is_safety_gymnasium_id(env_id), env_id
    for env_id in ("SafetyBallCircle-v0", "SafetyCarCircle-v0", "SafetyAntRun-v0",
                   "SafetyPointGoal3-v0", "saferl/BallCircle-v0", "Pendulum-v1"):
        assert not is_safety_gymnasium_id(env_id), env_id


def test_num_envs_is_validated() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(EnvError, match="num_envs must be an integer >= 1"):
            make("saferl/BallCircle-v0", num_envs=bad)  # type: ignore[arg-type]


def test_gymnasium_id_without_costs_or_with_discrete_actions() -> None:
    with pytest.raises(EnvError, match=r"'Pendulum-v1': info has no 'cost' or 'costs' key"):
        make("Pendulum-v1")
    with pytest.raises(EnvError, match="discrete action space"):
        make("CartPole-v1")


def test_env_objects_and_factories() -> None:
    single = make(LineEnv(), seed=4)
    assert isinstance(single, GymVecEnv) and single.envs[0].seeds[-1] == 4
    batch = make(lambda: LineEnv(costs=True), num_envs=2, cost_names=("x", "a"))
    assert batch.spec.cost_names == ("x", "a") and batch.num_envs == 2


def test_list_envs_covers_native_and_bullet_tasks() -> None:
    listed = list_envs()
    for env_id in ("saferl/BallCircle-v0", "saferl/CarRun-v0"):
        assert env_id in listed
    for agent in ("Ball", "Car", "Drone", "Ant"):
        for task in ("Circle", "Run", "Gather"):
            assert f"Safety{agent}{task}-v0" in listed
    assert "200 steps, obs 8, act 2" in listed["SafetyBallCircle-v0"]
    assert "500 steps, obs 34, act 8" in listed["SafetyAntCircle-v0"]
    assert "above 2.5 m/s" in listed["SafetyBallRun-v0"]
    assert all(isinstance(text, str) and "\n" not in text for text in listed.values())
