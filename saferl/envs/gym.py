"""Any gymnasium environment that reports costs, behind saferl's batched :class:`VecEnv` protocol.

:class:`GymVecEnv` steps ``num_envs`` gymnasium environments in one process with a plain Python
loop, kept tight (one ``env.step`` per copy and a few numpy stores): its overhead is small
next to a simulator step, and subprocess vector envs gained little over it on 2 cores
(benchmarks/RESULTS.md, "Measured design choices" D1).

Where the cost comes from, in order:

* the Safety-Gymnasium step form ``(obs, reward, cost, terminated, truncated, info)`` (a 6-tuple,
  detected by its length): the positional ``cost`` (a scalar, or a 1-D vector);
* ``info["costs"]``: a 1-D vector, one entry per constraint (``m`` = its length);
* ``info["cost"]``: a scalar (``m = 1``; Bullet-Safety-Gym reports this).

**How ``m`` is discovered.** At construction the adapter resets copy 0 with the construction seed
and takes one *probing* step with the centre of the action box, reads the step's format and cost
shape, then resets every copy ``i`` with ``seed + i``. The probe runs on copy 0 itself rather than
on a throwaway copy because a user-passed ``gymnasium.Env`` object cannot be copied and a second
Bullet client would double construction time; since every copy is re-seeded afterwards the probe
leaves no trace in the episodes the learner sees (an env that counts its own steps or logs
will see one extra step). A declared ``num_costs`` / ``cost_names`` is
checked against the probe rather than trusted blindly: a wrong ``m`` would silently corrupt every
cost downstream, so a mismatch raises :class:`~saferl.envs.core.EnvError`.

Cost names: declared ``cost_names`` if given; else ``info["cost_names"]`` when the environment
provides one name per cost; else ``("cost",)`` for one cost and ``cost_0, cost_1, ...`` for more.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import inspect
import random
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import gymnasium
import numpy as np

from saferl.envs.core import EnvError, EnvSpec, MissingBackendError, StepResult

#: How the cost of one step is read (decided by the probing step).
_SIX_TUPLE = "six_tuple"
_INFO_COSTS = "info_costs"
_INFO_COST = "info_cost"

NO_COST_MESSAGE = (
    "info has no 'cost' or 'costs' key after step(); return the step's cost as info['cost'] "
    "(a float) or info['costs'] (a 1-D array, one entry per constraint).")

EnvFactory = Callable[[], gymnasium.Env]

#: The extra that installs Bullet-Safety-Gym 1.4.0 and pybullet.
BULLET_INSTALL_HINT = "pip install 'saferl[bullet]'"

#: Bullet-Safety-Gym 1.4.0 ids (registered with gymnasium when ``bullet_safety_gym`` is imported).
BULLET_ID = re.compile(r"^Safety(Ball|Car|Drone|Ant)(Circle|Run|Gather|Reach|Push)-v0$")


def bullet_installed() -> bool:
    """Whether ``bullet_safety_gym`` and ``pybullet`` can be imported (checked without importing).

    Returns:
        ``True`` if both packages are found.
    """
    return all(importlib.util.find_spec(name) is not None
               for name in ("bullet_safety_gym", "pybullet"))


def import_bullet_safety_gym(env_id: str | None = None) -> None:
    """Import ``bullet_safety_gym``, which registers its ids with gymnasium.

    Args:
        env_id: The id that needed it, for the message.

    Raises:
        MissingBackendError: If the package (or pybullet) is not installed; the message names
            the ``saferl[bullet]`` extra.
    """
    try:
        with _standard_streams():
            importlib.import_module("bullet_safety_gym")
    except ImportError as exc:
        what = f"{env_id!r} is a Bullet-Safety-Gym id, but the" if env_id else "The"
        raise MissingBackendError(
            f"{what} optional packages bullet-safety-gym and pybullet are not installed; "
            f"install them with `{BULLET_INSTALL_HINT}` (pybullet has wheels only for CPython "
            f"3.11 on Linux x86-64; elsewhere pip compiles it, which needs a C++ compiler and "
            f"takes minutes)."
        ) from exc


def validate_action_space(space: gymnasium.Space, env_id: str) -> gymnasium.spaces.Box:
    """Check that ``space`` is a bounded ``Box`` (the only action space saferl's policies emit).

    Args:
        space: The environment's action space.
        env_id: The environment's id, for the message.

    Returns:
        The space, unchanged.

    Raises:
        EnvError: If the space is discrete, not a ``Box``, or unbounded.
    """
    discrete = (gymnasium.spaces.Discrete, gymnasium.spaces.MultiDiscrete,
                gymnasium.spaces.MultiBinary)
    if isinstance(space, discrete):
        raise EnvError(
            f"Environment {env_id!r} has a discrete action space ({space}), which saferl does "
            f"not support; give it a continuous gymnasium.spaces.Box action space.")
    if not isinstance(space, gymnasium.spaces.Box):
        raise EnvError(
            f"Environment {env_id!r} has action space {space}, but saferl needs a bounded "
            f"gymnasium.spaces.Box; give the env a Box action space with finite low and high.")
    if int(np.prod(space.shape)) == 0:
        raise EnvError(
            f"Environment {env_id!r} has an empty action space (shape {space.shape}); give the "
            f"action Box at least one dimension.")
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise EnvError(
            f"Environment {env_id!r} has an unbounded action Box (low {space.low}, high "
            f"{space.high}); give the action space finite low and high bounds (e.g. -1 and 1) "
            f"and scale actions inside the env.")
    return space


def observation_flattener(
        space: gymnasium.Space,
        env_id: str) -> tuple[gymnasium.spaces.Box, Callable[[Any], np.ndarray] | None]:
    """The flat float32 ``Box`` saferl sees for ``space``, and how to flatten one observation.

    A 1-D ``Box`` needs no flattening (``None``); an n-D ``Box`` is raveled; ``Dict``, ``Tuple``
    and discrete spaces go through ``gymnasium.spaces.flatten`` (one-hot for discrete parts).

    Args:
        space: The environment's observation space.
        env_id: The environment's id, for the message.

    Returns:
        ``(flat_space, flatten)``, where ``flatten`` is ``None`` for a 1-D ``Box``.

    Raises:
        EnvError: If the space cannot be flattened to a non-empty ``Box``.
    """
    if isinstance(space, gymnasium.spaces.Box):
        if int(np.prod(space.shape)) == 0:
            raise EnvError(
                f"Environment {env_id!r} has an empty observation space (shape {space.shape}); "
                f"give the observation Box at least one dimension.")
        flat = gymnasium.spaces.Box(
            low=np.asarray(space.low, np.float32).reshape(-1),
            high=np.asarray(space.high, np.float32).reshape(-1), dtype=np.float32)
        return flat, (None if len(space.shape) == 1 else np.ravel)
    try:
        flat_space = gymnasium.spaces.flatten_space(space)
    except NotImplementedError as exc:
        raise EnvError(
            f"Environment {env_id!r} has observation space {space}, which cannot be flattened "
            f"to a vector; give it a gymnasium.spaces.Box (or Dict/Tuple of Boxes) observation "
            f"space.") from exc
    if not isinstance(flat_space, gymnasium.spaces.Box) or int(np.prod(flat_space.shape)) == 0:
        raise EnvError(
            f"Environment {env_id!r} has observation space {space}, which cannot be flattened "
            f"to a non-empty Box; give it a gymnasium.spaces.Box (or Dict/Tuple of Boxes) "
            f"observation space.")
    flat = gymnasium.spaces.Box(low=np.asarray(flat_space.low, np.float32),
                                high=np.asarray(flat_space.high, np.float32), dtype=np.float32)
    return flat, partial(gymnasium.spaces.flatten, space)


def reset_one(env: gymnasium.Env, seed: int | None, env_id: str) -> tuple[Any, dict]:
    """Reset one gymnasium env, insisting on the ``(obs, info)`` return of gymnasium ≥ 0.26.

    Args:
        env: The environment.
        seed: Passed to ``env.reset(seed=...)``; ``None`` continues the env's RNG stream.
        env_id: The environment's id, for the message.

    Returns:
        ``(observation, info)``.

    Raises:
        EnvError: If ``reset`` does not return a 2-tuple whose second item is a dict.
    """
    out = env.reset(seed=seed)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
        raise EnvError(
            f"Environment {env_id!r}: reset() returned {type(out).__name__} instead of an "
            f"(observation, info) tuple; return `obs, {{}}` from reset() as gymnasium >= 0.26 "
            f"requires.")
    return out


def cost_format(step_output: tuple, env_id: str) -> tuple[str, int, tuple[str, ...] | None]:
    """Find where a step's cost lives and how many costs there are.

    Args:
        step_output: What ``env.step`` returned (a 5-tuple, or Safety-Gymnasium's 6-tuple).
        env_id: The environment's id, for the message.

    Returns:
        ``(mode, m, names)``: the cost's location (an internal tag), the number of costs, and
        names from ``info["cost_names"]`` when the env gives exactly one per cost, else ``None``.

    Raises:
        EnvError: If the tuple has the wrong length, ``info`` is not a dict, there is no cost,
            or the cost is not a scalar or a non-empty 1-D vector.
    """
    if not isinstance(step_output, tuple) or len(step_output) not in (5, 6):
        size = len(step_output) if isinstance(step_output, tuple) else type(step_output).__name__
        hint = (" (the old gym API with a single `done`)" if size == 4 else "")
        raise EnvError(
            f"Environment {env_id!r}: step() returned {size} values{hint}; return "
            f"(obs, reward, terminated, truncated, info) as gymnasium >= 0.26 requires.")
    info = step_output[-1]
    if not isinstance(info, dict):
        raise EnvError(
            f"Environment {env_id!r}: step() returned info of type {type(info).__name__}; "
            f"return a dict as the last item of the step tuple.")
    if len(step_output) == 6:
        mode, key, cost = _SIX_TUPLE, "cost (3rd item of the 6-tuple)", step_output[2]
    elif "costs" in info:
        mode, key, cost = _INFO_COSTS, "info['costs']", info["costs"]
    elif "cost" in info:
        mode, key, cost = _INFO_COST, "info['cost']", info["cost"]
    else:
        raise EnvError(f"Environment {env_id!r}: {NO_COST_MESSAGE}")
    try:
        shape = np.shape(cost)
        np.asarray(cost, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise EnvError(
            f"Environment {env_id!r}: {key} is {cost!r}, not a number; return a float (one "
            f"cost) or a 1-D float array (one entry per constraint).") from exc
    if mode == _INFO_COST and shape != ():
        raise EnvError(
            f"Environment {env_id!r}: info['cost'] has shape {shape} but must be a scalar; "
            f"return one float as info['cost'], or a 1-D array as info['costs'].")
    if len(shape) > 1 or shape == (0,):
        raise EnvError(
            f"Environment {env_id!r}: {key} has shape {shape} but must be a scalar or a "
            f"non-empty 1-D vector; return one entry per constraint.")
    m = 1 if shape == () else shape[0]
    names = info.get("cost_names")
    if (isinstance(names, Sequence) and not isinstance(names, str) and len(names) == m
            and all(isinstance(name, str) for name in names)):
        return mode, m, tuple(names)
    return mode, m, None


@contextlib.contextmanager
def seeded_global_rng(seed: int) -> Iterator[None]:
    """Seed the global ``numpy.random`` and ``random`` generators; restore them on exit.

    Some simulators (Bullet-Safety-Gym) draw from these global generators instead of their own
    ``np_random``; running their construction or reset inside this context makes it
    reproducible without disturbing the caller's global RNG state.

    Args:
        seed: The seed (reduced modulo 2**32 for numpy).

    Yields:
        Nothing; the generators are seeded inside the ``with`` block.
    """
    saved = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        np.random.seed(seed % 2**32)  # noqa: NPY002
        random.seed(seed)
        yield
    finally:
        np.random.set_state(saved[0])  # noqa: NPY002
        random.setstate(saved[1])


def uses_global_rng(env: gymnasium.Env) -> bool:
    """Whether ``env`` is known to ignore ``reset(seed=...)`` for the global RNGs.

    Args:
        env: A gymnasium env (possibly wrapped).

    Returns:
        ``True`` for Bullet-Safety-Gym envs.
    """
    return type(getattr(env, "unwrapped", env)).__module__.startswith("bullet_safety_gym")


@contextlib.contextmanager
def _standard_streams() -> Iterator[None]:
    """Point ``sys.stdout``/``sys.stderr`` at the process's real streams for a moment.

    Bullet-Safety-Gym 1.4.0 silences pybullet (on import and in every env's constructor) by
    ``dup2``-ing ``sys.stdout.fileno()`` and flushing the libc stream named after
    ``sys.stdout.name``; both fail when the streams are replaced (pytest's capture, Jupyter).
    """
    saved = sys.stdout, sys.stderr
    if sys.__stdout__ is not None:
        sys.stdout = sys.__stdout__
    if sys.__stderr__ is not None:
        sys.stderr = sys.__stderr__
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def make_by_id(env_id: str, kwargs: dict[str, Any]) -> gymnasium.Env:
    """``gymnasium.make(env_id, **kwargs)``, with a keyword the env does not take as one
    sentence (the nearest accepted keyword, and the list of them) instead of a ``TypeError``."""
    try:
        return gymnasium.make(env_id, **kwargs)
    except TypeError as error:
        match = re.search(r"unexpected keyword argument '(\w+)'", str(error))
        if match is None or match.group(1) not in kwargs:
            raise
        key = match.group(1)
        accepted: list[str] = []
        with contextlib.suppress(Exception):  # the list is a courtesy; the key is the point
            entry = gymnasium.spec(env_id).entry_point
            target = gymnasium.envs.registration.load_env_creator(entry) \
                if isinstance(entry, str) else entry
            accepted = [name for name, param in inspect.signature(target).parameters.items()
                        if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
                        and name not in ("self", "render_mode")]
        close = difflib.get_close_matches(key, accepted, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        listed = f" Accepted: {', '.join(accepted)}." if accepted else ""
        raise EnvError(f"env_kwargs key {key!r} is not a parameter of {env_id!r}.{hint}"
                       f"{listed}") from None


def build_env(factory: Callable[[], Any], seed: int) -> Any:
    """Call an env factory reproducibly: global RNGs seeded, and Bullet's stream quirk handled.

    Args:
        factory: Builds one environment.
        seed: Seed of the global ``numpy.random``/``random`` state during the call (restored
            afterwards); Bullet-Safety-Gym draws from it while building.

    Returns:
        What ``factory`` returned.
    """
    with seeded_global_rng(seed):
        if "bullet_safety_gym" in sys.modules:
            with _standard_streams():
                return factory()
        return factory()


def _time_limit_of(env: gymnasium.Env) -> int | None:
    """``env.spec.max_episode_steps``, else the limit of a ``TimeLimit`` in the wrapper chain."""
    limit = getattr(getattr(env, "spec", None), "max_episode_steps", None)
    while limit is None and env is not None:
        if isinstance(env, gymnasium.wrappers.TimeLimit):
            limit = getattr(env, "_max_episode_steps", None)
        env = getattr(env, "env", None)
    return None if limit is None else int(limit)


def _env_id_of(env: gymnasium.Env) -> str:
    spec = getattr(env, "spec", None)
    if spec is not None and getattr(spec, "id", None):
        return str(spec.id)
    return type(getattr(env, "unwrapped", env)).__name__


class GymVecEnv:
    """``num_envs`` gymnasium environments with costs, as one saferl :class:`VecEnv`.

    Observations come out as flat float32 arrays, rewards and costs as float32, terminated and
    truncated as separate bool arrays (gymnasium's ``TimeLimit`` reports truncation). Actions are
    clipped to the action ``Box``. Finished copies are reset at once; their true last observation
    is in ``StepResult.final_observation``. See the module docstring for how costs are found.

    Seeding: ``reset(seed)`` calls ``envs[i].reset(seed=seed + i)``. Bullet-Safety-Gym 1.4.0
    ignores that seed and samples its start states from the global ``numpy.random`` / ``random``
    generators, so for those envs (``seed_global_rng``) each copy keeps a private state of the
    global generators, seeded with ``seed + i`` and swapped in only around that copy's resets; the
    caller's global RNG state is restored after each reset. Resets are then reproducible.

    Attributes:
        envs: The wrapped gymnasium environments, copy ``i`` at index ``i``.
        spec: The batched CMDP's :class:`~saferl.envs.core.EnvSpec`.
        num_envs: Number of copies.
    """

    def __init__(self, env: str | gymnasium.Env | EnvFactory, num_envs: int = 1, seed: int = 0,
                 *, env_id: str | None = None, num_costs: int | None = None,
                 cost_names: Sequence[str] | None = None, max_episode_steps: int | None = None,
                 seed_global_rng: bool | None = None, **make_kwargs: Any) -> None:
        """Build the copies, probe the cost format, and reset copy ``i`` with ``seed + i``.

        Args:
            env: A registered gymnasium id (built with ``gymnasium.make(env, **make_kwargs)``), a
                factory returning a fresh env on each call, or one ``gymnasium.Env`` object
                (then ``num_envs`` must be 1).
            num_envs: Number of copies, ≥ 1.
            seed: Seed of the construction-time reset (copy ``i`` gets ``seed + i``).
            env_id: Id reported in ``spec.id``; default ``env.spec.id`` or the class name.
            num_costs: Expected number of costs; checked against the probing step.
            cost_names: Names of the costs (one per cost); checked against the probing step.
            max_episode_steps: Time limit applied by the adapter (on top of any ``TimeLimit``
                the env already has); default ``env.spec.max_episode_steps``.
            seed_global_rng: Give each copy its own stream of the *global* ``numpy.random`` and
                ``random`` generators around its resets (see the class docstring). Default
                (``None``): on for Bullet-Safety-Gym envs, which ignore ``reset(seed=...)``.
            **make_kwargs: Passed to ``gymnasium.make`` when ``env`` is an id.

        Raises:
            EnvError: If ``num_envs`` < 1, an env object is given with ``num_envs`` > 1, the
                spaces are unsupported, or the env reports no (or malformed) costs.
        """
        if isinstance(num_envs, bool) or not isinstance(num_envs, int | np.integer) or num_envs < 1:
            raise EnvError(f"num_envs must be an integer >= 1; got {num_envs!r}.")
        num_envs = int(num_envs)
        if make_kwargs and not isinstance(env, str):
            raise EnvError(
                f"Keyword arguments {sorted(make_kwargs)} can only be passed with an env id; "
                f"bind them in your factory instead.")
        if isinstance(env, str):
            env_string = env
            if BULLET_ID.match(env_string) and env_string not in gymnasium.registry:
                import_bullet_safety_gym(env_string)
            envs = [build_env(lambda: make_by_id(env_string, make_kwargs), seed + i)
                    for i in range(num_envs)]
        elif isinstance(env, gymnasium.Env):
            if num_envs != 1:
                raise EnvError(
                    f"A single gymnasium.Env object can only back num_envs=1 (got {num_envs}); "
                    f"pass a factory such as `lambda: MyEnv()` to build one env per copy.")
            envs = [env]
        elif callable(env):
            envs = [build_env(env, seed + i) for i in range(num_envs)]
            for built in envs:
                if not isinstance(built, gymnasium.Env):
                    for other in envs:
                        if isinstance(other, gymnasium.Env):
                            other.close()
                    raise EnvError(
                        f"The env factory returned {type(built).__name__}, not a gymnasium.Env; "
                        f"make the factory return a fresh gymnasium.Env on every call.")
        else:
            raise EnvError(
                f"Cannot build an environment from {type(env).__name__}; pass an env id, a "
                f"gymnasium.Env, or a callable that returns a gymnasium.Env.")
        self.envs: list[gymnasium.Env] = envs
        self.num_envs = num_envs
        first = envs[0]
        env_id = env_id or _env_id_of(first)
        self._env_id = env_id
        if seed_global_rng is None:
            seed_global_rng = uses_global_rng(first)
        self._seed_global_rng = bool(seed_global_rng)
        self._rng_states: list[tuple[Any, Any] | None] = [None] * num_envs
        try:
            self.spec = self._build_spec(first, env_id, seed, num_costs, cost_names,
                                         max_episode_steps)
        except BaseException:
            if not isinstance(env, gymnasium.Env):  # close what we built, not the caller's env
                self.close()
            raise
        self.reset(seed)

    def _build_spec(self, first: gymnasium.Env, env_id: str, seed: int, num_costs: int | None,
                    cost_names: Sequence[str] | None, max_episode_steps: int | None) -> EnvSpec:
        action_space = validate_action_space(first.action_space, env_id)
        observation_space, self._flatten = observation_flattener(first.observation_space, env_id)
        self._obs_dim = int(observation_space.shape[0])
        self._act_shape = tuple(action_space.shape)
        self._act_batch_shape = (self.num_envs, *self._act_shape)
        self._act_dtype = action_space.dtype if np.issubdtype(action_space.dtype, np.floating) \
            else np.float32
        self._low = np.asarray(action_space.low, self._act_dtype)
        self._high = np.asarray(action_space.high, self._act_dtype)

        # The probe: reset copy 0, take one step with the centre of the action box.
        self._reset_copy(0, seed)
        probe_action = ((self._low.astype(np.float64) + self._high) / 2).astype(self._act_dtype)
        probe = first.step(probe_action)
        mode, m, probed_names = cost_format(probe, env_id)
        self._six_tuple = mode == _SIX_TUPLE
        self._key = "costs" if mode == _INFO_COSTS else "cost"
        # A vector cost is shape-checked every step, so that a scalar cannot silently broadcast.
        self._vector_cost = np.ndim(probe[2] if self._six_tuple else probe[-1][self._key]) == 1
        if num_costs is not None and num_costs != m:
            raise EnvError(
                f"Environment {env_id!r} was declared with num_costs={num_costs} but its first "
                f"step reports {m} cost(s); declare num_costs={m} or fix the env's cost output.")
        if cost_names is not None:
            cost_names = tuple(cost_names)
            if len(cost_names) != m:
                raise EnvError(
                    f"Environment {env_id!r} was given {len(cost_names)} cost_names but reports "
                    f"{m} cost(s); give exactly one name per cost.")
        names = cost_names or probed_names or (
            ("cost",) if m == 1 else tuple(f"cost_{i}" for i in range(m)))

        spec_limit = _time_limit_of(first)
        self._limit = max_episode_steps
        if max_episode_steps is not None:
            if max_episode_steps < 1:
                raise EnvError(f"max_episode_steps must be >= 1; got {max_episode_steps}.")
            spec_limit = max_episode_steps if spec_limit is None else min(spec_limit,
                                                                          max_episode_steps)
        self._episode_steps = np.zeros(self.num_envs, np.int64)
        return EnvSpec(id=env_id, observation_space=observation_space,
                       action_space=action_space, num_costs=m, cost_names=names,
                       max_episode_steps=spec_limit)

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Reset every copy; copy ``i`` is seeded with ``seed + i`` (``None``: keep RNG streams).

        Args:
            seed: Base seed, or ``None`` to continue each copy's RNG stream.

        Returns:
            ``[num_envs, obs_dim]`` float32 first observations.
        """
        obs = np.empty((self.num_envs, self._obs_dim), np.float32)
        flatten = self._flatten
        for i in range(self.num_envs):
            o, _ = self._reset_copy(i, None if seed is None else int(seed) + i)
            self._store(obs, i, o if flatten is None else flatten(o), "reset()")
        self._episode_steps[:] = 0
        return obs

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every copy once, auto-resetting copies whose episode ended.

        Args:
            actions: ``[num_envs, action_dim]`` actions (any shape with that many entries); they
                are clipped to the action ``Box``.

        Returns:
            The batched :class:`~saferl.envs.core.StepResult` (float32 observations, rewards
            and ``[num_envs, m]`` costs; bool terminated and truncated).

        Raises:
            EnvError: If the actions have the wrong size or an env returns a malformed step.
        """
        n = self.num_envs
        acts = np.asarray(actions, dtype=self._act_dtype)
        if acts.shape != self._act_batch_shape:
            try:
                acts = acts.reshape(self._act_batch_shape)
            except ValueError as exc:
                raise EnvError(
                    f"step() got actions of shape {np.shape(actions)} but {self.spec.id!r} with "
                    f"{n} copies needs {self._act_batch_shape}; pass one action per copy.") from exc
        acts = np.clip(acts, self._low, self._high)
        obs = np.empty((n, self._obs_dim), np.float32)
        reward = np.empty(n, np.float32)
        costs = np.empty((n, self.spec.num_costs), np.float32)
        terminated = np.empty(n, bool)
        truncated = np.empty(n, bool)
        flatten, six_tuple, key, limit = self._flatten, self._six_tuple, self._key, self._limit
        vector_cost, cost_shape = self._vector_cost, (self.spec.num_costs,)
        finals: list[tuple[int, np.ndarray]] = []
        for i, env in enumerate(self.envs):
            try:
                out = env.step(acts[i])
                if six_tuple:
                    o, r, c, te, tr, info = out
                else:
                    o, r, te, tr, info = out
                    c = info[key]
                if vector_cost and np.shape(c) != cost_shape:
                    raise EnvError(
                        f"Environment {self.spec.id!r} copy {i}: the cost vector has shape "
                        f"{np.shape(c)} but had {cost_shape} on the first step; return the "
                        f"same number of costs on every step.")
                self._store(obs, i, o if flatten is None else flatten(o), "step()")
                reward[i] = r
                costs[i] = c
                if limit is not None:
                    self._episode_steps[i] += 1
                    tr = tr or (not te and self._episode_steps[i] >= limit)
                terminated[i] = te
                truncated[i] = tr
                if te or tr:
                    finals.append((i, obs[i].copy()))
                    o = (self._reset_copy(i, None) if self._seed_global_rng else env.reset())[0]
                    self._store(obs, i, o if flatten is None else flatten(o), "reset()")
                    self._episode_steps[i] = 0
            except EnvError:
                raise
            except KeyError as exc:
                raise EnvError(
                    f"Environment {self.spec.id!r} copy {i}: {NO_COST_MESSAGE}") from exc
            except (ValueError, TypeError) as exc:
                raise EnvError(
                    f"Environment {self.spec.id!r} copy {i} returned a malformed step ({exc}); "
                    f"run saferl.envs.check_env on it to find what breaks the contract.") from exc
        # Always a separate array: a consumer that edits one in place must not change the other.
        final_observation = obs.copy()
        for i, last in finals:
            final_observation[i] = last
        return StepResult(obs, reward, costs, terminated, truncated, final_observation)

    def _store(self, obs: np.ndarray, index: int, value: Any, where: str) -> None:
        """``obs[index] = value``, or one sentence when the observation does not fit the space."""
        try:
            shape = np.shape(value)
            if shape != (self._obs_dim,) and int(np.prod(shape)) != self._obs_dim:
                raise ValueError
            obs[index] = np.reshape(value, (self._obs_dim,))
        except (ValueError, TypeError):
            raise EnvError(
                f"Environment {self.spec.id!r} copy {index}: {where} returned an observation "
                f"of shape {np.shape(value)}, but its observation_space "
                f"{self.spec.observation_space} holds {self._obs_dim} value(s); return "
                f"observations of the space's shape (saferl.check_env(env) shows where).") \
                from None

    def _reset_copy(self, index: int, seed: int | None) -> tuple[Any, dict]:
        env = self.envs[index]
        if not self._seed_global_rng:
            return reset_one(env, seed, self._env_id)
        # Bullet-Safety-Gym 1.4.0 ignores reset's seed and draws its initial states from the
        # global numpy and `random` generators. Each copy gets its own stream of those: swapped
        # in around its resets only (nothing is drawn while stepping), seeded from reset's seed,
        # and the caller's global state restored afterwards, so that resets are reproducible and
        # the user's global RNG is left untouched.
        saved = np.random.get_state(), random.getstate()  # noqa: NPY002
        try:
            state = self._rng_states[index]
            if seed is not None:
                np.random.seed(seed % 2**32)  # noqa: NPY002
                random.seed(seed)
            elif state is not None:
                np.random.set_state(state[0])  # noqa: NPY002
                random.setstate(state[1])
            out = reset_one(env, seed, self._env_id)
            self._rng_states[index] = (np.random.get_state(), random.getstate())  # noqa: NPY002
        finally:
            np.random.set_state(saved[0])  # noqa: NPY002
            random.setstate(saved[1])
        return out

    def render(self, index: int = 0) -> np.ndarray:
        """An RGB frame ``[H, W, 3]`` of copy ``index``.

        Copies built with ``render_mode="rgb_array"`` render through gymnasium's ``render()``.
        Environments of the older API that take the mode as an argument (Bullet-Safety-Gym:
        ``render(mode="rgb_array")``, off-screen with pybullet's software renderer) are asked
        for a frame directly, never for ``"human"``, which would open a window.

        Args:
            index: Which copy to render.

        Returns:
            The frame as a ``uint8`` array.

        Raises:
            EnvError: If the copy cannot produce RGB frames (it was built without
                ``render_mode="rgb_array"``, or renders something else).
        """
        env = self.envs[index]
        if getattr(env, "render_mode", None) == "rgb_array":
            frame = env.render()
        elif "mode" in inspect.signature(env.unwrapped.render).parameters:
            with _standard_streams():  # Bullet silences pybullet around its calls
                frame = env.unwrapped.render(mode="rgb_array")
        else:
            raise EnvError(
                f"{self._env_id} was built with render_mode={getattr(env, 'render_mode', None)!r} "
                f"and cannot give RGB frames; build it with render_mode='rgb_array' (e.g. "
                f"saferl.make(id, render_mode='rgb_array') or gymnasium.make(id, "
                f"render_mode='rgb_array') in your factory).")
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[-1] not in (3, 4):
            raise EnvError(f"{self._env_id}'s render() gave an array of shape {frame.shape}, not "
                           f"an RGB frame [height, width, 3].")
        return frame[..., :3].astype(np.uint8, copy=False)

    def close(self) -> None:
        """Close every copy."""
        for env in self.envs:
            env.close()

    def __repr__(self) -> str:
        return (f"GymVecEnv({self.spec.id!r}, num_envs={self.num_envs}, "
                f"num_costs={self.spec.num_costs})")
