"""Minibatch permutations: valid, equal to stable sorts by the round's random bits, uniform;
minibatches of a batch they do not divide: equal, distinct, every sample drawn."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from saferl.core.shuffle import minibatch_indices, permutation, permutation_rounds


@pytest.mark.parametrize("n", [0, 1, 2, 3, 17, 1000, 12_800, (1 << 14) + 1])
def test_every_index_appears_once(n):
    perm = np.asarray(permutation(jax.random.PRNGKey(n), n))
    assert perm.dtype == np.int32 and sorted(perm.tolist()) == list(range(n))


def test_same_key_same_permutation_other_key_another():
    a, b = (np.asarray(permutation(jax.random.PRNGKey(s), 12_800)) for s in (0, 0))
    c = np.asarray(permutation(jax.random.PRNGKey(1), 12_800))
    assert (a == b).all() and not (a == c).all()


@pytest.mark.parametrize("n", [5, 12_800, 1 << 20])
def test_equals_rounds_of_stable_sorts_by_the_random_bits(n):
    # Oracle: numpy's stable argsort of each round's random high bits, applied in turn.
    key = jax.random.PRNGKey(3)
    index_bits, rounds = permutation_rounds(n)
    order = np.arange(n)
    for round_key in jax.random.split(key, rounds):
        bits = np.asarray(jax.random.bits(round_key, (n,), jnp.uint32)) >> index_bits
        order = order[np.argsort(bits, kind="stable")]
    assert (np.asarray(permutation(key, n)) == order).all()


def test_rounds_reach_n_cubed_random_bits():
    for n in (2, 3, 100, 12_800, 1 << 20, 1 << 24):
        index_bits, rounds = permutation_rounds(n)
        assert (1 << (index_bits - 1)) < n <= (1 << index_bits)
        assert (32 - index_bits) * rounds >= 3 * np.log2(n)
    assert permutation_rounds(12_800) == (14, 3)


def test_all_orders_of_four_are_equally_likely():
    draws = 24_000
    keys = jax.random.split(jax.random.PRNGKey(0), draws)
    perms = np.asarray(jax.vmap(lambda k: permutation(k, 4))(keys))
    index = {p: i for i, p in enumerate(itertools.permutations(range(4)))}
    counts = np.bincount([index[tuple(p)] for p in perms.tolist()], minlength=24)
    assert stats.chisquare(counts).pvalue > 1e-3, counts


def test_positions_are_uniform_with_several_rounds():
    # 12,800 elements take 3 rounds; where element 0 and the last element land is uniform.
    keys = jax.random.split(jax.random.PRNGKey(1), 2_000)
    perms = np.asarray(jax.vmap(lambda k: permutation(k, 12_800))(keys))
    for element in (0, 12_799):
        where = np.argmax(perms == element, axis=1) / 12_800
        assert stats.kstest(where, "uniform").pvalue > 1e-3


def test_sizes_above_the_packed_limit_use_jax(monkeypatch):
    monkeypatch.setattr("saferl.core.shuffle.MAX_PACKED_SIZE", 100)
    key = jax.random.PRNGKey(4)
    assert (np.asarray(permutation(key, 101)) == np.asarray(jax.random.permutation(key, 101))).all()


def test_negative_sizes_are_refused():
    with pytest.raises(ValueError, match="n >= 0; got -1"):
        permutation(jax.random.PRNGKey(0), -1)


@pytest.mark.parametrize("size,count", [(12, 4), (13, 4), (6000, 20), (6001, 20), (7, 7)])
def test_minibatches_are_equal_and_distinct(size, count):
    key = jax.random.PRNGKey(size)
    order = np.asarray(minibatch_indices(key, size, count))
    assert order.shape == (count, size // count)
    assert len(set(order.ravel().tolist())) == count * (size // count)
    assert set(order.ravel().tolist()) <= set(range(size))
    if size % count == 0:  # dividing batches: exactly the permutation, so no number changes
        assert (order.ravel() == np.asarray(permutation(key, size))).all()


def test_left_over_samples_change_from_pass_to_pass():
    # 13 samples in 4 minibatches of 3: one sits out each pass, each sample in turn.
    keys = jax.random.split(jax.random.PRNGKey(0), 1300)
    orders = np.asarray(jax.vmap(lambda k: minibatch_indices(k, 13, 4))(keys))
    left_out = [(set(range(13)) - set(o.ravel().tolist())).pop() for o in orders]
    counts = np.bincount(left_out, minlength=13)
    assert stats.chisquare(counts).pvalue > 1e-3, counts


@pytest.mark.parametrize("count", [0, 14])
def test_minibatch_count_must_fit_the_batch(count):
    with pytest.raises(ValueError, match="1 <= count <= size"):
        minibatch_indices(jax.random.PRNGKey(0), 13, count)
