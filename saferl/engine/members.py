"""The member axis: several independent training runs in one process, one compiled program.

A *member* is one trained policy with its own state. Today a member is a seed; every leaf of
an engine's state carries a leading member axis. The engines

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
from typing import Any

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


def stacked_initial_states(init_one: Callable[[jax.Array], Any], seeds: Sequence[int]) -> Any:
    """``init_one(seed)`` for every member's seed, stacked along a leading member axis.

    ``init_one`` runs as one compiled program (the same for every member) built with
    :data:`~saferl.core.precompile.QUICK_COMPILE`, which also adds the member axis: run
    eagerly, the Flax initialisers, optimiser states and buffers would compile ≈ 90 small
    programs one by one, and stacking the leaves ≈ 20 more (benchmarks/RESULTS.md D7). Several
    members are joined on the host. The values equal eager execution's up to float rounding
    (≈ 1e-6 in the orthogonal initialisers' QR).
    """
    def one(seed: jax.Array) -> Any:
        return jax.tree_util.tree_map(lambda x: x[None], init_one(seed))

    # Traced inside another function (jax.eval_shape for ahead-of-time compilation), a jit is
    # nested and takes no compiler options; only shapes matter there.
    traced = isinstance(jax.numpy.zeros(()), jax.core.Tracer)
    build = jax.jit(one) if traced else jax.jit(one, compiler_options=QUICK_COMPILE)
    states = [build(jax.numpy.asarray(seed, jax.numpy.uint32)) for seed in seeds]
    if len(states) == 1:
        return states[0]
    if traced:
        return jax.tree_util.tree_map(lambda *xs: jax.numpy.concatenate(xs), *states)
    return jax.device_put(jax.tree_util.tree_map(
        lambda *xs: np.concatenate([np.asarray(x) for x in xs]), *states))
