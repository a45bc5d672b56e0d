"""The run settings every configuration has (on- and off-policy), declared and validated once.

Each family's run configuration (:class:`~saferl.algos.on_policy.OnPolicyConfig`,
:class:`~saferl.algos.off_policy.OffPolicyConfig`) extends :class:`SharedRunConfig` with its own
fields and may give a shared field another default (an off-policy run takes fewer steps, wider
networks); the documentation and the checks live here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from saferl.core.networks import ACTIVATIONS


@dataclass(frozen=True)
class SharedRunConfig:
    """Settings shared by every run: the task, the budget, the seeds, networks, checkpoints.

    Attributes:
        env: Environment id (``saferl list`` shows them).
        env_kwargs: Keyword arguments for the environment (e.g. ``speed_limit`` for native Circle).
        env_workers: Worker processes that step the copies of a host environment (Bullet,
            gymnasium) in parallel; 1 steps them in the learner's process. Native tasks: 1.
        cost_limit: One limit per constraint, in episode-cost units (undiscounted by default).
        limits: A grid of cost limits trained at once, each one limit per constraint: every
            seed is trained under every limit, all in one process (``--limits 20 40 60``
            trains three members per seed; with two constraints ``--limits 20,5 40,5``).
            Given, it replaces ``cost_limit``.
        steps: Environment steps to train for, per seed.
        seed: Random seed (ignored when ``seeds`` is given).
        seeds: Several seeds trained at once in one process (vectorised).
        num_envs: Environment copies per seed.
        rollout_steps: Steps per copy per iteration (an iteration collects
            ``num_envs × rollout_steps`` transitions per seed).
        hidden_sizes: Hidden layer sizes of the policy and of every critic.
        activation: Hidden activation (``tanh``, ``relu``, ``elu``, ``gelu``).
        checkpoint_every: Save a checkpoint every this many iterations (and at the end).
        eval_episodes: At the end of the run, evaluate the deployed policy of every seed for
            this many episodes per mode (deterministic and stochastic) and record it in
            ``eval.json``; 0 skips it.
        run_dir: Run directory (default: a new folder under ``runs/``).
        cost_transform: ``sparse`` (the env's cost), ``dense`` or ``barrier`` costs from the
            task's safety margin (native tasks; see :mod:`saferl.envs.wrappers`).
        cost_buffer: Safety buffer of the dense/barrier transforms, in the margin's units.
    """

    env: str = "saferl/BallCircle-v0"
    env_kwargs: dict[str, float | int | bool | str] = field(default_factory=dict)
    env_workers: int = 1
    cost_limit: tuple[float, ...] = (10.0,)
    limits: tuple[tuple[float, ...], ...] = ()
    steps: int = 2_000_000
    seed: int = 0
    seeds: tuple[int, ...] = ()
    num_envs: int = 64
    rollout_steps: int = 200
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    checkpoint_every: int = 20
    eval_episodes: int = 10
    run_dir: str | None = None
    cost_transform: str = "sparse"
    cost_buffer: float = 1.0

    def __post_init__(self) -> None:
        """Check every shared field; each error names the field, the value and what is allowed."""
        if not self.cost_limit:
            raise ValueError("cost_limit needs at least one value (one per constraint).")
        for limit in self.cost_limit:
            if not (math.isfinite(limit) and limit >= 0):
                raise ValueError(
                    f"cost_limit values must be finite and >= 0; got {list(self.cost_limit)}.")
        check_limits(self.limits, "limits")
        for name in ("steps", "num_envs", "rollout_steps", "checkpoint_every"):
            check_positive(self, name)
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(ACTIVATIONS)}; got {self.activation!r}.")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ValueError(f"hidden_sizes must be positive sizes; got {self.hidden_sizes}.")
        if self.cost_transform not in ("sparse", "dense", "barrier"):
            raise ValueError(f"cost_transform must be 'sparse', 'dense' or 'barrier'; got "
                             f"{self.cost_transform!r}.")
        if not (self.cost_buffer > 0 and math.isfinite(self.cost_buffer)):
            raise ValueError(f"cost_buffer must be a finite number > 0; got {self.cost_buffer}.")
        if self.eval_episodes < 0:
            raise ValueError(f"eval_episodes must be >= 0 (0: no evaluation at the end); got "
                             f"{self.eval_episodes}.")
        if not 1 <= self.env_workers <= self.num_envs:
            raise ValueError(f"env_workers must be between 1 and num_envs={self.num_envs}; got "
                             f"{self.env_workers}.")
        if len(set(self.seed_list)) != len(self.seed_list):
            raise ValueError(f"seeds must be distinct; got {list(self.seeds)}.")
        for seed in self.seed_list:
            if not 0 <= seed < 2**32:  # a JAX key's and numpy's (env reset) seed range
                raise ValueError(f"seeds must be integers in [0, 2**32); got {seed}.")

    @property
    def seed_list(self) -> tuple[int, ...]:
        """The seeds trained: ``seeds`` if given, else ``(seed,)``."""
        return tuple(self.seeds) if self.seeds else (self.seed,)

    @property
    def steps_per_iteration(self) -> int:
        """Environment steps collected per iteration per seed (``num_envs × rollout_steps``)."""
        return self.num_envs * self.rollout_steps

    @property
    def iterations(self) -> int:
        """Iterations needed to reach ``steps`` (the last one may overshoot)."""
        return max(1, math.ceil(self.steps / self.steps_per_iteration))


def check_limits(limits: tuple[tuple[float, ...], ...], name: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``limits`` is a grid of distinct limit
    vectors of one length with finite values >= 0 (empty is allowed: no grid)."""
    shown = [list(limit) for limit in limits]
    for limit in limits:
        if not limit or not all(math.isfinite(x) and x >= 0 for x in limit):
            raise ValueError(f"{name} values must be finite and >= 0, one per constraint; got "
                             f"{shown}.")
    if len({len(limit) for limit in limits}) > 1:
        raise ValueError(f"{name} must give every limit the same number of constraints (write "
                         f"a limit of two constraints as 20,5); got {shown}.")
    if len(set(limits)) != len(limits):
        raise ValueError(f"{name} must be distinct; got {shown}.")


def check_positive(config: object, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless the field is an integer >= 1."""
    value = getattr(config, name)
    if value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value}.")
