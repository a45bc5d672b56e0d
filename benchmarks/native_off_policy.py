"""The off-policy family on native tasks as a user runs it: wall time and deployed quality.

For every algorithm × task × seed (× candidate settings), runs ``saferl train ALGO --env TASK
--seed S --steps N --quiet`` as a user does — a fresh process, so imports, compilation and
checkpoints are in the wall time (the command's persistent compilation cache is on, as it is
for a user: the first run of a configuration compiles cold, later ones find it warm; each row
says which) — then evaluates the final policy over ``--episodes`` episodes, deterministic and
stochastic (:func:`saferl.evaluation.evaluate_run`). ``ccpo`` is threshold-conditioned: its
rows are the deterministic policy at the evaluation thresholds ``--thresholds`` (Avg R, Avg CV,
docs/algorithms/ccpo.md) and at the run's cost limit.

A candidate is a named set of configuration overrides (``--candidate NAME=JSON``, any number);
``defaults`` (no overrides) is always available. Runs go one after another, never beside each
other; the machine should be otherwise quiet.

Example (the issue 16 target: ≤ 3 minutes for 200k steps, 3 seeds)::

    python benchmarks/native_off_policy.py --algos sac_lag cvpo ccpo \
        --envs saferl/BallCircle-v0 saferl/CarCircle-v0 --seeds 0 1 2 --steps 200000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import code_info, format_table, machine_info, median, write_json

EVAL_THRESHOLDS = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0)


def sections_for(algo: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The sections of ``overrides`` that ``algo``'s configuration has (a candidate may set
    ``cvpo.*`` for CVPO and CCPO and still apply to SAC-Lag)."""
    from saferl.algos.registry import get_algorithm

    names = {f.name for f in dataclasses.fields(get_algorithm(algo).config_class)}
    return {key: value for key, value in overrides.items() if key in names}


def train(algo: str, env: str, seed: int, steps: int, cost_limit: float,
          overrides: dict[str, Any], run_dir: Path) -> float:
    """Wall seconds of one ``saferl train`` command (a fresh process)."""
    command = [str(Path(sys.executable).parent / "saferl"), "train", algo, "--env", env,
               "--seed", str(seed), "--steps", str(steps), "--cost-limit", str(cost_limit),
               "--run-dir", str(run_dir), "--quiet"]
    if overrides:
        config = run_dir.parent / f"{run_dir.name}.json"
        config.write_text(json.dumps(overrides))
        command += ["--config", str(config)]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def evaluate(run_dir: Path, episodes: int, conditioned: bool,
             thresholds: tuple[float, ...]) -> dict[str, Any]:
    """Deterministic and stochastic return and cost of the run's deployed policy."""
    import saferl
    from saferl.evaluation import evaluate_run

    record = evaluate_run(run_dir, episodes=episodes)
    (figures,) = record["per_seed"].values()
    out: dict[str, Any] = {mode: {"return": figures[mode]["return_mean"],
                                  "cost": figures[mode]["cost_0_mean"]}
                           for mode in ("deterministic", "stochastic")}
    if conditioned:
        policy = saferl.load(run_dir)
        result = saferl.evaluate_versatile(policy, list(thresholds), episodes=episodes)
        metrics = result.metrics()
        out["versatile"] = {"avg_r": float(metrics.avg_return[0]),
                            "avg_cv": float(metrics.avg_violation[0]),
                            "thresholds": list(thresholds), "table": result.table()}
    return out


def main(argv: list[str] | None = None) -> int:
    """Run every combination and print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", nargs="+", default=["sac_lag", "cvpo", "ccpo"])
    parser.add_argument("--envs", nargs="+",
                        default=["saferl/BallCircle-v0", "saferl/CarCircle-v0"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--cost-limit", type=float, default=10.0)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(EVAL_THRESHOLDS))
    parser.add_argument("--candidate", action="append", default=[],
                        help="NAME=JSON configuration overrides (repeatable); default: the "
                             "algorithms' defaults")
    parser.add_argument("--out", default=None, help="output JSON path")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the run directories here (default: a scratch folder that "
                             "is removed)")
    args = parser.parse_args(argv)
    candidates = {"defaults": {}}
    if args.candidate:
        candidates = dict(item.split("=", 1) for item in args.candidate)
        candidates = {name: json.loads(text) for name, text in candidates.items()}
    code = code_info()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="native_off_policy_") as scratch:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            scratch = str(args.keep)
        for name, overrides in candidates.items():
            for algo in args.algos:
                for env in args.envs:
                    for index, seed in enumerate(args.seeds):
                        run_dir = Path(scratch) / f"{name}_{algo}_{env.split('/')[-1]}_{seed}"
                        wall = train(algo, env, seed, args.steps, args.cost_limit,
                                     sections_for(algo, overrides),
                                     run_dir)
                        row = {"candidate": name, "algo": algo, "env": env, "seed": seed,
                               "wall_s": wall, "compile_cache": "cold" if index == 0 else "warm",
                               **evaluate(run_dir, args.episodes, algo == "ccpo",
                                          tuple(args.thresholds))}
                        rows.append(row)
                        print(json.dumps({k: v for k, v in row.items() if k != "versatile"}),
                              flush=True)
    table = []
    for name in candidates:
        for algo in args.algos:
            for env in args.envs:
                group = [r for r in rows if (r["candidate"], r["algo"], r["env"]) ==
                         (name, algo, env)]

                def mean(key: str, mode: str, group: list[dict[str, Any]] = group) -> float:
                    return sum(r[mode][key] for r in group) / len(group)

                extra = ""
                if algo == "ccpo":
                    avg_r = sum(r["versatile"]["avg_r"] for r in group) / len(group)
                    avg_cv = sum(r["versatile"]["avg_cv"] for r in group) / len(group)
                    extra = f"Avg R {avg_r:.1f}, Avg CV {avg_cv:.2f}"
                table.append([name, algo, env, len(group), median([r["wall_s"] for r in group]),
                              max(r["wall_s"] for r in group),
                              mean("return", "deterministic"), mean("cost", "deterministic"),
                              mean("return", "stochastic"), mean("cost", "stochastic"), extra])
    print(format_table(["candidate", "algo", "env", "seeds", "median wall s", "max wall s",
                        "det. return", "det. cost", "stoch. return", "stoch. cost",
                        "conditioned"], table))
    payload = {"settings": vars(args) | {"candidates": candidates,
                                         "keep": str(args.keep) if args.keep else None},
               "machine": machine_info(), "rows": rows}
    path = write_json("native_off_policy", payload, args.out, code)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
