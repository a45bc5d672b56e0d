"""Learner overhead on a host simulator: ``ppo_lag`` training speed against raw env stepping.

Target: on Bullet ``SafetyBallCircle-v0`` in one process, training runs at ≥ 0.85 × the env
steps/s of stepping the same ``saferl.make(env, num_envs=N)`` VecEnv with random actions (the
simulator plus the adapter), i.e. the learner (policy calls, buffers, GAE, the PPO update,
logging, checkpointing) costs at most 15 % on top of the simulator.

How it is measured. The machine is shared and its speed drifts by tens of percent over
seconds, so raw stepping and training are interleaved at the finest grain, inside one process:

* one ``saferl.train("ppo_lag", env, ...)`` run (``num_envs`` copies, ``rollout_steps`` steps
  per iteration, the default PPO settings: 5 epochs × 4 minibatches);
* after every iteration its ``callback`` steps a *second* VecEnv, built the same way with
  ``saferl.make(env, num_envs=N)``, for ``rollout_steps`` steps with uniform random actions drawn
  beforehand (the **raw** chunk), then training resumes.

A training iteration's time runs from the end of the raw chunk before it to the end of the
iteration (everything it does: rollout, update, logging, checkpoints); the first iteration
(compilation) is not timed. Each (raw chunk, iteration) pair is measured seconds apart, so
both see the same machine. The ratio of a run is its training steps/s over its raw steps/s
(same number of steps); ``--repeats`` runs give the median. ``Engine._host_rollout`` and
``Engine.iterate`` are wrapped with timers in this process (no saferl file is changed), which
splits an iteration into rollout, update and the rest. Pairs during which other processes used
more than ``--max-other-cores`` are left out of the figures (and counted).

Run: ``python benchmarks/bullet_overhead.py`` (``--help`` for the budget options).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
from pathlib import Path
from typing import Any

from common import (
    CpuSnapshot,
    MethodTimer,
    code_info,
    cores_between,
    cpu_snapshot,
    format_table,
    fresh_run_dir,
    median,
    setup_jax,
    wait_for_quiet,
    write_json,
)

jax = setup_jax()

import numpy as np  # noqa: E402

import saferl  # noqa: E402

TARGET_RATIO = 0.85


class RawStepper:
    """A VecEnv stepped with pre-drawn uniform random actions, one timed chunk at a time."""

    def __init__(self, env_id: str, num_envs: int, seed: int, chunk: int) -> None:
        self.vec = saferl.make(env_id, num_envs=num_envs, seed=seed)
        self.chunk = chunk
        self.space = self.vec.spec.action_space
        self.rng = np.random.default_rng(seed)
        self.num_envs = num_envs
        self.vec.reset(seed=seed)
        for action in self._actions(min(chunk, 50)):  # warm up caches, untimed
            self.vec.step(action)

    def _actions(self, steps: int) -> np.ndarray:
        return self.rng.uniform(self.space.low, self.space.high,
                                size=(steps, self.num_envs, *self.space.shape)
                                ).astype(np.float32)

    def run_chunk(self) -> tuple[CpuSnapshot, CpuSnapshot]:
        """Step ``chunk`` times (actions drawn before the clock starts); the two snapshots."""
        actions = self._actions(self.chunk)
        start = cpu_snapshot()
        for action in actions:
            self.vec.step(action)
        return start, cpu_snapshot()

    def close(self) -> None:
        """Close the environments."""
        self.vec.close()


def interleaved_run(env_id: str, num_envs: int, rollout_steps: int, timed_iterations: int,
                    seed: int, profile: bool = False) -> dict[str, Any]:
    """One training run with a raw chunk after every iteration; per-pair timings."""
    batch = num_envs * rollout_steps
    timer = MethodTimer(("iterate", "_host_rollout"))
    profiler = cProfile.Profile() if profile else None
    run_dir = fresh_run_dir("overhead_ppo_lag")
    raw = RawStepper(env_id, num_envs, seed, rollout_steps)
    marks: list[tuple[CpuSnapshot, CpuSnapshot, CpuSnapshot]] = []  # (raw start, raw end, end)
    resumed: list[CpuSnapshot] = []

    def callback(iteration: int, metrics: dict[str, Any]) -> None:
        end = cpu_snapshot()
        if profiler is not None:
            profiler.disable()
        if iteration > 1:
            marks[-1] = (*marks[-1][:2], end)
        if iteration <= timed_iterations:
            raw_start, raw_end = raw.run_chunk()
            marks.append((raw_start, raw_end, raw_end))
            resumed.append(cpu_snapshot())
            if profiler is not None:
                profiler.enable()  # profile training iterations only

    try:
        with timer.patched():
            run = saferl.train(
                "ppo_lag", env_id, cost_limit=10.0, steps=batch * (timed_iterations + 1),
                seed=seed, run_dir=run_dir, progress=False, callback=callback,
                overrides={"run": {"num_envs": num_envs, "rollout_steps": rollout_steps}})
    finally:
        raw.close()
    pairs = []
    for index, ((raw_start, raw_end, end), start) in enumerate(zip(marks, resumed, strict=True)):
        raw_own, raw_other = cores_between(raw_start, raw_end)
        train_own, train_other = cores_between(start, end)
        iterate = timer.calls["iterate"][index + 1]
        rollout = timer.calls["_host_rollout"][index + 1]
        train_seconds = end.wall - start.wall
        pairs.append({
            "iteration": index + 2,
            "raw_seconds": raw_end.wall - raw_start.wall, "train_seconds": train_seconds,
            "rollout_seconds": rollout, "update_seconds": iterate - rollout,
            "other_seconds": train_seconds - iterate,
            "raw_own_cores": raw_own, "raw_other_cores": raw_other,
            "train_own_cores": train_own, "train_other_cores": train_other,
        })
    result: dict[str, Any] = {"seed": seed, "batch": batch, "pairs": pairs,
                              "run_dir": str(run_dir), "epochs": run.config.ppo.epochs,
                              "minibatches": run.config.ppo.minibatches}
    if profiler is not None:
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(30)
        result["profile_tottime"] = stream.getvalue()
    return result


def figures(run: dict[str, Any], max_other_cores: float) -> dict[str, Any]:
    """Steps/s and shares of one run over its undisturbed pairs (all pairs if none is)."""
    limit = max_other_cores if max_other_cores >= 0 else float("inf")
    pairs = run["pairs"]
    quiet = [p for p in pairs
             if p["raw_other_cores"] <= limit and p["train_other_cores"] <= limit] or pairs
    steps = run["batch"] * len(quiet)
    raw = sum(p["raw_seconds"] for p in quiet)
    train = sum(p["train_seconds"] for p in quiet)
    rollout = sum(p["rollout_seconds"] for p in quiet)
    return {
        "pairs_used": len(quiet), "pairs_total": len(pairs),
        "raw_sps": steps / raw, "train_sps": steps / train, "ratio": raw / train,
        "rollout_sps": steps / rollout, "rollout_ratio": raw / rollout,
        "rollout_share": rollout / train,
        "update_share": sum(p["update_seconds"] for p in quiet) / train,
        "other_share": sum(p["other_seconds"] for p in quiet) / train,
        "pair_ratios": [p["raw_seconds"] / p["train_seconds"] for p in quiet],
        "train_own_cores": median([p["train_own_cores"] for p in quiet]),
        "other_cores_max": max(max(p["raw_other_cores"], p["train_other_cores"])
                               for p in quiet),
    }


def main(argv: list[str] | None = None) -> int:
    """Interleave raw stepping with training iterations, repeat, and report the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="SafetyBallCircle-v0")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--rollout-steps", type=int, default=1000)
    parser.add_argument("--timed-iterations", type=int, default=6,
                        help="iterations timed after the first (compiling) one, per run")
    parser.add_argument("--repeats", type=int, default=3, help="training runs (>= 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true",
                        help="also profile one extra training run with cProfile")
    parser.add_argument("--max-other-cores", type=float, default=0.3,
                        help="wait before each run until other processes use at "
                             "most this many cores, and leave out pairs during which they used "
                             "more; negative: neither")
    parser.add_argument("--quiet-timeout", type=float, default=1800.0,
                        help="longest wait (s) for other processes to quiet down before a "
                             "measurement; after it the measurement goes on (and is flagged)")
    parser.add_argument("--json", type=Path, default=None, help="output JSON path")
    args = parser.parse_args(argv)
    code = code_info()  # the saferl sources as imported now

    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        if args.max_other_cores >= 0:
            wait_for_quiet(args.max_other_cores, timeout=args.quiet_timeout)
        run = interleaved_run(args.env, args.num_envs, args.rollout_steps,
                              args.timed_iterations, args.seed + repeat)
        run["repeat"] = repeat
        run["figures"] = figures(run, args.max_other_cores)
        runs.append(run)
        f = run["figures"]
        print(f"run {repeat}: raw {f['raw_sps']:,.0f} sps, train {f['train_sps']:,.0f} sps, "
              f"ratio {f['ratio']:.3f} ({f['pairs_used']}/{f['pairs_total']} pairs used;"
              f" pair ratios {' '.join(f'{r:.2f}' for r in f['pair_ratios'])})", flush=True)

    profile = None
    if args.profile:
        if args.max_other_cores >= 0:
            wait_for_quiet(args.max_other_cores, timeout=args.quiet_timeout)
        profile = interleaved_run(args.env, args.num_envs, args.rollout_steps,
                                  args.timed_iterations, args.seed, profile=True)
        profile["figures"] = figures(profile, args.max_other_cores)
        print(profile["profile_tottime"])

    table = [run["figures"] for run in runs]
    rows = [[run["repeat"], f"{f['pairs_used']}/{f['pairs_total']}", f["raw_sps"],
             f["train_sps"], f["ratio"], f["rollout_sps"], f["rollout_ratio"],
             f["rollout_share"], f["update_share"], f["other_share"], f["train_own_cores"],
             f["other_cores_max"]] for run, f in zip(runs, table, strict=True)]
    keys = ["raw_sps", "train_sps", "ratio", "rollout_sps", "rollout_ratio", "rollout_share",
            "update_share", "other_share", "train_own_cores"]
    summary: dict[str, Any] = {f"{k}_median": median([f[k] for f in table]) for k in keys}
    summary["ratios"] = [f["ratio"] for f in table]
    summary["pair_ratio_median"] = median([r for f in table for r in f["pair_ratios"]])
    summary["other_cores_max"] = max(f["other_cores_max"] for f in table)
    summary["target_ratio"] = TARGET_RATIO
    summary["target_met"] = summary["ratio_median"] >= TARGET_RATIO
    rows.append(["median", "", *(summary[f"{k}_median"] for k in keys),
                 summary["other_cores_max"]])
    first = runs[0]
    print()
    print(f"ppo_lag on {args.env}: num_envs {args.num_envs}, rollout_steps "
          f"{args.rollout_steps} (batch {first['batch']}), {first['epochs']} epochs x "
          f"{first['minibatches']} minibatches; raw chunk of {args.rollout_steps} steps after "
          f"every iteration, {args.timed_iterations} timed iterations per run")
    print(format_table(["run", "pairs", "raw sps", "train sps", "train/raw", "rollout sps",
                        "rollout/raw", "rollout share", "update share", "other share",
                        "train cores", "others max"], rows))
    verdict = "MET" if summary["target_met"] else "NOT MET"
    print(f"\nmedian train/raw = {summary['ratio_median']:.3f} over runs "
          f"({summary['pair_ratio_median']:.3f} over all pairs); target >= {TARGET_RATIO}: "
          f"{verdict}")
    settings = {"env": args.env, "algo": "ppo_lag", "num_envs": args.num_envs,
                "rollout_steps": args.rollout_steps, "timed_iterations": args.timed_iterations,
                "repeats": args.repeats, "seed": args.seed,
                "max_other_cores": args.max_other_cores, "epochs": first["epochs"],
                "minibatches": first["minibatches"]}
    payload: dict[str, Any] = {"settings": settings, "summary": summary, "runs": runs}
    if profile is not None:
        payload["profile"] = profile
    path = write_json("bullet_overhead", payload, args.json, code)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
