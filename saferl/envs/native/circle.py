"""Native Circle task (CPO paper; Bullet-Safety-Gym ``Safety{Ball,Car}Circle-v0``).

The agent is rewarded for running fast, clockwise, along a circle of radius 7 centred at the
origin, and pays a cost of 1 for each step outside the safe strip ``|x| ≤ 6``. The circle does
not fit in the strip, so the constraint binds: the best safe policy runs a track clipped at
``x = ±6``.

* Reward: ``0.1·⟨p, (−v_y, v_x)⟩ / (1 + |‖p‖ − 7|) + 0.01·agent_term`` (Bullet's formula).
* Cost 0 (``cost_outside_bounds``): ``1[|x| > 6]``.
* Optional cost 1 (``cost_speed``, when ``speed_limit`` is set): ``1[‖v‖ > speed_limit]``;
  a second, independent constraint for multi-constraint experiments.
* Observation: the agent's 7 values (see :mod:`saferl.envs.native.agents`) then
  ``(‖p‖ − 7)/10``: 8 values.
* Reset: uniform position in the annulus ``2 ≤ ‖p‖ ≤ 4``, at rest; the car faces the clockwise
  tangent. The arena is bounded by a round wall of radius 11.4 (Bullet's octagon): the agent is
  stopped at it.
* Episode length: 200 steps (ball) or 300 (car); ``dt`` = 0.1 s (Bullet: 1/60 s × 6 sub-steps).
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

CIRCLE_RADIUS = 7.0
X_LIMIT = 6.0
WALL_RADIUS = 11.4
WORLD_SCALE = 10.0
DT = 0.1


@dataclass(frozen=True)
class Circle:
    """The Circle task for one agent (see the module docstring).

    Attributes:
        agent: ``"ball"`` or ``"car"``.
        speed_limit: If set, adds a second cost ``1[‖v‖ > speed_limit]``.
        max_episode_steps: Time limit; default is Bullet's (ball 200, car 300).
    """

    agent: str = "ball"
    speed_limit: float | None = None
    max_episode_steps: int | None = None
    spec: EnvSpec = field(init=False)

    def __post_init__(self) -> None:
        if self.agent not in AGENTS:
            raise ValueError(f"Circle.agent must be one of {sorted(AGENTS)}; got {self.agent!r}.")
        if self.speed_limit is not None and not self.speed_limit > 0:
            raise ValueError(f"Circle.speed_limit must be > 0; got {self.speed_limit}.")
        agent = AGENTS[self.agent]
        names = ("cost_outside_bounds",) + (("cost_speed",) if self.speed_limit else ())
        steps = self.max_episode_steps or (200 if self.agent == "ball" else 300)
        spec = EnvSpec(
            id=f"saferl/{self.agent.capitalize()}Circle-v0",
            observation_space=gymnasium.spaces.Box(-np.inf, np.inf, (agent.obs_dim + 1,),
                                                   np.float32),
            action_space=gymnasium.spaces.Box(-1.0, 1.0, (agent.action_dim,), np.float32),
            num_costs=len(names), cost_names=names, max_episode_steps=steps)
        object.__setattr__(self, "spec", spec)

    def _observe(self, state: Any) -> jax.Array:
        agent = AGENTS[self.agent]
        distance = jnp.linalg.norm(agent.position(state))
        return jnp.concatenate([agent.observation(state),
                                ((distance - CIRCLE_RADIUS) / WORLD_SCALE)[None]])

    def reset(self, key: jax.Array) -> tuple[Any, jax.Array]:
        """Uniform position in the annulus 2 ≤ ‖p‖ ≤ 4, at rest, facing clockwise."""
        radius_key, angle_key = jax.random.split(key)
        # Uniform over the annulus' area: r = sqrt(U(r_min², r_max²)).
        radius = jnp.sqrt(jax.random.uniform(radius_key, (), minval=4.0, maxval=16.0))
        angle = jax.random.uniform(angle_key, (), minval=-jnp.pi, maxval=jnp.pi)
        position = radius * jnp.stack([jnp.cos(angle), jnp.sin(angle)])
        state = AGENTS[self.agent].init(position, angle - jnp.pi / 2)
        return state, self._observe(state)

    def step(self, state: Any, action: jax.Array) -> tuple[Any, jax.Array, jax.Array, jax.Array,
                                                           jax.Array]:
        """One step: dynamics, the wall, reward and costs."""
        agent = AGENTS[self.agent]
        state = agent.step(state, action, DT)
        state = _stop_at_wall(state)
        position, velocity = agent.position(state), agent.velocity(state)
        distance = jnp.linalg.norm(position)
        tangential = position[0] * -velocity[1] + position[1] * velocity[0]
        reward = 0.1 * tangential / (1.0 + jnp.abs(distance - CIRCLE_RADIUS))
        reward = reward + 0.01 * agent.agent_reward(action)
        costs = (self.safety_margin(state) < 0.0).astype(jnp.float32)
        return state, self._observe(state), reward, costs, jnp.zeros((), bool)

    def safety_margin(self, state: Any) -> jax.Array:
        """``[X_LIMIT − |x|]`` and, with a speed limit, ``speed_limit − ‖v‖``; cost where < 0."""
        agent = AGENTS[self.agent]
        margins = [X_LIMIT - jnp.abs(agent.position(state)[0])]
        if self.speed_limit:
            margins.append(self.speed_limit - jnp.linalg.norm(agent.velocity(state)))
        return jnp.stack(margins)

    def render(self, state: Any, size: int = 256) -> np.ndarray:
        """A top-down RGB frame: the circle, the safe strip and the agent."""
        agent = AGENTS[self.agent]
        return render_topdown(np.asarray(agent.position(state)), extent=WALL_RADIUS,
                              circle_radius=CIRCLE_RADIUS, x_limit=X_LIMIT, size=size)


def _stop_at_wall(state: Any) -> Any:
    """Keep the agent inside the round arena wall, removing the outward velocity."""
    position = state.position
    distance = jnp.linalg.norm(position)
    outside = distance > WALL_RADIUS
    normal = position / jnp.maximum(distance, 1e-6)
    clamped = jnp.where(outside, normal * WALL_RADIUS, position)
    state = state._replace(position=clamped)
    if hasattr(state, "velocity"):
        outward = jnp.maximum(jnp.dot(state.velocity, normal), 0.0)
        state = state._replace(velocity=jnp.where(outside, state.velocity - outward * normal,
                                                  state.velocity))
    else:  # the car: a wall hit stops it
        state = state._replace(speed=jnp.where(outside, 0.0, state.speed))
    return state
