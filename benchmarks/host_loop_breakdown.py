"""Where the time of one host-rollout step goes: policy call, conversions, env step, checks.

A diagnostic for ``bullet_overhead.py``. It replays the loop of ``Engine._host_rollout`` (one
seed: policy → buffers → ``VecEnv.step`` → ``check_finite`` → buffers) with timers around each
part, for two ways of computing actions, interleaved and repeated:

* ``jit``: a jitted, seed-vmapped :func:`saferl.algos.on_policy.act` called on numpy
  observations, then ``np.asarray`` on its outputs (the engine's loop up to commit b39127d);
* ``numpy``: :class:`saferl.algos.on_policy.HostActor`, the engine's numpy twin of ``act``
  (skipped when this saferl has none).

Each repeat also steps the same VecEnv with pre-drawn uniform random actions (``raw``), so every
mode can be compared with raw stepping measured seconds apart.

Run: ``python benchmarks/host_loop_breakdown.py`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from common import code_info, format_table, median, setup_jax, wait_for_quiet, write_json

jax = setup_jax()

import numpy as np  # noqa: E402

from saferl.algos import on_policy  # noqa: E402
from saferl.algos.registry import get_algorithm  # noqa: E402
from saferl.envs.core import check_finite  # noqa: E402
from saferl.training import build_config, make_environment  # noqa: E402

PARTS = ("act", "convert", "store", "env_step", "check", "store_next")


def make_policies(config: Any, engine: on_policy.Engine, state: Any) -> dict[str, Any]:
    """``mode -> callable(observations [S, N, obs]) -> (actions, log_probs, seconds_convert)``."""
    run = config.run
    jitted = jax.jit(jax.vmap(lambda p, o, x, k: on_policy.act(
        engine.networks, p, o, x, k, run.normalize_observations)))
    params, stats = state.agent.policy_params, state.obs_stats
    keys = np.asarray(jax.vmap(lambda k: jax.random.split(k, run.rollout_steps + 1))(state.key))
    counter = {"t": 0}

    def jit_policy(observations: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        t = counter["t"] % run.rollout_steps
        counter["t"] += 1
        actions, log_probs = jitted(params, stats, observations, keys[:, 1 + t])
        start = time.perf_counter()
        actions, log_probs = np.asarray(actions), np.asarray(log_probs)
        return actions, log_probs, time.perf_counter() - start

    policies: dict[str, Any] = {"jit": jit_policy}
    host_actor = getattr(on_policy, "HostActor", None)
    if host_actor is not None:
        actor = host_actor(run)
        actor.load(state)

        def numpy_policy(observations: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
            actions, log_probs = actor(observations)
            return actions, log_probs, 0.0

        policies["numpy"] = numpy_policy
    return policies


def time_loop(vec: Any, policy: Any, observations: np.ndarray, steps: int,
              env_id: str) -> tuple[dict[str, float], np.ndarray]:
    """Milliseconds per step of each part of the rollout loop (one seed)."""
    n, obs_dim = observations.shape[1:]
    buffers = {name: np.empty((1, steps, n, dim), np.float32)
               for name, dim in (("observations", obs_dim), ("final", obs_dim))}
    actions_buffer = np.empty((1, steps, n, vec.spec.action_dim), np.float32)
    totals = dict.fromkeys(PARTS, 0.0)
    start = time.perf_counter()
    for t in range(steps):
        a = time.perf_counter()
        actions, _, convert = policy(observations)
        b = time.perf_counter()
        buffers["observations"][:, t] = observations
        actions_buffer[:, t] = actions
        next_observations = np.empty_like(observations)
        c = time.perf_counter()
        result = vec.step(actions[0])
        d = time.perf_counter()
        check_finite(result, t, env_id)
        e = time.perf_counter()
        buffers["final"][0, t] = result.final_observation
        next_observations[0] = result.observation
        observations = next_observations
        f = time.perf_counter()
        totals["act"] += b - a - convert
        totals["convert"] += convert
        totals["store"] += c - b
        totals["env_step"] += d - c
        totals["check"] += e - d
        totals["store_next"] += f - e
    total = time.perf_counter() - start
    per_step = {k: 1e3 * v / steps for k, v in totals.items()}
    per_step["total"] = 1e3 * total / steps
    return per_step, observations


def time_raw(vec: Any, steps: int, rng: np.random.Generator) -> float:
    """Milliseconds per step of the VecEnv with pre-drawn uniform random actions."""
    space = vec.spec.action_space
    actions = rng.uniform(space.low, space.high,
                          size=(steps, vec.num_envs, *space.shape)).astype(np.float32)
    start = time.perf_counter()
    for action in actions:
        vec.step(action)
    return 1e3 * (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> int:
    """Time every mode and raw stepping, interleaved, and print the per-part medians."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="SafetyBallCircle-v0")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1000, help="loop steps per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-other-cores", type=float, default=0.3,
                        help="wait before each repeat until other processes use at most this "
                             "many cores (negative: do not wait)")
    parser.add_argument("--quiet-timeout", type=float, default=1800.0,
                        help="longest wait (s) for other processes to quiet down before a "
                             "measurement; after it the measurement goes on (and is flagged)")
    parser.add_argument("--json", type=Path, default=None, help="output JSON path")
    args = parser.parse_args(argv)
    code = code_info()

    config = build_config("ppo_lag", None, {"env": args.env, "num_envs": args.num_envs,
                                            "rollout_steps": args.steps})
    spec, _, envs = make_environment(config)
    assert envs is not None
    vec = envs[0]
    engine = on_policy.Engine(get_algorithm("ppo_lag").module, config, spec, envs=envs)
    state = engine.init_states()
    policies = make_policies(config, engine, state)
    observations = vec.reset(seed=args.seed)[None].astype(np.float32)
    for policy in policies.values():  # compile and warm up, untimed
        _, observations = time_loop(vec, policy, observations, 20, args.env)
    rng = np.random.default_rng(args.seed)
    records: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        if args.max_other_cores >= 0:
            wait_for_quiet(args.max_other_cores, timeout=args.quiet_timeout)
        modes = list(policies) if repeat % 2 == 0 else list(reversed(policies))
        for mode in modes:
            per_step, observations = time_loop(vec, policies[mode], observations, args.steps,
                                               args.env)
            raw = time_raw(vec, args.steps, rng)
            records.append({"repeat": repeat, "mode": mode, "raw_ms": raw, **per_step,
                            "ratio": raw / per_step["total"]})
            print(f"repeat {repeat} {mode}: loop {per_step['total']:.3f} ms/step, raw "
                  f"{raw:.3f} ms/step", flush=True)
    vec.close()

    summary = []
    for mode in policies:
        chosen = [r for r in records if r["mode"] == mode]
        summary.append({"mode": mode, **{k: median([r[k] for r in chosen])
                                         for k in (*PARTS, "total", "raw_ms", "ratio")}})
    print()
    print(f"{args.env}, num_envs {args.num_envs}, one seed, {args.steps} steps per measurement, "
          f"median of {args.repeats} (ms per loop step)")
    print(format_table(["mode", *PARTS, "total", "raw", "raw/total"],
                       [[s["mode"], *(s[k] for k in PARTS), s["total"], s["raw_ms"], s["ratio"]]
                        for s in summary]))
    payload = {"settings": vars(args) | {"json": str(args.json) if args.json else None},
               "summary": summary, "records": records}
    path = write_json("host_loop_breakdown", payload, args.json, code)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
