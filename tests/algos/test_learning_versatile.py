"""Learning tests of versatile safe RL on native BallCircle: one policy for every threshold.

CCPO trains on the behaviour thresholds Ẽ = {20, 40, 60} (range E = [10, 70]) for 100 000
steps, with CVPO's small-budget settings of ``test_learning_off_policy`` (γ = 0.95, the last 20
iterations of replay, K = 16); the deployed deterministic policy is then evaluated at
{10, 15, …, 70}, 20 episodes each, 9 of the 13 thresholds never trained on.

Tolerances (seed 0; seed 1 measured alongside, same settings). Rank correlation of mean episode
cost with the threshold ≥ 0.8 (measured 0.92; seed 1 0.97). Avg CV, the mean over the 13
thresholds of max(0, cost − ε), ≤ 6 (15 % of the mean threshold 40; measured 3.7, the violation
sitting at 55–70 where the policy leaves the circle earlier than allowed; seed 1 0.0; the paper's
Ball-Circle figure is 0.59 after 10× the budget). Return ≥ random + 100 at every threshold
(measured ≥ 157 against random ≈ 21), and at ε = 60 at least that at ε = 20 (measured 549 vs
190): a larger budget buys return, so the policy really is conditioned. Across 5 seeds at
these settings Avg CV is 5.4 ± 3.4 (benchmarks/RESULTS.md, Issue 17), so the bound holds for
seed 0, not for every seed.

V-SAC-Lag (``vsac_lag``, 100 000 steps, multiplier step 0.1): its multipliers act on the
training episodes of each behaviour threshold, so those are what it is held to: the training
episode cost under each ε_b at most 1.1 ε_b (measured 17.1 / 35.9 / 61.3 at 20 / 40 / 60), and
the deterministic policy's cost rising with the threshold (rank correlation ≥ 0.8; measured
0.99). Its deterministic policy does not honour the low thresholds (cost ≈ 40 at ε = 10–35): the
high constraint violation the paper reports for this baseline, which CCPO is built to remove.

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


def test_ccpo_honours_thresholds_it_never_trained_on(tmp_path):
    run = saferl.train(
        "ccpo", "saferl/BallCircle-v0", cost_limit=40, steps=100_000, seed=0,
        run_dir=tmp_path / "ccpo", progress=False,
        overrides={"run": {"warmup_steps": 2000, "hidden_sizes": [64, 64], "update_ratio": 0.25,
                           "gamma": 0.95, "buffer_size": 4000},
                   "cvpo": {"num_samples": 16, "mstep_iterations": 3, "dual_iterations": 5},
                   "ccpo": {"behaviour_thresholds": [20, 40, 60], "threshold_range": [10, 70]}})
    result = saferl.evaluate_versatile(run.policy(), THRESHOLDS, episodes=20)
    rows = result.table()
    costs = [r["cost_0_mean"] for r in rows]
    returns = [r["return_mean"] for r in rows]
    table = [(t, round(r, 1), round(c, 1)) for t, r, c in zip(THRESHOLDS, returns, costs,
                                                              strict=True)]
    assert spearmanr(THRESHOLDS, costs).statistic >= 0.8, table
    metrics = result.metrics().summary()
    assert metrics["Avg CV"][0] <= 6.0, (metrics, table)
    baseline = random_return()
    assert min(returns) >= baseline + 100, (baseline, table)
    assert returns[THRESHOLDS.index(60)] >= returns[THRESHOLDS.index(20)], table
    assert np.isfinite(metrics["R-G"][0]) and metrics["R-G"][0] >= baseline + 100


def test_vsac_lag_keeps_each_behaviour_thresholds_training_cost(tmp_path):
    run = saferl.train(
        "vsac_lag", "saferl/BallCircle-v0", cost_limit=40, steps=100_000, seed=0,
        run_dir=tmp_path / "vsac", progress=False,
        overrides={"run": {"warmup_steps": 2000, "hidden_sizes": [64, 64],
                           "update_ratio": 0.25, "eval_episodes": 0},
                   "lagrange": {"lr": 0.1},
                   "versatile": {"behaviour_thresholds": [20, 40, 60]}})
    figures = run.summary["per_seed"][0]
    for b, threshold in enumerate((20.0, 40.0, 60.0)):
        assert figures[f"behaviour_{b}/ep_cost_0"] <= 1.1 * threshold, (b, figures)
    result = saferl.evaluate_versatile(run.policy(), THRESHOLDS, episodes=20)
    costs = [r["cost_0_mean"] for r in result.table()]
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
