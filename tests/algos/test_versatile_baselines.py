"""The versatile Lagrangian baselines V-SAC-Lag and V-DDPG-Lag: the threshold reaches the
networks, each transition learns under its own behaviour threshold's multipliers, and those
multipliers move only with the episodes collected under that threshold."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saferl
from saferl.algos import vddpg, vsac
from saferl.data.replay import SampledBatch
from saferl.envs.native import make_task
from saferl.training import build_config
from tests.algos.test_off_policy import TINY

SPEC = make_task("saferl/BallRun-v0").spec
BASELINES = pytest.mark.parametrize("algo,module", [("vsac_lag", vsac), ("vddpg_lag", vddpg)])


def make(algo, module, **versatile):
    config = build_config(algo, overrides={"run": TINY, "versatile": versatile,
                                           "lagrange": {"lr": 0.05}})
    networks = module.make_networks(config, SPEC)
    return config, networks, module.init_agent(config, SPEC, networks, jax.random.PRNGKey(0))


def batch_at(threshold, n=64):
    rng = np.random.default_rng(0)
    obs = jnp.asarray(rng.normal(size=(n, SPEC.obs_dim)), jnp.float32)
    return SampledBatch(obs, jnp.asarray(rng.uniform(-1, 1, (n, SPEC.action_dim)), jnp.float32),
                        jnp.asarray(rng.normal(size=n), jnp.float32),
                        jnp.asarray(rng.random((n, 1)), jnp.float32), jnp.full(n, 0.95),
                        obs + 0.1, jnp.full((n, 1), threshold, jnp.float32))


@BASELINES
def test_the_threshold_reaches_actor_and_critics(algo, module):
    config, networks, agent = make(algo, module)
    obs = jax.random.normal(jax.random.PRNGKey(1), (8, SPEC.obs_dim))
    low = jax.tree_util.tree_leaves(networks.actor.apply(agent.actor_params, obs,
                                                         jnp.full((8, 1), 10.0)))[0]
    high = jax.tree_util.tree_leaves(networks.actor.apply(agent.actor_params, obs,
                                                          jnp.full((8, 1), 70.0)))[0]
    assert not np.allclose(low, high)
    action = jnp.zeros((8, SPEC.action_dim))
    q_low = networks.critics.apply(agent.critic_params, obs, action, jnp.full((8, 1), 10.0))
    q_high = networks.critics.apply(agent.critic_params, obs, action, jnp.full((8, 1), 70.0))
    assert q_low.shape == (8, 3 if algo == "vsac_lag" else 2)
    assert not np.allclose(q_low, q_high)
    # The host twin of the exploration policy is the JAX one.
    noise = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (8, SPEC.action_dim)))
    thresholds = jnp.full((8, 1), 35.0)
    from saferl.core.networks import host_params
    stacked = jax.tree_util.tree_map(lambda x: x[None], agent.actor_params)
    host = module.host_sample_action(config, networks, host_params(stacked),
                                     np.asarray(obs)[None], noise[None],
                                     np.asarray(thresholds)[None])[0]
    if algo == "vsac_lag":
        mean, log_std = networks.actor.apply(agent.actor_params, obs, thresholds)
        expected = np.tanh(np.asarray(mean) + np.exp(np.asarray(log_std)) * noise)
    else:
        expected = np.clip(np.asarray(networks.actor.apply(agent.actor_params, obs, thresholds))
                           + config.ddpg.exploration_noise * noise, -1, 1)
    np.testing.assert_allclose(host, expected, rtol=1e-4, atol=1e-6)


@BASELINES
def test_each_transition_learns_under_its_own_thresholds_multipliers(algo, module):
    config, networks, agent = make(algo, module)

    def with_multipliers(values):
        lagrange = agent.lagrange._replace(multiplier=jnp.asarray(values, jnp.float32)[:, None])
        return agent._replace(lagrange=lagrange)

    key = jax.random.PRNGKey(2)

    def step(values, threshold):
        return module.update(config, networks, with_multipliers(values), batch_at(threshold),
                             None, key)

    at_20, metrics_20 = step([0.0, 5.0, 0.0], 20.0)
    # The multipliers of the other thresholds do not matter to transitions collected at 20 …
    other, metrics_other = step([0.0, 0.0, 7.0], 20.0)
    for x, y in zip(jax.tree_util.tree_leaves(at_20.actor_params),
                    jax.tree_util.tree_leaves(other.actor_params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert float(metrics_20["loss/actor"]) == float(metrics_other["loss/actor"])
    # … its own do (λ = 5 for the threshold 40): the loss is (−Q_r + 5 Q_c) / 6, not −Q_r.
    at_40, metrics_40 = step([0.0, 5.0, 0.0], 40.0)
    free, metrics_free = step([0.0, 0.0, 0.0], 40.0)
    assert float(metrics_40["loss/actor"]) != pytest.approx(float(metrics_free["loss/actor"]))
    assert any(not np.allclose(x, y) for x, y in zip(
        jax.tree_util.tree_leaves(at_40.actor_params), jax.tree_util.tree_leaves(free.actor_params),
        strict=True))


@BASELINES
def test_multipliers_step_per_behaviour_threshold_from_its_own_episodes(algo, module):
    config, _, agent = make(algo, module)
    costs = jnp.asarray([[30.0], [35.0], [90.0]])
    fresh = jnp.asarray([True, True, False])
    agent, metrics = module.update_multipliers(config, agent, costs, None, fresh)
    # λ_b ← clip(λ_b + 0.05 (J_b − ε_b), 0, 100): 0.5, clip(−0.25) = 0, and no episode at 60.
    np.testing.assert_allclose(agent.lagrange.multiplier[:, 0], [0.5, 0.0, 0.0], atol=1e-7)
    agent, metrics = module.update_multipliers(
        config, agent, jnp.asarray([[10.0], [50.0], [70.0]]), None, jnp.asarray([True] * 3))
    np.testing.assert_allclose(agent.lagrange.multiplier[:, 0], [0.0, 0.5, 0.5], atol=1e-6)
    assert float(metrics["lagrange/lambda_2_0"]) == pytest.approx(0.5)


@BASELINES
def test_in_the_engine_a_thresholds_multipliers_move_only_in_iterations_with_its_episodes(
        tmp_path, algo, module):
    run = saferl.train(algo, overrides={"run": {**TINY, "steps": 2400,
                                                      "rollout_steps": 25},
                                              "lagrange": {"lr": 0.05}},
                       run_dir=tmp_path / "run", progress=False)
    rows = run.history
    learning = [r for r in rows if r["train/learning"] == 1.0]
    moved = {b: 0 for b in range(3)}
    for previous, row in itertools.pairwise(learning):
        for b in range(3):
            changed = row[f"lagrange/lambda_{b}_0"] != previous[f"lagrange/lambda_{b}_0"]
            if changed:
                moved[b] += 1
                assert row[f"rollout/behaviour_{b}/episodes"] > 0, (b, row["iteration"])
    assert sum(moved.values()) > 0
    policy = run.policy()
    obs = np.zeros((2, SPEC.obs_dim), np.float32)
    assert not np.allclose(policy(obs, threshold=10.0), policy(obs, threshold=70.0))
    np.testing.assert_array_equal(policy(obs, threshold=30.0),
                                  saferl.load(run.run_dir)(obs, threshold=30.0))
