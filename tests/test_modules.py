"""The DropBlock modules follow flax.linen.Dropout / flax.nnx.Dropout conventions."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxdrop

X = jnp.ones((2, 12, 12, 3))


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(4, (3, 3))(x)
        x = jaxdrop.linen.DropBlock(keep_prob=0.8, block_size=3)(x, deterministic=not train)
        return nn.Dense(2)(x.mean(axis=(1, 2)))


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.drop = jaxdrop.nnx.DropBlock(keep_prob=0.8, block_size=3, rngs=rngs)
        self.dense = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.dense(self.drop(self.conv(x)).mean(axis=(1, 2)))


def test_linen_matches_function_and_merges_deterministic():
    layer = jaxdrop.linen.DropBlock(keep_prob=0.8, block_size=3, normalize="expected")
    key = jax.random.key(0)
    y = layer.apply({}, X, deterministic=False, rngs={"dropout": key})
    # The key comes from make_rng("dropout"): kept units are x / keep_prob, the rest zeros.
    assert np.any(y == 0) and np.all((y == 0) | np.isclose(y, 1 / 0.8))
    np.testing.assert_array_equal(layer.apply({}, X, deterministic=True), X)
    np.testing.assert_array_equal(
        jaxdrop.linen.DropBlock(keep_prob=0.8, block_size=3, deterministic=True).apply({}, X), X
    )
    # An explicit rng gives exactly the function's output.
    np.testing.assert_array_equal(
        layer.apply({}, X, deterministic=False, rng=key),
        jaxdrop.dropblock(key, X, 0.8, 3, normalize="expected"),
    )
    with pytest.raises(ValueError, match="deterministic"):
        layer.apply({}, X)  # neither attribute nor argument
    with pytest.raises(ValueError, match="deterministic"):
        jaxdrop.linen.DropBlock(keep_prob=0.8, block_size=3, deterministic=True).apply(
            {}, X, deterministic=False
        )


def test_linen_call_time_keep_prob_overrides_attribute():
    layer = jaxdrop.linen.DropBlock(keep_prob=0.8, block_size=3)
    key = jax.random.key(1)
    np.testing.assert_array_equal(layer.apply({}, X, False, keep_prob=1.0, rng=key), X)
    np.testing.assert_array_equal(
        layer.apply({}, X, False, keep_prob=0.0, rng=key), jnp.zeros_like(X)
    )


@pytest.mark.slow
def test_linen_in_jitted_grad_step():
    model = LinenNet()
    params = model.init(jax.random.key(0), X, train=False)
    tx = optax.sgd(0.1)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, key):
        def loss(p):
            out = model.apply(p, X, train=True, rngs={"dropout": key})
            return jnp.mean(out**2)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, value

    keys = jax.random.split(jax.random.key(1), 3)
    losses = []
    for k in keys:
        params, opt_state, value = step(params, opt_state, k)
        losses.append(float(value))
    assert all(np.isfinite(losses))
    # Training mode is random, evaluation mode is not.
    a = model.apply(params, X, train=True, rngs={"dropout": keys[0]})
    b = model.apply(params, X, train=True, rngs={"dropout": keys[1]})
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(
        model.apply(params, X, train=False), model.apply(params, X, train=False)
    )


def test_nnx_train_eval_and_stream():
    layer = jaxdrop.nnx.DropBlock(keep_prob=0.8, block_size=3, rngs=nnx.Rngs(dropout=0))
    count = layer.rngs.count.get_value()
    y1, y2 = layer(X), layer(X)
    assert not np.array_equal(y1, y2)  # the stream advances on every call
    assert layer.rngs.count.get_value() == count + 2
    layer.eval()
    np.testing.assert_array_equal(layer(X), X)
    assert np.any(layer(X, deterministic=False) == 0)  # the call argument wins
    layer.train()
    np.testing.assert_array_equal(layer(X, deterministic=True), X)
    np.testing.assert_array_equal(nnx.view(layer, deterministic=True)(X), X)
    key = jax.random.key(3)
    np.testing.assert_array_equal(layer(X, rngs=key), jaxdrop.dropblock(key, X, 0.8, 3))
    np.testing.assert_array_equal(layer(X, keep_prob=1.0), X)


def test_nnx_without_rngs_needs_them_at_call_time():
    layer = jaxdrop.nnx.DropBlock(keep_prob=0.8, block_size=3)
    with pytest.raises(ValueError, match="rngs"):
        layer(X)
    assert layer(X, rngs=nnx.Rngs(dropout=1)).shape == X.shape
    with pytest.raises(TypeError, match="rngs"):
        jaxdrop.nnx.DropBlock(keep_prob=0.8, block_size=3, rngs=0)


@pytest.mark.slow
def test_nnx_in_jitted_grad_step():
    model = NNXNet(nnx.Rngs(0, dropout=1))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        def loss(model):
            return jnp.mean(model(X) ** 2)

        value, grads = nnx.value_and_grad(loss)(model)
        optimizer.update(model, grads)
        return value

    count = model.drop.rngs.count.get_value()
    losses = [float(step(model, optimizer)) for _ in range(3)]
    assert all(np.isfinite(losses))
    assert model.drop.rngs.count.get_value() == count + 3
    model.eval()
    np.testing.assert_array_equal(model(X), model(X))
