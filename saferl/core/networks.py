"""Flax networks: an MLP, a Gaussian policy, and a bank of value critics (reward + each cost).

The critics for the reward and for every cost are independent MLPs with identical shapes,
evaluated side by side (see :class:`ValueCritics` for why they are not ``nn.vmap``-stacked).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "elu": nn.elu, "gelu": nn.gelu}


class MLP(nn.Module):
    """Fully connected network with orthogonal initialisation (√2 hidden gain)."""

    hidden_sizes: Sequence[int]
    output_size: int
    activation: str = "tanh"
    output_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Map ``[..., in]`` to ``[..., output_size]``."""
        act = ACTIVATIONS[self.activation]
        for size in self.hidden_sizes:
            x = act(nn.Dense(size, kernel_init=nn.initializers.orthogonal(np.sqrt(2)))(x))
        return nn.Dense(self.output_size,
                        kernel_init=nn.initializers.orthogonal(self.output_scale))(x)


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
        span = self.log_std_max - self.log_std_min
        fraction = (self.init_log_std - self.log_std_min) / span
        shift = float(np.log(fraction / (1.0 - fraction)))
        log_std = self.log_std_min + span * jax.nn.sigmoid(raw + shift)
        return mean, log_std


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


class QCritics(nn.Module):
    """``num_reward`` reward Q-networks and ``num_costs`` cost Q-networks of ``(obs, action)``.

    Returns ``[..., num_reward + num_costs]``: the reward critics first (twin critics for SAC,
    TD3 and CVPO, whose target takes their minimum), then one critic per cost. Separate MLPs, as
    in :class:`ValueCritics`.
    """

    num_reward: int
    num_costs: int
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        """Q-values of every critic, last axis ``num_reward + num_costs``."""
        x = jnp.concatenate([obs, action], axis=-1)
        names = ([f"reward_{i}" for i in range(self.num_reward)]
                 + [f"cost_{i}" for i in range(self.num_costs)])
        values = [MLP(self.hidden_sizes, 1, self.activation, 1.0, name=name)(x)
                  for name in names]
        return jnp.concatenate(values, axis=-1)
