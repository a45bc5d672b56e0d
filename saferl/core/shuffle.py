"""Random permutations for minibatch shuffling, fast on XLA's CPU backend.

``jax.random.permutation`` shuffles by sorting (random key, index) *pairs*, two or more rounds.
XLA's CPU runtime sorts a single ``uint32`` array on a fast path but calls a compiled comparator
for every comparison of a multi-operand sort, several times slower than a plain sort; PPO
shuffles its batch every epoch, so ``jax.random.permutation`` was a sizeable share of a default
``ppo_lag`` update (benchmarks/RESULTS.md D2).

:func:`permutation` gives the same guarantee from plain sorts. Each round draws fresh random
bits, packs them above the element's current position into one ``uint32`` (random high bits,
position low bits) and sorts that array: a stable sort of the current sequence by the random
bits. Stable sorts by keys k_1, …, k_R applied in turn order the elements by the composite key
(k_R, …, k_1) (the least-significant-digit radix-sort argument), so the result is an exactly
uniform permutation unless two composite keys tie, which has probability at most
n² / 2^(b·R + 1) for b random bits per round. Rounds are chosen so that 2^(b·R) ≥ n³, the
criterion ``jax.random.permutation`` uses: the distance from uniform is at most 1 / (2n).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

#: Sizes up to this use packed plain sorts (at least 8 random bits per round remain).
MAX_PACKED_SIZE = 1 << 24


def permutation_rounds(n: int) -> tuple[int, int]:
    """``(index_bits, rounds)`` of :func:`permutation` for ``n`` elements (``2 ≤ n``)."""
    index_bits = (n - 1).bit_length()
    random_bits = 32 - index_bits
    return index_bits, max(1, math.ceil(3 * math.log2(n) / random_bits))


def permutation(key: jax.Array, n: int) -> jax.Array:
    """A uniformly random permutation of ``range(n)`` (int32), within 1 / (2n) of uniform.

    Args:
        key: A JAX PRNG key.
        n: The number of elements (a Python int, ≥ 0).

    Returns:
        ``[n]`` int32 array holding each of ``0 … n − 1`` once. Sizes above
        :data:`MAX_PACKED_SIZE` use ``jax.random.permutation``.
    """
    if n < 0:
        raise ValueError(f"permutation needs n >= 0; got {n}.")
    if n <= 1:
        return jnp.arange(n, dtype=jnp.int32)
    if n > MAX_PACKED_SIZE:
        return jax.random.permutation(key, n).astype(jnp.int32)
    index_bits, rounds = permutation_rounds(n)
    positions = jnp.arange(n, dtype=jnp.uint32)
    low = jnp.uint32((1 << index_bits) - 1)
    order = positions
    for round_key in jax.random.split(key, rounds):
        bits = jax.random.bits(round_key, (n,), jnp.uint32)
        packed = (bits & ~low) | positions  # random high bits, current position low bits
        order = order[jax.lax.sort(packed) & low]
    return order.astype(jnp.int32)


def minibatch_indices(key: jax.Array, size: int, count: int) -> jax.Array:
    """Indices of ``count`` equal minibatches of one shuffled pass over ``size`` samples.

    Each minibatch holds ``size // count`` samples. When ``count`` does not divide ``size``, the
    ``size % count`` samples at the end of the shuffle (fewer than ``count``, different on every
    call) sit this pass out: the passes stay equal-shaped for ``lax.scan`` and no sample is seen
    twice in one pass. When it divides, this is ``permutation(key, size)`` reshaped.

    Args:
        key: A JAX PRNG key.
        size: Samples in the batch (a Python int).
        count: Minibatches per pass, ``1 ≤ count ≤ size``.

    Returns:
        ``[count, size // count]`` int32 indices, all distinct.
    """
    if not 1 <= count <= size:
        raise ValueError(f"minibatch_indices needs 1 <= count <= size; got count={count}, "
                         f"size={size}.")
    per = size // count
    return permutation(key, size)[: count * per].reshape(count, per)
