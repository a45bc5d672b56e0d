"""Environments: the batched CMDP interface and every way to build one.

* :func:`make` — an id, a ``gymnasium.Env`` or a factory → a :class:`VecEnv`;
* :func:`list_envs` — the known ids with one-line descriptions;
* :func:`check_env` — validate a custom environment with clear one-sentence errors;
* :class:`GymVecEnv` (any gymnasium env with costs, Bullet-Safety-Gym, Safety-Gymnasium) and
  :class:`NativeVecEnv` (saferl's pure-JAX tasks); :class:`SubprocVecEnv` steps host copies in
  worker processes (``make(..., workers=k)``).
"""

from __future__ import annotations

from saferl.envs.checker import EnvCheckWarning, check_env
from saferl.envs.core import EnvError, EnvSpec, NonFiniteError, StepResult, VecEnv, check_finite
from saferl.envs.gym import GymVecEnv
from saferl.envs.make import UnknownEnvError, list_envs, make
from saferl.envs.native import NativeVecEnv
from saferl.envs.safety_gymnasium import MissingBackendError, is_safety_gymnasium_id
from saferl.envs.workers import SubprocVecEnv

__all__ = [
    "EnvCheckWarning",
    "EnvError",
    "EnvSpec",
    "GymVecEnv",
    "MissingBackendError",
    "NativeVecEnv",
    "NonFiniteError",
    "StepResult",
    "SubprocVecEnv",
    "UnknownEnvError",
    "VecEnv",
    "check_env",
    "check_finite",
    "is_safety_gymnasium_id",
    "list_envs",
    "make",
]
