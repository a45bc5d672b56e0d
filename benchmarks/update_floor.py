"""The floor under ``ppo_lag``'s default update on this machine: its network passes alone.

The native-throughput target (≥ 200,000 env steps/s end to end at the default configuration,
``native_throughput.py``) is set by the PPO update, not by the simulator. This script measures
the part of the update no implementation can avoid: the forward and backward passes of the
default policy and critics (``make_networks``: 64 × 64 tanh MLPs, reward critic + one cost
critic) over ``epochs × minibatches`` minibatches of ``batch / minibatches`` samples, as XLA
compiles them — with a trivial loss, plain SGD steps (so that each minibatch depends on the
last) and no Adam, shuffles, gathers, clipping, advantages, GAE or rollout.

It runs in child processes pinned to one core and to both cores, for 1, 2 and 4 seeds
``vmap``-ped in one program, and reports milliseconds per seed per minibatch. From the
one-core figure it derives an upper bound on end-to-end throughput at the default config that
assumes two cores in perfect parallel and a free rollout:
``bound = batch / (epochs × minibatches × t_one_core / 2)`` env steps/s.

Every setting is measured in ``--rounds`` interleaved rounds; medians are reported.

Run: ``python benchmarks/update_floor.py`` (about five minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from common import code_info, format_table, median, wait_for_quiet, write_json

TARGET_SPS = 200_000.0


def child(num_seeds: int, minibatches_timed: int, repeats: int) -> dict[str, Any]:
    """Time the network passes of ``num_seeds`` vmapped seeds in this (pinned) process."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import saferl
    from saferl.algos.on_policy import init_network_params, make_networks
    from saferl.training import build_config

    config = build_config("ppo_lag", None, {})
    run, ppo = config.run, config.ppo
    spec = saferl.make(run.env, num_envs=1).spec
    networks = make_networks(run, spec)
    size = run.batch_size // ppo.minibatches
    keys = jax.random.split(jax.random.key(0), num_seeds)
    params = jax.vmap(lambda k: init_network_params(networks, spec, k))(keys)
    rng = np.random.default_rng(0)
    obs = jnp.asarray(rng.standard_normal((num_seeds, minibatches_timed, size, spec.obs_dim)),
                      jnp.float32)
    targets = jnp.asarray(rng.standard_normal((num_seeds, minibatches_timed, size,
                                                1 + spec.num_costs)), jnp.float32)

    def loss(both: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        policy_params, critic_params = both
        mean, log_std = networks.policy.apply(policy_params, x)
        values = networks.critics.apply(critic_params, x)
        return jnp.mean(mean ** 2) + jnp.mean(log_std) + jnp.mean((values - y) ** 2)

    def step(both: Any, xy: tuple[jax.Array, jax.Array]) -> tuple[Any, None]:
        grads = jax.grad(loss)(both, *xy)
        return jax.tree_util.tree_map(lambda p, g: p - 1e-4 * g, both, grads), None

    program = jax.jit(jax.vmap(lambda p, x, y: jax.lax.scan(step, p, (x, y))[0]))
    jax.block_until_ready(program(params, obs, targets))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(program(params, obs, targets))
        seconds.append(time.perf_counter() - start)
    per_minibatch = median(seconds) / (minibatches_timed * num_seeds)
    return {"num_seeds": num_seeds, "minibatch_size": size,
            "minibatches_per_update": ppo.epochs * ppo.minibatches,
            "batch_per_seed": run.batch_size, "ms_per_seed_minibatch": 1e3 * per_minibatch,
            "repeats": [1e3 * s / (minibatches_timed * num_seeds) for s in seconds]}


def spawn(cores: list[int], num_seeds: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run :func:`child` in a fresh process restricted to ``cores``.

    The child pins itself before it imports JAX (no ``preexec_fn``: running Python between
    fork and exec in a process with threads can deadlock)."""
    command = [sys.executable, __file__, "--child", str(num_seeds),
               "--cpus", ",".join(map(str, cores)),
               "--minibatches", str(args.minibatches), "--repeats", str(args.repeats)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    result["cores"] = len(cores)
    return result


def main() -> None:
    """Measure on one core and on every core, print the table and the bound, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--minibatches", type=int, default=20,
                        help="minibatches per timed call (the default update has 5 × 4)")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all settings")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cpus", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        os.sched_setaffinity(0, [int(cpu) for cpu in args.cpus.split(",")])
        print(json.dumps(child(args.child, args.minibatches, args.repeats)))
        return

    code = code_info()
    all_cores = sorted(os.sched_getaffinity(0))
    measured = []
    for round_ in range(args.rounds):  # settings interleaved, so that drift hits them alike
        for cores in ([all_cores[0]], all_cores):
            for count in args.seeds:
                wait_for_quiet()
                measured.append({**spawn(cores, count, args), "round": round_})
                print(f"round {round_}: {len(cores)} core(s), {count} seed(s): "
                      f"{measured[-1]['ms_per_seed_minibatch']:.2f} ms per seed-minibatch",
                      flush=True)
    results = []
    for cores in (1, len(all_cores)):
        for count in args.seeds:
            runs = [r for r in measured if r["cores"] == cores and r["num_seeds"] == count]
            results.append({**runs[0], "ms_per_seed_minibatch": median(
                [r["ms_per_seed_minibatch"] for r in runs]),
                "rounds": [r["ms_per_seed_minibatch"] for r in runs]})
    one_core = min(r["ms_per_seed_minibatch"] for r in results if r["cores"] == 1)
    first = results[0]

    def rate(ms_per_minibatch: float) -> float:  # env steps/s if the update took only this
        return first["batch_per_seed"] / (first["minibatches_per_update"] * ms_per_minibatch / 1e3)

    bound = rate(one_core / 2)
    rows = [[r["cores"], r["num_seeds"], f"{r['ms_per_seed_minibatch']:.2f}",
             f"{rate(r['ms_per_seed_minibatch']):,.0f}"] for r in results]
    print(format_table(["cores", "seeds vmapped", "ms per seed-minibatch (median)",
                        "env steps/s if the update were only this"], rows))
    print(f"bound at the default config (two cores in perfect parallel, free rollout): "
          f"{bound:,.0f} env steps/s; target {TARGET_SPS:,.0f}")
    write_json("update_floor", {"results": results, "measurements": measured,
                                "one_core_ms": one_core,
                                "bound_sps": bound, "target_sps": TARGET_SPS},
               code_at_start=code)


if __name__ == "__main__":
    main()
