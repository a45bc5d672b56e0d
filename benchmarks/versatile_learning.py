"""Versatile learning runs: one CCPO policy against one CVPO policy per threshold.

CCPO trains on Ẽ = {20, 40, 60} (range E = [10, 70]) with every seed vectorised in one process;
its deterministic policy is then evaluated at {10, 15, …, 70} (``--episodes`` per threshold and
seed) and the script reports Avg R, Avg CV, R-G and CV-G (mean ± std over seeds) beside the
paper's figures, writes the per-threshold table and ``versatile_<env>.png`` into
``benchmarks/results/``. With ``--cvpo`` it then trains CVPO at each behaviour threshold (20, 40,
60: the three single-threshold policies a versatile policy replaces) with the same seeds, budget
and settings, evaluates each at its own threshold, and reports the wall-time ratio (the point of
a versatile policy is that it costs less than one policy per threshold).

Settings: those of ``tests/algos/test_learning_versatile.py`` (γ = 0.95, the last 4 000 rows of
replay, 64×64 networks, K = 16, 3 M-step iterations, 5 dual iterations, update ratio 0.25,
2 000 warm-up steps); the CVPO runs share them.

Examples::

    python benchmarks/versatile_learning.py --env saferl/BallCircle-v0 --seeds 0 1 2 3 4 \\
        --steps 100000 --episodes 50 --cvpo
    python benchmarks/versatile_learning.py --env SafetyBallCircle-v0 --seeds 0 1 2 \\
        --steps 60000 --episodes 50
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from common import RESULTS_DIR, code_info, setup_jax, write_json

BEHAVIOUR = [20.0, 40.0, 60.0]
EVALUATION = [float(x) for x in range(10, 75, 5)]
RUN = {"warmup_steps": 2000, "hidden_sizes": [64, 64], "update_ratio": 0.25, "gamma": 0.95,
       "buffer_size": 4000}
CVPO = {"num_samples": 16, "mstep_iterations": 3, "dual_iterations": 5}
# Yao et al. 2023, Table 1 (CCPO): Avg R, Avg CV.
PAPER = {"BallCircle": (710.86, 20.47, 0.59, 0.31), "CarCircle": (406.06, None, 1.60, None)}


def train_ccpo(env: str, seeds: list[int], steps: int, root: Path) -> tuple[Any, float]:
    """Train CCPO; return the run and its wall time."""
    import saferl

    began = time.perf_counter()
    run = saferl.train("ccpo", env, cost_limit=40, steps=steps, seeds=seeds,
                       run_dir=root / "ccpo", progress=False,
                       overrides={"run": {**RUN, "eval_episodes": 0}, "cvpo": CVPO,
                                  "ccpo": {"behaviour_thresholds": BEHAVIOUR,
                                           "threshold_range": [10.0, 70.0]}})
    return run, time.perf_counter() - began


def train_cvpo(env: str, seeds: list[int], steps: int, limit: float, root: Path,
               episodes: int) -> dict[str, Any]:
    """One single-threshold CVPO run and its deterministic evaluation at its own limit."""
    import numpy as np

    import saferl

    began = time.perf_counter()
    run = saferl.train("cvpo", env, cost_limit=limit, steps=steps, seeds=seeds,
                       run_dir=root / f"cvpo_{limit:g}", progress=False,
                       overrides={"run": {**RUN, "eval_episodes": 0}, "cvpo": CVPO})
    wall = time.perf_counter() - began
    results = [saferl.evaluate(run.policy(i), episodes=episodes) for i in range(len(seeds))]
    returns = [float(r.returns.mean()) for r in results]
    costs = [float(r.costs[:, 0].mean()) for r in results]
    return {"limit": limit, "wall_time": wall, "return": [float(np.mean(returns)),
                                                         float(np.std(returns))],
            "cost": [float(np.mean(costs)), float(np.std(costs))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="saferl/BallCircle-v0")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--cvpo", action="store_true",
                        help="also train CVPO at 20, 40 and 60 and compare wall times")
    args = parser.parse_args()
    setup_jax()
    code = code_info()
    from saferl.runs import safe_name
    from saferl.versatile import evaluate_versatile

    stem = safe_name(args.env)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        run, wall = train_ccpo(args.env, args.seeds, args.steps, root)
        policies = [run.policy(i) for i in range(len(args.seeds))]
        began = time.perf_counter()
        result = evaluate_versatile(policies, EVALUATION, episodes=args.episodes)
        eval_wall = time.perf_counter() - began
        plot = result.plot(RESULTS_DIR / f"versatile_{stem}.png",
                           f"ccpo on {args.env}, {args.steps:,} steps")
        record: dict[str, Any] = {"env": args.env, "seeds": args.seeds, "steps": args.steps,
                                  "episodes": args.episodes, "settings": {"run": RUN,
                                                                          "cvpo": CVPO},
                                  "ccpo_wall_time": wall, "evaluation_wall_time": eval_wall,
                                  "versatile": result.record(), "plot": plot.name}
        summary = result.metrics().summary()
        print(f"ccpo on {args.env}: {len(args.seeds)} seeds × {args.steps:,} steps in "
              f"{wall:.0f} s; evaluation {len(EVALUATION)} thresholds × {args.episodes} "
              f"episodes in {eval_wall:.1f} s")
        for row in result.table():
            print(f"  ε {row['threshold_0']:4.0f}  R {row['return_mean']:7.1f} ± "
                  f"{row['return_std']:5.1f}  C {row['cost_0_mean']:6.1f} ± "
                  f"{row['cost_0_std']:5.1f}")
        print("  " + "; ".join(f"{k} {m:.2f} ± {s:.2f}" for k, (m, s) in summary.items()
                               if k in ("Avg R", "Avg CV", "R-G", "CV-G")))
        task = next((name for name in PAPER if name in args.env), None)
        if task is not None:
            record["paper"] = dict(zip(("R", "R_std", "CV", "CV_std"), PAPER[task],
                                       strict=True))
        if args.cvpo:
            runs = [train_cvpo(args.env, args.seeds, args.steps, limit, root, args.episodes)
                    for limit in BEHAVIOUR]
            total = sum(r["wall_time"] for r in runs)
            record["cvpo"] = runs
            record["ccpo_over_three_cvpo"] = wall / total
            for r in runs:
                print(f"  cvpo at {r['limit']:g}: {r['wall_time']:.0f} s, deterministic R "
                      f"{r['return'][0]:.1f} ± {r['return'][1]:.1f}, C {r['cost'][0]:.1f} ± "
                      f"{r['cost'][1]:.1f}")
            print(f"  wall time: ccpo {wall:.0f} s vs three cvpo runs {total:.0f} s "
                  f"(ratio {wall / total:.2f})")
    write_json(f"versatile_{stem}", record, code_at_start=code)


if __name__ == "__main__":
    main()
