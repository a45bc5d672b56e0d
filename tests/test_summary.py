"""The end-of-run summary: final figures per seed and the constraint verdict."""

import math
from pathlib import Path

from saferl.envs.native import make_task
from saferl.progress import print_summary
from saferl.training import summarize


def rows(seed, costs):
    # An iteration without a finished episode logs NaN return and cost.
    return [{"seed": seed, "rollout/ep_return": 10.0 * i if math.isfinite(c) else math.nan,
             "rollout/ep_cost_0": c, "train/cost_rate_0": 0.01} for i, c in enumerate(costs)]


def test_final_figures_average_the_last_iterations_with_episodes():
    spec = make_task("saferl/BallCircle-v0").spec
    history = rows(0, [30.0, 12.0, math.nan, 8.0]) + rows(1, [5.0, 6.0, 7.0, 9.0])
    summary = summarize(history, (0, 1), spec, (10.0,), last=2)
    # Seed 0: the NaN row (no finished episode) is skipped; the last two with episodes count.
    assert summary["per_seed"][0]["rollout/ep_cost_0"] == 10.0
    assert summary["per_seed"][1]["rollout/ep_cost_0"] == 8.0
    assert summary["constraints_satisfied"] is True
    summary = summarize(history, (0, 1), spec, (9.0,), last=2)
    assert summary["constraints_satisfied"] is False


def test_no_finished_episode_leaves_the_verdict_unknown(capsys):
    spec = make_task("saferl/BallCircle-v0").spec
    history = rows(0, [math.nan, math.nan]) + rows(1, [1.0, 2.0])
    summary = summarize(history, (0, 1), spec, (10.0,))
    assert math.isnan(summary["per_seed"][0]["rollout/ep_cost_0"])
    assert summary["constraints_satisfied"] is None
    print_summary(summary, spec, (10.0,), Path("runs/x"))
    assert "unknown" in capsys.readouterr().err


def test_a_conditioned_run_is_judged_at_each_behaviour_threshold(capsys):
    import numpy as np

    spec = make_task("saferl/BallCircle-v0").spec
    behaviour = np.array([[20.0], [40.0]])
    history = rows(0, [30.0, 12.0, 8.0])
    for row, (low, high) in zip(history, [(25.0, 50.0), (math.nan, 38.0), (15.0, 42.0)],
                                strict=True):
        row["rollout/behaviour_0/ep_cost_0"], row["rollout/behaviour_1/ep_cost_0"] = low, high
    summary = summarize(history, (0,), spec, (10.0,), last=2, behaviour=behaviour)
    # Per threshold, the last two iterations that finished an episode under it.
    assert summary["per_seed"][0]["behaviour_0/ep_cost_0"] == 20.0  # (25 + 15) / 2
    assert summary["per_seed"][0]["behaviour_1/ep_cost_0"] == 40.0  # (38 + 42) / 2
    # Judged against 20 and 40, not the run's cost_limit (10): within both.
    assert summary["constraints_satisfied"] is True
    print_summary(summary, spec, (10.0,), Path("runs/x"))
    err = capsys.readouterr().err
    assert "at ε = 20" in err and "at ε = 40" in err and "(≤ 10)" not in err
    assert "at every behaviour threshold the episode cost is within it" in err
    history[-1]["rollout/behaviour_1/ep_cost_0"] = 50.0
    assert summarize(history, (0,), spec, (10.0,), last=2,
                     behaviour=behaviour)["constraints_satisfied"] is False


def test_progress_line_keeps_every_figure_when_not_a_terminal():
    import io

    import numpy as np
    from rich.console import Console

    from saferl.progress import ProgressDisplay

    spec = make_task("saferl/BallCircle-v0", speed_limit=2.0).spec  # two costs
    out = io.StringIO()
    display = ProgressDisplay(2_000_000, spec, (10.0, 20.0), console=Console(file=out))
    with display:
        display.update(12_800, {"rollout/ep_return": np.array([1.0]),
                                "rollout/ep_cost_0": np.array([3.25]),
                                "rollout/ep_cost_1": np.array([4.5]),
                                "lagrange/lambda_1": np.array([0.125])})
        display.update(25_600, {"rollout/ep_return": np.array([2.0]),
                                "rollout/ep_cost_0": np.array([3.25]),
                                "rollout/ep_cost_1": np.array([4.5]),
                                "lagrange/lambda_1": np.array([0.125])})
    line = out.getvalue().strip().splitlines()[-1]
    assert "25,600/2,000,000" in line or "25600/2000000" in line
    for figure in ("steps/s", "R 2.0", "C0 3.25/10", "C1 4.50/20", "λ1 0.125", "ETA"):
        assert figure in line, (figure, line)
    assert not line.endswith("…")


def test_a_conditioned_runs_progress_line_carries_each_thresholds_latest_cost():
    import numpy as np

    from saferl.progress import ProgressDisplay

    spec = make_task("saferl/BallCircle-v0").spec
    display = ProgressDisplay(10_000, spec, (10.0,), enabled=False,
                              behaviour=np.array([[20.0], [40.0]]))
    first = display.stats({"rollout/ep_return": np.array([5.0]),
                           "rollout/behaviour_0/ep_cost_0": np.array([12.5]),
                           "rollout/behaviour_1/ep_cost_0": np.array([np.nan])})
    assert "C0@20 12.50" in first and "C0@40 nan" in first and "/10" not in first
    # An iteration that finished an episode only under 40 keeps showing 20's latest figure.
    second = display.stats({"rollout/ep_return": np.array([6.0]),
                            "rollout/behaviour_0/ep_cost_0": np.array([np.nan]),
                            "rollout/behaviour_1/ep_cost_0": np.array([33.0])})
    assert "C0@20 12.50" in second and "C0@40 33.00" in second
