"""Native Run task (Bullet-Safety-Gym ``Safety{Ball,Car}Run-v0``).

The agent is rewarded for progress along +x and pays for leaving the corridor ``|y| ≤ 2`` or
exceeding its speed limit (ball 2.5 m/s, car 1.5 m/s). Running fast earns reward, so the speed
limit binds.

* Reward: the change of the potential ``−60·‖p − (1000, 0)‖`` plus the agent term
  (Bullet's formula: for the ball ``−0.5·‖a‖``, not scaled).
* Cost (default, Bullet's): ``min(1, 1[|y| > 2] + 1[‖v‖ > v_max])``, one signal ``cost``.
  With ``separate_costs=True`` two signals instead, ``cost_outside_bounds`` and
  ``cost_speed``, for multi-constraint experiments.
* Observation: the agent's 7 values (see :mod:`saferl.envs.native.agents`).
* Reset: position uniform in ``[−0.01, 0.01]²``, at rest, facing +x.
* Episode length: 100 steps (ball) or 200 (car); ``dt`` = 1/30 s (Bullet: 1/120 s × 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np

from saferl.envs.core import EnvSpec
from saferl.envs.native.agents import AGENTS
from saferl.envs.native.render import render_topdown

Y_LIMIT = 2.0
GOAL = (1000.0, 0.0)
POTENTIAL_SCALE = 60.0
DT = 1.0 / 30.0




def _potential(position: jax.Array) -> jax.Array:
    goal = jnp.asarray(GOAL, position.dtype)
    return -POTENTIAL_SCALE * jnp.linalg.norm(position - goal)


@dataclass(frozen=True)
class Run:
    """The Run task for one agent (see the module docstring).

    Attributes:
        agent: ``"ball"`` or ``"car"``.
        separate_costs: Report the corridor and the speed costs as two signals.
        max_episode_steps: Time limit; default is Bullet's (ball 100, car 200).
    """

    agent: str = "ball"
    separate_costs: bool = False
    max_episode_steps: int | None = None
    spec: EnvSpec = field(init=False)

    def __post_init__(self) -> None:
        if self.agent not in AGENTS:
            raise ValueError(f"Run.agent must be one of {sorted(AGENTS)}; got {self.agent!r}.")
        agent = AGENTS[self.agent]
        names = ("cost_outside_bounds", "cost_speed") if self.separate_costs else ("cost",)
        steps = self.max_episode_steps or (100 if self.agent == "ball" else 200)
        spec = EnvSpec(
            id=f"saferl/{self.agent.capitalize()}Run-v0",
            observation_space=gymnasium.spaces.Box(-np.inf, np.inf, (agent.obs_dim,), np.float32),
            action_space=gymnasium.spaces.Box(-1.0, 1.0, (agent.action_dim,), np.float32),
            num_costs=len(names), cost_names=names, max_episode_steps=steps)
        object.__setattr__(self, "spec", spec)

    def reset(self, key: jax.Array) -> tuple[Any, jax.Array]:
        """Near the origin, at rest, facing +x."""
        position = jax.random.uniform(key, (2,), minval=-0.01, maxval=0.01)
        agent = AGENTS[self.agent]
        state = agent.init(position, jnp.zeros(()))
        return state, agent.observation(state)

    def step(self, state: Any, action: jax.Array) -> tuple[Any, jax.Array, jax.Array, jax.Array,
                                                           jax.Array]:
        """One step: dynamics, potential-based reward and the corridor/speed costs."""
        agent = AGENTS[self.agent]
        old_potential = _potential(agent.position(state))
        state = agent.step(state, action, DT)
        reward = _potential(agent.position(state)) - old_potential + agent.agent_reward(action)
        violations = (self.safety_margin_parts(state) < 0.0).astype(jnp.float32)
        costs = violations if self.separate_costs else jnp.minimum(1.0, violations.sum())[None]
        return state, agent.observation(state), reward, costs, jnp.zeros((), bool)

    def safety_margin_parts(self, state: Any) -> jax.Array:
        """``[Y_LIMIT − |y|, v_max − ‖v‖]``."""
        agent = AGENTS[self.agent]
        return jnp.stack([Y_LIMIT - jnp.abs(agent.position(state)[1]),
                          agent.speed_limit - jnp.linalg.norm(agent.velocity(state))])

    def safety_margin(self, state: Any) -> jax.Array:
        """One margin per cost: both parts, or their minimum for the combined cost."""
        parts = self.safety_margin_parts(state)
        return parts if self.separate_costs else jnp.min(parts)[None]

    def render(self, state: Any, size: int = 256) -> np.ndarray:
        """A top-down RGB frame around the agent: the corridor and the agent."""
        position = np.asarray(AGENTS[self.agent].position(state))
        return render_topdown(position, extent=6.0, y_limit=Y_LIMIT, size=size,
                              center=(float(position[0]), 0.0))
