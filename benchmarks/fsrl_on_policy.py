"""PyTorch baseline for issue 16's Bullet target: FSRL's on-policy agents with their defaults.

Standalone: run it with the FSRL virtual environment (``benchmarks/fsrl_requirements.txt``),
*not* with saferl's; it never imports saferl::

    /work/fsrl-venv/bin/python benchmarks/fsrl_on_policy.py --algo ppo_lag \\
        --task SafetyBallCircle-v0 --steps 200000 --seed 0 --out /tmp/fsrl_ppol.json

What it does
------------
* Builds FSRL's agent (``PPOLagAgent``, ``TRPOLagAgent`` or ``CPOAgent``) from the defaults of
  its config dataclass (``fsrl/config/{ppol,trpol,cpo}_cfg.py``: ``TrainCfg``), passing every
  field the agent's constructor takes under its own name or the name FSRL's example scripts map
  it to (``norm_adv`` → ``advantage_normalization`` …).
* Trains with FSRL's ``OnpolicyTrainer`` exactly as ``OnpolicyAgent.learn`` sets it up
  (``fsrl/agent/base_agent.py``), with no test envs, checkpoints or wandb. FSRL collects whole
  episodes: ``episode_per_collect`` (20) on ``min(training_num, episode_per_collect)`` envs.
  ``--steps`` is rounded up to whole collects and the epoch length to whole collects that
  divide them, so the trainer counts exactly the steps it says (``steps`` in the JSON).
* ``wall_s`` is ``time.perf_counter`` around buffer, collector and trainer construction and
  the training loop, as in ``fsrl_baseline.py``; torch runs ``--threads`` threads (1: the
  issue's setting).
* Then evaluates the final policy over ``--eval-episodes`` episodes on one env, deterministic
  (``policy.eval()``, FSRL's ``deterministic_eval``) and stochastic (``policy.train()``, as
  FSRL's example prints "Final train reward"), outside the timed region.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import tempfile
import time
import warnings
from dataclasses import asdict

from fsrl_baseline import emit

AGENTS = {"ppo_lag": ("PPOLagAgent", "ppol_cfg"), "trpo_lag": ("TRPOLagAgent", "trpol_cfg"),
          "cpo": ("CPOAgent", "cpo_cfg")}
# Config field → the agent's argument, as FSRL's examples/mlp/train_*_agent.py pass them.
RENAMED = {"norm_adv": "advantage_normalization", "recompute_adv": "recompute_advantage",
           "rew_norm": "reward_normalization"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algo", choices=sorted(AGENTS), required=True)
    p.add_argument("--task", default="SafetyBallCircle-v0")
    p.add_argument("--steps", type=int, required=True, help="total training env steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cost-limit", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--out", default=None, help="JSON output path")
    return p.parse_args(argv)


def schedule(steps: int, episode_per_collect: int, episode_steps: int,
             step_per_epoch: int) -> dict[str, int]:
    """Whole collects covering ``steps``, grouped into equal epochs of at most FSRL's length."""
    per_collect = episode_per_collect * episode_steps
    collects = max(1, math.ceil(steps / per_collect))
    k = max(1, min(collects, step_per_epoch // per_collect))
    while collects % k:
        k -= 1
    return {"step_per_collect": per_collect, "collects": collects,
            "step_per_epoch": k * per_collect, "epochs": collects // k,
            "steps_planned": collects * per_collect}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("WANDB_MODE", "disabled")  # fsrl imports wandb 0.14; never used

    import importlib

    import bullet_safety_gym  # noqa: F401  (registers the Safety* ids)
    import fsrl
    import fsrl.agent
    import gymnasium as gym
    import numpy as np
    import torch
    from fsrl.data import FastCollector
    from fsrl.trainer import OnpolicyTrainer
    from fsrl.utils import BaseLogger
    from tianshou.data import VectorReplayBuffer
    from tianshou.env import DummyVectorEnv, ShmemVectorEnv, SubprocVectorEnv

    agent_name, cfg_module = AGENTS[args.algo]
    cfg = asdict(importlib.import_module(f"fsrl.config.{cfg_module}").TrainCfg())
    cfg.update(seed=args.seed, cost_limit=args.cost_limit, thread=args.threads)
    agent_class = getattr(fsrl.agent, agent_name)
    accepted = set(inspect.signature(agent_class.__init__).parameters)
    kwargs = {RENAMED.get(key, key): value for key, value in cfg.items()
              if RENAMED.get(key, key) in accepted}

    demo_env = gym.make(args.task)
    episode_steps = int(demo_env.spec.max_episode_steps)
    plan = schedule(args.steps, cfg["episode_per_collect"], episode_steps, cfg["step_per_epoch"])
    logdir = tempfile.mkdtemp(prefix=f"fsrl_{args.algo}_")
    logger = BaseLogger(log_dir=logdir, log_txt=True, name=f"seed{args.seed}")
    agent = agent_class(env=demo_env, logger=logger, **kwargs)
    torch.set_num_threads(args.threads)

    worker = {"ShmemVectorEnv": ShmemVectorEnv, "SubprocVectorEnv": SubprocVectorEnv,
              "DummyVectorEnv": DummyVectorEnv}[cfg["worker"]]
    training_num = min(cfg["training_num"], cfg["episode_per_collect"])
    train_envs = worker([lambda: gym.make(args.task) for _ in range(training_num)])
    train_envs.seed(args.seed)

    # ---- timed: what OnpolicyAgent.learn does, without test envs or checkpoints ----------
    start = time.perf_counter()
    agent.policy.train()
    buffer = VectorReplayBuffer(cfg["buffer_size"], len(train_envs))
    collector = FastCollector(agent.policy, train_envs, buffer, exploration_noise=True)
    trainer = OnpolicyTrainer(
        policy=agent.policy, train_collector=collector, test_collector=None,
        max_epoch=plan["epochs"], batch_size=cfg["batch_size"], cost_limit=agent.cost_limit,
        step_per_epoch=plan["step_per_epoch"], repeat_per_collect=cfg["repeat_per_collect"],
        episode_per_test=cfg["testing_num"], episode_per_collect=cfg["episode_per_collect"],
        stop_fn=None, logger=logger, resume_from_log=False, save_model_interval=10**9,
        verbose=False, show_progress=False)
    last: dict = {}
    for _epoch, stats, _info in trainer:
        logger.store(tab="train", cost_limit=agent.cost_limit)
        last = dict(stats)
    wall_s = time.perf_counter() - start
    # ----------------------------------------------------------------------------------------
    env_steps = int(trainer.env_step)
    train_envs.close()

    evaluation = {}
    for mode, set_mode in (("deterministic", agent.policy.eval),
                           ("stochastic", agent.policy.train)):
        env = DummyVectorEnv([lambda: gym.make(args.task)])
        env.seed(args.seed + 10_000)
        set_mode()
        result = FastCollector(agent.policy, env).collect(n_episode=args.eval_episodes)
        evaluation[mode] = {"return": float(np.mean(result["rew"])),
                            "cost": float(result["cost"]), "episodes": int(result["n/ep"])}
        env.close()

    out = {"library": "fsrl", "algo": args.algo, "agent": agent_name, "task": args.task,
           "seed": args.seed, "steps": env_steps, "steps_requested": args.steps,
           "wall_s": wall_s, "steps_per_s": env_steps / wall_s, "threads": args.threads,
           "train_final_return": float(last.get("train/reward", float("nan"))),
           "train_final_cost": float(last.get("train/cost", float("nan"))),
           "deterministic": evaluation["deterministic"],
           "stochastic": evaluation["stochastic"], "schedule": plan,
           "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
           "torch_version": torch.__version__,
           "fsrl_version": getattr(fsrl, "__version__", "unknown"), "logdir": logdir}
    emit(out, args.out)
    return out


if __name__ == "__main__":
    main()
