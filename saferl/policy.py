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

from saferl.core.distributions import gaussian_sample
from saferl.core.normalization import RunningStats, normalize
from saferl.engine.host import scale_to_bounds
from saferl.runs import checkpoint_name, restore_states


class Policy:
    """A trained policy with its observation normaliser.

    On-policy algorithms train a Gaussian policy whose actions are clipped to the bounds;
    off-policy ones (``squashed``) act in ``[-1, 1]`` through ``tanh`` and are scaled to them.

    ``policy(obs)`` accepts one observation ``[obs_dim]`` or a batch ``[B, obs_dim]`` (numpy or
    anything array-like) and returns actions of the matching shape, clipped to the action bounds.
    ``deterministic=True`` (the default) returns the mean action; ``False`` samples.
    """

    def __init__(self, module: nn.Module, params: Any, obs_stats: RunningStats | None,
                 action_low: np.ndarray, action_high: np.ndarray, seed: int = 0,
                 info: dict[str, Any] | None = None, squashed: bool = False) -> None:
        self.module, self.params, self.obs_stats = module, params, obs_stats
        self.action_low = np.asarray(action_low, np.float32)
        self.action_high = np.asarray(action_high, np.float32)
        self.info = dict(info or {})
        self.squashed = squashed
        self._key = jax.random.PRNGKey(seed)
        low, high = jnp.asarray(self.action_low), jnp.asarray(self.action_high)

        def forward(params: Any, stats: Any, obs: jax.Array, key: jax.Array,
                    deterministic: bool) -> jax.Array:
            if stats is not None:
                obs = normalize(stats, obs)
            out = module.apply(params, obs)
            if not isinstance(out, tuple):  # deterministic actor (DDPG, TD3): tanh already
                action = out
            else:
                mean, log_std = out
                action = mean if deterministic else gaussian_sample(key, mean, log_std)
            if squashed:  # off-policy actors act in [-1, 1]: tanh, then scale to the bounds
                action = jnp.tanh(action) if isinstance(out, tuple) else action
                return scale_to_bounds(low, high, action)
            return jnp.clip(action, low, high)

        self.forward = forward
        """The pure action function ``forward(params, stats, obs, key, deterministic)`` (for use
        inside ``jit``, e.g. by :func:`saferl.evaluation.evaluate` on native tasks)."""
        self._forward = jax.jit(forward, static_argnums=4)

    def __call__(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        """Actions for ``obs`` (see the class docstring)."""
        obs = np.asarray(obs, np.float32)
        single = obs.ndim == 1
        batch = obs[None] if single else obs
        self._key, key = jax.random.split(self._key)
        actions = np.asarray(self._forward(self.params, self.obs_stats, jnp.asarray(batch), key,
                                           bool(deterministic)))
        return actions[0] if single else actions

    @property
    def obs_dim(self) -> int:
        """Length of the observations the policy expects."""
        return int(self.info["obs_dim"])

    @classmethod
    def load(cls, run_dir: str | Path, seed_index: int = 0, checkpoint: str | int | None = None,
             on_damaged: Callable[[str], None] | None = None) -> Policy:
        """Load the policy of one seed from a run directory's newest intact (or a given)
        checkpoint.

        Args:
            run_dir: The run directory.
            seed_index: Which of the run's seeds.
            checkpoint: An iteration number or a checkpoint name (``iter_0000012``); default:
                the newest intact checkpoint (damaged newer ones are skipped).
            on_damaged: Called with one sentence per damaged checkpoint skipped (default: a
                ``UserWarning``).
        """
        def warn(message: str) -> None:
            warnings.warn(f"{message} Loading an older checkpoint.", UserWarning, stacklevel=3)

        _config_record, entry, config, spec, states, meta = restore_states(
            run_dir, checkpoint, on_damaged=on_damaged or warn)
        return cls.from_states(entry, config, spec, states, seed_index, {
            "run_dir": str(run_dir), "iteration": int(meta["iteration"]),
            "checkpoint": checkpoint_name(int(meta["iteration"]))})

    @classmethod
    def from_states(cls, entry: Any, config: Any, spec: Any, states: Any, seed_index: int = 0,
                    info: dict[str, Any] | None = None) -> Policy:
        """The policy of one seed from seed-stacked training states held in memory.

        Args:
            entry: The algorithm's registry entry.
            config: The run configuration.
            spec: The environment spec.
            states: Training states with a leading seed axis (as the engines keep them).
            seed_index: Which seed.
            info: Extra metadata (run directory, iteration, checkpoint).
        """
        seeds = config.run.seed_list
        if not 0 <= seed_index < len(seeds):
            raise IndexError(
                f"seed_index {seed_index} is out of range: the run trained {len(seeds)} seed(s) "
                f"{list(seeds)}.")
        info = {"algo": entry.name, "env": spec.id, "seed": seeds[seed_index],
                "obs_dim": spec.obs_dim, "action_dim": spec.action_dim,
                "cost_limit": list(config.run.cost_limit), "seeds": list(seeds),
                "env_kwargs": dict(config.run.env_kwargs), **(info or {})}
        parts = entry.engine.policy_parts(entry.module, config, spec, states, seed_index)
        return cls(parts.module, parts.params, parts.obs_stats, spec.action_space.low,
                   spec.action_space.high, seed=seeds[seed_index], info=info,
                   squashed=parts.squashed)


def load(run_dir: str | Path, seed_index: int = 0, checkpoint: str | int | None = None
         ) -> Policy:
    """Load a trained :class:`Policy` from ``run_dir`` (see :meth:`Policy.load`)."""
    return Policy.load(run_dir, seed_index=seed_index, checkpoint=checkpoint)
