"""Q-critics: the split first layer (an MLP of a pair) equals an MLP on the concatenated input,
and broadcasts."""

import jax
import jax.numpy as jnp
import numpy as np

from saferl.core.networks import MLP, QCritics


def test_q_critics_equal_an_mlp_on_the_concatenated_input():
    critics = QCritics(2, 1, (32, 16), "relu")
    obs = jax.random.normal(jax.random.PRNGKey(0), (5, 8))
    action = jnp.tanh(jax.random.normal(jax.random.PRNGKey(1), (5, 2)))
    params = critics.init(jax.random.PRNGKey(2), obs, action)
    mlp = MLP((32, 16), 1, "relu")
    x = jnp.concatenate([obs, action], axis=-1)
    expected = jnp.concatenate(
        [mlp.apply({"params": params["params"][name]}, x)
         for name in ("reward_0", "reward_1", "cost_0")], axis=-1)
    np.testing.assert_allclose(critics.apply(params, obs, action), expected, rtol=1e-5,
                               atol=1e-6)
    # Same layout and initial values as an MLP initialised on the concatenation.
    on_concatenation = mlp.init(jax.random.PRNGKey(3), x)
    on_pair = mlp.init(jax.random.PRNGKey(3), obs, action)
    assert (jax.tree_util.tree_structure(on_concatenation)
            == jax.tree_util.tree_structure(on_pair))
    for a, b in zip(jax.tree_util.tree_leaves(on_concatenation),
                    jax.tree_util.tree_leaves(on_pair), strict=True):
        np.testing.assert_array_equal(a, b)


def test_q_critics_score_several_actions_per_state_by_broadcasting():
    critics = QCritics(1, 2, (16, 16), "relu")
    obs = jax.random.normal(jax.random.PRNGKey(0), (6, 4))
    actions = jax.random.normal(jax.random.PRNGKey(1), (3, 6, 2))
    params = critics.init(jax.random.PRNGKey(2), obs, actions[0])
    broadcast = critics.apply(params, obs, actions)
    assert broadcast.shape == (3, 6, 3)
    for k in range(3):
        np.testing.assert_allclose(broadcast[k], critics.apply(params, obs, actions[k]),
                                   rtol=1e-6, atol=1e-6)


def test_pair_layer_is_the_same_function_for_small_and_large_action_inputs():
    """Up to ``SMALL_ACTION_DIM`` action inputs the pair layer adds them element by element;
    above, by a matrix product: both equal ``nn.Dense`` on the concatenation."""
    import flax.linen as nn

    from saferl.core.networks import SMALL_ACTION_DIM, PairDense

    for action_dim in (1, SMALL_ACTION_DIM, SMALL_ACTION_DIM + 3):
        obs = jax.random.normal(jax.random.PRNGKey(0), (4, 7, 5))
        action = jax.random.normal(jax.random.PRNGKey(1), (4, 7, action_dim))
        dense = nn.Dense(6, bias_init=nn.initializers.normal(1.0))
        params = dense.init(jax.random.PRNGKey(2), jnp.concatenate([obs, action], -1))
        expected = dense.apply(params, jnp.concatenate([obs, action], -1))
        np.testing.assert_allclose(PairDense(6).apply(params, obs, action), expected,
                                   rtol=1e-5, atol=1e-5)
