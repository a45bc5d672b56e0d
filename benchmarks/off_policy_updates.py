"""Gradient updates per second of the off-policy algorithms (the update-bound part of training).

Times the engine's fused learning scan (:func:`saferl.algos.off_policy.learn`: replay sampling,
n-step targets and one full algorithm update per step) on a replay buffer filled with random
transitions of native BallCircle. Default settings are the issue's: batch 256, 256×256
networks, K = 32 CVPO samples; ``--fsrl-settings`` measures FSRL's SafetyBallCircle settings
instead (128×128, K = 16, one M-step iteration, single critics for CVPO). Median of
``--repeats`` timed scans, after a compile-and-warm-up call.

Example::

    python benchmarks/off_policy_updates.py --repeats 5
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from common import RESULTS_DIR, format_table, machine_info, median, setup_jax, write_json

ISSUE = {"sac_lag": {"run": {"hidden_sizes": [256, 256], "batch_size": 256}},
         "cvpo": {"run": {"hidden_sizes": [256, 256], "batch_size": 256},
                  "cvpo": {"num_samples": 32}}}
FSRL = {"sac_lag": {"run": {"hidden_sizes": [128, 128], "batch_size": 256, "n_step": 2}},
        "cvpo": {"run": {"hidden_sizes": [128, 128], "batch_size": 256, "n_step": 2},
                 "cvpo": {"num_samples": 16, "mstep_iterations": 1, "twin_critics": False}}}


def measure(algo: str, overrides: dict[str, Any], updates: int, repeats: int) -> dict[str, Any]:
    """Updates per second of ``algo`` (one seed) with ``overrides``."""
    jax = setup_jax()
    import jax.numpy as jnp

    from saferl.algos.off_policy import initial_states, learn, limits_for
    from saferl.algos.registry import get_algorithm
    from saferl.envs.native import make_task
    from saferl.training import build_config

    run = {"steps": 100_000, "num_envs": 8, "rollout_steps": 25,
           "update_ratio": updates / 200, **overrides["run"]}
    config = build_config(algo, overrides={**overrides, "run": run})
    module = get_algorithm(algo).module
    task = make_task(config.run.env)
    spec = task.spec
    networks = module.make_networks(config, spec)
    state = jax.tree_util.tree_map(lambda x: x[0], initial_states(module, config, spec, task))
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    replay = state.replay
    replay = replay._replace(
        observations=jax.random.normal(keys[0], replay.observations.shape),
        next_observations=jax.random.normal(keys[1], replay.next_observations.shape),
        actions=jax.random.uniform(keys[2], replay.actions.shape, minval=-1, maxval=1),
        rewards=jax.random.normal(keys[3], replay.rewards.shape),
        costs=(jax.random.uniform(keys[3], replay.costs.shape) < 0.1).astype(jnp.float32),
        size=jnp.asarray(replay.rewards.shape[0], jnp.int32))
    limits = limits_for(config, spec, jnp.asarray(config.run.cost_limit))
    scan = jax.jit(lambda agent, key: learn(module, config, networks, agent, replay, limits, key))
    agent, _ = scan(state.agent, jax.random.PRNGKey(1))
    jax.block_until_ready(agent)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        agent, _ = scan(agent, jax.random.PRNGKey(2 + i))
        jax.block_until_ready(agent)
        times.append(time.perf_counter() - start)
    count = config.run.updates_per_iteration
    return {"algo": algo, "updates_per_scan": count, "seconds": times,
            "updates_per_s": count / median(times), "overrides": overrides}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--updates", type=int, default=200, help="updates per timed scan")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    results = []
    for label, table in (("issue: batch 256, 256x256, K=32", ISSUE),
                         ("FSRL BallCircle: batch 256, 128x128, K=16", FSRL)):
        for algo, overrides in table.items():
            result = measure(algo, overrides, args.updates, args.repeats)
            result["settings"] = label
            results.append(result)
    print(format_table(["settings", "algo", "updates/s (median)"],
                       [[r["settings"], r["algo"], f"{r['updates_per_s']:.1f}"]
                        for r in results]))
    write_json("off_policy_updates", {"results": results, "machine": machine_info()},
               args.out or RESULTS_DIR / "off_policy_updates.json")


if __name__ == "__main__":
    main()
