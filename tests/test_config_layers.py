"""Configuration layers: a partial table keeps the fields it leaves out at their defaults."""

from __future__ import annotations

import pytest

from saferl.algos.cvpo import CVPOConfig
from saferl.config import config_from_dict
from saferl.training import build_config


@pytest.mark.parametrize("algo", ["cvpo", "ccpo"])
def test_a_partial_run_table_keeps_the_sections_own_defaults(algo: str, tmp_path) -> None:
    # CVPOConfig.run defaults to OffPolicyConfig(tau=0.05); a run table that leaves tau out
    # (every saferl.train(env=...) call, a config file's [run], a sweep) used to reset it to
    # OffPolicyConfig's 0.005, so the API and the CLI trained different CVPOs.
    assert build_config(algo).run.tau == 0.05
    assert build_config(algo, overrides={"env": "saferl/CarCircle-v0"}).run.tau == 0.05
    assert build_config(algo, overrides={"run": {"steps": 1000}}).run.tau == 0.05
    path = tmp_path / "config.toml"
    path.write_text("[run]\nsteps = 1000\n")
    assert build_config(algo, path).run.tau == 0.05
    assert build_config(algo, overrides={"tau": 0.01}).run.tau == 0.01


def test_config_from_dict_lays_a_table_over_the_sections_default() -> None:
    config = config_from_dict(CVPOConfig, {"run": {"steps": 10}, "cvpo": {"num_samples": 4}})
    assert (config.run.tau, config.run.steps, config.cvpo.num_samples) == (0.05, 10, 4)
    assert config.cvpo.estep_kl == CVPOConfig().cvpo.estep_kl
