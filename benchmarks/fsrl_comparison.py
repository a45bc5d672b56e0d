"""saferl vs FSRL (the CVPO authors' PyTorch library): CVPO and SAC-Lag, same task and settings.

For each algorithm and seed it runs FSRL (``benchmarks/fsrl_baseline.py`` in its own venv,
``--fsrl-python``) and saferl (a fresh process), one after the other so that both see the same
machine, with FSRL's own settings for SafetyBallCircle-v0 matched field by field:

==================  ==============================  ==============================
setting             CVPO                            SAC-Lag
==================  ==============================  ==============================
networks            128×128, one reward Q, one      128×128, twin reward Q, cost Q
                    cost Q
batch, γ, τ, n      256, 0.97, 0.05, 2              256, 0.97, 0.05, 2
lr actor / critic   5e-4 / 1e-3                     5e-4 / 1e-3
collection          10 envs × one 200-step episode  2 envs × one episode
updates             0.2 per env step (400 per       0.2 per env step (80 per
                    collect)                        collect)
algorithm           K = 16, E-step KL 0.02, λ ≤ 20, PID λ (0.05, 0.0005, 0.1), auto α
                    M-step KL 0.005 / 0.0005,       from 0.005
                    1 M-step iteration
warm-up             none (FSRL has none)            none
==================  ==============================  ==============================

Wall time: FSRL's ``wall_s`` (training loop incl. buffer set-up; imports and env creation
excluded) against saferl's ``saferl.train`` call (env creation and JIT compilation
*included*). Quality: the mean return / cost of the last training episodes and of 10
deterministic evaluation episodes. saferl uses both cores; FSRL runs its torch updates on
``--fsrl-threads`` threads (default 1, the setting of its measured runs; its 10 environment
workers are separate processes on the other core).

Example::

    python benchmarks/fsrl_comparison.py --steps 40000 --seeds 0 1 2 \
        --fsrl-python /work/fsrl-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import BENCH_DIR, RESULTS_DIR, format_table, median, write_json

SETTINGS: dict[str, dict[str, Any]] = {
    "cvpo": {
        "saferl": {"run": {"num_envs": 10, "rollout_steps": 200, "update_ratio": 0.2,
                           "batch_size": 256, "hidden_sizes": [128, 128], "gamma": 0.97,
                           "tau": 0.05, "n_step": 2, "actor_lr": 5e-4, "critic_lr": 1e-3,
                           "warmup_steps": 0, "buffer_size": 200_000},
                   "cvpo": {"num_samples": 16, "estep_kl": 0.02, "max_multiplier": 20.0,
                            "kl_mean": 0.005, "kl_std": 0.0005, "mstep_iterations": 1,
                            "twin_critics": False}},
        "fsrl": ["--hidden", "128", "128", "--batch-size", "256", "--update-per-step", "0.2",
                 "--episode-per-collect", "10", "--training-num", "10", "--gamma", "0.97",
                 "--tau", "0.05", "--n-step", "2", "--sample-act-num", "16"],
    },
    "sac_lag": {
        "saferl": {"run": {"num_envs": 2, "rollout_steps": 200, "update_ratio": 0.2,
                           "batch_size": 256, "hidden_sizes": [128, 128], "gamma": 0.97,
                           "tau": 0.05, "n_step": 2, "actor_lr": 5e-4, "critic_lr": 1e-3,
                           "warmup_steps": 0, "buffer_size": 100_000},
                   "sac": {"init_alpha": 0.005},
                   "lagrange": {"method": "pid", "kp": 0.05, "ki": 0.0005, "kd": 0.1}},
        "fsrl": ["--hidden", "128", "128", "--batch-size", "256", "--update-per-step", "0.2",
                 "--episode-per-collect", "2", "--training-num", "2", "--gamma", "0.97",
                 "--tau", "0.05", "--n-step", "2"],
    },
}


def run_saferl(algo: str, env: str, steps: int, seed: int, limit: float,
               env_workers: int = 1, cache: str | None = None,
               overlap: bool = False) -> dict[str, Any]:
    """Train and evaluate one saferl run in this (fresh) process (``cache``: a persistent
    compilation cache directory, as the ``saferl`` command uses by default; ``overlap``:
    ``run.overlap_collection``)."""
    from common import setup_jax

    setup_jax()
    import saferl

    if cache:
        saferl.enable_compilation_cache(cache)

    run_dir = Path(tempfile.mkdtemp(prefix=f"saferl_{algo}_"))
    overrides = json.loads(json.dumps(SETTINGS[algo]["saferl"]))
    overrides["run"].update({"checkpoint_every": 10_000, "env_workers": env_workers,
                             "overlap_collection": overlap})
    start = time.perf_counter()
    result = saferl.train(algo, env, cost_limit=limit, steps=steps, seed=seed,
                          run_dir=run_dir / "run", overrides=overrides, progress=False)
    wall = time.perf_counter() - start
    figures = result.summary["per_seed"][seed]
    curves = run_dir / "run" / "curves.png"
    if curves.exists():  # the learning curves of this run, kept with the results
        shutil.copy(curves, RESULTS_DIR / f"curves_{algo}_{env}_seed{seed}.png")
    evaluation = saferl.evaluate(result.policy(), episodes=10, num_envs=1).summary()
    return {"library": "saferl", "algo": algo, "seed": seed, "steps": steps, "wall_s": wall,
            "env_workers": env_workers, "overlap_collection": overlap,
            "train_final_return": figures["rollout/ep_return"],
            "train_final_cost": figures["rollout/ep_cost_0"],
            "eval_return": evaluation["return_mean"], "eval_cost": evaluation["cost_0_mean"]}


def run_fsrl(python: str, algo: str, env: str, steps: int, seed: int, limit: float,
             threads: int) -> dict[str, Any]:
    """Run FSRL's baseline script in its own venv and read its JSON."""
    out = Path(tempfile.mkdtemp(prefix="fsrl_")) / "out.json"
    command = [python, str(BENCH_DIR / "fsrl_baseline.py"), "--algo", algo, "--task", env,
               "--steps", str(steps), "--seed", str(seed), "--cost-limit", str(limit),
               "--threads", str(threads), "--out", str(out), *SETTINGS[algo]["fsrl"]]
    subprocess.run(command, check=True)
    data = json.loads(out.read_text())
    data["library"] = "fsrl"
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", nargs="+", default=["cvpo", "sac_lag"],
                        choices=sorted(SETTINGS))
    parser.add_argument("--env", default="SafetyBallCircle-v0")
    parser.add_argument("--steps", type=int, default=40_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cost-limit", type=float, default=10.0)
    parser.add_argument("--fsrl-python", default="/work/fsrl-venv/bin/python")
    parser.add_argument("--fsrl-threads", type=int, default=1,
                        help="torch threads of FSRL (its env workers run in other processes)")
    parser.add_argument("--env-workers", type=int, default=1,
                        help="saferl's env worker processes (FSRL always uses one per env)")
    parser.add_argument("--reuse-fsrl", type=Path, default=None,
                        help="take FSRL's runs from an earlier output JSON (same steps and "
                             "seeds) instead of running FSRL again; the ratios then compare "
                             "runs made at different times")
    parser.add_argument("--compilation-cache", default=None, metavar="DIR",
                        help="saferl runs use this persistent compilation cache, warmed by an "
                             "untimed 2-iteration run first (the saferl command's default "
                             "behaviour from its second run on); default: no cache, every run "
                             "compiles")
    parser.add_argument("--overlap-collection", action="store_true",
                        help="saferl collects the next iteration while the current one's "
                             "updates run (run.overlap_collection: one-iteration policy lag; "
                             "same env steps, batches and update ratio)")
    parser.add_argument("--one", nargs=2, metavar=("ALGO", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    if args.one:  # child process: one saferl run, JSON on the last stdout line
        algo, seed = args.one[0], int(args.one[1])
        print(json.dumps(run_saferl(algo, args.env, args.steps, seed, args.cost_limit,
                                    args.env_workers, args.compilation_cache,
                                    args.overlap_collection)))
        return

    def child_command(algo: str, seed: int, steps: int) -> list[str]:
        command = [sys.executable, __file__, "--one", algo, str(seed), "--env", args.env,
                   "--steps", str(steps), "--cost-limit", str(args.cost_limit),
                   "--env-workers", str(args.env_workers)]
        if args.compilation_cache:
            command += ["--compilation-cache", args.compilation_cache]
        if args.overlap_collection:
            command.append("--overlap-collection")
        return command

    if args.compilation_cache:
        for algo in args.algos:  # untimed: fills the cache with this configuration's programs
            run = SETTINGS[algo]["saferl"]["run"]
            subprocess.run(child_command(algo, args.seeds[0],
                                         2 * run["num_envs"] * run["rollout_steps"]),
                           check=True, capture_output=True, text=True)

    runs: list[dict[str, Any]] = []
    earlier = json.loads(args.reuse_fsrl.read_text())["runs"] if args.reuse_fsrl else None
    for algo in args.algos:
        for seed in args.seeds:
            if earlier is not None:
                fsrl = next(r for r in earlier if r["library"] == "fsrl" and r["algo"] == algo
                            and r["seed"] == seed
                            and abs(r["steps"] - args.steps) <= args.steps // 20)
            else:
                fsrl = run_fsrl(args.fsrl_python, algo, args.env, args.steps, seed,
                                args.cost_limit, args.fsrl_threads)
            child = subprocess.run(child_command(algo, seed, fsrl["steps"]), check=True,
                                   capture_output=True, text=True)
            ours = json.loads(child.stdout.strip().splitlines()[-1])
            runs += [fsrl, ours]
            print(f"{algo} seed {seed}: FSRL {fsrl['wall_s']:.0f} s, saferl "
                  f"{ours['wall_s']:.0f} s (ratio {ours['wall_s'] / fsrl['wall_s']:.3f})",
                  flush=True)

    rows, summary = [], {}
    for algo in args.algos:
        def pick(library: str, key: str, algo: str = algo) -> list[float]:
            return [r[key] for r in runs if r["algo"] == algo and r["library"] == library]

        ratios = [s / f for s, f in zip(pick("saferl", "wall_s"), pick("fsrl", "wall_s"),
                                        strict=True)]
        entry = {"median_time_ratio": median(ratios), "ratios": ratios}
        for library in ("fsrl", "saferl"):
            for key in ("wall_s", "train_final_return", "train_final_cost", "eval_return",
                        "eval_cost"):
                values = [v for v in pick(library, key) if math.isfinite(v)]
                entry[f"{library}_{key}_mean"] = sum(values) / len(values) if values else math.nan
            rows.append([algo, library, f"{median(pick(library, 'wall_s')):.0f}",
                         f"{entry[f'{library}_train_final_return_mean']:.1f}",
                         f"{entry[f'{library}_train_final_cost_mean']:.1f}",
                         f"{entry[f'{library}_eval_return_mean']:.1f}",
                         f"{entry[f'{library}_eval_cost_mean']:.1f}"])
        summary[algo] = entry
    print(format_table(["algo", "library", "median wall s", "train return", "train cost",
                        "eval return", "eval cost"], rows))
    for algo, entry in summary.items():
        print(f"{algo}: saferl / FSRL wall time, median over seeds = "
              f"{entry['median_time_ratio']:.3f}")
    write_json("fsrl_comparison", {"env": args.env, "steps": args.steps, "seeds": args.seeds,
                                   "fsrl_threads": args.fsrl_threads,
                                   "saferl_env_workers": args.env_workers,
                                   "saferl_compilation_cache": (
                                       "warm" if args.compilation_cache else "off"),
                                   "saferl_overlap_collection": args.overlap_collection,
                                   "fsrl_reused_from": str(args.reuse_fsrl or ""),
                                   "settings": SETTINGS,
                                   "runs": runs, "summary": summary},
               args.out or RESULTS_DIR / "fsrl_comparison.json")


if __name__ == "__main__":
    main()
