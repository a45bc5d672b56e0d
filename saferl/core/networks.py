"""Flax networks: an MLP, a Gaussian policy, and a bank of value critics (reward + each cost).

The critics for the reward and for every cost are independent MLPs with identical shapes,
evaluated side by side (see :class:`ValueCritics` for why they are not ``nn.vmap``-stacked).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "elu": nn.elu, "gelu": nn.gelu}

#: numpy twins of :data:`ACTIVATIONS` for the host-side forward passes (:func:`host_mlp`).
NUMPY_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    # flax's nn.gelu defaults to the tanh approximation.
    "gelu": lambda x: 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3))),
}

#: Up to this many action inputs, :class:`PairDense` adds the action part element by element.
SMALL_ACTION_DIM = 8


class MLP(nn.Module):
    """Fully connected network with orthogonal initialisation (√2 hidden gain).

    Called with a second input ``action``, the network is of the pair ``(x, action)``: its first
    layer is a :class:`PairDense`, with the parameters and initial values of ``nn.Dense`` on
    ``concatenate([x, action])``, and ``x`` and ``action`` broadcast in their leading axes.
    """

    hidden_sizes: Sequence[int]
    output_size: int
    activation: str = "tanh"
    output_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, action: jax.Array | None = None) -> jax.Array:
        """Map ``[..., in]`` (and ``[..., action_dim]``) to ``[..., output_size]``."""
        act = ACTIVATIONS[self.activation]
        sizes = [*self.hidden_sizes, self.output_size]
        for i, size in enumerate(sizes):
            gain = self.output_scale if i == len(sizes) - 1 else np.sqrt(2)
            init = nn.initializers.orthogonal(gain)
            if i == 0 and action is not None:
                x = PairDense(size, init, name="Dense_0")(x, action)
            else:
                x = nn.Dense(size, kernel_init=init, name=f"Dense_{i}")(x)
            if i < len(sizes) - 1:
                x = act(x)
        return x


def host_params(params: Any) -> Any:
    """A parameter tree copied to the host as float64 numpy arrays (for :func:`host_mlp`)."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), jax.device_get(params))


def host_mlp(params: Mapping[str, Any], x: np.ndarray, activation: str) -> np.ndarray:
    """numpy forward pass of :class:`MLP` parameters that carry a leading seed axis.

    Host rollouts act once per environment step; a jitted call costs more than this pass for the
    few observations of one step, and it would wait behind a running update (XLA on CPU runs a
    device's programs one after another).

    Args:
        params: The MLP's ``{"Dense_i": {"kernel": [S, in, out], "bias": [S, out]}}`` (float64
            from :func:`host_params`; other dtypes are converted on every call).
        x: ``[S, N, in]`` inputs.
        activation: A key of :data:`NUMPY_ACTIVATIONS`.

    Returns:
        ``[S, N, out]`` float64 outputs.
    """
    names = sorted(params, key=lambda name: int(name.split("_")[-1]))
    act = NUMPY_ACTIVATIONS[activation]
    x = np.asarray(x, np.float64)
    for index, name in enumerate(names):
        layer = params[name]
        x = x @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"],
                                                                     np.float64)[:, None]
        if index < len(names) - 1:
            x = act(x)
    return x


class PairDense(nn.Module):
    """A dense layer of the pair ``(obs, action)``: ``obs W_o + action W_a + b``.

    The same parameters (``kernel`` ``[obs + action, features]``, ``bias``) and initialisation as
    ``nn.Dense`` on ``concatenate([obs, action])``, but the two parts are multiplied separately
    and added with broadcasting, so ``obs [B, d]`` with ``action [K, B, A]`` computes the
    observation part once per state instead of ``K`` times (CVPO's E-step scores ``K`` sampled
    actions per state).
    """

    features: int
    kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        """``[..., features]`` over the broadcast leading shape of ``obs`` and ``action``."""
        obs_dim = obs.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (obs_dim + action.shape[-1],
                                                         self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        out = obs @ kernel[:obs_dim] + bias
        action_kernel = kernel[obs_dim:]
        if action.shape[-1] > SMALL_ACTION_DIM:
            return out + action @ action_kernel
        # A handful of action inputs: broadcast multiply-adds, which XLA fuses with the sum (and
        # the activation after it) into one pass, instead of a [K·B, A] × [A, features] matrix
        # product written out and read back (faster for CVPO's E-step: RESULTS.md D3).
        for j in range(action.shape[-1]):
            out = out + action[..., j:j + 1] * action_kernel[j]
        return out


class GaussianPolicy(nn.Module):
    """Diagonal Gaussian policy: an MLP mean and a state-independent learned log-std."""

    action_dim: int
    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"
    init_log_std: float = -0.5

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Return ``(mean, log_std)``, each ``[..., action_dim]``."""
        mean = MLP(self.hidden_sizes, self.action_dim, self.activation, output_scale=0.01)(obs)
        log_std = self.param("log_std", nn.initializers.constant(self.init_log_std),
                             (self.action_dim,))
        return mean, jnp.broadcast_to(log_std, mean.shape)


class ValueCritics(nn.Module):
    """``num_critics`` independent state-value MLPs evaluated together: ``[..., num_critics]``.

    Separate sub-networks rather than one ``nn.vmap``-stacked network: XLA on CPU runs the
    batched matrix multiply of a stacked network about 1.8× slower than separate ones.
    """

    num_critics: int
    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        """Values of ``obs`` for every critic, last axis ``num_critics``."""
        values = [MLP(self.hidden_sizes, 1, self.activation, 1.0, name=f"critic_{i}")(obs)
                  for i in range(self.num_critics)]
        return jnp.concatenate(values, axis=-1)


class TanhGaussianActor(nn.Module):
    """Gaussian over pre-squash actions ``u`` with a state-dependent std; ``a = tanh(u)``.

    Used by SAC (reparametrised tanh-Gaussian samples) and CVPO (whose E-step samples ``u`` and
    whose M-step needs the exact Gaussian KL between old and new policies). ``log_std`` is
    squashed smoothly into ``[log_std_min, log_std_max]`` by a sigmoid shifted so that a fresh
    network (outputs ≈ 0) starts at ``init_log_std``: a tiny initial std would leave CVPO's
    E-step with identical samples and nothing to learn from.
    """

    action_dim: int
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    init_log_std: float = 0.0

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Return ``(mean, log_std)`` of ``u``, each ``[..., action_dim]``."""
        out = MLP(self.hidden_sizes, 2 * self.action_dim, self.activation, output_scale=0.01)(obs)
        mean, raw = jnp.split(out, 2, axis=-1)
        span, shift = _log_std_squash(self)
        log_std = self.log_std_min + span * jax.nn.sigmoid(raw + shift)
        return mean, log_std


def _log_std_squash(actor: TanhGaussianActor) -> tuple[float, float]:
    """Span and shift of the sigmoid that maps a raw output to ``log_std`` (0 → ``init``)."""
    span = actor.log_std_max - actor.log_std_min
    fraction = (actor.init_log_std - actor.log_std_min) / span
    return span, float(np.log(fraction / (1.0 - fraction)))


def host_tanh_gaussian(actor: TanhGaussianActor, params: Any,
                       obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy twin of ``actor.apply(params, obs)`` with a leading seed axis: ``(mean, log_std)``.

    ``params`` from :func:`host_params`, ``obs`` ``[S, N, obs_dim]``.
    """
    out = host_mlp(params["params"]["MLP_0"], obs, actor.activation)
    mean, raw = np.split(out, 2, axis=-1)
    span, shift = _log_std_squash(actor)
    sigmoid = 0.5 * (1.0 + np.tanh(0.5 * (raw + shift)))  # no overflow for large |raw|
    return mean, actor.log_std_min + span * sigmoid


class DeterministicActor(nn.Module):
    """``a = tanh(MLP(obs))`` in ``[-1, 1]^A`` (DDPG, TD3)."""

    action_dim: int
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        """Actions ``[..., action_dim]`` in ``[-1, 1]``."""
        return jnp.tanh(MLP(self.hidden_sizes, self.action_dim, self.activation,
                            output_scale=0.01)(obs))


def host_deterministic(actor: DeterministicActor, params: Any, obs: np.ndarray) -> np.ndarray:
    """numpy twin of ``actor.apply(params, obs)`` with a leading seed axis (``[S, N, A]``).

    ``params`` from :func:`host_params`, ``obs`` ``[S, N, obs_dim]``.
    """
    return np.tanh(host_mlp(params["params"]["MLP_0"], obs, actor.activation))


class QCritics(nn.Module):
    """``num_reward`` reward Q-networks and ``num_costs`` cost Q-networks of ``(obs, action)``.

    Returns ``[..., num_reward + num_costs]``: the reward critics first (twin critics for SAC,
    TD3 and CVPO, whose target takes their minimum), then one critic per cost. Separate MLPs, as
    in :class:`ValueCritics`. ``obs`` and ``action`` broadcast against each other in their
    leading axes: ``obs [B, d]`` with ``action [K, B, A]`` scores ``K`` actions per state.
    """

    num_reward: int
    num_costs: int
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        """Q-values of every critic, last axis ``num_reward + num_costs``."""
        names = ([f"reward_{i}" for i in range(self.num_reward)]
                 + [f"cost_{i}" for i in range(self.num_costs)])
        values = [MLP(self.hidden_sizes, 1, self.activation, 1.0, name=name)(obs, action)
                  for name in names]
        return jnp.concatenate(values, axis=-1)
