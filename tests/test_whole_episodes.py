"""On-policy rollouts default to whole episodes of the task's time limit (issue 16: CPO's cost
at evaluation on native CarCircle), and a rollout length that splits episodes is noted."""

from __future__ import annotations

import pytest

from saferl.algos.registry import ALGORITHMS
from saferl.cli import main
from saferl.envs.resolve import time_limit
from saferl.training import build_config, whole_episodes

ON_POLICY = sorted(name for name, entry in ALGORITHMS.items() if entry.family == "on_policy")
OFF_POLICY = sorted(name for name, entry in ALGORITHMS.items() if entry.family == "off_policy")


@pytest.mark.parametrize(("env", "kwargs", "expected"), [
    ("saferl/BallCircle-v0", None, 200),
    ("saferl/CarCircle-v0", None, 300),
    ("saferl/BallRun-v0", None, 100),
    ("saferl/CarRun-v0", None, 200),
    ("saferl/CarCircle-v0", {"max_episode_steps": 150}, 150),
    ("saferl/CarCircle-v0", {"no_such_parameter": 1}, None),  # building the task reports it
    ("SafetyCarCircle-v0", None, 300),
    ("SafetyBallGather-v0", None, 250),
    ("SafetyAntCircle-v0", None, 500),
    ("SafetyBallReach-v0", None, None),  # not a benchmark task: its length is not on record
    ("CartPole-v1", None, None),
])
def test_time_limits_saferl_knows_without_building_the_task(env, kwargs, expected) -> None:
    assert time_limit(env, kwargs) == expected


@pytest.mark.parametrize(("rollout", "limit", "expected"), [
    (200, 300, 300), (200, 200, 200), (200, 100, 200), (200, 150, 300), (200, 250, 250),
    (200, 1000, 1000), (200, None, 200), (200, 0, 200),
])
def test_whole_episodes_rounds_the_default_up_to_a_multiple_of_the_limit(
        rollout, limit, expected) -> None:
    assert whole_episodes(rollout, limit) == expected


@pytest.mark.parametrize("algo", ON_POLICY)
def test_on_policy_defaults_are_whole_episodes(algo: str) -> None:
    default = ALGORITHMS[algo].config_class().run.rollout_steps
    assert default == 200
    assert build_config(algo).run.rollout_steps == 200  # BallCircle: 200-step episodes
    assert build_config(algo, overrides={"env": "saferl/CarCircle-v0"}).run.rollout_steps == 300
    assert build_config(algo, overrides={"env": "SafetyBallGather-v0"}).run.rollout_steps == 250
    short = {"env": "saferl/CarCircle-v0", "env_kwargs": {"max_episode_steps": 120}}
    assert build_config(algo, overrides=short).run.rollout_steps == 240
    # A user's rollout length is kept, from the command line or from a file's section.
    mine = {"env": "saferl/CarCircle-v0", "rollout_steps": 200}
    assert build_config(algo, overrides=mine).run.rollout_steps == 200
    assert build_config(algo, overrides={"run": mine}).run.rollout_steps == 200


@pytest.mark.parametrize("algo", OFF_POLICY)
def test_off_policy_rollouts_are_untouched(algo: str) -> None:
    config = build_config(algo, overrides={"env": "saferl/CarCircle-v0"})
    assert config.run.rollout_steps == ALGORITHMS[algo].config_class().run.rollout_steps


def _train_output(capsys, tmp_path, name: str, *flags: str) -> str:
    assert main(["train", "cpo", "--env", "saferl/CarCircle-v0", "--num-envs", "4", "--steps",
                 "1", "--hidden-sizes", "8", "--eval-episodes", "0", "--run-dir",
                 str(tmp_path / name), *flags]) == 0
    captured = capsys.readouterr()
    return " ".join((captured.out + captured.err).split())


def test_a_rollout_that_splits_episodes_is_noted(capsys, tmp_path) -> None:
    split = _train_output(capsys, tmp_path, "split", "--rollout-steps", "200")
    assert ("rollout_steps 200 is not a whole number of this task's 300-step episodes" in split)
    assert "a multiple of 300 avoids it" in split
    whole = _train_output(capsys, tmp_path, "whole")
    assert "whole number of this task's" not in whole
