"""The sweep's ETA (`saferl.experiments.eta`) against hand computation, and its progress line."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from saferl.experiments.eta import (
    JobWork,
    describe,
    estimate,
    job_work,
    progress_points,
    remaining,
)
from saferl.experiments.sweep import Job, RunState, SweepProgress

HEADER = "iteration,env_steps,wall_time,seed,rollout/ep_return\n"


def test_the_last_progress_row_skips_one_being_written(tmp_path):
    path = tmp_path / "progress.csv"
    assert progress_points(path) is None
    path.write_text(HEADER)
    assert progress_points(path) is None
    path.write_text(HEADER + "1,800,2.5,0,1.0\n1,800,2.5,1,2.0\n2,1600,4.75,0,3.0\n2,16")
    assert progress_points(path)[1] == (1600, 4.75)
    path.write_text("iteration,seed\n1,0\n")  # no steps or wall time: nothing to go by
    assert progress_points(path) is None


def two_seed_job(folder: Path, walls: list[float], algo: str, steps: int) -> JobWork:
    """A running pack of two seeds whose iteration ``i`` (100 steps each) ended at
    ``walls[i - 1]`` seconds of training."""
    rows = [f"{i},{100 * i},{wall},{seed},1.0" for i, wall in enumerate(walls, 1)
            for seed in (0, 1)]
    (folder / "run").mkdir()
    (folder / "run" / "progress.csv").write_text(HEADER + "\n".join(rows) + "\n")
    (folder / "pack.json").write_text(json.dumps(
        {"algo": algo, "config": {"run": {"steps": steps}}}))
    return job_work(folder, 2, "running")


def test_the_speed_is_the_recent_one_not_the_warm_up_s(tmp_path):
    """Off-policy warm-up steps cost almost nothing; the speed after them is what is left."""
    # 100 steps an iteration: 1 s each for 5, then 10 s each
    job = two_seed_job(tmp_path, [float(i if i <= 5 else 5 + 10 * (i - 5))
                                  for i in range(1, 11)], "cvpo", 3000)
    assert (job.steps, job.wall) == (1000, 55.0)
    assert job.rate == pytest.approx(0.1)  # 10 s per 100 steps; over all rows: 0.055
    assert remaining([job], slots=1) == (pytest.approx(200.0), 0)  # 2,000 steps left


def test_one_iteration_across_a_pause_does_not_set_the_speed(tmp_path):
    """A suspended laptop (or a stopped worker) makes one iteration last an hour; the median
    over the recent iterations keeps the speed they really ran at."""
    # 100 steps an iteration at 2 s, except iteration 15: 3,600 s
    job = two_seed_job(tmp_path, list(itertools.accumulate(
        3600.0 if i == 15 else 2.0 for i in range(1, 21))), "ccpo", 4000)
    assert job.rate == pytest.approx(0.02)  # 2 s per 100 steps
    assert remaining([job], slots=1) == (pytest.approx(40.0), 0)  # 2,000 steps left
    # the mean since the halfway row would have said (3,638 - 20) / 1,000 s per step
    assert (job.wall - job.since_wall) / (job.steps - job.since_steps) > 3.0


def test_remaining_time_by_hand():
    work = [
        JobWork("sac_lag", 5, 1000, "running", steps=250, wall=100.0),  # 0.4 s/step: 300 left
        JobWork("ppo_lag", 5, 2000, "running", steps=1000, wall=50.0),  # 0.05 s/step: 50 left
        JobWork("sac_lag", 5, 500, "pending"),  # 0.4 × 500 = 200
        JobWork("ppo_lag", 5, 4000, "pending"),  # mean(0.05, 0.06) × 4000 = 220
        JobWork("cvpo", 5, 1000, "pending"),  # no CVPO job seen yet: not estimated
        JobWork("sac_lag", 1, 1000, "pending"),  # a single run, not a pack of 5: not estimated
        JobWork("ppo_lag", 5, 2000, "done", steps=2000, wall=120.0),  # 0.06 s/step
        JobWork("ppo_lag", 5, 2000, "failed", steps=100, wall=1000.0),  # not a speed: failed
    ]
    # Two slots free after 300 and 50 s; the 200-s job takes the second (→ 250), the 220-s
    # job then the earlier of 250 and 300 (→ 470).
    seconds, unknown = remaining(work, slots=2)
    assert unknown == 2
    assert seconds == pytest.approx(470.0)


def test_a_failed_job_gives_no_speed_and_one_slot_runs_everything_in_turn():
    work = [JobWork("ppo_lag", 1, 1000, "failed", steps=500, wall=10.0),
            JobWork("ppo_lag", 1, 1000, "running", steps=500, wall=100.0),  # 100 left
            JobWork("ppo_lag", 1, 3000, "pending")]  # 0.2 × 3000 = 600
    assert remaining(work, slots=1) == (pytest.approx(700.0), 0)
    assert remaining(work, slots=4) == (pytest.approx(600.0), 0)


def test_eta_text():
    assert describe(3723.4, 0) == "ETA 1:02:03"
    assert describe(59.6, 1) == "ETA 0:01:00 + 1 worker process not yet estimated"
    assert describe(0, 3).endswith("+ 3 worker processes not yet estimated")


def _job(folder: Path, name: str, algo: str, steps: int, runs: int, state: str,
         progress: str | None) -> Job:
    directory = folder / name
    (directory / "run").mkdir(parents=True)
    (directory / ("pack.json" if runs > 1 else "sweep_run.json")).write_text(json.dumps(
        {"algo": algo, "config": {"run": {"steps": steps}}}))
    if progress is not None:
        (directory / "run" / "progress.csv").write_text(HEADER + progress)
    states = [RunState(f"{name}{i}", f"{name}{i}", directory, state) for i in range(runs)]
    return Job(directory, states)


def test_the_progress_line_reads_the_jobs_folders_and_prints_the_eta_at_most_once_a_minute(
        tmp_path, capsys, monkeypatch):
    jobs = [_job(tmp_path, "a", "sac_lag", 1000, 2, "running",
                 "1,250,99.0,0,1.0\n1,250,100.0,1,1.0\n"),  # 0.4 s/step: 300 s left
            _job(tmp_path, "b", "sac_lag", 500, 2, "pending", None)]  # 200 s
    progress = SweepProgress([s for job in jobs for s in job.states], slots=1)
    progress.jobs = jobs
    clock = iter([1000.0, 1010.0, 1070.0])
    monkeypatch.setattr("saferl.experiments.sweep.time.monotonic", lambda: next(clock))
    progress.update()
    assert capsys.readouterr().err == ("sweep: 0 done, 2 running, 2 pending, 0 failed (4 runs, "
                                       "2 packs of runs in one process, ETA 0:08:20)\n")
    (jobs[0].directory / "run" / "progress.csv").write_text(
        HEADER + "2,500,200.0,0,1.0\n2,500,200.0,1,1.0\n")  # still 0.4 s/step: 200 s left
    progress.update()  # 10 s later: only the ETA changed
    assert capsys.readouterr().err == ""
    progress.update()  # a minute after the last line
    assert "ETA 0:06:40)" in capsys.readouterr().err


def test_no_eta_before_any_job_has_logged_an_iteration(tmp_path):
    jobs = [_job(tmp_path, "a", "ppo_lag", 1000, 1, "running", None),
            _job(tmp_path, "b", "ppo_lag", 1000, 1, "pending", None)]
    assert estimate(jobs, slots=2) == ""
