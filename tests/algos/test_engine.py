"""The on-policy engine and run directories: determinism, seeds, save/load, resume, faults."""

import math

import gymnasium
import jax
import numpy as np
import pytest

import saferl
from saferl.core.normalization import normalize
from saferl.envs import NonFiniteError
from saferl.training import restore_states
from tests.conftest import SMALL, SMALL_PPO


def small_train(tmp_path, name, **kwargs):
    overrides = {"run": dict(SMALL), "ppo": dict(SMALL_PPO)}
    overrides["run"].update(kwargs.pop("run", {}))
    if "versatile" in kwargs:
        overrides["versatile"] = kwargs.pop("versatile")
    return saferl.train(kwargs.pop("algo", "ppo_lag"), overrides=overrides,
                        run_dir=tmp_path / name, progress=False, **kwargs)


def rows_without_time(history):
    return [{k: v for k, v in row.items() if k != "wall_time"} for row in history]


def assert_same_rows(a, b, rtol=0.0, atol=None):
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b, strict=True):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            x, y = row_a[key], row_b[key]
            if math.isnan(x):
                assert math.isnan(y), key
            else:
                tolerance = atol if atol is not None else 1e-6 if rtol else 0.0
                assert y == pytest.approx(x, rel=rtol, abs=tolerance), key


def test_same_seed_same_numbers_and_different_seed_different(tmp_path):
    a = small_train(tmp_path, "a", seed=3)
    b = small_train(tmp_path, "b", seed=3)
    c = small_train(tmp_path, "c", seed=4)
    assert_same_rows(rows_without_time(a.history), rows_without_time(b.history))
    returns_a = [r["rollout/ep_return"] for r in a.history]
    returns_c = [r["rollout/ep_return"] for r in c.history]
    assert returns_a != returns_c
    assert len(a.history) == 5  # 4000 steps / 800 per iteration
    assert (a.run_dir / "curves.png").is_file() and (a.run_dir / "config.json").is_file()
    assert list((a.run_dir / "tb").glob("seed_3/events.*"))


def test_vectorised_seeds_match_separate_runs(tmp_path):
    both = small_train(tmp_path, "both", seeds=[0, 1])
    one = small_train(tmp_path, "one", seed=1)
    rows_both = [r for r in rows_without_time(both.history) if r["seed"] == 1]
    # vmap batches the same arithmetic; allow float32 reassociation noise only.
    assert_same_rows(rows_both, rows_without_time(one.history), rtol=2e-3)


@pytest.mark.core
def test_save_load_gives_the_same_actions(tmp_path):
    result = small_train(tmp_path, "run", seeds=[5, 6])
    _, _, config, spec, states, _ = restore_states(result.run_dir)
    obs = np.random.default_rng(0).normal(size=(16, spec.obs_dim)).astype(np.float32)
    for index in range(2):
        policy = saferl.load(result.run_dir, seed_index=index)
        pick = lambda x, i=index: x[i]  # noqa: E731
        params = jax.tree_util.tree_map(pick, states.agent.policy_params)
        stats = jax.tree_util.tree_map(pick, states.obs_stats)
        from saferl.core.networks import GaussianPolicy

        module = GaussianPolicy(spec.action_dim, tuple(config.run.hidden_sizes))
        mean, _ = module.apply(params, normalize(stats, obs))
        # Same parameters and normaliser; only XLA's fusion of the jitted forward may differ.
        np.testing.assert_allclose(policy(obs), np.clip(np.asarray(mean), -1, 1), rtol=1e-5,
                                   atol=1e-7)
        again = saferl.load(result.run_dir, seed_index=index)
        np.testing.assert_array_equal(policy(obs), again(obs))
        assert policy(obs[0]).shape == (spec.action_dim,)
    assert not np.array_equal(saferl.load(result.run_dir, 0)(obs), saferl.load(result.run_dir,
                                                                                 1)(obs))


class Crash(Exception):
    pass


def tensorboard_scalars(run_dir, seed):
    """``{tag: [(step, value), ...]}`` as TensorBoard shows them.

    Event files are read in name (creation) order; a ``SessionLog.START`` event at step ``s``
    drops the scalars read so far with step ≥ ``s`` (TensorBoard's ``purge_orphaned_data``,
    on by default), which is how a resumed run hides what it redoes.
    """
    import struct

    from tensorboardX.proto import event_pb2

    scalars = {}
    for path in sorted((run_dir / "tb" / f"seed_{seed}").glob("events.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):  # TFRecord: length, length CRC, event, event CRC
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 16 + length
            log = event.session_log
            if event.HasField("session_log") and log.status == log.START:
                scalars = {tag: [(step, v) for step, v in series if step < event.step]
                           for tag, series in scalars.items()}
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, Crash])
def test_resume_equals_uninterrupted(tmp_path, interrupt):
    full = small_train(tmp_path, "full", run={"steps": 4800})

    def kill(iteration, metrics):
        if iteration == 5:
            raise interrupt()

    with pytest.raises(interrupt):
        small_train(tmp_path, "killed", run={"steps": 4800}, callback=kill)
    # KeyboardInterrupt saves iteration 5; a crash leaves the periodic checkpoint of iteration 4.
    resumed = saferl.train(resume=tmp_path / "killed", progress=False)
    assert_same_rows(rows_without_time(full.history), rows_without_time(resumed.history))
    _, _, _, _, s_full, _ = restore_states(full.run_dir)
    _, _, _, _, s_resumed, meta = restore_states(resumed.run_dir)
    assert meta["iteration"] == 6
    for x, y in zip(jax.tree_util.tree_leaves(s_full), jax.tree_util.tree_leaves(s_resumed),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # TensorBoard shows each iteration once: the redone one replaces the first attempt.
    board_full = tensorboard_scalars(full.run_dir, 0)
    board_resumed = tensorboard_scalars(resumed.run_dir, 0)
    assert len(list((resumed.run_dir / "tb" / "seed_0").glob("events.*"))) == 2
    assert board_full.keys() == board_resumed.keys()
    for tag, series in board_full.items():
        assert [step for step, _ in board_resumed[tag]] == [step for step, _ in series], tag
        if "time" not in tag:
            assert board_resumed[tag] == series, tag
    # ...and the same figures as progress.csv (which keeps 6 significant digits).
    for tag in ("rollout/ep_return", "loss/value", "lagrange/lambda_0"):
        rows = [(int(r["env_steps"]), r[tag]) for r in full.history if math.isfinite(r[tag])]
        assert [step for step, _ in board_full[tag]] == [step for step, _ in rows], tag
        np.testing.assert_allclose([v for _, v in board_full[tag]], [v for _, v in rows],
                                   rtol=1e-5, err_msg=tag)


def test_resume_equals_uninterrupted_for_the_quick_start_recipe(tmp_path):
    # cpo with the safety predictor (what `saferl train` runs): the predictor's parameters and
    # Adam state are part of the checkpoint.
    def run(name, **kwargs):
        return saferl.train(overrides={"run": {**SMALL, "steps": 2400}}, progress=False,
                            run_dir=tmp_path / name, **kwargs)

    def kill(iteration, metrics):
        if iteration == 2:
            raise KeyboardInterrupt

    full = run("full")
    assert full.config.run.safety_predictor
    with pytest.raises(KeyboardInterrupt):
        run("killed", callback=kill)
    resumed = saferl.train(resume=tmp_path / "killed", progress=False)
    assert "predictor/loss" in full.history[0]
    assert_same_rows(rows_without_time(full.history), rows_without_time(resumed.history))


def test_interrupt_inside_an_iteration_saves_the_last_completed_one(tmp_path, monkeypatch):
    from saferl.algos.on_policy import Engine

    full = small_train(tmp_path, "full", run={"steps": 4800})
    calls = []
    iterate = Engine.iterate

    def interrupted(self, states):
        calls.append(1)
        if len(calls) == 5:  # Ctrl-C while iteration 5 runs: iterations 1-4 are complete
            raise KeyboardInterrupt
        return iterate(self, states)

    monkeypatch.setattr(Engine, "iterate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        small_train(tmp_path, "killed", run={"steps": 4800, "checkpoint_every": 3})
    monkeypatch.setattr(Engine, "iterate", iterate)
    _, _, _, _, states, meta = restore_states(tmp_path / "killed")
    assert meta["iteration"] == 4 and int(np.asarray(states.iteration).reshape(-1)[0]) == 4
    resumed = saferl.train(resume=tmp_path / "killed", progress=False)
    assert_same_rows(rows_without_time(full.history), rows_without_time(resumed.history))


def test_resume_can_extend_a_finished_run(tmp_path):
    first = small_train(tmp_path, "run")
    config_before = (first.run_dir / "config.json").read_text()
    with pytest.raises(ValueError, match=r"steps=800 is fewer than the 4,000 steps per seed .* "
                                         r"already trained \(checkpoint of iteration 5\)"):
        saferl.train(resume=first.run_dir, steps=800, progress=False)
    assert (first.run_dir / "config.json").read_text() == config_before  # nothing changed
    longer = saferl.train(resume=first.run_dir, steps=5600, progress=False)
    assert [r["iteration"] for r in longer.history] == [1, 2, 3, 4, 5, 6, 7]


class NaNCostEnv(gymnasium.Env):
    """Returns a NaN cost at its 7th step."""

    observation_space = gymnasium.spaces.Box(-1, 1, (3,))
    action_space = gymnasium.spaces.Box(-1, 1, (1,))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.t += 1
        cost = float("nan") if self.t == 7 else 0.0
        return np.zeros(3, np.float32), 0.0, False, self.t >= 10, {"cost": cost}


def test_non_finite_cost_names_env_and_step_and_keeps_checkpoint(tmp_path):
    gymnasium.register("SaferlTest/NaNCost-v0", entry_point=NaNCostEnv)
    # Both copies step in lockstep: the NaN of step 7 comes after 6 steps of each (12 in all).
    with pytest.raises(NonFiniteError, match=r"non-finite cost in env index 0 \(of 2 copies\), "
                                             r"after 12 environment steps \(all copies"):
        saferl.train("ppo", "SaferlTest/NaNCost-v0", run_dir=tmp_path / "nan", progress=False,
                     overrides={"run": {"num_envs": 2, "rollout_steps": 4, "steps": 64,
                                        "checkpoint_every": 1}, "ppo": {"minibatches": 2}})
    # Iteration 1 covered steps 1–4 of each copy; the NaN came at step 7, inside iteration 2.
    from saferl.runs import RunDirectory

    assert RunDirectory(tmp_path / "nan").latest_checkpoint() == "iter_0000001"


@pytest.mark.parametrize("algo,section", [("ppo_lag", {"ppo": {"minibatches": 7}}),
                                           ("cpo", {"trust_region": {"critic_minibatches": 7}})])
def test_minibatches_need_not_divide_the_batch(tmp_path, algo, section):
    """3 copies × 50 steps = 150 samples in 7 minibatches of 21: 3 sit out each pass."""
    overrides = {"run": {"num_envs": 3, "rollout_steps": 50, "steps": 300,
                         "hidden_sizes": [16, 16]}, **section}
    result = saferl.train(algo, SMALL["env"], run_dir=tmp_path / "a", progress=False,
                          overrides=overrides)
    again = saferl.train(algo, SMALL["env"], run_dir=tmp_path / "b", progress=False,
                         overrides=overrides)
    losses = [v for r in result.history if r["iteration"] == 2 for k, v in r.items()
              if k.startswith("loss/")]
    assert losses and all(math.isfinite(v) for v in losses)

    def numbers(history: list[dict[str, float]]) -> list[dict[str, float]]:
        return [{k: v for k, v in r.items() if k != "wall_time"} for r in history]

    assert numbers(result.history) == numbers(again.history)  # deterministic, remainder too


def test_cost_limit_count_must_match_the_constraints(tmp_path):
    with pytest.raises(ValueError, match=r"has 2 cost\(s\).*one limit per cost"):
        saferl.train("ppo_lag", "saferl/BallCircle-v0", cost_limit=10, progress=False,
                     run_dir=tmp_path / "x", overrides={"env_kwargs": {"speed_limit": 2.0}})


@pytest.mark.parametrize("overrides,match", [
    ({"steps": 0}, "steps must be a positive integer"),
    ({"cost_limit": [-1.0]}, "cost_limit values must be finite and >= 0"),
    ({"cost_limit": [float("inf")]}, "cost_limit values must be finite"),
    ({"gamma": 1.5}, r"gamma must be in \[0, 1\]"),
    ({"ppo": {"minibatches": 20_000}}, r"ppo.minibatches \(20000\) must be at most the batch "
                                       r"num_envs × rollout_steps = 64 × 200 = 12800"),
    ({"lagrange": {"method": "adam"}}, "lagrange.method"),
    ({"no_such_field": 1}, "Unknown configuration field no_such_field"),
    # Shared settings are valid at the top level: they are offered, and listed as such.
    ({"cost_limt": 5}, r"field cost_limt\. Did you mean cost_limit\? Valid here: sections "
                       r"lagrange, ppo, run; shared settings .*cost_limit"),
    ({"run": {"num_env": 4}}, r"field run\.num_env\. Did you mean run\.num_envs\?"),
    ({"seeds": [0, -1]}, r"seeds must be integers in \[0, 2\*\*32\); got -1"),
    ({"seed": 2**32}, r"seeds must be integers in \[0, 2\*\*32\); got 4294967296"),
])
def test_bad_configuration_is_one_clear_sentence(overrides, match):
    with pytest.raises(ValueError, match=match):
        saferl.training.build_config("ppo_lag", overrides=overrides)


@pytest.mark.parametrize("name,text,match", [
    ("c.toml", "[run\nsteps = 1", r"'.*c\.toml' is not valid TOML: .*line 1"),
    ("c.json", '{"steps": 1,}', r"'.*c\.json' is not valid JSON: .*line 1"),
    ("c.json", "[1, 2]", r"must hold a table of fields \(a JSON object\); got a list"),
    ("c.yaml", "steps: 1", r"must end in \.toml or \.json"),
])
def test_an_unreadable_configuration_file_is_named(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        saferl.training.build_config("ppo_lag", config_file=path)


def test_a_configuration_object_names_its_algorithm(tmp_path):
    config = saferl.training.build_config(
        "ppo", overrides={"run": {**SMALL, "steps": 800}, "ppo": SMALL_PPO})
    run = saferl.train(config=config, run_dir=tmp_path / "run", progress=False)
    assert run.algo == "ppo" and not run.config.run.safety_predictor
    with pytest.raises(TypeError, match="needs a CPOConfig"):
        saferl.train("cpo", config=config, run_dir=tmp_path / "other", progress=False)


def test_unknown_algorithm_suggests_the_nearest():
    with pytest.raises(KeyError, match="Did you mean 'ppo_lag'"):
        saferl.train("ppo_lgs", progress=False)


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu", "gelu"])
def test_host_actor_is_the_jax_policy(activation):
    """The numpy actor used for host simulators samples from exactly the trained policy."""
    import jax.numpy as jnp

    from saferl.algos.on_policy import Engine, HostActor
    from saferl.algos.registry import get_algorithm
    from saferl.core.distributions import gaussian_log_prob
    from saferl.core.normalization import running_stats_update
    from saferl.envs.native import make_task
    from saferl.training import build_config

    config = build_config("ppo_lag", overrides={"num_envs": 8, "seeds": [0, 1],
                                                "activation": activation})
    task = make_task(config.run.env)
    engine = Engine(get_algorithm("ppo_lag").module, config, task.spec, envs=[None, None])
    states = engine.init_states()
    obs = 3 * np.random.default_rng(0).normal(size=(2, 8, task.spec.obs_dim)).astype(np.float32)
    stats = jax.vmap(running_stats_update, in_axes=(0, None))(states.obs_stats,
                                                              jnp.asarray(obs[0]))
    states = states._replace(obs_stats=stats)
    actor = HostActor(config.run)
    actor.load(states)
    actions, log_probs = actor(obs)
    for s in range(2):
        pick = lambda x, s=s: x[s]  # noqa: E731
        params = jax.tree_util.tree_map(pick, states.agent.policy_params)
        mean, log_std = engine.networks.policy.apply(
            params, normalize(jax.tree_util.tree_map(pick, states.obs_stats), obs[s]))
        expected = gaussian_log_prob(mean, log_std, actions[s])
        np.testing.assert_allclose(log_probs[s], expected, rtol=1e-5, atol=2e-6)
