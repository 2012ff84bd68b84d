"""Equinox modules: the function under the module's key, eqx.nn.Dropout's inference rules, a
per-example model vmapped over the batch under eqx.filter_jit / filter_grad, DropConnect."""

import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest

import jaxdrop
import jaxdrop.equinox as jeqx

# One channels-first example, as eqx.nn.Conv2d takes it.
X = jax.random.uniform(jax.random.key(7), (3, 10, 12), jnp.float32, 0.5, 2.0)
HWC = jnp.moveaxis(X, 0, -1)
# One example's tokens for PatchDropout: (L, C) = (10, 12), the first a class token.
TOKENS = X[0]

# name: (module, the function with the same arguments; `x` is one example).
MODULES = {
    "DropBlock": (
        jeqx.DropBlock(keep_prob=0.7, block_size=3, calibrate=True, min_keep_prob=0.5),
        lambda k, x: jaxdrop.dropblock(
            k, x, 0.7, 3, spatial_dims=(-2, -1), calibrate=True, min_keep_prob=0.5
        ),
    ),
    "DropBlock-HWC": (
        jeqx.DropBlock(
            keep_prob=0.7, block_size=(3, 2), spatial_dims=[-3, -2], normalize="expected"
        ),
        lambda k, x: jaxdrop.dropblock(k, x, 0.7, (3, 2), normalize="expected"),
    ),
    "Dropout": (
        jeqx.Dropout(keep_prob=0.5, broadcast_dims=-1),
        lambda k, x: jaxdrop.dropout(k, x, 0.5, broadcast_dims=-1),
    ),
    "SpatialDropout": (
        jeqx.SpatialDropout(keep_prob=0.5),
        lambda k, x: jaxdrop.spatial_dropout(k, x, 0.5, spatial_dims=(-2, -1)),
    ),
    # One draw per call: per example under vmap.
    "DropPath": (
        jeqx.DropPath(keep_prob=0.5),
        lambda k, x: jaxdrop.drop_path(k, x, 0.5, mode="batch"),
    ),
    "DropPath-row": (
        jeqx.DropPath(keep_prob=0.5, mode="row", scale_by_keep=False, batch_axis=1),
        lambda k, x: jaxdrop.drop_path(k, x, 0.5, scale_by_keep=False, batch_axis=1),
    ),
    # One example: the function on x[None], so the channels share the patches.
    "Cutout": (
        jeqx.Cutout(4, num_patches=2, fill=1.0),
        lambda k, x: jaxdrop.cutout(k, x[None], 4, spatial_dims=(-2, -1), num_patches=2, fill=1.0)[
            0
        ],
    ),
    # A single HWC image: the function's own single-image rule gives the same patches.
    "Cutout-HWC": (
        jeqx.Cutout(4, spatial_dims=(0, 1)),
        lambda k, x: jaxdrop.cutout(k, x, 4, spatial_dims=(0, 1)),
    ),
    # One example's (L, C) tokens: the function's single-example rule.
    "PatchDropout-tokens": (
        jeqx.PatchDropout(keep_prob=0.5, num_prefix_tokens=1, ordered=True),
        lambda k, x: jaxdrop.patch_dropout(k, x, 0.5, num_prefix_tokens=1, ordered=True),
    ),
    # One (C, H, W) image, erased for sure: the rectangle is shared over the channels.
    "RandomErasing": (
        jeqx.RandomErasing(p=1.0, max_count=2),
        lambda k, x: jaxdrop.random_erasing(
            k, x, 1.0, max_count=2, spatial_dims=(-2, -1), channel_axis=-3
        ),
    ),
    "RandomErasing-HWC": (
        jeqx.RandomErasing(p=1.0, spatial_dims=(0, 1), channel_axis=-1),
        lambda k, x: jaxdrop.random_erasing(k, x, 1.0),
    ),
}


def _input(name):
    if name.endswith("tokens"):
        return TOKENS
    return HWC if name.endswith("HWC") else X


@pytest.mark.slow
def test_import_jaxdrop_does_not_import_equinox():
    code = "import sys, jaxdrop; assert 'equinox' not in sys.modules, 'equinox imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey])
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "DropBlock" else n for n in MODULES]
)
def test_module_is_the_function(name, make_key):
    module, fn = MODULES[name]
    x, key = _input(name), make_key(3)
    y = module(x, key=key)
    np.testing.assert_array_equal(y, fn(key, x))
    assert y.dtype == x.dtype
    assert y.shape == x.shape or name.startswith("PatchDropout")  # it keeps fewer tokens
    assert not np.array_equal(y, x)  # it does drop (fixed key)


def test_cutout_one_example_shares_patches_over_channels(key):
    y = jeqx.Cutout(5, num_patches=3)(X, key=key)
    patched = y == 0
    assert patched.any()
    np.testing.assert_array_equal(patched, jnp.broadcast_to(patched[:1], X.shape))


@pytest.mark.parametrize("name", list(MODULES))
def test_inference_returns_x(name, key):
    module, fn = MODULES[name]
    x = _input(name)
    # Field, call-time and eqx.nn.inference_mode: x itself, as eqx.nn.Dropout returns it.
    assert eqx.nn.inference_mode(module)(x, key=key) is x
    assert eqx.nn.inference_mode(module)(x) is x  # no key needed
    assert module(x, key=key, inference=True) is x
    # The call-time flag wins over the field, in both directions.
    assert eqx.tree_at(lambda m: m.inference, module, True)(x, inference=False, key=key) is not x
    np.testing.assert_array_equal(
        eqx.nn.inference_mode(module)(x, key=key, inference=False), fn(key, x)
    )
    back = eqx.nn.inference_mode(eqx.nn.inference_mode(module), value=False)
    np.testing.assert_array_equal(back(x, key=key), fn(key, x))


@pytest.mark.parametrize("name", list(MODULES))
def test_training_without_a_key_raises(name):
    module, _ = MODULES[name]
    cls = type(module).__name__
    with pytest.raises(RuntimeError, match=f"{cls} requires a key .*inference_mode"):
        module(_input(name))


@pytest.mark.slow
def test_keep_prob_one_needs_no_key_and_call_time_keep_prob_overrides(key):
    # As eqx.nn.Dropout with p=0: nothing is dropped, so no key is needed.
    assert jeqx.DropBlock(keep_prob=1.0, block_size=3)(X) is X
    assert jeqx.DropBlock(keep_prob=0.5, block_size=3)(X, keep_prob=1.0) is X
    np.testing.assert_array_equal(
        jeqx.DropBlock(keep_prob=0.5, block_size=3)(X, key=key, keep_prob=0.0), jnp.zeros_like(X)
    )
    np.testing.assert_array_equal(
        jeqx.Dropout(keep_prob=0.9)(X, key=key, keep_prob=0.3), jaxdrop.dropout(key, X, 0.3)
    )
    with pytest.raises(RuntimeError, match="DropPath requires a key"):
        jeqx.DropPath(keep_prob=1.0)(X, keep_prob=jnp.float32(1.0))  # traced-able: no fast path


def test_constructor_arguments_are_checked_early():
    with pytest.raises(ValueError, match="keep_prob"):
        jeqx.DropBlock(keep_prob=1.5, block_size=3)
    with pytest.raises(ValueError, match="block_size"):
        jeqx.DropBlock(keep_prob=0.9, block_size=(3, 3, 3))  # two spatial dims by default
    with pytest.raises(ValueError, match="block_size"):
        jeqx.DropBlock(keep_prob=0.9, block_size=0)
    with pytest.raises(ValueError, match="normalize"):
        jeqx.DropBlock(keep_prob=0.9, block_size=3, normalize="mean")
    with pytest.raises(TypeError, match="calibrate"):
        jeqx.DropBlock(keep_prob=0.9, block_size=3, calibrate="yes")
    with pytest.raises(ValueError, match="keep_prob"):
        jeqx.Dropout(keep_prob=-0.1)
    with pytest.raises(TypeError, match="keep_prob"):
        jeqx.SpatialDropout(keep_prob="0.5")
    with pytest.raises(ValueError, match="mode"):
        jeqx.DropPath(keep_prob=0.9, mode="example")
    with pytest.raises(TypeError, match="scale_by_keep"):
        jeqx.DropPath(keep_prob=0.9, scale_by_keep=None)
    with pytest.raises(ValueError, match="size"):
        jeqx.Cutout((4, 4), spatial_dims=-1)
    with pytest.raises(ValueError, match="num_patches"):
        jeqx.Cutout(4, num_patches=-1)
    with pytest.raises(TypeError, match="layer"):
        jeqx.DropConnect(3, keep_prob=0.5)
    with pytest.raises(ValueError, match="keep_prob"):
        jeqx.DropConnect(eqx.nn.Linear(2, 2, key=jax.random.key(0)), keep_prob=2.0)
    # What needs x's rank is checked by the function, at call time.
    with pytest.raises(ValueError, match="spatial_dims"):
        jeqx.DropBlock(keep_prob=0.9, block_size=3, spatial_dims=(0, 5))(X, key=jax.random.key(0))
    with pytest.raises(ValueError, match="spatial_dims"):
        jeqx.Cutout(3, spatial_dims=(-4, -1))(X, key=jax.random.key(0))
    with pytest.raises(TypeError, match="`x` must have a floating dtype"):
        jeqx.Cutout(3)(jnp.ones((3, 8, 8), jnp.int32), key=jax.random.key(0))


class Net(eqx.Module):
    """A per-example model: it sees one (C, H, W) image."""

    cut: jeqx.Cutout
    conv: eqx.nn.Conv2d
    block: jeqx.DropBlock
    spatial: jeqx.SpatialDropout
    path: jeqx.DropPath
    drop: jeqx.Dropout
    head: jeqx.DropConnect

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.cut = jeqx.Cutout(4)
        self.conv = eqx.nn.Conv2d(3, 8, 3, padding=1, key=k1)
        self.block = jeqx.DropBlock(keep_prob=0.8, block_size=3)
        self.spatial = jeqx.SpatialDropout(keep_prob=0.9)
        self.path = jeqx.DropPath(keep_prob=0.8)
        self.drop = jeqx.Dropout(keep_prob=0.9)
        self.head = jeqx.DropConnect(eqx.nn.Linear(8, 2, key=k2), keep_prob=0.8)

    def __call__(self, x, *, key=None):
        keys = (None,) * 6 if key is None else tuple(jax.random.split(key, 6))
        x = self.cut(x, key=keys[0])
        h = jax.nn.relu(self.conv(x))
        h = self.spatial(self.block(h, key=keys[1]), key=keys[2])
        h = h + self.path(jax.nn.relu(h), key=keys[3])  # a residual branch
        z = self.drop(jnp.mean(h, axis=(1, 2)), key=keys[4])
        return self.head(z, key=keys[5])


def _batch(n=4):
    xs = jax.random.normal(jax.random.key(1), (n, 3, 12, 12))
    keys = jax.random.split(jax.random.key(2), n)
    return xs, keys


@pytest.mark.slow
def test_per_example_model_vmapped_over_the_batch():
    model = Net(jax.random.key(0))
    xs, keys = _batch()

    @eqx.filter_jit
    def forward(model, xs, keys):
        return jax.vmap(lambda x, k: model(x, key=k))(xs, keys)

    ys = forward(model, xs, keys)
    one = eqx.filter_jit(lambda model, x, k: model(x, key=k))
    loop = jnp.stack([one(model, x, k) for x, k in zip(xs, keys, strict=True)])
    # Same masks, example by example; the batched convolution may round differently.
    np.testing.assert_allclose(ys, loop, rtol=1e-5, atol=1e-6)
    assert len({tuple(np.asarray(y).round(5)) for y in ys}) == len(ys)
    # Inference: no keys, deterministic, and the plain network.
    test_model = eqx.nn.inference_mode(model)

    @eqx.filter_jit
    def evaluate(model, xs):
        h = jax.vmap(lambda x: jax.nn.relu(model.conv(x)))(xs)
        h = h + jax.nn.relu(h)
        plain = jax.vmap(model.head.layer)(jnp.mean(h, axis=(2, 3)))
        return jax.vmap(model)(xs), plain

    out, plain = evaluate(test_model, xs)
    np.testing.assert_allclose(out, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_vmapped_layers_equal_a_per_example_loop_exactly():
    xs, keys = _batch()
    layers = [name for name in MODULES if not name.endswith("HWC")]
    for name in layers:
        module, _ = MODULES[name]
        # PatchDropout sees one example's (L, C) tokens: the first channel's (12, 12).
        inputs = xs[:, 0] if name.endswith("tokens") else xs
        ys = jax.vmap(lambda x, k, m=module: m(x, key=k))(inputs, keys)
        loop = jnp.stack([module(x, key=k) for x, k in zip(inputs, keys, strict=True)])
        np.testing.assert_array_equal(ys, loop, err_msg=name)


@pytest.mark.slow
def test_filter_grad_through_the_vmapped_model():
    model = Net(jax.random.key(0))
    xs, keys = _batch()

    @eqx.filter_jit
    def step(model, xs, keys):
        def loss(model):
            return jnp.mean(jax.vmap(lambda x, k: model(x, key=k))(xs, keys) ** 2)

        value, grads = eqx.filter_value_and_grad(loss)(model)
        return value, grads

    value, grads = step(model, xs, keys)
    leaves = jax.tree.leaves(grads)
    # The gradient has the model's arrays, and only those (keep_prob is a float, not a leaf).
    assert jax.tree.structure(grads) == jax.tree.structure(eqx.filter(model, eqx.is_array))
    assert np.isfinite(float(value)) and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert bool(jnp.any(grads.conv.weight != 0)) and bool(jnp.any(grads.head.layer.weight != 0))


@pytest.mark.slow
def test_traced_call_time_keep_prob_does_not_retrace(key):
    @eqx.filter_jit
    def apply(module, x, key, keep_prob):
        y = module(x, key=key, keep_prob=keep_prob)
        return y, jnp.mean(y != 0)

    module = jeqx.DropBlock(keep_prob=0.9, block_size=3)
    outputs = [apply(module, X, key, jnp.float32(0.9))]
    with oracle.compilations() as compiled:
        outputs += [apply(module, X, key, jnp.float32(p)) for p in (0.5, 0.2)]
    assert compiled == []
    kept = [float(fraction) for _, fraction in outputs]
    for (y, _), keep_prob in zip(outputs, (0.9, 0.5, 0.2), strict=True):
        np.testing.assert_array_equal(
            y, jaxdrop.dropblock(key, X, jnp.float32(keep_prob), 3, spatial_dims=(-2, -1))
        )
    assert kept[0] > kept[1] > kept[2]
    # A keep_prob field that is a JAX array is a dynamic leaf too: changing it does not retrace.
    apply_field = eqx.filter_jit(lambda module, x, key: module(x, key=key))
    dynamic = jeqx.Dropout(keep_prob=jnp.float32(0.9))
    apply_field(dynamic, X, key)
    changed = eqx.tree_at(lambda m: m.keep_prob, dynamic, jnp.float32(0.3))
    with oracle.compilations() as compiled:
        apply_field(changed, X, key)
    assert compiled == []


def test_lists_become_hashable_static_fields(key):
    module = jeqx.DropBlock(
        keep_prob=0.8, block_size=[3, 3], spatial_dims=[1, 2], broadcast_dims=[0]
    )
    assert module.block_size == (3, 3) and module.spatial_dims == (1, 2)
    y = eqx.filter_jit(lambda m, x, k: m(x, key=k))(module, X, key)
    np.testing.assert_array_equal(
        y, jaxdrop.dropblock(key, X, 0.8, 3, spatial_dims=(1, 2), broadcast_dims=0)
    )


def _by_name(name):
    return lambda path, leaf: getattr(path[-1], "name", None) == name


@pytest.mark.parametrize(
    "make_layer, x",
    [
        (lambda k: eqx.nn.Linear(16, 8, key=k), jnp.ones(16)),
        pytest.param(lambda k: eqx.nn.Conv2d(3, 4, 3, key=k), X, marks=pytest.mark.slow),
    ],
    ids=["Linear", "Conv2d"],
)
def test_dropconnect_masks_the_weight_only(make_layer, x, key):
    layer = make_layer(jax.random.key(5))
    module = jeqx.DropConnect(layer, keep_prob=0.5)
    # Its arrays are exactly the layer's (the very same arrays).
    params = jax.tree.leaves(eqx.filter(module, eqx.is_array))
    assert len(params) == 2
    assert all(a is b for a, b in zip(params, jax.tree.leaves(layer), strict=True))
    # The module is the function applied to the layer's weight, under the same key.
    arrays, rest = eqx.partition(layer, eqx.is_array)
    masked = jaxdrop.dropconnect(key, arrays, 0.5, where=_by_name("weight"))
    np.testing.assert_array_equal(module(x, key=key), eqx.combine(masked, rest)(x))
    # The bias is never dropped: with every weight dropped, the output is the bias.
    np.testing.assert_array_equal(
        module(x, key=key, keep_prob=0.0), jnp.broadcast_to(layer.bias, layer(x).shape)
    )
    for test_module in (
        eqx.nn.inference_mode(module),
        eqx.tree_at(lambda m: m.inference, module, True),
    ):
        np.testing.assert_array_equal(test_module(x), layer(x))
    np.testing.assert_array_equal(module(x, inference=True), layer(x))
    with pytest.raises(RuntimeError, match="DropConnect requires a key"):
        module(x)


def test_dropconnect_masked_weight_is_kept_entries_times_scale(key):
    layer = eqx.nn.Linear(64, 32, use_bias=False, key=jax.random.key(5))
    assert bool(jnp.all(layer.weight != 0))
    module = jeqx.DropConnect(layer, keep_prob=0.5)
    # Linear on the basis vectors e_j, with one key: y_j = W' e_j is column j of the masked
    # weight, exactly (one nonzero product per output).
    columns = jax.vmap(lambda e: module(e, key=key))(jnp.eye(64))
    masked = columns.T
    dropped = masked == 0
    np.testing.assert_array_equal(jnp.where(dropped, 0.0, layer.weight * 2.0), masked)
    # Each of the 2048 weights is kept with probability 0.5, independently: the kept fraction's
    # std is sqrt(0.25 / 2048) = 0.011, and 0.5 +- 0.05 is a 4.5-sigma band (fixed key).
    assert abs(float(jnp.mean(~dropped)) - 0.5) < 0.05
    # A custom `where` chooses the leaves: here none, so the layer runs unchanged.
    nothing = jeqx.DropConnect(layer, keep_prob=0.5, where=_by_name("kernel"))
    np.testing.assert_array_equal(nothing(jnp.ones(64), key=key), layer(jnp.ones(64)))


def test_patch_dropout_keeps_its_structure_in_inference(key):
    # With return_indices, inference gives every token and every index, as training gives the
    # kept ones: the caller's code does not branch on the mode.
    module = jeqx.PatchDropout(rate=0.7, num_prefix_tokens=1, return_indices=True)
    out, indices = module(TOKENS, key=key)
    assert out.shape == (1 + 2, 12) and indices.shape == (2,)  # max(1, int(9 * 0.3)) = 2
    np.testing.assert_array_equal(out[1:], TOKENS[1:][indices])
    out, indices = eqx.nn.inference_mode(module)(TOKENS)
    np.testing.assert_array_equal(out, TOKENS)
    np.testing.assert_array_equal(indices, np.arange(9))
    assert indices.dtype == jnp.int32
    # A traced call-time probability is the function's error: it sets the output's length.
    with pytest.raises(TypeError, match="`keep_prob` of `patch_dropout` must be a concrete"):
        eqx.filter_jit(lambda m, x, r: m(x, key=key, rate=r))(module, TOKENS, jnp.float32(0.5))


@pytest.mark.slow
def test_random_erasing_call_time_p_is_traced_without_retrace(key):
    @eqx.filter_jit
    def apply(module, x, key, p):
        return module(x, key=key, p=p)

    module = jeqx.RandomErasing(p=0.5)
    outputs = [apply(module, X, key, jnp.float32(p)) for p in (0.0, 1.0)]
    with oracle.compilations() as compiled:
        outputs.append(apply(module, X, key, jnp.float32(0.5)))
    assert compiled == []
    for y, p in zip(outputs, (0.0, 1.0, 0.5), strict=True):
        want = jaxdrop.random_erasing(
            key, X, jnp.float32(p), spatial_dims=(-2, -1), channel_axis=-3
        )
        np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(outputs[0], X)
    assert bool(jnp.any(outputs[1] != X))
    with pytest.raises(TypeError, match=r"RandomErasing has no erasing probability.*p=0.25"):
        jeqx.RandomErasing()(X, key=key)
    with pytest.raises(TypeError, match="RandomErasing takes its arguments by name.*`p=`"):
        jeqx.RandomErasing(0.25)  # pyright: ignore[reportCallIssue]
