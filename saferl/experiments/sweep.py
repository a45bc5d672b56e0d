"""The sweep driver: run every pending run of a spec, locally (default) or on Ray.

``OUT/sweep.json`` indexes the runs and their states; each run has its own directory
``OUT/runs/<label>-<hash>/`` holding ``sweep_run.json`` (what to run), ``status.json`` (``done``
or ``failed``, written by the worker), ``worker.log`` (its output) and ``run/`` (the saferl run
directory). Re-running a spec skips finished runs, resumes interrupted ones from their last
checkpoint, and retries failed ones only with ``retry_failed``. Runs are independent
processes: one that raises or is killed marks itself failed (or, killed, stays resumable) and
the others go on.

Runs that differ only in seed (and, where the algorithm trains a grid of limits, in cost
limit) are packed: trained in one worker process as one vectorised run, then written out as one
run directory each (:mod:`saferl.experiments.packing`; ``pack_size`` caps or turns it off).

**Local backend**: up to ``jobs`` worker subprocesses (:mod:`saferl.experiments.worker`), each
started with its share of the cores fixed in the environment before JAX starts (XLA CPU devices
and thread counts, and on Linux the slot's own CPUs, to which the worker pins itself). On Linux
every worker dies with the driver (``PR_SET_PDEATHSIG``, which the worker requests itself:
nothing runs between fork and exec in the driver, whose JAX has threads), so a driver killed
with SIGKILL leaves no orphan training behind, and a lock file keeps two workers off one run.
**Ray backend**: the same worker command as one Ray task per pending run or pack, with its CPU
(and GPU) needs, on a running cluster (``address``) or a local Ray instance; the run
directories must be on storage every node sees.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saferl.experiments.eta import estimate
from saferl.experiments.spec import Sweep
from saferl.experiments.worker import CPUS_ENV, DRIVER_ENV
from saferl.files import write_json

STATES = ("done", "running", "pending", "failed")
TICK_SECONDS = 30.0  # how often a running sweep looks at its jobs' progress between events


@dataclass
class RunState:
    """Where one run of a sweep stands."""

    run_id: str
    label: str
    directory: Path
    state: str  # pending, running, done, failed
    resumed: bool = False  # pending with a checkpoint: it resumes
    error: str | None = None
    wall_time: float | None = None  # its last worker process's seconds
    training_time: float | None = None  # its training's, over every attempt (resumes)
    reused: str | None = None  # the other sweep's run directory it was copied from

    def record(self) -> dict[str, Any]:
        """JSON-ready form for ``sweep.json``."""
        return {"label": self.label, "directory": str(self.directory), "state": self.state,
                "resumes": self.resumed, "error": self.error, "wall_time": self.wall_time,
                "training_time": self.training_time, "reused_from": self.reused}


@dataclass
class SweepResult:
    """What :func:`run_sweep` returns: every run's final state."""

    out: Path
    runs: list[RunState] = field(default_factory=list)

    def count(self, state: str) -> int:
        """How many runs are in ``state``."""
        return sum(1 for r in self.runs if r.state == state)

    @property
    def failed(self) -> list[RunState]:
        """The runs that failed (with their errors)."""
        return [r for r in self.runs if r.state == "failed"]


@dataclass
class Job:
    """What one worker process runs: a single run (its directory) or a pack of runs trained
    together (the pack's directory, :mod:`saferl.experiments.packing`)."""

    directory: Path
    states: list[RunState]

    @property
    def packed(self) -> bool:
        """Whether this job trains several runs in one process."""
        return (self.directory / "pack.json").is_file()


def prepare(sweep: Sweep, retry_failed: bool = False, write: bool = True,
            reuse: Sequence[Path] = ()) -> list[RunState]:
    """Write each run's ``sweep_run.json`` (unless not ``write``: a dry run) and read its
    state from its directory.

    ``done`` and ``failed`` come from the worker's ``status.json``; a failed run is made
    pending again (its status set aside as ``status.failed.json``) only with ``retry_failed``;
    every other run is pending, resuming when its run directory already holds a configuration.
    A run not started here that another sweep folder of ``reuse`` has finished, with the same
    algorithm, configuration and evaluation stage, is copied from there and done
    (:func:`find_reusable`).
    """
    states = []
    for planned in sweep.runs:
        directory = sweep.out / "runs" / planned.run_id
        plan = {**planned.record(), "evaluation": {
            "episodes": sweep.evaluation.episodes, "modes": list(sweep.evaluation.modes),
            "thresholds": list(sweep.evaluation.thresholds),
            "env_seed": sweep.evaluation.env_seed}}
        if write:
            directory.mkdir(parents=True, exist_ok=True)
            write_json(directory / "sweep_run.json", plan, default=str)
        status = read_status(directory)
        if not status and reuse and not (directory / "run").exists():
            source = find_reusable(planned.run_id, plan, reuse)
            if source is not None:
                status = {**read_status(source), "reused_from": str(source)}
                if write:
                    _copy_run(source / "run", directory / "run")
                    write_json(directory / "status.json", status, default=str)
        state = status.get("state", "pending")
        if state == "failed" and retry_failed and write:
            (directory / "status.json").replace(directory / "status.failed.json")
            state = "pending"
        if state not in ("done", "failed"):
            state = "pending"
        states.append(RunState(planned.run_id, planned.label, directory, state,
                               resumed=(directory / "run" / "config.json").is_file(),
                               error=status.get("error") if state == "failed" else None,
                               wall_time=status.get("wall_time"),
                               training_time=status.get("training_time"),
                               reused=status.get("reused_from") if state == "done" else None))
    return states


def reuse_folders(folders: Sequence[str | Path]) -> list[Path]:
    """``folders`` as paths, each checked to be a sweep's out folder (one sentence if not)."""
    paths = [Path(folder) for folder in folders]
    for path in paths:
        if not (path / "sweep.json").is_file():
            raise ValueError(f"--reuse folder {str(path)!r} is not a sweep's out folder (it "
                             f"has no sweep.json).")
    return paths


def _copy_run(source: Path, target: Path) -> None:
    """Copy a run directory into place whole or not at all (a copy cut short leaves only a
    temporary folder, removed by the next attempt); the source's lock file stays behind."""
    from saferl.runs import LOCK_FILE

    partial = target.with_name(target.name + ".copying")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial, ignore=shutil.ignore_patterns(LOCK_FILE))
    partial.replace(target)


def find_reusable(run_id: str, plan: dict[str, Any], folders: Sequence[Path]) -> Path | None:
    """The directory of a finished run, in one of the sweep ``folders``, that computed what
    ``plan`` asks for: the same configuration hash (the end of ``run_id``; labels may differ
    between sweeps), algorithm, configuration up to resources (the run's identity:
    :func:`~saferl.experiments.spec.computed_fields`) and evaluation stage. ``None`` if there
    is none.
    """
    from saferl.experiments.spec import computed_fields

    def identity(record: dict[str, Any]) -> tuple[Any, ...]:
        return (record["algo"], computed_fields(record["config"]), record["evaluation"])

    digest = run_id.rpartition("-")[2]
    for folder in folders:
        for candidate in sorted(Path(folder, "runs").glob(f"*-{digest}")):
            try:
                same = identity(json.loads((candidate / "sweep_run.json").read_text())) == \
                    identity(plan)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if same and read_status(candidate).get("state") == "done" \
                    and (candidate / "run" / "config.json").is_file():
                return candidate
    return None


def packs(sweep: Sweep, states: list[RunState], pack_size: int = 0) -> list[Any]:
    """The :class:`~saferl.experiments.packing.Pack` of pending runs that differ only in seed
    (or cost limit), at most ``pack_size`` runs each (0: no limit; 1: no packing). A run with
    a run directory of its own (interrupted while training alone) resumes alone."""
    from saferl.experiments.packing import plan_packs

    fresh = {s.run_id for s in states
             if s.state == "pending" and not (s.directory / "run" / "config.json").is_file()}
    return plan_packs(sweep.out, sweep.runs, fresh, pack_size or len(states) + 1)


def plan_jobs(sweep: Sweep, states: list[RunState], pack_size: int = 0) -> list[Job]:
    """The worker processes that run the pending runs: the :func:`packs`, written as
    ``OUT/packs/*/pack.json``, then one job per remaining run."""
    by_id = {s.run_id: s for s in states}
    evaluation = {"episodes": sweep.evaluation.episodes, "modes": list(sweep.evaluation.modes),
                  "thresholds": list(sweep.evaluation.thresholds),
                  "env_seed": sweep.evaluation.env_seed}
    jobs, packed = [], set()
    for pack in packs(sweep, states, pack_size):
        pack.directory.mkdir(parents=True, exist_ok=True)
        write_json(pack.directory / "pack.json",
                   pack.plan({i: by_id[i].directory for i in pack.run_ids}, evaluation),
                   default=str)
        jobs.append(Job(pack.directory, [by_id[i] for i in pack.run_ids]))
        packed.update(pack.run_ids)
    jobs += [Job(s.directory, [s]) for s in states
             if s.state == "pending" and s.run_id not in packed]
    return jobs


def write_index(sweep: Sweep, states: list[RunState]) -> Path:
    """Write ``OUT/sweep.json``: the spec's axes and every run's state."""
    path = sweep.out / "sweep.json"
    counts = {s: sum(1 for r in states if r.state == s) for s in STATES}
    write_json(path, {"name": sweep.name, "axes": sweep.axes, "counts": counts,
                      "runs": {r.run_id: r.record() for r in states}}, default=str)
    return path


def slot_cpus(slots: int) -> list[tuple[int, ...]]:
    """The CPUs of each local worker slot: the CPUs this process may use, cut into ``slots``
    equal groups that do not overlap (with fewer CPUs than slots, slots share them in turn).

    Two one-core workers side by side on two cores (5-seed CCPO packs): pinned, they took
    0.93 × the unpinned time (median of 3 pairs, benchmarks/sweep_pinning.sh)."""
    cpus = (sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else list(range(os.cpu_count() or 1)))
    per = max(1, len(cpus) // max(1, slots))
    groups = []
    for slot in range(max(1, slots)):
        first = slot * per % len(cpus)
        groups.append(tuple(cpus[first:first + per]))
    return groups


def worker_environment(cores: int, cpus: Sequence[int] | None = None) -> dict[str, str]:
    """The environment of a worker given ``cores`` CPU cores: XLA CPU devices and thread pools
    sized to them, fixed before the worker's JAX starts; with ``cpus``, the CPUs the worker
    pins itself to (``SAFERL_WORKER_CPUS``, applied by the worker first thing)."""
    env = dict(os.environ)
    if cpus is not None:
        env[CPUS_ENV] = ",".join(str(c) for c in cpus)
    threads = str(max(1, cores))
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={threads}"])
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = threads
    env["SAFERL_PROGRESS_INTERVAL"] = env.get("SAFERL_PROGRESS_INTERVAL", "30")
    env[DRIVER_ENV] = str(os.getpid())  # the worker dies with this process (worker.py)
    return env


def worker_command(directory: Path) -> list[str]:
    """The command that runs one run (:mod:`saferl.experiments.worker`)."""
    return [sys.executable, "-m", "saferl.experiments.worker", str(directory)]


def run_local(jobs: list[Job], slots: int, on_change: Callable[[], None]) -> None:
    """Run the jobs in up to ``slots`` worker subprocesses; ``on_change`` after every start
    and finish, and every ``TICK_SECONDS`` between. Ctrl-C or SIGTERM stops every worker (each
    checkpoints) and re-raises."""
    groups = slot_cpus(slots)
    free = list(range(slots))
    waiting = list(jobs)
    running: dict[int, tuple[subprocess.Popen, Job, Any, int]] = {}
    ticked = time.monotonic()
    try:
        while waiting or running:
            while waiting and free:
                job, slot = waiting.pop(0), free.pop(0)
                log = (job.directory / "worker.log").open("ab")
                process = subprocess.Popen(
                    worker_command(job.directory), stdout=log, stderr=subprocess.STDOUT,
                    env=worker_environment(len(groups[slot]), groups[slot]))
                for state in job.states:
                    state.state = "running"
                running[process.pid] = (process, job, log, slot)
                on_change()
            time.sleep(0.2)
            if time.monotonic() - ticked >= TICK_SECONDS:
                ticked = time.monotonic()
                on_change()  # the ETA moves as the running jobs train
            for pid, (process, job, log, slot) in list(running.items()):
                if process.poll() is None:
                    continue
                log.close()
                del running[pid]
                free.append(slot)
                _finish(job, process.returncode)
                on_change()
    except KeyboardInterrupt:
        for process, _, _, _ in running.values():
            # SIGTERM, not SIGINT: a sweep started in the background has SIGINT ignored, and
            # its workers inherit that; both stop a worker at once with its checkpoint.
            process.send_signal(signal.SIGTERM)
        for process, job, log, _ in running.values():
            process.wait()
            log.close()
            for state in job.states:
                state.state = "pending"
        raise


def run_ray(jobs: list[Job], address: str | None, cpus_per_run: int,
            gpus_per_run: float, on_change: Callable[[], None]) -> None:
    """Run the jobs as Ray tasks (each the worker command, asking for ``cpus_per_run`` CPUs and
    ``gpus_per_run`` GPUs: a pack is one task) on ``address`` or a local Ray instance.

    Raises:
        RuntimeError: Ray is not installed (``saferl[ray]``) or the cluster cannot be reached
            (one sentence each).
    """
    ray = ray_module(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
        raise RuntimeError(f"could not connect to {where}: {error}") from None

    @ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)
    def one(directory: str, cores: int) -> int:
        with open(Path(directory) / "worker.log", "ab") as log:
            return subprocess.run(worker_command(Path(directory)), stdout=log,
                                  stderr=subprocess.STDOUT, env=worker_environment(cores),
                                  check=False).returncode

    try:
        futures = {}
        for job in jobs:
            futures[one.remote(str(job.directory), cpus_per_run)] = job
            for state in job.states:
                state.state = "running"
        on_change()
        remaining = list(futures)
        while remaining:
            finished, remaining = ray.wait(remaining, num_returns=1, timeout=TICK_SECONDS)
            for ref in finished:
                _finish(futures[ref], ray.get(ref))
            on_change()
    finally:
        ray.shutdown()


def ray_module(address: str | None) -> Any:
    """The ``ray`` module, after checking that a given cluster address answers.

    Raises:
        RuntimeError: Ray is not installed, or ``address`` does not answer (one sentence).
    """
    try:
        import ray
    except ImportError:
        raise RuntimeError("the Ray backend needs Ray: pip install 'saferl[ray]' (or run "
                           "without --backend ray for local subprocesses).") from None
    if address:
        _check_reachable(address)
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast, in one sentence, when a ``HOST:PORT`` cluster address does not answer (Ray
    itself retries for minutes); other forms (``auto``, ``ray://…``) are left to Ray."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "//" in address:
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise RuntimeError(f"could not connect to the Ray cluster at {address!r}: "
                           f"{error.strerror or error}; start it with `ray start --head` "
                           f"or check the address.") from None


def _finish(job: Job, returncode: int) -> None:
    """A worker ended: each run's status file says done or failed; without one the run was
    interrupted (killed) and stays resumable."""
    for state in job.states:
        status = read_status(state.directory)
        if status.get("state") == "done":
            state.state, state.wall_time = "done", status.get("wall_time")
            state.training_time = status.get("training_time")
        elif status.get("state") == "failed":
            state.state, state.error = "failed", status.get("error")
        elif returncode == 75:  # locked by another worker: it is running elsewhere
            state.state = "running"
        else:
            state.state = "failed"
            state.error = (f"the worker exited with status {returncode} and wrote no status "
                           f"(killed?); see {job.directory / 'worker.log'}; the next sweep "
                           f"resumes it")
            state.resumed = True


def read_status(directory: Path) -> dict[str, Any]:
    """A run's ``status.json`` (``{}`` when missing or unreadable: not finished)."""
    try:
        status = json.loads((directory / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


class SweepProgress:
    """Plain progress lines: runs done / running / pending / failed, and an ETA from the
    training speed seen so far (:mod:`saferl.experiments.eta`). A line is printed when a count
    changes, and when only the ETA changed, at most once every ``interval`` seconds."""

    def __init__(self, states: list[RunState], slots: int, enabled: bool = True,
                 interval: float = 60.0) -> None:
        self.states, self.slots, self.enabled = states, slots, enabled
        self.interval = interval
        self.jobs: list[Job] = []
        self.last = ""
        self._last_counts = ""
        self._printed = 0.0

    def counts(self) -> str:
        """The counts part of the line."""
        counts = {s: sum(1 for r in self.states if r.state == s) for s in STATES}
        packs = sum(1 for job in self.jobs if len(job.states) > 1)
        packed = f", {packs} pack{'s' if packs != 1 else ''} of runs in one process" \
            if packs else ""
        return (f"sweep: {counts['done']} done, {counts['running']} running, "
                f"{counts['pending']} pending, {counts['failed']} failed "
                f"({len(self.states)} runs{packed}")

    def line(self) -> str:
        """The current counts and ETA."""
        eta = estimate(self.jobs, self.slots)
        return self.counts() + (f", {eta})" if eta else ")")

    def update(self) -> None:
        """Print the line if a count changed, or the ETA did and ``interval`` has passed."""
        if not self.enabled:  # nothing to show: do not read the jobs' progress files
            return
        counts, now = self.counts(), time.monotonic()
        if counts == self._last_counts and now - self._printed < self.interval:
            return
        line = self.line()
        if counts != self._last_counts or line != self.last:
            print(line, file=sys.stderr, flush=True)
            self.last, self._last_counts, self._printed = line, counts, now


def run_sweep(sweep: Sweep, jobs: int = 1, retry_failed: bool = False,
              backend: str = "local", address: str | None = None, cpus_per_run: int = 1,
              gpus_per_run: float = 0.0, progress: bool = True,
              pack_size: int = 0, reuse: Sequence[str | Path] = ()) -> SweepResult:
    """Run every pending run of ``sweep`` (see the module docstring).

    Args:
        sweep: The checked, expanded spec (:func:`~saferl.experiments.spec.load_spec`).
        jobs: Local backend: worker processes at once (each gets ``cores // jobs`` cores).
        retry_failed: Run failed runs again (otherwise they are listed and skipped).
        backend: ``"local"`` (subprocesses) or ``"ray"``.
        address: Ray: the cluster's address (default: a local Ray instance).
        cpus_per_run: Ray: CPUs each worker process (a run or a pack) asks for.
        gpus_per_run: Ray: GPUs each worker process asks for.
        progress: Print progress lines and the final summary to stderr.
        pack_size: Most runs trained together in one process when they differ only in seed
            (or cost limit): 0, no limit; 1, every run in its own process.
        reuse: Other sweeps' out folders: a run one of them has finished with the same
            configuration and evaluation stage is copied instead of trained again.

    Returns:
        Every run's final state.
    """
    if backend not in ("local", "ray"):
        raise ValueError(f"backend must be 'local' or 'ray'; got {backend!r}.")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1; got {jobs}.")
    if pack_size < 0:
        raise ValueError(f"pack_size must be >= 0 (0: no limit, 1: no packing); got "
                         f"{pack_size}.")
    if backend == "ray":
        ray_module(address)  # before anything is written or shown
    folders = reuse_folders(reuse)
    sweep.out.mkdir(parents=True, exist_ok=True)
    states = prepare(sweep, retry_failed, reuse=folders)
    reused = sum(1 for s in states if s.state == "done" and s.reused)
    work = plan_jobs(sweep, states, pack_size)
    display = SweepProgress(states, jobs if backend == "local" else len(work), progress)
    display.jobs = work
    skipped = sum(1 for s in states if s.state == "failed")

    def changed() -> None:
        write_index(sweep, states)
        display.update()

    changed()
    if progress and reused:
        print(f"sweep: {reused} run(s) copied, finished, from {', '.join(map(str, folders))}",
              file=sys.stderr, flush=True)
    if progress and skipped:
        print(f"sweep: skipping {skipped} failed run(s) (--retry-failed runs them again)",
              file=sys.stderr, flush=True)
    try:
        if backend == "local":
            run_local(work, jobs, changed)
        else:
            run_ray(work, address, cpus_per_run, gpus_per_run, changed)
    finally:
        write_index(sweep, states)
    result = SweepResult(sweep.out, states)
    if progress:
        print(f"sweep: {result.count('done')} of {len(states)} runs done; index "
              f"{sweep.out / 'sweep.json'}", file=sys.stderr, flush=True)
        for run in result.failed:
            print(f"  failed: {run.label} ({run.directory}): {run.error}", file=sys.stderr,
                  flush=True)
    return result
