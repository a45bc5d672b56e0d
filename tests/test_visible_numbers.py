"""Honest, visible numbers: carried episode figures, curves, plain progress lines off a
terminal, the deployed policy's evaluation, and run-folder names."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from rich.console import Console

from saferl.cli import main
from saferl.envs.native import make_task
from saferl.evaluation import EvalResult, evaluate_run
from saferl.progress import EpisodeCarry, ProgressDisplay, evaluation_verdict, print_evaluation
from saferl.runs import RunDirectory, carried_series, draw_curves, new_run_dir
from tests.conftest import SMALL

NAN = math.nan


def test_carried_series_holds_the_latest_episode_per_seed():
    returns = {0: [NAN, 5.0, NAN, NAN, 7.0], 1: [1.0, NAN, NAN, 3.0, NAN]}
    rows = [{"env_steps": 100.0 * (t + 1), "seed": float(seed), "rollout/ep_return": value}
            for seed, values in returns.items() for t, value in enumerate(values)]
    steps, values, fresh = carried_series(rows, "rollout/ep_return")
    assert steps.tolist() == [100, 200, 300, 400, 500]
    np.testing.assert_array_equal(values[:, 0], [NAN, 5, 5, 5, 7])
    np.testing.assert_array_equal(values[:, 1], [1, 1, 1, 3, 3])
    assert fresh.tolist() == [[False, True], [True, False], [False, False], [False, True],
                              [True, False]]


def _log_sparse_episodes(run: RunDirectory, iterations: int = 12) -> None:
    """Two seeds that finish an episode only every third (seed 0) / fourth (seed 1) iteration."""
    for t in range(1, iterations + 1):
        finished = np.array([t % 3 == 0, t % 4 == 0])
        metrics = {"rollout/ep_return": np.where(finished, [10.0 * t, 20.0 * t], NAN),
                   "rollout/ep_cost_0": np.where(finished, [t, 2.0 * t], NAN),
                   "train/cost_rate_0": np.array([0.1, 0.2])}
        run.log(t, 1000 * t, float(t), (0, 1), metrics)
    run.close()


def test_curves_of_a_run_where_most_iterations_finish_no_episode(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.write_config({"algo": "sac_lag", "config": {"run": {"env": "saferl/BallCircle-v0"}}})
    _log_sparse_episodes(run)
    fig = draw_curves(run, (10.0,), ("cost",))
    ret_ax, cost_ax = fig.axes
    line = ret_ax.lines[0]
    x, y = line.get_xdata(), line.get_ydata()
    # From the first iteration where both seeds have an episode (t = 4), the line is the mean of
    # each seed's latest episode; before that it is the mean of the seeds that have one.
    expected = {3: 30.0, 4: (30 + 80) / 2, 5: (30 + 80) / 2, 6: (60 + 80) / 2, 8: (60 + 160) / 2,
                9: (90 + 160) / 2, 12: (120 + 240) / 2}
    for t, value in expected.items():
        assert y[list(x).index(1000 * t)] == pytest.approx(value)
    assert np.isfinite(y[2:]).all() and not np.isfinite(y[:2]).any()
    cost = cost_ax.lines[0].get_ydata()
    assert cost[list(x).index(12_000)] == pytest.approx((12 + 24) / 2)
    labels = [t.get_text() for t in ret_ax.get_legend().get_texts()]
    assert "min–max over 2 seeds" in labels and "mean of the latest episodes" in labels
    assert any("limit 10" in t.get_text() for t in cost_ax.get_legend().get_texts())
    assert ret_ax.get_ylabel() == "episode return" and "steps" in ret_ax.get_xlabel()
    assert fig._suptitle.get_text() == "sac_lag on saferl/BallCircle-v0 — seeds 0, 1"
    fig.canvas.draw()
    ticks = [t.get_text() for t in ret_ax.get_xticklabels() if t.get_text()]
    assert ticks and all(t.endswith("k") or t == "0" for t in ticks), ticks


def test_progress_carries_episodes_and_marks_them():
    carry = EpisodeCarry()
    out = carry.update({"rollout/ep_return": np.array([NAN, 4.0]),
                        "rollout/ep_cost_0": np.array([NAN, 1.0])})
    assert out["rollout/ep_return"][1] == 4.0 and math.isnan(out["rollout/ep_return"][0])
    out = carry.update({"rollout/ep_return": np.array([2.0, NAN]),
                        "rollout/ep_cost_0": np.array([3.0, NAN])})
    np.testing.assert_array_equal(out["rollout/ep_return"], [2.0, 4.0])
    np.testing.assert_array_equal(out["rollout/ep_cost_0"], [3.0, 1.0])
    assert carry.carried_for() == 1
    spec = make_task("saferl/BallCircle-v0").spec
    display = ProgressDisplay(100, spec, (10.0,), console=Console(file=io.StringIO()))
    assert display.stats({"rollout/ep_return": np.array([NAN])}) == "no episode finished yet"
    display.stats({"rollout/ep_return": np.array([5.0]), "rollout/ep_cost_0": np.array([2.0])})
    text = display.stats({"rollout/ep_return": np.array([NAN]),
                          "rollout/ep_cost_0": np.array([NAN])})
    assert text == "R 5.0 C0 2.00/10 (latest episodes: 1 it. ago)"


def test_plain_progress_lines_come_every_interval_and_at_the_end():
    spec = make_task("saferl/BallCircle-v0").spec
    metrics = {"rollout/ep_return": np.array([1.0]), "rollout/ep_cost_0": np.array([0.5])}
    out = io.StringIO()
    with ProgressDisplay(10_000, spec, (10.0,), console=Console(file=out), interval=3600) as d:
        for steps in range(1000, 10_001, 1000):
            d.update(steps, metrics)
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 2  # the first update, then the last one when the display closes
    assert lines[0].startswith("train 1,000/10,000 steps") and "10,000/10,000" in lines[1]
    out = io.StringIO()
    with ProgressDisplay(10_000, spec, (10.0,), console=Console(file=out), interval=0) as d:
        for steps in range(1000, 10_001, 1000):
            d.update(steps, metrics)
    assert len(out.getvalue().strip().splitlines()) == 10


def test_evaluation_summary_against_hand_computation():
    result = EvalResult(returns=np.array([1.0, 2.0, 3.0, 6.0]),
                        costs=np.array([[5.0, 0.0], [15.0, 0.0], [10.0, 3.0], [10.0, 1.0]]),
                        lengths=np.array([10, 10, 10, 10]), cost_names=("a", "b"),
                        deterministic=True)
    summary = result.summary([10.0, 0.5])
    assert summary["cost_0_mean"] == 10.0 and summary["cost_0_within"] is True
    assert summary["cost_0_over_share"] == 0.25  # only 15 > 10; 10 is within
    assert summary["cost_1_mean"] == 1.0 and summary["cost_1_within"] is False
    assert summary["cost_1_over_share"] == 0.5
    record = {"per_seed": {"3": {"deterministic": summary, "stochastic": summary}}}
    assert evaluation_verdict(record, ("a", "b"), (10.0, 0.5)) == (
        "deployed deterministic policy: over the limit on b of seed 3 (1.00 > 0.5).\n"
        "deployed stochastic policy: over the limit on b of seed 3 (1.00 > 0.5).")


def test_a_long_verdict_is_one_line_per_mode_in_a_file(tmp_path):
    # Off a terminal the console is 160 columns wide; eight seeds over the limit make each
    # sentence longer than that, and it must still be one line (not "12.00 >" / "10)").
    over = {"return_mean": 1.0, "return_std": 0.0, "cost_0_mean": 12.0, "cost_0_std": 1.0,
            "cost_0_over_share": 1.0, "cost_0_within": False}
    record = {"episodes": 5, "env_seed": 0,
              "per_seed": {str(s): {"deterministic": over, "stochastic": over} for s in range(8)}}
    with (tmp_path / "log.txt").open("w") as handle:
        print_evaluation(record, ("cost",), (10.0,), console=Console(file=handle, width=160))
    lines = (tmp_path / "log.txt").read_text().splitlines()
    verdicts = [line for line in lines if "policy: over the limit" in line]
    assert [v.split(":")[0] for v in verdicts] == ["deployed deterministic policy",
                                                   "deployed stochastic policy"]
    assert all(len(v) > 160 and v.endswith("cost of seed 7 (12.00 > 10).") for v in verdicts)


def test_training_ends_with_the_deployed_policy_evaluated(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "ppo_lag", "--env", SMALL["env"], "--num-envs", "8",
                 "--rollout-steps", "100", "--steps", "1000", "--hidden-sizes", "16", "16",
                 "--ppo.epochs", "1", "--seeds", "0", "1", "--eval-episodes", "3",
                 "--run-dir", str(run)]) == 0
    err = capsys.readouterr().err
    assert "steps 1,000 is not a whole number of iterations of 800 steps" in err
    assert "training 1,600 steps per seed (2 iterations)" in err
    assert "mean of the last 2 iterations with finished episodes" in err
    assert "1,600 steps per seed × 2 seeds in" in err and "environment steps/s in all" in err
    assert "deployed deterministic policy:" in err and "deployed stochastic policy:" in err
    record = json.loads((run / "eval.json").read_text())
    assert record["episodes"] == 3 and set(record["per_seed"]) == {"0", "1"}
    for modes in record["per_seed"].values():
        assert set(modes) == {"deterministic", "stochastic"}
        assert {"return_mean", "cost_0_mean", "cost_0_within", "cost_0_over_share"} <= \
            set(modes["deterministic"])
    again = evaluate_run(run, episodes=3, modes=("deterministic",))
    assert again["per_seed"]["1"]["deterministic"] == record["per_seed"]["1"]["deterministic"]
    assert main(["eval", str(run), "--episodes", "2", "--seed-index", "1"]) == 0
    out = capsys.readouterr().out
    assert "episodes over" in out and ("within" in out or "OVER" in out)
    assert "deployed deterministic policy" in out


def test_run_folder_names_are_path_safe(tmp_path):
    path = new_run_dir("ppo_lag", "myenv:MyPoint-v0", root=tmp_path)
    assert ":" not in path.name and path.name.startswith("ppo_lag_myenv-MyPoint-v0_")
    assert new_run_dir("cpo", "saferl/BallCircle-v0", root=tmp_path).name.startswith(
        "cpo_saferl-BallCircle-v0_")


def test_a_grid_of_limits_is_shown_per_limit(tmp_path):
    """Progress per limit (mean of its members), curves per limit with that limit drawn in its
    colour, and a summary judging each member against its own limit, by hand."""
    from saferl.engine.members import Member
    from saferl.training import summarize

    spec = make_task("saferl/BallCircle-v0").spec
    limits = np.array([[20.0], [20.0], [40.0], [40.0]])  # seeds 0, 1 × limits 20, 40
    display = ProgressDisplay(100, spec, (20.0,), console=Console(file=io.StringIO()),
                              member_limits=limits)
    text = display.stats({"rollout/ep_return": np.array([1.0, 3.0, 5.0, 7.0]),
                          "rollout/ep_cost_0": np.array([10.0, 30.0, 36.0, 38.0]),
                          "lagrange/lambda_0": np.array([0.5, 0.7, 0.0, 0.2])})
    assert text == "R 4.0 C0 20.00/20 37.00/40 λ0 0.600/0.100"

    run = RunDirectory(tmp_path / "grid")
    run.write_config({"algo": "ppo_lag", "config": {"run": {"env": "saferl/BallCircle-v0"}}})
    for t in (1, 2):
        run.log(t, 100 * t, float(t), (0, 1, 0, 1), {
            "rollout/ep_return": np.array([1.0, 3.0, 5.0, 7.0]) * t,
            "rollout/ep_cost_0": np.array([10.0, 30.0, 36.0, 38.0]),
            "train/cost_rate_0": np.full(4, 0.1)}, limits=[(20.0,), (20.0,), (40.0,), (40.0,)])
    run.close()
    assert sorted(p.name for p in (tmp_path / "grid" / "tb").iterdir()) == [
        "seed_0_limit_20", "seed_0_limit_40", "seed_1_limit_20", "seed_1_limit_40"]
    fig = draw_curves(run, (20.0,), ("cost",))
    ret_ax, cost_ax = fig.axes
    lines = {line.get_label(): line for line in ret_ax.lines}
    np.testing.assert_allclose(lines["limit 20: mean"].get_ydata(), [2.0, 4.0])
    np.testing.assert_allclose(lines["limit 40: mean"].get_ydata(), [6.0, 12.0])
    dashed = [line for line in cost_ax.lines if line.get_linestyle() == "--"]
    assert sorted(line.get_ydata()[0] for line in dashed) == [20.0, 40.0]
    assert {line.get_color() for line in dashed} == {"C0", "C1"}
    assert fig._suptitle.get_text().endswith("seeds 0, 1 × limits 20 40")

    grid = [Member(0, (20.0,)), Member(1, (20.0,)), Member(0, (40.0,)), Member(1, (40.0,))]
    summary = summarize(run.read_progress(), (0, 1), spec, (20.0,), members=grid)
    assert list(summary["per_seed"]) == ["0@20", "1@20", "0@40", "1@40"]
    assert summary["per_seed"]["1@20"]["rollout/ep_return"] == pytest.approx((3 + 6) / 2)
    assert summary["constraints_satisfied"] is False  # seed 1 at 20: cost 30 > 20
    assert summary["member_limits"]["0@40"] == [40.0]


def test_a_run_that_is_all_warm_up_says_it_will_not_learn(tmp_path, capsys):
    # saferl train sac_lag --steps 3000 with the default 5,000 warm-up steps used to print a
    # summary and verdicts as if it had trained
    flags = ["train", "sac_lag", "--env", "saferl/BallRun-v0", "--num-envs", "4",
             "--rollout-steps", "10", "--steps", "400", "--hidden-sizes", "16", "16",
             "--batch-size", "32", "--eval-episodes", "0"]
    assert main([*flags, "--run-dir", str(tmp_path / "a")]) == 0
    assert ("steps 400 per seed are all random warm-up (warmup_steps 5,000): this run will "
            "not learn") in capsys.readouterr().err
    assert main([*flags, "--warmup-steps", "80", "--run-dir", str(tmp_path / "b")]) == 0
    assert "warm-up" not in capsys.readouterr().err


def test_saferl_eval_tables_keep_one_line_per_row_in_a_file(capsys):
    """``saferl eval RUN > file`` printed through rich's default 80 columns, which split a
    two-constraint table's ``42.30 ±`` from ``29.76``; its console is as wide as train's."""
    from saferl.progress import wide_console

    figures = {"return_mean": 42.3, "return_std": 29.76}
    for i in range(2):
        figures.update({f"cost_{i}_mean": 12.25, f"cost_{i}_std": 3.5,
                        f"cost_{i}_over_share": 0.5, f"cost_{i}_within": False})
    record = {"episodes": 5, "env_seed": 0,
              "per_seed": {"0": {"deterministic": figures, "stochastic": figures}}}
    console = wide_console()  # stdout, which capsys makes a non-terminal, as a file is
    assert console.width >= 160
    print_evaluation(record, ("cost_outside", "cost_speed"), (10.0, 5.0), console=console)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("│")]
    assert len(rows) == 2 and all(row.count("12.25 ± 3.50") == 2 and "42.30 ± 29.76" in row
                                  for row in rows), rows


def test_on_an_80_column_terminal_the_bar_keeps_its_times_and_counts():
    """rich shrinks every column of the live bar to fit; the figures, last, are what is cut,
    not the elapsed time and the ETA (both were cut to "0:00:…"), and the step count has its
    thousands separators like every other line."""
    import re

    spec = make_task("saferl/BallCircle-v0").spec
    metrics = {"rollout/ep_return": np.array([402.7]), "rollout/ep_cost_0": np.array([0.08]),
               "lagrange/lambda_0": np.array([5.938])}
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system=None)
    with ProgressDisplay(200_000, spec, (10.0,), console=console, interval=0) as display:
        display.update(22_400, metrics)
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out.getvalue()).replace("\r", "\n")
    line = [row for row in text.splitlines() if "22,400" in row][-1]
    assert len(line) <= 80 and "22,400/200,000" in line, line
    assert re.search(r"\d:\d\d:\d\d ETA (\d:\d\d:\d\d|-:--:--)", line), line
    assert "steps/s R 402.7" in line, line
