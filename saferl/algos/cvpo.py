"""CVPO: constrained variational policy optimisation (Liu et al. 2022), safe RL as inference.

Per gradient update (docs/algorithms/cvpo.md):

1. **Critics** — twin reward critics (or one) and one critic per cost regress
   ``y = signal + γ^h Q'(s', a')`` with ``a' ~ π(·|s')`` and target networks (n-step windows;
   no bootstrap after a termination).
2. **E-step** — for every state of the batch, ``K`` pre-squash actions ``u_j`` are sampled from
   the old policy ``π_old`` (the target actor) and scored by the target critics
   (``Q_r = min`` of the twins). The convex dual over ``(η, λ)`` is minimised inside ``jit``
   by warm-started projected Newton (:func:`saferl.core.inference.solve_estep_dual`) with the
   episode limits converted to Q thresholds ``ε_Q``; the non-parametric target is
   ``q_j = softmax_j((Q_r − λᵀQ_c)/η)``. ``λ`` is CVPO's cost multiplier (one per constraint).
3. **M-step** — ``mstep_iterations`` Adam steps on
   ``−E_s Σ_j q_j [log N(u_j; μ_θ, σ_old) + log N(u_j; μ_old, σ_θ)] + α_μ KL_μ + α_σ KL_σ``
   (the decoupled likelihoods and KLs of Abdolmaleki et al. 2018), the KL multipliers ``α``
   following projected gradient ascent on their bounds. Soft multipliers only steer, so the
   update ends with a backtracking step on the parameter path from ``π_old`` to the new actor
   that keeps the largest fraction with ``KL_μ ≤ ε_μ`` and ``KL_σ ≤ ε_σ``: the bounds hold
   after every update.
4. **Targets** — actor and critics by Polyak averaging (rate τ), so ``π_old`` trails the actor.

The policy is a Gaussian over ``u`` with a state-dependent std; the environment receives
``tanh(u)``. Gaussian KLs are therefore exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tyro

from saferl.algos.off_policy import (
    Limits,
    OffPolicyConfig,
    critic_step,
    init_actor_critics,
    polyak,
    td_targets,
)
from saferl.core.distributions import gaussian_log_prob, gaussian_sample
from saferl.core.inference import DualSolution, decoupled_kl, estep_weights, solve_estep_dual
from saferl.core.networks import QCritics, TanhGaussianActor, host_tanh_gaussian
from saferl.data.replay import SampledBatch
from saferl.envs.core import EnvSpec


@dataclass(frozen=True)
class CVPOParams:
    """CVPO's own hyperparameters.

    Attributes:
        num_samples: Actions ``K`` sampled per state in the E-step.
        estep_kl: The E-step KL bound κ.
        dual_iterations: The most projected Newton iterations of the E-step dual per update
            (the solver stops earlier at convergence; warm-started, it usually needs 1–2).
        dual_init_eta: Initial temperature η (later updates warm-start from the last solution).
        max_multiplier: Upper bound of the cost multipliers λ.
        mstep_iterations: Actor gradient steps per update.
        kl_mean: M-step bound ε_μ on the mean part of the KL.
        kl_std: M-step bound ε_σ on the std part of the KL.
        kl_multiplier_lr_mean: Step size of the multiplier α_μ.
        kl_multiplier_lr_std: Step size of the multiplier α_σ.
        kl_multiplier_max: Upper bound of α_μ and α_σ.
        twin_critics: Two reward critics whose minimum is used (``False``: one, as FSRL).
    """

    num_samples: int = 32
    estep_kl: float = 0.02
    dual_iterations: int = 10
    dual_init_eta: float = 1.0
    max_multiplier: float = 100.0
    mstep_iterations: int = 5
    kl_mean: float = 0.005
    kl_std: float = 0.0005
    kl_multiplier_lr_mean: float = 10.0
    kl_multiplier_lr_std: float = 100.0
    kl_multiplier_max: float = 100.0
    twin_critics: bool = True

    def __post_init__(self) -> None:
        for name in ("num_samples", "dual_iterations", "mstep_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"cvpo.{name} must be >= 1; got {getattr(self, name)}.")
        for name in ("estep_kl", "dual_init_eta", "max_multiplier", "kl_mean", "kl_std",
                     "kl_multiplier_lr_mean", "kl_multiplier_lr_std", "kl_multiplier_max"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"cvpo.{name} must be a finite number > 0; got {value}.")


@dataclass(frozen=True)
class CVPOConfig:
    """Configuration of ``cvpo``: the shared off-policy settings and CVPO's hyperparameters."""

    run: Annotated[OffPolicyConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=lambda: OffPolicyConfig(tau=0.05))
    cvpo: CVPOParams = field(default_factory=CVPOParams)


class CVPONetworks(NamedTuple):
    """The Gaussian (pre-tanh) actor and the ``k + m`` Q-critics (``k = 2`` twin, else 1)."""

    actor: TanhGaussianActor
    critics: QCritics


class CVPOAgent(NamedTuple):
    """Online and target networks, optimiser states, the E-step dual and KL multipliers."""

    actor_params: Any
    critic_params: Any
    target_actor_params: Any
    target_critic_params: Any
    actor_opt_state: Any
    critic_opt_state: Any
    dual: jax.Array  # [1 + m]: η, then the cost multipliers λ
    kl_multipliers: jax.Array  # [2]: α_μ, α_σ


def make_networks(config: CVPOConfig, spec: EnvSpec) -> CVPONetworks:
    """Actor and critics with the configured hidden sizes."""
    run = config.run
    hidden = tuple(run.hidden_sizes)
    return CVPONetworks(TanhGaussianActor(spec.action_dim, hidden, run.activation,
                                      log_std_min=-10.0, log_std_max=1.0),
                    QCritics(_num_reward(config), spec.num_costs, hidden, run.activation))


def _num_reward(config: CVPOConfig) -> int:
    return 2 if config.cvpo.twin_critics else 1


def _optimizers(config: CVPOConfig) -> tuple[optax.GradientTransformation, ...]:
    return optax.adam(config.run.actor_lr), optax.adam(config.run.critic_lr)


def init_agent(config: CVPOConfig, spec: EnvSpec, networks: CVPONetworks,
               key: jax.Array) -> CVPOAgent:
    """Fresh networks with equal targets, Adam states, ``η = dual_init_eta``, ``λ = 0``."""
    actor_params, critic_params = init_actor_critics(networks, spec, key)
    actor_tx, critic_tx = _optimizers(config)
    dual = jnp.concatenate([jnp.asarray([config.cvpo.dual_init_eta]),
                            jnp.zeros(spec.num_costs)]).astype(jnp.float32)
    return CVPOAgent(actor_params, critic_params, actor_params, critic_params,
                     actor_tx.init(actor_params), critic_tx.init(critic_params), dual,
                     jnp.zeros(2, jnp.float32))


def sample_action(config: CVPOConfig, networks: CVPONetworks, actor_params: Any,
                  observations: jax.Array, key: jax.Array) -> jax.Array:
    """Exploration: ``tanh(u)``, ``u ~ π(·|s)``."""
    mean, log_std = networks.actor.apply(actor_params, observations)
    return jnp.tanh(gaussian_sample(key, mean, log_std))


def host_sample_action(config: CVPOConfig, networks: CVPONetworks, actor_params: Any,
                       observations: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """numpy twin of :func:`sample_action` for host rollouts (leading seed axis), given the
    standard-normal ``noise`` ``[S, N, A]``; ``actor_params`` from ``host_params``."""
    mean, log_std = host_tanh_gaussian(networks.actor, actor_params, observations)
    return np.tanh(mean + np.exp(log_std) * noise)


def update_multipliers(config: CVPOConfig, agent: CVPOAgent, episode_cost: jax.Array,
                       limits: Limits, fresh: jax.Array) -> tuple[CVPOAgent, dict[str, jax.Array]]:
    """CVPO's multipliers are the E-step dual's λ (solved every update): only report them."""
    return agent, {f"lagrange/lambda_{i}": agent.dual[1 + i]
                   for i in range(agent.dual.shape[0] - 1)}


class Condition(NamedTuple):
    """The condition paired with every state of a minibatch (CCPO, docs/algorithms/ccpo.md).

    CVPO's steps take ``condition=None``: one policy, one dual, one Q threshold. With a
    condition the networks are called with each state's threshold as an extra input, the E-step
    solves one dual per condition (over that condition's states, with its Q threshold) and the
    M-step's KLs and bounds are taken per condition.
    """

    thresholds: jax.Array  # [B, m] each state's threshold (episode units): the networks' input
    q_limit: jax.Array  # [B, m] the Q threshold ε_Q of each state's condition
    groups: jax.Array  # [C, B] 0/1: the states paired with condition i (one 1 per column)
    members: jax.Array  # [C, G] int: those states' indices (G: the most any condition has)
    valid: jax.Array  # [C, G] bool: which entries of ``members`` are states (the rest pad)
    inputs: Any  # what the networks get: ``thresholds`` or an equivalent ThresholdTable


class _Conditioned(NamedTuple):
    """A module whose ``apply`` appends the minibatch's thresholds (for shared helpers such as
    :func:`~saferl.algos.off_policy.critic_step` that call ``apply(params, obs, action)``)."""

    module: Any
    thresholds: Any

    def apply(self, params: Any, *inputs: jax.Array) -> Any:
        """``module.apply(params, *inputs, thresholds)``."""
        return self.module.apply(params, *inputs, self.thresholds)


def _bind(module: Any, condition: Condition | None) -> Any:
    """``module`` itself (CVPO) or the module fed each state's threshold (CCPO)."""
    return module if condition is None else _Conditioned(module, condition.inputs)


def _group_means(values: jax.Array, condition: Condition | None) -> jax.Array:
    """The mean over states (CVPO: a scalar) or over each condition's states (``[C]``; 0 for a
    condition no state is paired with)."""
    if condition is None:
        return values.mean()
    groups = condition.groups.astype(values.dtype)
    return groups @ values / jnp.maximum(groups.sum(axis=1), 1.0)


def critic_update(config: CVPOConfig, networks: CVPONetworks, actor_params: Any, critic_params: Any,
                  target_critic_params: Any, critic_opt_state: Any, batch: SampledBatch,
                  key: jax.Array, condition: Condition | None = None
                  ) -> tuple[Any, Any, jax.Array]:
    """Step 1: one Adam step of every critic towards ``signal + γ^h Q̄(s', a')``.

    ``a' ~ π(·|s')`` from ``actor_params`` (CVPO passes the online actor), scored by the target
    critics (``min`` over the reward twins). With a condition every transition's target is taken
    at its own threshold: ``Q̄(s', a' | ε_b)``, ``a' ~ π(·|s', ε_b)`` (docs/algorithms/ccpo.md, VVE).

    Returns:
        New critic parameters, Adam state and the loss.
    """
    _, critic_tx = _optimizers(config)
    actor, critics = _bind(networks.actor, condition), _bind(networks.critics, condition)
    mean, log_std = actor.apply(actor_params, batch.next_observations)
    next_action = jnp.tanh(gaussian_sample(key, mean, log_std))
    next_q = critics.apply(target_critic_params, batch.next_observations, next_action)
    k = _num_reward(config)
    targets = td_targets(batch, jnp.min(next_q[:, :k], axis=-1), next_q[:, k:])
    return critic_step(critics, critic_tx, critic_params, critic_opt_state, batch, targets,
                       num_reward=k)


class EStep(NamedTuple):
    """What the E-step hands to the M-step, and its diagnostics."""

    samples: jax.Array  # [K, B, A] pre-squash actions from π_old
    weights: jax.Array  # [B, K] the non-parametric target q
    mean_old: jax.Array  # [B, A]
    std_old: jax.Array  # [B, A]
    q_reward: jax.Array  # [B, K]
    q_costs: jax.Array  # [B, K, m]
    solution: DualSolution  # leaves [1 + m] (CVPO) or [C, 1 + m] (one per condition)


def estep(config: CVPOConfig, networks: CVPONetworks, target_actor_params: Any,
          target_critic_params: Any, observations: jax.Array, dual: jax.Array,
          q_limit: jax.Array, key: jax.Array, condition: Condition | None = None) -> EStep:
    """Step 2: ``K`` samples per state from ``π_old``, scored by the target critics; the dual
    solved from the warm start ``dual``; the weights ``q_j ∝ exp((Q_r − λᵀQ_c)/η)``.

    Args:
        config: CVPO's (or CCPO's) configuration; ``config.cvpo`` holds the E-step settings.
        networks: The modules.
        target_actor_params: ``π_old``.
        target_critic_params: The target critics.
        observations: ``[B, obs_dim]``.
        dual: ``[1 + m]`` warm start; with a condition ``[C, 1 + m]``, one per condition.
        q_limit: ``[m]`` the Q threshold (with a condition unused: ``condition.q_limit``).
        key: Sampling key.
        condition: Optional per-state condition: every condition ``i`` then gets its own dual
            ``(η_i, λ_i)`` from the states paired with it and its Q threshold (CCPO's CVI
            E-step, :func:`estep_solve`), and each state is weighted with its own.

    Returns:
        An :class:`EStep`.
    """
    params = config.cvpo
    actor, critics = _bind(networks.actor, condition), _bind(networks.critics, condition)
    mean_old, log_std_old = actor.apply(target_actor_params, observations)
    std_old = jnp.exp(log_std_old)
    noise = jax.random.normal(key, (params.num_samples, *mean_old.shape))
    samples = mean_old + std_old * noise  # [K, B, A]
    # The critics broadcast [B, obs] against [K, B, A]: the observation part once per state.
    q = critics.apply(target_critic_params, observations, jnp.tanh(samples))  # [K, B, k + m]
    k = _num_reward(config)
    q_reward = jnp.min(q[..., :k], axis=-1).T  # [B, K]
    q_costs = jnp.moveaxis(q[..., k:], 0, 1)  # [B, K, m]
    solution, weights = estep_solve(params, q_reward, q_costs, dual, q_limit, condition)
    return EStep(samples, weights, mean_old, std_old, q_reward, q_costs, solution)


def estep_solve(params: CVPOParams, q_reward: jax.Array, q_costs: jax.Array, dual: jax.Array,
                q_limit: jax.Array, condition: Condition | None = None
                ) -> tuple[DualSolution, jax.Array]:
    """The E-step's dual and weights from scored samples (the solver part of :func:`estep`).

    Args:
        params: CVPO's settings (κ, iterations, the multiplier cap).
        q_reward: ``[B, K]``.
        q_costs: ``[B, K, m]``.
        dual: ``[1 + m]`` warm start, or ``[C, 1 + m]`` with a condition.
        q_limit: ``[m]`` (unused with a condition: ``condition.q_limit``).
        condition: Optional per-state condition: condition ``i``'s dual minimises
            ``g_i(η_i, λ_i) = η_i κ + λ_iᵀ ε_Q,i + η_i E_{s paired with i}[log mean_j exp(…)]``
            (Yao et al. 2023, eq. 10 per condition) over its ``members`` only, one solve per
            condition in a ``lax.map``. (Not ``vmap``: batched, the solver's ``cond``-s
            would run both branches and every condition would wait for the slowest; measured
            on 256 states × 32 samples and 6 conditions, 10–15 ms against 0.7–1 ms.)

    Returns:
        The :class:`~saferl.core.inference.DualSolution` (leaves with a leading ``C`` axis
        with a condition) and the ``[B, K]`` weights, each state's from its condition's dual.
    """

    if condition is None:
        solution = solve_estep_dual(q_reward, q_costs, params.estep_kl, q_limit, dual,
                                    params.dual_iterations, max_multiplier=params.max_multiplier)
        return solution, estep_weights(q_reward, q_costs, solution.variables)
    def solve_condition(inputs: tuple[jax.Array, jax.Array, jax.Array]) -> DualSolution:
        init, members, valid = inputs
        return solve_estep_dual(q_reward[members], q_costs[members], params.estep_kl,
                                condition.q_limit[members], init, params.dual_iterations,
                                max_multiplier=params.max_multiplier,
                                state_mask=valid.astype(q_reward.dtype))

    solution = jax.lax.map(solve_condition, (dual, condition.members, condition.valid))
    index = jnp.argmax(condition.groups, axis=0)  # each state's condition
    return solution, estep_weights(q_reward, q_costs, solution.variables[index])


def mstep(config: CVPOConfig, networks: CVPONetworks, actor_params: Any, actor_opt_state: Any,
          kl_multipliers: jax.Array, observations: jax.Array, samples: jax.Array,
          weights: jax.Array, mean_old: jax.Array, std_old: jax.Array,
          condition: Condition | None = None
          ) -> tuple[Any, Any, jax.Array, dict[str, jax.Array]]:
    """Weighted maximum likelihood under decoupled KL bounds (step 3 of the module docstring).

    Args:
        config: CVPO configuration.
        networks: The modules.
        actor_params: Current actor parameters (the ascent starts here).
        actor_opt_state: Its Adam state.
        kl_multipliers: ``[2]`` α_μ, α_σ (with a condition ``[C, 2]``, one pair per condition).
        observations: ``[B, obs_dim]``.
        samples: ``[K, B, A]`` pre-squash actions from ``π_old``.
        weights: ``[B, K]`` E-step weights.
        mean_old: ``[B, A]`` ``π_old`` means.
        std_old: ``[B, A]`` ``π_old`` stds.
        condition: Optional per-state condition: the likelihood is then the mean over the
            conditions (those paired with at least one state) of each condition's mean weighted
            likelihood, and each condition's KLs have their own multipliers (CCPO's M-step,
            Yao et al. 2023, "Versatile M-step").

    Returns:
        New actor parameters, Adam state, KL multipliers, and metrics.
    """
    params = config.cvpo
    actor_tx, _ = _optimizers(config)
    bounds = jnp.asarray([params.kl_mean, params.kl_std])
    rates = jnp.asarray([params.kl_multiplier_lr_mean, params.kl_multiplier_lr_std])
    actor = _bind(networks.actor, condition)

    def kls(actor_params: Any) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        mean, log_std = actor.apply(actor_params, observations)
        kl_mean, kl_std = decoupled_kl(mean_old, std_old, mean, jnp.exp(log_std))
        return mean, log_std, _group_means(kl_mean, condition), _group_means(kl_std, condition)

    def loss_fn(actor_params: Any, alphas: jax.Array) -> tuple[jax.Array, jax.Array]:
        mean, log_std, kl_mean, kl_std = kls(actor_params)
        log_std_old = jnp.log(std_old)
        # Decoupled likelihoods: the mean learns with the old std, the std with the old mean.
        log_prob = (gaussian_log_prob(mean, log_std_old, samples)
                    + gaussian_log_prob(mean_old, log_std, samples))  # [K, B]
        if condition is None:
            likelihood = jnp.sum(weights.T * log_prob, axis=0).mean()
            kl = jnp.stack([kl_mean, kl_std])
            return -likelihood + alphas @ kl, kl
        per_condition = _group_means(jnp.sum(weights.T * log_prob, axis=0), condition)
        active = condition.groups.any(axis=1)
        likelihood = jnp.sum(per_condition) / jnp.maximum(active.sum(), 1)
        kl = jnp.stack([kl_mean, kl_std], axis=-1)  # [C, 2]
        return -likelihood + jnp.sum(alphas * kl), kl

    def step(carry: tuple[Any, Any, jax.Array], _: None) -> tuple[tuple, jax.Array]:
        actor_params, opt_state, alphas = carry
        (loss, kl), grads = jax.value_and_grad(loss_fn, has_aux=True)(actor_params, alphas)
        updates, opt_state = actor_tx.update(grads, opt_state, actor_params)
        actor_params = optax.apply_updates(actor_params, updates)
        alphas = jnp.clip(alphas + rates * (kl - bounds), 0.0, params.kl_multiplier_max)
        return (actor_params, opt_state, alphas), loss

    (new_actor, opt_state, alphas), losses = jax.lax.scan(
        step, (actor_params, actor_opt_state, kl_multipliers), None,
        length=params.mstep_iterations)
    return new_actor, opt_state, alphas, {"loss/actor": losses[-1]}


def enforce_kl_bounds(config: CVPOConfig, networks: CVPONetworks, old_params: Any, new_params: Any,
                      observations: jax.Array, mean_old: jax.Array, std_old: jax.Array,
                      condition: Condition | None = None
                      ) -> tuple[Any, jax.Array, jax.Array, jax.Array]:
    """The largest step ``old + t (new − old)``, ``t ∈ {1, ½, …, 2⁻⁵, 0}``, within both bounds.

    ``mean_old`` and ``std_old`` are the policy of ``old_params`` at ``observations``. Returns
    the parameters, the fraction ``t`` and the mean KL parts at the result. With a condition the
    KLs are the means over each condition's states (``[C]`` each) and ``t`` is the largest
    fraction that keeps **every** condition within both bounds: one common fraction on one
    parameter path, so the bounds hold per condition after every update.
    """
    shorter = jnp.concatenate([0.5 ** jnp.arange(1.0, 6.0), jnp.zeros(1)])  # after t = 1
    actor = _bind(networks.actor, condition)

    def kl_at(t: jax.Array) -> tuple[jax.Array, jax.Array]:
        params = jax.tree_util.tree_map(lambda o, n: o + t * (n - o), old_params, new_params)
        mean, log_std = actor.apply(params, observations)
        kl_mean, kl_std = decoupled_kl(mean_old, std_old, mean, jnp.exp(log_std))
        return _group_means(kl_mean, condition), _group_means(kl_std, condition)

    def within(kl_mean: jax.Array, kl_std: jax.Array) -> jax.Array:
        ok = (kl_mean <= config.cvpo.kl_mean) & (kl_std <= config.cvpo.kl_std)
        return ok if condition is None else jnp.all(ok, axis=-1)

    def backtrack() -> tuple[jax.Array, jax.Array, jax.Array]:
        kl_mean, kl_std = jax.vmap(kl_at)(shorter)
        ok = within(kl_mean, kl_std)
        choice = jnp.argmax(ok.at[-1].set(True))  # t = 0 is π_old itself
        return shorter[choice], kl_mean[choice], kl_std[choice]

    # The full step first (the soft multipliers usually keep it inside); the ladder if not.
    full_mean, full_std = kl_at(jnp.ones(()))
    inside = within(full_mean, full_std)
    t, kl_mean, kl_std = jax.lax.cond(inside, lambda: (jnp.ones(()), full_mean, full_std),
                                      backtrack)
    params = jax.tree_util.tree_map(lambda o, n: o + t * (n - o), old_params, new_params)
    return params, t, kl_mean, kl_std


def update(config: CVPOConfig, networks: CVPONetworks, agent: CVPOAgent, batch: SampledBatch,
           limits: Limits, key: jax.Array) -> tuple[CVPOAgent, dict[str, jax.Array]]:
    """One CVPO update: critics, E-step, M-step, targets."""
    run = config.run
    next_key, sample_key = jax.random.split(key)

    # 1. Critics.
    critic_params, critic_opt, critic_loss = critic_update(
        config, networks, agent.actor_params, agent.critic_params, agent.target_critic_params,
        agent.critic_opt_state, batch, next_key)

    # 2. E-step: K samples per state from π_old, scored by the target critics.
    e = estep(config, networks, agent.target_actor_params, agent.target_critic_params,
              batch.observations, agent.dual, limits.q, sample_key)

    # 3. M-step, then backtrack onto the KL bounds around π_old.
    actor_params, actor_opt, kl_multipliers, mstep_metrics = mstep(
        config, networks, agent.actor_params, agent.actor_opt_state, agent.kl_multipliers,
        batch.observations, e.samples, e.weights, e.mean_old, e.std_old)
    actor_params, fraction, kl_mean, kl_std = enforce_kl_bounds(
        config, networks, agent.target_actor_params, actor_params, batch.observations,
        e.mean_old, e.std_old)

    # 4. Targets.
    new_agent = CVPOAgent(actor_params, critic_params,
                          polyak(agent.target_actor_params, actor_params, run.tau),
                          polyak(agent.target_critic_params, critic_params, run.tau),
                          actor_opt, critic_opt, e.solution.variables, kl_multipliers)
    solution = e.solution
    metrics = {"loss/critic": critic_loss, **mstep_metrics,
               "cvpo/eta": solution.variables[0], "cvpo/dual_value": solution.value,
               "cvpo/dual_gradient_norm": solution.gradient_norm,
               "cvpo/dual_iterations": solution.iterations.astype(jnp.float32),
               "cvpo/weights_entropy": weights_entropy(e.weights), "cvpo/kl_mean": kl_mean,
               "cvpo/kl_std": kl_std, "cvpo/step_fraction": fraction,
               "cvpo/alpha_mean": kl_multipliers[0], "cvpo/alpha_std": kl_multipliers[1],
               "q/reward": e.q_reward.mean()}
    for i in range(e.q_costs.shape[-1]):
        metrics[f"q/cost_{i}"] = e.q_costs[..., i].mean()
    return new_agent, metrics


def weights_entropy(weights: jax.Array) -> jax.Array:
    """Mean over states of the entropy of the E-step weights ``[B, K]`` (``log K`` is uniform)."""
    return -jnp.sum(weights * jnp.log(weights + 1e-12), axis=1).mean()
