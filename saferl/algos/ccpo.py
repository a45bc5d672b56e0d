"""CCPO: constraint-conditioned policy optimisation (Yao et al., NeurIPS 2023), versatile safe RL.

One policy ``π(a | s, ε)`` for every episode-cost threshold ``ε`` in a range ``E``, trained on a
few behaviour thresholds ``Ẽ ⊂ E`` and used zero-shot at the others (Yao et al. 2023;
docs/algorithms/ccpo.md, whose reconstruction choices (R) are the documented fields of
:class:`CCPOParams`). It is CVPO's update (:mod:`saferl.algos.cvpo`, whose pure steps this module
composes) with every state of a minibatch paired with one *condition* ``ε_i``:

1. **Conditions** — stage 1 (pre-training, the first ``pretrain_fraction`` of the steps): the
   behaviour thresholds ``Ẽ``. Stage 2 (versatile fine-tuning): ``Ẽ`` and ``sampled_conditions``
   thresholds drawn uniformly from ``E`` at every update. The stage is a pure function of the
   update count (:func:`fine_tuning`). The states of the minibatch are assigned to the
   conditions round-robin or in a random balanced order (:func:`assign_conditions`), so an
   update costs about what CVPO's does instead of ``|conditions|`` times as much.
2. **VVE critics** — ``Q_f(s, a | ε) = ψ_f(s, a)ᵀ z_f(ε)``, ``z_f = W_f · Poly(ε̃, p)``
   (:class:`~saferl.core.conditioning.VVECritics`), twin reward critics and one per cost; TD
   targets per (transition, condition) ``f + γ^h Q̄_f(s', a' | ε)``, ``a' ~ π(·|s', ε)``. Off-policy
   data from any behaviour threshold is valid for every condition; by default the critics are
   trained on the behaviour thresholds only (VVE generalises by its linear structure).
3. **CVI E-step** — per condition the CVPO dual with its own ``(η_i, λ_i)`` and its own Q
   threshold ``ε_Q(ε_i)``, solved inside ``jit`` over the states paired with it, one condition
   after another in a ``lax.map`` (each over its own states only); weights
   ``q_ij ∝ exp((Q_r − λ_iᵀQ_c)/η_i)``. The duals of the behaviour thresholds persist between
   updates (warm starts); those of sampled thresholds start from the behaviour duals
   interpolated at them.
4. **CVI M-step** — maximise the mean over conditions of each condition's weighted
   log-likelihood of ``π(·|s, ε_i)`` under the decoupled mean/std KL bounds per condition (KL
   multipliers per condition), then one common backtracking fraction on the parameter path that
   keeps **every** condition's KLs within the bounds.
5. **Targets** — Polyak averaging, as CVPO.

**Ablations** (the paper's Table 3): ``vve=False`` — critics are MLPs of ``([s, ε̃], a)``
(:class:`~saferl.core.conditioning.ConditionedQCritics`); ``cvi=False`` — step 3–4 become a
conditioned Lagrangian actor loss (SAC-Lag style, fixed entropy temperature) with one multiplier
vector per behaviour threshold, updated once per iteration from the episodes collected under it
(:func:`update_multipliers`; sampled thresholds use the interpolated multipliers).

**What the engine supplies** (next to the :class:`~saferl.algos.off_policy.OffPolicyAlgorithm`
protocol): a behaviour threshold from :func:`behaviour_thresholds` per episode per copy, passed
to :func:`sample_action` / :func:`host_sample_action` as ``thresholds [N, m]`` (stored with the
transitions for bookkeeping; :func:`update` does not read it: it pairs states with conditions
itself); and, for ``cvi=False``, the mean episode cost per behaviour threshold ``[N_b, m]`` with
a ``fresh [N_b]`` flag for :func:`update_multipliers`. ``update`` has the protocol's signature;
its ``limits`` argument is not used (the conditions carry their own limits).
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

from saferl.algos.actor_critic import VersatileParams, init_conditioned_actor_critics
from saferl.algos.cvpo import (
    Condition,
    CVPOParams,
    critic_update,
    enforce_kl_bounds,
    estep,
    mstep,
    weights_entropy,
)
from saferl.algos.off_policy import Limits, OffPolicyConfig, polyak, q_threshold
from saferl.core.conditioning import (
    ConditionedQCritics,
    ConditionedTanhGaussianActor,
    ThresholdTable,
    VVECritics,
    behaviour_set,
    host_conditioned_tanh_gaussian,
    interpolate_rows,
    normalize_thresholds,
)
from saferl.core.distributions import gaussian_sample, tanh_gaussian_sample_and_log_prob
from saferl.data.replay import SampledBatch
from saferl.envs.core import EnvSpec

ASSIGNMENTS = ("round_robin", "random")
TD_ACTORS = ("online", "target")
DUAL_INITS = ("interpolate", "nearest")


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class CCPOParams(VersatileParams):
    """CCPO's own hyperparameters; every (R) choice of docs/algorithms/ccpo.md is one of them. The
    thresholds (``Ẽ``, ``E``, ``m``; the ``behaviour`` and ``bounds`` views) are those of every
    versatile algorithm (:class:`~saferl.algos.actor_critic.VersatileParams`).

    Attributes:
        behaviour_thresholds: The behaviour set ``Ẽ`` in episode-cost units: flat, ``m``
            consecutive numbers per threshold vector (``20 40 60`` with one constraint,
            ``20 5 40 10`` for two vectors of two), or (from Python) a sequence of ``m``-vectors;
            strictly increasing, inside ``threshold_range``.
        threshold_range: The range ``E``: ``(low, high)`` for every constraint, or one
            ``(low, high)`` pair per constraint; thresholds are normalised over it to ``[−1, 1]``.
        num_constraints: ``m``, the length of every threshold vector (the task's cost count).
        vve: Versatile value estimation (``False``: the "w/o VVE" ablation, critics of
            ``([s, ε̃], a)``).
        cvi: Conditioned variational inference (``False``: the "w/o CVI" ablation, a
            conditioned Lagrangian actor update).
        poly_degree: ``p`` of ``z_f(ε) = W_f · [1, ε̃, …, ε̃^p]`` (R; the paper's Assumption 2).
        feature_size: ``M``, the size of ``ψ_f(s, a)`` and ``z_f(ε)`` (R).
        pretrain_fraction: Stage 1 (conditions = ``Ẽ``) lasts until this fraction of the
            environment steps has been collected; stage 2 adds sampled thresholds (R). ``1``:
            no fine-tuning stage.
        sampled_conditions: Thresholds drawn uniformly from ``E`` at every stage-2 update (R).
        assignment: How the minibatch's states are paired with the conditions (R):
            ``"round_robin"`` (state ``b`` with condition ``b mod C``; minibatches are already
            uniform draws from the replay) or ``"random"`` (a random balanced assignment).
        critic_on_sampled: Stage 2: also train the critics on the sampled thresholds (R;
            default ``False``: critics on ``Ẽ`` only, the VVE claim).
        td_actor: The actor of the TD targets' ``a' ~ π(·|s', ε)`` (R): ``"online"`` (CVPO's
            choice, so that CCPO with one fixed condition is CVPO) or ``"target"`` (``π̄``).
        sampled_dual_init: Warm start of a sampled threshold's dual and KL multipliers (R):
            ``"interpolate"`` (linear between the neighbouring behaviour thresholds;
            inverse-squared-distance weights with several constraints) or ``"nearest"``.
        lagrangian_alpha: ``cvi=False``: the fixed entropy temperature of the actor loss (R).
        lagrangian_lr: ``cvi=False``: gradient-ascent step of the multipliers per iteration (R).
        lagrangian_max: ``cvi=False``: upper bound of the multipliers.
    """

    vve: bool = True
    cvi: bool = True
    poly_degree: int = 2
    feature_size: int = 32
    pretrain_fraction: float = 0.8
    sampled_conditions: int = 3
    assignment: str = "round_robin"
    critic_on_sampled: bool = False
    td_actor: str = "online"
    sampled_dual_init: str = "interpolate"
    lagrangian_alpha: float = 0.05
    lagrangian_lr: float = 0.05
    lagrangian_max: float = 100.0

    def __post_init__(self) -> None:
        # Nested vectors given from Python are stored flat (one form for the CLI and JSON).
        object.__setattr__(self, "behaviour_thresholds", behaviour_set(
            self.behaviour_thresholds, self.threshold_range, self.num_constraints, "ccpo"))
        for name in ("poly_degree", "feature_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ccpo.{name} must be >= 1; got {getattr(self, name)}.")
        if self.sampled_conditions < 0:
            raise ValueError(
                f"ccpo.sampled_conditions must be >= 0; got {self.sampled_conditions}.")
        if not 0 < self.pretrain_fraction <= 1:
            raise ValueError(
                f"ccpo.pretrain_fraction must be in (0, 1]; got {self.pretrain_fraction}.")
        for name, allowed in (("assignment", ASSIGNMENTS), ("td_actor", TD_ACTORS),
                              ("sampled_dual_init", DUAL_INITS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"ccpo.{name} must be one of {', '.join(map(repr, allowed))}; "
                                 f"got {getattr(self, name)!r}.")
        if not (self.lagrangian_alpha >= 0 and math.isfinite(self.lagrangian_alpha)):
            raise ValueError(f"ccpo.lagrangian_alpha must be a finite number >= 0; got "
                             f"{self.lagrangian_alpha}.")
        for name in ("lagrangian_lr", "lagrangian_max"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"ccpo.{name} must be a finite number > 0; got {value}.")

    @property
    def has_fine_tuning(self) -> bool:
        """Whether stage 2 exists (static: without it every update has ``N`` conditions)."""
        return self.pretrain_fraction < 1 and self.sampled_conditions > 0

    @property
    def num_conditions(self) -> int:
        """Conditions of every update's arrays: ``N`` (+ the sampled ones if stage 2 exists;
        in stage 1 those slots are paired with no state)."""
        extra = self.sampled_conditions if self.has_fine_tuning else 0
        return self.behaviour.shape[0] + extra


@dataclass(frozen=True)
class CCPOConfig:
    """Configuration of ``ccpo``: the shared off-policy settings, the E-/M-step settings CCPO
    shares with CVPO (``cvpo.*``: K, κ, the KL bounds, …) and CCPO's own."""

    run: Annotated[OffPolicyConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=lambda: OffPolicyConfig(tau=0.05))
    cvpo: CVPOParams = field(default_factory=CVPOParams)
    ccpo: CCPOParams = field(default_factory=CCPOParams)

    def __post_init__(self) -> None:
        conditions = self.ccpo.num_conditions
        if self.run.batch_size < conditions:
            raise ValueError(f"batch_size must be >= the {conditions} conditions of an update "
                             f"(behaviour thresholds + ccpo.sampled_conditions) so that each "
                             f"gets a state; got {self.run.batch_size}.")


# --------------------------------------------------------------------------- networks, state
class CCPONetworks(NamedTuple):
    """The conditioned actor, the conditioned critics and the task's Q-threshold factor."""

    actor: ConditionedTanhGaussianActor
    critics: VVECritics | ConditionedQCritics
    q_factor: float  # ε_Q = q_factor · ε (docs/algorithms/index.md, the task's episode length T)


class CCPOAgent(NamedTuple):
    """Networks, optimiser states, and per-behaviour-threshold duals and multipliers."""

    actor_params: Any
    critic_params: Any
    target_actor_params: Any
    target_critic_params: Any
    actor_opt_state: Any
    critic_opt_state: Any
    duals: jax.Array  # [N, 1 + m]: η_i, then λ_i, per behaviour threshold (CVI)
    kl_multipliers: jax.Array  # [N, 2]: α_μ, α_σ per behaviour threshold (CVI)
    multipliers: jax.Array  # [N, m]: the Lagrange multipliers of cvi=False
    updates: jax.Array  # int32: gradient updates so far (the stage schedule's clock)


def _num_reward(config: CCPOConfig) -> int:
    return 2 if config.cvpo.twin_critics else 1


def make_networks(config: CCPOConfig, spec: EnvSpec) -> CCPONetworks:
    """The conditioned actor and critics (VVE or the "w/o VVE" MLP), with the Q-threshold
    factor of the task's episode length (``run.episode_length``, else the time limit).

    Raises:
        ValueError: ``ccpo.num_constraints`` differs from the task's cost count, or the task has
            no episode length to convert thresholds into Q thresholds.
    """
    run, params = config.run, config.ccpo
    if params.num_constraints != spec.num_costs:
        raise ValueError(f"ccpo.num_constraints must equal the {spec.num_costs} cost(s) of "
                         f"{spec.id}; got {params.num_constraints}.")
    length = run.episode_length or spec.max_episode_steps
    if length is None:
        raise ValueError(f"ccpo needs an episode length to turn thresholds into Q thresholds: "
                         f"{spec.id} has no time limit, so set episode_length.")
    low, high = (tuple(float(x) for x in end) for end in params.bounds)
    hidden = tuple(run.hidden_sizes)
    actor = ConditionedTanhGaussianActor(spec.action_dim, low, high, hidden, run.activation)
    if params.vve:
        critics = VVECritics(_num_reward(config), spec.num_costs, low, high, hidden,
                             run.activation, params.feature_size, params.poly_degree)
    else:
        critics = ConditionedQCritics(_num_reward(config), spec.num_costs, low, high, hidden,
                                      run.activation)
    return CCPONetworks(actor, critics, float(q_threshold(1.0, run.gamma, length)))


def _optimizers(config: CCPOConfig) -> tuple[optax.GradientTransformation, ...]:
    return optax.adam(config.run.actor_lr), optax.adam(config.run.critic_lr)


def init_agent(config: CCPOConfig, spec: EnvSpec, networks: CCPONetworks,
               key: jax.Array) -> CCPOAgent:
    """Fresh networks with equal targets, Adam states, every ``η_i = dual_init_eta``, ``λ = 0``."""
    actor_params, critic_params = init_conditioned_actor_critics(networks, spec, key)
    actor_tx, critic_tx = _optimizers(config)
    n, m = config.ccpo.behaviour.shape
    duals = jnp.concatenate([jnp.full((n, 1), config.cvpo.dual_init_eta),
                             jnp.zeros((n, m))], axis=1).astype(jnp.float32)
    return CCPOAgent(actor_params, critic_params, actor_params, critic_params,
                     actor_tx.init(actor_params), critic_tx.init(critic_params), duals,
                     jnp.zeros((n, 2), jnp.float32), jnp.zeros((n, m), jnp.float32),
                     jnp.zeros((), jnp.int32))


# --------------------------------------------------------------------------- acting
def behaviour_thresholds(config: CCPOConfig) -> np.ndarray:
    """``Ẽ`` ``[N, m]``: the engine draws one per copy at every episode start and acts with
    ``π(·|s, ε)`` for the episode's ``ε`` (the conditioned-algorithm protocol of
    :class:`~saferl.algos.off_policy.OffPolicyAlgorithm`)."""
    return config.ccpo.behaviour


def threshold_range(config: CCPOConfig) -> tuple[np.ndarray, np.ndarray]:
    """``E`` as ``(low [m], high [m])``: the thresholds a deployed policy is trained for."""
    return config.ccpo.bounds


def sample_action(config: CCPOConfig, networks: CCPONetworks, actor_params: Any,
                  observations: jax.Array, key: jax.Array, thresholds: jax.Array) -> jax.Array:
    """Exploration: ``tanh(u)``, ``u ~ π(·|s, ε)``, for observations ``[N, obs_dim]`` and each
    copy's threshold ``[N, m]``."""
    mean, log_std = networks.actor.apply(actor_params, observations, thresholds)
    return jnp.tanh(gaussian_sample(key, mean, log_std))


def host_sample_action(config: CCPOConfig, networks: CCPONetworks, actor_params: Any,
                       observations: np.ndarray, noise: np.ndarray,
                       thresholds: np.ndarray) -> np.ndarray:
    """numpy twin of :func:`sample_action` for host rollouts: observations ``[S, N, obs_dim]``,
    standard-normal ``noise`` ``[S, N, A]``, thresholds ``[S, N, m]``, host parameters."""
    mean, log_std = host_conditioned_tanh_gaussian(networks.actor, actor_params, observations,
                                                   thresholds)
    return np.tanh(mean + np.exp(log_std) * noise)


# --------------------------------------------------------------------------- the schedule
def fine_tuning(config: CCPOConfig, update_count: jax.Array) -> jax.Array:
    """Whether update number ``update_count`` (from 0) is in stage 2.

    Update ``u`` runs in iteration ``w + ⌊u / U⌋`` (``w`` warm-up iterations, ``U`` updates per
    iteration), which starts after ``(w + ⌊u / U⌋) · steps_per_iteration`` environment steps;
    stage 2 once that is at least ``pretrain_fraction · steps``.
    """
    run, params = config.run, config.ccpo
    if not params.has_fine_tuning:
        return jnp.zeros((), bool)
    # The first stage-2 iteration, in Python integers (no int32 overflow of steps inside jit).
    first = math.ceil(params.pretrain_fraction * run.steps / run.steps_per_iteration - 1e-9)
    return run.warmup_iterations + update_count // run.updates_per_iteration >= first


def condition_set(config: CCPOConfig, key: jax.Array,
                  stage_two: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The conditions of one update: ``[C, m]`` thresholds and how many are active.

    The first ``N`` rows are ``Ẽ``; with a fine-tuning stage ``sampled_conditions`` rows drawn
    uniformly from ``E`` follow, active only in stage 2.
    """
    params = config.ccpo
    behaviour = jnp.asarray(params.behaviour, jnp.float32)
    if not params.has_fine_tuning:
        return behaviour, jnp.asarray(behaviour.shape[0])
    low, high = (jnp.asarray(end, jnp.float32) for end in params.bounds)
    uniform = jax.random.uniform(key, (params.sampled_conditions, behaviour.shape[1]))
    thresholds = jnp.concatenate([behaviour, low + uniform * (high - low)])
    return thresholds, jnp.where(stage_two, thresholds.shape[0], behaviour.shape[0])


def assign_conditions(config: CCPOConfig, key: jax.Array, batch_size: int,
                      num_active: jax.Array, num_conditions: int
                      ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Pair the states with the active conditions: state ``b`` with condition ``b mod active``
    (``round_robin``), or with that of its place in a random permutation (``random``);
    balanced to within one state.

    Returns:
        ``groups`` ``[C, B]`` (0/1), and ``members`` ``[C, G]`` / ``valid`` ``[C, G]``: each
        condition's states, ``G = ⌈B / N⌉`` (the most a condition gets, with the ``N``
        behaviour thresholds alone active), padded.
    """
    position = jnp.arange(batch_size)  # the place of every state in the pairing order
    if config.ccpo.assignment == "random":
        position = jax.random.permutation(key, batch_size)
    index = position % num_active
    groups = jax.nn.one_hot(index, num_conditions, dtype=jnp.float32).T
    # Condition i holds the states at places i, i + active, i + 2·active, …
    size = -(-batch_size // config.ccpo.behaviour.shape[0])
    places = jnp.arange(num_conditions)[:, None] + num_active * jnp.arange(size)[None, :]
    valid = (places < batch_size) & (jnp.arange(num_conditions)[:, None] < num_active)
    state_at = jnp.argsort(position)  # the state at each place
    return groups, state_at[jnp.minimum(places, batch_size - 1)], valid


def _condition(networks: CCPONetworks, thresholds: jax.Array,
               pairing: tuple[jax.Array, jax.Array, jax.Array]) -> Condition:
    """The :class:`~saferl.algos.cvpo.Condition` of a pairing and condition thresholds
    ``[C, m]``: per-state thresholds and Q thresholds ``ε_Q = q_factor · ε``."""
    groups, members, valid = pairing
    index = jnp.argmax(groups, axis=0)
    per_state = thresholds[index]
    return Condition(per_state, networks.q_factor * per_state, groups, members, valid,
                     ThresholdTable(thresholds, index))


def _warm_starts(config: CCPOConfig, thresholds: jax.Array, stored: jax.Array) -> jax.Array:
    """``[C, k]`` starting values: the stored ones for ``Ẽ``, interpolated for sampled rows."""
    n = stored.shape[0]
    if thresholds.shape[0] == n:
        return stored
    low, high = config.ccpo.bounds
    knots = normalize_thresholds(thresholds[:n], low, high)
    queries = normalize_thresholds(thresholds[n:], low, high)
    sampled = interpolate_rows(queries, knots, stored, config.ccpo.sampled_dual_init)
    return jnp.concatenate([stored, sampled.astype(stored.dtype)])


def update_conditions(config: CCPOConfig, networks: CCPONetworks, update_count: jax.Array,
                      batch_size: int, key: jax.Array
                      ) -> tuple[jax.Array, jax.Array, Condition, Condition]:
    """Step 1 of :func:`update` (given a key of its own): the stage, the ``[C, m]`` condition
    thresholds, and the pairing of the minibatch's states for the actor step and for the
    critics (the latter over ``Ẽ`` only unless ``critic_on_sampled``)."""
    params = config.ccpo
    set_key, actor_key, critic_key = jax.random.split(key, 3)
    stage_two = fine_tuning(config, update_count)
    thresholds, active = condition_set(config, set_key, stage_two)
    conditions = thresholds.shape[0]
    condition = _condition(networks, thresholds, assign_conditions(
        config, actor_key, batch_size, active, conditions))
    critic_active = active if params.critic_on_sampled else jnp.asarray(params.behaviour.shape[0])
    critic_condition = _condition(networks, thresholds, assign_conditions(
        config, critic_key, batch_size, critic_active, conditions))
    return stage_two, thresholds, condition, critic_condition


# --------------------------------------------------------------------------- the update
def update_keys(key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The update's three streams from its key: the next update's key and the sampling key,
    the same two as CVPO's update (CCPO with one fixed condition is CVPO), and the
    conditions' key (:func:`update_conditions`).

    ``split(key)`` takes streams 0 and 1 of ``key``; the conditions take stream 2. They took
    ``fold_in(key, 1)``, which with JAX's partitionable Threefry (the default) *is* stream 1,
    the sampling key: the conditions' draws and the E-step's noise came from one key.
    """
    next_key, sample_key = jax.random.split(key)
    return next_key, sample_key, jax.random.fold_in(key, 2)


def update(config: CCPOConfig, networks: CCPONetworks, agent: CCPOAgent, batch: SampledBatch,
           limits: Limits, key: jax.Array) -> tuple[CCPOAgent, dict[str, jax.Array]]:
    """One CCPO update: conditions, critics, then CVI's E-/M-steps (or the Lagrangian actor
    step of ``cvi=False``), targets. ``limits`` is not used: the conditions carry their own."""
    run, params = config.run, config.ccpo
    next_key, sample_key, condition_key = update_keys(key)

    # 1. Conditions: the stage, the condition set, the pairing of states with conditions.
    stage_two, thresholds, condition, critic_condition = update_conditions(
        config, networks, agent.updates, batch.rewards.shape[0], condition_key)

    # 2. Critics, each transition at its condition.
    td_actor = agent.actor_params if params.td_actor == "online" else agent.target_actor_params
    critic_params, critic_opt, critic_loss = critic_update(
        config, networks, td_actor, agent.critic_params, agent.target_critic_params,
        agent.critic_opt_state, batch, next_key, critic_condition)

    metrics = {"loss/critic": critic_loss, "ccpo/fine_tuning": stage_two.astype(jnp.float32)}
    if params.cvi:
        actor_params, actor_opt, agent_fields, cvi_metrics = _cvi_step(
            config, networks, agent, batch, sample_key, thresholds, condition)
    else:
        actor_params, actor_opt, agent_fields, cvi_metrics = _lagrangian_step(
            config, networks, agent, critic_params, batch, sample_key, thresholds, condition)
    metrics.update(cvi_metrics)

    # 5. Targets.
    new_agent = CCPOAgent(actor_params, critic_params,
                          polyak(agent.target_actor_params, actor_params, run.tau),
                          polyak(agent.target_critic_params, critic_params, run.tau),
                          actor_opt, critic_opt, *agent_fields, agent.updates + 1)
    return new_agent, metrics


def _cvi_step(config: CCPOConfig, networks: CCPONetworks, agent: CCPOAgent, batch: SampledBatch,
              key: jax.Array, thresholds: jax.Array, condition: Condition
              ) -> tuple[Any, Any, tuple[jax.Array, jax.Array, jax.Array], dict]:
    """Steps 3–4: the per-condition E-step and the M-step within every condition's KL bounds."""
    n = agent.duals.shape[0]
    duals = _warm_starts(config, thresholds, agent.duals)
    alphas = _warm_starts(config, thresholds, agent.kl_multipliers)
    e = estep(config, networks, agent.target_actor_params, agent.target_critic_params,
              batch.observations, duals, condition.q_limit, key, condition)
    actor_params, actor_opt, alphas, mstep_metrics = mstep(
        config, networks, agent.actor_params, agent.actor_opt_state, alphas,
        batch.observations, e.samples, e.weights, e.mean_old, e.std_old, condition)
    actor_params, fraction, kl_mean, kl_std = enforce_kl_bounds(
        config, networks, agent.target_actor_params, actor_params, batch.observations,
        e.mean_old, e.std_old, condition)
    solved = e.solution.variables
    metrics = {**mstep_metrics, "ccpo/step_fraction": fraction,
               "ccpo/kl_mean_max": kl_mean.max(), "ccpo/kl_std_max": kl_std.max(),
               "ccpo/weights_entropy": weights_entropy(e.weights),
               "ccpo/dual_iterations_max": e.solution.iterations.max().astype(jnp.float32),
               "q/reward": e.q_reward.mean()}
    for i in range(e.q_costs.shape[-1]):
        metrics[f"q/cost_{i}"] = e.q_costs[..., i].mean()
    for b in range(n):
        metrics[f"ccpo/eta_{b}"] = solved[b, 0]
        for i in range(solved.shape[1] - 1):
            metrics[f"ccpo/lambda_{b}_{i}"] = solved[b, 1 + i]
    return actor_params, actor_opt, (solved[:n], alphas[:n], agent.multipliers), metrics


def _lagrangian_step(config: CCPOConfig, networks: CCPONetworks, agent: CCPOAgent,
                     critic_params: Any, batch: SampledBatch, key: jax.Array,
                     thresholds: jax.Array, condition: Condition
                     ) -> tuple[Any, Any, tuple[jax.Array, jax.Array, jax.Array], dict]:
    """``cvi=False``: one Adam step on the conditioned SAC-Lag loss
    ``(α log π(a|s,ε) − Q_r(s,a|ε) + λ(ε)ᵀQ_c(s,a|ε)) / (1 + Σλ(ε))``
    (docs/algorithms/lagrangian.md), averaged per condition then over conditions, ``a = tanh(u)``
    reparametrised."""
    params = config.ccpo
    actor_tx, _ = _optimizers(config)
    k = _num_reward(config)
    lam = _warm_starts(config, thresholds, agent.multipliers)[jnp.argmax(condition.groups, 0)]
    groups = condition.groups
    counts = jnp.maximum(groups.sum(axis=1), 1.0)
    active = groups.any(axis=1)

    def loss_fn(actor_params: Any) -> jax.Array:
        mean, log_std = networks.actor.apply(actor_params, batch.observations,
                                             condition.thresholds)
        action, log_prob = tanh_gaussian_sample_and_log_prob(key, mean, log_std)
        q = networks.critics.apply(critic_params, batch.observations, action, condition.inputs)
        per_state = ((params.lagrangian_alpha * log_prob - jnp.min(q[:, :k], axis=-1)
                      + jnp.sum(lam * q[:, k:], axis=-1)) / (1.0 + lam.sum(axis=-1)))
        return jnp.sum(groups @ per_state / counts) / jnp.maximum(active.sum(), 1)

    loss, grads = jax.value_and_grad(loss_fn)(agent.actor_params)
    updates, actor_opt = actor_tx.update(grads, agent.actor_opt_state, agent.actor_params)
    actor_params = optax.apply_updates(agent.actor_params, updates)
    return (actor_params, actor_opt, (agent.duals, agent.kl_multipliers, agent.multipliers),
            {"loss/actor": loss})


def update_multipliers(config: CCPOConfig, agent: CCPOAgent, episode_cost: jax.Array,
                       limits: Limits, fresh: jax.Array) -> tuple[CCPOAgent, dict[str, jax.Array]]:
    """Once per iteration. ``cvi=False``: ``λ_i ← clip(λ_i + lr (Ĵ_C,i − ε_i), 0, max)`` for
    every behaviour threshold ``ε_i`` with fresh episodes; CVI's λ are the E-step duals (solved
    every update), only reported.

    Args:
        config: CCPO configuration.
        agent: The agent.
        episode_cost: ``[N, m]`` mean episode cost of this iteration's episodes collected under
            each behaviour threshold.
        limits: Not used (the behaviour thresholds are the limits).
        fresh: ``[N]`` whether episodes under that threshold finished in this iteration.
    """
    params = config.ccpo
    if params.cvi:
        lam = agent.duals[:, 1:]
    else:
        behaviour = jnp.asarray(params.behaviour, jnp.float32)
        stepped = jnp.clip(agent.multipliers + params.lagrangian_lr * (episode_cost - behaviour),
                           0.0, params.lagrangian_max)
        lam = jnp.where(fresh[:, None], stepped, agent.multipliers)
        agent = agent._replace(multipliers=lam)
    metrics = {f"lagrange/lambda_{b}_{i}": lam[b, i]
               for b in range(lam.shape[0]) for i in range(lam.shape[1])}
    return agent, metrics
