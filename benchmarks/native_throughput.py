"""End-to-end training throughput of ``ppo_lag`` on the native ``saferl/BallCircle-v0``.

Targets (2 CPU cores): ≥ 200,000 env steps/s end to end with the default configuration, and 4
seeds vectorised (``seeds=[0, 1, 2, 3]``) in ≤ 2 × the wall time of 1 seed for the same steps per
seed.

Each measurement is one ``saferl.train`` call (progress bar off, run directory under
``benchmarks/out/``) of ``timed_iterations + 1`` iterations; a callback timestamps the end of
every iteration and throughput is measured from the end of iteration 1 (which holds the
compilation) to the end of the last one. Everything else a run does per iteration — metrics to
the host, ``progress.csv``, TensorBoard, checkpoints every 20 iterations and at the end — is
inside the timed window, so the figure is end to end. ``Engine.iterate`` is also timed (wrapped
in this process), giving the share of wall time spent in the jitted iteration itself.

Settings measured: the default (5 PPO epochs, chosen for learning per wall-clock) and
throughput-oriented ones with fewer epochs (``--epochs 5 2 1``). For each setting, 1 seed and 4
seeds run interleaved, ``--repeats`` times (order alternating); medians are reported.

The throughput is also restated against the floor of ``update_floor.py``: after every repeat,
the network passes of the default update are timed in a child process on every core for each
seed count, and each setting's per-seed steps/s is reported as a fraction of what those passes
alone would allow at its epochs (target ≥ 0.9 at the default configuration). That fraction is
the per-unit-of-work measure of the 4-seed runs too, instead of a wall-time ratio.

Run: ``python benchmarks/native_throughput.py`` (``--help`` for the budget options).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from common import (
    IterationClock,
    MethodTimer,
    code_info,
    format_table,
    fresh_run_dir,
    median,
    setup_jax,
    wait_for_quiet,
    write_json,
)
from update_floor import spawn as spawn_floor

jax = setup_jax()

import jax.numpy as jnp  # noqa: E402

import saferl  # noqa: E402
from saferl.algos.on_policy import (  # noqa: E402
    initial_states,
    make_networks,
    native_rollout,
    process_and_update,
)
from saferl.algos.registry import get_algorithm  # noqa: E402
from saferl.training import build_config, make_environment  # noqa: E402

ENV = "saferl/BallCircle-v0"
TARGET_SPS = 200_000.0
TARGET_TIME_RATIO = 2.0
TARGET_FLOOR_FRACTION = 0.9
DEFAULT_EPOCHS = 5


def measure(epochs: int, seeds: list[int], timed_iterations: int) -> dict[str, Any]:
    """Per-seed and aggregate env steps/s of one training run past its first iteration."""
    clock = IterationClock()
    timer = MethodTimer(("iterate",))
    overrides = {"ppo": {"epochs": epochs}}
    config = build_config("ppo_lag", None, overrides)
    batch = config.run.batch_size
    with timer.patched():
        run = saferl.train("ppo_lag", ENV, cost_limit=10.0, seeds=seeds,
                           steps=batch * (timed_iterations + 1),
                           run_dir=fresh_run_dir(f"native_e{epochs}_s{len(seeds)}"),
                           progress=False, callback=clock, overrides=overrides)
    per_seed = clock.rate(batch)
    engine_seconds = sum(timer.calls["iterate"][1:])
    return {
        "epochs": epochs, "num_seeds": len(seeds), "seeds": seeds,
        "num_envs": run.config.run.num_envs, "rollout_steps": run.config.run.rollout_steps,
        "minibatches": run.config.ppo.minibatches, "batch_per_seed": batch,
        "timed_iterations": clock.timed_iterations, "seconds": clock.timed_seconds,
        "sps_per_seed": per_seed, "sps_aggregate": per_seed * len(seeds),
        "engine_share": engine_seconds / clock.timed_seconds,
        "own_cores": clock.own_cores, "other_cores": clock.other_cores,
        "engine_sps_aggregate": batch * len(seeds) * clock.timed_iterations / engine_seconds,
        "run_dir": str(run.run_dir),
    }


def breakdown(epochs: int, calls: int) -> dict[str, float]:
    """Milliseconds of one seed's jitted rollout and of its processing + update, separately."""
    config = build_config("ppo_lag", None, {"ppo": {"epochs": epochs}})
    spec, task, _ = make_environment(config)
    algo = get_algorithm("ppo_lag")
    networks = make_networks(config.run, spec)
    state = initial_states(algo, config, spec, networks, task)
    state = jax.tree_util.tree_map(lambda x: x[0], state)
    limit = jnp.asarray(config.run.cost_limit, jnp.float32)
    rollout = jax.jit(lambda s: native_rollout(config.run, networks, task, s))
    update = jax.jit(lambda s, r: process_and_update(algo, config, networks, spec, s, r, limit))
    after, batch = jax.block_until_ready(rollout(state))
    jax.block_until_ready(update(after, batch))
    seconds = {}
    for name, call in (("rollout", lambda: rollout(state)), ("update", lambda: update(after,
                                                                                     batch))):
        start = time.perf_counter()
        for _ in range(calls):
            jax.block_until_ready(call())
        seconds[name] = (time.perf_counter() - start) / calls
    steps = config.run.batch_size
    return {"epochs": epochs, "rollout_ms": 1e3 * seconds["rollout"],
            "update_ms": 1e3 * seconds["update"],
            "update_share": seconds["update"] / (seconds["rollout"] + seconds["update"]),
            "rollout_only_sps": steps / seconds["rollout"],
            "rollout_plus_update_sps": steps / (seconds["rollout"] + seconds["update"])}


def collect(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every measurement: repeats × epochs settings × seed counts, seed counts alternating; after
    each repeat the update floor for each seed count (``update_floor.py``, every core)."""
    runs: list[dict[str, Any]] = []
    floors: list[dict[str, Any]] = []
    cores = sorted(os.sched_getaffinity(0))
    for repeat in range(args.repeats):
        counts = args.num_seeds if repeat % 2 == 0 else list(reversed(args.num_seeds))
        for epochs in args.epochs:
            for count in counts:
                waited, attempts = 0.0, 0
                while True:  # redo a measurement that other processes disturbed
                    attempts += 1
                    if args.max_other_cores >= 0:
                        waited += wait_for_quiet(args.max_other_cores, timeout=args.quiet_timeout)
                    result = measure(epochs, list(range(count)), args.timed_iterations)
                    if (args.max_other_cores < 0 or attempts > args.retries
                            or result["other_cores"] <= args.max_other_cores):
                        break
                    print(f"  disturbed ({result['other_cores']:.2f} cores used by other "
                          f"processes): measuring again", flush=True)
                result.update(repeat=repeat, attempts=attempts, waited_for_quiet_seconds=waited)
                runs.append(result)
                print(f"repeat {repeat}: epochs {epochs}, {count} seed(s): "
                      f"{result['sps_aggregate']:,.0f} sps aggregate, "
                      f"{result['sps_per_seed']:,.0f} per seed, {result['seconds']:.2f} s, "
                      f"{result['own_cores']:.2f} cores used, {result['other_cores']:.2f} by "
                      f"others", flush=True)
        if args.floor_repeats > 0:
            for count in counts:
                if args.max_other_cores >= 0:
                    wait_for_quiet(args.max_other_cores, timeout=args.quiet_timeout)
                floor = spawn_floor(cores, count, argparse.Namespace(
                    minibatches=args.floor_minibatches, repeats=args.floor_repeats))
                floors.append({**floor, "repeat": repeat})
                print(f"repeat {repeat}: floor, {count} seed(s): "
                      f"{floor['ms_per_seed_minibatch']:.2f} ms per seed-minibatch", flush=True)
    return runs, floors


def summarize(runs: list[dict[str, Any]], max_other_cores: float,
              floors: list[dict[str, Any]] | None = None
              ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Medians per (epochs, seeds) over undisturbed runs, and the verdict on each target.

    A run is *disturbed* when other processes used more than ``max_other_cores`` during it; it
    is left out of the medians whenever an undisturbed run of the same setting exists (the
    table says how many runs each median uses). Wall-time ratios pair the runs of one repeat
    (measured next to each other) and skip pairs with a disturbed member.
    """
    limit = max_other_cores if max_other_cores >= 0 else float("inf")
    epochs_list = list(dict.fromkeys(r["epochs"] for r in runs))
    counts = sorted({r["num_seeds"] for r in runs})
    base = counts[0]

    def select(epochs: int, count: int) -> list[dict[str, Any]]:
        return [r for r in runs if r["epochs"] == epochs and r["num_seeds"] == count]

    def clean(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = [r for r in items if r["other_cores"] <= limit]
        return kept or items

    settings: list[dict[str, Any]] = []
    for epochs in epochs_list:
        base_runs = {r["repeat"]: r for r in select(epochs, base)}
        for count in counts:
            all_runs = select(epochs, count)
            chosen = clean(all_runs)
            pairs = [(r, base_runs[r["repeat"]]) for r in all_runs if r["repeat"] in base_runs]
            quiet_pairs = [(r, b) for r, b in pairs
                           if r["other_cores"] <= limit and b["other_cores"] <= limit] or pairs
            ratios = [r["seconds"] / b["seconds"] for r, b in quiet_pairs]
            settings.append({
                "epochs": epochs, "num_seeds": count, "runs_used": len(chosen),
                "runs_total": len(all_runs),
                "sps_per_seed_median": median([r["sps_per_seed"] for r in chosen]),
                "sps_aggregate_median": median([r["sps_aggregate"] for r in chosen]),
                "sps_aggregate_used": [r["sps_aggregate"] for r in chosen],
                "engine_sps_aggregate_median": median([r["engine_sps_aggregate"]
                                                       for r in chosen]),
                "engine_share_median": median([r["engine_share"] for r in chosen]),
                "own_cores_median": median([r["own_cores"] for r in chosen]),
                "other_cores_max": max(r["other_cores"] for r in chosen),
                "time_ratio_vs_base": ratios, "time_ratio_vs_base_median": median(ratios),
                **floor_fraction(floors or [], chosen, epochs, count),
            })

    def find(epochs: int, count: int) -> dict[str, Any] | None:
        return next((s for s in settings if s["epochs"] == epochs and s["num_seeds"] == count),
                    None)

    targets: dict[str, Any] = {}
    default = [s for s in settings if s["epochs"] == DEFAULT_EPOCHS]
    if default:
        best = max(default, key=lambda s: s["sps_aggregate_median"])
        value = best["sps_aggregate_median"]
        targets["sps_default_config"] = {"value": value, "num_seeds": best["num_seeds"],
                                         "target": TARGET_SPS, "met": value >= TARGET_SPS}
    for epochs in epochs_list:
        four = find(epochs, 4)
        if four is not None and base == 1 and epochs == DEFAULT_EPOCHS:
            ratio = four["time_ratio_vs_base_median"]
            targets["four_seed_time_ratio_default"] = {
                "value": ratio, "target": TARGET_TIME_RATIO, "met": ratio <= TARGET_TIME_RATIO}
    for s in default:
        if "floor_fraction" in s:
            targets[f"floor_fraction_default_{s['num_seeds']}_seeds"] = {
                "value": s["floor_fraction"], "target": TARGET_FLOOR_FRACTION,
                "met": s["floor_fraction"] >= TARGET_FLOOR_FRACTION}
    for epochs in epochs_list:
        if epochs == DEFAULT_EPOCHS:
            continue
        best = max((s for s in settings if s["epochs"] == epochs),
                   key=lambda s: s["sps_aggregate_median"])
        value = best["sps_aggregate_median"]
        targets[f"sps_epochs_{epochs}"] = {"value": value, "num_seeds": best["num_seeds"],
                                           "target": TARGET_SPS, "met": value >= TARGET_SPS}
    return settings, targets


def floor_fraction(floors: list[dict[str, Any]], chosen: list[dict[str, Any]], epochs: int,
                   count: int) -> dict[str, Any]:
    """Per-seed steps/s of a setting as a fraction of its update floor (empty without one).

    ``update_floor.py``'s ``t`` is the median time of one vmapped call of ``count`` seeds'
    minibatches divided by ``count`` (one seed's share of the machine). An iteration of
    ``count`` seeds then takes ``epochs × minibatches × count × t`` and gives each seed
    ``batch`` steps, so the floor's per-seed rate is ``batch / (epochs × minibatches × count ×
    t)``. (Until 2026-12-07 the ``count`` was missing: with 4 seeds the floor was the aggregate
    rate, and the fraction came out 4 × too small.)
    """
    times = [f["ms_per_seed_minibatch"] for f in floors if f["num_seeds"] == count]
    if not times or not chosen:
        return {}
    first = chosen[0]
    floor_ms = median(times)
    floor_sps = first["batch_per_seed"] / (epochs * first["minibatches"] * count * floor_ms
                                           / 1e3)
    return {"floor_ms_per_seed_minibatch": floor_ms, "floor_ms_used": times,
            "floor_sps_per_seed": floor_sps,
            "floor_fraction": median([r["sps_per_seed"] for r in chosen]) / floor_sps}


def report(runs: list[dict[str, Any]], settings: list[dict[str, Any]], targets: dict[str, Any],
           breakdowns: list[dict[str, float]], timed_iterations: int) -> None:
    """Print the tables and the verdicts."""
    first = runs[0]
    base = min(s["num_seeds"] for s in settings)
    print()
    print(f"ppo_lag on {ENV}: num_envs {first['num_envs']}, rollout_steps "
          f"{first['rollout_steps']} (batch {first['batch_per_seed']} per seed), "
          f"{first['minibatches']} minibatches, {timed_iterations} timed iterations per run, "
          f"{len(jax.local_devices())} XLA CPU devices")
    rows = [[s["epochs"], s["num_seeds"], f"{s['runs_used']}/{s['runs_total']}",
             s["sps_per_seed_median"], s["sps_aggregate_median"],
             " ".join(f"{x / 1000:.0f}k" for x in s["sps_aggregate_used"]),
             s["engine_sps_aggregate_median"], s["engine_share_median"],
             s["time_ratio_vs_base_median"],
             " ".join(f"{x:.2f}" for x in s["time_ratio_vs_base"]), s["own_cores_median"],
             s["other_cores_max"]] for s in settings]
    print(format_table(["epochs", "seeds", "runs", "sps/seed", "sps aggregate", "runs used",
                        "engine-only sps", "engine share", f"t(n)/t({base})", "pairs",
                        "cores used", "others max"], rows))
    floored = [x for x in settings if "floor_fraction" in x]
    if floored:
        print("\nagainst the update floor measured in this run (update_floor.py, every core):")
        print(format_table(["epochs", "seeds", "floor ms/seed-minibatch", "floor sps/seed",
                            "sps/seed", "fraction of floor"],
                           [[x["epochs"], x["num_seeds"], x["floor_ms_per_seed_minibatch"],
                             x["floor_sps_per_seed"], x["sps_per_seed_median"],
                             x["floor_fraction"]] for x in floored]))
    if breakdowns:
        print("\none seed, jitted parts timed separately:")
        print(format_table(["epochs", "rollout ms", "process+update ms", "update share",
                            "rollout-only sps", "rollout+update sps"],
                           [[b["epochs"], b["rollout_ms"], b["update_ms"], b["update_share"],
                             b["rollout_only_sps"], b["rollout_plus_update_sps"]]
                            for b in breakdowns]))
    print()
    for name, target in targets.items():
        verdict = "MET" if target["met"] else "NOT MET"
        relation = "<=" if name.startswith("four_seed") else ">="
        print(f"{name}: {target['value']:,.3f} (target {relation} {target['target']:,}): "
              f"{verdict}")


def main(argv: list[str] | None = None) -> int:
    """Measure every (epochs, seeds) setting, interleaved and repeated; print and save."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[5, 2, 1],
                        help="PPO epochs settings to measure (5 is the default config)")
    parser.add_argument("--num-seeds", type=int, nargs="+", default=[1, 4],
                        help="seed counts to compare (seeds 0..n-1)")
    parser.add_argument("--timed-iterations", type=int, default=30,
                        help="iterations timed after the first (compiling) one")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every setting (>= 3)")
    parser.add_argument("--max-other-cores", type=float, default=0.3,
                        help="before each measurement wait until other processes "
                             "use at most this many cores; negative: do not wait")
    parser.add_argument("--retries", type=int, default=3,
                        help="measure again (at most this many times) when other processes used "
                             "more than --max-other-cores during the measurement")
    parser.add_argument("--breakdown-calls", type=int, default=20,
                        help="calls per jitted part in the rollout/update breakdown (0: skip)")
    parser.add_argument("--summarize", type=Path, default=None,
                        help="only re-summarise the runs of a JSON this script wrote")
    parser.add_argument("--quiet-timeout", type=float, default=1800.0,
                        help="longest wait (s) for other processes to quiet down before a "
                             "measurement; after it the measurement goes on (and is flagged)")
    parser.add_argument("--floor-repeats", type=int, default=15,
                        help="timed calls of each update-floor measurement (0: no floor)")
    parser.add_argument("--floor-minibatches", type=int, default=20,
                        help="minibatches per timed update-floor call")
    parser.add_argument("--json", type=Path, default=None, help="output JSON path")
    args = parser.parse_args(argv)
    code = code_info()  # the saferl sources as imported now

    if args.summarize is not None:
        record = json.loads(args.summarize.read_text())
        settings, targets = summarize(record["runs"], record["settings"]["max_other_cores"],
                                      record.get("floors"))
        report(record["runs"], settings, targets, record.get("breakdown", []),
               record["settings"]["timed_iterations"])
        return 0

    runs, floors = collect(args)
    breakdowns = []
    if args.breakdown_calls > 0:
        for epochs in args.epochs:
            if args.max_other_cores >= 0:
                wait_for_quiet(args.max_other_cores, timeout=args.quiet_timeout)
            breakdowns.append(breakdown(epochs, args.breakdown_calls))
    settings, targets = summarize(runs, args.max_other_cores, floors)
    report(runs, settings, targets, breakdowns, args.timed_iterations)
    payload = {"settings": {"env": ENV, "algo": "ppo_lag", "epochs": args.epochs,
                            "num_seeds": args.num_seeds,
                            "timed_iterations": args.timed_iterations,
                            "repeats": args.repeats, "max_other_cores": args.max_other_cores,
                            "retries": args.retries},
               "summary": settings, "targets": targets, "breakdown": breakdowns, "runs": runs,
               "floors": floors}
    path = write_json("native_throughput", payload, args.json, code)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
