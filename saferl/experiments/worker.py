"""One run of a sweep, in its own process: ``python -m saferl.experiments.worker RUN_DIR``.

The sweep driver writes ``RUN_DIR/sweep_run.json`` (the run's algorithm, resolved configuration
and evaluation stage) and starts this module with the thread and XLA settings of its slot
already in the environment, before JAX starts; nothing forks after JAX is initialised. The
worker

1. takes an exclusive lock on ``RUN_DIR/.lock`` (a second worker on the same run exits: the
   run is already running elsewhere);
2. trains the run, or resumes it from its newest intact checkpoint when ``RUN_DIR/run`` holds
   an interrupted one;
3. runs the evaluation stage (``eval.json``, or ``versatile.*`` for a conditioned policy at the
   spec's thresholds);
4. writes ``RUN_DIR/status.json``: ``done``, or ``failed`` with the error and its traceback
   (``RUN_DIR/worker.log`` holds the whole output).

A worker killed mid-run (SIGKILL, a lost node) leaves no status: the next ``saferl sweep``
resumes it from its checkpoint. Given a pack's directory (``pack.json``: runs trained together,
:mod:`saferl.experiments.packing`), the worker trains the pack as one multi-member run, then
writes, evaluates and marks done each of its runs' directories.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from saferl.files import write_json

LOCKED_EXIT = 75  # EX_TEMPFAIL: the run is locked by another worker
DRIVER_ENV = "SAFERL_SWEEP_DRIVER"  # the process id of the sweep driver that started this one
CPUS_ENV = "SAFERL_WORKER_CPUS"  # the CPUs of this worker's slot, e.g. "0" or "4,5,6,7"


def pin_cpus() -> tuple[int, ...] | None:
    """Pin this process to the CPUs its sweep slot was given (``SAFERL_WORKER_CPUS``) before
    JAX starts its threads; returns them (``None`` when none were given or pinning is not
    possible here)."""
    given = os.environ.get(CPUS_ENV)
    if not given or not hasattr(os, "sched_setaffinity"):
        return None
    try:
        cpus = tuple(int(c) for c in given.split(","))
        os.sched_setaffinity(0, cpus)
    except (ValueError, OSError):  # CPUs this machine does not have: run unpinned
        return None
    return cpus


def die_with_driver() -> None:
    """Linux: have the kernel SIGKILL this worker when the driver named by
    ``SAFERL_SWEEP_DRIVER`` (its parent) dies, so that a driver killed with SIGKILL leaves no
    training behind. Requested here, first thing after exec, rather than between fork and exec
    in the driver (``preexec_fn``), where running Python beside JAX's threads can deadlock. A
    driver already gone by then is seen as a changed parent, and the worker leaves at once."""
    driver = os.environ.get(DRIVER_ENV)
    if not driver or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != driver:
        os._exit(1)


def training_time(training: Path) -> float | None:
    """A training run's wall seconds over all its attempts (``progress.csv``'s last
    ``wall_time``, carried over resumes); ``None`` before its first row."""
    from saferl.experiments.eta import progress_points

    points = progress_points(training / "progress.csv")
    return None if points is None else points[1][1]


def write_status(run_dir: Path, state: str, **fields: Any) -> None:
    """Atomically write ``RUN_DIR/status.json`` (``wall_time``: this worker process's seconds;
    ``training_time``, where given: the training's over every attempt)."""
    write_json(run_dir / "status.json", {"state": state, "time": time.time(), **fields})


def evaluate_stage(run_dir: Path, stage: dict[str, Any]) -> None:
    """The spec's evaluation stage on a finished run, written into its run directory."""
    from saferl.evaluation import evaluate_run, write_evaluation
    from saferl.policy import Policy, deployed_members
    from saferl.runs import restore_states
    from saferl.versatile import evaluate_versatile, write_versatile

    episodes = int(stage["episodes"])
    if episodes == 0:
        return
    _, entry, config, spec, states, meta = restore_states(run_dir)
    policies = [Policy.from_states(entry, config, spec, states, index)
                for index in range(len(deployed_members(config)))]
    if policies[0].conditioning is not None:
        thresholds = stage["thresholds"] or policies[0].conditioning.behaviour.ravel().tolist()
        result = evaluate_versatile(policies, thresholds, episodes=episodes,
                                    seed=int(stage["env_seed"]))
        write_versatile(run_dir, result, f"{entry.name} on {spec.id}")
        return
    record = evaluate_run(run_dir, episodes=episodes, seed=int(stage["env_seed"]),
                          modes=tuple(stage["modes"]))
    record["stage"] = "sweep evaluation"
    write_evaluation(run_dir, record)
    del meta


def train_or_resume(training: Path, algo: str, config_record: dict[str, Any], label: str) -> None:
    """Train the run in ``training``, or resume it from its newest intact checkpoint."""
    import saferl
    from saferl.algos.registry import get_algorithm
    from saferl.config import config_from_dict

    if (training / "config.json").is_file():
        print(f"saferl sweep worker: resuming {training} from its newest intact checkpoint",
              flush=True)
        saferl.train(resume=training, progress=False)
        return
    print(f"saferl sweep worker: training {label} in {training}", flush=True)
    config = config_from_dict(get_algorithm(algo).config_class, config_record)
    saferl.train(algo, config=config, run_dir=training, progress=False)


def run(run_dir: Path) -> int:
    """Train (or resume) and evaluate the run in ``run_dir`` (or, for a pack's directory, all
    of its runs: :func:`run_pack`); the process's exit status."""
    from saferl import interrupts
    from saferl.runs import try_lock

    interrupts.install()  # a Ctrl-C swallowed anywhere still stops the run at an iteration
    if (run_dir / "pack.json").is_file():
        return run_pack(run_dir)
    lock = try_lock(run_dir)
    if lock is None:
        print(f"saferl sweep: {run_dir} is already running in another worker.", file=sys.stderr)
        return LOCKED_EXIT
    began = time.time()
    try:
        plan = json.loads((run_dir / "sweep_run.json").read_text())
        training = run_dir / "run"
        train_or_resume(training, plan["algo"], plan["config"], plan["label"])
        evaluate_stage(training, plan["evaluation"])
        print(f"saferl sweep worker: {plan['label']} done", flush=True)
        write_status(run_dir, "done", wall_time=time.time() - began,
                     training_time=training_time(training))
        return 0
    except KeyboardInterrupt:
        return interrupts.exit_status()  # interrupted: no status, the next sweep resumes it
    except BaseException as error:
        write_status(run_dir, "failed", error=f"{type(error).__name__}: {error}",
                     traceback=traceback.format_exc(), wall_time=time.time() - began)
        return 1
    finally:
        lock.close()


def run_pack(pack_dir: Path) -> int:
    """Train a pack's runs as one multi-member run in ``pack_dir/run`` (or resume it), then
    write each run's directory (:func:`~saferl.experiments.packing.split_member`), evaluate
    it and mark it done; a failure marks every run of the pack not yet done as failed."""
    from saferl import interrupts
    from saferl.experiments.sweep import read_status
    from saferl.runs import try_lock

    plan = json.loads((pack_dir / "pack.json").read_text())
    directories = [Path(m["directory"]) for m in plan["members"]]
    locks = [try_lock(d) for d in [pack_dir, *directories]]
    if any(lock is None for lock in locks):
        for lock in locks:
            if lock is not None:
                lock.close()
        print(f"saferl sweep: {pack_dir} is already running in another worker.", file=sys.stderr)
        return LOCKED_EXIT
    began = time.time()
    try:
        from saferl.algos.registry import get_algorithm
        from saferl.config import config_from_dict
        from saferl.experiments.packing import split_member

        training = pack_dir / "run"
        train_or_resume(training, plan["algo"], plan["config"],
                        f"{plan['pack']} ({len(directories)} runs in one process)")
        entry = get_algorithm(plan["algo"])
        for directory in directories:
            if read_status(directory).get("state") == "done":
                continue
            run_plan = json.loads((directory / "sweep_run.json").read_text())
            config = config_from_dict(entry.config_class, run_plan["config"])
            split_member(training, config, directory / "run")
            stage = dict(run_plan["evaluation"])
            if not stage["episodes"]:  # as a run alone: its own end-of-training evaluation
                stage["episodes"] = config.run.eval_episodes
            evaluate_stage(directory / "run", stage)
            print(f"saferl sweep worker: {run_plan['label']} done (packed)", flush=True)
            write_status(directory, "done", wall_time=time.time() - began,
                         training_time=training_time(training), packed_in=str(pack_dir),
                         pack_runs=len(directories))
        write_status(pack_dir, "done", wall_time=time.time() - began,
                     training_time=training_time(training))
        return 0
    except KeyboardInterrupt:
        return interrupts.exit_status()
    except BaseException as error:
        fields = {"error": f"{type(error).__name__}: {error}",
                  "traceback": traceback.format_exc(), "wall_time": time.time() - began,
                  "packed_in": str(pack_dir)}
        for directory in directories:
            if read_status(directory).get("state") != "done":
                write_status(directory, "failed", **fields)
        write_status(pack_dir, "failed", **fields)
        return 1
    finally:
        for lock in locks:
            if lock is not None:
                lock.close()


def main() -> None:
    """Entry point: ``python -m saferl.experiments.worker RUN_DIR``."""
    if len(sys.argv) != 2:
        print("usage: python -m saferl.experiments.worker RUN_DIR", file=sys.stderr)
        raise SystemExit(2)
    die_with_driver()
    cpus = pin_cpus()
    if cpus is not None:
        print(f"worker {os.getpid()}: CPUs {','.join(map(str, cpus))}", flush=True)
    raise SystemExit(run(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
