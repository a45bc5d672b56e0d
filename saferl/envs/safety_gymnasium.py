"""Safety-Gymnasium as an optional backend (imported lazily, only when one of its ids is used).

Safety-Gymnasium's own ``make`` builds envs whose ``step`` returns the 6-tuple
``(obs, reward, cost, terminated, truncated, info)``; :class:`~saferl.envs.gym.GymVecEnv` reads
that form directly (detected by the tuple's length), so no conversion wrapper is needed. Its
``...Gymnasium-v0`` twins (standard 5-tuple, cost in ``info["cost"]``) are built with
``gymnasium.make`` after importing the package, which registers them.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType
from typing import Any

from saferl.envs.core import MissingBackendError
from saferl.envs.gym import GymVecEnv

__all__ = ["MissingBackendError", "import_safety_gymnasium", "is_safety_gymnasium_id",
           "make_safety_gymnasium"]

INSTALL_HINT = "pip install safety-gymnasium"

_NAVIGATION_ID = re.compile(
    r"^Safety(Point|Car|Doggo|Racecar|Ant)"
    r"((Goal|Button|Push|Circle|Race)[0-2]|Run0)(Vision|Debug)?(Gymnasium)?-v0$")
_VELOCITY_ID = re.compile(
    r"^Safety(HalfCheetah|Hopper|Swimmer|Walker2d|Ant|Humanoid)Velocity(Gymnasium)?-v[01]$")


def is_safety_gymnasium_id(env_id: str) -> bool:
    """Whether ``env_id`` looks like a Safety-Gymnasium id (no import needed).

    Recognises the navigation tasks ``Safety{Point,Car,Doggo,Racecar,Ant}{Goal,Button,Push,
    Circle,Race}{0,1,2}-v0`` and ``Safety<Agent>Run0-v0`` (with optional ``Vision``/``Debug``
    and ``Gymnasium`` suffixes) and the velocity tasks
    ``Safety{HalfCheetah,Hopper,Swimmer,Walker2d,Ant,Humanoid}Velocity-v{0,1}``. Bullet-Safety-Gym
    ids such as ``SafetyCarCircle-v0`` (no level digit) do not match.

    Args:
        env_id: The id to test.

    Returns:
        ``True`` if the id has Safety-Gymnasium's form.
    """
    return bool(_NAVIGATION_ID.match(env_id) or _VELOCITY_ID.match(env_id))


def import_safety_gymnasium(env_id: str | None = None) -> ModuleType:
    """Import the ``safety_gymnasium`` package, or explain how to install it.

    Args:
        env_id: The id that needed it, for the message.

    Returns:
        The imported ``safety_gymnasium`` module.

    Raises:
        MissingBackendError: If the package is not installed.
    """
    try:
        return importlib.import_module("safety_gymnasium")
    except ImportError as exc:
        what = f"{env_id!r} is a Safety-Gymnasium id, but the" if env_id else "The"
        raise MissingBackendError(
            f"{what} optional package safety-gymnasium is not installed; install it with "
            f"`{INSTALL_HINT}`.") from exc


def make_safety_gymnasium(env_id: str, num_envs: int = 1, seed: int = 0,
                          **kwargs: Any) -> GymVecEnv:
    """Build ``num_envs`` copies of a Safety-Gymnasium task as a :class:`GymVecEnv`.

    Args:
        env_id: A Safety-Gymnasium id, e.g. ``"SafetyPointGoal1-v0"``.
        num_envs: Number of copies.
        seed: Copy ``i`` is reset with ``seed + i``.
        **kwargs: Passed to ``safety_gymnasium.make`` (or ``gymnasium.make`` for the
            ``...Gymnasium-v0`` twins), except ``num_costs``, ``cost_names`` and
            ``max_episode_steps``, which go to :class:`GymVecEnv`.

    Returns:
        The batched environment (one cost, ``"cost"``, for the standard tasks).

    Raises:
        MissingBackendError: If ``safety_gymnasium`` is not installed.
    """
    backend = import_safety_gymnasium(env_id)
    adapter_kwargs = {key: kwargs.pop(key) for key in ("num_costs", "cost_names",
                                                       "max_episode_steps") if key in kwargs}
    if "Gymnasium-" in env_id:
        import gymnasium

        def factory() -> Any:
            return gymnasium.make(env_id, **kwargs)
    else:
        def factory() -> Any:
            return backend.make(env_id, **kwargs)
    return GymVecEnv(factory, num_envs=num_envs, seed=seed, env_id=env_id, **adapter_kwargs)
