"""Threshold conditioning: validated threshold sets, normalised thresholds, polynomial features,
and the conditioned networks of versatile safe RL (CCPO, Yao et al. 2023; docs/algorithms/ccpo.md).

A *threshold* is the episode-cost limit ``ε ∈ ℝᵐ`` (one entry per constraint) a conditioned
policy is asked to honour. Networks never see ``ε`` itself but ``ε̃``, each entry mapped
linearly from the trained range ``E = [low_i, high_i]`` onto ``[−1, 1]``
(:func:`normalize_thresholds`), so that polynomial features of it stay of order one.

* :func:`polynomial_features` — ``[1, ε̃_1, …, ε̃_1^p, ε̃_2, …, ε̃_m^p]``: VVE's ``Poly(ε, p)``
  (Assumption 2 of the paper), one polynomial per constraint and no cross terms (with one
  constraint, as in the paper, exactly ``[1, ε̃, …, ε̃^p]``).
* :class:`ThresholdTable` — per-state thresholds as a table of conditions and row indices.
* :class:`VVECritics` — Versatile Value Estimation, ``Q_f(s, a | ε) = ψ_f(s, a)ᵀ z_f(ε)`` with
  ``z_f(ε) = W_f · Poly(ε̃, p)`` (Assumption 1, eq. 3), for the twin reward critics and every
  cost.
* :class:`ConditionedQCritics` — the "w/o VVE" ablation: an MLP of ``([s, ε̃], a)``.
* :class:`ConditionedTanhGaussianActor` — ``π(u | s, ε)``: CVPO's Gaussian actor on
  ``[s, ε̃]``; :func:`host_conditioned_tanh_gaussian` is its numpy twin for host rollouts.
* :func:`threshold_array`, :func:`threshold_bounds`, :func:`check_threshold_set` — validated
  input with one-sentence messages naming the field, the value and what is allowed.
* :func:`interpolate_rows` — values at new thresholds from values at known ones (CCPO warm-starts
  the duals of sampled thresholds from those of the behaviour thresholds).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from saferl.core.networks import (
    ACTIVATIONS,
    MLP,
    DeterministicActor,
    QCritics,
    TanhGaussianActor,
    host_deterministic,
    host_tanh_gaussian,
)


def normalize_thresholds(thresholds: jax.Array, low: Sequence[float] | jax.Array,
                         high: Sequence[float] | jax.Array) -> jax.Array:
    """``ε̃ = 2 (ε − low)/(high − low) − 1``: the range ``E`` onto ``[−1, 1]`` per constraint.

    Args:
        thresholds: ``[..., m]`` episode-cost thresholds.
        low: ``[m]`` lower ends of ``E``.
        high: ``[m]`` upper ends of ``E``.

    Returns:
        ``[..., m]``; thresholds outside ``E`` map outside ``[−1, 1]`` (extrapolation).
    """
    low = jnp.asarray(low, jnp.float32)
    high = jnp.asarray(high, jnp.float32)
    return 2.0 * (thresholds - low) / (high - low) - 1.0


def polynomial_features(normalized: jax.Array, degree: int) -> jax.Array:
    """``[1, ε̃_1, …, ε̃_1^p, …, ε̃_m, …, ε̃_m^p]``, ``[..., 1 + m·p]`` (VVE's ``Poly(ε, p)``).

    Args:
        normalized: ``[..., m]`` normalised thresholds.
        degree: The polynomial degree ``p ≥ 1``.
    """
    powers = normalized[..., None] ** jnp.arange(1, degree + 1, dtype=normalized.dtype)
    flat = powers.reshape(*normalized.shape[:-1], normalized.shape[-1] * degree)
    return jnp.concatenate([jnp.ones((*normalized.shape[:-1], 1), normalized.dtype), flat], -1)


class ThresholdTable(NamedTuple):
    """Per-state thresholds given as a table of the distinct conditions and each state's row
    (``table[index]``). The conditioned networks accept it wherever they take thresholds
    ``[B, m]``; :class:`VVECritics` then forms ``z`` once per condition instead of per state."""

    table: jax.Array  # [C, m] the conditions' thresholds (episode units)
    index: jax.Array  # [B] int: each state's condition

    def per_state(self) -> jax.Array:
        """``[B, m]``: every state's threshold."""
        return self.table[self.index]


def _per_state(threshold: jax.Array | ThresholdTable) -> jax.Array:
    """Thresholds ``[..., m]`` from either form."""
    return threshold.per_state() if isinstance(threshold, ThresholdTable) else threshold


def _broadcast_condition(obs: jax.Array, normalized: jax.Array) -> jax.Array:
    """``[obs, ε̃]`` with ``ε̃`` broadcast over the leading axes of ``obs``."""
    normalized = jnp.broadcast_to(normalized, (*obs.shape[:-1], normalized.shape[-1]))
    return jnp.concatenate([obs, normalized.astype(obs.dtype)], axis=-1)


class ConditionedTanhGaussianActor(nn.Module):
    """``π(u | s, ε)``: a :class:`~saferl.core.networks.TanhGaussianActor` of ``[s, ε̃]``.

    Called with raw thresholds ``[..., m]`` (episode units); the normalisation over
    ``[threshold_low, threshold_high]`` is part of the network.
    """

    action_dim: int
    threshold_low: tuple[float, ...]
    threshold_high: tuple[float, ...]
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"
    log_std_min: float = -10.0
    log_std_max: float = 1.0

    @nn.compact
    def __call__(self, obs: jax.Array,
                 threshold: jax.Array | ThresholdTable) -> tuple[jax.Array, jax.Array]:
        """``(mean, log_std)`` of ``u``, each ``[..., action_dim]``."""
        normalized = normalize_thresholds(_per_state(threshold), self.threshold_low,
                                          self.threshold_high)
        return _actor_body(self, name="actor")(_broadcast_condition(obs, normalized))


def _actor_body(actor: ConditionedTanhGaussianActor, **kwargs: Any) -> TanhGaussianActor:
    """The unconditioned actor that ``actor`` applies to ``[s, ε̃]``."""
    return TanhGaussianActor(actor.action_dim, actor.hidden_sizes, actor.activation,
                             log_std_min=actor.log_std_min, log_std_max=actor.log_std_max,
                             **kwargs)


def _host_inputs(actor: Any, obs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``[s, ε̃]`` in numpy float64 for a conditioned actor's host twin."""
    low = np.asarray(actor.threshold_low, np.float64)
    high = np.asarray(actor.threshold_high, np.float64)
    normalized = 2.0 * (np.asarray(thresholds, np.float64) - low) / (high - low) - 1.0
    return np.concatenate([np.asarray(obs, np.float64), normalized], axis=-1)


def host_conditioned_tanh_gaussian(actor: ConditionedTanhGaussianActor, params: Any,
                                   obs: np.ndarray, thresholds: np.ndarray
                                   ) -> tuple[np.ndarray, np.ndarray]:
    """numpy twin of ``actor.apply(params, obs, thresholds)`` with a leading seed axis.

    Args:
        actor: The module.
        params: From :func:`saferl.core.networks.host_params` (leading seed axis ``S``).
        obs: ``[S, N, obs_dim]``.
        thresholds: ``[S, N, m]`` raw thresholds (each copy's behaviour threshold).

    Returns:
        ``(mean, log_std)``, each ``[S, N, action_dim]`` float64.
    """
    inputs = _host_inputs(actor, obs, thresholds)
    body = _actor_body(actor, parent=None)
    return host_tanh_gaussian(body, {"params": params["params"]["actor"]}, inputs)


class ConditionedDeterministicActor(nn.Module):
    """``a = μ(s, ε)``: a :class:`~saferl.core.networks.DeterministicActor` of ``[s, ε̃]``
    (V-DDPG-Lag), called with raw thresholds ``[..., m]`` as
    :class:`ConditionedTanhGaussianActor` is."""

    action_dim: int
    threshold_low: tuple[float, ...]
    threshold_high: tuple[float, ...]
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array, threshold: jax.Array | ThresholdTable) -> jax.Array:
        """Actions ``[..., action_dim]`` in ``[-1, 1]``."""
        normalized = normalize_thresholds(_per_state(threshold), self.threshold_low,
                                          self.threshold_high)
        body = DeterministicActor(self.action_dim, self.hidden_sizes, self.activation,
                                  name="actor")
        return body(_broadcast_condition(obs, normalized))


def host_conditioned_deterministic(actor: ConditionedDeterministicActor, params: Any,
                                   obs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """numpy twin of ``actor.apply(params, obs, thresholds)`` with a leading seed axis
    (``obs`` ``[S, N, obs_dim]``, ``thresholds`` ``[S, N, m]``; ``[S, N, A]`` out)."""
    inputs = _host_inputs(actor, obs, thresholds)
    body = DeterministicActor(actor.action_dim, actor.hidden_sizes, actor.activation)
    return host_deterministic(body, {"params": params["params"]["actor"]}, inputs)


class VVECritics(nn.Module):
    """Versatile Value Estimation: ``Q_f(s, a | ε) = ψ_f(s, a)ᵀ z_f(ε)`` (paper eq. 3).

    One critic per reward copy (``num_reward``: 2 for twin critics) and per cost, each with its
    own ``ψ_f`` (an MLP of ``(s, a)`` with ``feature_size`` outputs, the ``M`` of Theorem 1) and
    ``z_f(ε) = W_f · Poly(ε̃, degree)`` (a bias-free linear map of :func:`polynomial_features`;
    its constant feature makes ``z_f`` affine in the monomials). ``W_f`` is initialised with
    variance ``1/(M · fan_in)`` so that a fresh ``ψᵀz`` has the scale of a plain critic's
    output. Returns ``[..., num_reward + num_costs]`` like :class:`~saferl.core.networks.
    QCritics`; ``obs [B, d]`` with ``action [K, B, A]`` and ``threshold [B, m]`` scores ``K``
    actions per state (``ψ``'s observation part and ``z`` once per state).

    ``ψ = Vᵀh + c`` with ``h`` the last hidden layer, so the product is evaluated as
    ``ψᵀz = hᵀ(V z) + cᵀz`` and ``ψ`` is never formed for the E-step's ``K·B`` pairs. Given a
    :class:`ThresholdTable` of ``C`` conditions, ``V zᵀ`` is an ``[H, C]`` matrix shared by all
    states and every pair's values come from one ``[K·B, H] × [H, C]`` product (then each
    state's column); given per-state thresholds, ``V z`` is a vector per state. On CPU, for 256
    states × 32 samples, three 256×256 critics: plain critics 41 ms, the table form 44 ms, per-
    state vectors 52 ms, forming ``ψ`` ([K·B, H] × [H, M]) about as slow (minimum of 30
    interleaved runs).
    """

    num_reward: int
    num_costs: int
    threshold_low: tuple[float, ...]
    threshold_high: tuple[float, ...]
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"
    feature_size: int = 32
    degree: int = 2

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array,
                 threshold: jax.Array | ThresholdTable) -> jax.Array:
        """Q-values of every critic, last axis ``num_reward + num_costs``."""
        if not self.hidden_sizes:
            raise ValueError("VVE critics need at least one hidden layer (hidden_sizes).")
        table = threshold.table if isinstance(threshold, ThresholdTable) else threshold
        normalized = normalize_thresholds(table, self.threshold_low, self.threshold_high)
        features = polynomial_features(normalized.astype(jnp.float32), self.degree)
        index = threshold.index if isinstance(threshold, ThresholdTable) else None
        names = ([f"reward_{i}" for i in range(self.num_reward)]
                 + [f"cost_{i}" for i in range(self.num_costs)])
        act = ACTIVATIONS[self.activation]
        *inner, last = self.hidden_sizes
        values = []
        for name in names:
            # The hidden layers of ψ (√2 gain on every one, the last included).
            hidden = act(MLP(inner, last, self.activation, float(np.sqrt(2)),
                             name=f"{name}_psi")(obs, action))
            values.append(_BilinearHead(self.feature_size, name=f"{name}_head")(
                hidden, features, index))
        return jnp.concatenate(values, axis=-1)


class _BilinearHead(nn.Module):
    """``ψᵀz`` from the last hidden layer ``h`` and the threshold features (see
    :class:`VVECritics`): ``ψ = Vᵀh + c`` (``psi_kernel``, ``psi_bias``), ``z = W·Poly``."""

    feature_size: int

    @nn.compact
    def __call__(self, hidden: jax.Array, features: jax.Array,
                 index: jax.Array | None = None) -> jax.Array:
        """``[..., 1]`` for ``hidden [..., H]`` and per-state ``features [..., F]``
        (broadcast), or the features of a table ``[C, F]`` and each state's row ``index``."""
        kernel = self.param("psi_kernel", nn.initializers.orthogonal(1.0),
                            (hidden.shape[-1], self.feature_size), jnp.float32)
        bias = self.param("psi_bias", nn.initializers.zeros_init(), (self.feature_size,),
                          jnp.float32)
        z_init = nn.initializers.variance_scaling(1.0 / self.feature_size, "fan_in",
                                                  "truncated_normal")
        z = nn.Dense(self.feature_size, use_bias=False, kernel_init=z_init, name="z")(features)
        if index is None:
            value = jnp.sum(hidden * (z @ kernel.T), axis=-1) + z @ bias
            return value[..., None]
        values = hidden @ (kernel @ z.T) + z @ bias  # [..., C]: every condition's value
        rows = jnp.broadcast_to(index[..., None], (*values.shape[:-1], 1))
        return jnp.take_along_axis(values, rows, axis=-1)


class ConditionedQCritics(nn.Module):
    """The "w/o VVE" ablation: :class:`~saferl.core.networks.QCritics` of ``([s, ε̃], a)``."""

    num_reward: int
    num_costs: int
    threshold_low: tuple[float, ...]
    threshold_high: tuple[float, ...]
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array,
                 threshold: jax.Array | ThresholdTable) -> jax.Array:
        """Q-values of every critic, last axis ``num_reward + num_costs``."""
        normalized = normalize_thresholds(_per_state(threshold), self.threshold_low,
                                          self.threshold_high)
        critics = QCritics(self.num_reward, self.num_costs, self.hidden_sizes, self.activation,
                           name="critics")
        return critics(_broadcast_condition(obs, normalized), action)


def threshold_array(values: Sequence[Any], num_constraints: int, name: str) -> np.ndarray:
    """Thresholds given flat (``20 40 60``; ``m`` consecutive numbers per vector) or as vectors
    (``[[20], [40], [60]]``), as an ``[N, m]`` float64 array; non-negative and finite.

    Args:
        values: The thresholds.
        num_constraints: ``m``.
        name: The field name used in error messages.

    Raises:
        ValueError: Empty, a vector of the wrong length, or a negative or non-finite entry.
    """
    values = list(values)
    if not values:
        raise ValueError(f"{name} must hold at least one threshold; got an empty list.")
    if all(isinstance(v, Sequence) and not isinstance(v, str) for v in values):
        for vector in values:
            if len(vector) != num_constraints:
                raise ValueError(f"{name} must hold vectors of {num_constraints} threshold(s), "
                                 f"one per constraint; got {list(vector)}.")
        flat = [float(x) for vector in values for x in vector]
    else:
        flat = [float(v) for v in values]
        if len(flat) % num_constraints:
            raise ValueError(f"{name} must hold a multiple of {num_constraints} numbers "
                             f"({num_constraints} per threshold vector); got {len(flat)}: "
                             f"{flat}.")
    for value in flat:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must hold finite thresholds >= 0; got {value}.")
    return np.asarray(flat, np.float64).reshape(-1, num_constraints)


def threshold_bounds(values: Sequence[float], num_constraints: int,
                     name: str) -> tuple[np.ndarray, np.ndarray]:
    """The range ``E`` as ``(low [m], high [m])`` from ``(low, high)`` (every constraint) or
    ``(low_1, high_1, …, low_m, high_m)``; finite, ``0 ≤ low < high``.

    Raises:
        ValueError: Another length, a negative or non-finite end, or ``low >= high``.
    """
    values = [float(v) for v in values]
    if len(values) not in (2, 2 * num_constraints):
        raise ValueError(f"{name} must be (low, high) or one (low, high) pair per constraint "
                         f"({2 * num_constraints} numbers); got {values}.")
    pairs = np.asarray(values, np.float64).reshape(-1, 2)
    pairs = np.broadcast_to(pairs, (num_constraints, 2))
    for low, high in pairs:
        if not (math.isfinite(low) and math.isfinite(high) and 0 <= low < high):
            raise ValueError(f"{name} must have finite ends with 0 <= low < high; got "
                             f"({low}, {high}).")
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def check_threshold_set(thresholds: np.ndarray, low: np.ndarray, high: np.ndarray,
                        name: str, range_name: str) -> None:
    """A behaviour set: every vector inside ``[low, high]``, strictly increasing and so without
    duplicates (lexicographic order for vectors).

    Raises:
        ValueError: A threshold outside the range, or the set unsorted or with a duplicate.
    """
    for vector in thresholds:
        if np.any(vector < low) or np.any(vector > high):
            raise ValueError(f"{name} must lie inside {range_name} "
                             f"[{_format(low)}, {_format(high)}]; got {_format(vector)}.")
    for previous, current in itertools.pairwise(thresholds):
        if tuple(current) <= tuple(previous):
            kind = "a duplicate" if tuple(current) == tuple(previous) else "unsorted values"
            raise ValueError(f"{name} must be strictly increasing (sorted, no duplicates); got "
                             f"{kind}: {_format(previous)} then {_format(current)}.")


def behaviour_set(thresholds: Sequence[Any], threshold_range: Sequence[float],
                  num_constraints: int, section: str) -> tuple[float, ...]:
    """Check the ``{section}.behaviour_thresholds`` ``Ẽ`` of a configuration against its
    ``{section}.threshold_range`` ``E`` (:func:`threshold_array`, :func:`threshold_bounds`,
    :func:`check_threshold_set`); return ``Ẽ`` flat, the one form the CLI and JSON share.

    Raises:
        ValueError: ``num_constraints < 1``, or any error of those checks (one sentence).
    """
    if num_constraints < 1:
        raise ValueError(f"{section}.num_constraints must be >= 1; got {num_constraints}.")
    name, range_name = f"{section}.behaviour_thresholds", f"{section}.threshold_range"
    behaviour = threshold_array(thresholds, num_constraints, name)
    low, high = threshold_bounds(threshold_range, num_constraints, range_name)
    check_threshold_set(behaviour, low, high, name, range_name)
    return tuple(behaviour.reshape(-1).tolist())


def _format(vector: np.ndarray) -> str:
    """``20`` for one constraint, ``(20, 5)`` for several."""
    numbers = [f"{x:g}" for x in np.atleast_1d(vector)]
    return numbers[0] if len(numbers) == 1 else "(" + ", ".join(numbers) + ")"


def interpolate_rows(queries: jax.Array, knots: jax.Array, values: jax.Array,
                     rule: str = "interpolate") -> jax.Array:
    """Values at ``queries`` from values at ``knots`` (inside ``jit``).

    Args:
        queries: ``[C, m]`` normalised thresholds.
        knots: ``[N, m]`` normalised thresholds, strictly increasing.
        values: ``[N, k]`` the values at the knots.
        rule: ``"interpolate"``: piecewise linear between the neighbouring knots with one
            constraint (constant beyond the ends), inverse-squared-distance weights over all
            knots with several; ``"nearest"``: the value of the nearest knot.

    Returns:
        ``[C, k]``.
    """
    distance = jnp.sum((queries[:, None, :] - knots[None, :, :]) ** 2, axis=-1)  # [C, N]
    if rule == "nearest":
        return values[jnp.argmin(distance, axis=1)]
    if knots.shape[1] == 1:
        return jax.vmap(lambda column: jnp.interp(queries[:, 0], knots[:, 0], column),
                        out_axes=1)(values.T)
    weights = 1.0 / (distance + 1e-6)
    weights = weights / weights.sum(axis=1, keepdims=True)
    return weights @ values
