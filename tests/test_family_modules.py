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
    # Every image erased (p=1), so that training changes X under any key.
    "RandomErasing": (
        jaxdrop.linen.RandomErasing(p=1.0, max_count=2),
        lambda rngs: jaxdrop.nnx.RandomErasing(p=1.0, max_count=2, rngs=rngs),
        lambda k, x: jaxdrop.random_erasing(k, x, 1.0, max_count=2),
    ),
}


# Random Erasing's first compile takes 5 to 20 s on 2 shared cores (tests/test_equinox.py keeps
# a quick check of its modules).
UNIT_NAMES = [
    pytest.param(n, marks=pytest.mark.slow) if n == "RandomErasing" else n for n in UNIT_MODULES
]


@pytest.mark.parametrize("name", UNIT_NAMES)
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


@pytest.mark.parametrize("name", UNIT_NAMES)
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


# --- PatchDropout and RandomErasing -------------------------------------------------------------

# Four examples of a class token and 12 patch tokens of 3 features.
TOKENS = X.reshape(4, 64, 3)[:, :13]


def test_patch_dropout_modules_keep_their_structure_in_eval(key):
    # Training is the function; eval returns every token and, with return_indices, every index,
    # with the training output's structure, so the caller's code does not branch on the mode.
    options = dict(num_prefix_tokens=1, ordered=True, return_indices=True)
    out, indices = jaxdrop.patch_dropout(key, TOKENS, 0.5, **options)
    assert out.shape == (4, 1 + 6, 3) and indices.shape == (4, 6)
    everything = (TOKENS, np.broadcast_to(np.arange(12), (4, 12)))

    linen = jaxdrop.linen.PatchDropout(rate=0.5, **options)
    for got, want in zip(linen.apply({}, TOKENS, False, key), (out, indices), strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(linen.apply({}, TOKENS, True), everything, strict=True):
        np.testing.assert_array_equal(got, want)

    layer = jaxdrop.nnx.PatchDropout(keep_prob=0.5, **options, rngs=nnx.Rngs(dropout=0))
    for got, want in zip(layer(TOKENS, rngs=key), (out, indices), strict=True):
        np.testing.assert_array_equal(got, want)
    count = int(layer.rngs.count[...])
    layer(TOKENS)
    assert int(layer.rngs.count[...]) == count + 1
    for view in (nnx.view(layer, deterministic=True), layer.eval() or layer):
        for got, want in zip(view(TOKENS), everything, strict=True):
            np.testing.assert_array_equal(got, want)
    assert int(layer.rngs.count[...]) == count + 1  # evaluation draws no key


def test_patch_dropout_modules_reject_a_traced_probability(key):
    # The number of kept tokens sets the output's shape: the function's error, from the module.
    match = "`keep_prob` of `patch_dropout` must be a concrete number"
    linen = jaxdrop.linen.PatchDropout(keep_prob=0.5)
    with pytest.raises(TypeError, match=match):
        jax.jit(lambda r: linen.apply({}, TOKENS, False, key, rate=r))(jnp.float32(0.5))
    layer = jaxdrop.nnx.PatchDropout(keep_prob=0.5, rngs=nnx.Rngs(dropout=0))
    with pytest.raises(TypeError, match=match):
        nnx.jit(lambda m, kp: m(TOKENS, keep_prob=kp))(layer, jnp.float32(0.5))


@pytest.mark.slow
def test_random_erasing_call_time_p_overrides_without_retrace(key):
    # p is RandomErasing's probability, by name, at construction or at call time (traced).
    linen = jaxdrop.linen.RandomErasing(p=0.5, fill=-1.0)
    apply = jax.jit(lambda p: linen.apply({}, X, False, key, p=p))
    np.testing.assert_array_equal(apply(jnp.float32(0.0)), X)
    with oracle.compilations() as compiled:
        erased = apply(jnp.float32(1.0))
    assert compiled == []
    np.testing.assert_array_equal(erased, jaxdrop.random_erasing(key, X, 1.0, fill=-1.0))
    layer = jaxdrop.nnx.RandomErasing(fill=-1.0, rngs=nnx.Rngs(dropout=0))
    np.testing.assert_array_equal(layer(X, p=1.0, rngs=key), erased)
    with pytest.raises(TypeError, match="RandomErasing has no erasing probability"):
        layer(X)
    for make in (jaxdrop.linen.RandomErasing, lambda p: jaxdrop.nnx.RandomErasing(p)):
        with pytest.raises(TypeError, match="takes its arguments by name.*`p=`"):
            make(0.25)


class LinenTokens(nn.Module):
    """Random Erasing on the images, then 4 x 4 patches, a class token and PatchDropout."""

    @nn.compact
    def __call__(self, x, train):
        x = jaxdrop.linen.RandomErasing(p=0.5)(x, not train)
        n, h, w, c = x.shape
        patches = x.reshape(n, h // 4, 4, w // 4, 4, c).transpose(0, 1, 3, 2, 4, 5)
        tokens = nn.Dense(8)(patches.reshape(n, -1, 16 * c))
        cls = jnp.zeros((n, 1, 8), tokens.dtype)
        kept = jaxdrop.linen.PatchDropout(keep_prob=0.5, num_prefix_tokens=1)(
            jnp.concatenate([cls, tokens], axis=1), not train
        )
        return nn.Dense(2)(jnp.mean(nn.relu(nn.Dense(8)(kept)), axis=1))


class NnxTokens(nnx.Module):
    def __init__(self, rngs):
        self.erase = jaxdrop.nnx.RandomErasing(p=0.5, rngs=rngs)
        self.embed = nnx.Linear(48, 8, rngs=rngs)
        self.drop = jaxdrop.nnx.PatchDropout(keep_prob=0.5, num_prefix_tokens=1, rngs=rngs)
        self.head = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
        x = self.erase(x)
        n, h, w, c = x.shape
        patches = x.reshape(n, h // 4, 4, w // 4, 4, c).transpose(0, 1, 3, 2, 4, 5)
        tokens = self.embed(patches.reshape(n, -1, 16 * c))
        kept = self.drop(jnp.concatenate([jnp.zeros((n, 1, 8)), tokens], axis=1))
        return self.head(jnp.mean(nnx.relu(kept), axis=1))


@pytest.mark.slow
def test_token_modules_in_a_jitted_train_step(key):
    labels = jnp.array([0, 1, 0, 1])
    model = LinenTokens()
    params = model.init(key, X, train=False)["params"]

    @jax.jit
    def grads(params, rng):
        def loss_fn(params):
            logits = model.apply({"params": params}, X, train=True, rngs={"dropout": rng})
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        return jax.value_and_grad(loss_fn)(params)

    loss, g = grads(params, key)
    assert bool(jnp.isfinite(loss))
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(g))
    assert bool(jnp.any(g["Dense_0"]["kernel"] != 0))
    evaluate = jax.jit(lambda p: model.apply({"params": p}, X, train=False))
    np.testing.assert_array_equal(evaluate(params), evaluate(params))

    net = NnxTokens(nnx.Rngs(params=0, dropout=1))
    optimizer = nnx.Optimizer(net, optax.sgd(0.1), wrt=nnx.Param)

    @nnx.jit
    def step(net, optimizer):
        def loss_fn(net):
            return optax.softmax_cross_entropy_with_integer_labels(net(X), labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(net)
        optimizer.update(net, grads)
        return loss

    count = int(net.drop.rngs.count[...])
    assert bool(jnp.isfinite(step(net, optimizer)))
    assert int(net.drop.rngs.count[...]) == count + 1  # the stream advanced in the step
    assert int(net.erase.rngs.count[...]) == count + 1
    net.eval()
    np.testing.assert_array_equal(nnx.jit(lambda m: m(X))(net), nnx.jit(lambda m: m(X))(net))


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
