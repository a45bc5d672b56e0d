"""Small distribution functions: the diagonal Gaussian (on-policy) and its tanh-squashed twin.

Hand-written on purpose (DESIGN.md): a few lines each, jittable, no probability package.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(mean: jax.Array, log_std: jax.Array, action: jax.Array) -> jax.Array:
    """Log-density of ``action`` under ``N(mean, exp(log_std)²)``, summed over the last axis."""
    z = (action - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z * z - log_std - 0.5 * _LOG_2PI, axis=-1)


def gaussian_entropy(log_std: jax.Array) -> jax.Array:
    """Entropy of a diagonal Gaussian, summed over the last axis."""
    return jnp.sum(log_std + 0.5 * (1.0 + _LOG_2PI), axis=-1)


def gaussian_kl(mean_p: jax.Array, log_std_p: jax.Array, mean_q: jax.Array,
                log_std_q: jax.Array) -> jax.Array:
    """KL(p ‖ q) between diagonal Gaussians, summed over the last axis."""
    var_p, var_q = jnp.exp(2 * log_std_p), jnp.exp(2 * log_std_q)
    return jnp.sum(log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5,
                   axis=-1)


def gaussian_sample(key: jax.Array, mean: jax.Array, log_std: jax.Array) -> jax.Array:
    """One reparametrised sample of ``N(mean, exp(log_std)²)``."""
    return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)


def tanh_gaussian_sample_and_log_prob(key: jax.Array, mean: jax.Array,
                                      log_std: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A reparametrised tanh-squashed Gaussian sample and its log-density (change of variables).

    Uses the numerically stable ``log(1 − tanh(u)²) = 2(log 2 − u − softplus(−2u))``.
    """
    u = gaussian_sample(key, mean, log_std)
    log_prob = gaussian_log_prob(mean, log_std, u)
    log_prob = log_prob - jnp.sum(2.0 * (math.log(2.0) - u - jax.nn.softplus(-2.0 * u)), axis=-1)
    return jnp.tanh(u), log_prob
