"""CCPO with one behaviour threshold, no fine-tuning stage and the threshold input held fixed is
CVPO: one update from the same state, batch and key gives the same numbers
(docs/algorithms/ccpo.md).

In float64 (its own module: ``enable_x64`` lasts for the module). The two updates sum the same
terms in different orders (CCPO's per-condition means, the extra zero input of the first
layers), and the E-step's Newton solver stops at a small relative decrement (1e-6 in float32,
1e-10 in float64), so runs that round differently can stop one Newton step apart: the duals
then differ by about the square root of that decrement, and Adam's early ``lr·g/(|g| + ε)``
steps pass the difference on to the parameters. In float32 that is a few 1e-5 in the actor's
parameters (measured 5.5e-5, a fifth of one Adam step); in float64 it is at most 2e-8.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from saferl.algos import ccpo, cvpo
from saferl.algos.off_policy import Limits
from saferl.core.conditioning import ConditionedQCritics
from tests.algos.test_ccpo import SPEC, make, random_batch
from tests.core.conftest import enable_x64  # noqa: F401  (the fixture, for this module)


def embed(source, target, obs_dim, rng):
    """``source`` (CVPO) parameters inside ``target``'s (CCPO) tree: the first layers' extra
    rows (the threshold input, after the observation rows) get random values."""
    flat_target = flax.traverse_util.flatten_dict(target)
    flat_source = flax.traverse_util.flatten_dict(source)
    out = {}
    for path, leaf in flat_target.items():
        value = np.asarray(flat_source[path[:1] + path[2:]], np.float64)
        if value.shape != leaf.shape:
            extra = rng.normal(size=(leaf.shape[0] - value.shape[0], *value.shape[1:]))
            value = np.concatenate([value[:obs_dim], extra, value[obs_dim:]])
        out[path] = jnp.asarray(value)
    return flax.traverse_util.unflatten_dict(out)


def strip(params, reference, obs_dim):
    """``params`` (CCPO) without the threshold rows, in ``reference``'s (CVPO) tree."""
    flat = flax.traverse_util.flatten_dict(params)
    flat_reference = flax.traverse_util.flatten_dict(reference)
    out = {}
    for path, leaf in flat.items():
        target = flat_reference[path[:1] + path[2:]]
        if leaf.shape != target.shape:
            extra = leaf.shape[0] - target.shape[0]
            leaf = jnp.concatenate([leaf[:obs_dim], leaf[obs_dim + extra:]])
        out[path[:1] + path[2:]] = leaf
    return flax.traverse_util.unflatten_dict(out)


def to64(tree):
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64)
                                  if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def test_one_fixed_condition_is_cvpo(enable_x64):  # noqa: F811
    """``vve=False`` (critics of ``([s, ε̃], a)``) and ``ε`` at the centre of ``E``, so ``ε̃ = 0``
    and the threshold inputs contribute nothing whatever their (random) weights: three CCPO
    updates equal three CVPO updates from the same parameters, batches and keys: parameters
    and metrics to 1e-6 (absolute and relative; under 0.4 % of one Adam step of the actor,
    50 × the largest difference measured), the duals to a relative 2e-3 (near its minimum the
    dual is flat, so the stopping rule pins ``g`` to 1e-10 but ``(η, λ)`` only to a few 1e-4:
    measured 3.5e-4), and the threshold weights never move (zero input, zero gradient, zero Adam
    step).
    Twice: with the fresh cost critic (the constraint is slack, λ = 0) and with its output
    shifted so that the constraint binds in some update (0 < λ < the cap)."""
    # Enough dual iterations to converge: with fewer, two runs whose sums round differently can
    # stop at different points of a flat dual.
    config, networks, fresh = make({"behaviour_thresholds": (40.0,), "pretrain_fraction": 1.0,
                                    "vve": False}, {"dual_iterations": 40})
    assert isinstance(networks.critics, ConditionedQCritics)
    reference = cvpo.CVPOConfig(run=config.run, cvpo=config.cvpo)
    cvpo_networks = cvpo.make_networks(reference, SPEC)
    limits = Limits(jnp.asarray([40.0]), networks.q_factor * jnp.asarray([40.0]))
    cvpo_update = jax.jit(lambda a, b, k: cvpo.update(reference, cvpo_networks, a, b, limits, k))
    ccpo_update = jax.jit(lambda a, b, k: ccpo.update(config, networks, a, b, limits, k))
    actor_tx, critic_tx = optax.adam(config.run.actor_lr), optax.adam(config.run.critic_lr)
    fresh = to64(fresh)
    close = lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)  # noqa: E731
    for binding in (False, True):
        rng = np.random.default_rng(0)
        cvpo_agent = to64(cvpo.init_agent(reference, SPEC, cvpo_networks, jax.random.PRNGKey(0)))
        if binding:  # Q_c ≈ ε_Q − 0.08 ± 0.12 within a state (fresh: −0.13 ± 0.12)
            critic = flax.traverse_util.flatten_dict(cvpo_agent.critic_params)
            bias = ("params", "cost_0", "Dense_2", "bias")
            critic[bias] = critic[bias] + float(limits.q[0]) + 0.05
            critic = flax.traverse_util.unflatten_dict(critic)
            cvpo_agent = cvpo_agent._replace(critic_params=critic, target_critic_params=critic)
        actor = embed(cvpo_agent.actor_params, fresh.actor_params, SPEC.obs_dim, rng)
        critics = embed(cvpo_agent.critic_params, fresh.critic_params, SPEC.obs_dim, rng)
        agent = fresh._replace(actor_params=actor, target_actor_params=actor,
                               critic_params=critics, target_critic_params=critics,
                               actor_opt_state=actor_tx.init(actor),
                               critic_opt_state=critic_tx.init(critics))
        lambdas = []
        for i in range(3):
            batch, key = to64(random_batch(rng)), jax.random.PRNGKey(100 + i)
            cvpo_agent, cvpo_metrics = cvpo_update(cvpo_agent, batch, key)
            agent, metrics = ccpo_update(agent, batch, key)
            for ours, theirs in ((agent.actor_params, cvpo_agent.actor_params),
                                 (agent.critic_params, cvpo_agent.critic_params),
                                 (agent.target_actor_params, cvpo_agent.target_actor_params)):
                jax.tree_util.tree_map(close, strip(ours, theirs, SPEC.obs_dim), theirs)
            np.testing.assert_allclose(agent.duals[0], cvpo_agent.dual, rtol=2e-3, atol=1e-8)
            close(agent.kl_multipliers[0], cvpo_agent.kl_multipliers)
            for name in ("loss/critic", "loss/actor", "q/reward", "q/cost_0"):
                close(metrics[name], cvpo_metrics[name])
            assert float(metrics["ccpo/step_fraction"]) == float(
                cvpo_metrics["cvpo/step_fraction"])
            lambdas.append(float(cvpo_agent.dual[1]))
        if binding:
            assert any(0 < x < config.cvpo.max_multiplier for x in lambdas), lambdas
        else:
            assert max(lambdas) == 0, lambdas
        first = flax.traverse_util.flatten_dict(agent.actor_params)
        start = flax.traverse_util.flatten_dict(actor)
        kernel = ("params", "actor", "MLP_0", "Dense_0", "kernel")
        np.testing.assert_array_equal(first[kernel][SPEC.obs_dim], start[kernel][SPEC.obs_dim])
