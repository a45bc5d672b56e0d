"""CCPO's algorithmic core: configuration messages, the stage schedule and condition pairing,
per-condition duals against SciPy, the M-step KL bounds per condition, the ablations, acting
(docs/algorithms/ccpo.md). CCPO with one fixed condition equal to CVPO: test_ccpo_equals_cvpo.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import logsumexp

from saferl.algos import ccpo, cvpo
from saferl.algos.off_policy import OffPolicyConfig
from saferl.core.conditioning import VVECritics
from saferl.core.inference import decoupled_kl
from saferl.core.networks import host_params
from saferl.data.replay import SampledBatch
from saferl.envs.native import make_task

SPEC = make_task("saferl/BallCircle-v0").spec  # obs 8, actions 2, one cost, T = 200
# 10 iterations of 100 steps, 2 of them warm-up, 10 updates per iteration.
RUN = {"env": "saferl/BallCircle-v0", "hidden_sizes": (32, 32), "batch_size": 96,
       "steps": 1000, "num_envs": 4, "rollout_steps": 25, "warmup_steps": 200,
       "update_ratio": 0.1, "tau": 0.05}
SMALL_CVPO = {"num_samples": 8, "dual_iterations": 10, "mstep_iterations": 3}


def make(ccpo_fields=None, cvpo_fields=None, run_fields=None):
    config = ccpo.CCPOConfig(run=OffPolicyConfig(**{**RUN, **(run_fields or {})}),
                             cvpo=cvpo.CVPOParams(**{**SMALL_CVPO, **(cvpo_fields or {})}),
                             ccpo=ccpo.CCPOParams(**(ccpo_fields or {})))
    networks = ccpo.make_networks(config, SPEC)
    return config, networks, ccpo.init_agent(config, SPEC, networks, jax.random.PRNGKey(0))


def random_batch(rng, n=96):
    obs = jnp.asarray(rng.normal(size=(n, SPEC.obs_dim)), jnp.float32)
    return SampledBatch(obs, jnp.asarray(rng.uniform(-1, 1, (n, SPEC.action_dim)), jnp.float32),
                        jnp.asarray(rng.normal(size=n), jnp.float32),
                        jnp.asarray(rng.random((n, 1)), jnp.float32),
                        jnp.full(n, 0.99, jnp.float32), obs + 0.1)


@pytest.mark.parametrize("fields, match", [
    ({"behaviour_thresholds": (5.0, 40.0)},
     r"^ccpo\.behaviour_thresholds must lie inside ccpo\.threshold_range \[10, 70\]; got 5\.$"),
    ({"behaviour_thresholds": (40.0, 20.0)},
     r"strictly increasing \(sorted, no duplicates\); got unsorted values: 40 then 20\.$"),
    ({"behaviour_thresholds": (20.0, 20.0)}, r"got a duplicate: 20 then 20\.$"),
    ({"behaviour_thresholds": (-5.0, 20.0)},
     r"^ccpo\.behaviour_thresholds must hold finite thresholds >= 0; got -5\.0\.$"),
    ({"behaviour_thresholds": (float("nan"),)}, r"finite thresholds >= 0; got nan\.$"),
    ({"threshold_range": (10.0, float("inf"))},
     r"^ccpo\.threshold_range must have finite ends with 0 <= low < high; got \(10\.0, inf\)"),
    ({"threshold_range": (70.0, 10.0)}, r"0 <= low < high; got \(70\.0, 10\.0\)\.$"),
    ({"behaviour_thresholds": ((20.0, 5.0), (40.0,)), "num_constraints": 2,
      "threshold_range": (0.0, 70.0)},
     r"^ccpo\.behaviour_thresholds must hold vectors of 2 threshold\(s\), one per constraint; "
     r"got \[40\.0\]\.$"),
    ({"behaviour_thresholds": (20.0, 5.0, 40.0), "num_constraints": 2},
     r"must hold a multiple of 2 numbers \(2 per threshold vector\); got 3"),
    ({"pretrain_fraction": 0.0}, r"^ccpo\.pretrain_fraction must be in \(0, 1\]; got 0\.0\.$"),
    ({"assignment": "cyclic"},
     r"^ccpo\.assignment must be one of 'round_robin', 'random'; got 'cyclic'\.$"),
    ({"poly_degree": 0}, r"^ccpo\.poly_degree must be >= 1; got 0\.$"),
])
def test_bad_configuration_is_one_clear_sentence(fields, match):
    with pytest.raises(ValueError, match=match):
        ccpo.CCPOParams(**fields)


def test_batch_and_task_mismatches_are_one_sentence():
    with pytest.raises(ValueError, match=r"^batch_size must be >= the 6 conditions of an update"):
        ccpo.CCPOConfig(run=OffPolicyConfig(batch_size=4))
    config = ccpo.CCPOConfig(ccpo=ccpo.CCPOParams(
        behaviour_thresholds=((20.0, 5.0),), threshold_range=(0.0, 70.0), num_constraints=2))
    assert config.ccpo.behaviour_thresholds == (20.0, 5.0)  # vectors are stored flat
    with pytest.raises(ValueError, match=r"^ccpo\.num_constraints must equal the 1 cost\(s\) "
                                         r"of saferl/BallCircle-v0; got 2\.$"):
        ccpo.make_networks(config, SPEC)


def test_stage_schedule_and_condition_pairing():
    config, networks, _ = make({"pretrain_fraction": 0.8, "sampled_conditions": 3})
    # Update u runs in iteration 2 + u // 10, which starts at (2 + u // 10) · 100 steps:
    # stage 2 from 800 steps on, i.e. update 60.
    assert not bool(ccpo.fine_tuning(config, jnp.asarray(59)))
    assert bool(ccpo.fine_tuning(config, jnp.asarray(60)))
    key = jax.random.PRNGKey(3)
    for update_count, active in ((0, 3), (60, 6)):
        stage, thresholds, condition, critic = ccpo.update_conditions(
            config, networks, jnp.asarray(update_count), 96, key)
        np.testing.assert_array_equal(thresholds[:3, 0], [20.0, 40.0, 60.0])
        assert np.all((thresholds[3:] >= 10.0) & (thresholds[3:] <= 70.0))
        counts = np.asarray(condition.groups.sum(axis=1))
        assert counts[:active].min() >= 96 // active and counts[active:].sum() == 0
        # Round-robin: state b with condition b mod (active conditions).
        index = np.asarray(jnp.argmax(condition.groups, axis=0))
        np.testing.assert_array_equal(index, np.arange(96) % active)
        np.testing.assert_allclose(condition.thresholds[:, 0], thresholds[index, 0])
        np.testing.assert_allclose(condition.q_limit, networks.q_factor * condition.thresholds)
        assert_members_are_the_groups(condition)
        # The critics train on the behaviour thresholds only (the default).
        assert set(np.asarray(critic.thresholds[:, 0]).tolist()) == {20.0, 40.0, 60.0}
        assert bool(stage) == (active == 6)
    random_config, _, _ = make({"assignment": "random"})
    _, _, condition, _ = ccpo.update_conditions(random_config, networks, jnp.asarray(60), 96,
                                                key)
    counts = np.asarray(condition.groups.sum(axis=1))
    np.testing.assert_array_equal(counts, [16] * 6)  # balanced ...
    index = np.asarray(jnp.argmax(condition.groups, axis=0))
    assert not np.array_equal(index, np.arange(96) % 6)  # ... in a random order
    assert_members_are_the_groups(condition)
    # No fine-tuning stage: only the behaviour thresholds, ever.
    plain, _, _ = make({"pretrain_fraction": 1.0})
    assert plain.ccpo.num_conditions == 3
    assert not bool(ccpo.fine_tuning(plain, jnp.asarray(10**6)))


def scipy_dual(q_reward, q_costs, kappa, limit, cap):
    """CVPO's E-step dual for one constraint, minimised by SciPy in float64 with numpy's own
    value and gradient (independent of saferl's): ``g = ηκ + λε + η E_s[LSE_j(A/η) − log K]``,
    ``A = Q_r − λ Q_c``."""
    q_cost = q_costs[..., 0]

    def f(x):
        eta, lam = x
        advantage = q_reward - lam * q_cost
        log_sum = logsumexp(advantage / eta, axis=1)
        weights = np.exp(advantage / eta - log_sum[:, None])
        value = (eta * kappa + lam * limit + eta * np.mean(log_sum - np.log(q_reward.shape[1])))
        d_eta = (kappa + np.mean(log_sum - np.log(q_reward.shape[1]))
                 - np.mean(np.sum(weights * advantage, 1)) / eta)
        d_lam = limit - np.mean(np.sum(weights * q_cost, 1))
        return value, np.asarray([d_eta, d_lam])

    best = None
    for eta0 in (0.1, 1.0, 10.0):
        result = minimize(f, np.r_[eta0, 1.0], jac=True, method="L-BFGS-B",
                          bounds=[(1e-3, None), (0.0, cap)],
                          options={"ftol": 1e-15, "gtol": 1e-11, "maxiter": 3000})
        if best is None or result.fun < best.fun:
            best = result
    return best


def assert_members_are_the_groups(condition):
    """``members[valid]`` of each condition are exactly the states of its group, once each."""
    groups = np.asarray(condition.groups, bool)
    members, valid = np.asarray(condition.members), np.asarray(condition.valid)
    for i in range(groups.shape[0]):
        chosen = members[i][valid[i]]
        assert len(set(chosen.tolist())) == len(chosen)
        assert set(chosen.tolist()) == set(np.flatnonzero(groups[i]).tolist())


def test_per_condition_duals_equal_separately_solved_duals():
    """The vectorised E-step's ``(η_i, λ_i)`` (float32, randomly paired states) against SciPy's
    L-BFGS-B on each condition's states alone with its own Q threshold (float64): value within
    a relative 1e-5, variables within 5e-3 (the float32 solver's stopping rule)."""
    rng = np.random.default_rng(0)
    batch, samples = 192, 16
    q_reward = rng.normal(2.0, 1.0, (batch, samples))
    q_costs = 0.6 * q_reward[..., None] + rng.normal(0, 0.5, (batch, samples, 1))
    config, networks, _ = make({"assignment": "random"},
                               {"dual_iterations": 40, "estep_kl": 0.05})
    # Stage 2: 3 behaviour + 3 sampled conditions, 32 states each in blocks of 64 (padded).
    stage, _, condition, _ = ccpo.update_conditions(config, networks, jnp.asarray(60), batch,
                                                    jax.random.PRNGKey(1))
    assert bool(stage) and condition.members.shape == (6, 64)
    # Q thresholds per condition: binding constraints and slack ones.
    limits = np.asarray([1.1, 1.25, 5.0, 1.15, 1.3, 4.0])
    index = np.asarray(jnp.argmax(condition.groups, axis=0))
    condition = condition._replace(q_limit=jnp.asarray(limits[index][:, None], jnp.float32))
    init = jnp.asarray([[1.0, 0.0]] * 6, jnp.float32)
    solution, weights = cvpo.estep_solve(config.cvpo, jnp.asarray(q_reward, jnp.float32),
                                         jnp.asarray(q_costs, jnp.float32), init, None,
                                         condition)
    for i, limit in enumerate(limits):
        states = index == i
        reference = scipy_dual(q_reward[states], q_costs[states], 0.05, limit, 100.0)
        assert float(solution.value[i]) == pytest.approx(reference.fun, rel=1e-5)
        np.testing.assert_allclose(solution.variables[i], reference.x, rtol=5e-3, atol=1e-4)
        assert (float(solution.variables[i, 1]) > 0) == (limit < 4.0)
        # Each state is weighted with its own condition's dual.
        eta, lam = np.asarray(solution.variables[i], np.float64)
        logits = (q_reward[states] - lam * q_costs[states, :, 0]) / eta
        expected = np.exp(logits - logits.max(1, keepdims=True))
        np.testing.assert_allclose(weights[states], expected / expected.sum(1, keepdims=True),
                                   rtol=2e-3, atol=1e-6)


def test_m_step_kl_bounds_hold_for_every_condition():
    """Stage 2 (3 behaviour + 3 sampled conditions, random pairing), tight KL bounds: after
    every update each condition's mean KLs between ``π_old`` and the new actor, over the
    states paired with it, are within the bounds; some updates are cut back, none is empty."""
    config, networks, agent = make({"assignment": "random"},
                                   {"kl_mean": 0.002, "kl_std": 0.0002, "mstep_iterations": 8})
    agent = agent._replace(updates=jnp.asarray(60, jnp.int32))  # the fine-tuning stage
    update = jax.jit(lambda a, b, k: ccpo.update(config, networks, a, b, None, k))
    rng = np.random.default_rng(0)
    fractions = []
    for i in range(8):
        batch, key = random_batch(rng), jax.random.PRNGKey(i)
        new, metrics = update(agent, batch, key)
        stage, _, condition, _ = ccpo.update_conditions(config, networks, agent.updates, 96,
                                                        ccpo.update_keys(key)[2])
        assert bool(stage)
        mean_old, log_std_old = networks.actor.apply(agent.target_actor_params,
                                                     batch.observations, condition.thresholds)
        mean, log_std = networks.actor.apply(new.actor_params, batch.observations,
                                             condition.thresholds)
        kl_mean, kl_std = decoupled_kl(mean_old, jnp.exp(log_std_old), mean, jnp.exp(log_std))
        groups = np.asarray(condition.groups, bool)
        assert groups.sum() == 96 and groups.any(axis=1).all()
        for rows in groups:
            assert float(kl_mean[rows].mean()) <= 0.002 * (1 + 1e-5)
            assert float(kl_std[rows].mean()) <= 0.0002 * (1 + 1e-5)
        fractions.append(float(metrics["ccpo/step_fraction"]))
        agent = new
    assert min(fractions) < 1.0 and max(fractions) > 0.0
    assert int(agent.updates) == 68


def test_ablations_and_the_lagrangian_multipliers():
    config, networks, agent = make({"cvi": False, "sampled_conditions": 2})
    assert isinstance(networks.critics, VVECritics)
    update = jax.jit(lambda a, b, k: ccpo.update(config, networks, a, b, None, k))
    new, metrics = update(agent._replace(multipliers=jnp.asarray([[0.0], [0.5], [1.0]])),
                          random_batch(np.random.default_rng(1)), jax.random.PRNGKey(0))
    assert np.isfinite(float(metrics["loss/actor"]))
    np.testing.assert_array_equal(new.duals, agent.duals)  # no E-step without CVI
    moved = jax.tree_util.tree_map(lambda x, y: float(jnp.abs(x - y).max()), new.actor_params,
                                   agent.actor_params)
    assert max(jax.tree_util.tree_leaves(moved)) > 0
    # One multiplier per behaviour threshold, from the episodes collected under it.
    agent = agent._replace(multipliers=jnp.asarray([[0.0], [0.5], [0.0]]))
    stepped, logged = ccpo.update_multipliers(
        config, agent, jnp.asarray([[30.0], [35.0], [70.0]]), None,
        jnp.asarray([True, True, False]))
    # λ ← clip(λ + 0.05 (J − ε), 0, 100); the third saw no finished episode.
    np.testing.assert_allclose(stepped.multipliers[:, 0], [0.5, 0.25, 0.0], rtol=1e-6)
    assert float(logged["lagrange/lambda_1_0"]) == pytest.approx(0.25)


def test_acting_with_a_threshold_and_its_host_twin():
    config, networks, agent = make()
    behaviour = jnp.asarray(ccpo.behaviour_thresholds(config), jnp.float32)
    assert behaviour[:, 0].tolist() == [20.0, 40.0, 60.0]
    thresholds = behaviour[jax.random.randint(jax.random.PRNGKey(0), (64,), 0, 3)]
    obs = jax.random.normal(jax.random.PRNGKey(1), (64, SPEC.obs_dim))
    noise = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (64, SPEC.action_dim)))
    mean, log_std = networks.actor.apply(agent.actor_params, obs, thresholds)
    expected = np.tanh(np.asarray(mean) + np.exp(np.asarray(log_std)) * noise)
    stacked = jax.tree_util.tree_map(lambda x: x[None], agent.actor_params)
    host = ccpo.host_sample_action(config, networks, host_params(stacked),
                                   np.asarray(obs)[None], noise[None],
                                   np.asarray(thresholds)[None])
    np.testing.assert_allclose(host[0], expected, rtol=1e-4, atol=1e-6)
    actions = ccpo.sample_action(config, networks, agent.actor_params, obs,
                                 jax.random.PRNGKey(3), thresholds)
    assert actions.shape == (64, SPEC.action_dim) and float(jnp.abs(actions).max()) <= 1.0


def test_two_constraints_one_dual_and_multiplier_vector_per_condition():
    """Versatile over two constraints at once (BallRun with separate costs): threshold vectors,
    a ``1 + 2``-variable dual per condition, KL bounds per condition, per-constraint
    multipliers."""
    spec = make_task("saferl/BallRun-v0", separate_costs=True).spec  # obs 7, 2 costs, T = 100
    run = OffPolicyConfig(**{**RUN, "env": "saferl/BallRun-v0",
                             "env_kwargs": {"separate_costs": True}})
    params = ccpo.CCPOParams(behaviour_thresholds=((20.0, 5.0), (40.0, 10.0), (60.0, 15.0)),
                             threshold_range=(10.0, 70.0, 0.0, 20.0), num_constraints=2,
                             sampled_conditions=2, assignment="random")
    config = ccpo.CCPOConfig(run=run, cvpo=cvpo.CVPOParams(**SMALL_CVPO), ccpo=params)
    networks = ccpo.make_networks(config, spec)
    agent = ccpo.init_agent(config, spec, networks, jax.random.PRNGKey(0))
    agent = agent._replace(updates=jnp.asarray(60, jnp.int32))
    assert agent.duals.shape == (3, 3) and agent.multipliers.shape == (3, 2)
    rng = np.random.default_rng(0)
    obs = jnp.asarray(rng.normal(size=(96, spec.obs_dim)), jnp.float32)
    batch = SampledBatch(obs, jnp.asarray(rng.uniform(-1, 1, (96, spec.action_dim)),
                                          jnp.float32),
                         jnp.asarray(rng.normal(size=96), jnp.float32),
                         jnp.asarray(rng.random((96, 2)), jnp.float32),
                         jnp.full(96, 0.99, jnp.float32), obs + 0.1)
    key = jax.random.PRNGKey(4)
    new, metrics = jax.jit(lambda a: ccpo.update(config, networks, a, batch, None, key))(agent)
    _, thresholds, condition, _ = ccpo.update_conditions(config, networks, agent.updates, 96,
                                                         ccpo.update_keys(key)[2])
    low, high = np.asarray([10.0, 0.0]), np.asarray([70.0, 20.0])
    assert np.all((thresholds[3:] >= low) & (thresholds[3:] <= high))
    assert_members_are_the_groups(condition)
    mean_old, log_std_old = networks.actor.apply(agent.target_actor_params, obs,
                                                 condition.thresholds)
    mean, log_std = networks.actor.apply(new.actor_params, obs, condition.thresholds)
    kl_mean, kl_std = decoupled_kl(mean_old, jnp.exp(log_std_old), mean, jnp.exp(log_std))
    for rows in np.asarray(condition.groups, bool):
        assert float(kl_mean[rows].mean()) <= config.cvpo.kl_mean * (1 + 1e-5)
        assert float(kl_std[rows].mean()) <= config.cvpo.kl_std * (1 + 1e-5)
    assert {"ccpo/lambda_2_0", "ccpo/lambda_2_1"} <= set(metrics)
    assert np.all(np.isfinite(np.asarray(new.duals)))
