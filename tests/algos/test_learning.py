"""Learning tests on native BallCircle (cost limit 10 per 200-step episode), fixed seeds.

Tolerance: the Lagrangian keeps the *training* episode cost oscillating around the limit, so the
stochastic policy's mean episode cost over the last 5 iterations (5 × 64 episodes per seed) may
exceed the limit by at most 15 %; the final deterministic policy must be at or under the limit.
"""

import numpy as np
import pytest

import saferl

pytestmark = pytest.mark.learning
LIMIT = 10.0
TOLERANCE = 0.15 * LIMIT


def random_return(episodes: int = 16) -> float:
    rng = np.random.default_rng(0)
    policy = lambda obs, deterministic=True: rng.uniform(-1, 1, (len(obs), 2))  # noqa: E731
    return saferl.evaluate(policy, "saferl/BallCircle-v0", episodes=episodes).returns.mean()


@pytest.fixture(scope="module")
def ppo_lag_run(tmp_path_factory):
    return saferl.train("ppo_lag", "saferl/BallCircle-v0", cost_limit=LIMIT, steps=1_500_000,
                        seeds=[0, 1], run_dir=tmp_path_factory.mktemp("lag") / "run",
                        progress=False)


def test_ppo_lag_satisfies_the_limit_with_a_high_return(ppo_lag_run):
    baseline = random_return()
    for seed, figures in ppo_lag_run.summary["per_seed"].items():
        assert figures["rollout/ep_cost_0"] <= LIMIT + TOLERANCE, (seed, figures)
        assert figures["rollout/ep_return"] >= baseline + 300, (seed, figures, baseline)
    deterministic = saferl.evaluate(ppo_lag_run.policy(0), episodes=32).summary()
    assert deterministic["cost_0_mean"] <= LIMIT, deterministic
    assert deterministic["return_mean"] >= baseline + 300, deterministic


def test_ppo_exceeds_the_limit_so_the_constraint_binds(ppo_lag_run, tmp_path):
    run = saferl.train("ppo", "saferl/BallCircle-v0", cost_limit=LIMIT, steps=1_000_000, seed=0,
                       run_dir=tmp_path / "ppo", progress=False)
    figures = run.summary["per_seed"][0]
    assert figures["rollout/ep_cost_0"] >= 3 * LIMIT, figures
    lagrangian = ppo_lag_run.summary["mean_std"]["rollout/ep_return"][0]
    assert figures["rollout/ep_return"] > lagrangian, (figures, lagrangian)
    assert run.summary["constraints_satisfied"] is False
