"""saferl's pure-JAX tasks: Circle and Run with a ball or a car (Bullet-Safety-Gym formulas).

Ids: ``saferl/BallCircle-v0``, ``saferl/CarCircle-v0``, ``saferl/BallRun-v0``,
``saferl/CarRun-v0``. Each is also registered with gymnasium, so ``gymnasium.make(id)`` gives a
single-copy ``gymnasium.Env`` with costs in ``info``.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import Any

import gymnasium

from saferl.envs.core import EnvError
from saferl.envs.native.base import (
    EpisodeState,
    EpisodeStep,
    NativeGymEnv,
    NativeTask,
    NativeVecEnv,
    batch_reset,
    batch_step,
    episode_reset,
    episode_step,
)
from saferl.envs.native.circle import Circle
from saferl.envs.native.run import Run

NATIVE_TASKS: dict[str, tuple[Callable[..., NativeTask], str]] = {
    "saferl/BallCircle-v0": (lambda **kw: Circle(agent="ball", **kw),
                             "ball runs clockwise along a circle, cost outside |x| ≤ 6 "
                             "(200 steps)"),
    "saferl/CarCircle-v0": (lambda **kw: Circle(agent="car", **kw),
                            "car runs clockwise along a circle, cost outside |x| ≤ 6 (300 steps)"),
    "saferl/BallRun-v0": (lambda **kw: Run(agent="ball", **kw),
                          "ball runs along +x, cost outside |y| ≤ 2 or above 2.5 m/s (100 steps)"),
    "saferl/CarRun-v0": (lambda **kw: Run(agent="car", **kw),
                         "car runs along +x, cost outside |y| ≤ 2 or above 1.5 m/s (200 steps)"),
}


def task_parameters(env_id: str) -> list[str]:
    """The keyword arguments a native task accepts (its dataclass fields but ``agent``)."""
    return [f.name for f in dataclasses.fields(NATIVE_TASKS[env_id][0]())
            if f.init and f.name != "agent"]


def make_task(env_id: str, **kwargs: Any) -> NativeTask:
    """Build a native task by id; ``kwargs`` go to the task's dataclass (e.g. ``speed_limit``).

    Raises:
        EnvError: A keyword the task does not take (the message suggests the nearest one and
            lists the accepted ones).
    """
    accepted = task_parameters(env_id)
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise EnvError(f"env_kwargs key {key!r} is not a parameter of {env_id!r}.{hint} "
                           f"Accepted: {', '.join(accepted)}.")
    return NATIVE_TASKS[env_id][0](**kwargs)


def _gym_entry_point(env_id: str) -> Callable[..., gymnasium.Env]:
    def make(render_mode: str | None = None, **kwargs: Any) -> gymnasium.Env:
        return NativeGymEnv(make_task(env_id, **kwargs), render_mode=render_mode)
    return make


def register_with_gymnasium() -> None:
    """Register every native id with gymnasium (idempotent)."""
    for env_id in NATIVE_TASKS:
        if env_id not in gymnasium.registry:
            task = make_task(env_id)
            gymnasium.register(id=env_id, entry_point=_gym_entry_point(env_id),
                               max_episode_steps=task.spec.max_episode_steps)


register_with_gymnasium()

__all__ = [
    "NATIVE_TASKS", "Circle", "EpisodeState", "EpisodeStep", "NativeGymEnv", "NativeTask",
    "NativeVecEnv", "Run", "batch_reset", "batch_step", "episode_reset", "episode_step",
    "make_task", "register_with_gymnasium",
]
