"""Environment ids: what saferl knows (:func:`list_envs`) and how an id becomes a ``VecEnv`` in
this process (:func:`make_local`; :func:`saferl.envs.make.make` adds worker processes).

Worker processes import this module, not :mod:`saferl.envs.make`, so neither needs the other.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np

from saferl.envs.core import EnvError, VecEnv
from saferl.envs.gym import (
    BULLET_ID,
    BULLET_INSTALL_HINT,
    GymVecEnv,
    bullet_installed,
    import_bullet_safety_gym,
)
from saferl.envs.native import NATIVE_TASKS, NativeVecEnv, make_task
from saferl.envs.safety_gymnasium import is_safety_gymnasium_id, make_safety_gymnasium

# Episode length, observation and action sizes as measured on bullet-safety-gym 1.4.0.
_BULLET_SIZES: dict[str, dict[str, tuple[int, int, int]]] = {
    "Circle": {"Ball": (200, 8, 2), "Car": (300, 8, 2), "Drone": (300, 18, 4),
               "Ant": (500, 34, 8)},
    "Run": {"Ball": (100, 7, 2), "Car": (200, 7, 2), "Drone": (200, 17, 4), "Ant": (200, 33, 8)},
    "Gather": {"Ball": (250, 39, 2), "Car": (500, 39, 2), "Drone": (500, 49, 4),
               "Ant": (1000, 65, 8)},
}
_RUN_SPEED_LIMIT = {"Ball": 2.5, "Car": 1.5, "Drone": 1.5, "Ant": 1.5}


class UnknownEnvError(EnvError):
    """No backend knows the environment id; the message suggests the nearest known ids."""


def _bullet_description(task: str, agent: str, installed: bool) -> str:
    steps, obs_dim, act_dim = _BULLET_SIZES[task][agent]
    what = {
        "Circle": "runs along a circle of radius 7, cost 1 per step outside |x| ≤ 6",
        "Run": (f"runs along +x, cost 1 per step outside |y| ≤ 2 or above "
                f"{_RUN_SPEED_LIMIT[agent]} m/s"),
        "Gather": "collects 8 apples (+10 each), cost 1 per step touching one of 8 bombs",
    }[task]
    extra = "" if installed else f" (not installed: {BULLET_INSTALL_HINT})"
    return (f"Bullet-Safety-Gym{extra}: {agent.lower()} {what} ({steps} steps, obs {obs_dim}, "
            f"act {act_dim})")


def list_envs() -> dict[str, str]:
    """The environment ids saferl knows, each with a one-line description.

    Covers saferl's native pure-JAX tasks and the Bullet-Safety-Gym Circle, Run and Gather tasks
    for the ball, car, drone and ant (Reach and Push also work with :func:`make` but are not
    benchmark tasks). Safety-Gymnasium ids and any gymnasium id with costs work too, but are
    not listed. Without the ``saferl[bullet]`` extra the Bullet ids are still listed, and their
    descriptions say so and give the ``pip install`` command.

    Returns:
        A dict from id to description, native tasks first.
    """
    envs = {env_id: f"saferl native (pure JAX): {description}"
            for env_id, (_, description) in NATIVE_TASKS.items()}
    installed = bullet_installed()
    for task in _BULLET_SIZES:
        for agent in _BULLET_SIZES[task]:
            envs[f"Safety{agent}{task}-v0"] = _bullet_description(task, agent, installed)
    return envs


def time_limit(env_id: str, env_kwargs: dict[str, Any] | None = None) -> int | None:
    """The time limit of a task's episodes, where saferl knows it without building the task.

    Native tasks (with their ``env_kwargs``, which may change it) and the Bullet Circle, Run and
    Gather tasks; ``None`` for any other id, or for ``env_kwargs`` the native task refuses
    (building the environment reports those).
    """
    if env_id in NATIVE_TASKS:
        try:
            return make_task(env_id, **(env_kwargs or {})).spec.max_episode_steps
        except (EnvError, TypeError, ValueError):
            return None
    match = BULLET_ID.match(env_id)
    if match and match.group(2) in _BULLET_SIZES:
        return _BULLET_SIZES[match.group(2)][match.group(1)][0]
    return None


def check_env_id(env_id: str, env_kwargs: dict[str, Any] | None = None) -> None:
    """Refuse, without building anything heavy, an id no backend could know: a ``saferl/`` id
    that is not a native task (or ``env_kwargs`` its task refuses), or a plain id gymnasium has
    not registered. Bullet-Safety-Gym ids (by their pattern), ids of a module
    (``pkg.mod:Name``) and Safety-Gymnasium ids are left to :func:`make_local`, which imports
    them.

    Raises:
        UnknownEnvError: The id is unknown (the message suggests the nearest ids).
        EnvError: A native task refuses ``env_kwargs`` (its own sentence).
    """
    if env_id in NATIVE_TASKS:
        make_task(env_id, **(env_kwargs or {}))
        return
    if env_id.startswith("saferl/"):
        raise unknown_env(env_id)
    if (BULLET_ID.match(env_id) or ":" in env_id or is_safety_gymnasium_id(env_id)
            or env_id in gymnasium.registry):
        return
    raise unknown_env(env_id)


def unknown_env(env_id: str) -> UnknownEnvError:
    """The error for an id no backend knows, suggesting the nearest known ids."""
    candidates = list(list_envs())
    candidates += [key for key in gymnasium.registry if key not in candidates]
    close = difflib.get_close_matches(env_id, candidates, n=3, cutoff=0.6)
    if close:
        guess = " or ".join(repr(name) for name in close)
        return UnknownEnvError(
            f"Unknown environment id {env_id!r}; did you mean {guess}? Run `saferl list` to see "
            f"the available ids.")
    return UnknownEnvError(
        f"Unknown environment id {env_id!r}; run `saferl list` to see the available ids, or "
        f"pass a gymnasium.Env or a factory that builds one.")


def validate_num_envs(num_envs: Any) -> int:
    """Check that ``num_envs`` is an integer ≥ 1.

    Args:
        num_envs: The requested number of copies.

    Returns:
        ``num_envs`` as an ``int``.

    Raises:
        EnvError: If it is not an integer or is below 1.
    """
    if isinstance(num_envs, bool) or not isinstance(num_envs, int | np.integer) or num_envs < 1:
        raise EnvError(f"num_envs must be an integer >= 1 (one per environment copy); got "
                       f"{num_envs!r}.")
    return int(num_envs)



def make_local(env: str | gymnasium.Env | Callable[[], gymnasium.Env], num_envs: int = 1,
               seed: int = 0, **kwargs: Any) -> VecEnv:
    """:func:`saferl.envs.make.make` in this process (what each worker process runs).

    Resolves an id in the order :mod:`saferl.envs.make` describes; see
    :func:`~saferl.envs.make.make` for the arguments.
    """
    num_envs = validate_num_envs(num_envs)
    if not isinstance(env, str):
        return GymVecEnv(env, num_envs=num_envs, seed=seed, **kwargs)
    if env in NATIVE_TASKS:
        return NativeVecEnv(make_task(env, **kwargs), num_envs=num_envs, seed=seed)
    if env.startswith("saferl/"):
        raise unknown_env(env)
    if BULLET_ID.match(env):
        import_bullet_safety_gym(env)
        if env in gymnasium.registry:
            return GymVecEnv(env, num_envs=num_envs, seed=seed, **kwargs)
        raise unknown_env(env)
    if is_safety_gymnasium_id(env):
        return make_safety_gymnasium(env, num_envs=num_envs, seed=seed, **kwargs)
    if env in gymnasium.registry:
        return GymVecEnv(env, num_envs=num_envs, seed=seed, **kwargs)
    if ":" in env:
        return _make_from_module(env, num_envs=num_envs, seed=seed, **kwargs)
    raise unknown_env(env)


def _make_from_module(env: str, num_envs: int, seed: int, **kwargs: Any) -> VecEnv:
    """A ``module:EnvName-vN`` id: gymnasium imports the module, which registers the env.

    Raises:
        UnknownEnvError: If the module cannot be imported or does not register that name.
    """
    module, name = env.split(":", 1)
    try:
        return GymVecEnv(env, num_envs=num_envs, seed=seed, **kwargs)
    except ModuleNotFoundError as error:
        # gymnasium re-raises the import's error without a name; the missing module is its cause's
        missing = getattr(error.__cause__, "name", None) or error.name
        if missing is None or not (module == missing or module.startswith(missing + ".")):
            raise  # the module exists but one of its own imports is missing: not an id problem
        raise UnknownEnvError(
            f"Environment id {env!r}: no module named {module!r} to import (the part before "
            f"':' must be an importable module that registers {name!r}); run `saferl list` "
            f"for the built-in ids.") from None
    except gymnasium.error.UnregisteredEnv as error:
        raise UnknownEnvError(f"Environment id {env!r}: importing {module!r} did not register "
                              f"{name!r} ({str(error).rstrip('.')}).") from None
