"""Learning tests of the off-policy family on native BallCircle (limit 10), fixed seeds.

Small budgets (tens of thousands of steps, 64×64 networks, 2 000 warm-up steps, 0.25 updates
per step) keep each test to a few minutes on two CPU cores.

Tolerances. The training figures are means over the last 5 iterations with finished episodes,
which here is only 5 × 8 = 40 stochastic episodes per seed (the on-policy tests average 320),
and the cost of single 8-episode windows swings between ~0 and ~20 around the limit. So:

* ``sac_lag``: training episode cost, averaged over the last 15 windows with finished
  episodes (120 stochastic episodes per seed), within 20 % of the limit. The multiplier moves
  once per finished episode batch (every 8 iterations here), and the policy swings around the
  limit from batch to batch (single windows 1.6–26.2 at the end of training), so a 5-window
  mean is too noisy for a 20 % band: it measured 8.8–10.2 on seeds 0–3, then 8.8 / 12.4 on
  seeds 0 / 1 after a change of the critics' first layer that only reorders floating-point sums;
  the 15-window means of that run are 9.0 / 10.7. The *final* policy is a snapshot of the swing:
  its deterministic cost measured 0.1–17.2 over seeds 0–3 and two seed batchings (its
  stochastic cost up to 20). The test holds the final deterministic policy to 2× the limit, far
  under unconstrained SAC's ≥ 30 (≈ 120 here).
* ``cvpo``: its multiplier is re-solved from the replay batch at every update (no memory), so
  the training cost oscillates more (single windows 0–35; 5-window means measured 7.8–14.6 on
  seeds 0–3): training cost within 50 % of the limit — still far below the ~120 of the
  unconstrained baseline — and the deterministic policy at or under the limit (measured 0–0.6).
"""

import math

import pytest

import saferl
from tests.algos.test_learning import LIMIT, random_return

pytestmark = pytest.mark.learning
ENV = "saferl/BallCircle-v0"
RUN = {"warmup_steps": 2000, "hidden_sizes": [64, 64], "update_ratio": 0.25}
SAC_LAG_TOLERANCE = 0.2 * LIMIT
CVPO_TOLERANCE = 0.5 * LIMIT


@pytest.fixture(scope="module")
def baseline():
    return random_return()


@pytest.fixture(scope="module")
def sac_lag_run(tmp_path_factory):
    # With the default multiplier step (0.05) seed 0 ended above the tolerance at this budget
    # (12.1; seed 1 11.3): λ peaks at ~10 after the warm-up and then decays too slowly.
    return saferl.train("sac_lag", ENV, cost_limit=LIMIT, steps=60_000, seeds=[0, 1],
                        run_dir=tmp_path_factory.mktemp("sac_lag") / "run", progress=False,
                        overrides={"run": RUN, "lagrange": {"lr": 0.1}})


def test_sac_lag_satisfies_the_limit_with_a_high_return(sac_lag_run, baseline):
    for index, (seed, figures) in enumerate(sac_lag_run.summary["per_seed"].items()):
        windows = [r["rollout/ep_cost_0"] for r in sac_lag_run.history
                   if int(r["seed"]) == seed and math.isfinite(r["rollout/ep_cost_0"])]
        assert len(windows) >= 15, (seed, len(windows))
        assert sum(windows[-15:]) / 15 <= LIMIT + SAC_LAG_TOLERANCE, (seed, windows[-15:])
        assert figures["rollout/ep_return"] >= baseline + 300, (seed, figures, baseline)
        deterministic = saferl.evaluate(sac_lag_run.policy(index), episodes=32).summary()
        assert deterministic["cost_0_mean"] <= 2 * LIMIT, (seed, deterministic)
        assert deterministic["return_mean"] >= baseline + 300, (seed, deterministic, baseline)
        # The constraint still binds at the end: λ stayed positive over the last 100 iterations
        # (measured minima 0.46 and 1.6), so the safety is not a side effect of a poor policy.
        tail = [r for r in sac_lag_run.history if int(r["seed"]) == seed][-100:]
        assert min(r["lagrange/lambda_0"] for r in tail) > 0, seed


def test_sac_exceeds_the_limit_so_the_constraint_binds(sac_lag_run, baseline, tmp_path):
    # Same networks, budget settings and seed as sac_lag's seed 0, no constraint: SAC converges
    # within ~15k steps to a high-return policy that leaves the safe band most of the time.
    run = saferl.train("sac", ENV, cost_limit=LIMIT, steps=20_000, seed=0,
                       run_dir=tmp_path / "sac", progress=False, overrides={"run": RUN})
    figures = run.summary["per_seed"][0]
    assert figures["rollout/ep_return"] >= baseline + 300, (figures, baseline)
    assert figures["rollout/ep_cost_0"] >= 3 * LIMIT, figures
    lagrangian = sac_lag_run.summary["per_seed"][0]["rollout/ep_cost_0"]
    assert figures["rollout/ep_cost_0"] >= 3 * lagrangian, (figures, lagrangian)
    assert run.summary["constraints_satisfied"] is False


def test_cvpo_satisfies_the_limit_with_a_high_return(baseline, tmp_path):
    # A short discount (0.95) and a small replay (the last 20 iterations) keep CVPO's cost
    # critic and replay-state constraint close to the current policy; with γ = 0.99 and the
    # full replay the cost critic lags and λ sits at its cap (100) for ~10k steps at a time,
    # the return collapsing to ~20 and the cost swinging 0 ↔ 100 over 40–60k steps. τ = 0.005
    # (not CVPO's default 0.05) is what these settings were tuned with.
    run = saferl.train("cvpo", ENV, cost_limit=LIMIT, steps=40_000, seed=0,
                       run_dir=tmp_path / "cvpo", progress=False,
                       overrides={"run": {**RUN, "gamma": 0.95, "buffer_size": 4000,
                                          "tau": 0.005},
                                  "cvpo": {"num_samples": 16, "mstep_iterations": 3,
                                           "dual_iterations": 5}})
    figures = run.summary["per_seed"][0]
    assert figures["rollout/ep_cost_0"] <= LIMIT + CVPO_TOLERANCE, figures
    assert figures["rollout/ep_return"] >= baseline + 150, (figures, baseline)
    deterministic = saferl.evaluate(run.policy(), episodes=32).summary()
    assert deterministic["cost_0_mean"] <= LIMIT, deterministic
    assert deterministic["return_mean"] >= baseline + 150, (deterministic, baseline)
