"""Time per gradient update: CCPO against CVPO at equal batch, K and network sizes.

Both run the engine's fused learning scan (:func:`saferl.algos.off_policy.learn`: replay
sampling, n-step targets and one full update per step) on the same replay buffer of random
native BallCircle transitions, with the same shared settings (batch, hidden sizes, K, M-step
iterations). CCPO is timed in its fine-tuning stage (behaviour thresholds plus sampled ones:
the most conditions an update has) with VVE critics, and with ``vve=False``. The variants are
timed interleaved (CVPO, CCPO, CCPO w/o VVE, CVPO, …) so that drift in a shared machine's load
hits them alike; the figure is the ratio of the medians (issue 17's target: ≤ 1.3).

Example::

    python benchmarks/ccpo_update.py --repeats 5 --updates 100
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from typing import Any

from common import format_table, machine_info, median, setup_jax, write_json


def scans(updates: int, hidden: int, batch: int, samples: int) -> dict[str, Any]:
    """A jitted learning scan and initial agent per variant, on one shared replay buffer."""
    jax = setup_jax()
    import jax.numpy as jnp

    from saferl.algos import ccpo, cvpo
    from saferl.algos.off_policy import initial_states, learn, limits_for
    from saferl.data.replay import Transitions, replay_add
    from saferl.envs.native import make_task
    from saferl.training import build_config

    run = {"env": "saferl/BallCircle-v0", "steps": 100_000, "num_envs": 8, "rollout_steps": 25,
           "update_ratio": updates / 200, "hidden_sizes": [hidden, hidden], "batch_size": batch}
    reference = build_config("cvpo", overrides={"run": run, "cvpo": {"num_samples": samples}})
    task = make_task(reference.run.env)
    spec = task.spec
    variants: dict[str, tuple[Any, Any]] = {"cvpo": (cvpo, reference)}
    for label, fields in (("ccpo", {}), ("ccpo_no_vve", {"vve": False})):
        config = ccpo.CCPOConfig(run=reference.run, cvpo=reference.cvpo,
                                 ccpo=replace(ccpo.CCPOParams(), **fields))
        variants[label] = (ccpo, config)
    # Every row of the buffer written with random transitions (10 % of the steps cost 1).
    empty = jax.tree_util.tree_map(lambda x: x[0],
                                   initial_states(cvpo, reference, spec, task)).replay
    rows, copies = empty.rewards.shape
    normal, uniform = jax.random.normal, jax.random.uniform
    k = jax.random.split(jax.random.PRNGKey(0), 5)
    replay = replay_add(empty, Transitions(
        normal(k[0], (rows, copies, spec.obs_dim)),
        uniform(k[1], (rows, copies, spec.action_dim), minval=-1, maxval=1),
        normal(k[2], (rows, copies)),
        (uniform(k[3], (rows, copies, spec.num_costs)) < 0.1).astype(jnp.float32),
        jnp.zeros((rows, copies), bool), jnp.zeros((rows, copies), bool),
        normal(k[4], (rows, copies, spec.obs_dim))))
    limits = limits_for(reference, spec, jnp.asarray(reference.run.cost_limit))
    out = {}
    for label, (module, config) in variants.items():
        networks = module.make_networks(config, spec)
        agent = module.init_agent(config, spec, networks, jax.random.PRNGKey(1))
        if module is ccpo:  # the fine-tuning stage: Ẽ and the sampled thresholds
            agent = agent._replace(updates=jnp.asarray(10**6, jnp.int32))
            assert bool(ccpo.fine_tuning(config, agent.updates))
        scan = jax.jit(lambda a, k, m=module, c=config, n=networks:
                       learn(m, c, n, a, replay, limits, k))
        out[label] = (scan, agent, config.run.updates_per_iteration)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--updates", type=int, default=100, help="updates per timed scan")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--samples", type=int, default=32, help="K, E-step samples per state")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    jax = setup_jax()
    variants = scans(args.updates, args.hidden, args.batch, args.samples)
    agents = {}
    for label, (scan, agent, _) in variants.items():  # compile and warm up
        agents[label], _ = scan(agent, jax.random.PRNGKey(0))
        jax.block_until_ready(agents[label])
    times: dict[str, list[float]] = {label: [] for label in variants}
    for i in range(args.repeats):
        for label, (scan, _, _) in variants.items():
            start = time.perf_counter()
            agents[label], _ = scan(agents[label], jax.random.PRNGKey(1 + i))
            jax.block_until_ready(agents[label])
            times[label].append(time.perf_counter() - start)
    count = next(iter(variants.values()))[2]
    per_update = {label: median(t) / count * 1e3 for label, t in times.items()}
    rows = [[label, per_update[label], per_update[label] / per_update["cvpo"]]
            for label in variants]
    print(f"batch {args.batch}, hidden {args.hidden}x{args.hidden}, K {args.samples}, "
          f"{count} updates per scan, {args.repeats} interleaved repeats")
    print(format_table(["variant", "ms/update (median)", "x CVPO"], rows))
    path = write_json("ccpo_update", {
        "settings": vars(args), "updates_per_scan": count, "seconds": times,
        "ms_per_update": per_update,
        "ratio": {label: per_update[label] / per_update["cvpo"] for label in variants},
        "machine_now": machine_info()}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
