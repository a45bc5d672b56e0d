"""Host environments in worker processes: the same numbers as in-process, errors that say why."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from saferl.envs import EnvError, GymVecEnv, UnknownEnvError, make
from saferl.envs.workers import SubprocVecEnv
from tests.envs.test_gym_adapter import LineEnv


def assert_same_run(ours, reference, actions) -> None:
    np.testing.assert_array_equal(ours.reset(3), reference.reset(3))
    for a in actions:
        got, want = ours.step(a), reference.step(a)
        for name, x, y in zip(want._fields, got, want, strict=True):
            np.testing.assert_array_equal(x, y, err_msg=name)


def test_bullet_copies_in_two_workers_equal_the_in_process_batch() -> None:
    """Copy i keeps seed + i and its own random stream across shards; auto-reset at step 200."""
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (230, 3, 2)).astype(np.float32)
    reference = GymVecEnv("SafetyBallCircle-v0", num_envs=3, seed=11)
    ours = make("SafetyBallCircle-v0", num_envs=3, seed=11, workers=2)
    try:
        assert isinstance(ours, SubprocVecEnv) and ours.spec == reference.spec
        assert_same_run(ours, reference, actions)
    finally:
        ours.close()
        reference.close()


def test_two_cost_factory_with_terminations() -> None:
    factory = functools.partial(LineEnv, costs=True)
    actions = np.tile(np.array([[1.0], [0.5], [-0.2], [1.0], [0.7]], np.float32), (9, 1, 1))
    reference = GymVecEnv(factory, num_envs=5, seed=0)
    ours = SubprocVecEnv(factory, num_envs=5, seed=0, workers=3)
    try:
        assert ours.spec.num_costs == 2
        assert_same_run(ours, reference, actions)
        assert "workers=3" in repr(ours)
    finally:
        ours.close()


def test_worker_errors_keep_their_type_and_say_what_to_do() -> None:
    with pytest.raises(UnknownEnvError, match="SafetyBallCirle-v0"):
        make("SafetyBallCirle-v0", num_envs=2, workers=2)
    with pytest.raises(EnvError, match="picklable factory"):
        make(lambda: LineEnv(), num_envs=2, workers=2)
    with pytest.raises(EnvError, match="native tasks"):
        make("saferl/BallCircle-v0", num_envs=2, workers=2)
    with pytest.raises(EnvError, match="between 1 and num_envs=2"):
        make("SafetyBallCircle-v0", num_envs=2, workers=3)
    env = SubprocVecEnv(LineEnv, num_envs=2, workers=2)
    try:
        with pytest.raises(EnvError, match="actions for 3 copies"):
            env.step(np.zeros((3, 1), np.float32))
        with pytest.raises(EnvError):  # a malformed action, raised in the worker
            env.step(np.zeros((2, 4), np.float32))
        env.step(np.zeros((2, 1), np.float32))  # the workers are still serving
    finally:
        env.close()


def test_env_workers_setting_is_checked(tmp_path) -> None:
    import saferl

    with pytest.raises(ValueError, match="native tasks"):
        saferl.train("sac_lag", "saferl/BallCircle-v0", steps=1000,
                     overrides={"run": {"env_workers": 2}}, progress=False,
                     run_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="env_workers must be between 1 and num_envs=8"):
        saferl.train("ppo_lag", "SafetyBallCircle-v0", steps=1000,
                     overrides={"run": {"env_workers": 9, "num_envs": 8}}, progress=False,
                     run_dir=tmp_path / "b")
