"""The member axis: several independent training runs in one process, one compiled program.

A *member* is one trained policy with its own state: a seed and, in a grid of cost limits
(``--limits 20 40 60``, :func:`members`), a limit, held in the member's state. Every leaf of an
engine's state carries a leading member axis. The engines

- map their per-member functions over it (:func:`over_members`: ``vmap``, or the plain
  function for a single member),
- shard it across the local XLA devices (:func:`member_sharding`, :func:`place_members`), so
  that members run on different cores (the ``saferl`` command asks XLA for one CPU device per
  core; one member's small matrix products keep only part of two cores busy),
- build the members' initial states as one compiled program (:func:`stacked_initial_states`),
- and compile ahead of time against the placed states' shapes (:func:`abstract_placed`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from saferl.core.precompile import QUICK_COMPILE, abstract


def over_members(fn: Callable[..., Any], count: int,
                 in_axes: int | tuple[int | None, ...] = 0) -> Callable[..., Any]:
    """``jax.vmap(fn, in_axes)`` over the leading member axis; for one member, ``fn`` on the
    squeezed arguments with the axis put back on its outputs.

    The single-member path matters for speed: under ``vmap`` every ``lax.cond`` turns into a
    ``select`` that computes both branches, so a solver's rarely taken fallback (a line search,
    a backtracking ladder) would run on every step.
    """
    if count > 1:
        return jax.vmap(fn, in_axes=in_axes)
    axes = in_axes if isinstance(in_axes, tuple) else None

    def single(*args: Any) -> Any:
        squeezed = [arg if axes is not None and axes[i] is None
                    else jax.tree_util.tree_map(lambda x: x[0], arg)
                    for i, arg in enumerate(args)]
        return jax.tree_util.tree_map(lambda x: x[None], fn(*squeezed))

    return single


def member_sharding(count: int) -> jax.sharding.Sharding:
    """Where a member-stacked pytree lives: its member axis split over the largest number of
    local devices that divides ``count`` (one device: all of it on the first)."""
    devices = jax.local_devices()
    used = max(d for d in range(1, min(len(devices), count) + 1) if count % d == 0)
    if used == 1:
        return jax.sharding.SingleDeviceSharding(devices[0])
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    return NamedSharding(Mesh(np.array(devices[:used]), ("member",)), PartitionSpec("member"))


def place_members(states: Any, count: int) -> Any:
    """Put a member-stacked pytree where :func:`member_sharding` says."""
    return jax.device_put(states, member_sharding(count))


def abstract_placed(states: Any | None, initial: Callable[[], Any], count: int) -> Any:
    """Shapes, dtypes and shardings of placed states, for compiling ahead of the first call:
    those of ``states`` (already placed), or, if ``None``, of what ``initial()`` would build
    (traced, not run) placed by :func:`place_members`."""
    if states is not None:
        return abstract(states)
    return abstract(jax.eval_shape(initial), member_sharding(count))


def stacked_initial_states(init_one: Callable[[jax.Array, jax.Array], Any],
                           grid: Sequence[Member]) -> Any:
    """``init_one(seed, cost_limit)`` for every member, stacked along a leading member axis.

    ``init_one`` runs as one compiled program (the same for every member) built with
    :data:`~saferl.core.precompile.QUICK_COMPILE`, which also adds the member axis: run
    eagerly, the Flax initialisers, optimiser states and buffers would compile ≈ 90 small
    programs one by one, and stacking the leaves ≈ 20 more (benchmarks/RESULTS.md D7). Several
    members are joined on the host. The values equal eager execution's up to float rounding
    (≈ 1e-6 in the orthogonal initialisers' QR).
    """
    def one(seed: jax.Array, cost_limit: jax.Array) -> Any:
        return jax.tree_util.tree_map(lambda x: x[None], init_one(seed, cost_limit))

    # Traced inside another function (jax.eval_shape for ahead-of-time compilation), a jit is
    # nested and takes no compiler options; only shapes matter there.
    traced = isinstance(jax.numpy.zeros(()), jax.core.Tracer)
    build = jax.jit(one) if traced else jax.jit(one, compiler_options=QUICK_COMPILE)
    states = [build(jax.numpy.asarray(m.seed, jax.numpy.uint32),
                    jax.numpy.asarray(m.cost_limit, jax.numpy.float32)) for m in grid]
    if len(states) == 1:
        return states[0]
    if traced:
        return jax.tree_util.tree_map(lambda *xs: jax.numpy.concatenate(xs), *states)
    return jax.device_put(jax.tree_util.tree_map(
        lambda *xs: np.concatenate([np.asarray(x) for x in xs]), *states))


class Member(NamedTuple):
    """One member of a run: the seed it trains with and its cost limits (one per constraint)."""

    seed: int
    cost_limit: tuple[float, ...]


def limit_text(limit: Sequence[float]) -> str:
    """A limit vector as the CLI writes it: ``20``, or ``20,5`` for two constraints."""
    return ",".join(f"{float(x):g}" for x in limit)


def member_limits(config: Any) -> tuple[tuple[float, ...], ...]:
    """The cost limits a run trains under, one vector per limit of its grid.

    A linear-combination baseline (``cppo_lag``, ``ctrpo_lag``: its configuration has
    ``limit_grid``) trains one policy per behaviour threshold; any other run its
    ``run.limits``, or ``(run.cost_limit,)`` when none are given.
    """
    grid = getattr(config, "limit_grid", None)
    if grid is not None:
        return tuple(tuple(float(x) for x in limit) for limit in grid)
    run = config.run
    return tuple(run.limits) if run.limits else (tuple(run.cost_limit),)


def has_limit_grid(config: Any) -> bool:
    """Whether the members of a run are labelled by their limit too (a grid of limits was
    asked for: ``run.limits`` or a combination baseline), not by their seed alone."""
    return getattr(config, "limit_grid", None) is not None or bool(config.run.limits)


def members(config: Any) -> tuple[Member, ...]:
    """Every member of a run, limits major and seeds minor: ``--limits 20 40 --seeds 0 1``
    trains ``(0, 20), (1, 20), (0, 40), (1, 40)``."""
    return tuple(Member(seed, limit) for limit in member_limits(config)
                 for seed in config.run.seed_list)


def member_label(member: Member, grid: bool) -> str:
    """How files and tables name a member: its seed (``3``), or in a grid of limits its seed
    and limit (``3@20``; ``3@20,5`` with two constraints)."""
    return f"{member.seed}@{limit_text(member.cost_limit)}" if grid else str(member.seed)


def member_labels(config: Any) -> tuple[str, ...]:
    """:func:`member_label` of every member of ``config``, in member order."""
    grid = has_limit_grid(config)
    return tuple(member_label(m, grid) for m in members(config))
