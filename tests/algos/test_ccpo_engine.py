"""CCPO in the off-policy engine: behaviour thresholds per episode in collection and replay,
per-threshold episode figures, the conditioned policy (call, save → load), the versatile
evaluation (Python and ``saferl eval --thresholds``), host environments, resume, old
checkpoints."""

import csv
import json
import math
import warnings

import flax.serialization
import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saferl
from saferl.cli import main
from saferl.engine.episodes import track_episodes, tracker_init
from saferl.evaluation import evaluate
from saferl.runs import restore_state
from saferl.training import restore_states
from saferl.versatile import evaluate_versatile
from tests.algos.test_engine import assert_same_rows, rows_without_time
from tests.algos.test_off_policy import TINY, TINY_CVPO, LineEnv

# BallRun's episodes last 100 steps: 1 200 steps per copy are 12 episodes of each of 4 copies.
RUN = {**TINY, "steps": 4800, "rollout_steps": 25, "warmup_steps": 200}
BEHAVIOUR = (20.0, 40.0, 60.0)


def ccpo_train(path, **kwargs):
    overrides = {"run": {**RUN, **kwargs.pop("run", {})}, "cvpo": TINY_CVPO,
                 "ccpo": kwargs.pop("ccpo", {})}
    return saferl.train("ccpo", overrides=overrides, run_dir=path, progress=False, **kwargs)


@pytest.fixture(scope="module")
def native_run(tmp_path_factory):
    return ccpo_train(tmp_path_factory.mktemp("ccpo") / "run", seeds=[0, 1])


@pytest.fixture(scope="module")
def fixed_limit_run(tmp_path_factory):
    """A policy trained for fixed limits (sac_lag), two iterations."""
    return saferl.train("sac_lag", overrides={"run": {**TINY, "steps": 80}},
                        run_dir=tmp_path_factory.mktemp("sac") / "run", progress=False)


def episodes_of(replay, seed, copy):
    """``(condition, cost, end row)`` of every whole episode of one copy in an unwrapped
    replay."""
    size = int(replay.size[seed])
    ends = np.asarray(replay.terminated[seed, :size, copy] | replay.truncated[seed, :size, copy])
    conditions = np.asarray(replay.conditions[seed, :size, copy])
    costs = np.asarray(replay.costs[seed, :size, copy])
    out, start = [], 0
    for row in np.nonzero(ends)[0]:
        episode = conditions[start:row + 1]
        assert (episode == episode[0]).all(), "the threshold changed inside an episode"
        out.append((float(episode[0, 0]), costs[start:row + 1].sum(0), int(row)))
        start = row + 1
    return out


def test_every_episode_acts_with_one_behaviour_threshold_stored_in_the_replay(native_run):
    states = restore_states(native_run.run_dir)[4]
    assert states.replay.conditions.shape[-1] == 1
    seen = []
    for seed in range(2):
        for copy in range(RUN["num_envs"]):
            episodes = episodes_of(states.replay, seed, copy)
            assert len(episodes) == 12
            seen += [c for c, _, _ in episodes]
    # Drawn uniformly from Ẽ, anew for every episode: 96 episodes use all three.
    assert set(seen) == set(BEHAVIOUR)
    assert min(seen.count(b) for b in BEHAVIOUR) >= 20


def test_per_threshold_episode_figures_match_a_direct_count(native_run):
    """``rollout/behaviour_b/*`` of every iteration against the episodes in the replay that
    ended in that iteration's rows (collection writes 25 rows per iteration)."""
    _, _, _, _, states, _ = restore_states(native_run.run_dir)
    for seed in range(2):
        rows = [r for r in native_run.history if int(r["seed"]) == seed]
        episodes = [e for copy in range(RUN["num_envs"])
                    for e in episodes_of(states.replay, seed, copy)]
        for row in rows:
            iteration = int(row["iteration"])
            for b, threshold in enumerate(BEHAVIOUR):
                ended = [cost[0] for c, cost, end in episodes
                         if c == threshold and (iteration - 1) * 25 <= end < iteration * 25]
                assert row[f"rollout/behaviour_{b}/episodes"] == len(ended)
                figure = row[f"rollout/behaviour_{b}/ep_cost_0"]
                if ended:
                    assert figure == pytest.approx(np.mean(ended), rel=1e-5, abs=1e-5)
                else:
                    assert math.isnan(figure)


def test_grouped_episode_sums_match_a_direct_loop():
    rng = np.random.default_rng(0)
    steps, n, m, groups = 30, 3, 2, 4
    done = rng.random((steps, n)) < 0.2
    batch = type("Batch", (), {})()
    batch.rewards = jnp.asarray(rng.normal(size=(steps, n)), jnp.float32)
    batch.costs = jnp.asarray(rng.random((steps, n, m)), jnp.float32)
    batch.terminated, batch.truncated = jnp.asarray(done), jnp.zeros((steps, n), bool)
    group = rng.integers(0, groups, (steps, n))
    _, sums = track_episodes(tracker_init(n, m), batch, groups=jnp.asarray(group),
                             num_groups=groups)
    count, total = np.zeros(groups), np.zeros((groups, m))
    for copy in range(n):
        running = np.zeros(m)
        for t in range(steps):
            running = running + np.asarray(batch.costs[t, copy])
            if done[t, copy]:
                count[group[t, copy]] += 1
                total[group[t, copy]] += running
                running = np.zeros(m)
    np.testing.assert_array_equal(np.asarray(sums["episodes_by_group"]), count)
    np.testing.assert_allclose(np.asarray(sums["sum_cost_by_group"]), total, rtol=1e-5)
    assert float(sums["episodes"]) == count.sum()


def test_same_seed_same_numbers_and_resume_equals_uninterrupted(tmp_path, native_run):
    """A run killed at iteration 20 and resumed equals the uninterrupted one: its first 20
    iterations (a fresh run of the same seeds) and the 28 after the resume."""

    class Crash(Exception):
        pass

    def crash(iteration, _metrics):
        if iteration == 20:
            raise Crash()

    with pytest.raises(Crash):
        ccpo_train(tmp_path / "killed", seeds=[0, 1], callback=crash)
    resumed = saferl.train(resume=tmp_path / "killed", progress=False)
    # The behaviour thresholds under way are part of the checkpoint: nothing changes.
    assert_same_rows(rows_without_time(native_run.history), rows_without_time(resumed.history))


def test_the_conditioned_policy_takes_a_threshold_and_loads_with_the_same_actions(native_run):
    policy = native_run.policy(1)
    assert policy.info["conditioning"] == {"behaviour_thresholds": [[20.0], [40.0], [60.0]],
                                           "threshold_range": [[10.0], [70.0]]}
    obs = np.random.default_rng(0).normal(size=(8, 7)).astype(np.float32)
    loaded = saferl.load(native_run.run_dir, seed_index=1)
    for threshold in (10.0, 25.0, 60.0, [45.0]):
        np.testing.assert_array_equal(policy(obs, threshold=threshold),
                                      loaded(obs, threshold=threshold))
    # A batch of thresholds, one per observation, equals acting at each one separately.
    batch = np.array([[10.0], [20.0], [30.0], [40.0], [50.0], [60.0], [70.0], [35.0]])
    together = loaded(obs, threshold=batch)
    for i in range(8):
        np.testing.assert_allclose(together[i], loaded(obs[i], threshold=batch[i, 0]),
                                   rtol=1e-5, atol=1e-6)
    assert not np.allclose(loaded(obs, threshold=10.0), loaded(obs, threshold=70.0))


@pytest.mark.parametrize("threshold,match", [
    (None, r"conditioned on the cost threshold \(trained on E = \[10, 70\]\); call it with "
           r"threshold="),
    ([20.0, 30.0], r"threshold must be a number, a vector of 1 .* got an array of shape "
                   r"\(2,\)"),
    (-5.0, "threshold must hold finite values >= 0; got -5.0"),
    (float("nan"), "threshold must hold finite values >= 0; got nan"),
    ("high", "threshold must be a number"),
])
def test_a_conditioned_policy_called_wrongly_is_one_sentence(native_run, threshold, match):
    policy = native_run.policy()
    with pytest.raises(ValueError, match=match):
        policy(np.zeros(7, np.float32), threshold=threshold)


def test_a_threshold_outside_the_range_warns_once_and_fixed_policies_take_none(
        native_run, fixed_limit_run):
    policy = saferl.load(native_run.run_dir)
    with pytest.warns(UserWarning, match=r"threshold \[90.0\] lies outside the range the "
                                         r"policy was trained on \(E = \[10, 70\]\)"):
        policy(np.zeros(7, np.float32), threshold=90.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy(np.zeros(7, np.float32), threshold=5.0)  # once per policy
    fixed = fixed_limit_run.policy()
    with pytest.raises(ValueError, match=r"trained for fixed cost limits .* takes no threshold"):
        fixed(np.zeros(7, np.float32), threshold=20.0)


def test_versatile_evaluation_is_one_call_per_threshold_set_and_matches_single_thresholds(
        native_run):
    policies = [native_run.policy(0), native_run.policy(1)]
    result = evaluate_versatile(policies, [10, 40, 70], episodes=4, seed=3)
    assert result.returns.shape == (2, 3, 4) and result.costs.shape == (2, 3, 4, 1)
    for s, policy in enumerate(policies):
        for t, threshold in enumerate((10.0, 40.0, 70.0)):
            single = evaluate(policy, episodes=4, seed=3, threshold=threshold)
            np.testing.assert_allclose(result.returns[s, t], single.returns, rtol=1e-5)
            np.testing.assert_allclose(result.costs[s, t], single.costs, rtol=1e-5, atol=1e-5)
    rows = result.table()
    assert [r["threshold_0"] for r in rows] == [10.0, 40.0, 70.0]
    assert [r["trained_on"] for r in rows] == [0.0, 1.0, 0.0]
    seed_means = result.returns.mean(axis=2)
    assert rows[1]["return_mean"] == pytest.approx(seed_means[:, 1].mean())
    assert rows[1]["return_std"] == pytest.approx(seed_means[:, 1].std())
    for bad, match in [([], "thresholds must hold at least one threshold; got an empty list"),
                       ([10, -1], "thresholds must hold finite thresholds >= 0; got -1.0"),
                       ([[10, 5]], r"vectors of 1 threshold\(s\), one per constraint")]:
        with pytest.raises(ValueError, match=match):
            evaluate_versatile(policies, bad)
    # not a policy at all (a name that is not saferl's, a forgotten load): say what was given
    with pytest.raises(TypeError, match=r"takes saferl policies \(saferl.load\(RUN_DIR\)\); "
                                        r"got NoneType\."):
        evaluate_versatile(None, [10])


def test_eval_with_thresholds_prints_the_table_and_writes_csv_json_and_plot(native_run,
                                                                          capsys):
    run_dir = str(native_run.run_dir)
    assert main(["eval", run_dir, "--thresholds", "10", "40", "70", "--episodes", "3"]) == 0
    out = capsys.readouterr().out
    assert "Avg R" in out and "Avg CV" in out and "R-G" in out and "CV-G" in out
    with open(native_run.run_dir / "versatile.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["threshold_0"]) for r in rows] == [10.0, 40.0, 70.0]
    record = json.loads((native_run.run_dir / "versatile.json").read_text())
    assert record["seeds"] == [0, 1] and record["episodes"] == 3
    assert set(record["metrics"]) >= {"Avg R", "Avg CV", "R-G", "CV-G"}
    assert (native_run.run_dir / "versatile.png").stat().st_size > 10_000
    # run again: it says it replaced the run's evaluation; --out keeps the run's as it is
    assert main(["eval", run_dir, "--thresholds", "10", "70", "--episodes", "2"]) == 0
    assert "these replace the run's earlier evaluation" in capsys.readouterr().out
    kept = (native_run.run_dir / "versatile.json").read_text()
    elsewhere = native_run.run_dir.parent / "mine.json"
    assert main(["eval", run_dir, "--thresholds", "25", "--episodes", "2",
                 "--out", str(elsewhere)]) == 0
    assert "replace" not in capsys.readouterr().out
    assert (native_run.run_dir / "versatile.json").read_text() == kept
    assert json.loads(elsewhere.read_text())["thresholds"] == [[25.0]]
    assert elsewhere.with_suffix(".csv").is_file() and elsewhere.with_suffix(".png").is_file()
    # Bad thresholds: one sentence, nothing written.
    assert main(["eval", run_dir, "--thresholds", "10", "-4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["saferl: error: --thresholds must hold finite thresholds >= 0; got -4.0."]
    assert main(["eval", run_dir, "--thresholds", "10", "abc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["saferl: error: --thresholds must be numbers (episode-cost thresholds); got "
                   "'abc'."]


def test_eval_thresholds_on_a_fixed_limit_run_is_one_sentence(fixed_limit_run, capsys):
    assert main(["eval", str(fixed_limit_run.run_dir), "--thresholds", "10", "20"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--thresholds evaluates threshold-conditioned runs (ccpo)" in err[0]


def test_host_environments_collect_with_behaviour_thresholds_and_resume(tmp_path):
    if "SaferlTest/Line-v0" not in gymnasium.registry:
        gymnasium.register("SaferlTest/Line-v0", entry_point=LineEnv)
    run = {"env": "SaferlTest/Line-v0", "num_envs": 2, "steps": 400, "warmup_steps": 40,
           "rollout_steps": 10, "episode_length": 20}
    result = ccpo_train(tmp_path / "host", run=run)
    _, _, _, _, states, _ = restore_states(result.run_dir)
    seen = []
    for copy in range(2):
        episodes = episodes_of(states.replay, 0, copy)  # LineEnv: 20-step episodes
        assert len(episodes) == 10
        seen += [c for c, _, _ in episodes]
    assert set(seen) <= set(BEHAVIOUR) and len(set(seen)) >= 2
    assert sum(r["rollout/behaviour_0/episodes"] + r["rollout/behaviour_1/episodes"]
               + r["rollout/behaviour_2/episodes"] for r in result.history) == 20
    longer = saferl.train(resume=result.run_dir, steps=480, progress=False)
    assert [r["iteration"] for r in longer.history][-1] == 24
    policy = longer.policy()
    assert policy(np.zeros(2, np.float32), threshold=30.0).shape == (1,)


def test_checkpoints_written_before_the_conditions_existed_still_load(native_run):
    template = jax.device_get(restore_states(native_run.run_dir)[4])
    old = flax.serialization.to_state_dict(template)
    del old["behaviour"], old["replay"]["conditions"]
    restored = restore_state(template, flax.serialization.msgpack_serialize(old))
    for x, y in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(template),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # Any other missing field is still a checkpoint of another structure.
    del old["tracker"]
    with pytest.raises(ValueError, match="field names of the state dict"):
        restore_state(template, flax.serialization.msgpack_serialize(old))
