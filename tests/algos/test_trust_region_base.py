"""The trust-region glue: surrogate units, Fisher products on the batch, the line search."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from saferl.algos.on_policy import Batch, OnPolicyConfig, make_networks
from saferl.algos.trust_region_base import (
    TrustRegionParams,
    line_search,
    policy_problem,
)
from saferl.core.distributions import gaussian_kl, gaussian_log_prob
from saferl.envs.native import make_task


@pytest.fixture(scope="module")
def setup():
    spec = make_task("saferl/BallCircle-v0").spec
    networks = make_networks(OnPolicyConfig(hidden_sizes=(8, 8)), spec)
    key = jax.random.PRNGKey(0)
    params = networks.policy.init(key, jnp.zeros((1, spec.obs_dim)))
    obs = jax.random.normal(key, (64, spec.obs_dim))
    mean, log_std = networks.policy.apply(params, obs)
    actions = mean + 0.3 * jax.random.normal(jax.random.PRNGKey(1), mean.shape)
    batch = Batch(obs, actions, gaussian_log_prob(mean, log_std, actions), mean, log_std,
                  jnp.zeros((64, 2)), jnp.zeros((64, 2)), jnp.array([12.0]), jnp.array(True),
                  jnp.asarray(200.0), jnp.array([10.0]))
    reward_adv = jax.random.normal(jax.random.PRNGKey(2), (64,))
    cost_adv = jax.random.normal(jax.random.PRNGKey(3), (64, 1))
    return networks, params, batch, reward_adv, cost_adv


def test_cost_gradient_is_in_episode_units_and_fvp_is_the_kl_hessian(setup):
    networks, params, batch, reward_adv, cost_adv = setup
    config = TrustRegionParams(fvp_fraction=1.0, cg_damping=0.0)
    problem = policy_problem(networks, config, params, batch, reward_adv, cost_adv,
                             jax.random.PRNGKey(4))
    theta, unravel = ravel_pytree(params)

    def per_sample(flat, adv):
        mean, log_std = networks.policy.apply(unravel(flat), batch.observations)
        ratio = jnp.exp(gaussian_log_prob(mean, log_std, batch.actions) - batch.log_probs)
        return jnp.mean(ratio * adv)

    np.testing.assert_allclose(problem.g, jax.grad(per_sample)(theta, reward_adv), rtol=1e-5,
                               atol=1e-7)
    # B = T · ∇ mean(ratio · Â_C): episode units, T = the batch's mean episode length (200).
    np.testing.assert_allclose(problem.B[:, 0], 200.0 * jax.grad(per_sample)(theta, cost_adv[:, 0]),
                               rtol=1e-5, atol=1e-6)

    def kl(flat):
        mean, log_std = networks.policy.apply(unravel(flat), batch.observations)
        return gaussian_kl(batch.old_mean, batch.old_log_std, mean, log_std).mean()

    hessian = jax.hessian(kl)(theta)
    v = jax.random.normal(jax.random.PRNGKey(5), theta.shape)
    np.testing.assert_allclose(problem.fvp(v), hessian @ v, rtol=1e-4, atol=1e-6)


def test_line_search_keeps_the_policy_when_nothing_passes(setup):
    networks, params, batch, reward_adv, cost_adv = setup
    config = TrustRegionParams(line_search_steps=5)
    problem = policy_problem(networks, config, params, batch, reward_adv, cost_adv,
                             jax.random.PRNGKey(4))
    # Descending the reward surrogate never improves it: every candidate fails.
    outcome = line_search(problem, -0.1 * problem.g, config)
    assert not bool(outcome.accepted) and float(outcome.fraction) == 0.0
    np.testing.assert_array_equal(outcome.theta, problem.theta)
    # Ascending a little passes (small KL, surrogate improved).
    outcome = line_search(problem, 1e-3 * problem.g / jnp.linalg.norm(problem.g), config)
    assert bool(outcome.accepted) and float(outcome.reward_improvement) > 0


def test_cost_test_rejects_steps_that_raise_a_violated_constraint(setup):
    networks, params, batch, reward_adv, cost_adv = setup
    config = TrustRegionParams(line_search_steps=5)
    problem = policy_problem(networks, config, params, batch, reward_adv, cost_adv,
                             jax.random.PRNGKey(4))
    up_cost = 1e-3 * problem.B[:, 0] / jnp.linalg.norm(problem.B[:, 0])
    # Violated constraint (c = 2 > 0): any increase of the cost surrogate is refused.
    outcome = line_search(problem, up_cost, config, constraint=jnp.array([2.0]), recovery=True)
    assert not bool(outcome.accepted)
    # Satisfied with slack (c = −5): the small increase fits within max(−c, 0).
    outcome = line_search(problem, up_cost, config, constraint=jnp.array([-5.0]), recovery=True)
    assert bool(outcome.accepted)
