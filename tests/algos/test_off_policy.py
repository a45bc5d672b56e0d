"""The off-policy engine and algorithms: targets, Q thresholds, CVPO's KL bounds, determinism,
save/load, resume, host environments."""

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saferl
from saferl.algos import cvpo
from saferl.algos.off_policy import Limits, q_threshold, td_targets
from saferl.core.inference import decoupled_kl
from saferl.data.replay import Transitions, replay_add, replay_init, replay_sample
from saferl.envs.native import make_task
from saferl.training import build_config, restore_states
from tests.algos.test_engine import assert_same_rows, rows_without_time

TINY = {"env": "saferl/BallRun-v0", "num_envs": 4, "rollout_steps": 10, "steps": 400,
        "warmup_steps": 80, "batch_size": 32, "update_ratio": 0.5, "hidden_sizes": [16, 16],
        "checkpoint_every": 2}
TINY_CVPO = {"num_samples": 4, "dual_iterations": 3, "mstep_iterations": 2}


def tiny_train(tmp_path, name, algo="sac_lag", **kwargs):
    overrides = {"run": {**TINY, **kwargs.pop("run", {})}}
    if algo == "cvpo":
        overrides["cvpo"] = TINY_CVPO
    return saferl.train(algo, overrides=overrides, run_dir=tmp_path / name, progress=False,
                        **kwargs)


def test_targets_bootstrap_truncation_but_not_termination():
    """One copy, steps: plain, truncated (time limit), plain, terminated (hand-computed)."""
    gamma = 0.9
    obs = jnp.arange(4.0)[:, None, None].repeat(2, -1)
    next_obs = obs + 10.0  # the true next (or final) observation
    rewards = jnp.asarray([1.0, 2.0, 3.0, 4.0])[:, None]
    costs = jnp.asarray([0.0, 1.0, 0.0, 1.0])[:, None, None]
    terminated = jnp.asarray([False, False, False, True])[:, None]
    truncated = jnp.asarray([False, True, False, False])[:, None]
    buffer = replay_add(replay_init(4, 1, 2, 1, 1), Transitions(
        obs, jnp.zeros((4, 1, 1)), rewards, costs, terminated, truncated, next_obs))
    batch = replay_sample(buffer, jax.random.PRNGKey(0), 64, 1, gamma)
    value = lambda o: 100.0 + o[:, 0]  # noqa: E731  a next-state value we can compute by hand
    targets = np.asarray(td_targets(batch, value(batch.next_observations),
                                    2.0 * value(batch.next_observations)[:, None]))
    expected = {  # step: (reward target, cost target)
        0: (1.0 + gamma * 110.0, 0.0 + gamma * 220.0),
        1: (2.0 + gamma * 111.0, 1.0 + gamma * 222.0),  # truncated: bootstrap from s_final
        2: (3.0 + gamma * 112.0, 0.0 + gamma * 224.0),
        3: (4.0, 1.0),  # terminated: no bootstrap
    }
    for row, target in zip(np.asarray(batch.observations[:, 0]).astype(int), targets,
                           strict=True):
        np.testing.assert_allclose(target, expected[row], rtol=1e-6)


def test_two_step_targets_stop_at_the_episode_end():
    gamma = 0.5
    obs = jnp.arange(3.0)[:, None, None]
    buffer = replay_add(replay_init(3, 1, 1, 1, 1), Transitions(
        obs, jnp.zeros((3, 1, 1)), jnp.asarray([[1.0], [2.0], [4.0]]), jnp.zeros((3, 1, 1)),
        jnp.asarray([[False], [True], [False]]), jnp.zeros((3, 1), bool), obs + 10.0))
    batch = replay_sample(buffer, jax.random.PRNGKey(1), 32, 2, gamma)
    targets = np.asarray(td_targets(batch, batch.next_observations[:, 0],
                                    jnp.zeros((32, 1))))[:, 0]
    for row, target in zip(np.asarray(batch.observations[:, 0]).astype(int), targets,
                           strict=True):
        # Start 0: r0 + γ r1, then the termination at step 1 stops bootstrapping.
        # Start 1: r1 only (terminated).
        assert target == pytest.approx({0: 1.0 + 0.5 * 2.0, 1: 2.0}[row])


def test_q_threshold_spreads_the_episode_limit_over_the_episode():
    gamma, length, limit = 0.97, 200, 10.0
    direct = sum(gamma**t * limit / length for t in range(length))
    assert float(q_threshold(jnp.asarray(limit), gamma, length)) == pytest.approx(direct, rel=1e-5)
    # FSRL's SafetyBallCircle figure (γ 0.97, T 200, limit 10).
    assert float(q_threshold(jnp.asarray(10.0), 0.97, 200)) == pytest.approx(1.663, abs=1e-3)


def test_cvpo_updates_respect_the_m_step_kl_bounds():
    config = build_config("cvpo", overrides={"run": {**TINY, "hidden_sizes": [32, 32]},
                                             "cvpo": {"kl_mean": 0.002, "kl_std": 0.0002,
                                                      "mstep_iterations": 8}})
    spec = make_task("saferl/BallRun-v0").spec
    networks = cvpo.make_networks(config, spec)
    agent = cvpo.init_agent(config, spec, networks, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batch_obs = jnp.asarray(rng.normal(size=(64, spec.obs_dim)), jnp.float32)
    update = jax.jit(lambda a, b, k: cvpo.update(config, networks, a, b, limits, k))
    limits = Limits(jnp.asarray([10.0]), jnp.asarray([0.5]))
    fractions = []
    for i in range(15):
        batch = replay_like_batch(rng, batch_obs, spec)
        new, metrics = update(agent, batch, jax.random.PRNGKey(i))
        mean_old, log_std_old = networks.actor.apply(agent.target_actor_params, batch_obs)
        mean, log_std = networks.actor.apply(new.actor_params, batch_obs)
        kl_mean, kl_std = decoupled_kl(mean_old, jnp.exp(log_std_old), mean, jnp.exp(log_std))
        assert float(kl_mean.mean()) <= 0.002 * (1 + 1e-5)
        assert float(kl_std.mean()) <= 0.0002 * (1 + 1e-5)
        fractions.append(float(metrics["cvpo/step_fraction"]))
        agent = new
    # The bound binds: some M-steps were cut back, and the policy did move.
    assert min(fractions) < 1.0 and max(fractions) > 0.0


def test_kl_backtracking_keeps_the_largest_fraction_within_the_bounds():
    config = build_config("cvpo", overrides={"run": {**TINY, "hidden_sizes": [32, 32]},
                                             "cvpo": {"kl_mean": 0.01, "kl_std": 0.001}})
    spec = make_task("saferl/BallRun-v0").spec
    networks = cvpo.make_networks(config, spec)
    old = cvpo.init_agent(config, spec, networks, jax.random.PRNGKey(0)).actor_params
    obs = jax.random.normal(jax.random.PRNGKey(1), (64, spec.obs_dim))
    mean_old, log_std_old = networks.actor.apply(old, obs)
    ladder = [1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.0]
    for scale, seed in ((1e-4, 2), (0.005, 3), (0.02, 4), (0.05, 5), (30.0, 6)):
        leaves, tree = jax.tree_util.tree_flatten(old)
        keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
        new = jax.tree_util.tree_unflatten(
            tree, [x + scale * jax.random.normal(k, x.shape)
                   for x, k in zip(leaves, keys, strict=True)])
        params, t, kl_mean, kl_std = cvpo.enforce_kl_bounds(config, networks, old, new, obs,
                                                            mean_old, jnp.exp(log_std_old))
        # Oracle: walk the ladder from the top, first fraction within both bounds (these
        # scales give t = 1, ½, ¼, ⅛ and 0).
        for expected in ladder:
            step = jax.tree_util.tree_map(lambda o, n, t=expected: o + t * (n - o), old, new)
            mean, log_std = networks.actor.apply(step, obs)
            parts = decoupled_kl(mean_old, jnp.exp(log_std_old), mean, jnp.exp(log_std))
            if float(parts[0].mean()) <= 0.01 and float(parts[1].mean()) <= 0.001:
                break
        assert float(t) == expected
        assert float(kl_mean) <= 0.01 and float(kl_std) <= 0.001
        np.testing.assert_allclose(jax.tree_util.tree_leaves(params)[0],
                                   jax.tree_util.tree_leaves(step)[0], rtol=1e-6, atol=1e-7)


def replay_like_batch(rng, observations, spec):
    from saferl.data.replay import SampledBatch

    n = observations.shape[0]
    return SampledBatch(observations,
                        jnp.asarray(rng.uniform(-1, 1, (n, spec.action_dim)), jnp.float32),
                        jnp.asarray(rng.normal(size=n), jnp.float32),
                        jnp.asarray(rng.random((n, 1)), jnp.float32),
                        jnp.full(n, 0.99, jnp.float32),
                        observations + 0.1)


@pytest.mark.parametrize("algo", ["sac_lag", "cvpo", "td3_lag"])
def test_same_seed_same_numbers_and_warm_up_first(tmp_path, algo):
    a = tiny_train(tmp_path, "a", algo, seed=3)
    b = tiny_train(tmp_path, "b", algo, seed=3)
    assert_same_rows(rows_without_time(a.history), rows_without_time(b.history))
    assert len(a.history) == 10
    # 80 warm-up steps = 2 iterations of 40: random actions, no learning, NaN losses.
    assert [r["train/learning"] for r in a.history] == [0.0, 0.0] + [1.0] * 8
    assert np.isnan(a.history[1]["loss/critic"]) and np.isfinite(a.history[2]["loss/critic"])


def test_vectorised_seeds_match_separate_runs(tmp_path):
    both = tiny_train(tmp_path, "both", seeds=[0, 1])
    one = tiny_train(tmp_path, "one", seed=1)
    rows_both = [r for r in rows_without_time(both.history) if r["seed"] == 1]
    assert_same_rows(rows_both, rows_without_time(one.history), rtol=2e-3)


@pytest.mark.parametrize("algo", ["sac_lag", "ddpg_lag", "cvpo"])
def test_save_load_gives_the_same_actions(tmp_path, algo):
    result = tiny_train(tmp_path, "run", algo, seeds=[5, 6])
    _, entry, config, spec, states, _ = restore_states(result.run_dir)
    networks = entry.module.make_networks(config, spec)
    obs = np.random.default_rng(0).normal(size=(16, spec.obs_dim)).astype(np.float32)
    for index in range(2):
        policy = saferl.load(result.run_dir, seed_index=index)
        params = jax.tree_util.tree_map(lambda x, i=index: x[i], states.agent.actor_params)
        out = networks.actor.apply(params, obs)
        expected = np.tanh(out[0]) if isinstance(out, tuple) else np.asarray(out)
        np.testing.assert_allclose(policy(obs), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(policy(obs), saferl.load(result.run_dir, index)(obs))


class Crash(Exception):
    pass


def test_resume_equals_uninterrupted(tmp_path):
    full = tiny_train(tmp_path, "full", algo="sac_lag")

    def kill(iteration, metrics):
        if iteration == 5:
            raise Crash()

    with pytest.raises(Crash):
        tiny_train(tmp_path, "killed", algo="sac_lag", callback=kill)
    resumed = saferl.train(resume=tmp_path / "killed", progress=False)
    assert_same_rows(rows_without_time(full.history), rows_without_time(resumed.history))
    _, _, _, _, s_full, _ = restore_states(full.run_dir)
    _, _, _, _, s_resumed, _ = restore_states(resumed.run_dir)
    for x, y in zip(jax.tree_util.tree_leaves(s_full), jax.tree_util.tree_leaves(s_resumed),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class LineEnv(gymnasium.Env):
    """A 1-D point; reward for moving right, cost 1 while right of x = 0.5; 20-step limit."""

    observation_space = gymnasium.spaces.Box(-5, 5, (2,))
    action_space = gymnasium.spaces.Box(-2, 2, (1,))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.t = 0.0, 0
        return np.array([self.x, 0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        move = float(np.clip(action[0], -2, 2)) * 0.1
        self.x = float(np.clip(self.x + move, -5, 5))
        obs = np.array([self.x, self.t / 20], np.float32)
        return obs, move, False, self.t >= 20, {"cost": float(self.x > 0.5)}


def test_host_environments_train_and_resume(tmp_path):
    gymnasium.register("SaferlTest/Line-v0", entry_point=LineEnv)
    run = {"env": "SaferlTest/Line-v0", "num_envs": 2, "steps": 200, "warmup_steps": 40}
    result = tiny_train(tmp_path, "host", algo="sac_lag", run=run)
    assert len(result.history) == 10
    assert result.history[-1]["rollout/episodes"] == 2  # 20-step episodes, 2 copies
    _, _, _, _, states, _ = restore_states(result.run_dir)
    assert int(states.replay.size[0]) == 100  # 10 iterations × 10 rows
    # Actions are stored in [-1, 1]; the env got them scaled to its [-2, 2] bounds.
    assert float(jnp.abs(states.replay.actions).max()) <= 1.0
    longer = saferl.train(resume=result.run_dir, steps=280, progress=False)
    assert [r["iteration"] for r in longer.history][-1] == 14
    _, _, _, _, states, _ = restore_states(result.run_dir)
    assert int(states.replay.size[0]) == 140
    # The env has no declared time limit: CVPO cannot convert the limit into a Q threshold.
    with pytest.raises(ValueError, match=r"no time limit.*set episode_length"):
        tiny_train(tmp_path, "cvpo", algo="cvpo", run=run)
    assert not list((tmp_path / "cvpo").glob("checkpoints/*"))


@pytest.mark.parametrize("overrides,match", [
    ({"update_ratio": 0}, "update_ratio must be a finite number > 0"),
    ({"gamma": 1.0}, r"gamma must be in \[0, 1\) for off-policy critics"),
    ({"n_step": 50}, "n_step .* must be <= rollout_steps"),
    ({"cvpo": {"num_samples": 0}}, "cvpo.num_samples must be >= 1"),
])
def test_bad_configuration_is_one_clear_sentence(overrides, match):
    with pytest.raises(ValueError, match=match):
        build_config("cvpo", overrides=overrides)


def test_multiplier_source_is_validated():
    with pytest.raises(ValueError, match=r"multiplier\.source must be 'episode' or 'q'"):
        build_config("sac_lag", overrides={"multiplier": {"source": "replay"}})


@pytest.mark.parametrize("algo", ["sac_lag", "cvpo", "ddpg_lag"])
def test_host_actor_is_the_jax_exploration_policy(algo):
    """Host rollouts act with a numpy twin of ``sample_action``: same actions from the same
    normal noise (float64 vs float32 arithmetic only), every seed of a seed axis."""
    from saferl.algos.off_policy import initial_states
    from saferl.algos.registry import get_algorithm
    from saferl.core.networks import host_params

    module = get_algorithm(algo).module
    config = build_config(algo, overrides={"run": {**TINY, "seeds": [0, 1]}})
    task = make_task(config.run.env)
    networks = module.make_networks(config, task.spec)
    params = initial_states(module, config, task.spec, task).agent.actor_params
    leaves, tree = jax.tree_util.tree_flatten(params)
    noise_keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
    # Large weights: means far from 0 and log-stds at both ends of their squashing range.
    params = jax.tree_util.tree_unflatten(tree, [
        x + 0.7 * jax.random.normal(k, x.shape) for x, k in zip(leaves, noise_keys, strict=True)])
    obs = 2 * np.random.default_rng(0).normal(size=(2, 8, task.spec.obs_dim)).astype(np.float32)
    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    expected = jax.vmap(lambda p, o, k: module.sample_action(config, networks, p, o, k))(
        params, jnp.asarray(obs), keys)
    noise = jax.vmap(lambda k: jax.random.normal(k, (8, task.spec.action_dim)))(keys)
    actions = module.host_sample_action(config, networks, host_params(params), obs,
                                        np.asarray(noise, np.float64))
    assert actions.shape == (2, 8, task.spec.action_dim)
    np.testing.assert_allclose(actions, np.asarray(expected), rtol=1e-5, atol=1e-5)
    assert 0.1 < np.abs(actions).mean() < 0.99  # neither all zero nor all saturated


class CountingLineEnv(LineEnv):
    """:class:`LineEnv` that counts the steps of all its copies."""

    steps_taken = 0

    def step(self, action):
        CountingLineEnv.steps_taken += 1
        return super().step(action)


@pytest.mark.parametrize("overlap", [False, True])
def test_overlapped_collection_acts_one_iteration_behind_on_the_same_budget(overlap):
    """Default: iteration k's transitions come from the actor after k − 1 iterations. With
    ``overlap_collection`` (collected while iteration k − 1 learns): after k − 2. Either way
    the run steps its environments exactly ``steps`` times (nothing is collected ahead of the
    last iteration)."""
    from saferl.algos.off_policy import Engine
    from saferl.algos.registry import get_algorithm
    from saferl.training import make_environment

    if "SaferlTest/CountingLine-v0" not in gymnasium.registry:
        gymnasium.register("SaferlTest/CountingLine-v0", entry_point=CountingLineEnv,
                           max_episode_steps=20)
    module = get_algorithm("ddpg_lag").module
    config = build_config("ddpg_lag", overrides={
        "run": {**TINY, "env": "SaferlTest/CountingLine-v0", "num_envs": 2, "steps": 120,
                "warmup_steps": 0, "actor_lr": 1e-3, "overlap_collection": overlap},
        "ddpg": {"exploration_noise": 0.0}})  # deterministic actions: a function of the actor
    spec, _, envs = make_environment(config)
    engine = Engine(module, config, spec, envs=envs)
    CountingLineEnv.steps_taken = 0
    states = engine.init_states()
    actors = [states.agent.actor_params]  # actors[j]: after j iterations
    for _ in range(config.run.iterations):
        states, _ = engine.iterate(states)
        actors.append(states.agent.actor_params)
    assert config.run.iterations == 6 and CountingLineEnv.steps_taken == 120
    replay = states.replay
    assert int(replay.size[0]) == 60  # 6 iterations × 10 rows, no wrap-around
    lag = 1 if overlap else 0
    actor = module.make_networks(config, spec).actor

    def actions_of(j, observations):  # deterministic actions of the actor after j iterations
        params = jax.tree_util.tree_map(lambda x: x[0], actors[max(j, 0)])
        return np.asarray(actor.apply(params, observations))

    for k in range(1, 7):
        rows = replay.observations[0, (k - 1) * 10:k * 10]
        stored = np.asarray(replay.actions[0, (k - 1) * 10:k * 10])
        np.testing.assert_allclose(stored, actions_of(k - 1 - lag, rows), atol=1e-5)
        if k >= 3:  # the actor has moved: the other schedule's actor acted differently
            other = actions_of(k - 2 + lag, rows)
            assert np.abs(stored - other).max() > 1e-3


class NaNLineEnv(LineEnv):
    """:class:`LineEnv` whose cost is NaN at its 25th step (iteration 3 of 10-step iterations)."""

    def reset(self, *, seed=None, options=None):
        self.total = getattr(self, "total", 0)
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self.total += 1
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated, truncated, {"cost": np.nan if self.total == 25 else
                                                    info["cost"]}


@pytest.mark.parametrize("overlap", [False, True])
def test_overlapped_collection_is_deterministic_and_reports_env_faults_in_order(tmp_path,
                                                                              overlap):
    """Same seed, same numbers; an env fault met while collecting ahead is raised only after
    the iteration that was learning meanwhile is logged and checkpointed, as without overlap."""
    from saferl.runs import RunDirectory

    for name, env in (("Line", LineEnv), ("NaNLine", NaNLineEnv)):
        if f"SaferlTest/{name}-v0" not in gymnasium.registry:
            gymnasium.register(f"SaferlTest/{name}-v0", entry_point=env)
    run = {"env": "SaferlTest/Line-v0", "num_envs": 2, "steps": 200, "warmup_steps": 40,
           "overlap_collection": overlap, "checkpoint_every": 1}
    a = tiny_train(tmp_path, "a", algo="sac_lag", run=run, seed=4)
    b = tiny_train(tmp_path, "b", algo="sac_lag", run=run, seed=4)
    assert len(a.history) == 10
    assert_same_rows(rows_without_time(a.history), rows_without_time(b.history))
    with pytest.raises(saferl.envs.NonFiniteError,
                       match=r"non-finite cost in env index 0 \(of 2 copies\), after [\d,]+ "):
        tiny_train(tmp_path, "nan", algo="sac_lag", run={**run, "env": "SaferlTest/NaNLine-v0"})
    directory = RunDirectory(tmp_path / "nan")
    assert [r["iteration"] for r in directory.read_progress()] == [1, 2]
    assert directory.latest_checkpoint() == "iter_0000002"


def test_overlapped_collection_is_refused_for_native_tasks(tmp_path):
    with pytest.raises(ValueError, match=r"overlap_collection=True: 'saferl/BallRun-v0' is a "
                                         r"native task.*leave it False"):
        tiny_train(tmp_path, "native", run={"overlap_collection": True})
