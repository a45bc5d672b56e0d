"""The off-policy engine: collection, the replay buffer, fused gradient updates, multipliers.

An off-policy algorithm (``sac``, ``sac_lag``, ``ddpg_lag``, ``td3_lag``, ``cvpo``) is a module
with six pure functions (:class:`OffPolicyAlgorithm`); everything else lives here once. One
iteration of one seed:

1. **Collect** ``num_envs × rollout_steps`` transitions: uniform random actions while the seed
   has collected fewer than ``warmup_steps`` steps, then the algorithm's exploration policy. For
   native tasks the collection is a ``lax.scan`` inside ``jit``; for host environments (Bullet,
   gymnasium) a Python loop steps them and acts with the algorithm's numpy twin of its policy
   (``host_sample_action``, parameters copied to the host once per iteration).
2. **Store** them in the replay buffer (device arrays, :mod:`saferl.data.replay`) and track the
   episodes that finished.
3. **Multipliers**: once per iteration, from the mean cost of the episodes collected in this
   iteration against the episode limit (FSRL found replay-based estimates worse); skipped, and
   flagged, when no episode finished.
4. **Learn** (after warm-up): ``round(update_ratio × steps collected)`` gradient updates fused in
   one ``lax.scan``; each samples a minibatch (n-step returns, truncation bootstraps,
   termination does not) inside ``jit``.

**Overlapped collection** (``overlap_collection``, host environments only): while iteration
``i``'s updates run (XLA computes asynchronously), the Python thread collects iteration
``i + 1``'s transitions with the actor from *before* those updates. The environment steps,
minibatches and update-to-data ratio are unchanged; the data lags the learner by one iteration's
updates, as in asynchronous actor–learner designs. The simulator's stepping then costs almost no
wall time (measured on Bullet BallCircle; see benchmarks/RESULTS.md). Off by default: the default
schedule is the textbook one (collect with the current actor, then learn).

Actions live in ``[-1, 1]^A`` inside the algorithms and the buffer; they are scaled to the
environment's bounds when stepping. Several seeds train at once: every leaf of the state has a
leading seed axis, steps 1–4 are ``vmap``-ped (a single seed runs unbatched, see
:func:`saferl.algos.on_policy.over_seeds`) and the seed axis is sharded over the XLA CPU
devices, as in the on-policy engine. Cost limits are traced arrays.

**Q thresholds.** The critics estimate discounted per-step cost values, so an episode limit
``ε`` becomes ``ε_Q = ε (1 − γ^T) / ((1 − γ) T)`` (docs/algorithms/index.md) with ``T`` the episode
length: ``episode_length`` if given, else the environment's time limit. For tasks whose
episodes can end early this ``T`` is an upper bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from saferl.algos.actor_critic import (
    Limits,
    MultiplierParams,
    OffPolicyAlgorithm,
    OffPolicyConfig,
    critic_step,
    episode_multipliers,
    init_actor_critics,
    polyak,
    q_multipliers,
    q_threshold,
    td_targets,
)
from saferl.core.networks import host_params
from saferl.core.precompile import BackgroundCompile
from saferl.data.replay import (
    Replay,
    Transitions,
    replay_add,
    replay_init,
    replay_resize,
    replay_sample,
)
from saferl.engine.behaviour import (
    behaviour_groups,
    behaviour_metrics,
    behaviour_table,
    conditioning,
    draw_behaviour,
)
from saferl.engine.episodes import (
    EpisodeTracker,
    episode_metrics,
    nonfinite_location,
    raise_if_nonfinite,
    summarize,
    track_episodes,
    tracker_init,
    tracker_reset,
    update_cost_estimate,
)
from saferl.engine.family import PolicyParts
from saferl.engine.host import HostCollector, scale_action
from saferl.engine.members import (
    abstract_placed,
    member_labels,
    member_sharding,
    members,
    over_members,
    place_members,
    stacked_initial_states,
)
from saferl.envs.core import EnvSpec, VecEnv
from saferl.envs.native import NativeTask, batch_reset, batch_step

# The algorithms' building blocks, importable from here as before (see algos/actor_critic.py).
__all__ = ["OFF_POLICY", "Engine", "Limits", "MultiplierParams", "OffPolicyAlgorithm",
           "OffPolicyConfig", "OffPolicyState", "critic_step", "cut_open_episodes",
           "episode_multipliers", "init_actor_critics", "initial_states", "learn", "limits_for",
           "polyak", "q_multipliers", "q_threshold", "resize_replay", "scale_action",
           "td_targets"]


class OffPolicyState(NamedTuple):
    """The whole training state of one seed (a leading seed axis when several train at once)."""

    agent: Any
    replay: Replay
    tracker: EpisodeTracker
    env_state: Any  # EpisodeState for native tasks, () for host environments
    key: jax.Array
    iteration: jax.Array
    total_cost: jax.Array  # [m]
    cost_estimate: jax.Array  # [m] the latest episode-cost estimate
    has_cost_estimate: jax.Array  # bool
    behaviour: jax.Array  # [N] int32: each copy's behaviour threshold (conditioned, native)
    cost_limit: jax.Array  # [m] this member's cost limits (a grid of limits: its own)


def init_state(algo: OffPolicyAlgorithm, config: Any, spec: EnvSpec, networks: Any,
               seed: int | jax.Array, cost_limit: jax.Array,
               task: NativeTask | None) -> OffPolicyState:
    """The initial state of one member: its seed and cost limits ``[m]`` (native tasks also
    reset their environments here)."""
    run: OffPolicyConfig = config.run
    root = jax.random.PRNGKey(seed)
    key, agent_key, env_key = jax.random.split(root, 3)
    m = spec.num_costs
    table = behaviour_table(algo, config)
    if table is None:
        behaviour = jnp.zeros(run.num_envs, jnp.int32)
    else:  # a key of its own (stream 3 of the seed's: split took 0-2), so that unconditioned
        # algorithms' numbers stay as they were. It was fold_in(env_key, 1), which with JAX's
        # partitionable Threefry is environment copy 1's reset key.
        behaviour = draw_behaviour(jax.random.fold_in(root, 3), table, run.num_envs)
    return OffPolicyState(
        agent=algo.init_agent(config, spec, networks, agent_key),
        replay=replay_init(run.replay_rows, run.num_envs, spec.obs_dim, spec.action_dim, m,
                           0 if table is None else m),
        tracker=tracker_init(run.num_envs, m),
        env_state=() if task is None else batch_reset(task, env_key, run.num_envs),
        key=key,
        iteration=jnp.zeros((), jnp.int32),
        total_cost=jnp.zeros(m),
        cost_estimate=jnp.zeros(m),
        has_cost_estimate=jnp.zeros((), bool),
        behaviour=behaviour,
        cost_limit=jnp.asarray(cost_limit, jnp.float32).reshape(m),
    )


def initial_states(algo: OffPolicyAlgorithm, config: Any, spec: EnvSpec,
                   task: NativeTask | None) -> OffPolicyState:
    """Initial states of every member of ``config`` (:func:`~saferl.engine.members.members`),
    stacked along a leading member axis (built by one quickly compiled program,
    :func:`~saferl.engine.members.stacked_initial_states`)."""
    networks = algo.make_networks(config, spec)
    return stacked_initial_states(
        lambda seed, limit: init_state(algo, config, spec, networks, seed, limit, task),
        members(config))


def needs_q_threshold(config: Any) -> bool:
    """Whether a configuration uses the Q-threshold form of the limits (CVPO, ``source="q"``)."""
    multiplier = getattr(config, "multiplier", None)
    return hasattr(config, "cvpo") or (multiplier is not None and multiplier.source == "q")


def limits_for(config: Any, spec: EnvSpec, cost_limit: jax.Array) -> Limits:
    """Both forms of the limits for a run (see :func:`q_threshold`).

    Without an episode length (no time limit and no ``episode_length``) the Q threshold is NaN;
    the engine refuses such a run up front when the algorithm needs it.
    """
    run: OffPolicyConfig = config.run
    length = run.episode_length or spec.max_episode_steps
    if length is None:
        return Limits(cost_limit, jnp.full_like(cost_limit, jnp.nan))
    return Limits(cost_limit, q_threshold(cost_limit, run.gamma, length))


def learn(algo: OffPolicyAlgorithm, config: Any, networks: Any, agent: Any, replay: Replay,
          limits: Limits, key: jax.Array) -> tuple[Any, dict[str, jax.Array]]:
    """``updates_per_iteration`` sampled gradient updates fused in one ``lax.scan``."""
    run: OffPolicyConfig = config.run

    def one_update(agent: Any, update_key: jax.Array) -> tuple[Any, dict[str, jax.Array]]:
        sample_key, step_key = jax.random.split(update_key)
        batch = replay_sample(replay, sample_key, run.batch_size, run.n_step, run.gamma)
        return algo.update(config, networks, agent, batch, limits, step_key)

    agent, metrics = jax.lax.scan(one_update, agent,
                                  jax.random.split(key, run.updates_per_iteration))
    return agent, {name: value.mean() for name, value in metrics.items()}


def finish_iteration(algo: OffPolicyAlgorithm, config: Any, networks: Any, spec: EnvSpec,
                     state: OffPolicyState, transitions: Transitions,
                     learning: bool) -> tuple[OffPolicyState, dict[str, jax.Array]]:
    """Store the iteration's transitions, update the multipliers against the member's own
    cost limits, learn (one member; pure)."""
    limits = limits_for(config, spec, state.cost_limit)
    steps, num_envs = transitions.rewards.shape
    replay = replay_add(state.replay, transitions)
    table = behaviour_table(algo, config)
    if table is None:
        tracker, sums = track_episodes(state.tracker, transitions)
    else:  # per behaviour threshold too, for the conditioned multipliers
        tracker, sums = track_episodes(
            state.tracker, transitions, groups=behaviour_groups(transitions.conditions, table),
            num_groups=table.shape[0])
    means = summarize(sums)
    # The iteration's episodes, else the previous estimate (before any: zeros, never used —
    # the multipliers wait for a finished episode).
    cost_estimate, has_estimate, _ = update_cost_estimate(
        means.finished, means.cost, state.cost_estimate, state.has_cost_estimate,
        state.cost_estimate)

    # Warm-up episodes come from random actions, not from the policy: they say nothing about
    # the policy's cost, so the multipliers wait for the first learning iteration.
    if table is None:
        agent, metrics = algo.update_multipliers(config, state.agent, means.cost, limits,
                                                 means.finished & learning)
    else:
        episodes = sums["episodes_by_group"]
        group_cost = sums["sum_cost_by_group"] / jnp.maximum(episodes, 1.0)[:, None]
        agent, metrics = algo.update_multipliers(config, state.agent, group_cost, limits,
                                                 (episodes > 0) & learning)
        metrics.update(behaviour_metrics(table, episodes, group_cost))
    key, learn_key = jax.random.split(state.key)
    if learning:
        agent, learn_metrics = learn(algo, config, networks, agent, replay, limits, learn_key)
    else:
        # Same metric names during warm-up (NaN), so that every logged row has every column.
        shapes = jax.eval_shape(lambda: learn(algo, config, networks, agent, replay, limits,
                                              learn_key))[1]
        learn_metrics = {name: jnp.full((), jnp.nan) for name in shapes}
    metrics.update(learn_metrics)

    total_cost = state.total_cost + transitions.costs.sum(axis=(0, 1))
    iteration = state.iteration + 1
    new_state = OffPolicyState(agent, replay, tracker, state.env_state, key, iteration,
                               total_cost, cost_estimate, has_estimate, state.behaviour,
                               state.cost_limit)
    metrics.update(episode_metrics(means, transitions.rewards, total_cost,
                                   iteration.astype(jnp.float32) * steps * num_envs))
    metrics["train/learning"] = jnp.asarray(float(learning))
    metrics["_nonfinite_step"], metrics["_nonfinite_env"] = nonfinite_location(
        transitions.rewards, transitions.costs, transitions.next_observations)
    return new_state, metrics


def native_collect(algo: OffPolicyAlgorithm, config: Any, networks: Any, task: NativeTask,
                   state: OffPolicyState, random: bool) -> tuple[OffPolicyState, Transitions]:
    """Collect ``rollout_steps`` steps of every copy with ``lax.scan`` (one seed).

    A conditioned algorithm acts with each copy's behaviour threshold, stored as the
    transitions' ``conditions``; a copy whose episode ends draws a new one.
    """
    run: OffPolicyConfig = config.run
    spec = task.spec
    table = behaviour_table(algo, config)

    def one_step(carry: tuple[Any, jax.Array, jax.Array],
                 _: None) -> tuple[Any, Transitions]:
        env_state, step_key, behaviour = carry
        key, act_key = jax.random.split(step_key)
        observations = env_state.observation
        thresholds = None if table is None else table[behaviour]
        if random:
            actions = jax.random.uniform(act_key, (run.num_envs, spec.action_dim),
                                         minval=-1.0, maxval=1.0)
        elif table is None:
            actions = algo.sample_action(config, networks, state.agent.actor_params,
                                         observations, act_key)
        else:
            actions = algo.sample_action(config, networks, state.agent.actor_params,
                                         observations, act_key, thresholds)
        env_state, out = batch_step(task, env_state, scale_action(spec, actions))
        if table is not None:
            # stream 2 of the step's key (split took 0 and 1); fold_in(act_key, 1) was a
            # stream of the key that drew this step's actions
            redrawn = draw_behaviour(jax.random.fold_in(step_key, 2), table, run.num_envs)
            behaviour = jnp.where(out.terminated | out.truncated, redrawn, behaviour)
        return (env_state, key, behaviour), Transitions(
            observations, actions, out.reward, out.costs, out.terminated, out.truncated,
            out.final_observation, thresholds)

    (env_state, key, behaviour), transitions = jax.lax.scan(
        one_step, (state.env_state, state.key, state.behaviour), None, length=run.rollout_steps)
    return state._replace(env_state=env_state, key=key, behaviour=behaviour), transitions


class Engine:
    """Compiled iteration functions for one off-policy algorithm, config and environment.

    ``iterate(states)`` runs one iteration of every member (leading member axis; each member's
    cost limits are in its state) and returns the new states and per-member metrics as numpy
    arrays. Warm-up iterations (random
    actions, no learning) and learning iterations are two compiled functions; which one runs is
    decided on the host from the iteration count, which all seeds share.
    """

    def __init__(self, algo: OffPolicyAlgorithm, config: Any, spec: EnvSpec,
                 task: NativeTask | None = None, envs: list[VecEnv] | None = None) -> None:
        self.algo, self.config, self.spec, self.task, self.envs = algo, config, spec, task, envs
        run: OffPolicyConfig = config.run
        self.networks = algo.make_networks(config, spec)
        self.labels = member_labels(config)
        self.members = len(self.labels)
        self._iteration = 0
        self.conditioning = conditioning(algo, config)
        # Host environments: each copy's behaviour threshold (drawn on the host, per episode).
        self._behaviour = np.zeros((self.members, run.num_envs), np.int64)
        if run.overlap_collection and task is not None:
            raise ValueError(
                f"overlap_collection=True: {spec.id!r} is a native task, collected inside the "
                f"compiled iteration, so there is nothing to overlap; leave it False (it is "
                f"for host environments such as Bullet and gymnasium).")
        if needs_q_threshold(config) and not (run.episode_length or spec.max_episode_steps):
            raise ValueError(
                f"{spec.id!r} has no time limit, so the episode length T that converts the "
                f"episode cost limit into a Q threshold is unknown; set episode_length "
                f"(e.g. --episode-length 1000).")

        def finish(states: OffPolicyState, transitions: Transitions,
                   learning: bool) -> tuple[OffPolicyState, dict[str, jax.Array]]:
            return over_members(lambda s, t: finish_iteration(algo, config, self.networks, spec, s,
                                                            t, learning),
                              self.members)(states, transitions)

        # States and metrics leave sharded over the members as the states came in (without
        # this XLA replicates zero-size leaves, the replay conditions of unconditioned
        # algorithms, and the next call would compile again for the new input sharding).
        placed = (member_sharding(self.members), member_sharding(self.members))

        if task is not None:
            def iteration(states: OffPolicyState,
                          learning: bool) -> tuple[OffPolicyState, dict[str, jax.Array]]:
                states, transitions = over_members(
                    lambda s: native_collect(algo, config, self.networks, task, s,
                                             random=not learning), self.members)(states)
                return finish(states, transitions, learning)

            self._iterate = jax.jit(iteration, static_argnums=1, out_shardings=placed)
        else:
            if envs is None or len(envs) != self.members:
                raise ValueError("host environments need one VecEnv per member")
            self._finish = jax.jit(finish, static_argnums=2, out_shardings=placed)
            self._collector = HostCollector(envs, spec)
            # Overlapped collection: the next iteration's transitions (or the error that
            # stopped them), collected while the current iteration's updates ran.
            self._ahead: Transitions | None = None
            self._ahead_error: Exception | None = None
        self._compiling: BackgroundCompile | None = None

    def init_states(self) -> OffPolicyState:
        """Initial states of every seed, stacked along a leading axis and placed.

        On native tasks the first iteration compiles in the background meanwhile (see
        :mod:`saferl.core.precompile`).
        """
        self._start_compiling(None)
        return self.place(initial_states(self.algo, self.config, self.spec, self.task))

    def close(self) -> None:
        """Stop background compilation: skip jobs not started, wait for the running one (an
        interrupted start-up must not exit while XLA compiles in another thread)."""
        if self._compiling is not None:
            self._compiling.close()

    def place(self, states: OffPolicyState) -> OffPolicyState:
        """Shard the seed axis over the local devices."""
        self._iteration = int(np.asarray(jax.device_get(states.iteration)).reshape(-1)[0])
        self._ahead = self._ahead_error = None
        placed = place_members(states, self.members)
        self._start_compiling(placed)
        return placed

    def _start_compiling(self, states: OffPolicyState | None) -> None:
        """On native tasks, compile the next iterations (warm-up and/or learning variant) in a
        background thread; ``states`` are the placed states, or ``None`` for fresh ones (their
        shapes are traced). Host environments compile on first call (overlapping it with the
        first collection gained nothing: benchmarks/RESULTS.md D6)."""
        if self._compiling is not None or self.task is None:
            return
        run: OffPolicyConfig = self.config.run
        first = self._iteration >= run.warmup_iterations
        flags = [first] + ([True] if not first and run.iterations > run.warmup_iterations else [])
        memo: list[OffPolicyState] = []

        def placed() -> OffPolicyState:  # traced once, in the compiling thread
            if not memo:
                memo.append(abstract_placed(states, lambda: initial_states(
                    self.algo, self.config, self.spec, self.task), self.members))
            return memo[0]

        self._compiling = BackgroundCompile([
            (learning, lambda flag=learning: self._iterate.lower(placed(), flag).compile())
            for learning in flags])

    def iterate(self, states: OffPolicyState) -> tuple[OffPolicyState, dict[str, np.ndarray]]:
        """One iteration of every member; metrics come back as numpy ``[members]`` arrays."""
        run: OffPolicyConfig = self.config.run
        learning = self._iteration >= run.warmup_iterations
        if self.task is not None:
            if self._compiling is not None:
                self._compiling.wait(learning)
            states, metrics = self._iterate(states, learning)
        else:
            if self._ahead_error is not None:  # the overlapped collection failed
                error, self._ahead_error = self._ahead_error, None
                raise error
            transitions, self._ahead = self._ahead, None
            if transitions is None:
                states, transitions = self._host_collect(states, random=not learning)
            ahead = run.overlap_collection and self._iteration + 1 < run.iterations
            if ahead:  # the key and actor of the next collection, before the updates
                states, collect = self._collection_inputs(states)
            states, metrics = self._finish(states, transitions, learning)
            if ahead:  # runs while XLA computes the updates dispatched above
                next_random = self._iteration + 1 < run.warmup_iterations
                try:
                    self._ahead = self._collect(*collect, random=next_random)
                except Exception as error:  # raised by the next iterate(), once this
                    self._ahead_error = error  # iteration is logged and checkpointed
        self._iteration += 1
        metrics = jax.device_get(metrics)
        raise_if_nonfinite(metrics, self.spec.id, self._iteration, self.labels)
        return states, {k: np.asarray(v) for k, v in metrics.items() if not k.startswith("_")}

    def _host_collect(self, states: OffPolicyState,
                      random: bool) -> tuple[OffPolicyState, Transitions]:
        """Collect one iteration of every seed from host environments with the current actor."""
        states, collect = self._collection_inputs(states)
        return states, self._collect(*collect, random=random)

    def _collection_inputs(self, states: OffPolicyState
                           ) -> tuple[OffPolicyState, tuple[Any, list[np.random.Generator]]]:
        """Split every seed's key for a collection: the states with their next keys, and the
        collection's inputs (the actor's parameters on the host, one numpy generator per seed,
        seeded from its key, so runs stay reproducible)."""
        keys = jax.vmap(lambda k: jax.random.split(k))(states.key)  # [S, 2, 2]
        collect_keys = np.asarray(jax.device_get(keys[:, 1])).reshape(self.members, -1)
        rngs = [np.random.default_rng([int(x) for x in key]) for key in collect_keys]
        actor = host_params(states.agent.actor_params)
        return states._replace(key=keys[:, 0]), (actor, rngs)

    def _collect(self, actor: Any, rngs: list[np.random.Generator],
                 random: bool) -> Transitions:
        """Step every member's host environments ``rollout_steps`` times (numpy only: no XLA
        call, so it can run while an update computes)."""
        run: OffPolicyConfig = self.config.run
        n, act_dim = run.num_envs, self.spec.action_dim
        conditioned = self.conditioning

        def act(observations: np.ndarray, starts: np.ndarray) -> dict[str, np.ndarray]:
            extra: dict[str, np.ndarray] = {}
            if conditioned is not None:  # a new behaviour threshold for every new episode
                count = conditioned.behaviour.shape[0]
                for s, rng in enumerate(rngs):
                    self._behaviour[s] = np.where(starts[s], rng.integers(0, count, n),
                                                  self._behaviour[s])
                extra["conditions"] = conditioned.behaviour.astype(np.float32)[self._behaviour]
            if random:
                return {"actions": np.stack([rng.uniform(-1.0, 1.0, (n, act_dim))
                                             for rng in rngs]), **extra}
            noise = np.stack([rng.standard_normal((n, act_dim)) for rng in rngs])
            args = () if conditioned is None else (extra["conditions"],)
            return {"actions": self.algo.host_sample_action(
                self.config, self.networks, actor, observations, noise, *args), **extra}

        buffers = self._collector.collect(run.rollout_steps, act, scale=True)
        buffers["next_observations"] = buffers.pop("final_observations")
        return Transitions(**{k: jnp.asarray(v) for k, v in buffers.items()})


def cut_open_episodes(states: OffPolicyState) -> OffPolicyState:
    """Mark the newest stored step of every copy as truncated (resuming with host envs).

    Host simulators cannot be checkpointed, so their episodes restart on resume; without this
    an n-step window would join the interrupted episode to the new one. A truncation
    bootstraps from the stored true next observation, which is what the cut episode needs.
    """
    replay = states.replay
    capacity = replay.truncated.shape[-2]

    def cut(r: Replay) -> Replay:
        last = (r.position - 1) % capacity
        marked = r.truncated.at[last].set(True)
        return r._replace(truncated=jnp.where(r.size > 0, marked, r.truncated))

    return states._replace(replay=jax.vmap(cut)(replay))


def resize_replay(states: OffPolicyState, config: Any) -> OffPolicyState:
    """Grow every seed's replay ring to the configuration's size (a run extended on resume)."""
    rows = config.run.replay_rows
    if states.replay.rewards.shape[1] >= rows:
        return states
    return states._replace(replay=jax.vmap(lambda r: replay_resize(r, rows))(states.replay))


class OffPolicyFamily:
    """The off-policy :class:`~saferl.engine.family.EngineFamily` (the registry's ``engine``)."""

    name = "off_policy"

    def initial_states(self, algorithm: OffPolicyAlgorithm, config: Any, spec: EnvSpec,
                       task: NativeTask | None) -> OffPolicyState:
        """Fresh member-stacked states (see :func:`initial_states`)."""
        return initial_states(algorithm, config, spec, task)

    def make_engine(self, algorithm: OffPolicyAlgorithm, config: Any, spec: EnvSpec,
                    task: NativeTask | None, envs: list[VecEnv] | None) -> Engine:
        """The off-policy :class:`Engine`."""
        return Engine(algorithm, config, spec, task=task, envs=envs)

    def prepare_resume(self, states: OffPolicyState, config: Any,
                       host: bool) -> OffPolicyState:
        """Grow the replay to an extended run's size; with host simulators, forget the
        episodes under way and cut the stored ones (:func:`cut_open_episodes`)."""
        states = resize_replay(states, config)
        if not host:
            return states
        states = states._replace(tracker=tracker_reset(states.tracker))
        return cut_open_episodes(states)

    def policy_parts(self, algorithm: OffPolicyAlgorithm, config: Any, spec: EnvSpec,
                     states: OffPolicyState, index: int) -> PolicyParts:
        """Member ``index``'s actor: acts in ``[-1, 1]`` (tanh), scaled to the bounds."""
        return PolicyParts(algorithm.make_networks(config, spec).actor,
                           jax.tree_util.tree_map(lambda x: x[index], states.agent.actor_params),
                           None, squashed=True, conditioning=conditioning(algorithm, config))


OFF_POLICY = OffPolicyFamily()


OffPolicyIterate = Callable[[OffPolicyState], tuple[OffPolicyState, dict[str, np.ndarray]]]
