"""The algorithm registry: name → configuration class, functions and a one-line description."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from saferl.algos import cpo, cvpo, ddpg, pcpo, ppo, sac, trpo, trust_region_base


@dataclass(frozen=True)
class Algorithm:
    """One registered algorithm.

    Attributes:
        name: Registry name (``ppo_lag``).
        family: ``"on_policy"`` or ``"off_policy"`` (the engine that drives it).
        config_class: Its frozen configuration dataclass.
        init_agent: Builds the initial agent state.
        update: The pure update function.
        description: One line for ``saferl list``.
        constrained: Whether it enforces the cost limits (``ppo`` does not).
        module: Off-policy algorithms: the module implementing
            :class:`~saferl.algos.off_policy.OffPolicyAlgorithm`.
    """

    name: str
    family: str
    config_class: type
    init_agent: Callable[..., Any]
    update: Callable[..., Any]
    description: str
    constrained: bool = True
    module: Any = None


def _off_policy(name: str, module: Any, config_class: type, description: str,
                constrained: bool = True) -> Algorithm:
    return Algorithm(name, "off_policy", config_class, module.init_agent, module.update,
                     description, constrained, module)


ALGORITHMS: dict[str, Algorithm] = {
    "ppo": Algorithm("ppo", "on_policy", ppo.PPOConfig, ppo.init_agent, ppo.update,
                     "PPO, clipped surrogate; ignores costs (unconstrained baseline)",
                     constrained=False),
    "ppo_lag": Algorithm("ppo_lag", "on_policy", ppo.PPOLagConfig, ppo.init_agent, ppo.update,
                         "PPO-Lagrangian: PPO on the Lagrangian, multipliers by gradient or PID"),
    "trpo": Algorithm("trpo", "on_policy", trpo.TRPOConfig, trust_region_base.init_agent,
                      trpo.update, "TRPO, natural gradient in a KL trust region; ignores costs",
                      constrained=False),
    "trpo_lag": Algorithm("trpo_lag", "on_policy", trpo.TRPOLagConfig,
                          trust_region_base.init_agent, trpo.update,
                          "TRPO-Lagrangian: TRPO on the Lagrangian, multipliers by gradient "
                          "or PID"),
    "cpo": Algorithm("cpo", "on_policy", cpo.CPOConfig, trust_region_base.init_agent, cpo.update,
                     "CPO: exact constrained trust-region step, recovery, line search"),
    "pcpo": Algorithm("pcpo", "on_policy", pcpo.PCPOConfig, trust_region_base.init_agent,
                      pcpo.update, "PCPO: TRPO step then projection (KL or L2) onto the "
                                   "linearised constraints"),
    "sac": _off_policy("sac", sac, sac.SACConfig,
                       "SAC, entropy-regularised off-policy actor-critic; ignores costs "
                       "(unconstrained baseline)", constrained=False),
    "sac_lag": _off_policy("sac_lag", sac, sac.SACLagConfig,
                           "SAC-Lagrangian: SAC on the Lagrangian with cost critics, multipliers "
                           "by gradient or PID"),
    "ddpg_lag": _off_policy("ddpg_lag", ddpg, ddpg.DDPGLagConfig,
                            "DDPG-Lagrangian: deterministic actor-critic on the Lagrangian"),
    "td3_lag": _off_policy("td3_lag", ddpg, ddpg.TD3LagConfig,
                           "TD3-Lagrangian: twin critics, target smoothing, delayed actor"),
    "cvpo": _off_policy("cvpo", cvpo, cvpo.CVPOConfig,
                        "CVPO: safe RL as inference, E-step convex dual + KL-bounded M-step"),
}


class UnknownAlgorithmError(KeyError):
    """An algorithm name that is not registered (the message lists the valid names)."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_algorithm(name: str) -> Algorithm:
    """Look up an algorithm, or raise :class:`UnknownAlgorithmError` naming the nearest match."""
    if name in ALGORITHMS:
        return ALGORITHMS[name]
    close = difflib.get_close_matches(name, list(ALGORITHMS), n=1, cutoff=0.4)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownAlgorithmError(
        f"Unknown algorithm {name!r}.{hint} Valid algorithms: {', '.join(sorted(ALGORITHMS))}.")
