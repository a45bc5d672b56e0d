"""`saferl report`: numbers against hand computation on synthetic run directories."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from saferl.cli import main
from saferl.config import config_to_dict
from saferl.envs.native import make_task
from saferl.experiments import report
from saferl.runs import RunDirectory, spec_record
from saferl.training import build_config

SPEC = spec_record(make_task("saferl/BallCircle-v0").spec)


def synthetic_run(path, algo, seeds, returns, costs, overrides=None, evaluation=None,
                  versatile=None, iterations=None):
    """A run directory with ``returns[s][t]`` / ``costs[s][t]`` logged per seed and iteration,
    configured for ``iterations`` (default: as many as logged, a finished run)."""
    run_fields = {"seeds": seeds, "cost_limit": [10.0], **(overrides or {}).get("run", {})}
    others = {k: v for k, v in (overrides or {}).items() if k != "run"}
    per_iteration = build_config(algo, overrides={"run": run_fields, **others}).run
    run_fields["steps"] = (iterations or len(returns[0])) * per_iteration.steps_per_iteration
    config = build_config(algo, overrides={"run": run_fields, **others})
    run = RunDirectory(path)
    run.write_config({"algo": algo, "config": config_to_dict(config), "spec": SPEC})
    for t in range(len(returns[0])):
        run.log(t + 1, 1000 * (t + 1), float(t), tuple(seeds), {
            "rollout/ep_return": np.array([r[t] for r in returns]),
            "rollout/ep_cost_0": np.array([c[t] for c in costs]),
            "train/cost_rate_0": np.full(len(seeds), 0.01 * (t + 1))})
    run.close()
    if evaluation is not None:
        (path / "eval.json").write_text(json.dumps({"per_seed": {
            str(s): {"deterministic": {"return_mean": r, "cost_0_mean": c}}
            for s, (r, c) in zip(seeds, evaluation, strict=True)}}))
    if versatile is not None:
        (path / "versatile.json").write_text(json.dumps(versatile))
    return path


@pytest.fixture
def runs(tmp_path):
    a = synthetic_run(tmp_path / "runs" / "a", "ppo_lag", [0, 1],
                      returns=[[0, 1, 2, 3, 4, 5, 6], [10, 11, 12, 13, 14, 15, 16]],
                      costs=[[20, 20, 8, 8, 8, 8, 8], [30, 30, 12, 12, 12, 12, 12]],
                      evaluation=[(100.0, 5.0), (200.0, 15.0)])
    b = synthetic_run(tmp_path / "runs" / "b", "ppo_lag", [2],
                      returns=[[5, 5, 5, 5, 5, 5, 9]], costs=[[1, 1, 1, 1, 1, 1, 1]],
                      evaluation=[(300.0, 1.0)])
    c = synthetic_run(tmp_path / "runs" / "c", "ppo_lag", [0],
                      returns=[[1, 1, 1, 1, 1, 1, 1]], costs=[[0] * 7],
                      overrides={"lagrange": {"lr": 0.5}})
    table = [{"threshold_0": 10.0, "return_mean": 1.0, "return_std": 0.0, "cost_0_mean": 4.0,
              "cost_0_std": 1.0, "violation_0": 0.0},
             {"threshold_0": 20.0, "return_mean": 2.0, "return_std": 0.0, "cost_0_mean": 25.0,
              "cost_0_std": 1.0, "violation_0": 5.0}]
    d = synthetic_run(tmp_path / "runs" / "d", "ccpo", [0, 1], returns=[[1] * 7, [2] * 7],
                      costs=[[0] * 7, [0] * 7], versatile={
                          "table": table, "per_seed": {
                              "0": {"Avg R": 1.0, "Avg CV": 2.0, "R-G": 1.5, "CV-G": 3.0},
                              "1": {"Avg R": 3.0, "Avg CV": 4.0, "R-G": 2.5, "CV-G": 1.0}}})
    return tmp_path, (a, b, c, d)


def read_csv(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_final_figures_against_hand_computation(runs, tmp_path):
    root, _ = runs
    path = report.write_report([root / "runs"], tmp_path / "out")
    rows = read_csv(tmp_path / "out" / "tables" / "final.csv")
    ppo = [r for r in rows if r["algorithm"] == "ppo_lag"]
    assert len(ppo) == 2  # lagrange.lr 0.5 is a row of its own, not averaged in
    main_row = next(r for r in ppo if r["seeds"] == "3")
    other = next(r for r in ppo if r["seeds"] == "1")
    assert "lagrange.lr=0.5" in other["settings"] and "lagrange.lr=0.05" in main_row["settings"]
    # Last 5 iterations: seed 0 → mean(2..6) = 4, seed 1 → 14, seed 2 → mean(5,5,5,5,9) = 5.8.
    finals = [4.0, 14.0, 5.8]
    assert float(main_row["train_return_mean"]) == pytest.approx(np.mean(finals))
    assert float(main_row["train_return_std"]) == pytest.approx(np.std(finals))
    assert float(main_row["train_cost_0_mean"]) == pytest.approx(np.mean([8, 12, 1]))
    assert float(main_row["train_within_share"]) == pytest.approx(2 / 3)  # 12 > 10
    assert float(main_row["cost_rate_0_mean"]) == pytest.approx(0.07)
    assert float(main_row["eval_det_return_mean"]) == pytest.approx(200.0)
    assert float(main_row["eval_det_within_share"]) == pytest.approx(2 / 3)  # 15 > 10
    text = path.read_text()
    assert "stochastic policy's training batches" in text and "deterministic" in text
    one_seed = next(line for line in text.splitlines() if "lagrange.lr=0.5" in line
                    and line.startswith("| saferl/"))
    assert "±" not in one_seed and "| 1.00 |" in one_seed, one_seed  # no "1.00 ± 0.00"

    versatile = read_csv(tmp_path / "out" / "tables" / "versatile.csv")
    assert len(versatile) == 1 and versatile[0]["algorithm"] == "ccpo"
    assert float(versatile[0]["Avg_R_mean"]) == pytest.approx(2.0)
    assert float(versatile[0]["Avg_CV_std"]) == pytest.approx(1.0)
    assert (tmp_path / "out" / "tables" / "final.tex").read_text().startswith(r"\begin{tabular}")


def test_aggregates_equal_the_statistics_library(runs, tmp_path):
    pytest.importorskip("rliable")
    from rliable import library as rly
    from rliable import metrics

    root, _ = runs
    rows = report.group([m for run in report.find_runs([root / "runs"])
                         for m in report.read_members(run)])
    table, note = report.aggregate_table(rows, repetitions=500)
    main_row = next(r for r in table if r["seeds"] == 3)
    scores = np.array([[100.0], [200.0], [300.0]])  # deterministic evaluation returns
    assert main_row["return_iqm"] == pytest.approx(metrics.aggregate_iqm(scores))
    index = next(i for i, r in enumerate(rows) if len(r.members) == 3)
    np.random.seed(index)  # noqa: NPY002 - rliable resamples with the global generator
    _, interval = rly.get_interval_estimates(
        {"x": scores}, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=500,
        random_state=np.random.RandomState(index))
    assert (main_row["ci_low"], main_row["ci_high"]) == pytest.approx(tuple(interval["x"][:, 0]))
    assert 100.0 <= main_row["ci_low"] <= main_row["return_iqm"] <= main_row["ci_high"] <= 300.0
    again, _ = report.aggregate_table(rows, repetitions=500)
    assert [r for r in again if r["seeds"] > 1] == [r for r in table if r["seeds"] > 1]
    # a row of one seed has its value and no interval (resampling one seed gives [x, x])
    alone = [r for r in table if r["seeds"] == 1]
    assert alone and all(math.isnan(r["ci_low"]) and math.isnan(r["ci_high"]) for r in alone)
    assert f"{len(alone)} row{'s' if len(alone) > 1 else ''} of one seed: no interval" in note
    assert "deterministic evaluation" in note and "rliable" in note


@pytest.fixture
def saved_figures(monkeypatch):
    """The figures passed to ``savefig``, in order (they are still written)."""
    import matplotlib.pyplot as plt

    figures = []
    original = plt.Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", keep)
    return figures


def report_rows(root):
    return report.group([m for run in report.find_runs([root / "runs"])
                         for m in report.read_members(run)])


def test_the_threshold_figure_shows_the_versatile_table(runs, tmp_path, saved_figures):
    rows = report_rows(runs[0])
    path = report.versatile_figure(rows, "saferl/BallCircle-v0", tmp_path / "v.png")
    assert path.is_file()
    cost_ax, return_ax = saved_figures[-1].axes
    ccpo = next(line for line in cost_ax.lines if line.get_label() == "ccpo")
    np.testing.assert_array_equal(ccpo.get_xdata(), [10.0, 20.0])
    np.testing.assert_array_equal(ccpo.get_ydata(), [4.0, 25.0])  # versatile.json's table
    np.testing.assert_array_equal(return_ax.lines[0].get_ydata(), [1.0, 2.0])


def test_curves_lines_are_the_means_of_the_logged_episodes(runs, tmp_path, saved_figures):
    rows = report_rows(runs[0])
    report.curves_figure(rows, "saferl/BallCircle-v0", tmp_path / "c.png", 1)
    ret_ax = saved_figures[-1].axes[0]
    line = next(l for l in ret_ax.lines if l.get_label().startswith("ppo_lag @10 (")
                and "0.05" in l.get_label())
    # Seeds 0, 1 (run a) and 2 (run b) at every iteration: mean of the three returns.
    expected = [np.mean([t, 10 + t, 5 if t < 6 else 9]) for t in range(7)]
    np.testing.assert_allclose(line.get_ydata(), expected)
    # the band is mean ± the population std of the same three seeds
    seeds = np.array([[t, 10 + t, 5 if t < 6 else 9] for t in range(7)])
    band = ret_ax.collections[ret_ax.lines.index(line)].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx((seeds.mean(1) - seeds.std(1)).min())
    assert band.max() == pytest.approx((seeds.mean(1) + seeds.std(1)).max())
    cost_ax = saved_figures[-1].axes[1]
    dashed = [l for l in cost_ax.lines if l.get_linestyle() == "--"]
    assert dashed and all(l.get_ydata()[0] == 10.0 for l in dashed)
    # the cost line is drawn like the return line (no smoothing of one and not the other)
    cost = next(l for l in cost_ax.lines if l.get_label() == line.get_label())
    np.testing.assert_allclose(cost.get_ydata(), [np.mean([20, 30, 1]) if t < 2 else
                                                  np.mean([8, 12, 1]) for t in range(7)])
    assert math.isfinite(line.get_ydata()[-1])
    rate_ax = saved_figures[-1].axes[2]  # the logged training cost rate, 0.01 per iteration
    rate = next(l for l in rate_ax.lines if l.get_label() == line.get_label())
    np.testing.assert_allclose(rate.get_ydata(), [0.01 * (t + 1) for t in range(7)])
    assert not [l for l in rate_ax.lines if l.get_linestyle() == "--"]  # no limit on a rate


def test_report_command_and_bad_input(runs, tmp_path, capsys):
    root, _ = runs
    assert main(["report", str(root / "runs"), "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "report.md").is_file()
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "holds no saferl run directory" in capsys.readouterr().err


def test_split_runs_and_limit_grids_count_each_seed_once(tmp_path, saved_figures):
    """A pack written out as one run per seed pools into one threshold curve over all seeds;
    a limits-grid baseline (one member per seed × limit) is one conditioned row per seed."""
    from saferl.engine.members import members

    tables = {0: [{"threshold_0": 10.0, "return_mean": 1.0, "return_std": 0.0,
                   "cost_0_mean": 4.0, "cost_0_std": 0.0, "violation_0": 0.0}],
              1: [{"threshold_0": 10.0, "return_mean": 3.0, "return_std": 0.0,
                   "cost_0_mean": 10.0, "cost_0_std": 0.0, "violation_0": 0.0}]}
    for seed in (0, 1):
        synthetic_run(tmp_path / "runs" / f"ccpo{seed}", "ccpo", [seed], returns=[[1] * 7],
                      costs=[[30] * 7], versatile={"table": tables[seed], "per_seed": {
                          str(seed): {"Avg R": 1.0 + 2 * seed, "Avg CV": 0.0, "R-G": 0.0,
                                      "CV-G": 0.0}}})
    config = build_config("cppo_lag", overrides={"run": {"seeds": [0, 1]}})
    grid = members(config)
    assert len(grid) == 6  # three training limits x two seeds
    path = tmp_path / "runs" / "grid"
    run = RunDirectory(path)
    run.write_config({"algo": "cppo_lag", "config": config_to_dict(config), "spec": SPEC})
    for t in range(7):
        run.log(t + 1, 1000 * (t + 1), float(t), [m.seed for m in grid], {
            "rollout/ep_return": np.full(6, 5.0), "rollout/ep_cost_0": np.full(6, 1.0),
            "train/cost_rate_0": np.full(6, 0.01)}, limits=[m.cost_limit for m in grid])
    run.close()
    (path / "versatile.json").write_text(json.dumps({"table": tables[0], "per_seed": {
        "0": {"Avg R": 10.0, "Avg CV": 1.0, "R-G": 0.0, "CV-G": 0.0},
        "1": {"Avg R": 20.0, "Avg CV": 3.0, "R-G": 0.0, "CV-G": 0.0}}}))

    rows = report_rows(tmp_path)
    table = report.versatile_table(rows)
    versatile = {r["algorithm"]: r for r in table}
    assert len(table) == 2 and versatile["cppo_lag"]["seeds"] == 2
    assert versatile["cppo_lag"]["Avg_R_mean"] == 15.0
    assert versatile["ccpo"]["seeds"] == 2 and versatile["ccpo"]["Avg_R_mean"] == 2.0
    final = report.final_table(rows, 1)
    assert sorted(r["limit"] for r in final if r["algorithm"] == "cppo_lag") == \
        sorted(",".join(f"{x:g}" for x in limit) for limit in {m.cost_limit for m in grid})
    ccpo = next(r for r in final if r["algorithm"] == "ccpo")
    # Trained on a mixture of behaviour thresholds: no training limit to be within.
    assert ccpo["limit"] == "conditioned" and math.isnan(ccpo["train_within_share"])

    report.versatile_figure(rows, "saferl/BallCircle-v0", tmp_path / "v.png")
    cost_ax, _ = saved_figures[-1].axes
    line = next(line for line in cost_ax.lines if line.get_label() == "ccpo")
    np.testing.assert_allclose(line.get_ydata(), [7.0])  # mean over both runs' seeds
    band = cost_ax.collections[[c.get_label() for c in cost_ax.lines].index("ccpo")]
    np.testing.assert_allclose(band.get_paths()[0].vertices[:, 1].min(), 4.0)  # 7 - std 3


def test_normalised_metrics_against_ppo_by_hand(runs, tmp_path):
    root, _ = runs
    assert report.normalised_table(report_rows(root), 1)[0] == []  # no ppo run yet
    synthetic_run(root / "runs" / "ppo", "ppo", [0, 1], returns=[[100] * 7, [200] * 7],
                  costs=[[40] * 7, [60] * 7])
    table, note = report.normalised_table(report_rows(root), 1)
    assert note == ""
    row = next(r for r in table if r["algorithm"] == "ppo_lag" and r["seeds"] == 3)
    assert row["figures"] == "training"  # PPO has no evaluation: both sides use training
    # Last-5 training means: returns 4, 14, 5.8 and costs 8, 12, 1 (limit 10); PPO 150 and 50.
    assert row["norm_return_mean"] == pytest.approx(np.mean([4, 14, 5.8]) / 150)
    assert row["norm_cost_0_mean"] == pytest.approx(np.mean([0, 2 / 40, 0]))
    assert row["norm_cost_0_std"] == pytest.approx(np.std([0, 2 / 40, 0]))
    assert row["norm_cost_rate_0_mean"] == pytest.approx(1.0)  # the same rate series
    assert {r["algorithm"] for r in table} == {"ppo_lag"}  # ccpo is conditioned: left out
    # A limit above PPO's own cost (50): no excess to scale by, so no normalised cost.
    synthetic_run(root / "runs" / "loose", "ppo_lag", [4], returns=[[1] * 7], costs=[[70] * 7],
                  overrides={"run": {"seeds": [4], "cost_limit": [60.0]}})
    table, note = report.normalised_table(report_rows(root), 1)
    loose = next(r for r in table if r["limit"] == "60")
    assert math.isnan(loose["norm_cost_0_mean"]) and loose["norm_return_mean"] == \
        pytest.approx(1 / 150)
    assert note == ("The normalised cost is blank where PPO's own cost is within the limit, "
                    "so that there is no excess to scale by: ppo_lag @60 on "
                    "saferl/BallCircle-v0.")
    assert row == next(r for r in table if r["algorithm"] == "ppo_lag" and r["seeds"] == 3)
    out = tmp_path / "out"
    assert main(["report", str(root / "runs"), "--out", str(out)]) == 0
    assert "## Normalised against PPO" in (out / "report.md").read_text()
    assert len(read_csv(out / "tables" / "normalised.csv")) == len(table)


def test_conditioned_rows_with_different_settings_are_told_apart_in_the_figure(
        tmp_path, saved_figures):
    """Two C-TRPO-Lag runs trained on different behaviour sets: two curves, each legend entry
    naming its setting, as the tables do."""
    for name, (behaviour, cost) in {"three": ([20, 40, 60], 5.0),
                                    "six": ([20, 30, 40, 50, 60, 70], 9.0)}.items():
        table = [{"threshold_0": 10.0, "return_mean": 1.0, "return_std": 0.0,
                  "cost_0_mean": cost, "cost_0_std": 0.0, "violation_0": 0.0}]
        synthetic_run(tmp_path / "runs" / name, "ctrpo_lag", [0], returns=[[1] * 7],
                      costs=[[0] * 7], overrides={"versatile": {"behaviour_thresholds":
                                                                behaviour}},
                      versatile={"table": table, "per_seed": {"0": {
                          "Avg R": 1.0, "Avg CV": 0.0, "R-G": 0.0, "CV-G": 0.0}}})
    rows = report_rows(tmp_path)
    assert len(report.versatile_table(rows)) == 2
    report.versatile_figure(rows, "saferl/BallCircle-v0", tmp_path / "v.png")
    cost_ax, _ = saved_figures[-1].axes
    curves = {line.get_label(): float(line.get_ydata()[0]) for line in cost_ax.lines
              if line.get_label() != "cost = threshold"}
    assert curves == {
        "ctrpo_lag (versatile.behaviour_thresholds=[20.0, 40.0, 60.0])": 5.0,
        "ctrpo_lag (versatile.behaviour_thresholds=[20.0, 30.0, 40.0, 50.0, 60.0, 70.0])": 9.0}


def test_unfinished_runs_are_left_out_and_listed(tmp_path):
    """A run still training (or interrupted) would put an early policy beside final ones: it
    is left out of every table and listed with how far it got; a sweep folder says how many
    runs of its index the report holds."""
    sweep = tmp_path / "sweep"
    done = synthetic_run(sweep / "runs" / "r1" / "run", "ppo_lag", [0], returns=[[5] * 7],
                         costs=[[1] * 7])
    early = synthetic_run(sweep / "runs" / "r2" / "run", "ppo_lag", [1], returns=[[999] * 3],
                          costs=[[0] * 3], iterations=7)
    spi = build_config("ppo_lag", overrides={"run": {"seeds": [1]}}).run.steps_per_iteration
    assert report.unfinished(early) == report.Unfinished(early, 3, 7, spi)
    assert report.unfinished(done) is None
    broken = synthetic_run(sweep / "runs" / "r4" / "run", "ppo_lag", [2], returns=[[5] * 7],
                           costs=[[1] * 7])
    (broken / "config.json").write_text("{not json")  # one damaged run: the others go on
    (sweep / "sweep.json").write_text(json.dumps({"runs": {
        name: {"directory": str(sweep / "runs" / name), "state": state}
        for name, state in (("r1", "done"), ("r2", "running"), ("r3", "pending"))}}))
    text = report.write_report([sweep], tmp_path / "out").read_text()
    final = read_csv(tmp_path / "out" / "tables" / "final.csv")
    assert [(row["seeds"], row["train_return_mean"]) for row in final] == [("1", "5.0")]
    assert text.splitlines()[2].startswith("1 run directory, 1 trained policy. ")
    assert "1 unfinished run directory is left out" in text
    assert "1 damaged run directory is left out" in text
    assert f"- `{broken}`: configuration file '{broken / 'config.json'}' is damaged" in text
    assert (f"- `{early}`: 3 of 7 iterations ({3 * spi:,} of {7 * spi:,} steps per seed)"
            in text)
    assert (f"Sweep `{sweep}`: 1 of its 3 runs are in this report; the others are not "
            f"finished (1 pending, 1 running, as its `sweep.json` last recorded).") in text
    with pytest.raises(FileNotFoundError, match=r"holds no finished run directory \(1 still "
                                                r"training or interrupted, e\.g\. `"):
        report.write_report([early], tmp_path / "none")


def test_the_aggregate_is_the_interquartile_mean_not_the_mean(tmp_path):
    """Eight seeds, one far off: the IQM keeps the middle half (2, 3, 4, 5: 3.5), the mean
    would be 15.125. With three seeds (the test above) the two cannot be told apart."""
    pytest.importorskip("rliable")
    from rliable import metrics

    returns = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0]
    synthetic_run(tmp_path / "runs" / "eight", "ppo_lag", list(range(8)),
                  returns=[[r] * 7 for r in returns], costs=[[1.0] * 7] * 8,
                  evaluation=[(r, 1.0) for r in returns])
    rows = report_rows(tmp_path)
    table, _ = report.aggregate_table(rows, repetitions=200)
    scores = np.array(returns)[:, None]
    assert table[0]["return_iqm"] == pytest.approx(3.5)
    assert table[0]["return_iqm"] == pytest.approx(metrics.aggregate_iqm(scores))
    assert table[0]["ci_low"] <= 3.5 <= table[0]["ci_high"] and np.mean(returns) == 15.125


def test_a_seed_from_several_run_directories_is_pointed_out(tmp_path):
    """Three copies of one seed-0 run are one row of "3 seeds"; the report says so."""
    for name in ("a", "b", "c"):
        synthetic_run(tmp_path / "runs" / name, "ppo_lag", [0], returns=[[5] * 7],
                      costs=[[1] * 7])
    synthetic_run(tmp_path / "runs" / "d", "ppo_lag", [1], returns=[[5] * 7], costs=[[1] * 7])
    text = report.write_report([tmp_path / "runs"], tmp_path / "out").read_text()
    assert "(no run here has an `eval.json`: no evaluation columns)" in text
    warnings = [line for line in text.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "seed 0 comes from 3 run directories" in warnings[0]
    assert all(f"`{tmp_path / 'runs' / n}`" in warnings[0] for n in "abc")
