"""``check_env``: turn a malformed environment into one clear sentence before training starts.

Every failure raises :class:`~saferl.envs.core.EnvError` (or its subclass
:class:`~saferl.envs.core.NonFiniteError` for NaN/inf values) with one sentence that names what
is wrong and how to fix it. Things that are legal but suspicious (negative costs, a reset that
ignores its seed, observations outside the declared bounds) are reported with
``warnings.warn(..., EnvCheckWarning)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np

from saferl.envs.core import EnvError, NonFiniteError, StepResult, VecEnv
from saferl.envs.gym import (
    NO_COST_MESSAGE,
    build_env,
    observation_flattener,
    seeded_global_rng,
    uses_global_rng,
    validate_action_space,
)
from saferl.envs.make import make_single
from saferl.envs.native import NATIVE_TASKS, NativeVecEnv, make_task


class EnvCheckWarning(UserWarning):
    """Something legal but suspicious found by :func:`check_env`."""


def check_env(env: gymnasium.Env | Callable[[], gymnasium.Env] | str | VecEnv, *,
              num_steps: int = 50, seed: int = 0) -> None:
    """Check that an environment follows saferl's CMDP contract.

    For a gymnasium env (or a factory, or a non-native id) it checks: the observation space is a
    ``Box`` (or flattenable to one) of non-empty shape; the action space is a bounded ``Box``;
    ``reset`` returns ``(obs, info)`` with ``obs`` of the space's shape; ``step`` returns the
    gymnasium 5-tuple or Safety-Gymnasium's 6-tuple; the cost (``info["cost"]`` scalar or
    ``info["costs"]`` 1-D vector) is present with the same shape on every step and finite (a
    negative cost is only warned about); the reward is a finite scalar; ``terminated`` and
    ``truncated`` are bools; two resets with the same seed give the same first observation
    (warned about if not). For a saferl ``VecEnv`` (or a native id) it checks the spec and the
    shapes, dtypes and finiteness of ``reset`` and ``step``.

    Args:
        env: A ``gymnasium.Env``, a callable returning one, an env id, or a saferl ``VecEnv``.
        num_steps: How many random steps to take.
        seed: Seed for the resets and the random actions.

    Raises:
        EnvError: With one sentence naming the first problem found and its fix.
        NonFiniteError: If an observation, reward or cost is NaN or infinite.
    """
    if isinstance(env, str):

        if env in NATIVE_TASKS:
            _check_vec_env(NativeVecEnv(make_task(env), num_envs=2, seed=seed), num_steps, seed)
            return
        built = make_single(env)
        try:
            _check_gym_env(built, env, num_steps, seed)
        finally:
            built.close()
        return
    if isinstance(env, gymnasium.Env):
        _check_gym_env(env, _name(env), num_steps, seed)
        return
    if isinstance(env, VecEnv) and hasattr(env, "spec") and hasattr(env, "num_envs"):
        _check_vec_env(env, num_steps, seed)
        return
    if callable(env):
        built = build_env(env, seed)
        if not isinstance(built, gymnasium.Env):
            raise EnvError(
                f"The env factory returned {type(built).__name__}, not a gymnasium.Env; make "
                f"the factory return a fresh gymnasium.Env on every call.")
        try:
            _check_gym_env(built, _name(built), num_steps, seed)
        finally:
            built.close()
        return
    raise EnvError(
        f"check_env cannot check a {type(env).__name__}; pass a gymnasium.Env, a factory "
        f"returning one, an env id, or a saferl VecEnv.")


def _name(env: gymnasium.Env) -> str:
    spec = getattr(env, "spec", None)
    if spec is not None and getattr(spec, "id", None):
        return str(spec.id)
    return type(getattr(env, "unwrapped", env)).__name__


def _warn(message: str) -> None:
    warnings.warn(message, EnvCheckWarning, stacklevel=3)


def _check_observation(obs: Any, space: gymnasium.Space, where: str, env_id: str) -> None:
    if isinstance(space, gymnasium.spaces.Box):
        shape = np.shape(obs)
        if shape != space.shape:
            raise EnvError(
                f"Environment {env_id!r}: {where} returned an observation of shape {shape} but "
                f"observation_space has shape {space.shape}; make them agree.")
        try:
            values = np.asarray(obs, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise EnvError(
                f"Environment {env_id!r}: {where} returned a non-numeric observation; return a "
                f"float array.") from exc
        if not np.all(np.isfinite(values)):
            raise NonFiniteError(
                f"Environment {env_id!r}: {where} returned a NaN or infinite observation; check "
                f"the dynamics or clip the observation.")
        if not space.contains(values.astype(space.dtype)):
            _warn(f"Environment {env_id!r}: {where} returned an observation outside "
                  f"observation_space's bounds; widen the bounds if this is expected.")
        return
    if not space.contains(obs):
        raise EnvError(
            f"Environment {env_id!r}: {where} returned an observation that is not in "
            f"observation_space {space}; make the observation match the space.")
    if not np.all(np.isfinite(gymnasium.spaces.flatten(space, obs))):
        raise NonFiniteError(
            f"Environment {env_id!r}: {where} returned a NaN or infinite observation; check the "
            f"dynamics or clip the observation.")


def _checked_reset(env: gymnasium.Env, seed: int | None, env_id: str) -> Any:
    out = env.reset(seed=seed)
    if not isinstance(out, tuple):
        raise EnvError(
            f"Environment {env_id!r}: reset() returned only the observation; return "
            f"(observation, info) as gymnasium >= 0.26 requires, e.g. `return obs, {{}}`.")
    if len(out) != 2 or not isinstance(out[1], dict):
        raise EnvError(
            f"Environment {env_id!r}: reset() returned a {len(out)}-tuple that is not "
            f"(observation, info dict); return `obs, {{}}` from reset().")
    _check_observation(out[0], env.observation_space, "reset()", env_id)
    return out[0]


def _step_cost(out: tuple, env_id: str, step: int) -> tuple[np.ndarray, str]:
    """The step's cost as a float64 array (shape () or (m,)) and where it was found."""
    info = out[-1]
    if len(out) == 6:
        key, cost = "the step's cost (3rd item of the 6-tuple)", out[2]
    elif "costs" in info:
        key, cost = "info['costs']", info["costs"]
    elif "cost" in info:
        key, cost = "info['cost']", info["cost"]
    else:
        raise EnvError(f"Environment {env_id!r}: {NO_COST_MESSAGE}")
    try:
        value = np.asarray(cost, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise EnvError(
            f"Environment {env_id!r}: {key} at step {step} is {cost!r}, not a number; return a "
            f"float (one cost) or a 1-D float array (one entry per constraint).") from exc
    if key == "info['cost']" and value.ndim != 0:
        raise EnvError(
            f"Environment {env_id!r}: info['cost'] has shape {value.shape} at step {step} but "
            f"must be a scalar; return one float as info['cost'], or use info['costs'] for a "
            f"1-D vector of costs.")
    if key == "info['costs']" and (value.ndim != 1 or value.size == 0):
        raise EnvError(
            f"Environment {env_id!r}: info['costs'] has shape {value.shape} at step {step} but "
            f"must be a non-empty 1-D vector; return one entry per constraint (a scalar cost "
            f"goes in info['cost']).")
    if value.ndim > 1 or value.shape == (0,):
        raise EnvError(
            f"Environment {env_id!r}: {key} has shape {value.shape} at step {step} but must be "
            f"a scalar or a non-empty 1-D vector; return one entry per constraint.")
    if not np.all(np.isfinite(value)):
        raise NonFiniteError(
            f"Environment {env_id!r}: {key} is {cost!r} at step {step}, which is not finite; "
            f"return finite costs (clip or fix the cost computation).")
    return value, key


def _check_gym_env(env: gymnasium.Env, env_id: str, num_steps: int, seed: int) -> None:
    observation_flattener(env.observation_space, env_id)
    action_space = validate_action_space(env.action_space, env_id)
    action_space.seed(seed)

    space = env.observation_space
    first_obs = _flat_copy(space, _checked_reset(env, seed, env_id))
    cost_shape: tuple[int, ...] | None = None
    warned_negative = False
    for step in range(num_steps):
        out = env.step(action_space.sample())
        if not isinstance(out, tuple) or len(out) not in (5, 6):
            size = len(out) if isinstance(out, tuple) else None
            if size == 4:
                raise EnvError(
                    f"Environment {env_id!r}: step() returned 4 values, the old gym API with one "
                    f"`done` flag; return (obs, reward, terminated, truncated, info) with "
                    f"separate terminated and truncated flags.")
            got = f"{size} values" if size is not None else f"a {type(out).__name__}"
            raise EnvError(
                f"Environment {env_id!r}: step() returned {got}; return the 5-tuple (obs, "
                f"reward, terminated, truncated, info), or Safety-Gymnasium's 6-tuple (obs, "
                f"reward, cost, terminated, truncated, info).")
        if len(out) == 6:
            obs, reward, _, terminated, truncated, info = out
        else:
            obs, reward, terminated, truncated, info = out
        if not isinstance(info, dict):
            raise EnvError(
                f"Environment {env_id!r}: step() returned info of type {type(info).__name__}; "
                f"return a dict as the last item of the step tuple.")
        _check_observation(obs, env.observation_space, "step()", env_id)
        if np.ndim(reward) != 0 or not isinstance(np.asarray(reward).item(), int | float):
            raise EnvError(
                f"Environment {env_id!r}: step() returned reward {reward!r} at step {step}; "
                f"return one float per step.")
        if not np.isfinite(float(reward)):
            raise NonFiniteError(
                f"Environment {env_id!r}: step() returned reward {reward!r} at step {step}, "
                f"which is not finite; return finite rewards.")
        for flag_name, flag in (("terminated", terminated), ("truncated", truncated)):
            if not isinstance(flag, bool | np.bool_):
                raise EnvError(
                    f"Environment {env_id!r}: step() returned {flag_name}={flag!r} of type "
                    f"{type(flag).__name__}; return a bool.")
        cost, key = _step_cost(out, env_id, step)
        if cost_shape is None:
            cost_shape = cost.shape
        elif cost.shape != cost_shape:
            raise EnvError(
                f"Environment {env_id!r}: {key} has shape {cost.shape} at step {step} but "
                f"{cost_shape} at the first step; return the same number of costs every step.")
        if not warned_negative and np.any(cost < 0):
            warned_negative = True
            _warn(f"Environment {env_id!r}: {key} is negative ({cost.tolist()}) at step {step}; "
                  f"saferl treats costs as penalties to keep below a limit, so a negative cost "
                  f"acts as a reward (check the sign).")
        if terminated or truncated:
            _checked_reset(env, None, env_id)

    again = _flat_copy(space, _checked_reset(env, seed, env_id))
    if _same(first_obs, again):
        return
    # Not reproducible from reset's seed alone: is it drawing from the global RNGs instead?
    firsts = []
    for _ in range(2):
        with seeded_global_rng(seed):
            firsts.append(_flat_copy(space, _checked_reset(env, seed, env_id)))
    if not _same(*firsts):
        _warn(f"Environment {env_id!r}: reset(seed={seed}) gave a different first observation "
              f"the second time; seed the env's RNG from reset's `seed` (call "
              f"`super().reset(seed=seed)` and use self.np_random) for reproducible runs.")
    elif not uses_global_rng(env):
        _warn(f"Environment {env_id!r}: reset(seed={seed}) ignores its seed and draws from the "
              f"global numpy/random generators; use self.np_random in the env, or build it with "
              f"GymVecEnv(..., seed_global_rng=True), which seeds those generators per copy.")


def _flat_copy(space: gymnasium.Space, obs: Any) -> np.ndarray:
    """A flat float64 copy of an (already validated) observation, for comparing resets."""
    if isinstance(space, gymnasium.spaces.Box):
        return np.array(obs, dtype=np.float64, copy=True).reshape(-1)
    return np.asarray(gymnasium.spaces.flatten(space, obs), dtype=np.float64).copy()


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _check_vec_env(env: VecEnv, num_steps: int, seed: int) -> None:
    spec = env.spec
    n = env.num_envs
    observation_flattener(spec.observation_space, spec.id)
    action_space = validate_action_space(spec.action_space, spec.id)
    if len(spec.observation_space.shape) != 1:
        raise EnvError(
            f"VecEnv {spec.id!r}: spec.observation_space has shape "
            f"{spec.observation_space.shape} but must be flat (1-D); flatten observations in "
            f"the VecEnv.")
    obs_shape, m = (n, spec.obs_dim), spec.num_costs

    def check_array(name: str, value: Any, shape: tuple[int, ...], kind: str) -> None:
        if not isinstance(value, np.ndarray):
            raise EnvError(
                f"VecEnv {spec.id!r}: {name} is a {type(value).__name__}, not a numpy array; "
                f"return numpy arrays from reset() and step().")
        if value.shape != shape:
            raise EnvError(
                f"VecEnv {spec.id!r}: {name} has shape {value.shape} but should be {shape}; "
                f"return one row per environment copy.")
        if kind == "bool" and value.dtype != np.bool_:
            raise EnvError(
                f"VecEnv {spec.id!r}: {name} has dtype {value.dtype} but should be bool; return "
                f"boolean flags.")
        if kind == "float":
            if not np.issubdtype(value.dtype, np.floating):
                raise EnvError(
                    f"VecEnv {spec.id!r}: {name} has dtype {value.dtype} but should be a float "
                    f"type; return float arrays.")
            if not np.all(np.isfinite(value)):
                raise NonFiniteError(
                    f"VecEnv {spec.id!r}: {name} contains NaN or infinite values; check the "
                    f"dynamics or clip the outputs.")

    first = env.reset(seed)
    check_array("reset() observation", first, obs_shape, "float")
    first = np.array(first, copy=True)
    rng = np.random.default_rng(seed)
    low = np.broadcast_to(action_space.low.reshape(-1), (n, spec.action_dim))
    high = np.broadcast_to(action_space.high.reshape(-1), (n, spec.action_dim))
    warned_negative = False
    for step in range(num_steps):
        result = env.step(rng.uniform(low, high).astype(np.float32))
        if not isinstance(result, StepResult):
            raise EnvError(
                f"VecEnv {spec.id!r}: step() returned a {type(result).__name__}; return a "
                f"saferl.envs.StepResult.")
        check_array("step() observation", result.observation, obs_shape, "float")
        check_array("step() final_observation", result.final_observation, obs_shape, "float")
        check_array("step() reward", result.reward, (n,), "float")
        check_array("step() costs", result.costs, (n, m), "float")
        check_array("step() terminated", result.terminated, (n,), "bool")
        check_array("step() truncated", result.truncated, (n,), "bool")
        done = result.terminated | result.truncated
        # A tolerance, not exact equality: XLA may compute the two outputs in different fusions.
        if not np.allclose(result.observation[~done], result.final_observation[~done],
                           rtol=1e-5, atol=1e-6):
            raise EnvError(
                f"VecEnv {spec.id!r}: final_observation differs from observation at step {step} "
                f"for copies whose episode did not end; set final_observation = observation "
                f"wherever no episode ended.")
        if not warned_negative and np.any(result.costs < 0):
            warned_negative = True
            _warn(f"VecEnv {spec.id!r}: negative costs at step {step}; saferl treats costs as "
                  f"penalties to keep below a limit, so a negative cost acts as a reward (check "
                  f"the sign).")
    again = env.reset(seed)
    if not _same(first, again):
        _warn(f"VecEnv {spec.id!r}: reset({seed}) gave different first observations the second "
              f"time; seed every copy from reset's seed for reproducible runs.")
