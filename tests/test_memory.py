"""No per-unit residual: between forward and backward, `dropblock` keeps the key and a few scalars.

The backward pass rebuilds the mask from the key (masking.apply_mask's custom VJP), so what
`jax.vjp` holds for the backward pass is tiny compared with `x`, and the rebuilt mask is the
forward's mask exactly.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrop


def _residual_bytes(vjp_fn) -> int:
    """Bytes of every array the vjp closure holds (typed keys report their key data's bytes)."""
    return sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(vjp_fn))


@pytest.mark.parametrize(
    ("dtype", "options"),
    [
        (jnp.float32, {}),  # Default settings: per-channel masks, normalize="actual".
        (jnp.bfloat16, {}),
        pytest.param(
            jnp.float32, {"normalize": "expected", "broadcast_dims": (-1,)}, marks=pytest.mark.slow
        ),
    ],
)
def test_vjp_residuals_are_tiny(key, dtype, options):
    x = jnp.ones((8, 28, 28, 64), dtype)
    y, vjp_fn = jax.vjp(lambda x: jaxdrop.dropblock(key, x, 0.9, 7, **options), x)
    assert _residual_bytes(vjp_fn) <= 0.05 * x.nbytes
    # With x = 1 the output is mask * scale, and so is the gradient of sum(y): the backward pass
    # rebuilt exactly the forward's mask and scale.
    (grad,) = vjp_fn(jnp.ones_like(y))
    np.testing.assert_array_equal(np.asarray(grad, np.float32), np.asarray(y, np.float32))
    assert 0 < float(jnp.mean(y == 0)) < 0.2


@pytest.mark.slow
def test_traced_keep_prob_backward_matches_forward(key):
    x = jnp.ones((4, 28, 28, 32))

    @jax.jit
    def forward_and_grad(keep_prob):
        y, vjp_fn = jax.vjp(lambda x: jaxdrop.dropblock(key, x, keep_prob, 5), x)
        return y, vjp_fn(jnp.ones_like(y))[0]

    for keep_prob in (0.95, 0.7):
        y, grad = forward_and_grad(jnp.float32(keep_prob))
        np.testing.assert_array_equal(np.asarray(grad), np.asarray(y))


def test_the_measure_sees_a_stored_mask(key):
    # The same measurement on flax.linen.Dropout, which keeps its mask for the backward pass,
    # exceeds the bound: a bool per unit is already 25% of a float32 x.
    x = jnp.ones((8, 28, 28, 64))
    dropout = nn.Dropout(0.1, deterministic=False)
    _, vjp_fn = jax.vjp(lambda x: dropout.apply({}, x, rngs={"dropout": key}), x)
    assert _residual_bytes(vjp_fn) >= 0.25 * x.nbytes
