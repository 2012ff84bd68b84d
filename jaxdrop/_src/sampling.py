"""Sampling the seed grid of DropBlock: independent Bernoulli(gamma) draws, one per position."""

from __future__ import annotations

import jax


def bernoulli_seeds(rng: jax.Array, gamma: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Boolean array of ``shape`` whose entries are independent Bernoulli(``gamma``) draws.

    ``gamma`` is a float32 scalar in [0, 1]; a float32 probability keeps the draw exact to 2**-23
    (``jax.random.bernoulli`` samples its uniform in the dtype of ``p``, and a bfloat16 ``p`` of
    4e-4 gives about 19 times too many hits).
    """
    return jax.random.bernoulli(rng, gamma, shape)
