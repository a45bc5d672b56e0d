"""Learning test of CCPO on native BallCircle: one policy for every threshold.

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
"""

import numpy as np
import pytest
from scipy.stats import spearmanr

import saferl
from tests.algos.test_learning import random_return
from tests.algos.test_learning_versatile import THRESHOLDS

pytestmark = pytest.mark.learning


def test_ccpo_honours_thresholds_it_never_trained_on(tmp_path):
    run = saferl.train(
        "ccpo", "saferl/BallCircle-v0", cost_limit=40, steps=100_000, seed=0,
        run_dir=tmp_path / "ccpo", progress=False,
        overrides={"run": {"warmup_steps": 2000, "hidden_sizes": [64, 64], "update_ratio": 0.25,
                           "gamma": 0.95, "buffer_size": 4000, "tau": 0.005},
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
