"""C-PPO-Lag / C-TRPO-Lag: the linear combination of the policies trained at fixed thresholds."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import saferl
from saferl.algos.combination import LinearCombination, combination_weights, combined_axis
from saferl.engine.family import Conditioning
from saferl.policy import Policy, deployed_members
from saferl.training import build_config, restore_states
from tests.algos.test_engine import small_train

pytestmark = pytest.mark.core

GRID = (20.0, 40.0, 60.0)


@pytest.mark.parametrize(("eps", "expected"), [
    (20.0, [1.0, 0.0, 0.0]),  # at a trained threshold: that policy alone
    (40.0, [0.0, 1.0, 0.0]),
    (60.0, [0.0, 0.0, 1.0]),
    (25.0, [0.75, 0.25, 0.0]),  # w₁ = (40 − 25)/(40 − 20)
    (52.0, [0.0, 0.4, 0.6]),  # w₁ = (60 − 52)/(60 − 40)
    (10.0, [1.0, 0.0, 0.0]),  # below the range: the nearest policy
    (70.0, [0.0, 0.0, 1.0]),  # above it
])
def test_weights_by_hand(eps, expected):
    weights = combination_weights(jnp.asarray([eps]), jnp.asarray(GRID))
    np.testing.assert_allclose(np.asarray(weights)[0], expected, atol=1e-6)


def test_one_policy_takes_all_the_weight():
    np.testing.assert_array_equal(combination_weights(jnp.asarray([5.0, 90.0]),
                                                      jnp.asarray([30.0])), [[1.0], [1.0]])


def test_the_combined_axis_is_the_varying_constraint():
    assert combined_axis(np.array([[20.0, 5.0], [40.0, 5.0]])) == 0
    assert combined_axis(np.array([[5.0, 20.0], [5.0, 40.0]])) == 1
    with pytest.raises(ValueError, match="differ in one constraint only"):
        combined_axis(np.array([[20.0, 5.0], [40.0, 6.0]]))


class FixedGaussian:
    """A stand-in policy module: the mean and log-std in its parameters, whatever the input."""

    def apply(self, params, observations):
        shape = (observations.shape[0], params["mean"].shape[0])
        return (jnp.broadcast_to(params["mean"], shape),
                jnp.broadcast_to(params["log_std"], shape))


def combined_policy():
    means = jnp.asarray([[-0.6, 0.0], [0.0, 0.3], [0.6, 0.9]])
    params = {"members": {"mean": means, "log_std": jnp.full((3, 2), -6.0)}, "stats": None}
    conditioning = Conditioning(np.asarray(GRID)[:, None], np.array([10.0]), np.array([70.0]))
    module = LinearCombination(FixedGaussian(), GRID, 0)
    return Policy(module, params, None, np.full(2, -1.0), np.full(2, 1.0),
                  conditioning=conditioning), np.asarray(means)


@pytest.mark.parametrize(("eps", "w"), [(20.0, [1, 0, 0]), (30.0, [0.5, 0.5, 0]),
                                        (55.0, [0, 0.25, 0.75]), (10.0, [1, 0, 0]),
                                        (70.0, [0, 0, 1]), (5.0, [1, 0, 0]), (90.0, [0, 0, 1])])
def test_deterministic_action_is_the_weighted_mean(eps, w):
    """Inside Ẽ's span the bracketing pair; outside it (10, 70: still inside E = [10, 70]) the
    nearest policy; outside E too (5, 90) the same, with the extrapolation warning."""
    policy, means = combined_policy()
    obs = np.zeros((2, 3), np.float32)
    outside = not 10.0 <= eps <= 70.0
    with pytest.warns(UserWarning, match="outside") if outside else warnings.catch_warnings():
        if not outside:
            warnings.simplefilter("error")
        action = policy(obs, threshold=eps)
    np.testing.assert_allclose(action, np.repeat((np.asarray(w) @ means)[None], 2, 0),
                               atol=1e-6)


def test_stochastic_action_draws_from_the_mixture():
    policy, means = combined_policy()
    obs = np.zeros((4000, 3), np.float32)
    actions = policy(obs, deterministic=False, threshold=25.0)  # w = (0.75, 0.25, 0)
    nearest = np.argmin(np.linalg.norm(actions[:, None] - means[None], axis=-1), axis=1)
    share = np.bincount(nearest, minlength=3) / len(actions)
    # 4000 draws: the share's standard error is ≈ 0.007.
    np.testing.assert_allclose(share, [0.75, 0.25, 0.0], atol=0.03)
    assert np.abs(actions - means[nearest]).max() < 0.02  # each a draw of one member (σ e⁻⁶)


def test_cppo_lag_trains_one_member_per_behaviour_threshold_and_deploys_per_seed(tmp_path):
    run = small_train(tmp_path, "c", algo="cppo_lag", run={"seeds": [0, 1], "eval_episodes": 2},
                      versatile={"behaviour_thresholds": [20, 40, 60]})
    assert set(run.summary["per_seed"]) == {"0@20", "1@20", "0@40", "1@40", "0@60", "1@60"}
    assert run.summary["versatile"]["thresholds"] == [[20.0], [40.0], [60.0]]
    assert (run.run_dir / "versatile.csv").is_file()
    assert deployed_members(run.config) == [("0", [0, 2, 4]), ("1", [1, 3, 5])]
    policy = saferl.load(run.run_dir, member="1")
    assert policy.conditioning is not None and policy.info["member"] == "1"
    _, entry, config, spec, states, _ = restore_states(run.run_dir)
    obs = np.random.default_rng(1).normal(size=(3, spec.obs_dim)).astype(np.float32)
    # At a trained threshold the combination is that member's own policy (seed 1 at 40: 3).
    parts = entry.engine.policy_parts(entry.module, config, spec, states, 3)
    own = Policy(parts.module, parts.params, parts.obs_stats, spec.action_space.low,
                 spec.action_space.high)
    np.testing.assert_allclose(policy(obs, threshold=40.0), own(obs), atol=1e-6)
    low = policy(obs, threshold=20.0)
    assert not np.allclose(low, own(obs))


@pytest.mark.parametrize("algo", ["cppo_lag", "ctrpo_lag"])
def test_behaviour_thresholds_replace_limits(algo):
    with pytest.raises(ValueError, match="not as limits"):
        build_config(algo, overrides={"run": {"limits": [20, 40]}})
    config = build_config(algo, overrides={"versatile": {"behaviour_thresholds": [10, 30]}})
    assert config.limit_grid == ((10.0,), (30.0,))


def test_ctrpo_lag_trains_and_deploys_the_same_way(tmp_path):
    run = saferl.train("ctrpo_lag", overrides={
        "run": {"env": "saferl/BallRun-v0", "num_envs": 8, "rollout_steps": 100, "steps": 1600,
                "hidden_sizes": [32, 32], "eval_episodes": 2},
        "versatile": {"behaviour_thresholds": [20, 60]}}, run_dir=tmp_path / "t",
        progress=False)
    assert sorted(run.summary["per_seed"]) == ["0@20", "0@60"]
    policy = saferl.load(run.run_dir)
    obs = np.zeros((2, policy.obs_dim), np.float32)
    low, high = policy(obs, threshold=20.0), policy(obs, threshold=60.0)
    np.testing.assert_allclose(policy(obs, threshold=40.0), 0.5 * (low + high), atol=1e-5)
