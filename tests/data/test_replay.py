"""Replay buffer: ring writes, n-step windows against a direct loop, sampling statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saferl.data.replay import (
    Transitions,
    replay_add,
    replay_init,
    replay_resize,
    replay_sample,
)


def indexed_transitions(start, steps, num_envs, rng, done_rate=0.15, conditions=False):
    """Transitions whose observation encodes (global step, env) so samples reveal their index
    (and, with ``conditions``, whose stored condition ``[2]`` does too)."""
    t = np.arange(start, start + steps, dtype=np.float32)[:, None].repeat(num_envs, 1)
    env = np.arange(num_envs, dtype=np.float32)[None].repeat(steps, 0)
    obs = np.stack([t, env], -1)
    terminated = rng.random((steps, num_envs)) < done_rate
    truncated = (rng.random((steps, num_envs)) < done_rate) & ~terminated
    return Transitions(jnp.asarray(obs), jnp.asarray(rng.normal(size=(steps, num_envs, 1)),
                                                     jnp.float32),
                       jnp.asarray(rng.normal(size=(steps, num_envs)), jnp.float32),
                       jnp.asarray(rng.random((steps, num_envs, 2)), jnp.float32),
                       jnp.asarray(terminated), jnp.asarray(truncated),
                       jnp.asarray(obs + 0.5), jnp.asarray(3.0 * obs) if conditions else None)


def concat(parts):
    return Transitions(*(None if getattr(parts[0], f) is None else
                         np.concatenate([np.asarray(getattr(p, f)) for p in parts])
                         for f in Transitions._fields))


def test_ring_overwrites_the_oldest_rows():
    rng = np.random.default_rng(0)
    buffer = replay_init(5, 2, 2, 1, 2)
    buffer = replay_add(buffer, indexed_transitions(0, 3, 2, rng))
    assert int(buffer.position) == 3 and int(buffer.size) == 3
    buffer = replay_add(buffer, indexed_transitions(3, 4, 2, rng))
    assert int(buffer.position) == 2 and int(buffer.size) == 5
    # Rows hold steps 5, 6 (wrapped) then 2, 3, 4.
    np.testing.assert_array_equal(np.asarray(buffer.observations[:, 0, 0]), [5, 6, 2, 3, 4])


@pytest.mark.parametrize("n_step", [1, 3])
def test_n_step_windows_match_a_direct_loop(n_step):
    rng = np.random.default_rng(1)
    gamma = 0.9
    rows, num_envs = 7, 3
    parts = [indexed_transitions(0, 6, num_envs, rng, 0.25, conditions=True),
             indexed_transitions(6, 5, num_envs, rng, 0.25, conditions=True)]
    buffer = replay_init(rows, num_envs, 2, 1, 2, num_conditions=2)
    for part in parts:
        buffer = replay_add(buffer, part)
    data = concat(parts)  # the whole history, indexed by global step
    batch = replay_sample(buffer, jax.random.PRNGKey(3), 512, n_step, gamma)
    starts = set()
    for i in range(512):
        step, env = (int(x) for x in np.asarray(batch.observations[i]))
        starts.add(step)
        reward, costs, discount = 0.0, np.zeros(2), 1.0
        for k in range(n_step):
            reward += gamma**k * float(data.rewards[step + k, env])
            costs += gamma**k * np.asarray(data.costs[step + k, env])
            last = step + k
            discount = 0.0 if data.terminated[last, env] else gamma ** (k + 1)
            if data.terminated[last, env] or data.truncated[last, env]:
                break
        assert float(batch.rewards[i]) == pytest.approx(reward, rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(np.asarray(batch.costs[i]), costs, rtol=1e-5, atol=1e-6)
        assert float(batch.discount[i]) == pytest.approx(discount, rel=1e-6)
        # Bootstraps from the true next observation of the window's last step.
        np.testing.assert_array_equal(np.asarray(batch.next_observations[i]),
                                      np.asarray(data.next_observations[last, env]))
        np.testing.assert_array_equal(np.asarray(batch.actions[i]),
                                      np.asarray(data.actions[step, env]))
        # The condition the window's first step was collected under.
        np.testing.assert_array_equal(np.asarray(batch.conditions[i]), [3.0 * step, 3.0 * env])
    # Only the 7 stored rows (steps 4..10) whose whole window is stored can start a window.
    assert starts == set(range(4, 11 - (n_step - 1)))


def test_sampling_is_uniform_over_valid_starts():
    rng = np.random.default_rng(2)
    num_envs, n_step = 4, 2
    buffer = replay_init(10, num_envs, 2, 1, 2)
    buffer = replay_add(buffer, indexed_transitions(0, 6, num_envs, rng))
    buffer = replay_add(buffer, indexed_transitions(6, 7, num_envs, rng))  # wraps: steps 3..12
    batch = replay_sample(buffer, jax.random.PRNGKey(0), 90_000, n_step, 0.99)
    obs = np.asarray(batch.observations).astype(int)
    cells = (obs[:, 0] - 3) * num_envs + obs[:, 1]
    valid = (10 - (n_step - 1)) * num_envs  # 36 (row, env) starts
    counts = np.bincount(cells, minlength=valid)
    assert len(counts) == valid and counts.min() > 0
    expected = len(cells) / valid
    chi_square = float(np.sum((counts - expected) ** 2 / expected))
    # 35 degrees of freedom: the 99.9% quantile is 66.6.
    assert chi_square < 66.6


def test_adding_more_rows_than_capacity_is_an_error():
    buffer = replay_init(2, 1, 2, 1, 1)
    with pytest.raises(ValueError, match="cannot add 3 rows"):
        replay_add(buffer, indexed_transitions(0, 3, 1, np.random.default_rng(0))._replace(
            costs=jnp.zeros((3, 1, 1))))


def test_a_buffer_of_conditions_refuses_transitions_without_them():
    buffer = replay_init(4, 1, 2, 1, 2, num_conditions=1)
    with pytest.raises(ValueError, match="stores conditions of length 1; the transitions to "
                                         "add have none"):
        replay_add(buffer, indexed_transitions(0, 2, 1, np.random.default_rng(0)))
    # Without conditions the buffer stores a width-0 array and batches carry [B, 0].
    plain = replay_add(replay_init(4, 1, 2, 1, 2), indexed_transitions(0, 2, 1,
                                                                    np.random.default_rng(0)))
    assert plain.conditions.shape == (4, 1, 0)
    assert replay_sample(plain, jax.random.PRNGKey(0), 8).conditions.shape == (8, 0)


def test_resize_keeps_the_newest_rows_in_time_order():
    rng = np.random.default_rng(3)
    buffer = replay_init(5, 2, 2, 1, 2, num_conditions=2)
    buffer = replay_add(buffer, indexed_transitions(0, 4, 2, rng, conditions=True))
    buffer = replay_add(buffer, indexed_transitions(4, 3, 2, rng, conditions=True))  # 2..6
    grown = replay_resize(buffer, 8)
    assert int(grown.size) == 5 and int(grown.position) == 5
    np.testing.assert_array_equal(np.asarray(grown.observations[:5, 0, 0]), [2, 3, 4, 5, 6])
    np.testing.assert_array_equal(np.asarray(grown.conditions[:5, 0, 0]), [6, 9, 12, 15, 18])
    grown = replay_add(grown, indexed_transitions(7, 2, 2, rng, conditions=True))
    np.testing.assert_array_equal(np.asarray(grown.observations[:7, 1, 0]), np.arange(2, 9))
    shrunk = replay_resize(buffer, 3)
    np.testing.assert_array_equal(np.asarray(shrunk.observations[:, 0, 0]), [4, 5, 6])
    assert int(shrunk.position) == 0 and int(shrunk.size) == 3
