"""saferl: safe reinforcement learning in JAX.

Policies that maximise reward while keeping expected costs under limits, during training and
after: the constrained MDP with a cost vector everywhere, Lagrangian and trust-region methods,
and saferl's own pure-JAX tasks.

Quick use::

    import saferl
    run = saferl.train("ppo_lag", "saferl/BallCircle-v0", cost_limit=10, steps=1_000_000)
    policy = saferl.load(run.run_dir)
    action = policy(observation)
"""

from __future__ import annotations

__version__ = "0.1.0"

from saferl.core.precompile import enable_compilation_cache
from saferl.envs import check_env, list_envs, make
from saferl.evaluation import evaluate
from saferl.policy import Policy, load
from saferl.training import TrainResult, train

__all__ = ["Policy", "TrainResult", "__version__", "check_env", "enable_compilation_cache",
           "evaluate", "list_envs", "load", "make", "train"]
