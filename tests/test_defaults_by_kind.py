"""Defaults by environment kind: native tasks get the configuration classes' defaults, host
environments (Bullet, gymnasium) the registry's ``host_defaults`` under everything else."""

from __future__ import annotations

import json
import re

import pytest

from saferl.algos.registry import ALGORITHMS
from saferl.cli import main
from saferl.config import config_to_dict
from saferl.envs.native import NATIVE_TASKS
from saferl.training import build_config, default_env

HOST_ENV = "SafetyBallCircle-v0"
WITH_HOST_DEFAULTS = sorted(name for name, entry in ALGORITHMS.items() if entry.host_defaults)


def _flatten(data: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def test_every_on_policy_algorithm_has_host_defaults() -> None:
    on_policy = sorted(name for name, entry in ALGORITHMS.items()
                       if entry.family == "on_policy")
    assert len(on_policy) == 8
    assert set(on_policy) <= set(WITH_HOST_DEFAULTS)
    for name in WITH_HOST_DEFAULTS:
        assert default_env(ALGORITHMS[name]) in NATIVE_TASKS


@pytest.mark.parametrize("algo", WITH_HOST_DEFAULTS)
def test_host_environments_get_the_host_defaults_native_tasks_the_class_defaults(
        algo: str) -> None:
    entry = ALGORITHMS[algo]
    native = _flatten(config_to_dict(build_config(algo)))
    assert native == _flatten(config_to_dict(entry.config_class()))
    host = _flatten(config_to_dict(build_config(algo, overrides={"env": HOST_ENV})))
    layer = _flatten(json.loads(json.dumps(dict(entry.host_defaults))))
    changed = {key for key in layer if layer[key] != native[key]}
    assert changed, f"{algo}'s host_defaults change nothing"
    for key, value in layer.items():
        assert host[key] == value, key
    # Everything else is the class default.
    assert {k: v for k, v in host.items() if k not in layer and k != "run.env"} == \
        {k: v for k, v in native.items() if k not in layer and k != "run.env"}


@pytest.mark.parametrize("algo", WITH_HOST_DEFAULTS)
def test_a_users_settings_win_over_the_host_defaults(algo: str, tmp_path) -> None:
    config = build_config(algo, overrides={"env": HOST_ENV, "num_envs": 8, "rollout_steps": 30})
    assert (config.run.num_envs, config.run.rollout_steps) == (8, 30)
    path = tmp_path / "config.toml"
    path.write_text(f'env = "{HOST_ENV}"\nnum_envs = 12\n')
    config = build_config(algo, path)
    assert config.run.num_envs == 12
    assert config.run.rollout_steps == \
        ALGORITHMS[algo].host_defaults["run"].get("rollout_steps", config.run.rollout_steps)


def test_the_command_line_steps_host_copies_in_two_workers(capsys) -> None:
    """``saferl train`` steps an on-policy run's host copies in 2 worker processes unless told
    otherwise, never more than its copies; Python keeps 1 (spawn needs a guarded script)."""
    assert build_config("ppo_lag", overrides={"env": HOST_ENV}).run.env_workers == 1
    assert build_config("ppo_lag", overrides={"env": HOST_ENV}, host_workers=2
                        ).run.env_workers == 2
    assert build_config("cpo", overrides={"env": HOST_ENV, "num_envs": 1}, host_workers=2
                        ).run.env_workers == 1
    assert build_config("sac_lag", overrides={"env": HOST_ENV, "env_workers": 3},
                        host_workers=2).run.env_workers == 3
    assert build_config("ppo_lag", host_workers=2).run.env_workers == 1  # native: in XLA
    assert build_config("sac_lag", overrides={"env": HOST_ENV}, host_workers=2
                        ).run.env_workers == 1  # off-policy: its updates fill the cores
    for flags, workers in (([], "2"), (["--num-envs", "1"], "1"), (["--num-envs=1"], "1")):
        assert main(["train", "ppo_lag", "--env", HOST_ENV, *flags, "--help"]) == 0
        assert _help_default(capsys.readouterr().out, "--env-workers") == workers
    assert main(["train", "ppo_lag", "--help"]) == 0
    assert _help_default(capsys.readouterr().out, "--env-workers") == "1"


def _help_default(text: str, flag: str) -> str:
    text = re.sub(r"[│╭╮╰╯─]", " ", text)
    text = re.sub(r"\s+", " ", text)
    match = re.search(re.escape(flag) + r" .*?\(default: ([^)]*)\)", text)
    assert match, f"{flag} not in the help"
    return match.group(1)


def test_cli_help_shows_the_defaults_of_the_environment_given(capsys) -> None:
    assert main(["train", "ppo_lag", "--help"]) == 0
    native = _help_default(capsys.readouterr().out, "--num-envs")
    assert main(["train", "ppo_lag", "--env", HOST_ENV, "--help"]) == 0
    host = _help_default(capsys.readouterr().out, "--num-envs")
    assert main(["train", "ppo_lag", f"--env={HOST_ENV}", "--help"]) == 0
    assert _help_default(capsys.readouterr().out, "--num-envs") == host
    assert host == str(ALGORITHMS["ppo_lag"].host_defaults["run"]["num_envs"])
    assert native == str(build_config("ppo_lag").run.num_envs)
    assert native != host
    assert main(["train", "ppo_lag", "--env", HOST_ENV, "--help"]) == 0
    assert _help_default(capsys.readouterr().out, "--ppo.minibatches") == \
        str(ALGORITHMS["ppo_lag"].host_defaults["ppo"]["minibatches"])



def test_a_sweep_run_on_a_host_environment_gets_the_host_defaults() -> None:
    from saferl.experiments.spec import plan_run

    host = plan_run({"algo": "ppo_lag", "env": HOST_ENV, "seed": 0}, {})
    native = plan_run({"algo": "ppo_lag", "env": "saferl/BallCircle-v0", "seed": 0}, {})
    assert host.config.run.num_envs == ALGORITHMS["ppo_lag"].host_defaults["run"]["num_envs"]
    assert native.config.run.num_envs == build_config("ppo_lag").run.num_envs
