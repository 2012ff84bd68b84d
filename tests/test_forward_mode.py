"""Forward-mode differentiation (jvp, linearize, jacfwd, hessian) through every function and module.

For a fixed key every method is linear in ``x``: ``y = where(mask, x * scale, 0)`` (Cutout:
``where(mask, x, fill)``), so the tangent must be ``where(mask, t * scale, 0)`` with the primal's
mask and scale. Both are read off the primal output, exactly: ``x`` has no zeros (so
``mask == (y != 0)``) and its entries are powers of two (so ``x * scale`` is exact and
``y / x == scale`` on every kept unit).
"""

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

import jaxdrop
import jaxdrop.equinox


def _powers_of_two(key, shape):
    """Entries +-2**k, k in [-2, 2]: no zeros, and a product with a float32 scale is exact."""
    k_exp, k_sign = jax.random.split(key)
    exponent = jax.random.randint(k_exp, shape, -2, 3).astype(jnp.float32)
    return jnp.where(jax.random.bernoulli(k_sign, 0.5, shape), 1.0, -1.0) * 2.0**exponent


X = _powers_of_two(jax.random.key(1), (8, 5, 5, 2))


def _inputs(name):
    """A small x for the Jacobians (drop_path: 8 examples, so some are dropped), and a tangent."""
    if name.lower().replace("_", "").endswith("droppath"):
        x = X[:, :2, :2, :1]
    elif name == "dropconnect":
        x = X[0, :, :, 0]  # a (5, 5) weight matrix
    else:
        x = X[:2]
    return x, jax.random.normal(jax.random.key(2), x.shape)


# name: (x -> y for a fixed key, whether Cutout's fill semantics apply).
FUNCTIONS = {
    "dropout": lambda k, x: jaxdrop.dropout(k, x, 0.7),
    "dropblock": lambda k, x: jaxdrop.dropblock(k, x, 0.8, 3),
    "dropblock_expected": lambda k, x: jaxdrop.dropblock(k, x, 0.8, 2, normalize="expected"),
    "spatial_dropout": lambda k, x: jaxdrop.spatial_dropout(k, x, 0.7),
    "drop_path": lambda k, x: jaxdrop.drop_path(k, x, 0.6),
    "dropconnect": lambda k, x: jaxdrop.dropconnect(k, {"w": x}, 0.7)["w"],
    "cutout": lambda k, x: jaxdrop.cutout(k, x, 3),
}


def _mask_and_scale(x, y):
    """The primal's mask and scale, exactly (x: powers of two, no zeros).

    The scale is per unit: one value per call for the functions, one per example for Equinox
    modules (which see one example, so "actual" normalisation counts per example).
    """
    mask = y != 0
    assert 0 < float(jnp.mean(mask)) < 1  # the case drops something and keeps something
    return mask, jnp.where(mask, y / x, 0.0)


def _check_forward_mode(f, x, t):
    """jvp, linearize, jacfwd, hessian of f (linear in x) against where(mask, t * scale, 0)."""
    y, tangent = jax.jit(lambda x, t: jax.jvp(f, (x,), (t,)))(x, t)
    mask, scale = _mask_and_scale(x, y)
    expected = jnp.where(mask, t * scale, 0.0)
    np.testing.assert_array_equal(tangent, expected)
    y_lin, f_jvp = jax.linearize(f, x)
    np.testing.assert_array_equal(y_lin, y)
    np.testing.assert_array_equal(f_jvp(t), expected)
    # jacfwd pushes one-hot tangents: the Jacobian is diag(where(mask, scale, 0)), exactly.
    jacobian = jax.jit(jax.jacfwd(f))(x).reshape(x.size, x.size)
    np.testing.assert_array_equal(jacobian, jnp.diag(scale.ravel()))
    # Hessian of sum(f(x)**2) / 2: diag(where(mask, scale**2, 0)) (scale**2 rounds once).
    hessian = jax.jit(jax.hessian(lambda x: jnp.sum(f(x) ** 2) / 2))(x).reshape(x.size, x.size)
    np.testing.assert_allclose(hessian, jnp.diag((scale**2).ravel()), rtol=1e-6, atol=0)
    # Central finite differences along t. f is linear in x, so they have no truncation error,
    # only rounding: each of f(x +- h t) is off by at most bound * 2**-24 (bound: the largest
    # |x +- h t| times the scale, plus the rounding of x +- h t itself), and dividing their
    # difference by 2h gives at most bound * 2**-24 / h; a factor 4 covers the second rounding.
    h = 2.0**-4
    finite = (f(x + h * t) - f(x - h * t)) / (2 * h)
    bound = float(jnp.max(jnp.abs(x) + h * jnp.abs(t))) * float(jnp.max(scale))
    np.testing.assert_allclose(finite, expected, rtol=0, atol=4 * bound * 2**-24 / h)


# 7 to 15 s each on 2 idle cores: the full run only; the others stay in the quick loop.
_SLOW_FORWARD = {"dropout", "dropblock", "dropblock_expected", "dropconnect"}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW_FORWARD else n for n in FUNCTIONS],
)
def test_function_forward_mode_is_the_mask_map(name, key):
    fn = FUNCTIONS[name]
    x, t = _inputs(name)
    _check_forward_mode(lambda x: fn(key, x), x, t)


def test_forward_mode_with_a_traced_keep_prob_under_jit(key):
    @jax.jit
    def tangent(keep_prob, x, t):
        return jax.jvp(lambda x: jaxdrop.dropblock(key, x, keep_prob, 3), (x,), (t,))

    x, t = _inputs("dropblock")
    y, t_out = tangent(jnp.float32(0.8), x, t)
    mask, scale = _mask_and_scale(x, y)
    np.testing.assert_array_equal(t_out, jnp.where(mask, t * scale, 0.0))


# One representative call per module class and family: x -> y for a fixed key.
def _linen(module):
    return lambda key: lambda x: module.apply({}, x, False, rng=key)


def _nnx(module):
    return lambda key: lambda x: module(x, deterministic=False, rngs=key)


def _eqx(module):
    # Equinox modules see one example: vmap over the batch, one key per example.
    return lambda key: (
        lambda x: jax.vmap(lambda k, xi: module(xi, key=k))(jax.random.split(key, x.shape[0]), x)
    )


RNGS = nnx.Rngs(dropout=0)
UNIT_MODULES = {
    "linen.DropBlock": _linen(jaxdrop.linen.DropBlock(keep_prob=0.8, block_size=3)),
    "linen.Dropout": _linen(jaxdrop.linen.Dropout(keep_prob=0.7)),
    "linen.SpatialDropout": _linen(jaxdrop.linen.SpatialDropout(keep_prob=0.7)),
    "linen.DropPath": _linen(jaxdrop.linen.DropPath(keep_prob=0.6)),
    "linen.Cutout": _linen(jaxdrop.linen.Cutout(3)),
    "nnx.DropBlock": _nnx(jaxdrop.nnx.DropBlock(keep_prob=0.8, block_size=3, rngs=RNGS)),
    "nnx.Dropout": _nnx(jaxdrop.nnx.Dropout(keep_prob=0.7, rngs=RNGS)),
    "nnx.SpatialDropout": _nnx(jaxdrop.nnx.SpatialDropout(keep_prob=0.7, rngs=RNGS)),
    "nnx.DropPath": _nnx(jaxdrop.nnx.DropPath(keep_prob=0.6, rngs=RNGS)),
    "nnx.Cutout": _nnx(jaxdrop.nnx.Cutout(3, rngs=RNGS)),
    "equinox.DropBlock": _eqx(
        jaxdrop.equinox.DropBlock(keep_prob=0.8, block_size=3, spatial_dims=(-3, -2))
    ),
    "equinox.Dropout": _eqx(jaxdrop.equinox.Dropout(keep_prob=0.7)),
    "equinox.SpatialDropout": _eqx(
        jaxdrop.equinox.SpatialDropout(keep_prob=0.7, spatial_dims=(-3, -2))
    ),
    "equinox.DropPath": _eqx(jaxdrop.equinox.DropPath(keep_prob=0.6)),
    "equinox.Cutout": _eqx(jaxdrop.equinox.Cutout(3, spatial_dims=(-3, -2))),
}


@pytest.mark.slow  # 15 cases, each compiling jvp, linearize, jacfwd and hessian
@pytest.mark.parametrize("name", list(UNIT_MODULES))
def test_module_forward_mode_is_the_mask_map(name, key):
    x, t = _inputs(name)
    _check_forward_mode(UNIT_MODULES[name](key), x, t)


def _dense_dropconnect(family, key):
    """x -> y of a DropConnect-wrapped dense layer, and the same with jaxdrop.dropconnect."""
    if family == "linen":
        layer = jaxdrop.linen.DropConnect(nn.Dense(4), keep_prob=0.7)
        variables = layer.init(jax.random.key(3), X[0, 0], deterministic=True)
        masked = jaxdrop.dropconnect(key, variables["params"], 0.7)
        return (
            lambda x: layer.apply(variables, x, deterministic=False, rng=key),
            lambda x: nn.Dense(4).apply({"params": masked}, x),
        )
    if family == "nnx":
        linear = nnx.Linear(2, 4, rngs=nnx.Rngs(3))
        layer = jaxdrop.nnx.DropConnect(linear, keep_prob=0.7, rngs=nnx.Rngs(dropout=0))
        masked = jaxdrop.dropconnect(
            key, {"kernel": linear.kernel[...], "bias": linear.bias[...]}, 0.7
        )
        return (
            lambda x: layer(x, deterministic=False, rngs=key),
            lambda x: x @ masked["kernel"] + masked["bias"][None],
        )
    linear = eqx.nn.Linear(2, 4, key=jax.random.key(3))
    layer = jaxdrop.equinox.DropConnect(linear, keep_prob=0.7)
    masked = eqx.tree_at(
        lambda m: m.weight, linear, jaxdrop.dropconnect(key, {"w": linear.weight}, 0.7)["w"]
    )
    return lambda x: jax.vmap(lambda xi: layer(xi, key=key))(x), jax.vmap(masked)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["linen", "nnx", "equinox"])
def test_dropconnect_module_forward_mode(family, key):
    # The layer is affine in x with the masked weights: the module's tangent, linearization,
    # Jacobian and Hessian are those of the plain layer run on jaxdrop.dropconnect's weights.
    module_fn, plain_fn = _dense_dropconnect(family, key)
    x = X[0, 0]  # (5, 2): 5 examples of 2 features
    t = jax.random.normal(jax.random.key(2), x.shape)
    y, tangent = jax.jvp(module_fn, (x,), (t,))
    y_plain, tangent_plain = jax.jvp(plain_fn, (x,), (t,))
    np.testing.assert_allclose(y, y_plain, rtol=1e-6)
    np.testing.assert_allclose(tangent, tangent_plain, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        jax.linearize(module_fn, x)[1](t), tangent_plain, rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(
        jax.jacfwd(module_fn)(x), jax.jacfwd(plain_fn)(x), rtol=1e-6, atol=1e-6
    )
    loss = lambda f: lambda x: jnp.sum(f(x) ** 2)  # noqa: E731
    np.testing.assert_allclose(
        jax.hessian(loss(module_fn))(x), jax.hessian(loss(plain_fn))(x), rtol=1e-5, atol=1e-5
    )


def _network(params, x, key):
    """conv -> DropBlock -> mean pool -> dense -> dropout -> DropPath -> scalar loss."""
    k_block, k_drop, k_path = jax.random.split(key, 3)
    h = jax.lax.conv_general_dilated(
        x, params["conv"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    h = jaxdrop.dropblock(k_block, jnp.tanh(h), 0.8, 3)
    h = jnp.tanh(jnp.mean(h, axis=(1, 2)) @ params["dense"])
    h = jaxdrop.dropout(k_drop, h, 0.7)
    h = jaxdrop.drop_path(k_path, h, 0.75)
    return jnp.sum(h**2)


@pytest.mark.slow
def test_hessian_of_a_small_network_matches_finite_differences(key):
    x = jax.random.normal(jax.random.key(4), (4, 6, 6, 1))
    params = {
        "conv": jax.random.normal(jax.random.key(5), (3, 3, 1, 2)),
        "dense": jax.random.normal(jax.random.key(6), (2, 3)),
    }
    flat, unravel = ravel_pytree(params)
    loss = jax.jit(lambda p: _network(unravel(p), x, key))
    hessian = jax.jit(jax.hessian(loss))(flat)
    assert hessian.shape == (flat.size, flat.size)
    np.testing.assert_allclose(hessian, hessian.T, rtol=1e-5, atol=1e-5)
    # Central differences of the gradient, one direction per parameter. The masks depend on the
    # key only, so the loss is smooth in the parameters. Error: truncation h**2 / 6 * |g'''|,
    # measured at up to 4e-3 of the largest Hessian entry at h = 0.03, so about 9x less at
    # h = 0.01, plus rounding 2**-24 * |g| / h (about 1e-5 * |g|): a tolerance of 2e-3 of the
    # largest entry covers both, and is far below what a wrong mask or scale changes (a unit
    # dropped in one pass and kept in the other changes whole entries by their own size).
    h = 0.01
    grad = jax.jit(jax.vmap(jax.grad(loss)))
    directions = jnp.eye(flat.size)
    finite = (grad(flat[None] + h * directions) - grad(flat[None] - h * directions)) / (2 * h)
    scale = float(jnp.max(jnp.abs(hessian)))
    assert scale > 0
    np.testing.assert_allclose(finite, hessian, rtol=0, atol=2e-3 * scale)
