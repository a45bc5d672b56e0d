"""A grid of cost limits in one process against one run per limit (wall time).

``saferl train ALGO --limits 20 40 60`` trains the three limits as three members of one
compiled program (vmapped, sharded over the cores as seeds are); the alternative is three
``saferl train ALGO --cost-limit L`` runs one after another. Each configuration is run as the
``saferl`` command in a fresh process (compilation, start-up and the end-of-run evaluation
included, as a user sees them), ``--repeats`` times, interleaved; the script reports the median
wall times, their ratio, and each member's final training return and cost beside the single
run's (same seed: the same numbers up to float reassociation).

Example::

    python benchmarks/limits_grid.py --algo ppo_lag --env saferl/BallCircle-v0 \\
        --limits 20 40 60 --steps 1000000 --repeats 3
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import code_info, write_json


def saferl_train(args: list[str], run_dir: Path) -> float:
    """Run ``saferl train ARGS --run-dir RUN_DIR`` in a fresh process; its wall time."""
    command = [str(Path(sys.executable).parent / "saferl"), "train", *args, "--run-dir",
               str(run_dir)]
    began = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "SAFERL_PROGRESS_INTERVAL": "1000"})
    return time.perf_counter() - began


def final_rows(run_dir: Path) -> dict[str, dict[str, float]]:
    """The last iteration's ``rollout/ep_return`` and ``rollout/ep_cost_0`` per member label."""
    with (run_dir / "progress.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    last = max(int(r["iteration"]) for r in rows)
    out = {}
    for r in rows:
        if int(r["iteration"]) == last:
            label = r["seed"] + (f"@{float(r['limit_0']):g}" if "limit_0" in r else "")
            out[label] = {"return": float(r["rollout/ep_return"] or "nan"),
                          "cost": float(r["rollout/ep_cost_0"] or "nan")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", default="ppo_lag")
    parser.add_argument("--env", default="saferl/BallCircle-v0")
    parser.add_argument("--limits", type=float, nargs="+", default=[20.0, 40.0, 60.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    code = code_info()
    common = [args.algo, "--env", args.env, "--steps", str(args.steps), "--seed",
              str(args.seed)]
    grid_times: list[float] = []
    single_times: list[float] = []
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for repeat in range(args.repeats):
            grid_dir = root / f"grid_{repeat}"
            grid_times.append(saferl_train(
                [*common, "--limits", *(f"{x:g}" for x in args.limits)], grid_dir))
            total = 0.0
            for limit in args.limits:
                single_dir = root / f"single_{repeat}_{limit:g}"
                total += saferl_train([*common, "--cost-limit", f"{limit:g}"], single_dir)
                if repeat == 0:
                    figures[f"single@{limit:g}"] = final_rows(single_dir)[str(args.seed)]
            single_times.append(total)
            if repeat == 0:
                figures["grid"] = final_rows(grid_dir)
            print(f"repeat {repeat}: grid {grid_times[-1]:.1f} s, three runs {total:.1f} s "
                  f"(ratio {grid_times[-1] / total:.2f})", flush=True)
    grid, single = statistics.median(grid_times), statistics.median(single_times)
    print(f"median: grid {grid:.1f} s vs {len(args.limits)} separate runs {single:.1f} s: "
          f"ratio {grid / single:.2f} (target <= 0.6)")
    for limit in args.limits:
        g = figures["grid"][f"{args.seed}@{limit:g}"]
        s = figures[f"single@{limit:g}"]
        print(f"  limit {limit:g}: grid member R {g['return']:.1f} C {g['cost']:.2f}; single run "
              f"R {s['return']:.1f} C {s['cost']:.2f}")
    write_json(f"limits_grid_{args.algo}_{args.steps}", {
        "settings": vars(args), "grid_wall_times": grid_times,
        "separate_wall_times": single_times, "median_ratio": grid / single,
        "final_training_figures": figures}, code_at_start=code)


if __name__ == "__main__":
    main()
