"""Issue 16's Bullet target: saferl's on-policy defaults against FSRL's PPO-Lag, side by side.

For every task and seed, runs FSRL's agents (``fsrl_on_policy.py`` in FSRL's own venv, given
by ``--fsrl-python``) and then ``saferl train ALGO --env TASK --seed S --steps N`` for each
saferl algorithm with its defaults (``native_off_policy.train``: a fresh process, as a user
runs it), one run after another, and evaluates every final policy over ``--episodes``
episodes, deterministic and stochastic.

Wall times are not measured alike, and the difference favours FSRL: saferl's is the whole
command (interpreter start, imports, compilation, checkpoints, its own evaluation), FSRL's
only its training loop (``fsrl_on_policy.py``). The targets: per task, each saferl
algorithm's deterministic return ≥ FSRL PPO-Lag's, its cost ≤ the limit, and its median wall
time ≤ 0.6 × FSRL's.

``--raw`` adds, for every task and seed, the floor under saferl's wall time: the same
number of steps of the host defaults' environment layout (``--raw-copies`` copies over
``--raw-workers`` worker processes, built with ``saferl.make``) stepped with uniform random
actions and nothing else, construction included (row ``raw``). Training can be no faster
than this, so ``raw`` wall / FSRL's wall bounds the reachable ratio from below.

Example::

    python benchmarks/bullet_on_policy.py --fsrl-python /work/fsrl-venv/bin/python \\
        --tasks SafetyBallCircle-v0 --seeds 0 1 2 --steps 200000
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from common import BENCH_DIR, code_info, format_table, machine_info, write_json
from native_off_policy import evaluate, train

SAFERL_ALGOS = ("ppo_lag", "trpo_lag", "cpo", "pcpo")


def fsrl_run(python: str, algo: str, task: str, seed: int, steps: int, episodes: int,
             out: Path) -> dict[str, Any]:
    """One FSRL run in its own venv; its JSON record."""
    subprocess.run([python, str(BENCH_DIR / "fsrl_on_policy.py"), "--algo", algo, "--task",
                    task, "--seed", str(seed), "--steps", str(steps), "--eval-episodes",
                    str(episodes), "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    record = json.loads(out.read_text())
    return {"library": "fsrl", "algo": algo, "task": task, "seed": seed,
            "wall_s": record["wall_s"], "steps": record["steps"],
            "deterministic": record["deterministic"], "stochastic": record["stochastic"]}


def raw_run(task: str, seed: int, steps: int, copies: int, workers: int) -> dict[str, Any]:
    """The wall time of stepping ``steps`` environment steps in all (as a run of ``steps`` per
    seed counts them) over ``copies`` copies in ``workers`` processes, random actions."""
    import time

    import numpy as np

    import saferl

    start = time.perf_counter()
    envs = saferl.make(task, num_envs=copies, seed=seed, workers=workers)
    try:
        rng = np.random.default_rng(seed)
        low, high = envs.spec.action_space.low, envs.spec.action_space.high
        envs.reset(seed=seed)
        for _ in range(-(-steps // copies)):
            envs.step(rng.uniform(low, high, size=(copies, len(low))).astype(np.float32))
    finally:
        envs.close()
    wall = time.perf_counter() - start
    return {"library": "raw", "algo": f"{copies} copies / {workers} workers", "task": task,
            "seed": seed, "wall_s": wall, "steps": -(-steps // copies) * copies}


def summarize(rows: list[dict[str, Any]], limit: float) -> list[list[Any]]:
    """Per library × algorithm × task: means over seeds, and the verdicts against FSRL."""
    table = []
    keys = list(dict.fromkeys((r["library"], r["algo"], r["task"]) for r in rows))
    for library, algo, task in keys:
        group = [r for r in rows if (r["library"], r["algo"], r["task"]) == (library, algo,
                                                                             task)]
        baseline = [r for r in rows if (r["library"], r["algo"], r["task"]) == ("fsrl",
                                                                                "ppo_lag", task)]

        def mean(mode: str, key: str, items: list[dict[str, Any]] = group) -> float:
            return statistics.mean(r[mode][key] for r in items)

        wall = statistics.median(r["wall_s"] for r in group)
        if library == "raw":  # stepping only: no policy to evaluate
            ratio = (wall / statistics.median(r["wall_s"] for r in baseline) if baseline
                     else float("nan"))
            table.append([library, algo, task, len(group), wall, "", "", "", "",
                          f"{ratio:.2f} × FSRL's wall: no training can be faster"])
            continue
        verdict = ""
        if library == "saferl" and baseline:
            ratio = wall / statistics.median(r["wall_s"] for r in baseline)
            met = (mean("deterministic", "return") >= mean("deterministic", "return", baseline)
                   and mean("deterministic", "cost") <= limit and ratio <= 0.6)
            verdict = f"{ratio:.2f} × FSRL's wall; {'met' if met else 'not met'}"
        table.append([library, algo, task, len(group), wall, mean("deterministic", "return"),
                      mean("deterministic", "cost"), mean("stochastic", "return"),
                      mean("stochastic", "cost"), verdict])
    return table


def main(argv: list[str] | None = None) -> int:
    """Run every task × seed, FSRL first, and print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fsrl-python", required=True,
                        help="the python of FSRL's venv (benchmarks/fsrl_requirements.txt)")
    parser.add_argument("--fsrl-algos", nargs="+", default=["ppo_lag"],
                        choices=["ppo_lag", "trpo_lag", "cpo"])
    parser.add_argument("--algos", nargs="+", default=list(SAFERL_ALGOS))
    parser.add_argument("--tasks", nargs="+",
                        default=["SafetyBallCircle-v0", "SafetyCarCircle-v0"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--cost-limit", type=float, default=10.0)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--raw", action="store_true",
                        help="also time random-action stepping of the same layout (the floor)")
    parser.add_argument("--raw-copies", type=int, default=20)
    parser.add_argument("--raw-workers", type=int, default=2)
    parser.add_argument("--out", default=None, help="output JSON path")
    args = parser.parse_args(argv)
    code = code_info()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bullet_on_policy_") as scratch:
        for task in args.tasks:
            for seed in args.seeds:
                for algo in args.fsrl_algos:
                    rows.append(fsrl_run(args.fsrl_python, algo, task, seed, args.steps,
                                         args.episodes,
                                         Path(scratch) / f"fsrl_{algo}_{task}_{seed}.json"))
                    print(json.dumps(rows[-1]), flush=True)
                if args.raw:
                    rows.append(raw_run(task, seed, args.steps, args.raw_copies,
                                        args.raw_workers))
                    print(json.dumps(rows[-1]), flush=True)
                for algo in args.algos:
                    run_dir = Path(scratch) / f"saferl_{algo}_{task}_{seed}"
                    wall = train(algo, task, seed, args.steps, args.cost_limit, {}, run_dir)
                    rows.append({"library": "saferl", "algo": algo, "task": task,
                                 "seed": seed, "wall_s": wall,
                                 **evaluate(run_dir, args.episodes, False, ())})
                    print(json.dumps(rows[-1]), flush=True)
    print(format_table(["library", "algo", "task", "seeds", "median wall s", "det. return",
                        "det. cost", "stoch. return", "stoch. cost", "against FSRL PPO-Lag"],
                       summarize(rows, args.cost_limit)))
    payload = {"settings": vars(args), "machine": machine_info(), "rows": rows}
    path = write_json("bullet_on_policy", payload, args.out, code)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
