"""Trust-region family on Bullet-Safety-Gym: TRPO, TRPO-Lag, CPO, PCPO and PPO-Lag side by side.

Same task, budget and seeds for every algorithm (cost limit 10 per episode). For each algorithm
it records the final return and episode cost (mean of the last iterations, mean ± std over
seeds), the **cost rate over training** (all cost / all steps) and the episode cost against
steps, drawn with the limit, to show whether CPO tracks the limit during training as the paper
claims. ``--predictor`` adds CPO with the learned safety predictor (CPO paper §6.3).

Example::

    python benchmarks/trust_region_bullet.py --env SafetyBallCircle-v0 --steps 300000
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from common import OUT_DIR, RESULTS_DIR, format_table, setup_jax, write_json

ALGORITHMS = ("trpo", "trpo_lag", "cpo", "pcpo", "ppo_lag")


def _mean_std(values: list[float]) -> tuple[float, float]:
    import numpy as np

    finite = [v for v in values if math.isfinite(v)]
    return (float(np.mean(finite)), float(np.std(finite))) if finite else (math.nan, math.nan)


def run_one(algo: str, env: str, steps: int, seeds: list[int], limit: float, num_envs: int,
            rollout_steps: int, predictor: bool, alpha: float = 1.0) -> dict[str, Any]:
    """Train ``algo`` on every seed (vectorised in one process) and collect its figures.

    Runs in a fresh process per algorithm (see :func:`main`), so that no run inherits the
    memory of an earlier one's Bullet clients (about 85 MB per SafetyCarCircle-v0 copy).
    """
    setup_jax()
    import saferl

    name = run_name(algo, predictor, alpha)
    overrides: dict[str, Any] = {"run": {"num_envs": num_envs, "rollout_steps": rollout_steps}}
    if predictor:
        overrides["run"]["safety_predictor"] = True
        overrides["run"]["predictor_alpha"] = alpha
    run_dir = run_directory(env, name)
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    saferl.train(algo, env, cost_limit=limit, steps=steps, seeds=seeds, run_dir=run_dir,
                 progress=False, overrides=overrides)
    return figures(name, run_dir, seeds)


def run_name(algo: str, predictor: bool, alpha: float) -> str:
    """``cpo``, ``cpo+predictor`` (α = 1, the default) or ``cpo+predictor(α=0.3)``."""
    if not predictor:
        return algo
    return f"{algo}+predictor" if alpha == 1.0 else f"{algo}+predictor(α={alpha:g})"


def run_directory(env: str, name: str) -> Path:
    """Where a run of this script lives (under ``benchmarks/out``)."""
    for old, new in (("+", "_"), ("(α=", "_alpha"), (")", "")):
        name = name.replace(old, new)
    return OUT_DIR / f"trust_region_{env}_{name}"


def figures(name: str, run_dir: Path, seeds: list[int]) -> dict[str, Any]:
    """The figures of a finished run, from its directory: :func:`saferl.training.summarize`
    (mean of the last 5 iterations with finished episodes per seed, cost rate at the end), then
    mean ± std over seeds, and the curves."""
    from saferl.runs import RunDirectory
    from saferl.training import spec_from_record, summarize

    run = RunDirectory(run_dir)
    record, history = run.read_config(), run.read_progress()
    summary = summarize(history, tuple(seeds), spec_from_record(record),
                        tuple(record["config"]["run"]["cost_limit"]))
    per_seed = summary["per_seed"]
    curves = {seed: [(r["env_steps"], r["rollout/ep_cost_0"], r["rollout/ep_return"])
                     for r in history if int(r["seed"]) == seed] for seed in seeds}
    return {
        "name": name,
        "return": _mean_std([f["rollout/ep_return"] for f in per_seed.values()]),
        "cost": _mean_std([f["rollout/ep_cost_0"] for f in per_seed.values()]),
        "cost_rate": _mean_std([f["train/cost_rate_0"] for f in per_seed.values()]),
        "wall_time": history[-1]["wall_time"],
        "curves": curves,
        "run_dir": str(run_dir),
    }


def plot(results: list[dict[str, Any]], env: str, limit: float, path: Path) -> None:
    """Episode cost and return against steps (mean over seeds), the limit drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for index, result in enumerate(results):
        seeds = list(result["curves"].values())
        length = min(len(c) for c in seeds)
        steps = np.array([c[0] for c in seeds[0][:length]])
        cost = np.nanmean([[c[1] for c in s[:length]] for s in seeds], axis=0)
        ret = np.nanmean([[c[2] for c in s[:length]] for s in seeds], axis=0)
        axes[0].plot(steps, cost, label=result["name"], color=f"C{index}")
        axes[1].plot(steps, ret, label=result["name"], color=f"C{index}")
    axes[0].axhline(limit, color="k", linestyle="--", linewidth=1, label=f"limit {limit:g}")
    axes[0].set_title(f"{env}: episode cost (mean over seeds)")
    axes[1].set_title(f"{env}: episode return")
    for ax in axes:
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run every algorithm on one Bullet task and write a table, a JSON and a plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="SafetyBallCircle-v0")
    parser.add_argument("--steps", type=int, default=300_000, help="env steps per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cost-limit", type=float, default=10.0)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--rollout-steps", type=int, default=1000)
    parser.add_argument("--algos", nargs="*", default=list(ALGORITHMS),
                        help="algorithms to run (none: only CPO + predictor, with --predictor)")
    parser.add_argument("--predictor", action="store_true",
                        help="also run CPO with the learned safety predictor")
    parser.add_argument("--predictor-alpha", type=float, default=1.0,
                        help="the predictor's weight α (saferl train's default recipe: 0.3)")
    parser.add_argument("--tag", default="",
                        help="suffix of the result files (keeps earlier results)")
    parser.add_argument("--from-runs", action="store_true",
                        help="train nothing: summarise the runs of an earlier invocation that "
                             "finished (their directories under benchmarks/out)")
    args = parser.parse_args(argv)
    runs = [(algo, False) for algo in args.algos] + ([("cpo", True)] if args.predictor else [])
    results = []
    context = multiprocessing.get_context("spawn")
    for algo, predictor in runs:
        if args.from_runs:
            name = run_name(algo, predictor, args.predictor_alpha if predictor else 1.0)
            run_dir = run_directory(args.env, name)
            done = (run_dir / "checkpoints").is_dir() and (run_dir / "curves.png").is_file()
            if done:
                results.append(figures(name, run_dir, args.seeds))
            print(f"{name}: {'finished run found' if done else 'no finished run, left out'}")
            continue
        print(f"training {algo}{' + predictor' if predictor else ''} on {args.env} ...",
              flush=True)
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            results.append(pool.submit(run_one, algo, args.env, args.steps, args.seeds,
                                       args.cost_limit, args.num_envs, args.rollout_steps,
                                       predictor, args.predictor_alpha).result())
    rows = [[r["name"], f"{r['return'][0]:.1f} ± {r['return'][1]:.1f}",
             f"{r['cost'][0]:.2f} ± {r['cost'][1]:.2f}",
             f"{r['cost_rate'][0]:.4f} ± {r['cost_rate'][1]:.4f}", f"{r['wall_time']:.0f}"]
            for r in results]
    print(format_table(["algorithm", "return", f"episode cost (≤ {args.cost_limit:g})",
                        "cost rate", "wall s"], rows))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = f"trust_region_{args.env}{'_' + args.tag if args.tag else ''}"
    plot(results, args.env, args.cost_limit, RESULTS_DIR / f"{stem}.png")
    write_json(stem, {"settings": vars(args),
                      "results": [{k: v for k, v in r.items() if k != "curves"} | {
                          "curves": {str(s): c for s, c in r["curves"].items()}}
                          for r in results]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
