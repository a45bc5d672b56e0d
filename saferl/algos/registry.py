"""The algorithm registry: name → configuration class, engine family, implementation, one line.

Each entry names the engine family that trains it (:data:`~saferl.algos.on_policy.ON_POLICY` or
:data:`~saferl.algos.off_policy.OFF_POLICY`, both :class:`~saferl.engine.family.EngineFamily`)
and the object that family drives (``module``): an on-policy algorithm's ``init_agent`` and
``update`` (:class:`~saferl.algos.on_policy.OnPolicyFunctions`), an off-policy algorithm's
module (:class:`~saferl.algos.off_policy.OffPolicyAlgorithm`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from saferl.algos import (
    ccpo,
    combination,
    cpo,
    cvpo,
    ddpg,
    pcpo,
    ppo,
    sac,
    trpo,
    trust_region_base,
    vddpg,
    vsac,
)
from saferl.algos.off_policy import OFF_POLICY
from saferl.algos.on_policy import ON_POLICY, OnPolicyFunctions
from saferl.engine.family import EngineFamily


@dataclass(frozen=True)
class Algorithm:
    """One registered algorithm.

    Attributes:
        name: Registry name (``ppo_lag``).
        engine: The engine family that trains it.
        config_class: Its frozen configuration dataclass.
        module: What the engine drives (see the module docstring).
        description: One line for ``saferl list``.
        constrained: Whether it enforces the cost limits (``ppo`` does not).
        host_defaults: Settings (in the configuration's nested layout) that replace the
            configuration class's defaults for host environments (Bullet, gymnasium). The
            class's defaults are sized for native tasks, where environment steps are free (see
            :func:`saferl.training.build_config`).
    """

    name: str
    engine: EngineFamily
    config_class: type
    module: Any
    description: str
    constrained: bool = True
    host_defaults: Mapping[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        """The engine family's name: ``"on_policy"`` or ``"off_policy"``."""
        return self.engine.name


#: On-policy defaults for host environments (Bullet, gymnasium), chosen by measurement
#: (benchmarks/RESULTS.md, issue 16). At Bullet's 200k-step budgets the native tasks' 64
#: copies × 200 steps give only 16 iterations; 20 copies give 50. PPO also takes an update
#: near FSRL's (16 minibatches × 4 epochs at a policy learning rate of 5e-4): 20 minibatches
#: × 3 epochs, 60 gradient steps per iteration instead of 20; 20 divides every batch of 20
#: copies, so no sample sits out a pass (16 leaves 8 of 20 × 250 on SafetyBallGather-v0; a
#: user's ``--num-envs`` that 20 does not divide leaves fewer than 20). On SafetyBallCircle-v0 (200k
#: steps, seeds 0–2, limit 10) the deterministic return of ``ppo_lag`` rose from 268 (native
#: defaults) and 454 (20 copies) to 520, cost 2.6 (16 × 4: 529, cost 1.1); FSRL PPO-Lag
#: reaches 509. The PPO family (``ppo``, ``ppo_lag``, ``cppo_lag``, whose members are
#: ``ppo_lag`` runs) shares them.
HOST_PPO: dict[str, Any] = {"run": {"num_envs": 20},
                            "ppo": {"minibatches": 20, "epochs": 3, "policy_lr": 5e-4}}
#: The trust-region methods' host defaults: 20 copies (50 iterations at 200k steps). On
#: SafetyBallCircle-v0 (seeds 0–2) ``trpo_lag`` went from 409 to 607, ``cpo`` from 396 to 558,
#: ``pcpo`` from 379 to 550, every deterministic cost within the limit; 128×128 networks did
#: not help them. The TRPO family (``trpo``, ``trpo_lag``, ``ctrpo_lag``) shares them.
HOST_TRUST_REGION: dict[str, Any] = {"run": {"num_envs": 20}}


def _on_policy(name: str, config_class: type, init_agent: Callable[..., Any],
               update: Callable[..., Any], description: str, constrained: bool = True,
               host_defaults: Mapping[str, Any] | None = None) -> Algorithm:
    return Algorithm(name, ON_POLICY, config_class, OnPolicyFunctions(init_agent, update),
                     description, constrained, host_defaults or {})


def _off_policy(name: str, module: Any, config_class: type, description: str,
                constrained: bool = True) -> Algorithm:
    return Algorithm(name, OFF_POLICY, config_class, module, description, constrained)


ALGORITHMS: dict[str, Algorithm] = {
    "ppo": _on_policy("ppo", ppo.PPOConfig, ppo.init_agent, ppo.update,
                      "PPO, clipped surrogate; ignores costs (unconstrained baseline)",
                      constrained=False, host_defaults=HOST_PPO),
    "ppo_lag": _on_policy("ppo_lag", ppo.PPOLagConfig, ppo.init_agent, ppo.update,
                          "PPO-Lagrangian: PPO on the Lagrangian, multipliers by gradient or "
                          "PID", host_defaults=HOST_PPO),
    "trpo": _on_policy("trpo", trpo.TRPOConfig, trust_region_base.init_agent, trpo.update,
                       "TRPO, natural gradient in a KL trust region; ignores costs",
                       constrained=False, host_defaults=HOST_TRUST_REGION),
    "trpo_lag": _on_policy("trpo_lag", trpo.TRPOLagConfig, trust_region_base.init_agent,
                           trpo.update, "TRPO-Lagrangian: TRPO on the Lagrangian, multipliers "
                                        "by gradient or PID",
                           host_defaults=HOST_TRUST_REGION),
    "cpo": _on_policy("cpo", cpo.CPOConfig, trust_region_base.init_agent, cpo.update,
                      "CPO: exact constrained trust-region step, recovery, line search",
                      host_defaults=HOST_TRUST_REGION),
    "pcpo": _on_policy("pcpo", pcpo.PCPOConfig, trust_region_base.init_agent, pcpo.update,
                       "PCPO: TRPO step then projection (KL or L2) onto the linearised "
                       "constraints", host_defaults=HOST_TRUST_REGION),
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
    "vsac_lag": _off_policy("vsac_lag", vsac, vsac.VSACLagConfig,
                            "V-SAC-Lag: SAC-Lagrangian with the threshold as an input, one "
                            "multiplier per behaviour threshold (versatile baseline)"),
    "vddpg_lag": _off_policy("vddpg_lag", vddpg, vddpg.VDDPGLagConfig,
                             "V-DDPG-Lag: DDPG-Lagrangian with the threshold as an input, one "
                             "multiplier per behaviour threshold (versatile baseline)"),
    "cppo_lag": _on_policy("cppo_lag", combination.CPPOLagConfig, ppo.init_agent, ppo.update,
                           "C-PPO-Lag: a PPO-Lagrangian policy per behaviour threshold, "
                           "deployed as their linear combination (versatile baseline)",
                           host_defaults=HOST_PPO),
    "ctrpo_lag": _on_policy("ctrpo_lag", combination.CTRPOLagConfig,
                            trust_region_base.init_agent, trpo.update,
                            "C-TRPO-Lag: a TRPO-Lagrangian policy per behaviour threshold, "
                            "deployed as their linear combination (versatile baseline)",
                            host_defaults=HOST_TRUST_REGION),
    "ccpo": _off_policy("ccpo", ccpo, ccpo.CCPOConfig,
                        "CCPO: one policy for every cost threshold in a range (versatile; "
                        "VVE critics + CVI)"),
}


class UnknownAlgorithmError(KeyError):
    """An algorithm name that is not registered (the message lists the valid names)."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_algorithm(name: str) -> Algorithm:
    """Look up an algorithm, or raise :class:`UnknownAlgorithmError` naming the nearest match."""
    if name in ALGORITHMS:
        return ALGORITHMS[name]
    close = difflib.get_close_matches(str(name).lower(), list(ALGORITHMS), n=1, cutoff=0.4)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownAlgorithmError(
        f"Unknown algorithm {name!r}.{hint} Valid algorithms: {', '.join(sorted(ALGORITHMS))}.")
