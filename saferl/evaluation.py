"""Evaluate a policy: episode return and cost per constraint over N episodes, and videos."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saferl.envs.make import make, render_kwargs
from saferl.envs.native import NATIVE_TASKS, batch_reset, batch_step, make_task
from saferl.files import write_json
from saferl.policy import Policy, deployed_members
from saferl.runs import checkpoint_name, restore_states


@dataclass
class EvalResult:
    """Per-episode returns ``[E]``, costs ``[E, m]`` and lengths ``[E]``, with summaries."""

    returns: np.ndarray
    costs: np.ndarray
    lengths: np.ndarray
    cost_names: tuple[str, ...]
    deterministic: bool

    def summary(self, cost_limit: Sequence[float] | None = None) -> dict[str, Any]:
        """Mean and std of the return and of each cost, and the mean length.

        With ``cost_limit`` (one per constraint) also, per constraint ``i``:
        ``cost_i_within`` (the mean episode cost is at or under the limit) and
        ``cost_i_over_share`` (the share of episodes whose cost exceeds it).
        """
        out: dict[str, Any] = {
            "return_mean": float(self.returns.mean()), "return_std": float(self.returns.std()),
            "length_mean": float(self.lengths.mean()), "episodes": len(self.returns)}
        for i in range(self.costs.shape[1]):
            out[f"cost_{i}_mean"] = float(self.costs[:, i].mean())
            out[f"cost_{i}_std"] = float(self.costs[:, i].std())
            if cost_limit is not None:
                out[f"cost_{i}_within"] = bool(out[f"cost_{i}_mean"] <= cost_limit[i])
                out[f"cost_{i}_over_share"] = float((self.costs[:, i] > cost_limit[i]).mean())
        return out


def evaluate(policy: Any, env: str | None = None, episodes: int = 10, deterministic: bool = True,
             seed: int = 10_000, env_kwargs: dict[str, Any] | None = None,
             num_envs: int | None = None, video: str | Path | None = None,
             threshold: Any = None) -> EvalResult:
    """Run ``episodes`` episodes of ``policy`` and collect return and cost per constraint.

    Each of the ``num_envs`` copies runs the same number of episodes (the first ones it
    finishes), so short episodes are not over-represented.

    Args:
        policy: A callable ``policy(obs_batch, deterministic=...) -> actions`` (e.g. a
            :class:`~saferl.policy.Policy`).
        env: Environment id; default: the one the policy was trained on.
        episodes: Number of episodes (≥ 1).
        deterministic: Use the mean action (``True``) or sample.
        seed: Seed of the evaluation environments (distinct from training seeds by default).
        env_kwargs: Environment keyword arguments.
        num_envs: Parallel copies (default ``min(episodes, 16)``).
        video: Write the first episode of copy 0 to this ``.gif`` (or ``.mp4`` with imageio).
        threshold: The cost threshold a threshold-conditioned policy acts with (a number or one
            per constraint; see :class:`~saferl.policy.Policy`); ``None`` for other policies.

    Returns:
        An :class:`EvalResult`.
    """

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1; got {episodes}.")
    info = getattr(policy, "info", {})
    env_id = env or info.get("env")
    if env_id is None:
        raise ValueError("evaluate needs env= (the policy does not say which env it was "
                         "trained on).")
    if env_kwargs is None and env is None:
        env_kwargs = info.get("env_kwargs") or None
    conditioned = getattr(policy, "conditioning", None) is not None
    act_kwargs = {} if threshold is None and not conditioned else {"threshold": threshold}
    if env_id in NATIVE_TASKS and video is None and hasattr(policy, "forward"):
        task = make_task(env_id, **(env_kwargs or {}))
        if not conditioned:
            return native_evaluate(policy, task, episodes, deterministic, seed)
        grid = policy.thresholds_for(threshold, 1)  # checked [1, m]
        ret, cost, length = native_episodes([policy], task, episodes, deterministic, seed, grid)
        return EvalResult(ret[0, 0], cost[0, 0], length[0, 0], tuple(task.spec.cost_names),
                          deterministic)
    num_envs = num_envs or min(episodes, 16)
    per_copy = math.ceil(episodes / num_envs)
    make_kwargs = dict(env_kwargs or {})
    if video is not None:
        check_video_path(Path(video))  # before any episode runs
        make_kwargs = {**render_kwargs(env_id), **make_kwargs}
    vec = make(env_id, num_envs=num_envs, seed=seed, **make_kwargs)
    m = vec.spec.num_costs
    frames: list[np.ndarray] = []
    render = getattr(vec, "render", None)
    if video is not None and render is None:
        vec.close()
        raise ValueError(f"Environment {env_id!r} does not render frames; cannot write a video.")
    obs = vec.reset(seed=seed)
    ret, cost, length = np.zeros(num_envs), np.zeros((num_envs, m)), np.zeros(num_envs, int)
    done_count = np.zeros(num_envs, int)
    results: list[list[tuple[float, np.ndarray, int]]] = [[] for _ in range(num_envs)]
    recording = video is not None
    while (done_count < per_copy).any():
        if recording:
            frames.append(render(0))  # type: ignore[misc]
        step = vec.step(policy(obs, deterministic=deterministic, **act_kwargs))
        ret += step.reward
        cost += step.costs
        length += 1
        for i in np.nonzero(step.terminated | step.truncated)[0]:
            if done_count[i] < per_copy:
                results[i].append((float(ret[i]), cost[i].copy(), int(length[i])))
            done_count[i] += 1
            ret[i], cost[i], length[i] = 0.0, 0.0, 0
            if i == 0:
                recording = False
        obs = step.observation
    vec.close()
    flat = [r for copy in results for r in copy][:episodes]
    if video is not None:
        write_video(frames, Path(video))
    return EvalResult(np.array([r[0] for r in flat]), np.stack([r[1] for r in flat]),
                      np.array([r[2] for r in flat]), tuple(vec.spec.cost_names), deterministic)


def evaluate_run(run_dir: str | Path, episodes: int = 10, seed: int = 10_000,
                 checkpoint: str | None = None, seed_indices: Sequence[int] | None = None,
                 modes: Sequence[str] = ("deterministic", "stochastic")) -> dict[str, Any]:
    """Evaluate the deployed policy of every member of a run against its cost limits.

    Args:
        run_dir: The run directory.
        episodes: Episodes per member and mode.
        seed: Seed of the evaluation environments.
        checkpoint: A checkpoint name (default: the newest intact one).
        seed_indices: Which of the run's members (default: all; their order is
            :func:`saferl.policy.deployed_members`'s: the seeds, or in a grid of cost limits
            every seed under every limit).
        modes: ``deterministic`` (the mean action, what ``policy(obs)`` returns) and/or
            ``stochastic``.

    Returns:
        A JSON-ready record: ``episodes``, ``env_seed``, ``cost_limit`` and ``per_seed``
        (``{member label: {mode: EvalResult.summary(its cost limits)}}``); in a grid of cost
        limits also ``member_limits`` (``{label: limits}``).
    """

    _, entry, config, spec, states, meta = restore_states(run_dir, checkpoint)
    indices = range(len(deployed_members(config))) if seed_indices is None else seed_indices
    policies = [Policy.from_states(entry, config, spec, states, index) for index in indices]
    record = evaluate_policies(policies, episodes=episodes, seed=seed, modes=modes)
    record["checkpoint"] = checkpoint_name(int(meta["iteration"]))
    return record


def evaluate_policies(policies: Sequence[Any], episodes: int = 10, seed: int = 10_000,
                      modes: Sequence[str] = ("deterministic", "stochastic")) -> dict[str, Any]:
    """Evaluate several members' policies of one run, each against its own cost limits
    (``policy.info``); a threshold-conditioned policy acts with those limits as its threshold.

    Returns:
        The record :func:`evaluate_run` describes (without ``checkpoint``).
    """

    info = policies[0].info
    label = lambda p: str(p.info.get("member", p.info["seed"]))  # noqa: E731
    per_seed: dict[str, dict[str, Any]] = {label(p): {} for p in policies}
    for mode in modes:
        deterministic = mode == "deterministic"
        conditioned = getattr(policies[0], "conditioning", None) is not None
        if info["env"] in NATIVE_TASKS and not conditioned:  # every seed in one vmapped call
            task = make_task(info["env"], **info.get("env_kwargs", {}))
            results = native_evaluate_many(policies, task, episodes, deterministic, seed)
        else:
            results = [evaluate(p, episodes=episodes, deterministic=deterministic, seed=seed,
                                threshold=list(p.info["cost_limit"]) if conditioned else None)
                       for p in policies]
        for policy, result in zip(policies, results, strict=True):
            per_seed[label(policy)][mode] = result.summary(policy.info["cost_limit"])
    record = {"episodes": episodes, "env_seed": seed, "cost_limit": list(info["cost_limit"]),
              "per_seed": per_seed}
    limits = {label(p): list(p.info["cost_limit"]) for p in policies}
    if len({tuple(x) for x in limits.values()}) > 1 or "@" in label(policies[0]):
        record["member_limits"] = limits
    return record


def write_evaluation(run_dir: str | Path, record: dict[str, Any],
                     path: str | Path | None = None) -> Path:
    """Write an :func:`evaluate_run` record to ``RUN/eval.json`` (or to ``path``), whole or
    not at all."""
    target = Path(run_dir) / "eval.json" if path is None else Path(path)
    write_json(target, record)
    return target


def native_evaluate(policy: Any, task: Any, episodes: int, deterministic: bool,
                    seed: int) -> EvalResult:
    """Every episode of a native task at once (see :func:`native_evaluate_many`)."""
    return native_evaluate_many([policy], task, episodes, deterministic, seed)[0]


def native_evaluate_many(policies: Sequence[Any], task: Any, episodes: int,
                         deterministic: bool, seed: int) -> list[EvalResult]:
    """Policies of one network structure (a run's seeds) on a native task, in one jitted call
    (see :func:`native_episodes`)."""
    ret, cost, length = native_episodes(policies, task, episodes, deterministic, seed)
    names = tuple(task.spec.cost_names)
    return [EvalResult(ret[i], cost[i], length[i], names, deterministic)
            for i in range(len(policies))]


def native_episodes(policies: Sequence[Any], task: Any, episodes: int, deterministic: bool,
                    seed: int, thresholds: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Episodes of policies of one network structure on a native task, in one jitted call.

    Each policy runs ``episodes`` copies, one episode each, in a ``lax.scan`` over the time
    limit (copies that finish early stop counting); the policies are vmapped, and so are the
    ``thresholds`` of conditioned policies. Every policy (and threshold) meets the same initial
    states and action noise.

    Args:
        policies: :class:`~saferl.policy.Policy` objects of one module (their pure ``forward``
            runs inside ``jit``).
        task: The native task.
        episodes: Episodes per policy (= copies).
        deterministic: Mean actions, or samples.
        seed: Seed of the copies' initial states and of the action noise.
        thresholds: ``[T, m]`` thresholds for conditioned policies (every copy acts with the
            same one), or ``None``.

    Returns:
        Returns ``[S, E]``, costs ``[S, E, m]`` and lengths ``[S, E]`` (float64, float64,
        int); with ``thresholds``, ``[S, T, E, ...]``.
    """
    import jax
    import jax.numpy as jnp

    horizon = task.spec.max_episode_steps
    m = task.spec.num_costs
    forward = policies[0].forward

    def run(params: Any, stats: Any, key: jax.Array,
            threshold: jax.Array | None) -> tuple[jax.Array, ...]:
        reset_key, key = jax.random.split(key)
        state = batch_reset(task, reset_key, episodes)
        conditions = None if threshold is None else jnp.broadcast_to(threshold, (episodes, m))

        def step(carry: tuple, _: None) -> tuple[tuple, None]:
            state, key, ret, cost, length, done = carry
            key, act_key = jax.random.split(key)
            actions = forward(params, stats, state.observation, act_key, deterministic,
                              conditions)
            state, out = batch_step(task, state, actions)
            live = ~done
            ret = ret + jnp.where(live, out.reward, 0.0)
            cost = cost + jnp.where(live[:, None], out.costs, 0.0)
            length = length + live.astype(jnp.int32)
            return (state, key, ret, cost, length, done | out.terminated | out.truncated), None

        init = (state, key, jnp.zeros(episodes), jnp.zeros((episodes, m)),
                jnp.zeros(episodes, jnp.int32), jnp.zeros(episodes, bool))
        (_, _, ret, cost, length, _), _ = jax.lax.scan(step, init, None, length=horizon)
        return ret, cost, length

    stack = lambda *xs: jnp.stack(xs)  # noqa: E731
    params = jax.tree_util.tree_map(stack, *(p.params for p in policies))
    stats = (None if policies[0].obs_stats is None else
             jax.tree_util.tree_map(stack, *(p.obs_stats for p in policies)))
    per_policy = run if thresholds is None else jax.vmap(run, in_axes=(None, None, None, 0))
    program = jax.jit(jax.vmap(per_policy, in_axes=(0, 0, None, None)))
    ret, cost, length = program(params, stats, jax.random.PRNGKey(seed),
                                None if thresholds is None else
                                jnp.asarray(thresholds, jnp.float32))
    return (np.asarray(ret, np.float64), np.asarray(cost, np.float64), np.asarray(length))


class VideoBackendError(ValueError):
    """Writing the requested video format needs an optional package that is not installed."""


def check_video_path(path: Path) -> None:
    """Fail early, before any episode runs, if ``path`` is not a video saferl can write.

    Raises:
        ValueError: If the suffix is not ``.gif`` or ``.mp4``.
        VideoBackendError: For ``.mp4`` when imageio and its ffmpeg plugin are missing.
    """
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"video path {str(path)!r} must end in .gif (always available) or "
                         f".mp4 (with saferl[video]); got suffix {path.suffix!r}.")
    if suffix == ".mp4":
        try:
            import imageio.v2  # noqa: F401
            import imageio_ffmpeg  # noqa: F401
        except ImportError as error:
            raise VideoBackendError(
                f"writing {str(path)!r} (.mp4) needs imageio with ffmpeg, which is not "
                f"installed: pip install 'saferl[video]' (or write a .gif).") from error


def write_video(frames: list[np.ndarray], path: Path, fps: int = 20) -> None:
    """Write RGB frames as an animated GIF (Pillow) or, with ``saferl[video]``, MP4."""
    if not frames:
        raise ValueError("no frames to write")
    check_video_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        from PIL import Image

        images = [Image.fromarray(np.asarray(f, np.uint8)) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=1000 // fps,
                       loop=0)
        return
    import imageio.v2 as imageio

    imageio.mimwrite(path, [np.asarray(f, np.uint8) for f in frames], fps=fps)
