"""Cost shaping from a safety margin: sparse, dense and barrier costs (CPO paper §6.3).

A *safety margin* ``h(s)`` is a distance to each cost's unsafe set (the native tasks expose
``safety_margin(state)``; for a gymnasium environment the user gives ``margin_fn(obs, info)``).
From it saferl derives, per constraint and with a *safety buffer* ``b > 0``:

* ``"sparse"``  — the environment's own indicator cost (unchanged);
* ``"dense"``   — ``max(0, 1 − h/b)``: 0 beyond the buffer, rising linearly to 1 at the
  boundary and beyond it in proportion to the depth of the violation;
* ``"barrier"`` — ``−log(clip(h/b, ε, 1))``: 0 beyond the buffer and growing without bound as
  ``h → 0`` (capped at ``−log ε`` on and past the boundary, so it stays finite).

Dense and barrier costs give the learner a signal *before* the indicator fires, at the price of
changing what the limit means: the limit now applies to the shaped cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np

from saferl.envs.core import EnvSpec
from saferl.envs.native import make_task

CostTransform = Literal["sparse", "dense", "barrier"]
TRANSFORMS = ("sparse", "dense", "barrier")
BARRIER_EPSILON = 1e-3


def shape_cost(margin: Any, buffer: float, transform: CostTransform) -> Any:
    """The dense or barrier cost of a margin (numpy or jax arrays; see the module docstring)."""
    xp = jnp if isinstance(margin, jax.Array) else np
    if transform == "dense":
        return xp.maximum(0.0, 1.0 - margin / buffer)
    if transform == "barrier":
        return -xp.log(xp.clip(margin / buffer, BARRIER_EPSILON, 1.0))
    raise ValueError(f"transform must be 'dense' or 'barrier' here; got {transform!r}.")


def _check(transform: str, buffer: float) -> None:
    if transform not in TRANSFORMS:
        raise ValueError(f"cost_transform must be one of {list(TRANSFORMS)}; got {transform!r}.")
    if not (buffer > 0 and math.isfinite(buffer)):
        raise ValueError(f"cost_buffer must be a finite number > 0; got {buffer}.")


@dataclass(frozen=True)
class ShapedCostTask:
    """A native task whose costs are derived from its safety margin (pure, jittable).

    Attributes:
        task: The native task (must implement ``safety_margin``).
        transform: ``"sparse"``, ``"dense"`` or ``"barrier"``.
        buffer: The safety buffer ``b`` in the margin's units (metres for Circle/Run).
    """

    task: Any
    transform: CostTransform = "dense"
    buffer: float = 1.0
    spec: EnvSpec = field(init=False)

    def __post_init__(self) -> None:
        _check(self.transform, self.buffer)
        object.__setattr__(self, "spec", self.task.spec)

    def reset(self, key: jax.Array) -> tuple[Any, jax.Array]:
        """The task's reset."""
        return self.task.reset(key)

    def step(self, state: Any, action: jax.Array) -> tuple[Any, jax.Array, jax.Array, jax.Array,
                                                           jax.Array]:
        """The task's step with the costs replaced by the shaped margin costs."""
        state, obs, reward, costs, terminated = self.task.step(state, action)
        if self.transform != "sparse":
            costs = shape_cost(self.task.safety_margin(state), self.buffer,
                               self.transform).astype(costs.dtype)
        return state, obs, reward, costs, terminated

    def safety_margin(self, state: Any) -> jax.Array:
        """The task's margin."""
        return self.task.safety_margin(state)

    def render(self, state: Any, size: int = 256) -> np.ndarray:
        """The task's frame."""
        return self.task.render(state, size)


class SafetyMarginCost(gymnasium.Wrapper):
    """Replace a gymnasium env's cost with a dense or barrier cost of a user-given margin.

    ``margin_fn(obs, info) -> float | array[m]`` is evaluated on the observation returned by
    each step; the shaped cost is written to ``info["cost"]`` (one constraint) or
    ``info["costs"]``, and the original is kept in ``info["raw_cost"]`` / ``info["raw_costs"]``.
    """

    def __init__(self, env: gymnasium.Env, margin_fn: Callable[[np.ndarray, dict], Any],
                 transform: CostTransform = "dense", buffer: float = 1.0) -> None:
        super().__init__(env)
        _check(transform, buffer)
        self.margin_fn, self.transform, self.buffer = margin_fn, transform, buffer

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        """Step the env and reshape its cost."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.transform != "sparse":
            info = dict(info)
            margin = np.atleast_1d(np.asarray(self.margin_fn(obs, info), np.float64))
            shaped = shape_cost(margin, self.buffer, self.transform)
            # Replace every cost key the env reports, so no reader sees the raw cost by mistake.
            if "costs" in info:
                info["raw_costs"], info["costs"] = info["costs"], shaped
            if "cost" in info or "costs" not in info:
                info["raw_cost"] = info.get("cost")
                info["cost"] = float(shaped[0]) if shaped.shape == (1,) else shaped
        return obs, reward, terminated, truncated, info


def build_task(run: Any) -> Any:
    """The native task of a run configuration (``env``, ``env_kwargs``), with its cost
    transform (``cost_transform``, ``cost_buffer``) applied."""
    task = make_task(run.env, **run.env_kwargs)
    if run.cost_transform != "sparse":
        task = ShapedCostTask(task, run.cost_transform, run.cost_buffer)
    return task
