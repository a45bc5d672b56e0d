"""Agent dynamics of the native tasks: a ball (damped point mass) and a car (kinematic vehicle).

Both are pure JAX functions of a small state, chosen to match the *behaviour* of
Bullet-Safety-Gym's agents closely enough that algorithms and hyperparameters transfer, while
stepping a million times faster. They are not a physics engine: no contacts, no wheel slip.

Ball (Bullet ``Ball``: 0.3 kg sphere of radius 0.5 pushed by an external xy force of 3.5·a N).
Fitted to the Bullet ball under constant action: ``dv/dt = 8.0·a − 0.45·v`` (per-second damping
0.45, i.e. a terminal speed of about 18 m/s at full throttle), integrated exactly over ``dt``.
Observation (7): ``[0.1·x, 0.1·y, 0.2·vx, 0.2·vy, 0.1·ωx, 0.1·ωy, 0.1·ωz]`` with the rolling
angular velocity ``ω = (−vy, vx, 0)/0.5``, the layout and scaling of Bullet's ball.
Agent reward term: ``−0.5·‖a‖``.

Car (Bullet ``RaceCar``: throttle drives the wheels' target speed, the second action steers).
Kinematic bicycle: speed ``v`` follows ``v_max·a₀`` with time constant ``tau`` (6 m/s, 1.5 s,
matching the Bullet car's acceleration from rest), steering angle ``0.5·a₁`` rad, wheelbase 1 m,
yaw rate ``v·tan(steer)/L``. Observation (7): ``[0.1·x, 0.1·y, vx, vy, sin ψ, cos ψ, 0.1·ψ̇]``,
Bullet's layout. Agent reward term: 0. Positive throttle drives forward along the heading.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class BallState(NamedTuple):
    """Position and velocity of the ball, both ``[2]``."""

    position: jax.Array
    velocity: jax.Array


class CarState(NamedTuple):
    """Position ``[2]``, heading ψ, signed forward speed and yaw rate of the car."""

    position: jax.Array
    heading: jax.Array
    speed: jax.Array
    yaw_rate: jax.Array


BALL_ACCELERATION = 8.0
BALL_DAMPING = 0.45
BALL_RADIUS = 0.5
CAR_MAX_SPEED = 6.0
CAR_SPEED_TIME_CONSTANT = 1.5
CAR_MAX_STEER = 0.5
CAR_WHEELBASE = 1.0


def ball_step(state: BallState, action: jax.Array, dt: float) -> BallState:
    """Exact integration of ``dv/dt = k_a·a − k_d·v`` over ``dt`` (constant action)."""
    decay = jnp.exp(-BALL_DAMPING * dt)
    terminal_velocity = BALL_ACCELERATION * action / BALL_DAMPING
    velocity = terminal_velocity + (state.velocity - terminal_velocity) * decay
    # Position: the integral of the exponential velocity profile over the step.
    position = state.position + terminal_velocity * dt + (
        state.velocity - terminal_velocity) * (1.0 - decay) / BALL_DAMPING
    return BallState(position, velocity)


def ball_observation(state: BallState) -> jax.Array:
    """Bullet's 7-dimensional ball observation."""
    vx, vy = state.velocity[0], state.velocity[1]
    angular = jnp.stack([-vy, vx, jnp.zeros_like(vx)]) / BALL_RADIUS
    return jnp.concatenate([0.1 * state.position, 0.2 * state.velocity, 0.1 * angular])


def ball_velocity(state: BallState) -> jax.Array:
    """World-frame xy velocity ``[2]``."""
    return state.velocity


def ball_agent_reward(action: jax.Array) -> jax.Array:
    """Bullet's ball action penalty."""
    return -0.5 * jnp.linalg.norm(action)


def car_step(state: CarState, action: jax.Array, dt: float) -> CarState:
    """Kinematic bicycle with a first-order lag on speed, integrated over ``dt``."""
    target_speed = CAR_MAX_SPEED * action[0]
    decay = jnp.exp(-dt / CAR_SPEED_TIME_CONSTANT)
    speed = target_speed + (state.speed - target_speed) * decay
    mean_speed = 0.5 * (state.speed + speed)
    yaw_rate = mean_speed * jnp.tan(CAR_MAX_STEER * action[1]) / CAR_WHEELBASE
    heading = state.heading + yaw_rate * dt
    mid_heading = state.heading + 0.5 * yaw_rate * dt
    direction = jnp.stack([jnp.cos(mid_heading), jnp.sin(mid_heading)])
    position = state.position + mean_speed * dt * direction
    heading = jnp.arctan2(jnp.sin(heading), jnp.cos(heading))
    return CarState(position, heading, speed, yaw_rate)


def car_velocity(state: CarState) -> jax.Array:
    """World-frame xy velocity ``[2]``."""
    return state.speed * jnp.stack([jnp.cos(state.heading), jnp.sin(state.heading)])


def car_observation(state: CarState) -> jax.Array:
    """Bullet's 7-dimensional car observation."""
    return jnp.concatenate([
        0.1 * state.position, car_velocity(state),
        jnp.stack([jnp.sin(state.heading), jnp.cos(state.heading), 0.1 * state.yaw_rate])])


def car_agent_reward(action: jax.Array) -> jax.Array:
    """Bullet's car has no agent-specific reward term."""
    return jnp.zeros((), action.dtype)


def ball_init(position: jax.Array, heading: jax.Array) -> BallState:
    """A ball at rest at ``position`` (a ball has no heading)."""
    del heading
    return BallState(position, jnp.zeros_like(position))


def car_init(position: jax.Array, heading: jax.Array) -> CarState:
    """A car at rest at ``position`` facing ``heading``."""
    zero = jnp.zeros((), position.dtype)
    return CarState(position, heading.astype(position.dtype), zero, zero)


def ball_position(state: BallState) -> jax.Array:
    """xy position ``[2]``."""
    return state.position


def car_position(state: CarState) -> jax.Array:
    """xy position ``[2]``."""
    return state.position


class Agent(NamedTuple):
    """The functions a task needs from an agent, and its Bullet constants."""

    name: str
    obs_dim: int
    action_dim: int
    speed_limit: float  # Bullet's velocity_constraint, used by the Run task
    init: object
    step: object
    observation: object
    position: object
    velocity: object
    agent_reward: object


AGENTS: dict[str, Agent] = {
    "ball": Agent("ball", 7, 2, 2.5, ball_init, ball_step, ball_observation, ball_position,
                  ball_velocity, ball_agent_reward),
    "car": Agent("car", 7, 2, 1.5, car_init, car_step, car_observation, car_position,
                 car_velocity, car_agent_reward),
}
