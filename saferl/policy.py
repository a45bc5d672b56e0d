"""Deployment: load a trained policy from a run directory and call it on numpy observations."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from saferl.algos.combination import combined_parts
from saferl.core.distributions import gaussian_sample
from saferl.core.normalization import RunningStats, normalize
from saferl.engine.family import Conditioning
from saferl.engine.host import scale_to_bounds
from saferl.engine.members import member_labels, members
from saferl.runs import checkpoint_name, restore_states

POLICY_STREAM = 9  # fold_in tag of a policy's sampling key (training uses splits 0-3)


class Policy:
    """A trained policy with its observation normaliser.

    On-policy algorithms train a Gaussian policy whose actions are clipped to the bounds;
    off-policy ones (``squashed``) act in ``[-1, 1]`` through ``tanh`` and are scaled to them.

    ``policy(obs)`` accepts one observation ``[obs_dim]`` or a batch ``[B, obs_dim]`` (numpy or
    anything array-like) and returns actions of the matching shape, clipped to the action bounds.
    ``deterministic=True`` (the default) returns the mean action; ``False`` samples.

    A **threshold-conditioned** policy (CCPO; :attr:`conditioning` is set) acts on the episode
    cost threshold too: ``policy(obs, threshold=25.0)``, with the threshold a scalar (every
    constraint), an ``[m]`` vector (one per constraint) or a batch ``[B, m]`` (one per
    observation). It is required; a threshold outside the trained range ``E`` warns once that
    the policy extrapolates.
    """

    def __init__(self, module: nn.Module, params: Any, obs_stats: RunningStats | None,
                 action_low: np.ndarray, action_high: np.ndarray, seed: int = 0,
                 info: dict[str, Any] | None = None, squashed: bool = False,
                 conditioning: Conditioning | None = None) -> None:
        self.module, self.params, self.obs_stats = module, params, obs_stats
        self.action_low = np.asarray(action_low, np.float32)
        self.action_high = np.asarray(action_high, np.float32)
        self.info = dict(info or {})
        self.squashed = squashed
        self.conditioning = conditioning
        """The behaviour thresholds and range of a conditioned policy, else ``None``."""
        if conditioning is not None:
            self.info["conditioning"] = conditioning.record()
        self._warned_extrapolation = False
        # A stream of the seed's own (fold_in tag 9): PRNGKey(seed) is a training run's root,
        # whose first splits initialised its networks and drew its first actions.
        self._key = jax.random.fold_in(jax.random.PRNGKey(seed), POLICY_STREAM)
        low, high = jnp.asarray(self.action_low), jnp.asarray(self.action_high)

        def forward(params: Any, stats: Any, obs: jax.Array, key: jax.Array,
                    deterministic: bool, thresholds: jax.Array | None = None) -> jax.Array:
            if stats is not None:
                obs = normalize(stats, obs)
            out = module.apply(params, obs) if thresholds is None else \
                module.apply(params, obs, thresholds)
            if not isinstance(out, tuple):  # deterministic actor (DDPG, TD3): tanh already
                action = out
            elif len(out) == 3:  # a linear combination of policies (cppo_lag, ctrpo_lag)
                action = combined_action(out, key, deterministic)
            else:
                mean, log_std = out
                action = mean if deterministic else gaussian_sample(key, mean, log_std)
            if squashed:  # off-policy actors act in [-1, 1]: tanh, then scale to the bounds
                action = jnp.tanh(action) if isinstance(out, tuple) else action
                return scale_to_bounds(low, high, action)
            return jnp.clip(action, low, high)

        self.forward = forward
        """The pure action function ``forward(params, stats, obs, key, deterministic,
        thresholds=None)`` (for use inside ``jit``, e.g. by :func:`saferl.evaluation.evaluate`
        on native tasks; a conditioned policy needs ``thresholds [B, m]``)."""
        self._forward = jax.jit(forward, static_argnums=4)

    def __call__(self, obs: Any, deterministic: bool = True,
                 threshold: Any = None) -> np.ndarray:
        """Actions for ``obs`` (and, conditioned, ``threshold``; see the class docstring).

        Raises:
            ValueError: A conditioned policy called without a threshold or with one of the
                wrong shape, a negative or non-finite one, or a threshold given to a policy
                that takes none.
        """
        obs = np.asarray(obs, np.float32)
        single = obs.ndim == 1
        batch = obs[None] if single else obs
        thresholds = self.thresholds_for(threshold, batch.shape[0])
        self._key, key = jax.random.split(self._key)
        actions = np.asarray(self._forward(
            self.params, self.obs_stats, jnp.asarray(batch), key, bool(deterministic),
            None if thresholds is None else jnp.asarray(thresholds)))
        return actions[0] if single else actions

    def thresholds_for(self, threshold: Any, batch_size: int) -> np.ndarray | None:
        """``threshold`` as ``[batch_size, m]`` float32 for a conditioned policy (``None`` for
        another), checked; warns once if it lies outside the trained range ``E``.

        Raises:
            ValueError: See :meth:`__call__`.
        """
        conditioned = self.conditioning
        if conditioned is None:
            if threshold is not None:
                raise ValueError(
                    f"this {self.info.get('algo', '')} policy was trained for fixed cost limits "
                    f"{self.info.get('cost_limit')} and takes no threshold; only "
                    f"threshold-conditioned policies (ccpo) do.")
            return None
        m = conditioned.low.shape[0]
        allowed = (f"a number, a vector of {m} (one per constraint) or a batch "
                   f"[{batch_size}, {m}]")
        if threshold is None:
            raise ValueError(
                f"this policy is conditioned on the cost threshold (trained on "
                f"{_range_text(conditioned)}); call it with threshold= {allowed}, e.g. "
                f"policy(obs, threshold={float(conditioned.behaviour[0, 0]):g}).")
        try:
            values = np.asarray(threshold, np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"threshold must be {allowed}; got {threshold!r}.") from None
        if values.ndim == 0 or values.shape == (m,):
            values = np.broadcast_to(values, (batch_size, m))
        elif values.shape != (batch_size, m):
            raise ValueError(f"threshold must be {allowed}; got an array of shape "
                             f"{values.shape}.")
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError(f"threshold must hold finite values >= 0; got "
                             f"{values[~(np.isfinite(values) & (values >= 0))][0]}.")
        outside = np.any((values < conditioned.low) | (values > conditioned.high))
        if outside and not self._warned_extrapolation:
            self._warned_extrapolation = True
            worst = values[np.any((values < conditioned.low) | (values > conditioned.high), 1)]
            warnings.warn(f"threshold {worst[0].tolist()} lies outside the range the policy "
                          f"was trained on ({_range_text(conditioned)}): it extrapolates.",
                          UserWarning, stacklevel=3)
        return values.astype(np.float32)

    @property
    def obs_dim(self) -> int:
        """Length of the observations the policy expects."""
        return int(self.info["obs_dim"])

    @classmethod
    def load(cls, run_dir: str | Path, seed_index: int = 0, checkpoint: str | int | None = None,
             on_damaged: Callable[[str], None] | None = None,
             member: int | str | None = None) -> Policy:
        """Load the policy of one member from a run directory's newest intact (or a given)
        checkpoint.

        Args:
            run_dir: The run directory.
            seed_index: Which of the run's deployed policies, in order (see ``member``).
            checkpoint: An iteration number or a checkpoint name (``iter_0000012``); default:
                the newest intact checkpoint (damaged newer ones are skipped).
            on_damaged: Called with one sentence per damaged checkpoint skipped (default: a
                ``UserWarning``).
            member: Which member instead of ``seed_index``: its index or its label (``"3"``
                for seed 3; in a grid of cost limits ``"3@20"``, seed 3 at limit 20). A
                linear-combination baseline (``cppo_lag``) deploys one conditioned policy per
                seed: its members are its seeds.

        Raises:
            IndexError: No such member (the message lists the run's members).
        """
        def warn(message: str) -> None:
            warnings.warn(f"{message} Loading an older checkpoint.", UserWarning, stacklevel=3)

        _config_record, entry, config, spec, states, meta = restore_states(
            run_dir, checkpoint, on_damaged=on_damaged or warn)
        index = seed_index if member is None else member_index(config, member)
        return cls.from_states(entry, config, spec, states, index, {
            "run_dir": str(run_dir), "iteration": int(meta["iteration"]),
            "checkpoint": checkpoint_name(int(meta["iteration"]))})

    @classmethod
    def from_states(cls, entry: Any, config: Any, spec: Any, states: Any, seed_index: int = 0,
                    info: dict[str, Any] | None = None) -> Policy:
        """The deployed policy of one member from member-stacked training states in memory.

        Args:
            entry: The algorithm's registry entry.
            config: The run configuration.
            spec: The environment spec.
            states: Training states with a leading member axis (as the engines keep them).
            seed_index: Which of the deployed policies (:func:`deployed_members`): a member,
                or for a linear-combination baseline a seed.
            info: Extra metadata (run directory, iteration, checkpoint).
        """
        deployed = deployed_members(config)
        if not 0 <= seed_index < len(deployed):
            raise IndexError(
                f"member {seed_index} is out of range: the run trained {len(deployed)} "
                f"member(s) {[label for label, _ in deployed]}.")
        label, indices = deployed[seed_index]
        grid = members(config)
        member = grid[indices[0]]
        info = {"algo": entry.name, "env": spec.id, "seed": member.seed, "member": label,
                "obs_dim": spec.obs_dim, "action_dim": spec.action_dim,
                "cost_limit": list(member.cost_limit), "seeds": list(config.run.seed_list),
                "env_kwargs": dict(config.run.env_kwargs), **(info or {})}
        parts = [entry.engine.policy_parts(entry.module, config, spec, states, index)
                 for index in indices]
        part = combined_parts(config, parts) if len(indices) > 1 or combined(config) \
            else parts[0]
        return cls(part.module, part.params, part.obs_stats, spec.action_space.low,
                   spec.action_space.high, seed=member.seed, info=info,
                   squashed=part.squashed, conditioning=part.conditioning)


def _range_text(conditioned: Conditioning) -> str:
    """``E = [10, 70]`` (one constraint) or ``E = [(10, 0), (70, 20)]``."""
    low, high = conditioned.low, conditioned.high
    if low.shape[0] == 1:
        return f"E = [{low[0]:g}, {high[0]:g}]"
    return (f"E = [({', '.join(f'{x:g}' for x in low)}), "
            f"({', '.join(f'{x:g}' for x in high)})]")


def load(run_dir: str | Path, seed_index: int = 0, checkpoint: str | int | None = None,
         member: int | str | None = None) -> Policy:
    """Load a trained :class:`Policy` from ``run_dir`` (see :meth:`Policy.load`)."""
    return Policy.load(run_dir, seed_index=seed_index, checkpoint=checkpoint, member=member)


def combined(config: Any) -> bool:
    """Whether a run deploys linear combinations of its members (``cppo_lag``, ``ctrpo_lag``)."""
    return getattr(config, "limit_grid", None) is not None


def deployed_members(config: Any) -> list[tuple[str, list[int]]]:
    """The policies a run deploys, in order: each one's label and the members it is made of.

    Every member on its own (labelled as :func:`~saferl.engine.members.member_labels`), or
    for a linear-combination baseline one policy per seed (label: the seed) combining that
    seed's members, one per behaviour threshold.
    """
    if not combined(config):
        return [(label, [i]) for i, label in enumerate(member_labels(config))]
    grid = members(config)
    return [(str(seed), [i for i, m in enumerate(grid) if m.seed == seed])
            for seed in config.run.seed_list]


def member_index(config: Any, member: int | str) -> int:
    """The index among :func:`deployed_members` of a member given by index or label.

    Raises:
        IndexError: No such member (the message lists the labels).
    """
    labels = [label for label, _ in deployed_members(config)]
    if isinstance(member, int) and not isinstance(member, bool):
        if 0 <= member < len(labels):
            return member
    elif str(member) in labels:
        return labels.index(str(member))
    raise IndexError(f"member {member!r} is not in this run; its members are {labels} (give a "
                     f"label or an index from 0 to {len(labels) - 1}).")


def combined_action(out: tuple[jax.Array, jax.Array, jax.Array], key: jax.Array,
                    deterministic: bool) -> jax.Array:
    """The action of a linear combination of Gaussian policies (means and log-stds
    ``[B, N, A]``, weights ``[B, N]``): the weighted mean of the means, or a draw from the
    mixture (a policy with probability of its weight, then its Gaussian)."""
    means, log_stds, weights = out
    if deterministic:
        return jnp.sum(weights[..., None] * means, axis=1)
    pick_key, noise_key = jax.random.split(key)
    chosen = jax.random.categorical(pick_key, jnp.log(weights), axis=-1)  # [B]
    pick = lambda x: jnp.take_along_axis(x, chosen[:, None, None], axis=1)[:, 0]  # noqa: E731
    return gaussian_sample(noise_key, pick(means), pick(log_stds))
