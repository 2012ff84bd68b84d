"""Every module (linen, NNX, Equinox) forwards every option to its function.

One table gives, per function, calls with every option set explicitly, between them to a
non-default value each. The table is checked against ``inspect.signature`` of the function, so
an option added to a function fails here until it is added to the table, and then until every
module forwards it: each module, built with those options, must give the function's output
under the same key, bit for bit.
"""

import inspect

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxdrop
import jaxdrop.equinox as jeqx

# NCHW-like, every axis a different length, values away from 0 (a 0 means a dropped unit).
X = jnp.asarray(np.random.default_rng(0).uniform(0.5, 2.0, (4, 6, 8, 10)), jnp.float32)


@pytest.fixture
def key():
    # A key under which every option of the table changes the output (checked below): under
    # key(0), DropPath's batch mode drops the whole batch, which would hide scale_by_keep.
    return jax.random.key(2)


def _bias_only(path, leaf):
    del path
    return leaf.ndim == 1


# function name: (required positional arguments after x, [every option, explicitly]).
CALLS = {
    # A keep_prob that is not a Python float (a concrete one is used as its Python value).
    "dropblock": (
        (jnp.float32(0.7), (3, 2)),
        [
            dict(
                spatial_dims=(1, 3),
                broadcast_dims=(0,),
                normalize="expected",
                calibrate=True,
                min_keep_prob=0.6,
            )
        ],
    ),
    "dropout": ((0.7,), [dict(broadcast_dims=(1,))]),
    "spatial_dropout": ((0.7,), [dict(spatial_dims=(1, 3))]),
    "drop_path": (
        (0.7,),
        [
            dict(mode="batch", scale_by_keep=False, batch_axis=0),
            dict(mode="row", scale_by_keep=False, batch_axis=1),
        ],
    ),
    "cutout": ((3,), [dict(spatial_dims=(1, 3), num_patches=2, fill=-1.0)]),
    "dropconnect": ((0.5,), [dict(where=_bias_only)]),
    # X as (4, 6) examples of (L, C) = (8, 10) tokens.
    "patch_dropout": ((0.5,), [dict(num_prefix_tokens=2, ordered=True, return_indices=True)]),
    # Axes 0 and 1 as (H, W) of images without channels (so that either option alone may go
    # back to its default without the two colliding).
    "random_erasing": (
        (0.7,),
        [
            dict(
                area=(0.1, 0.5),
                aspect=(0.5, 2.0),
                fill=-1.0,  # "pixel" and "channel" compile 3 to 5 times slower here
                max_count=3,
                spatial_dims=(0, 1),
                channel_axis=None,
            )
        ],
    ),
}
CLASSES = {
    "dropblock": "DropBlock",
    "dropout": "Dropout",
    "spatial_dropout": "SpatialDropout",
    "drop_path": "DropPath",
    "cutout": "Cutout",
    "dropconnect": "DropConnect",
    "patch_dropout": "PatchDropout",
    "random_erasing": "RandomErasing",
}
ROWS = [(name, i) for name, (_, rows) in CALLS.items() for i in range(len(rows))]


def _equal(a, b):
    """Bit for bit, for an array or a tuple of them (patch_dropout's ``(out, indices)``)."""
    a, b = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))


def _defaults(name):
    """The function's keyword-only options and their defaults."""
    parameters = inspect.signature(getattr(jaxdrop, name)).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def test_the_table_covers_every_public_function_and_option():
    assert set(CALLS) == set(CLASSES)
    for module in (jaxdrop.linen, jaxdrop.nnx, jeqx):
        assert set(module.__all__) == set(CLASSES.values())
    for name, (_, rows) in CALLS.items():
        defaults = _defaults(name)
        for options in rows:
            assert set(options) == set(defaults), name  # Every option, written out.
        # Between the rows, every option takes a non-default value.
        changed = {k for options in rows for k, v in options.items() if v != defaults[k]}
        assert changed == set(defaults), (name, set(defaults) - changed)


@pytest.mark.slow
@pytest.mark.parametrize("name, row", [r for r in ROWS if r[0] != "dropconnect"])
def test_every_option_changes_the_output(key, name, row):
    # Otherwise a module that drops the option would still match the function.
    args, rows = CALLS[name]
    options, defaults = rows[row], _defaults(name)
    fn = getattr(jaxdrop, name)
    y = fn(key, X, *args, **options)
    for option, value in options.items():
        # min_keep_prob changes nothing for a concrete keep_prob above it (the reproducibility
        # contract): test_min_keep_prob_is_forwarded checks that modules pass it on.
        if value != defaults[option] and option != "min_keep_prob":
            other = fn(key, X, *args, **(options | {option: defaults[option]}))
            assert not _equal(y, other), option


# linen's dropout and dropblock (the slowest) only in the full run, and random_erasing, whose
# first compile takes over 10 s on 2 shared cores (tests/test_equinox.py checks its modules).
@pytest.mark.parametrize(
    "framework, name, row",
    [
        pytest.param(f, *r, marks=pytest.mark.slow)
        if (f == "linen" and r in (("dropout", 0), ("dropblock", 0))) or r[0] == "random_erasing"
        else (f, *r)
        for f in ("linen", "nnx", "equinox")
        for r in ROWS
        if r[0] != "dropconnect"
    ],
)
def test_module_matches_its_function(key, framework, name, row):
    args, rows = CALLS[name]
    options = rows[row]
    want = getattr(jaxdrop, name)(key, X, *args, **options)
    cls = CLASSES[name]
    # The modules take every argument by name (a bare keep_prob could be read as a rate).
    positional = list(inspect.signature(getattr(jaxdrop, name)).parameters)[2 : 2 + len(args)]
    named = dict(zip(positional, args, strict=True)) | options
    if framework == "linen":
        module = getattr(jaxdrop.linen, cls)(**named)
        got = module.apply({}, X, deterministic=False, rng=key)
    elif framework == "nnx":
        got = getattr(jaxdrop.nnx, cls)(**named)(X, rngs=key)
    else:
        got = getattr(jeqx, cls)(**named)(X, key=key)
        if name == "cutout":
            # Equinox's Cutout sees one example: the function's call on x[None].
            spatial = tuple(d + 1 for d in options["spatial_dims"])
            fn = jaxdrop.cutout
            want = fn(key, X[None], *args, **(options | dict(spatial_dims=spatial)))[0]
    assert _equal(got, want)


@pytest.mark.parametrize("framework", ["linen", "nnx", "equinox"])
def test_min_keep_prob_is_forwarded(key, framework):
    # A concrete keep_prob below min_keep_prob raises, as in the function, only if the module
    # passes min_keep_prob on.
    keep_prob, block_size, options = jnp.float32(0.5), (3, 2), CALLS["dropblock"][1][0]
    with pytest.raises(ValueError, match="`keep_prob` must be at least `min_keep_prob`"):
        jaxdrop.dropblock(key, X, keep_prob, block_size, **options)
    args = dict(keep_prob=keep_prob, block_size=block_size, **options)
    with pytest.raises(ValueError, match="`keep_prob` must be at least `min_keep_prob`"):
        if framework == "linen":
            jaxdrop.linen.DropBlock(**args).apply({}, X, deterministic=False, rng=key)
        elif framework == "nnx":
            jaxdrop.nnx.DropBlock(**args)(X, rngs=key)
        else:
            jeqx.DropBlock(**args)(X, key=key)


def test_dropconnect_modules_forward_where(key):
    (keep_prob,), [options] = CALLS["dropconnect"]
    x = jnp.asarray(np.random.default_rng(1).uniform(0.5, 2.0, (3, 6)), jnp.float32)
    # The option matters: the default masks the kernel, this one the bias.
    # Non-zero biases (Flax initialises them to 0, which would hide a dropped bias).
    bias = jnp.arange(1.0, 17.0)
    params = nn.Dense(16).init(jax.random.key(2), x)["params"] | {"bias": bias}
    masked = jaxdrop.dropconnect(key, params, keep_prob, **options)
    assert not np.array_equal(masked["bias"], params["bias"])
    np.testing.assert_array_equal(masked["kernel"], params["kernel"])

    linen = jaxdrop.linen.DropConnect(nn.Dense(16), keep_prob=keep_prob, **options)
    got = linen.apply({"params": params}, x, deterministic=False, rng=key)
    np.testing.assert_array_equal(got, nn.Dense(16).apply({"params": masked}, x))

    linear = nnx.Linear(6, 16, rngs=nnx.Rngs(2))
    linear.bias[...] = bias
    state = nnx.to_pure_dict(nnx.state(linear, nnx.Param))
    masked = jaxdrop.dropconnect(key, state, keep_prob, **options)
    got = jaxdrop.nnx.DropConnect(linear, keep_prob=keep_prob, **options)(x, rngs=key)
    np.testing.assert_array_equal(got, x @ masked["kernel"] + masked["bias"][None])

    layer = eqx.nn.Linear(6, 16, key=jax.random.key(2))
    arrays, rest = eqx.partition(layer, eqx.is_array)
    masked = jaxdrop.dropconnect(key, arrays, keep_prob, **options)
    got = jeqx.DropConnect(layer, keep_prob=keep_prob, **options)(x[0], key=key)
    np.testing.assert_array_equal(got, eqx.combine(masked, rest)(x[0]))
