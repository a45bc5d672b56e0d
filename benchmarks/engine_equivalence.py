"""Record, and compare, short fixed-seed runs of every algorithm: a refactor must not change them.

    python benchmarks/engine_equivalence.py record OUT_DIR      # before the change
    python benchmarks/engine_equivalence.py compare OUT_DIR     # after: exit 1 on a difference

Each algorithm trains a few iterations on native BallCircle with two seeds vectorised (and
``ppo_lag`` and ``sac_lag`` a few iterations on Bullet ``SafetyBallCircle-v0`` when
``saferl[bullet]`` is installed); ``progress.csv`` without its wall-clock column is kept as
``<name>.csv``, and the first checkpoint of each native run as ``<name>.msgpack`` so that
``compare`` can check that checkpoints written before the change load after it (same policy
actions). Differences are reported per column with the largest absolute gap.
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

import saferl
from saferl.algos.registry import ALGORITHMS
from saferl.envs.gym import bullet_installed

ON_POLICY = {"num_envs": 8, "rollout_steps": 100, "steps": 2400, "hidden_sizes": [32, 32],
             "seeds": [0, 1], "eval_episodes": 0, "checkpoint_every": 1}
OFF_POLICY = {"num_envs": 4, "rollout_steps": 25, "steps": 1200, "warmup_steps": 200,
              "batch_size": 64, "hidden_sizes": [32, 32], "seeds": [0, 1], "eval_episodes": 0,
              "checkpoint_every": 4}


def cases() -> list[tuple[str, str, str, dict]]:
    """``(label, algorithm, env, run overrides)`` for every registered algorithm."""
    out = []
    for name, entry in ALGORITHMS.items():
        run = dict(ON_POLICY if entry.family == "on_policy" else OFF_POLICY)
        out.append((name, name, "saferl/BallCircle-v0", run))
    if bullet_installed():
        out.append(("bullet_ppo_lag", "ppo_lag", "SafetyBallCircle-v0",
                    {**ON_POLICY, "steps": 1600, "seeds": [0]}))
        out.append(("bullet_sac_lag", "sac_lag", "SafetyBallCircle-v0",
                    {**OFF_POLICY, "steps": 600, "seeds": [0]}))
    return out


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return [{k: v for k, v in r.items() if k != "wall_time"} for r in csv.DictReader(handle)]


def train_case(algo: str, env: str, run: dict, folder: Path) -> Path:
    saferl.train(algo, env, run_dir=folder, overrides={"run": run}, progress=False)
    return folder


def record(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for label, algo, env, run in cases():
            folder = train_case(algo, env, run, Path(tmp) / label)
            shutil.copy(folder / "progress.csv", out / f"{label}.csv")
            if env.startswith("saferl/"):
                shutil.copytree(folder, out / f"{label}_run")
            print(f"recorded {label}", flush=True)


def saved_actions(saved: Path) -> np.ndarray:
    """The actions of a saved run's policy on 5 fixed observations (a conditioned policy at
    its first behaviour threshold)."""
    policy = saferl.load(saved)
    obs = np.random.default_rng(0).normal(size=(5, policy.obs_dim))
    if policy.conditioning is None:
        return policy(obs)
    return policy(obs, threshold=policy.conditioning.behaviour[0])


def compare(out: Path) -> int:
    problems = 0
    with tempfile.TemporaryDirectory() as tmp:
        for label, algo, env, run in cases():
            if not (out / f"{label}.csv").is_file():  # registered after the recording
                print(f"{label}: not recorded (new since the recording)", flush=True)
                continue
            expected = rows(out / f"{label}.csv")
            got = rows(train_case(algo, env, run, Path(tmp) / label) / "progress.csv")
            gaps: dict[str, float] = {}
            if len(expected) != len(got) or (expected and expected[0].keys() != got[0].keys()):
                print(f"{label}: different rows or columns", flush=True)
                problems += 1
                continue
            for a, b in zip(expected, got, strict=True):
                for key in a:
                    x = float(a[key]) if a[key] not in ("", "nan") else math.nan
                    y = float(b[key]) if b[key] not in ("", "nan") else math.nan
                    if math.isnan(x) and math.isnan(y):
                        continue
                    gap = abs(x - y) if not (math.isnan(x) or math.isnan(y)) else math.inf
                    if gap > 0:
                        gaps[key] = max(gaps.get(key, 0.0), gap)
            saved = out / f"{label}_run"
            loaded = ""
            if saved.is_dir():  # a checkpoint written before the change, loaded after it
                before = np.load(saved / "actions.npy") if (saved / "actions.npy").is_file() \
                    else None
                actions = saved_actions(saved)
                if before is None:
                    np.save(saved / "actions.npy", actions)
                elif not np.array_equal(before, actions):
                    loaded = "; saved checkpoint gives different actions"
            if gaps or loaded:
                problems += 1
                worst = sorted(gaps.items(), key=lambda kv: -kv[1])[:5]
                print(f"{label}: {len(gaps)} column(s) differ, largest {worst}{loaded}",
                      flush=True)
            else:
                print(f"{label}: identical", flush=True)
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["record", "compare"])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.mode == "record":
        record(args.out)
        # the actions of the saved checkpoints, taken with the code that wrote them
        for saved in sorted(args.out.glob("*_run")):
            np.save(saved / "actions.npy", saved_actions(saved))
        return 0
    return compare(args.out)


if __name__ == "__main__":
    sys.exit(main())
