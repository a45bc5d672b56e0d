"""CPO's learned safety predictor (Achiam et al. 2017, §6.3): cost shaping from a classifier.

A small network ``P(s)`` predicts whether a cost occurs within the next ``T`` steps; the
constraint is then put on the shaped cost ``c⁺ = c + α·P(s)`` instead of ``c``, which moves the
policy away from states that lead to costs before it pays them. Each iteration the predictor is
refit on the batch (``predictor_steps`` Adam steps of binary cross-entropy) against the targets
``y_t = min(1, Σ_{j<T} c_{t+j})`` within each episode (:func:`unsafe_soon`).

The dense and barrier transforms of native tasks' safety margins are in
:mod:`saferl.envs.wrappers`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from saferl.core.networks import MLP


class PredictorState(NamedTuple):
    """Parameters and Adam state of the safety predictor (unused unless enabled)."""

    params: Any
    opt_state: Any


def make_predictor(num_costs: int) -> MLP:
    """The predictor network: one hidden layer of 32 tanh units, one logit per cost."""
    return MLP((32,), num_costs, "tanh")


def predictor_optimizer(learning_rate: float) -> optax.GradientTransformation:
    """Adam with the predictor's step size."""
    return optax.adam(learning_rate)


def predictor_init(predictor: MLP, obs_dim: int, learning_rate: float,
                   key: jax.Array) -> PredictorState:
    """Fresh predictor parameters and Adam state."""
    params = predictor.init(key, jnp.zeros((1, obs_dim)))
    return PredictorState(params, predictor_optimizer(learning_rate).init(params))


def unsafe_soon(costs: jax.Array, done: jax.Array, horizon: int) -> jax.Array:
    """Predictor targets ``y_t = min(1, Σ_{j<T} c_{t+j})`` within each episode.

    Args:
        costs: ``[T, N, m]`` costs of a rollout.
        done: ``[T, N]`` episode ended at this step (the window stops after it).
        horizon: The window ``T`` (the window is cut at the rollout's end).

    Returns:
        ``[T, N, m]`` targets in {0, 1} for indicator costs.
    """
    steps = costs.shape[0]
    total = jnp.zeros_like(costs)
    alive = jnp.ones(costs.shape[:2], costs.dtype)  # no boundary between t and t + k
    for k in range(horizon):
        shifted = jnp.concatenate([costs[k:], jnp.zeros_like(costs[:k])], axis=0)[:steps]
        total = total + alive[..., None] * shifted
        ended = jnp.concatenate([done[k:], jnp.ones_like(done[:k])], axis=0)[:steps]
        alive = alive * (1.0 - ended.astype(costs.dtype))
    return jnp.minimum(1.0, total)


def fit_predictor(predictor: MLP, state: PredictorState, learning_rate: float, steps: int,
                  observations: jax.Array, targets: jax.Array
                  ) -> tuple[PredictorState, jax.Array]:
    """``steps`` Adam steps of binary cross-entropy on the whole batch; the last loss."""
    tx = predictor_optimizer(learning_rate)
    obs = observations.reshape(-1, observations.shape[-1])
    y = targets.reshape(-1, targets.shape[-1])

    def loss_fn(params: Any) -> jax.Array:
        logits = predictor.apply(params, obs)
        return optax.sigmoid_binary_cross_entropy(logits, y).mean()

    def step(carry: PredictorState, _: None) -> tuple[PredictorState, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(carry.params)
        updates, opt_state = tx.update(grads, carry.opt_state, carry.params)
        return PredictorState(optax.apply_updates(carry.params, updates), opt_state), loss

    state, losses = jax.lax.scan(step, state, None, length=steps)
    return state, losses[-1]


def shaped_costs(predictor: MLP, state: PredictorState, learning_rate: float, steps: int,
                 horizon: int, alpha: float, observations: jax.Array, costs: jax.Array,
                 done: jax.Array) -> tuple[PredictorState, jax.Array, dict[str, jax.Array]]:
    """Refit the predictor on a rollout, then ``c⁺ = c + α·P(a cost within T steps | s)``.

    Args:
        predictor: The predictor network.
        state: Its parameters and Adam state.
        learning_rate: Adam step size.
        steps: Adam steps on this rollout.
        horizon: ``T`` of the targets.
        alpha: The weight α of the predicted probability.
        observations: ``[T, N, obs_dim]`` (normalised as the policy sees them).
        costs: ``[T, N, m]``.
        done: ``[T, N]``.

    Returns:
        The refit state, the shaped costs ``[T, N, m]`` and the ``predictor/*`` metrics.
    """
    targets = unsafe_soon(costs, done, horizon)
    state, loss = fit_predictor(predictor, state, learning_rate, steps, observations, targets)
    probability = jax.nn.sigmoid(predictor.apply(state.params, observations))
    return state, costs + alpha * probability, {"predictor/loss": loss,
                                               "predictor/mean_probability": probability.mean()}
