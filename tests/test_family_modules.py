"""Linen and NNX modules of the family: train/eval, keys, call-time keep_prob, DropConnect."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import oracle
import pytest
from flax import nnx

import jaxdrop

X = jax.random.uniform(jax.random.key(7), (4, 8, 8, 3), jnp.float32, 0.5, 2.0)

# name: (linen module, NNX module without rngs, the function with its arguments).
UNIT_MODULES = {
    "Dropout": (
        jaxdrop.linen.Dropout(keep_prob=0.5),
        lambda rngs: jaxdrop.nnx.Dropout(keep_prob=0.5, rngs=rngs),
        lambda k, x: jaxdrop.dropout(k, x, 0.5),
    ),
    "SpatialDropout": (
        jaxdrop.linen.SpatialDropout(keep_prob=0.5, spatial_dims=(1, 2)),
        lambda rngs: jaxdrop.nnx.SpatialDropout(keep_prob=0.5, spatial_dims=(1, 2), rngs=rngs),
        lambda k, x: jaxdrop.spatial_dropout(k, x, 0.5, spatial_dims=(1, 2)),
    ),
    "DropPath": (
        jaxdrop.linen.DropPath(keep_prob=0.5, scale_by_keep=False),
        lambda rngs: jaxdrop.nnx.DropPath(keep_prob=0.5, scale_by_keep=False, rngs=rngs),
        lambda k, x: jaxdrop.drop_path(k, x, 0.5, scale_by_keep=False),
    ),
    "Cutout": (
        jaxdrop.linen.Cutout(3, num_patches=2, fill=1.0),
        lambda rngs: jaxdrop.nnx.Cutout(3, num_patches=2, fill=1.0, rngs=rngs),
        lambda k, x: jaxdrop.cutout(k, x, 3, num_patches=2, fill=1.0),
    ),
}


@pytest.mark.parametrize("name", list(UNIT_MODULES))
def test_linen_module_is_the_function(name, key):
    module, _, fn = UNIT_MODULES[name]
    np.testing.assert_array_equal(module.apply({}, X, deterministic=True), X)
    np.testing.assert_array_equal(module.apply({}, X, True), X)
    # An explicit key gives exactly the function's output.
    np.testing.assert_array_equal(module.apply({}, X, False, rng=key), fn(key, X))
    # Otherwise the key comes from the "dropout" collection, and deterministic is merged.
    train = module.copy(deterministic=False)
    y = train.apply({}, X, rngs={"dropout": key})
    assert y.shape == X.shape and not bool(jnp.all(y == X))
    with pytest.raises(flax.errors.InvalidRngError, match='needs PRNG for "dropout"'):
        train.apply({}, X)  # training without a key
    with pytest.raises(ValueError, match='Parameter "deterministic" must be passed'):
        module.apply({}, X)  # deterministic given neither as attribute nor as argument


@pytest.mark.parametrize("name", list(UNIT_MODULES))
def test_nnx_module_is_the_function(name, key):
    _, make, fn = UNIT_MODULES[name]
    layer = make(nnx.Rngs(dropout=0))
    # A key at call time gives exactly the function's output.
    np.testing.assert_array_equal(layer(X, rngs=key), fn(key, X))
    # The forked stream advances on every training call.
    count = int(layer.rngs.count[...])
    first, second = layer(X), layer(X)
    assert int(layer.rngs.count[...]) == count + 2
    assert not bool(jnp.all(first == second))
    layer.eval()
    np.testing.assert_array_equal(layer(X), X)
    assert int(layer.rngs.count[...]) == count + 2  # evaluation draws no key
    np.testing.assert_array_equal(layer(X, deterministic=False, rngs=key), fn(key, X))
    layer.train()
    np.testing.assert_array_equal(layer(X, deterministic=True), X)
    with pytest.raises(ValueError, match="rngs"):
        make(None)(X)


def test_call_time_keep_prob_overrides_without_retrace(key):
    x = jnp.ones((64, 16))
    # linen: a traced keep_prob at call time.
    apply = jax.jit(
        lambda keep_prob: jaxdrop.linen.Dropout(keep_prob=0.5).apply(
            {}, x, False, keep_prob=keep_prob, rng=key
        )
    )
    np.testing.assert_array_equal(apply(jnp.float32(1.0)), x)
    with oracle.compilations() as compiled:
        np.testing.assert_array_equal(apply(jnp.float32(0.0)), jnp.zeros_like(x))
    assert compiled == []
    # NNX: same through nnx.jit, for every module with a keep_prob.
    layers = [
        jaxdrop.nnx.Dropout(keep_prob=0.5, rngs=nnx.Rngs(dropout=0)),
        jaxdrop.nnx.SpatialDropout(keep_prob=0.5, spatial_dims=(0,), rngs=nnx.Rngs(dropout=0)),
        jaxdrop.nnx.DropPath(keep_prob=0.5, rngs=nnx.Rngs(dropout=0)),
    ]

    @nnx.jit
    def call(layers, keep_prob):
        return [layer(x, keep_prob=keep_prob) for layer in layers]

    for y in call(layers, jnp.float32(1.0)):
        np.testing.assert_array_equal(y, x)
    with oracle.compilations() as compiled:
        zeros = call(layers, jnp.float32(0.0))
    assert compiled == []
    for y in zeros:
        np.testing.assert_array_equal(y, jnp.zeros_like(x))


# --- DropConnect ---------------------------------------------------------------------------------


def test_linen_dropconnect_params_are_the_layer_params(key):
    x = jnp.ones((2, 6))
    wrapped = jaxdrop.linen.DropConnect(nn.Dense(5), keep_prob=0.5)
    plain = nn.Dense(5).init(key, x)
    for deterministic in (True, False):
        variables = wrapped.init({"params": key, "dropout": key}, x, deterministic=deterministic)
        assert jax.tree.structure(variables) == jax.tree.structure(plain)
        jax.tree.map(np.testing.assert_array_equal, variables, plain)
    # Evaluation is the plain layer; training masks the kernel only, with the function's mask.
    np.testing.assert_array_equal(
        wrapped.apply(plain, x, deterministic=True), nn.Dense(5).apply(plain, x)
    )
    eye = jnp.eye(6)
    y = wrapped.apply(plain, eye, deterministic=False, rng=key)
    masked = jaxdrop.dropconnect(key, plain["params"], 0.5)
    np.testing.assert_array_equal(y, nn.Dense(5).apply({"params": masked}, eye))
    kernel_rows = y - plain["params"]["bias"][None]  # eye @ kernel is the kernel
    assert 0 < int(jnp.sum(kernel_rows == 0)) < 30


def test_nnx_dropconnect_params_are_the_layer_params(key):
    linear = nnx.Linear(6, 5, rngs=nnx.Rngs(0))
    kernel = linear.kernel[...]
    wrapped = jaxdrop.nnx.DropConnect(linear, keep_prob=0.5, rngs=nnx.Rngs(dropout=1))
    params = nnx.state(wrapped, nnx.Param)
    expected = {"layer": nnx.to_pure_dict(nnx.state(linear, nnx.Param))}
    assert jax.tree.structure(nnx.to_pure_dict(params)) == jax.tree.structure(expected)
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(params), expected)
    eye = jnp.eye(6)
    y = wrapped(eye, rngs=key)
    masked = jaxdrop.dropconnect(key, nnx.to_pure_dict(nnx.state(linear, nnx.Param)), 0.5)
    np.testing.assert_array_equal(y, eye @ masked["kernel"] + masked["bias"][None])
    assert 0 < int(jnp.sum(y - linear.bias[None] == 0)) < 30
    # The stored kernel is untouched, and evaluation is the plain layer.
    np.testing.assert_array_equal(linear.kernel[...], kernel)
    wrapped.eval()
    np.testing.assert_array_equal(wrapped(eye), linear(eye))


def test_nnx_dropconnect_writes_back_the_layer_state():
    layer = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.BatchNorm(4, rngs=nnx.Rngs(0)))
    wrapped = jaxdrop.nnx.DropConnect(layer, keep_prob=0.5, rngs=nnx.Rngs(dropout=0))
    wrapped(jnp.arange(12.0).reshape(4, 3))
    # BatchNorm's running mean moved, its scale and bias were not masked (1-D).
    assert bool(jnp.any(layer.layers[1].mean[...] != 0))
    np.testing.assert_array_equal(layer.layers[1].scale[...], jnp.ones(4))


# --- inside a small model's jitted gradient step -------------------------------------------------


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = jaxdrop.linen.Cutout(3)(x, not train)
        x = nn.Conv(4, (3, 3))(x)
        x = jaxdrop.linen.SpatialDropout(keep_prob=0.8)(x, not train)
        x = x + jaxdrop.linen.DropPath(keep_prob=0.8)(nn.relu(nn.Conv(4, (3, 3))(x)), not train)
        x = jaxdrop.linen.Dropout(keep_prob=0.8)(x.reshape(x.shape[0], -1), not train)
        return jaxdrop.linen.DropConnect(nn.Dense(2), keep_prob=0.5)(x, deterministic=not train)


@pytest.mark.slow
def test_linen_modules_in_a_jitted_train_step(key):
    model, labels = LinenNet(), jnp.array([0, 1, 0, 1])
    params = model.init(key, X, train=False)["params"]
    assert set(params) == {"Conv_0", "Conv_1", "Dense_0"}  # the wrappers add no parameters
    optimizer = optax.sgd(0.1)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, rng):
        def loss_fn(params):
            logits = model.apply({"params": params}, X, train=True, rngs={"dropout": rng})
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    new_params, opt_state, loss, grads = step(params, opt_state, key)
    assert bool(jnp.isfinite(loss))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    # A DropConnect-masked kernel entry gets no gradient.
    assert bool(jnp.any(grads["Dense_0"]["kernel"] == 0))
    # Training is random, evaluation is not.
    train = jax.jit(lambda p, k: model.apply({"params": p}, X, True, rngs={"dropout": k}))
    assert not bool(jnp.all(train(params, key) == train(params, jax.random.key(9))))
    evaluate = jax.jit(lambda p: model.apply({"params": p}, X, False))
    np.testing.assert_array_equal(evaluate(new_params), evaluate(new_params))


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.cutout = jaxdrop.nnx.Cutout(3, rngs=rngs)
        self.conv0 = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.spatial = jaxdrop.nnx.SpatialDropout(keep_prob=0.8, rngs=rngs)
        self.conv1 = nnx.Conv(4, 4, (3, 3), rngs=rngs)
        self.drop_path = jaxdrop.nnx.DropPath(keep_prob=0.8, rngs=rngs)
        self.dropout = jaxdrop.nnx.Dropout(keep_prob=0.8, rngs=rngs)
        self.head = jaxdrop.nnx.DropConnect(nnx.Linear(256, 2, rngs=rngs), keep_prob=0.5, rngs=rngs)

    def __call__(self, x):
        x = self.spatial(self.conv0(self.cutout(x)))
        x = x + self.drop_path(nnx.relu(self.conv1(x)))
        return self.head(self.dropout(x.reshape(x.shape[0], -1)))


@pytest.mark.slow
def test_nnx_modules_in_a_jitted_train_step():
    model, labels = NnxNet(nnx.Rngs(params=0, dropout=1)), jnp.array([0, 1, 0, 1])
    param_paths = {path for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert {p[0] for p in param_paths} == {"conv0", "conv1", "head"}
    assert {p for p in param_paths if p[0] == "head"} == {
        ("head", "layer", "kernel"),
        ("head", "layer", "bias"),
    }
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(model):
            logits = model(X)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss, grads

    counts = int(model.dropout.rngs.count[...])
    kernel = model.head.layer.kernel[...]
    loss, grads = step(model, optimizer)
    assert bool(jnp.isfinite(loss))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert bool(jnp.any(grads["head"]["layer"]["kernel"][...] == 0))
    assert int(model.dropout.rngs.count[...]) == counts + 1  # the stream advanced in the step
    assert not bool(jnp.all(model.head.layer.kernel[...] == kernel))  # the update reached it
    step(model, optimizer)
    assert int(model.dropout.rngs.count[...]) == counts + 2
    model.eval()
    evaluate = nnx.jit(lambda model: model(X))
    np.testing.assert_array_equal(evaluate(model), evaluate(model))
    assert int(model.dropout.rngs.count[...]) == counts + 2
