"""Cost limits as a member axis: a grid of limits trains seeds × limits in one process."""

import math

import numpy as np
import pytest

import saferl
from saferl.config import ConfigError
from saferl.engine.members import member_labels, members
from saferl.training import build_config, restore_states
from tests.algos.test_engine import assert_same_rows, rows_without_time, small_train
from tests.conftest import SMALL


def member_rows(history, seed, limit):
    return [r for r in rows_without_time(history) if r["seed"] == seed and r["limit_0"] == limit]


def without_limit(rows):
    return [{k: v for k, v in r.items() if k != "limit_0"} for r in rows]


@pytest.mark.core
def test_members_are_limits_major_seeds_minor_with_labels():
    config = build_config("ppo_lag", overrides={"run": {"seeds": [0, 1], "limits": [20, 40]}})
    assert [(m.seed, m.cost_limit) for m in members(config)] == [
        (0, (20.0,)), (1, (20.0,)), (0, (40.0,)), (1, (40.0,))]
    assert member_labels(config) == ("0@20", "1@20", "0@40", "1@40")
    assert member_labels(build_config("ppo_lag", overrides={"run": {"seeds": [3]}})) == ("3",)
    two = build_config("ppo_lag", overrides={"run": {"limits": [[20, 5], [40, 5]]}})
    assert member_labels(two) == ("0@20,5", "0@40,5")


@pytest.mark.core
@pytest.mark.parametrize(("limits", "message"), [
    ([[20], [20]], "limits must be distinct"),
    ([[20], [40, 5]], "the same number of constraints"),
    ([[-1]], "finite and >= 0"),
])
def test_bad_grids_are_one_sentence(limits, message):
    with pytest.raises((ValueError, ConfigError), match=message):
        build_config("ppo_lag", overrides={"run": {"limits": limits}})


def test_each_members_multiplier_follows_its_own_limit(tmp_path):
    """λ_k = clip(λ_{k−1} + η (Ĵ_C,k − d), 0, λ_max) per member, with Ĵ_C,k the iteration's
    mean episode cost (the previous estimate when none finished), by hand for two limits."""
    run = small_train(tmp_path, "grid", run={"limits": [[5.0], [60.0]]})
    lr, cap = run.config.lagrange.lr, run.config.lagrange.max_multiplier
    finals = []
    for limit in (5.0, 60.0):
        rows = member_rows(run.history, 0, limit)
        assert len(rows) == 5
        multiplier, estimate = 0.0, None
        for row in rows:
            if math.isfinite(row["rollout/ep_cost_0"]):
                estimate = row["rollout/ep_cost_0"]
            if estimate is not None:
                multiplier = min(max(multiplier + lr * (estimate - limit), 0.0), cap)
            assert row["lagrange/lambda_0"] == pytest.approx(multiplier, rel=1e-4, abs=1e-5)
        finals.append(multiplier)
    assert finals[0] > finals[1]  # the tighter limit's multiplier grew more


def test_a_grid_run_equals_the_single_limit_runs_member_by_member(tmp_path):
    grid = small_train(tmp_path, "grid", run={"limits": [[5.0], [60.0]]})
    for limit in (5.0, 60.0):
        single = small_train(tmp_path, f"single_{limit:g}", run={"cost_limit": [limit]})
        # vmap batches the same arithmetic; allow float32 reassociation noise only (measured
        # ≤ 0.14 % relative, and 1e-3 absolute on a return of −0.27 summed from ≈ ±1 rewards).
        assert_same_rows(without_limit(member_rows(grid.history, 0, limit)),
                         rows_without_time(single.history), rtol=2e-3, atol=2e-3)
    assert sorted(p.name for p in (grid.run_dir / "tb").iterdir()) == [
        "seed_0_limit_5", "seed_0_limit_60"]
    assert set(grid.summary["per_seed"]) == {"0@5", "0@60"}
    assert grid.summary["member_limits"] == {"0@5": [5.0], "0@60": [60.0]}


def test_resume_of_a_grid_run_equals_the_uninterrupted_one(tmp_path, monkeypatch):
    from saferl.algos.on_policy import Engine

    grid = {"limits": [[5.0], [60.0]], "seeds": [1, 2]}
    full = small_train(tmp_path, "full", run=grid)
    calls = []
    iterate = Engine.iterate

    def interrupted(self, states):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return iterate(self, states)

    monkeypatch.setattr(Engine, "iterate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        small_train(tmp_path, "cut", run={**grid, "checkpoint_every": 2})
    monkeypatch.setattr(Engine, "iterate", iterate)
    _, _, _, _, states, meta = restore_states(tmp_path / "cut")
    assert meta["members"] == ["1@5", "2@5", "1@60", "2@60"]
    np.testing.assert_array_equal(np.asarray(states.cost_limit)[:, 0], [5, 5, 60, 60])
    resumed = saferl.train(resume=tmp_path / "cut", progress=False)
    assert_same_rows(rows_without_time(resumed.history), rows_without_time(full.history))


def test_load_picks_a_member_by_label_or_index(tmp_path):
    run = small_train(tmp_path, "grid", run={"limits": [[5.0], [60.0]], "seeds": [1, 2],
                                             "eval_episodes": 0})
    obs = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
    by_label = saferl.load(run.run_dir, member="2@60")
    by_index = saferl.load(run.run_dir, member=3)
    obs = obs[:, :by_label.obs_dim]
    assert by_label.info["member"] == "2@60" and by_label.info["cost_limit"] == [60.0]
    np.testing.assert_array_equal(by_label(obs), by_index(obs))
    assert not np.array_equal(by_label(obs), saferl.load(run.run_dir, member="2@5")(obs))
    with pytest.raises(IndexError, match=r"its members are \['1@5', '2@5', '1@60', '2@60'\]"):
        saferl.load(run.run_dir, member="3@5")


def test_off_policy_grid_members_keep_their_own_limits(tmp_path):
    overrides = {"run": {**SMALL, "limits": [[2.0], [80.0]], "warmup_steps": 800,
                         "update_ratio": 0.05, "steps": 2400, "eval_episodes": 0}}
    run = saferl.train("sac_lag", overrides=overrides, run_dir=tmp_path / "sac",
                       progress=False)
    _, _, _, _, states, _ = restore_states(run.run_dir)
    np.testing.assert_array_equal(np.asarray(states.cost_limit)[:, 0], [2.0, 80.0])
    last = {r["limit_0"]: r for r in run.history if r["iteration"] == 3}
    assert last[2.0]["lagrange/lambda_0"] > last[80.0]["lagrange/lambda_0"]


def test_conditioned_algorithms_refuse_a_grid(tmp_path):
    with pytest.raises(ValueError, match="leave limits out"):
        saferl.train("ccpo", overrides={"run": {**SMALL, "limits": [20, 40]}},
                     run_dir=tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()
