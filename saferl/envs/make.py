"""``make``: one front door from an id, a ``gymnasium.Env`` or a factory to a saferl ``VecEnv``.

A string id is resolved in this order:

1. saferl's native pure-JAX tasks (``saferl/BallCircle-v0``, ...): a
   :class:`~saferl.envs.native.NativeVecEnv`; keyword arguments go to the task (e.g.
   ``speed_limit``).
2. Bullet-Safety-Gym ids ``Safety{Ball,Car,Drone,Ant}{Circle,Run,Gather,Reach,Push}-v0``
   (importing ``bullet_safety_gym`` registers them): a :class:`~saferl.envs.gym.GymVecEnv`;
   without the ``saferl[bullet]`` extra, :class:`MissingBackendError` naming it.
3. Safety-Gymnasium ids (``SafetyPointGoal1-v0``, ``SafetyHopperVelocity-v1``, ...): built with
   Safety-Gymnasium when it is installed, else :class:`MissingBackendError` with the
   ``pip install`` command.
4. Any other id registered with gymnasium (or a ``"module:Id"`` string): a ``GymVecEnv``, whose
   probing step raises :class:`~saferl.envs.core.EnvError` if the env reports no cost.

An id that matches none of these raises :class:`UnknownEnvError`. It subclasses ``EnvError``
(and so ``ValueError``) rather than ``KeyError``, because ``KeyError`` quotes its message when
printed, which would garble the one-sentence explanation; ``except EnvError`` catches every
environment problem, this one included.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import gymnasium

from saferl.envs.core import EnvError, VecEnv
from saferl.envs.gym import (
    BULLET_ID,
    build_env,
    import_bullet_safety_gym,
)
from saferl.envs.native import NATIVE_TASKS
from saferl.envs.resolve import (
    UnknownEnvError,
    list_envs,
    make_local,
    unknown_env,
    validate_num_envs,
)
from saferl.envs.safety_gymnasium import import_safety_gymnasium, is_safety_gymnasium_id
from saferl.envs.workers import SubprocVecEnv

__all__ = ["UnknownEnvError", "list_envs", "make", "make_local", "make_single", "render_kwargs",
           "validate_num_envs"]

def make_single(env_id: str, **kwargs: Any) -> gymnasium.Env:
    """Build one raw ``gymnasium.Env`` for a non-native id (used by ``check_env``).

    Args:
        env_id: A Bullet-Safety-Gym, Safety-Gymnasium or gymnasium id.
        **kwargs: Passed to the backend's ``make``.

    Returns:
        The environment (a Safety-Gymnasium env keeps its 6-tuple ``step``).

    Raises:
        MissingBackendError: If the id's backend is not installed.
        UnknownEnvError: If no backend knows the id.
    """
    if BULLET_ID.match(env_id):
        import_bullet_safety_gym(env_id)
    if is_safety_gymnasium_id(env_id) and env_id not in gymnasium.registry:
        backend = import_safety_gymnasium(env_id)
        if "Gymnasium-" not in env_id:
            return backend.make(env_id, **kwargs)
    if env_id in gymnasium.registry or ":" in env_id:
        return build_env(lambda: gymnasium.make(env_id, **kwargs), seed=0)
    raise unknown_env(env_id)


def make(env: str | gymnasium.Env | Callable[[], gymnasium.Env], num_envs: int = 1,
         seed: int = 0, workers: int = 1, **kwargs: Any) -> VecEnv:
    """Build a batched CMDP from an id, a ``gymnasium.Env`` or a factory.

    Args:
        env: An id (see the module docstring for the resolution order), one
            ``gymnasium.Env`` (then ``num_envs`` must be 1), or a callable returning a fresh
            ``gymnasium.Env`` per call.
        num_envs: Number of copies, ≥ 1.
        seed: Copy ``i`` starts from ``seed + i`` (native tasks too: key ``PRNGKey(seed + i)``).
        workers: For host environments, step the copies in this many worker processes
            (:class:`~saferl.envs.workers.SubprocVecEnv`; the same numbers as in-process, on
            several cores). ``env`` must then be an id or a picklable factory. Native tasks
            accept only 1: they run inside XLA.
        **kwargs: For native ids, the task's parameters (e.g. ``speed_limit=2.0``); otherwise
            :class:`~saferl.envs.gym.GymVecEnv` options (``num_costs``, ``cost_names``,
            ``max_episode_steps``, ``env_id``) and, for ids, the backend ``make``'s arguments.

    Returns:
        A :class:`~saferl.envs.core.VecEnv`, reset with ``seed``.

    Raises:
        EnvError: If ``num_envs`` < 1 or the env breaks the CMDP contract (e.g. no costs).
        UnknownEnvError: If the id is unknown (the message suggests the nearest ids).
        MissingBackendError: If the id belongs to a backend that is not installed.

    Example:
        >>> env = make("saferl/BallCircle-v0", num_envs=8, seed=0)
        >>> env.spec.num_costs
        1
    """
    num_envs = validate_num_envs(num_envs)
    if workers != 1:
        if isinstance(env, str) and env.startswith("saferl/") and env not in NATIVE_TASKS:
            raise unknown_env(env)  # a mistyped native id: suggest the nearest, as with 1 worker
        if isinstance(env, str) and env in NATIVE_TASKS:
            raise EnvError(f"workers={workers!r}: native tasks like {env!r} run inside XLA, not "
                           f"in worker processes; leave workers at 1.")
        if isinstance(env, gymnasium.Env):
            raise EnvError("workers > 1 needs an env id or a picklable factory, not an env "
                           "object (a process cannot share it).")
        if isinstance(env, str) and BULLET_ID.match(env):
            import_bullet_safety_gym(env)  # fail here, in one sentence, not inside a worker
        return SubprocVecEnv(env, num_envs=num_envs, seed=seed, workers=workers, **kwargs)
    return make_local(env, num_envs=num_envs, seed=seed, **kwargs)


def render_kwargs(env_id: str) -> dict[str, Any]:
    """The ``make`` keyword arguments under which ``env_id``'s copies render RGB frames.

    Native tasks and environments of the older API whose ``render`` takes the mode as an
    argument (Bullet-Safety-Gym) need none: :meth:`~saferl.envs.gym.GymVecEnv.render` asks
    them for ``"rgb_array"`` frames. Safety-Gymnasium ids, and gymnasium ids whose constructor
    accepts ``render_mode``, get ``render_mode="rgb_array"``.

    Args:
        env_id: An id that :func:`make` accepts.

    Returns:
        Keyword arguments to add to :func:`make`'s (empty when none are needed).
    """
    if env_id in NATIVE_TASKS or env_id.startswith("saferl/") or BULLET_ID.match(env_id):
        return {}
    if is_safety_gymnasium_id(env_id):
        return {"render_mode": "rgb_array"}
    if env_id not in gymnasium.registry:
        return {}
    spec = gymnasium.spec(env_id)
    if "render_mode" in (spec.kwargs or {}):
        return {}
    creator = spec.entry_point
    if isinstance(creator, str):
        creator = gymnasium.envs.registration.load_env_creator(creator)
    try:
        parameters = inspect.signature(creator).parameters.values()
    except (TypeError, ValueError):  # a builtin or C extension: nothing to inspect
        return {}
    accepts = any(p.name == "render_mode" or p.kind is inspect.Parameter.VAR_KEYWORD
                  for p in parameters)
    return {"render_mode": "rgb_array"} if accepts else {}
