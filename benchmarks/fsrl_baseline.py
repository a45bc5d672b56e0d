"""PyTorch baseline for the speed benchmark: FSRL's CVPO / SAC-Lag on Bullet-Safety-Gym.

Standalone: run it with the FSRL virtual environment, *not* with saferl's environment
(it never imports saferl)::

    /work/fsrl-venv/bin/python benchmarks/fsrl_baseline.py --algo cvpo --steps 20000 \
        --threads 1 --out /tmp/fsrl_cvpo.json

The venv is pinned in ``benchmarks/fsrl_requirements.txt`` (fast-safe-rl 0.1.0, tianshou
0.5.1, torch 2.13.0 CPU, gymnasium 0.28.1, bullet-safety-gym 1.4.0, numpy<2, setuptools<81
for wandb 0.14's ``pkg_resources``).

What it does
------------
* Builds FSRL's own agent (``fsrl.agent.CVPOAgent`` / ``fsrl.agent.SACLagAgent``) with the
  defaults of FSRL's config dataclasses (``fsrl/config/cvpo_cfg.py`` / ``sacl_cfg.py``,
  ``TrainCfg``), overridden by the command-line options that are given.
* Trains with exactly the same machinery as ``OffpolicyAgent.learn``
  (``fsrl/agent/base_agent.py``): a ``VectorReplayBuffer``, FSRL's ``FastCollector`` and
  ``OffpolicyTrainer``; the loop is reproduced here only to keep handles on the trainer
  (env-step and gradient-step counters, per-epoch training statistics). No test episodes
  are run during training (``test_envs=None``), no checkpoints are saved, and the logger is
  FSRL's ``BaseLogger`` writing ``progress.txt`` to a temp dir (no wandb / tensorboard).
* FSRL collects **whole episodes only** (``FastCollector.collect(n_episode=...)``; there is
  no ``step_per_collect``): each collect gathers ``episode_per_collect`` episodes on
  ``min(training_num, episode_per_collect)`` envs (the rule of FSRL's example scripts), then
  does ``round(update_per_step * steps_collected)`` gradient steps and one Lagrange /
  dual update. ``--step-per-collect`` is accepted and converted to
  ``episode_per_collect = step_per_collect / max_episode_steps`` (it must divide evenly).
  ``--steps`` is rounded up to a multiple of the collect size (a warning is printed and
  ``steps_requested`` is kept in the JSON); ``steps`` in the JSON is the number of env steps
  the trainer actually counted.
* ``wall_s`` is ``time.perf_counter`` around buffer/collector/trainer construction and the
  whole training loop (what ``agent.learn`` does); imports, env construction and agent
  construction are excluded. It is split into ``buffer_init_s`` (tianshou's
  ``VectorReplayBuffer`` numba-compiles its index helpers when built: a one-off of several
  seconds), ``initial_reset_s`` (``FastCollector()`` resets every training env once) and
  ``loop_s`` (the epochs; ``steps_per_s_loop`` uses it). ``collect_s`` / ``update_s`` are
  FSRL's own split of the loop (``gather_update_info``; env resets after each collect and
  the Lagrange/dual bookkeeping count as update time). The final policy is then evaluated
  (deterministic, 10 episodes, one env, like FSRL's examples) outside the timed region.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings

WORKERS = {"shmem": "ShmemVectorEnv", "subproc": "SubprocVectorEnv", "dummy": "DummyVectorEnv"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--algo", choices=["cvpo", "sac_lag"], required=True)
    p.add_argument("--task", default="SafetyBallCircle-v0")
    p.add_argument("--steps", type=int, required=True, help="total training env steps")
    p.add_argument("--seed", type=int, default=0)
    # None below = FSRL's config default for the chosen algorithm (fsrl/config/*_cfg.py)
    p.add_argument("--hidden", type=int, nargs="+", default=None, help="hidden sizes")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--update-per-step", type=float, default=None)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--episode-per-collect", type=int, default=None)
    g.add_argument("--step-per-collect", type=int, default=None,
                   help="converted to episodes; must be a multiple of max_episode_steps")
    p.add_argument("--training-num", type=int, default=None,
                   help="envs; FSRL uses min(training_num, episode_per_collect)")
    p.add_argument("--step-per-epoch", type=int, default=None,
                   help="epoch length (stats granularity); adjusted to divide --steps")
    p.add_argument("--buffer-size", type=int, default=None)
    p.add_argument("--cost-limit", type=float, default=10.0)
    p.add_argument("--gamma", type=float, default=None)
    p.add_argument("--tau", type=float, default=None)
    p.add_argument("--n-step", type=int, default=None)
    p.add_argument("--actor-lr", type=float, default=None)
    p.add_argument("--critic-lr", type=float, default=None)
    p.add_argument("--sample-act-num", type=int, default=None, help="cvpo: K sampled actions")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--worker", choices=sorted(WORKERS), default="shmem",
                   help="tianshou vector env for the training envs (FSRL default: shmem)")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--out", default=None, help="JSON output path")
    p.add_argument("--verbose", action="store_true", help="print FSRL's per-epoch table")
    return p.parse_args(argv)


def fsrl_defaults(algo: str) -> dict:
    """FSRL's own config dataclass defaults (fsrl/config/{cvpo,sacl}_cfg.py: TrainCfg)."""
    from dataclasses import asdict

    if algo == "cvpo":
        from fsrl.config.cvpo_cfg import TrainCfg
    else:
        from fsrl.config.sacl_cfg import TrainCfg
    return asdict(TrainCfg())


def build_settings(args: argparse.Namespace, max_episode_steps: int) -> dict:
    cfg = fsrl_defaults(args.algo)
    s: dict = {}
    s["hidden_sizes"] = list(args.hidden) if args.hidden else list(cfg["hidden_sizes"])
    def pick(name: str, key: str) -> object:
        value = getattr(args, name)
        return value if value is not None else cfg[key]

    s["batch_size"] = pick("batch_size", "batch_size")
    s["update_per_step"] = pick("update_per_step", "update_per_step")
    s["buffer_size"] = pick("buffer_size", "buffer_size")
    s["gamma"] = pick("gamma", "gamma")
    s["tau"] = pick("tau", "tau")
    s["n_step"] = pick("n_step", "n_step")
    s["actor_lr"] = pick("actor_lr", "actor_lr")
    s["critic_lr"] = pick("critic_lr", "critic_lr")
    s["cost_limit"] = args.cost_limit
    s["threads"] = args.threads
    s["worker"] = WORKERS[args.worker]
    s["max_episode_steps"] = max_episode_steps

    if args.step_per_collect is not None:
        if args.step_per_collect % max_episode_steps:
            sys.exit(f"--step-per-collect {args.step_per_collect} is not a multiple of the "
                     f"episode length {max_episode_steps}: FSRL only collects whole episodes")
        s["episode_per_collect"] = args.step_per_collect // max_episode_steps
    else:
        s["episode_per_collect"] = pick("episode_per_collect", "episode_per_collect")
    s["training_num_requested"] = pick("training_num", "training_num")
    s["training_num"] = min(s["training_num_requested"], s["episode_per_collect"])
    s["step_per_collect"] = s["episode_per_collect"] * max_episode_steps  # fixed-length eps
    s["updates_per_collect"] = round(s["update_per_step"] * s["step_per_collect"])

    # exact step budget: whole collects, epochs made of whole collects dividing the total
    n_collects = max(1, math.ceil(args.steps / s["step_per_collect"]))
    s["steps_requested"] = args.steps
    s["steps_planned"] = n_collects * s["step_per_collect"]
    if s["steps_planned"] != args.steps:
        print(f"[fsrl_baseline] warning: --steps {args.steps} is not a multiple of the collect "
              f"size {s['step_per_collect']}; training {s['steps_planned']} steps",
              file=sys.stderr)
    spe_wanted = args.step_per_epoch if args.step_per_epoch is not None else cfg["step_per_epoch"]
    k = max(1, min(n_collects, spe_wanted // s["step_per_collect"]))
    while n_collects % k:
        k -= 1
    s["step_per_epoch"] = k * s["step_per_collect"]
    s["epochs"] = n_collects // k

    if args.algo == "cvpo":
        s["sample_act_num"] = pick("sample_act_num", "sample_act_num")
        for key in ("estep_iter_num", "estep_kl", "estep_dual_max", "estep_dual_lr",
                    "mstep_iter_num", "mstep_kl_mu", "mstep_kl_std", "mstep_dual_max",
                    "mstep_dual_lr", "double_critic", "conditioned_sigma", "unbounded",
                    "last_layer_scale", "deterministic_eval", "action_scaling",
                    "action_bound_method"):
            s[key] = cfg[key]
    else:
        if args.sample_act_num is not None:
            print("[fsrl_baseline] --sample-act-num is ignored for sac_lag", file=sys.stderr)
        for key in ("auto_alpha", "alpha_lr", "alpha", "use_lagrangian", "lagrangian_pid",
                    "rescaling", "conditioned_sigma", "unbounded", "last_layer_scale",
                    "deterministic_eval", "action_scaling", "action_bound_method"):
            s[key] = list(cfg[key]) if isinstance(cfg[key], tuple) else cfg[key]
    s["deterministic_eval"] = True  # eval is deterministic for both (FSRL configs: True)
    return s


def make_agent(algo: str, env, logger, s: dict, seed: int):
    from fsrl.agent import CVPOAgent, SACLagAgent

    common = dict(env=env, logger=logger, cost_limit=s["cost_limit"], device="cpu",
                  thread=s["threads"], seed=seed, actor_lr=s["actor_lr"],
                  critic_lr=s["critic_lr"], gamma=s["gamma"], n_step=s["n_step"],
                  tau=s["tau"], hidden_sizes=tuple(s["hidden_sizes"]),
                  conditioned_sigma=s["conditioned_sigma"], unbounded=s["unbounded"],
                  last_layer_scale=s["last_layer_scale"],
                  deterministic_eval=s["deterministic_eval"],
                  action_scaling=s["action_scaling"],
                  action_bound_method=s["action_bound_method"], lr_scheduler=None)
    if algo == "cvpo":
        return CVPOAgent(
            **common, estep_iter_num=s["estep_iter_num"], estep_kl=s["estep_kl"],
            estep_dual_max=s["estep_dual_max"], estep_dual_lr=s["estep_dual_lr"],
            sample_act_num=s["sample_act_num"], mstep_iter_num=s["mstep_iter_num"],
            mstep_kl_mu=s["mstep_kl_mu"], mstep_kl_std=s["mstep_kl_std"],
            mstep_dual_max=s["mstep_dual_max"], mstep_dual_lr=s["mstep_dual_lr"],
            double_critic=s["double_critic"])
    return SACLagAgent(
        **common, auto_alpha=s["auto_alpha"], alpha_lr=s["alpha_lr"], alpha=s["alpha"],
        use_lagrangian=s["use_lagrangian"], lagrangian_pid=tuple(s["lagrangian_pid"]),
        rescaling=s["rescaling"])


def emit(record: dict, path: str | None) -> None:
    """Print a run's JSON record and write it to ``path`` (folders created) when given."""
    text = json.dumps(record, indent=2)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(text + "\n")
    print(text)


def main(argv=None) -> dict:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("WANDB_MODE", "disabled")  # fsrl imports wandb 0.14; never used

    import bullet_safety_gym  # noqa: F401  (registers the Safety* ids)
    import fsrl
    import gymnasium as gym
    import numpy as np
    import tianshou
    import torch
    from fsrl.data import FastCollector
    from fsrl.trainer import OffpolicyTrainer
    from fsrl.utils import BaseLogger
    from tianshou.data import VectorReplayBuffer
    from tianshou.env import DummyVectorEnv, ShmemVectorEnv, SubprocVectorEnv

    demo_env = gym.make(args.task)
    max_episode_steps = int(demo_env.spec.max_episode_steps)
    s = build_settings(args, max_episode_steps)

    logdir = tempfile.mkdtemp(prefix=f"fsrl_{args.algo}_")
    logger = BaseLogger(log_dir=logdir, log_txt=True, name=f"seed{args.seed}")

    agent = make_agent(args.algo, demo_env, logger, s, args.seed)  # seeds + set_num_threads
    torch.set_num_threads(args.threads)

    worker = {"ShmemVectorEnv": ShmemVectorEnv, "SubprocVectorEnv": SubprocVectorEnv,
              "DummyVectorEnv": DummyVectorEnv}[s["worker"]]
    train_envs = worker([lambda: gym.make(args.task) for _ in range(s["training_num"])])
    train_envs.seed(args.seed)

    # ---- timed region: what OffpolicyAgent.learn does (fsrl/agent/base_agent.py) ----------
    t0 = time.perf_counter()
    agent.policy.train()
    buffer = VectorReplayBuffer(s["buffer_size"], len(train_envs))
    t_reset = time.perf_counter()
    train_collector = FastCollector(agent.policy, train_envs, buffer, exploration_noise=True)
    t_loop = time.perf_counter()  # FastCollector() resets every training env once
    trainer = OffpolicyTrainer(
        policy=agent.policy, train_collector=train_collector, test_collector=None,
        max_epoch=s["epochs"], batch_size=s["batch_size"], cost_limit=agent.cost_limit,
        step_per_epoch=s["step_per_epoch"], update_per_step=s["update_per_step"],
        episode_per_test=2, episode_per_collect=s["episode_per_collect"],
        stop_fn=None, logger=logger, resume_from_log=False, save_model_interval=10**9,
        verbose=args.verbose, show_progress=False)
    last_stats: dict = {}
    for _epoch, epoch_stats, _info in trainer:
        logger.store(tab="train", cost_limit=agent.cost_limit)
        last_stats = dict(epoch_stats)
    t_end = time.perf_counter()
    wall_s = t_end - t0
    # -----------------------------------------------------------------------------------------
    env_steps = int(trainer.env_step)
    timing = trainer.gather_update_info()
    train_envs.close()

    # final policy, deterministic (policy.eval() + deterministic_eval=True), one env
    eval_env = DummyVectorEnv([lambda: gym.make(args.task)])
    eval_env.seed(args.seed + 10_000)
    agent.policy.eval()
    eval_collector = FastCollector(agent.policy, eval_env)
    t1 = time.perf_counter()
    res = eval_collector.collect(n_episode=args.eval_episodes)
    eval_s = time.perf_counter() - t1
    eval_env.close()

    lag = None
    if args.algo == "sac_lag" and agent.policy.lag_optims:
        lag = float(agent.policy.lag_optims[0].get_lag())

    out = {
        "algo": args.algo,
        "task": args.task,
        "seed": args.seed,
        "steps": env_steps,
        "steps_requested": args.steps,
        "wall_s": wall_s,
        "steps_per_s": env_steps / wall_s,
        # wall_s = buffer_init_s + initial_reset_s + loop_s
        "buffer_init_s": t_reset - t0,
        "initial_reset_s": t_loop - t_reset,
        "loop_s": t_end - t_loop,
        "steps_per_s_loop": env_steps / (t_end - t_loop),
        "collect_s": float(timing["train_collector_time"]),
        "update_s": float(timing["train_model_time"]),
        "gradient_steps": int(trainer.gradient_steps),
        "epochs": int(s["epochs"]),
        "train_final_return": float(last_stats.get("train/reward", float("nan"))),
        "train_final_cost": float(last_stats.get("train/cost", float("nan"))),
        "eval_return": float(np.mean(res["rew"])),
        "eval_cost": float(res["cost"]),
        "eval_len": float(np.mean(res["len"])),
        "eval_episodes": int(res["n/ep"]),
        "eval_s": eval_s,
        "final_lagrange_multiplier": lag,
        "settings": s,
        "torch_version": torch.__version__,
        "fsrl_version": getattr(fsrl, "__version__", "unknown"),
        "tianshou_version": tianshou.__version__,
        "gymnasium_version": gym.__version__,
        "logdir": logdir,
    }
    emit(out, args.out)
    return out


if __name__ == "__main__":
    main()
