"""How long a sweep has left: an estimate from the training speed seen so far.

Every worker process (a run, or a pack of runs trained together) writes its training run's
``progress.csv`` as it goes, one row per member and iteration, with the environment steps per
member and the training wall time so far (carried over a resume). From those rows:

* a **running** job that has logged an iteration has ``(total − steps)`` steps left at its
  recent speed: the median seconds per step of its iterations in the second half of its rows
  so far (the first half holds an off-policy run's warm-up, whose steps cost far less than the
  ones after it; the median, because one iteration that spanned a suspended laptop or a
  stopped process would otherwise set the speed for hours), read from the file's last 64 KB;
* a job **not yet started** takes as long per step as the jobs seen so far with the same
  algorithm and the same number of runs in the process (running or done; their recent
  seconds per step, averaged); one with no such job yet cannot be estimated, and is counted
  as such rather than guessed from another algorithm, whose step may cost ten times more;
* the jobs left are laid out over the worker slots in the order they will start, each on the
  slot that frees first: the sweep ends when the last slot does.

The estimate counts training only: the evaluation stage after each run, start-up and
compilation are not in it.
"""

from __future__ import annotations

import csv
import heapq
import io
import itertools
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class JobWork:
    """What one worker process has to train and how far it has got."""

    algo: str
    runs: int  # runs trained in the process (a pack's size; 1 for a single run)
    total_steps: int  # environment steps per member
    state: str  # pending, running or done (failed jobs are not counted)
    steps: int = 0  # environment steps per member trained so far (last progress row)
    wall: float = 0.0  # training wall seconds at that row
    since_steps: int = 0  # an earlier row, about halfway through the file: the speed is
    since_wall: float = 0.0  # measured from there (off-policy warm-up steps are far cheaper)
    step_seconds: float | None = None  # the median seconds per step of the iterations since

    @property
    def rate(self) -> float | None:
        """Training seconds per environment step lately (``None`` before any row): the median
        over the iterations since ``since_steps`` when known, else the mean over the rows since
        then, or over all of them when there is no earlier row."""
        if self.step_seconds is not None:
            return self.step_seconds
        if self.steps > self.since_steps > 0 and self.wall > self.since_wall:
            return (self.wall - self.since_wall) / (self.steps - self.since_steps)
        return self.wall / self.steps if self.steps > 0 and self.wall > 0 else None


def _row(line: str, columns: list[str]) -> tuple[int, float] | None:
    row = next(csv.reader(io.StringIO(line)), [])
    if len(row) != len(columns):
        return None  # a row being written, or a line cut by a seek
    try:
        return int(row[columns.index("env_steps")]), float(row[columns.index("wall_time")])
    except ValueError:
        return None


def progress_points(path: Path) -> tuple[tuple[int, float], tuple[int, float]] | None:
    """``(env_steps, wall_time)`` of a row about halfway through a ``progress.csv`` and of its
    last complete row, reading two small pieces of the file whatever its size (``None``
    when it is missing or holds no complete row). The two are the same row when the file is
    too short to have a middle."""
    seen = _progress_pieces(path)
    return None if seen is None else seen[:2]


def step_seconds(path: Path) -> float | None:
    """The median seconds per environment step of the iterations logged in a
    ``progress.csv``'s last 64 KB after its halfway row (``None`` with fewer than one such
    iteration). Rows of one iteration (one per member) count once."""
    seen = _progress_pieces(path)
    return None if seen is None else _median_rate(seen[0][0], seen[2])


def _median_rate(since: int, tail: list[tuple[int, float]]) -> float | None:
    """:func:`step_seconds` from the rows already read."""
    points = sorted({point for point in tail if point[0] >= since})
    rates = [(b_wall - a_wall) / (b_steps - a_steps)
             for (a_steps, a_wall), (b_steps, b_wall) in itertools.pairwise(points)
             if b_steps > a_steps and b_wall >= a_wall]
    return statistics.median(rates) if rates else None


def _progress_pieces(path: Path) -> tuple[tuple[int, float], tuple[int, float],
                                          list[tuple[int, float]]] | None:
    """The halfway row, the last complete row and every complete row of the last 64 KB of a
    ``progress.csv``, each as ``(env_steps, wall_time)`` (see :func:`progress_points`)."""
    try:
        with path.open("rb") as handle:
            header = handle.readline().decode()
            body = handle.tell()
            size = handle.seek(0, 2)
            handle.seek(max(body, size - 65536))
            tail = handle.read().decode(errors="replace").splitlines()
            handle.seek(body + (size - body) // 2)
            handle.readline()  # the rest of the line the seek landed in
            middle = handle.readline().decode(errors="replace")
    except OSError:
        return None
    columns = next(csv.reader(io.StringIO(header)), [])
    if "env_steps" not in columns or "wall_time" not in columns:
        return None
    rows = [point for line in tail if (point := _row(line, columns))]
    if not rows:
        return None
    last = rows[-1]
    half = _row(middle, columns)
    return (half if half is not None and half[0] < last[0] else last), last, rows


def job_work(directory: Path, runs: int, state: str) -> JobWork | None:
    """A job's work from its ``pack.json`` or ``sweep_run.json`` and its training run's
    ``progress.csv`` (``None`` when neither description can be read)."""
    description = None
    for name in ("pack.json", "sweep_run.json"):
        try:
            description = json.loads((directory / name).read_text())
            break
        except (OSError, ValueError):
            continue
    try:
        algo, total = str(description["algo"]), int(description["config"]["run"]["steps"])
    except (TypeError, KeyError, ValueError):
        return None
    seen = _progress_pieces(directory / "run" / "progress.csv") if state != "pending" else None
    if seen is None:
        return JobWork(algo, runs, total, state)
    (since_steps, since_wall), (steps, wall), tail = seen
    return JobWork(algo, runs, total, state, steps, wall, since_steps, since_wall,
                   _median_rate(since_steps, tail))


def remaining(work: Sequence[JobWork], slots: int) -> tuple[float, int]:
    """Seconds until the jobs not done are trained, over ``slots`` worker slots, and how many
    of them could not be estimated (see the module docstring)."""
    rates: dict[tuple[str, int], list[float]] = {}
    for job in work:
        if job.rate is not None and job.state != "failed":  # a failed job's speed may be off
            rates.setdefault((job.algo, job.runs), []).append(job.rate)
    running: list[float] = []
    pending: list[float] = []
    unknown = 0
    for job in work:
        if job.state not in ("running", "pending"):
            continue
        known = rates.get((job.algo, job.runs))
        if job.state == "running" and job.rate is not None:
            running.append(job.rate * max(0, job.total_steps - job.steps))
        elif known:
            seconds = sum(known) / len(known) * job.total_steps
            if job.state == "running":
                running.append(seconds)
            else:
                pending.append(seconds)
        else:
            unknown += 1
            if job.state == "running":
                running.append(0.0)  # it holds a slot for an unknown time
    free = sorted(running)[-max(1, slots):]  # more running than slots: only on Ray
    free += [0.0] * (max(1, slots) - len(free))
    heapq.heapify(free)
    for seconds in pending:
        heapq.heappush(free, heapq.heappop(free) + seconds)
    return max(free), unknown


def describe(seconds: float, unknown: int) -> str:
    """``ETA 1:02:03`` (hours:minutes:seconds), saying how many jobs are not in it."""
    seconds = round(seconds)
    text = f"ETA {seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    if unknown:
        text += (f" + {unknown} worker process{'es' if unknown != 1 else ''} not yet "
                 f"estimated")
    return text


def estimate(jobs: Sequence[Any], slots: int) -> str:
    """The ETA text for a sweep's jobs (``saferl.experiments.sweep.Job``), or ``""`` while no
    job has a speed to go by."""
    work = []
    for job in jobs:
        states = {s.state for s in job.states}
        state = ("running" if "running" in states else "pending" if "pending" in states
                 else "done" if states == {"done"} else "failed")
        item = job_work(job.directory, len(job.states), state)
        if item is not None:
            work.append(item)
    if not any(w.rate is not None for w in work):
        return ""
    if not any(w.state in ("running", "pending") for w in work):
        return ""
    return describe(*remaining(work, slots))
