"""Reverse mode keeps no array of x's size between forward and backward.

Every method runs under ``jax.checkpoint`` (masking.apply_mask; cutout), so what reverse mode
saves for the backward pass is the key and a few scalars, and the backward pass draws the mask
again from the key. The residuals are read with the public
``jax.ad_checkpoint.print_saved_residuals`` (``saved_residuals`` itself is not public in jax
0.10.2), one line per residual that starts with its type, e.g. ``f32[4,8]`` or ``key<fry>[]``.
"""

import contextlib
import io
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

import jaxdrop

X = jax.random.uniform(jax.random.key(1), (4, 16, 16, 8), jnp.float32, 0.5, 2.0)

# name: (key, x, keep_prob) -> y. Cutout has no keep_prob: the traced scalar is its fill.
FUNCTIONS = {
    "dropout": lambda k, x, p: jaxdrop.dropout(k, x, p),
    "dropblock": lambda k, x, p: jaxdrop.dropblock(k, x, p, 5),
    "spatial_dropout": lambda k, x, p: jaxdrop.spatial_dropout(k, x, p),
    "drop_path": lambda k, x, p: jaxdrop.drop_path(k, x, p),
    "dropconnect": lambda k, x, p: jaxdrop.dropconnect(k, {"w": x}, p)["w"],
    "cutout": lambda k, x, p: jaxdrop.cutout(k, x, 5, fill=p - 0.9),
}


def residual_sizes(f, *args) -> list[int]:
    """Element counts of the residuals that reverse mode saves for f at args."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_saved_residuals(f, *args)
    sizes = []
    for line in out.getvalue().splitlines():
        match = re.match(r"\S+?\[([\d,]*)\]", line)
        assert match, line  # every line starts with a type
        dims = match.group(1)
        sizes.append(math.prod(int(d) for d in dims.split(",")) if dims else 1)
    return sizes


@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize("traced", [False, True], ids=["python_keep_prob", "traced_keep_prob"])
@pytest.mark.parametrize("batching", ["batched", "vmap"])
def test_residuals_are_much_smaller_than_x(name, traced, batching, key):
    fn = FUNCTIONS[name]
    if batching == "batched":
        call = fn
    else:  # one key per example

        def call(k, x, p):
            keys = jax.random.split(k, x.shape[0])
            return jax.vmap(lambda k, x: fn(k, x, p))(keys, x)

    if traced:  # keep_prob is an argument of the differentiated function, hence traced
        sizes = residual_sizes(lambda x, p: jnp.sum(call(key, x, p)), X, jnp.float32(0.9))
    else:
        sizes = residual_sizes(lambda x: jnp.sum(call(key, x, 0.9)), X)
    assert sizes  # at least the key
    assert max(sizes) < X.size / 8, sizes


def test_residuals_of_the_users_function_are_kept(key):
    # The measure is not blind: a nonlinearity after dropout needs its input (an x-sized array),
    # and flax.linen.Dropout, which keeps its mask, shows x-sized residuals of its own.
    sizes = residual_sizes(lambda x: jnp.sum(jnp.sin(jaxdrop.dropout(key, x, 0.9))), X)
    assert sorted(sizes)[-1] == X.size and sorted(sizes)[-2] < X.size / 8
    dropout = nn.Dropout(0.1, deterministic=False)
    flax_sizes = residual_sizes(lambda x: jnp.sum(dropout.apply({}, x, rngs={"dropout": key})), X)
    assert max(flax_sizes) >= X.size


@pytest.mark.slow  # eager and jitted
@pytest.mark.parametrize(
    ("dtype", "options"),
    [
        (jnp.float32, {}),  # Default settings: per-channel masks, normalize="actual".
        (jnp.bfloat16, {"normalize": "expected", "broadcast_dims": (-1,)}),
    ],
)
def test_backward_mask_is_the_forward_mask(key, dtype, options):
    # With x = 1 the output is mask * scale, and so is the gradient of sum(y): the backward
    # pass drew exactly the forward's mask and scale again.
    x = jnp.ones((2, 16, 16, 8), dtype)
    for fn in (jax.jit, lambda f: f):
        y, vjp_fn = fn(
            lambda x: jax.vjp(lambda x: jaxdrop.dropblock(key, x, 0.8, 5, **options), x)
        )(x)
        (grad,) = vjp_fn(jnp.ones_like(y))
        np.testing.assert_array_equal(np.asarray(grad, np.float32), np.asarray(y, np.float32))
        assert 0 < float(jnp.mean(y == 0)) < 0.5


@pytest.mark.slow
def test_grad_under_an_outer_checkpoint_and_scan(key):
    # The user's own jax.checkpoint (remat of a whole block) and lax.scan over layers wrap the
    # inner checkpoint: the gradients equal those of the plain function.
    keys = jax.random.split(key, 3)
    weights = jax.random.normal(jax.random.key(2), (3, 8, 8)) / 3

    def layer(h, inputs):
        w, k = inputs
        h = jnp.tanh(h @ w)
        return jaxdrop.dropblock(k, h.reshape(1, 4, 4, 8), 0.8, 2).reshape(h.shape), None

    def loss(weights, layer_fn):
        h = X[:2, :8, 0, :].reshape(16, 8)
        h, _ = jax.lax.scan(layer_fn, h, (weights, keys))
        return jnp.sum(h**2)

    def unrolled(weights):
        h = X[:2, :8, 0, :].reshape(16, 8)
        for i in range(3):
            h, _ = layer(h, (weights[i], keys[i]))
        return jnp.sum(h**2)

    expected = jax.grad(unrolled)(weights)
    for layer_fn in (layer, jax.checkpoint(layer)):
        got = jax.jit(jax.grad(loss), static_argnums=1)(weights, layer_fn)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
