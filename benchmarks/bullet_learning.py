"""A learning run of one algorithm on a Bullet task (default: ``ppo_lag``, ``SafetyBallCircle-v0``).

Trains ``--steps`` env steps per seed (default 500k) with host-simulator-friendly settings
(``--num-envs 8 --rollout-steps 1000``: for ``ppo_lag`` a batch of 8000 and the default PPO
settings, 5 epochs, 4 minibatches; ``--algo``/``--env`` pick another algorithm or task and
``--overrides`` adds any configuration as JSON), then records per seed:

* the final episode return and cost: the mean over the last ``--last`` iterations with finished
  episodes (``TrainResult.summary``, i.e. what ``saferl train`` prints);
* a deterministic ``saferl.evaluate`` of the final policy over ``--eval-episodes`` episodes;
* the training cost rate (all cost / all steps), the final multiplier, the wall time, and the
  learning curves (return and cost per iteration; ``curves.png`` is copied to
  ``benchmarks/results/<algo>_<env>.png``).

Run: ``python benchmarks/bullet_learning.py`` (several minutes; ``--help`` for the options), e.g.
``python benchmarks/bullet_learning.py --algo cvpo --env SafetyCarCircle-v0 --steps 200000
--num-envs 10 --rollout-steps 200 --overrides '{"run": {"env_workers": 2}}'``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from common import (
    RESULTS_DIR,
    IterationClock,
    code_info,
    format_table,
    fresh_run_dir,
    setup_jax,
    write_json,
)

jax = setup_jax()

import saferl  # noqa: E402
from saferl.config import config_to_dict  # noqa: E402
from saferl.training import restore_states, summarize  # noqa: E402


def curves(history: list[dict[str, float]], seed: int) -> dict[str, list[float]]:
    """Steps, wall time, return, cost and multiplier of every iteration of one seed."""
    rows = [r for r in history if int(r["seed"]) == seed]
    names = {"env_steps": "env_steps", "wall_time": "wall_time",
             "ep_return": "rollout/ep_return", "ep_cost": "rollout/ep_cost_0",
             "cost_rate": "train/cost_rate_0", "lambda": "lagrange/lambda_0"}
    return {key: [r.get(column, math.nan) for r in rows] for key, column in names.items()}


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate, and write the figures, curves and plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", default="ppo_lag")
    parser.add_argument("--env", default="SafetyBallCircle-v0")
    parser.add_argument("--overrides", type=json.loads, default={},
                        help="extra configuration as JSON, e.g. '{\"run\": {\"env_workers\": 2}}'")
    parser.add_argument("--steps", type=int, default=500_000, help="env steps per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--cost-limit", type=float, default=10.0)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--rollout-steps", type=int, default=1000)
    parser.add_argument("--last", type=int, default=5,
                        help="final figures: mean over this many last iterations")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None, help="output JSON path")
    parser.add_argument("--plot", type=Path, default=None,
                        help="where to copy the run's curves.png (default "
                             "results/<algo>_<env>.png)")
    args = parser.parse_args(argv)
    code = code_info()  # the saferl sources as imported now
    env_name = args.env.removeprefix("Safety").removesuffix("-v0")
    args.plot = args.plot or RESULTS_DIR / f"{args.algo}_Safety{env_name}.png"
    run_dir = fresh_run_dir(f"learning_{args.algo}_Safety{env_name}")
    clock = IterationClock()
    batch = args.num_envs * args.rollout_steps
    total_iterations = math.ceil(args.steps / batch)

    def callback(iteration: int, metrics: dict[str, Any]) -> None:
        clock(iteration, metrics)
        if iteration % 5 == 0 or iteration == total_iterations:
            parts = [f"iter {iteration}/{total_iterations}", f"{iteration * batch:,} steps"]
            for name, label in (("rollout/ep_return", "return"), ("rollout/ep_cost_0", "cost"),
                                ("lagrange/lambda_0", "lambda")):
                if name not in metrics:
                    continue
                values = " ".join(f"{v:.2f}" for v in metrics[name])
                parts.append(f"{label} {values}")
            print(", ".join(parts), flush=True)

    start = time.perf_counter()
    overrides = json.loads(json.dumps(args.overrides))
    overrides.setdefault("run", {}).update({"num_envs": args.num_envs,
                                            "rollout_steps": args.rollout_steps})
    run = saferl.train(args.algo, args.env, cost_limit=args.cost_limit, steps=args.steps,
                       seeds=args.seeds, run_dir=run_dir, progress=False, callback=callback,
                       overrides=overrides)
    wall = time.perf_counter() - start
    spec = restore_states(run.run_dir)[3]
    summary = summarize(run.history, tuple(args.seeds), spec, (args.cost_limit,),
                        last=args.last)

    per_seed: list[dict[str, Any]] = []
    for index, seed in enumerate(args.seeds):
        evaluation = saferl.evaluate(run.policy(seed_index=index),
                                     episodes=args.eval_episodes, deterministic=True)
        figures = summary["per_seed"][seed]
        seed_curves = curves(run.history, seed)
        per_seed.append({
            "seed": seed,
            "final_return": figures["rollout/ep_return"],
            "final_cost": figures["rollout/ep_cost_0"],
            "train_cost_rate": figures["train/cost_rate_0"],
            "final_lambda": seed_curves["lambda"][-1],
            "eval": evaluation.summary(),
            "curves": seed_curves,
        })

    args.plot.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run.run_dir / "curves.png", args.plot)
    env_steps = run.history[-1]["env_steps"]
    timing = {
        "wall_seconds_total": wall,  # environment construction, compilation, plot included
        "wall_seconds_progress_csv": run.history[-1]["wall_time"],
        "train_sps_past_first_iteration": clock.rate(batch * len(args.seeds)),
        "env_steps_per_seed": env_steps,
    }

    rows = [[s["seed"], s["final_return"], s["final_cost"], s["eval"]["return_mean"],
             s["eval"]["cost_0_mean"], s["eval"]["cost_0_std"], s["train_cost_rate"],
             s["train_cost_rate"] * spec.max_episode_steps, s["final_lambda"]]
            for s in per_seed]
    print()
    print(f"{args.algo} on {args.env}, cost limit {args.cost_limit:g}: {env_steps:,.0f} env "
          f"steps per seed, num_envs {args.num_envs}, rollout_steps {args.rollout_steps} "
          f"(batch {batch}), overrides {args.overrides}")
    print(format_table(["seed", f"return (last {args.last})", f"cost (last {args.last})",
                        f"eval return ({args.eval_episodes} ep)", "eval cost", "eval cost std",
                        "train cost rate", "cost rate x T", "lambda"], rows))
    print(f"wall time {wall:.0f} s in total ({timing['wall_seconds_progress_csv']:.0f} s in "
          f"the training loop), {timing['train_sps_past_first_iteration']:,.0f} env steps/s "
          f"past the first iteration")
    satisfied = all(s["final_cost"] <= args.cost_limit for s in per_seed)
    eval_satisfied = all(s["eval"]["cost_0_mean"] <= args.cost_limit for s in per_seed)
    print(f"final training cost within the limit: {satisfied}; evaluation cost within the "
          f"limit: {eval_satisfied}")
    payload = {
        "settings": {"env": args.env, "algo": args.algo, "cost_limit": args.cost_limit,
                     "steps": args.steps, "seeds": args.seeds, "num_envs": args.num_envs,
                     "rollout_steps": args.rollout_steps, "overrides": args.overrides,
                     "config": config_to_dict(run.config), "last": args.last,
                     "eval_episodes": args.eval_episodes},
        "timing": timing, "per_seed": per_seed,
        "mean_std": summary["mean_std"],
        "constraints_satisfied_training": satisfied,
        "constraints_satisfied_eval": eval_satisfied,
        "run_dir": str(run.run_dir), "plot": str(args.plot),
    }
    default = args.algo == "ppo_lag" and args.env == "SafetyBallCircle-v0"  # the first one
    name = "bullet_learning" if default else f"bullet_learning_{args.algo}_Safety{env_name}"
    path = write_json(name, payload, args.json, code)
    print(f"wrote {path} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
