"""Training front door: ``saferl.train(...)`` — configuration, the loop, logging, resume.

The loop itself is small: run one engine iteration for every seed, log, checkpoint every
``checkpoint_every`` iterations and at the end, draw the curves. A run interrupted at any point
resumes from its last checkpoint; on native tasks the whole state (environments included) is in
the checkpoint, so the resumed run reproduces the uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from saferl import interrupts
from saferl.algos.registry import ALGORITHMS, Algorithm, get_algorithm
from saferl.config import config_from_dict, config_to_dict, load_config_file, merge_shared
from saferl.engine.behaviour import conditioning
from saferl.engine.host import environment_seed
from saferl.engine.members import Member, has_limit_grid, member_label, member_labels, members
from saferl.envs.core import EnvSpec, VecEnv
from saferl.envs.make import make
from saferl.envs.native import NATIVE_TASKS, NativeTask
from saferl.envs.resolve import time_limit
from saferl.envs.wrappers import build_task
from saferl.evaluation import evaluate_policies, write_evaluation
from saferl.policy import Policy, combined, deployed_members
from saferl.progress import ProgressDisplay, print_summary
from saferl.runs import (
    LOCK_FILE,
    RunDirectory,
    check_writable,
    checkpoint_name,
    exclusive,
    new_run_dir,
    plot_curves,
    read_run_config,
    restore_states,
    row_label,
    spec_from_record,
    spec_record,
)
from saferl.versatile import evaluate_versatile, write_versatile

__all__ = ["DEFAULT_ALGORITHM", "DEFAULT_RECIPE", "TrainResult", "build_config", "build_task",
           "initial_states", "make_engine", "make_environment", "read_run_config",
           "resolve_algorithm", "restore_states", "spec_from_record", "summarize", "train"]

DEFAULT_ALGORITHM = "cpo"
DEFAULT_RECIPE: dict[str, Any] = {"run": {"safety_predictor": True, "predictor_alpha": 0.3}}
"""Settings of the run made without naming an algorithm (``saferl train``, ``saferl.train()``).

``cpo`` on native BallCircle with CPO's learned safety predictor at α = 0.3 (CPO paper §6.3):
plain CPO settles on the limit from above (2M steps, limit 10, seeds 0–3: final training episode
cost 9.9–11.1, mean 10.3, return ≈ 495), with the predictor it ends at 6.0–8.2 with returns of
490–730.
Naming the algorithm (``saferl train cpo``) gives ``cpo``'s own defaults (the predictor at
α = :data:`saferl.algos.cpo.PREDICTOR_ALPHA`); a config file or flags override these.
"""
Callback = Callable[[int, dict[str, np.ndarray]], None]


def resolve_algorithm(algo: str | None) -> tuple[str, dict[str, Any] | None]:
    """The algorithm to train and the settings under a config file and overrides.

    A named algorithm starts from its own defaults; no name means :data:`DEFAULT_ALGORITHM`
    with :data:`DEFAULT_RECIPE` (what ``saferl train`` and ``saferl.train()`` run).
    """
    return (DEFAULT_ALGORITHM, DEFAULT_RECIPE) if algo is None else (algo, None)


def build_config(algo: str, config_file: str | Path | None = None,
                 overrides: dict[str, Any] | None = None,
                 base: dict[str, Any] | None = None, host_workers: int = 1) -> Any:
    """The algorithm's configuration: defaults, ``base``, a config file, then ``overrides``.

    The defaults are those of the environment's kind: the configuration class's own for native
    tasks, with the algorithm's :attr:`~saferl.algos.registry.Algorithm.host_defaults` laid
    under everything else for host environments (Bullet, gymnasium). ``base``, ``overrides``
    and the file use the configuration's nested layout; the shared settings may also be given
    at top level (``{"env": ..., "steps": ...}``).

    ``host_workers`` is the default of ``run.env_workers`` for an on-policy algorithm on a
    host environment, capped at its copies; no layer that sets ``env_workers`` is overridden
    (off-policy updates already keep both cores busy). ``saferl train`` passes
    :data:`CLI_HOST_WORKERS`. Python callers keep 1 unless they ask: worker processes are
    started with ``spawn``, which re-imports the calling script, so a script needs an
    ``if __name__ == "__main__":`` guard before it may use them.
    """
    entry = get_algorithm(algo)
    layers = [base or {}, load_config_file(config_file) if config_file else {}, overrides or {}]
    data = _merged(entry, layers)
    env = data.get("run", {}).get("env", default_env(entry))
    if env not in NATIVE_TASKS:
        user_run = data.get("run", {})
        if entry.host_defaults:
            data = _merged(entry, [entry.host_defaults, *layers])
        if entry.family == "on_policy" and "env_workers" not in user_run and host_workers != 1:
            run = data.setdefault("run", {})
            copies = run.get("num_envs", entry.config_class().run.num_envs)
            run["env_workers"] = max(1, min(host_workers, copies))
    if entry.family == "on_policy" and "rollout_steps" not in data.get("run", {}):
        run = data.setdefault("run", {})
        run["rollout_steps"] = whole_episodes(entry.config_class().run.rollout_steps,
                                              time_limit(env, run.get("env_kwargs")))
    return config_from_dict(entry.config_class, data)


#: Worker processes that step a host environment's copies under ``saferl train`` when the
#: user sets none (``--env-workers``). On 2 cores, 60k steps of ``ppo_lag`` on
#: SafetyCarCircle-v0 took 26.5 s with 2 workers against 44.4 s in one process (BallCircle
#: 9.7 s against 10.3 s); the batches are the same, and a sweep's run hash ignores it
#: (benchmarks/RESULTS.md, issue 16).
CLI_HOST_WORKERS = 2


def whole_episodes(rollout_steps: int, limit: int | None) -> int:
    """The default rollout length rounded up to whole episodes of a fixed time limit.

    On-policy rollouts of whole episodes give every iteration's constraint-cost estimate from
    episodes run by the policy being updated alone. A rollout that ends mid-episode judges
    the policy on episodes begun under its predecessors, and some iterations finish none: on
    native CarCircle (300-step episodes) 200-step rollouts left one iteration in three on the
    previous estimate, and CPO's stochastic policy cost 1.5 × its limit at evaluation
    (benchmarks/RESULTS.md, issue 16).

    Args:
        rollout_steps: The configuration class's default rollout length.
        limit: The task's time limit (:func:`~saferl.envs.resolve.time_limit`), or ``None``.

    Returns:
        The smallest multiple of ``limit`` that is at least ``rollout_steps``, or
        ``rollout_steps`` when the limit is unknown.
    """
    return rollout_steps if not limit else math.ceil(rollout_steps / limit) * limit


def default_env(entry: Algorithm) -> str:
    """The environment an algorithm's configuration trains on when none is given."""
    return entry.config_class().run.env


def _merged(entry: Algorithm, layers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Configuration layers merged in order (later ones win, sections merged field by field)."""
    data: dict[str, Any] = {}
    for source in layers:
        source = merge_shared(entry.config_class, source)
        for key, value in source.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
    return data


def check_grid(entry: Algorithm, config: Any) -> None:
    """Refuse a grid of cost limits for a threshold-conditioned algorithm.

    Raises:
        ValueError: ``run.limits`` given to ``ccpo``, ``vsac_lag`` or ``vddpg_lag``.
    """
    if config.run.limits and conditioning(entry.module, config) is not None:
        raise ValueError(
            f"limits trains one policy per cost limit, but {entry.name} trains one policy for "
            f"every threshold (its behaviour thresholds are its ccpo.behaviour_thresholds or "
            f"versatile.behaviour_thresholds); leave limits out.")


def make_environment(config: Any, iteration: int = 0
                     ) -> tuple[EnvSpec, NativeTask | None, list[VecEnv] | None]:
    """The task (native) or one host VecEnv per seed, and the spec; checks the cost limits.

    A host member's copies are seeded from its seed and ``iteration`` (the one a resumed run
    restarts from): :func:`~saferl.engine.host.environment_seed`."""
    run = config.run
    if run.env in NATIVE_TASKS:
        if run.env_workers != 1:
            raise ValueError(f"env_workers={run.env_workers}: native tasks like {run.env!r} run "
                             f"inside XLA, not in worker processes; leave env_workers at 1.")
        task = build_task(run)
        spec, envs = task.spec, None
    else:
        if run.cost_transform != "sparse":
            raise ValueError(
                f"cost_transform {run.cost_transform!r} needs a safety margin, which only native "
                f"tasks expose; for {run.env!r} wrap the env in "
                f"saferl.envs.wrappers.SafetyMarginCost(env, margin_fn) and register it.")
        task = None
        envs = [make(run.env, num_envs=run.num_envs, seed=environment_seed(member.seed, iteration),
                     workers=run.env_workers, **run.env_kwargs) for member in members(config)]
        spec = envs[0].spec
    names = ", ".join(spec.cost_names)
    if getattr(config, "limit_grid", None) is not None:  # cppo_lag, ctrpo_lag
        given = len(config.limit_grid[0])
        if given != spec.num_costs:
            raise ValueError(
                f"versatile.num_constraints is {given} but {spec.id!r} has {spec.num_costs} "
                f"cost(s) ({names}); set --versatile.num-constraints {spec.num_costs} and give "
                f"{spec.num_costs} number(s) per behaviour threshold.")
    elif run.limits:
        if len(run.limits[0]) != spec.num_costs:
            example = ",".join(["20"] * spec.num_costs)
            raise ValueError(
                f"limits has limits of {len(run.limits[0])} value(s) {list(run.limits[0])} but "
                f"{spec.id!r} has {spec.num_costs} cost(s) ({names}); give one value per cost "
                f"in every limit, e.g. --limits {example}.")
    elif len(run.cost_limit) != spec.num_costs:
        example = " ".join(["10"] * spec.num_costs)
        raise ValueError(
            f"cost_limit has {len(run.cost_limit)} value(s) {list(run.cost_limit)} but "
            f"{spec.id!r} has {spec.num_costs} cost(s) ({names}); give one limit per cost, e.g. "
            f"--cost-limit {example}.")
    return spec, task, envs


def initial_states(entry: Algorithm, config: Any, spec: EnvSpec,
                   task: NativeTask | None) -> Any:
    """Fresh member-stacked training states of the algorithm (also a loading template)."""
    return entry.engine.initial_states(entry.module, config, spec, task)


def make_engine(entry: Algorithm, config: Any, spec: EnvSpec, task: NativeTask | None,
                envs: list[VecEnv] | None) -> Any:
    """The engine of the algorithm's family (:class:`~saferl.engine.family.Engine`)."""
    return entry.engine.make_engine(entry.module, config, spec, task, envs)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: The run directory.
        algo: Algorithm name.
        config: The resolved configuration.
        summary: Per-seed final figures (mean over the last iterations) and their mean ± std.
        history: Every logged row (as in ``progress.csv``).
    """

    run_dir: Path
    algo: str
    config: Any
    summary: dict[str, Any]
    history: list[dict[str, float]]

    def policy(self, seed_index: int = 0, member: int | str | None = None) -> Any:
        """The trained policy of one member (see :meth:`saferl.policy.Policy.load`)."""
        return Policy.load(self.run_dir, seed_index=seed_index, member=member)


def train(algo: str | None = None, env: str | None = None, *,
          cost_limit: float | list[float] | tuple[float, ...] | None = None,
          steps: int | None = None, seed: int | None = None, seeds: list[int] | None = None,
          run_dir: str | Path | None = None, config: Any | None = None,
          config_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
          resume: str | Path | None = None, checkpoint: int | str | None = None,
          progress: bool = True, callback: Callback | None = None) -> TrainResult:
    """Train a safe-RL agent and return its run.

    Args:
        algo: Algorithm name (``saferl list``); ignored when resuming. Without one: the
            algorithm of ``config`` if given, else ``cpo`` with the settings of
            :data:`DEFAULT_RECIPE` (under ``config_file`` and ``overrides``).
        env: Environment id (default: native BallCircle).
        cost_limit: One limit per constraint (a single number for one constraint).
        steps: Environment steps per seed (when resuming: a new, larger total to extend to).
        seed: Random seed.
        seeds: Several seeds trained together in one process.
        run_dir: Where to write the run (default: a new folder under ``runs/``).
        config: A complete configuration object (then the shortcuts above override it).
        config_file: A TOML/JSON file with configuration fields.
        overrides: Nested dict of configuration fields.
        resume: A run directory to continue from its newest intact checkpoint.
        checkpoint: With ``resume``: the iteration (or checkpoint name) to continue from
            instead; later iterations are trained again.
        progress: Show a progress bar and the final summary table.
        callback: Called as ``callback(iteration, metrics)`` after every iteration.

    Returns:
        A :class:`TrainResult` with the run directory, summary and history.
    """
    if resume is not None:
        path = Path(resume)
        with exclusive(path) if path.is_dir() else contextlib.nullcontext():
            return _resume(path, steps=steps, progress=progress, callback=callback,
                           checkpoint=checkpoint)
    if checkpoint is not None:
        raise ValueError("checkpoint= chooses where a resumed run continues; it needs resume=.")
    shortcuts: dict[str, Any] = {}
    if env is not None:
        shortcuts["env"] = env
    if cost_limit is not None:
        limits = [cost_limit] if isinstance(cost_limit, int | float) else list(cost_limit)
        shortcuts["cost_limit"] = [float(x) for x in limits]
    for name, value in (("steps", steps), ("seed", seed), ("seeds", seeds),
                        ("run_dir", str(run_dir) if run_dir is not None else None)):
        if value is not None:
            shortcuts[name] = value
    if algo is None and config is not None:  # the configuration names its algorithm
        algo = next((name for name, entry in ALGORITHMS.items()
                     if type(config) is entry.config_class), None)
    algo, recipe = resolve_algorithm(algo)
    if config is None:
        merged = dict(overrides or {})
        merged.update(shortcuts)
        config = build_config(algo, config_file, merged, base=recipe)
    elif shortcuts or overrides:
        data = config_to_dict(config)
        for source in (overrides or {}, {"run": shortcuts}):
            for key, value in merge_shared(type(config), source).items():
                data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
        config = config_from_dict(type(config), data)
    entry = get_algorithm(algo)
    if not isinstance(config, entry.config_class):
        raise TypeError(f"config is a {type(config).__name__}, but {algo!r} needs a "
                        f"{entry.config_class.__name__}.")
    check_grid(entry, config)
    path = Path(config.run.run_dir) if config.run.run_dir else new_run_dir(algo, config.run.env)
    _check_no_run(path)
    # the folders this start creates (the run's and any missing parents, e.g. runs/): a failed
    # start removes those it leaves empty
    created = [p for p in (path, *path.parents) if not p.exists()]
    check_writable(path)
    with exclusive(path):
        _check_no_run(path)  # again under the lock: another process may have started there
        return _start(entry, config, path, created, progress, callback)


def _check_no_run(path: Path) -> None:
    """Refuse, in one sentence, to start a new run where one already is."""
    if (path / "config.json").exists():
        raise FileExistsError(
            f"Run directory {str(path)!r} already holds a run; pass resume={str(path)!r} "
            f"(CLI: --resume {path}) to continue it, or choose another run_dir.")


def _start(entry: Algorithm, config: Any, path: Path, created: list[Path], progress: bool,
           callback: Callback | None) -> TrainResult:
    """Train a new run into ``path`` (writable, locked by this process, without a run)."""
    directory = RunDirectory(path)
    algo = entry.name
    record = {"algo": algo, "config": config_to_dict(config), "spec": None}
    try:
        spec, task, envs = make_environment(config)
    except KeyboardInterrupt:
        # Nothing trained yet, but the folder must be resumable (from scratch): --resume reads
        # the configuration from config.json.
        directory.write_config(record)
        raise
    except BaseException:
        if created and path.is_dir() and not any(p.name != LOCK_FILE for p in path.iterdir()):
            (path / LOCK_FILE).unlink(missing_ok=True)
            for folder in created:  # bad input loses nothing and leaves nothing behind
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        raise
    record["spec"] = spec_record(spec)
    directory.write_config(record)
    interrupts.check()
    return _loop(entry, config, spec, task, envs, directory, None, progress, callback)


def _resume(path: Path, steps: int | None, progress: bool, callback: Callback | None,
            checkpoint: str | int | None = None) -> TrainResult:
    notes: list[str] = []
    directory = RunDirectory(path)
    for name in directory.discard_unfinished():
        notes.append(f"checkpoint {name} was being written or removed when the run stopped; "
                     f"discarding what was left of it.")
    if not directory.checkpoint_names():
        # Interrupted before its first checkpoint: start over from the stored configuration.
        _, entry, config = read_run_config(path)
        if checkpoint is not None:
            raise FileNotFoundError(f"Run directory {str(path)!r} has no checkpoint yet, so "
                                    f"there is no checkpoint {checkpoint!r} to resume from.")
        config = _extend(path, config, steps, iteration=0)
        spec, task, envs = make_environment(config)
        record = directory.read_config()
        if record.get("spec") is None:
            directory.write_config({**{k: v for k, v in record.items() if k != "saferl_version"},
                              "spec": spec_record(spec)})
        notes.append(f"{path} has no checkpoint yet: training from scratch.")
        directory.truncate_progress(0, 0, *member_columns(config))
        return _loop(entry, config, spec, task, envs, directory, None, progress, callback, notes)
    if checkpoint is None:
        checkpoint = _logged_checkpoint(directory, notes)
    damaged: list[str] = []
    record, entry, config, spec, states, meta = restore_states(
        path, checkpoint, on_damaged=damaged.append)
    iteration = int(meta["iteration"])
    config = _extend(path, config, steps, iteration=iteration)
    _, task, envs = make_environment(config, iteration)
    for message in damaged:
        notes.append(f"{message} Skipping it.")
    for name in directory.checkpoint_names():  # newer than the one loaded: damaged or not chosen
        if int(name.split("_")[1]) > iteration:
            directory.set_aside(name)
    # Host simulators cannot be checkpointed: their episodes restart.
    states = entry.engine.prepare_resume(states, config, host=task is None)
    logged = directory.logged_iteration() or iteration
    redo = max(0, logged - iteration)
    batch = config.run.steps_per_iteration
    redone = (f"redoing {redo} iteration{'s' if redo != 1 else ''} logged after it" if redo
              else "nothing to redo")
    notes.append(f"resuming {path} from iteration {iteration} (step {iteration * batch:,} of "
                 f"{config.run.iterations * batch:,} per seed); {redone}.")
    return _loop(entry, config, spec, task, envs, directory, (states, meta), progress,
                 callback, notes)


def _logged_checkpoint(directory: RunDirectory, notes: list[str]) -> str | None:
    """The checkpoint to resume from when ``progress.csv`` ends before the newest one (its
    last rows lost after the run, e.g. a file cut short): the newest at or before the last
    logged iteration, so that no iteration goes unlogged; ``None`` (the newest) otherwise."""
    names = directory.checkpoint_names()  # newest first
    logged = directory.logged_iteration()
    if not names or int(names[0].split("_")[1]) <= logged:
        return None
    earlier = [n for n in names if int(n.split("_")[1]) <= logged]
    if not earlier:
        return None
    notes.append(f"progress.csv ends at iteration {logged}, before checkpoint {names[0]}: "
                 f"resuming from {earlier[0]} so that every iteration is logged.")
    return earlier[0]


def _extend(path: Path, config: Any, steps: int | None, iteration: int) -> Any:
    """``config`` with a new total of ``steps`` (recorded in ``config.json``), checked against
    the steps per seed trained up to the checkpoint of ``iteration``."""
    if steps is None:
        return config
    trained = iteration * config.run.steps_per_iteration
    if steps < trained:
        raise ValueError(
            f"steps={steps:,} is fewer than the {trained:,} steps per seed that {str(path)!r} "
            f"has already trained (checkpoint of iteration {iteration}); give more steps to "
            f"extend the run, or leave steps out to finish it.")
    config = replace(config, run=replace(config.run, steps=steps))
    directory = RunDirectory(path)
    record = directory.read_config()
    record["config"] = config_to_dict(config)
    directory.write_config({k: v for k, v in record.items() if k != "saferl_version"})
    return config


def member_columns(config: Any) -> tuple[tuple[int, ...], list[tuple[float, ...]] | None]:
    """How ``progress.csv`` and TensorBoard name the members: their seeds, and in a grid of
    cost limits their limits (``None`` otherwise; see :meth:`RunDirectory.log`)."""
    grid = members(config)
    return (tuple(m.seed for m in grid),
            [m.cost_limit for m in grid] if has_limit_grid(config) else None)


def _loop(entry: Algorithm, config: Any, spec: EnvSpec, task: NativeTask | None,
          envs: list[VecEnv] | None, directory: RunDirectory, resumed: tuple[Any, dict] | None,
          progress: bool, callback: Callback | None, notes: list[str] | None = None
          ) -> TrainResult:
    seeds = config.run.seed_list
    columns = member_columns(config)
    grid = members(config)
    batch = config.run.steps_per_iteration
    total = config.run.iterations
    start = int(resumed[1]["iteration"]) if resumed is not None else 0
    conditioned = conditioning(entry.module, config)
    behaviour = None if conditioned is None else conditioned.behaviour
    limits = np.asarray([m.cost_limit for m in grid], np.float64)
    display = ProgressDisplay(total * batch, spec, tuple(limits[0]), enabled=progress,
                              start_steps=start * batch, behaviour=behaviour,
                              member_limits=limits if has_limit_grid(config) else None)
    for note in notes or []:
        display.note(note)
    if resumed is None and config.run.steps % batch:
        display.note(f"steps {config.run.steps:,} is not a whole number of iterations of "
                     f"{batch:,} steps (num_envs × rollout_steps): training {total * batch:,} "
                     f"steps per seed ({total} iterations).")
    warmup = getattr(config.run, "warmup_iterations", None)
    if resumed is None and warmup is not None and warmup >= total:
        display.note(f"steps {total * batch:,} per seed are all random warm-up (warmup_steps "
                     f"{config.run.warmup_steps:,}): this run will not learn; give more steps "
                     f"or a smaller --warmup-steps.")
    limit = spec.max_episode_steps
    if (resumed is None and entry.family == "on_policy" and entry.constrained and limit
            and config.run.rollout_steps % limit):
        display.note(f"rollout_steps {config.run.rollout_steps} is not a whole number of this "
                     f"task's {limit}-step episodes: episodes span iterations, so the cost "
                     f"limit is judged on episodes partly run by earlier policies (a multiple "
                     f"of {limit} avoids it).")
    engine = None
    began = time.time()
    elapsed = float(resumed[1]["wall_time"]) if resumed is not None else 0.0
    completed = start  # the last iteration whose results are in `states`
    states: Any = None

    def checkpoint(iteration: int) -> None:
        directory.save_checkpoint(states, iteration, {
            "env_steps": iteration * batch, "wall_time": elapsed + time.time() - began,
            "seeds": list(seeds), "members": list(member_labels(config)), "algo": entry.name})

    try:
        engine = make_engine(entry, config, spec, task, envs)
        if resumed is None:
            states = engine.init_states()
        else:
            states = engine.place(resumed[0])
            with interrupts.deferred():  # it opens TensorBoard writers (threads)
                directory.truncate_progress(start, start * batch, *columns)
        interrupts.check()
        with display:
            for iteration in range(start + 1, total + 1):
                states, metrics = engine.iterate(states)  # a Ctrl-C may land anywhere in here
                completed = iteration
                # ... but not in the bookkeeping: TensorBoard's writer thread, the progress
                # file and the checkpoint files must not be cut short (interrupts.py).
                with interrupts.deferred():
                    wall = elapsed + time.time() - began
                    directory.log(iteration, iteration * batch, wall, *columns[:1], metrics,
                                  limits=columns[1])
                    display.update(iteration * batch, metrics)
                    if iteration % config.run.checkpoint_every == 0 or iteration == total:
                        checkpoint(iteration)
                if callback is not None:
                    callback(iteration, metrics)
                interrupts.check()  # a Ctrl-C that something swallowed still stops here
    except KeyboardInterrupt:
        # `states` is the state after the last *completed* iteration (an interrupt inside
        # `iterate` leaves that iteration undone): save it so that nothing done so far is lost
        # (unless that iteration was already checkpointed).
        with interrupts.shielded():  # a second Ctrl-C must not cut the save short
            if (completed > start
                    and directory.latest_checkpoint() != checkpoint_name(completed)):
                checkpoint(completed)
        raise
    finally:
        with interrupts.shielded():
            if engine is not None:
                engine.close()
            directory.close()
            if envs:
                for env in envs:
                    env.close()
    interrupts.check()  # a Ctrl-C during the closing above: the run is saved, stop here
    plot_curves(directory, tuple(limits[0]), spec.cost_names)
    history = directory.read_progress()
    summary = summarize(history, seeds, spec, tuple(limits[0]), behaviour=behaviour,
                        members=grid if has_limit_grid(config) else None)
    last = [r for r in history if int(r["iteration"]) == total]
    if last:
        wall_time = float(last[0]["wall_time"])
        summary["timing"] = {"env_steps": total * batch, "seeds": len(seeds),
                             "members": len(grid), "wall_time": wall_time,
                             "steps_per_second": total * batch * len(grid) / max(wall_time,
                                                                                 1e-9)}
    if config.run.eval_episodes > 0:
        unit = ("behaviour threshold and seed" if combined(config) or behaviour is not None
                else "mode and member" if has_limit_grid(config) else "mode and seed")
        display.note(f"evaluating the deployed policy ({config.run.eval_episodes} episodes per "
                     f"{unit})…")
        policies = [Policy.from_states(entry, config, spec, states, index)
                    for index in range(len(deployed_members(config)))]
        if combined(config):  # one conditioned policy per seed, at the behaviour thresholds
            behaviour = config.versatile.behaviour
        if behaviour is None:
            summary["evaluation"] = {**evaluate_policies(policies,
                                                         episodes=config.run.eval_episodes),
                                     "checkpoint": checkpoint_name(total)}
            write_evaluation(directory.path, summary["evaluation"])
        else:  # a conditioned policy: at every behaviour threshold (saferl eval --thresholds)
            result = evaluate_versatile(policies, behaviour, episodes=config.run.eval_episodes)
            write_versatile(directory.path, result, f"{entry.name} on {spec.id}")
            summary["versatile"] = result.record()
    if progress:
        print_summary(summary, spec, tuple(limits[0]), directory.path)
    return TrainResult(directory.path, entry.name, config, summary, history)


def summarize(history: list[dict[str, float]], seeds: tuple[int, ...], spec: EnvSpec,
              cost_limit: tuple[float, ...], last: int = 5,
              behaviour: np.ndarray | None = None,
              members: Sequence[Member] | None = None) -> dict[str, Any]:
    """Final figures per member: mean over the last ``last`` iterations with finished episodes.

    The members are the ``seeds`` under ``cost_limit``, or for a grid of cost limits
    ``members`` (each judged against its own limit; ``per_seed`` is then keyed by member
    label, ``3@20``). ``windows`` gives, per member, how many iterations that mean really
    covers (fewer than ``last`` when fewer iterations finished an episode).
    ``constraints_satisfied`` is ``True`` or ``False``, or ``None`` when a member finished no
    episode (its costs are NaN and nothing can be said).

    A threshold-conditioned run (``behaviour`` ``[N_b, m]``, its behaviour thresholds) is
    judged per behaviour threshold instead of against ``cost_limit``: the figures gain
    ``behaviour_b/ep_cost_i``, the mean over the last ``last`` iterations that finished an
    episode under threshold ``b``, and each must be at most that threshold.
    """
    grid = members is not None
    listed = list(members) if grid else [Member(s, tuple(cost_limit)) for s in seeds]
    names = ["rollout/ep_return"] + [f"rollout/ep_cost_{i}" for i in range(spec.num_costs)]
    per_seed: dict[Any, dict[str, float]] = {}
    windows: dict[Any, int] = {}
    limit_of: dict[Any, tuple[float, ...]] = {}
    for member in listed:
        key: Any = member_label(member, grid) if grid else member.seed
        label = member_label(member, grid)
        own = [r for r in history if row_label(r) == label]
        rows = [r for r in own if math.isfinite(r.get("rollout/ep_return", math.nan))]
        tail = rows[-last:]
        windows[key] = len(tail)
        figures = {n: float(np.mean([r[n] for r in tail])) if tail else math.nan for n in names}
        final = own
        for b in range(0 if behaviour is None else behaviour.shape[0]):
            for i in range(spec.num_costs):
                name = f"rollout/behaviour_{b}/ep_cost_{i}"
                values = [r[name] for r in final if math.isfinite(r.get(name, math.nan))][-last:]
                figures[f"behaviour_{b}/ep_cost_{i}"] = (float(np.mean(values)) if values
                                                         else math.nan)
        for i in range(spec.num_costs):
            key_rate = f"train/cost_rate_{i}"
            figures[key_rate] = final[-1].get(key_rate, math.nan) if final else math.nan
        per_seed[key] = figures
        limit_of[key] = member.cost_limit
    keys = list(next(iter(per_seed.values())).keys()) if per_seed else []
    aggregate = {k: (float(np.mean([v[k] for v in per_seed.values()])),
                     float(np.std([v[k] for v in per_seed.values()]))) for k in keys}
    if behaviour is None:
        costs = [(per_seed[k][f"rollout/ep_cost_{i}"], limit_of[k][i])
                 for k in per_seed for i in range(spec.num_costs)]
    else:
        costs = [(per_seed[k][f"behaviour_{b}/ep_cost_{i}"], float(behaviour[b, i]))
                 for k in per_seed for b in range(behaviour.shape[0])
                 for i in range(spec.num_costs)]
    # None: some seed finished no episode, so whether its constraints hold is unknown.
    satisfied: bool | None = (None if any(math.isnan(c) for c, _ in costs)
                              else all(c <= d for c, d in costs))
    out = {"per_seed": per_seed, "mean_std": aggregate, "constraints_satisfied": satisfied,
           "window": last, "windows": windows}
    if behaviour is not None:
        out["behaviour_thresholds"] = behaviour.tolist()
    if grid:
        out["member_limits"] = {k: list(v) for k, v in limit_of.items()}
    return out
