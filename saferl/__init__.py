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

import importlib
from typing import Any

# The public names are imported on first use (PEP 562): ``import saferl`` and the ``saferl``
# command start without loading JAX, so that the command can install its Ctrl-C handling before
# the heavy imports (JAX's gc callbacks swallow a KeyboardInterrupt raised inside them).
_EXPORTS = {
    "Policy": "saferl.policy", "load": "saferl.policy",
    "TrainResult": "saferl.training", "train": "saferl.training",
    "evaluate": "saferl.evaluation", "evaluate_versatile": "saferl.versatile",
    "check_env": "saferl.envs", "list_envs": "saferl.envs", "make": "saferl.envs",
    "enable_compilation_cache": "saferl.core.precompile",
}

__all__ = ["Policy", "TrainResult", "__version__", "check_env", "enable_compilation_cache",
           "evaluate", "evaluate_versatile", "list_envs", "load", "make", "train"]


def __getattr__(name: str) -> Any:
    """Import a public name (or a subpackage such as ``saferl.envs``) on first access."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module 'saferl' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
