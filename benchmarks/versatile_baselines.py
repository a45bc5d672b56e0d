"""CCPO against the four versatile baselines of Yao et al. 2023 on one task (docs: ccpo.md).

Every algorithm trains on the behaviour thresholds Ẽ = {20, 40, 60} (range E = [10, 70]) with
the same seeds, vectorised in one process: CCPO, V-SAC-Lag and V-DDPG-Lag as one conditioned
policy per seed; C-PPO-Lag and C-TRPO-Lag as one policy per (seed, behaviour threshold), the
limits grid, deployed as their linear combination. Each deployed deterministic policy is then
evaluated at {10, 15, …, 70} (``--episodes`` per threshold and seed, the same episodes for every
algorithm) and the script prints Avg R, Avg CV, R-G and CV-G (mean ± std over seeds) and the
wall time of each training run, and writes ``results/versatile_baselines_<env>.json`` and a plot
of cost and return against the threshold per algorithm.

Settings. Off-policy (CCPO, V-SAC-Lag, V-DDPG-Lag): ``--steps`` per seed with the small-budget
settings of ``tests/algos/test_learning_versatile.py`` (64×64 networks, update ratio 0.25,
2 000 warm-up steps; CCPO with CVPO's K = 16, 3 M-step and 5 dual iterations, γ 0.95 and the
last 4 000 rows of replay; the V-* baselines with multiplier step 0.1). On-policy (C-PPO-Lag,
C-TRPO-Lag): their native-task defaults (64 copies × 200 steps) for ``--on-policy-steps`` per
member: on native tasks stepping is free and on-policy methods need more samples, so each family
gets a budget of its own; the wall times say what each costs.

Example::

    python benchmarks/versatile_baselines.py --env saferl/BallCircle-v0 --seeds 0 1 2 \\
        --steps 100000 --on-policy-steps 2000000 --episodes 50
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from common import RESULTS_DIR, code_info, setup_jax, write_json

BEHAVIOUR = [20.0, 40.0, 60.0]
RANGE = [10.0, 70.0]
EVALUATION = [float(x) for x in range(10, 75, 5)]
OFF_POLICY_RUN = {"warmup_steps": 2000, "hidden_sizes": [64, 64], "update_ratio": 0.25,
                  "eval_episodes": 0}
SETTINGS: dict[str, dict[str, Any]] = {
    "ccpo": {"run": {**OFF_POLICY_RUN, "gamma": 0.95, "buffer_size": 4000},
             "cvpo": {"num_samples": 16, "mstep_iterations": 3, "dual_iterations": 5},
             "ccpo": {"behaviour_thresholds": BEHAVIOUR, "threshold_range": RANGE}},
    "vsac_lag": {"run": OFF_POLICY_RUN, "lagrange": {"lr": 0.1},
                 "versatile": {"behaviour_thresholds": BEHAVIOUR, "threshold_range": RANGE}},
    "vddpg_lag": {"run": OFF_POLICY_RUN, "lagrange": {"lr": 0.1},
                  "versatile": {"behaviour_thresholds": BEHAVIOUR, "threshold_range": RANGE}},
    "cppo_lag": {"run": {"eval_episodes": 0},
                 "versatile": {"behaviour_thresholds": BEHAVIOUR, "threshold_range": RANGE}},
    "ctrpo_lag": {"run": {"eval_episodes": 0},
                  "versatile": {"behaviour_thresholds": BEHAVIOUR, "threshold_range": RANGE}},
}
ON_POLICY = ("cppo_lag", "ctrpo_lag")
# Yao et al. 2023, Table 1, Ball-Circle: Avg R and Avg CV per method (Bullet, the paper's budget).
PAPER = {"ccpo": (710.86, 0.59), "vsac_lag": (774.16, 5.32), "cppo_lag": (637.85, 3.11),
         "ctrpo_lag": (699.38, 4.50)}


def run_one(algo: str, env: str, seeds: list[int], steps: int, episodes: int,
            root: Path) -> dict[str, Any]:
    """Train one algorithm, evaluate its deployed policies at every threshold."""
    import saferl
    from saferl.versatile import evaluate_versatile

    began = time.perf_counter()
    run = saferl.train(algo, env, cost_limit=40, steps=steps, seeds=seeds,
                       run_dir=root / algo, progress=False, overrides=SETTINGS[algo])
    wall = time.perf_counter() - began
    policies = [run.policy(i) for i in range(len(seeds))]
    result = evaluate_versatile(policies, EVALUATION, episodes=episodes)
    summary = result.metrics().summary()
    return {"algo": algo, "steps": steps, "wall_time": wall, "versatile": result.record(),
            "metrics": {k: summary[k] for k in ("Avg R", "Avg CV", "R-G", "CV-G")},
            "result": result}


def plot(records: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Cost (with cost = threshold) and return against the threshold, one line per algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (cost_ax, return_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for k, record in enumerate(records):
        rows = record["result"].table()
        eps = np.array([r["threshold_0"] for r in rows])
        for ax, key in ((cost_ax, "cost_0"), (return_ax, "return")):
            mean = np.array([r[f"{key}_mean"] for r in rows])
            std = np.array([r[f"{key}_std"] for r in rows])
            ax.plot(eps, mean, color=f"C{k}", label=record["algo"])
            ax.fill_between(eps, mean - std, mean + std, color=f"C{k}", alpha=0.15)
    cost_ax.plot(EVALUATION, EVALUATION, "k--", linewidth=1, label="cost = threshold")
    for ax, label in ((cost_ax, "episode cost"), (return_ax, "episode return")):
        for eps in BEHAVIOUR:
            ax.axvline(eps, color="0.8", linewidth=0.8, zorder=0)
        ax.set_xlabel("threshold ε (grey: behaviour thresholds)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    cost_ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="saferl/BallCircle-v0")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100_000, help="off-policy, per seed")
    parser.add_argument("--on-policy-steps", type=int, default=2_000_000,
                        help="C-PPO-Lag and C-TRPO-Lag, per member")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--algos", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    setup_jax()
    code = code_info()
    from saferl.runs import safe_name

    records = []
    with tempfile.TemporaryDirectory() as folder:
        for algo in args.algos:
            steps = args.on_policy_steps if algo in ON_POLICY else args.steps
            record = run_one(algo, args.env, args.seeds, steps, args.episodes, Path(folder))
            records.append(record)
            m = record["metrics"]
            print(f"{algo:10s} {steps:>9,} steps  {record['wall_time']:6.0f} s  "
                  + "  ".join(f"{k} {v[0]:7.2f} ± {v[1]:6.2f}" for k, v in m.items()),
                  flush=True)
    stem = safe_name(args.env)
    figure = plot(records, RESULTS_DIR / f"versatile_baselines_{stem}.png",
                  f"{args.env}: seeds {args.seeds}, Ẽ = {BEHAVIOUR}")
    write_json(f"versatile_baselines_{stem}", {
        "settings": {**vars(args), "per_algorithm": SETTINGS}, "paper_ball_circle": PAPER,
        "plot": figure.name,
        "runs": [{k: v for k, v in r.items() if k != "result"} for r in records]},
        code_at_start=code)


if __name__ == "__main__":
    main()
