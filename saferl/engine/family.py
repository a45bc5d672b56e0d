"""The interface of an engine family: what ``training.py`` and ``policy.py`` call.

Each family module (:mod:`saferl.algos.on_policy`, :mod:`saferl.algos.off_policy`) exports one
object satisfying :class:`EngineFamily`; the registry names it per algorithm
(``Algorithm.engine``), so the training loop, resume and policy loading never ask which family
an algorithm belongs to.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import numpy as np

from saferl.envs.core import EnvSpec, VecEnv


class Engine(Protocol):
    """Compiled iterations of one algorithm, configuration and environment, for all members."""

    def init_states(self) -> Any:
        """Fresh member-stacked states, placed on the devices."""
        ...

    def place(self, states: Any) -> Any:
        """Place restored member-stacked states on the devices."""
        ...

    def iterate(self, states: Any) -> tuple[Any, dict[str, np.ndarray]]:
        """One iteration of every member (each under the cost limits in its state); per-member
        metrics as numpy arrays."""
        ...

    def close(self) -> None:
        """Release background work (compilation)."""
        ...


class Conditioning(NamedTuple):
    """What a threshold-conditioned policy was trained on (episode-cost units, float64)."""

    behaviour: np.ndarray  # [N_b, m]: the behaviour thresholds Ẽ
    low: np.ndarray  # [m]: the range E, low end
    high: np.ndarray  # [m]: the range E, high end

    def record(self) -> dict[str, Any]:
        """JSON-ready form (policy metadata)."""
        return {"behaviour_thresholds": self.behaviour.tolist(),
                "threshold_range": [self.low.tolist(), self.high.tolist()]}


class PolicyParts(NamedTuple):
    """What a deployable policy of one member is made of (see :class:`saferl.policy.Policy`)."""

    module: Any  # Flax module: observations [, thresholds] -> (mean, log_std) or an action
    params: Any
    obs_stats: Any  # RunningStats, or None when observations are not normalised
    squashed: bool  # actions pass through tanh and are scaled to the bounds
    conditioning: Conditioning | None = None  # set: the module also takes thresholds [B, m]


class EngineFamily(Protocol):
    """One engine family (on- or off-policy)."""

    name: str

    def initial_states(self, algorithm: Any, config: Any, spec: EnvSpec, task: Any) -> Any:
        """Fresh member-stacked states (also the template checkpoints load into)."""
        ...

    def make_engine(self, algorithm: Any, config: Any, spec: EnvSpec, task: Any,
                    envs: list[VecEnv] | None) -> Engine:
        """The engine for a native ``task`` or one host VecEnv per member in ``envs``."""
        ...

    def prepare_resume(self, states: Any, config: Any, host: bool) -> Any:
        """Restored states made ready to continue: buffers sized for ``config`` and, for host
        environments (``host``), episodes under way forgotten (simulators restart)."""
        ...

    def policy_parts(self, algorithm: Any, config: Any, spec: EnvSpec, states: Any,
                     index: int) -> PolicyParts:
        """The deployable policy of member ``index`` of ``states``."""
        ...
