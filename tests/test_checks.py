"""checks.py: every argument check and its message, and that the public API runs them first.

The checks are tested here once, as tables; the per-function test files keep one smoke row each
(their functions call these checks), and tests/test_properties.py draws bad axes, dtypes and
keep_probs over many shapes.
"""

import inspect
from decimal import Decimal
from fractions import Fraction

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxdrop
from jaxdrop._src import checks, drop_path, masking, schedules

X = jnp.ones((2, 4, 4, 3))

# --- check_key -----------------------------------------------------------------------------------

GOOD_KEYS = {
    "typed": lambda: jax.random.key(0),
    "legacy": lambda: jax.random.PRNGKey(0),
    "legacy-numpy": lambda: np.asarray(jax.random.PRNGKey(0)),
    "typed-rbg": lambda: jax.random.key(0, impl="rbg"),
}

BATCH_MESSAGE = r"`rng` must be a single PRNG key, got a batch of keys of shape \(2,\).*jax.vmap"
BAD_KEYS = {
    "None": (lambda: None, TypeError, r"`rng` must be a PRNG key.*got None"),
    "int": (lambda: 0, TypeError, r"`rng` must be a PRNG key.*got 0"),
    "list": (lambda: [0, 0], TypeError, r"`rng` must be a PRNG key.*got \[0, 0\]"),
    "float32": (lambda: jnp.zeros(2), TypeError, r"`rng`.*dtype float32 and shape \(2,\)"),
    "int32": (lambda: jnp.zeros(2, jnp.int32), TypeError, r"`rng`.*dtype int32"),
    "typed-batch": (lambda: jax.random.split(jax.random.key(0)), ValueError, BATCH_MESSAGE),
    "legacy-batch": (lambda: jax.random.split(jax.random.PRNGKey(0)), ValueError, BATCH_MESSAGE),
    "typed-batch-2d": (
        lambda: jax.random.split(jax.random.key(0), (2, 3)),
        ValueError,
        r"batch of keys of shape \(2, 3\)",
    ),
    "uint32-wrong-shape": (
        lambda: jnp.zeros(3, jnp.uint32),
        ValueError,
        r"`rng` must be a legacy key of shape \(2,\).*got a uint32 array of shape \(3,\)",
    ),
    "uint32-scalar": (lambda: jnp.zeros((), jnp.uint32), ValueError, r"`rng`.*shape \(\)"),
}


@pytest.mark.parametrize("name", list(GOOD_KEYS))
def test_check_key_accepts_one_key(name):
    checks.check_key(GOOD_KEYS[name]())


@pytest.mark.parametrize("name", list(BAD_KEYS))
def test_check_key_rejects(name):
    make, error, match = BAD_KEYS[name]
    with pytest.raises(error, match=match):
        checks.check_key(make())


def test_check_key_reads_only_dtype_and_shape_of_a_traced_key():
    seen = []

    def f(k):
        checks.check_key(k)
        seen.append(type(k))
        return jax.random.uniform(k)

    jax.jit(f)(jax.random.key(0))
    jax.vmap(f)(jax.random.split(jax.random.key(0), 3))  # one key per example
    assert all(issubclass(t, jax.core.Tracer) for t in seen)
    with pytest.raises(ValueError, match=BATCH_MESSAGE):
        jax.jit(f)(jax.random.split(jax.random.key(0)))


# Every public function that takes a key, called so that it would otherwise return early
# (keep_prob 1, no patches, an empty input): the key is checked first all the same.
KEY_FIRST = {
    "dropblock": lambda rng: jaxdrop.dropblock(rng, X, 1.0, 3),
    "dropblock-empty": lambda rng: jaxdrop.dropblock(rng, jnp.ones((0, 4, 4, 3)), 0.5, 3),
    "dropout": lambda rng: jaxdrop.dropout(rng, X, 1.0),
    "spatial_dropout": lambda rng: jaxdrop.spatial_dropout(rng, X, 1.0),
    "drop_path": lambda rng: jaxdrop.drop_path(rng, X, 1.0),
    "cutout": lambda rng: jaxdrop.cutout(rng, X, 2, num_patches=0),
    "patch_dropout": lambda rng: jaxdrop.patch_dropout(rng, X, 1.0),
    "random_erasing": lambda rng: jaxdrop.random_erasing(rng, X, 0.0),
    "dropconnect": lambda rng: jaxdrop.dropconnect(rng, {"w": X}, 1.0),
    "plot_masks": lambda rng: jaxdrop.plot_masks(rng, np.ones((8, 8, 3), np.float32)),
}


@pytest.mark.parametrize("name", list(KEY_FIRST))
@pytest.mark.parametrize("bad", ["None", "float32", "typed-batch", "legacy-batch"])
def test_every_function_checks_the_key_first(name, bad):
    make, error, match = BAD_KEYS[bad]
    with pytest.raises(error, match=match):
        KEY_FIRST[name](make())


def test_key_first_covers_every_function_that_takes_a_key():
    keyed = {
        name
        for name in jaxdrop.__all__
        if inspect.isfunction(fn := getattr(jaxdrop, name))
        and list(inspect.signature(fn).parameters)[:1] == ["rng"]
    }
    # check_same_key is the key check itself, tested in test_multihost.py.
    assert keyed - {"check_same_key"} <= {name.split("-")[0] for name in KEY_FIRST}


LINEN_MODULES = {
    "DropBlock": jaxdrop.linen.DropBlock(keep_prob=1.0, block_size=3),
    "Dropout": jaxdrop.linen.Dropout(keep_prob=1.0),
    "SpatialDropout": jaxdrop.linen.SpatialDropout(keep_prob=1.0),
    "DropPath": jaxdrop.linen.DropPath(keep_prob=1.0),
    "Cutout": jaxdrop.linen.Cutout(2, num_patches=0),
}
NNX_MODULES = {
    "DropBlock": lambda: jaxdrop.nnx.DropBlock(keep_prob=1.0, block_size=3),
    "Dropout": lambda: jaxdrop.nnx.Dropout(keep_prob=1.0),
    "SpatialDropout": lambda: jaxdrop.nnx.SpatialDropout(keep_prob=1.0),
    "DropPath": lambda: jaxdrop.nnx.DropPath(keep_prob=1.0),
    "Cutout": lambda: jaxdrop.nnx.Cutout(2, num_patches=0),
}


@pytest.mark.parametrize("name", list(LINEN_MODULES))
def test_modules_check_a_call_time_key(name):
    batch = jax.random.split(jax.random.key(0))
    with pytest.raises(ValueError, match=BATCH_MESSAGE):
        LINEN_MODULES[name].apply({}, X, False, rng=batch)
    with pytest.raises(ValueError, match=BATCH_MESSAGE):
        NNX_MODULES[name]()(X, rngs=batch)


# --- keep_prob -----------------------------------------------------------------------------------

# Concrete values of every kind are checked like a Python float.
OUT_OF_RANGE = {
    "python": 1.5,
    "negative": -0.1,
    "nan": float("nan"),
    "inf": float("inf"),
    "np.float64": np.float64(1.5),
    "np.float32": np.float32(-1.0),
    "np-0d": np.asarray(1.5),
    "np-0d-negative": np.asarray(-0.5),
    "np-0d-nan": np.asarray(np.nan),
    "np-0d-int": np.asarray(2, np.int32),
    "jnp.float32": jnp.float32(1.5),
    "jnp-0d-nan": jnp.asarray(np.nan, jnp.float32),
    "jnp.bfloat16": jnp.asarray(-0.5, jnp.bfloat16),
    "fraction": Fraction(3, 2),
}


@pytest.mark.parametrize("name", list(OUT_OF_RANGE))
def test_check_keep_prob_rejects_concrete_values_outside_unit_interval(name):
    with pytest.raises(ValueError, match=r"`keep_prob` must be in \[0, 1\], got "):
        checks.check_keep_prob(OUT_OF_RANGE[name])


# Every function that takes a keep_prob checks concrete host and device values.
KEEP_PROB_FUNCTIONS = {
    "dropblock": lambda p: jaxdrop.dropblock(jax.random.key(0), X, p, 3),
    "dropout": lambda p: jaxdrop.dropout(jax.random.key(0), X, p),
    "spatial_dropout": lambda p: jaxdrop.spatial_dropout(jax.random.key(0), X, p),
    "drop_path": lambda p: jaxdrop.drop_path(jax.random.key(0), X, p),
    "dropconnect": lambda p: jaxdrop.dropconnect(jax.random.key(0), {"w": X}, p),
    "layer_keep_probs": lambda p: jaxdrop.layer_keep_probs(p, 2),
    "patch_dropout": lambda p: jaxdrop.patch_dropout(jax.random.key(0), X, p),
}
# The functions whose keep_prob is static (it sets an output shape): a concrete value is checked
# like the others', a traced one is a TypeError that says how to make it static. Every other
# function of the table takes a traced keep_prob (tests/test_properties.py, KEEP_PROB_METHODS).
STATIC_KEEP_PROB = {"patch_dropout"}


def test_keep_prob_table_covers_every_function_with_a_keep_prob():
    with_keep_prob = {
        name
        for name in jaxdrop.__all__
        if inspect.isfunction(fn := getattr(jaxdrop, name))
        and (param := inspect.signature(fn).parameters.get("keep_prob")) is not None
        and param.default is inspect.Parameter.empty  # plot_masks' option goes to dropblock
    }
    assert with_keep_prob <= set(KEEP_PROB_FUNCTIONS), with_keep_prob - set(KEEP_PROB_FUNCTIONS)


@pytest.mark.parametrize("name", list(KEEP_PROB_FUNCTIONS))
@pytest.mark.parametrize("value", ["np-0d", "np-0d-negative", "np-0d-nan", "jnp.float32"])
def test_every_function_checks_a_concrete_keep_prob(name, value):
    with pytest.raises(ValueError, match=r"`keep_prob` must be in \[0, 1\]"):
        KEEP_PROB_FUNCTIONS[name](OUT_OF_RANGE[value])


@pytest.mark.parametrize("name", list(KEEP_PROB_FUNCTIONS))
def test_a_traced_keep_prob_is_taken_unless_the_function_declares_it_static(name):
    call = jax.jit(KEEP_PROB_FUNCTIONS[name])
    if name in STATIC_KEEP_PROB:
        with pytest.raises(TypeError, match=f"`keep_prob` of `{name}` must be a concrete"):
            call(jnp.float32(0.5))
    else:
        jax.block_until_ready(call(jnp.float32(0.5)))


@pytest.mark.parametrize(
    "value, error, match",
    [
        ("0.5", TypeError, "got str"),
        (None, TypeError, "got NoneType"),
        (True, TypeError, "got bool"),
        (np.bool_(True), TypeError, "got bool"),
        (Decimal("0.5"), TypeError, "got Decimal"),
        (0.5j, TypeError, "got complex"),
        ([0.5], TypeError, "got list"),
        (jnp.asarray(0.5, jnp.complex64), TypeError, "must have a real dtype, got complex64"),
        (jnp.asarray(True), TypeError, "must have a real dtype, got bool"),
        (jnp.ones(2), ValueError, r"must be a scalar, got an array of shape \(2,\)"),
        (np.ones((1,)), ValueError, r"must be a scalar, got an array of shape \(1,\)"),
    ],
)
def test_check_keep_prob_rejects_types_and_shapes(value, error, match):
    with pytest.raises(error, match="`keep_prob` .*" + match):
        checks.check_keep_prob(value)


def test_check_keep_prob_canonical_forms():
    # Concrete values (Fraction and JAX arrays outside a trace included) become Python floats,
    # so that a concrete JAX scalar is handled like the Python number (same sampler, no dtype).
    for value in (0.5, np.float32(0.5), np.asarray(0.5), Fraction(1, 2), 1, np.int32(0)):
        out = checks.check_keep_prob(value)
        assert type(out) is float and out == float(value)
    for device in (jnp.float32(0.5), jnp.bfloat16(0.5), jnp.asarray(1, jnp.int32)):
        out = checks.check_keep_prob(device)
        assert type(out) is float and out == float(device)
    # The name of the argument is the caller's.
    with pytest.raises(ValueError, match="`drop_rate`"):
        checks.check_keep_prob(2.0, "drop_rate")


def test_fraction_keep_prob_is_a_number(key):
    np.testing.assert_array_equal(
        jaxdrop.dropout(key, X, Fraction(1, 2)), jaxdrop.dropout(key, X, 0.5)
    )
    assert jaxdrop.dropblock(key, X, Fraction(1), 3) is X
    np.testing.assert_array_equal(
        jaxdrop.layer_keep_probs(Fraction(9, 10), 2), jaxdrop.layer_keep_probs(0.9, 2)
    )


def test_traced_keep_prob_is_not_checked_and_takes_no_fast_path():
    seen = []

    @jax.jit
    def f(p):
        seen.append((checks.concrete_value(p), checks.nothing_to_drop(3, p)))
        return checks.check_keep_prob(p)

    assert float(f(jnp.float32(1.5))) == 1.5  # no error: the kernels clip a traced value
    assert seen == [(None, False)]


@pytest.mark.parametrize("value", [1.0, 1, np.float32(1.0), np.asarray(1.0), jnp.float32(1.0)])
def test_concrete_keep_prob_of_one_returns_the_input(key, value):
    for fn in (jaxdrop.dropout, jaxdrop.spatial_dropout, jaxdrop.drop_path):
        assert fn(key, X, value) is X
    assert jaxdrop.dropblock(key, X, value, 3) is X
    params = {"w": X}
    assert jaxdrop.dropconnect(key, params, value) is params


def test_nothing_to_drop():
    assert checks.nothing_to_drop(0, 0.5)
    assert checks.nothing_to_drop(4, 1.0)
    assert checks.nothing_to_drop(4, jnp.float32(1.0))
    assert not checks.nothing_to_drop(4, 0.999)
    assert not checks.nothing_to_drop(4, jnp.float32(0.0))


@pytest.mark.parametrize(
    "value, error, match",
    [
        (jnp.float32(0.5), TypeError, "must be a Python float, got ArrayImpl"),
        ("0.5", TypeError, "must be a Python float, got str"),
        (1.5, ValueError, r"must be in \[0, 1\], got 1.5"),
    ],
)
def test_check_python_keep_prob(value, error, match):
    with pytest.raises(error, match="`final_keep_prob` " + match):
        checks.check_python_keep_prob(value, "final_keep_prob")
    assert checks.check_python_keep_prob(Fraction(1, 4), "final_keep_prob") == 0.25


# --- modules: keep_prob from the call or the constructor -----------------------------------------

LINEN_WITHOUT_KEEP_PROB = {
    "DropBlock": lambda: jaxdrop.linen.DropBlock(keep_prob=None, block_size=3),
    "Dropout": lambda: jaxdrop.linen.Dropout(keep_prob=None),
    "SpatialDropout": lambda: jaxdrop.linen.SpatialDropout(keep_prob=None),
    "DropPath": lambda: jaxdrop.linen.DropPath(keep_prob=None),
}
NNX_WITHOUT_KEEP_PROB = {
    "DropBlock": lambda: jaxdrop.nnx.DropBlock(keep_prob=None, block_size=3),
    "Dropout": lambda: jaxdrop.nnx.Dropout(keep_prob=None),
    "SpatialDropout": lambda: jaxdrop.nnx.SpatialDropout(keep_prob=None),
    "DropPath": lambda: jaxdrop.nnx.DropPath(keep_prob=None),
}


def _message(call) -> str:
    with pytest.raises(TypeError) as info:
        call()
    return str(info.value)


@pytest.mark.parametrize("name", list(LINEN_WITHOUT_KEEP_PROB))
def test_module_without_keep_prob_says_what_to_pass(name, key):
    linen = _message(lambda: LINEN_WITHOUT_KEEP_PROB[name]().apply({}, X, False, rng=key))
    nnx_ = _message(lambda: NNX_WITHOUT_KEEP_PROB[name]()(X, rngs=key))
    assert f"{name} has no drop probability" in linen and "keep_prob = 1 - rate" in linen
    assert f"`{name}(keep_prob=0.9, ...)`" in linen and "`layer(x, keep_prob=0.9)`" in linen
    assert nnx_ == linen  # one helper, one message
    # A call-time keep_prob is enough.
    y = LINEN_WITHOUT_KEEP_PROB[name]().apply({}, X, False, rng=key, keep_prob=1.0)
    np.testing.assert_array_equal(y, X)
    np.testing.assert_array_equal(NNX_WITHOUT_KEEP_PROB[name]()(X, rngs=key, rate=0.0), X)


def test_dropconnect_modules_without_keep_prob(key):
    x = jnp.ones((2, 4))
    layer = jaxdrop.linen.DropConnect(nn.Dense(3), keep_prob=None)
    variables = layer.init(key, x, deterministic=True)
    message = _message(lambda: layer.apply(variables, x, deterministic=False, rng=key))
    assert "DropConnect has no drop probability" in message
    nnx_layer = jaxdrop.nnx.DropConnect(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), keep_prob=None)
    assert _message(lambda: nnx_layer(x, rngs=key)) == message


def test_first_from():
    assert checks.first_from(None, 0, 1, error_msg="unused") == 0
    with pytest.raises(ValueError, match="^nothing given$"):
        checks.first_from(None, None, error_msg="nothing given")


# --- axes, sizes, choices and the other static options -------------------------------------------


@pytest.mark.parametrize(
    "axes, error, match",
    [
        (4, ValueError, r"`spatial_dims`: axis 4 is out of bounds for array of dimension 4"),
        ((1, -5), ValueError, r"axis -5 is out of bounds for array of dimension 4 \(`x` has"),
        ((1, -3), ValueError, r"`spatial_dims` must not repeat an axis, got \(1, -3\)"),
        (1.0, TypeError, r"`spatial_dims` must be an int or a sequence of ints, got 1.0"),
        ((1, True), TypeError, "`spatial_dims` must be an int or a sequence of ints"),
        ("12", TypeError, "`spatial_dims` must be an int or a sequence of ints"),
    ],
)
def test_canonical_axes_rejects(axes, error, match):
    with pytest.raises(error, match=match):
        checks.canonical_axes(axes, 4, "spatial_dims", shape=(2, 4, 4, 3))


def test_canonical_axes_and_axis():
    assert checks.canonical_axes((-3, -2), 4, "spatial_dims") == (1, 2)
    assert checks.canonical_axes([2, 0], 4, "spatial_dims") == (2, 0)  # order kept
    assert checks.canonical_axes((), 4, "broadcast_dims") == ()
    assert checks.canonical_axis(-1, 3, "batch_axis") == 2
    with pytest.raises(TypeError, match=r"`batch_axis` must be an int, got \(0,\)"):
        checks.canonical_axis((0,), 3, "batch_axis")
    with pytest.raises(ValueError, match="`batch_axis`: axis 3 is out of bounds"):
        checks.canonical_axis(3, 3, "batch_axis")


def test_check_disjoint_and_nonempty():
    checks.check_disjoint((1, 2), "spatial_dims", (0, 3), "broadcast_dims")
    with pytest.raises(
        ValueError, match=r"`spatial_dims` and `broadcast_dims` must not share.*\(2,\)"
    ):
        checks.check_disjoint((1, 2), "spatial_dims", (2,), "broadcast_dims")
    with pytest.raises(
        ValueError, match=r"`spatial_dims` must name at least one axis, got \(\)\.$"
    ):
        checks.check_nonempty_axes((), "spatial_dims")


# dropblock, spatial_dropout and cutout reject an empty spatial_dims with one message.
EMPTY_SPATIAL = {
    "dropblock": lambda: jaxdrop.dropblock(jax.random.key(0), X, 0.9, 3, spatial_dims=()),
    "spatial_dropout": lambda: jaxdrop.spatial_dropout(jax.random.key(0), X, 0.9, spatial_dims=()),
    "cutout": lambda: jaxdrop.cutout(jax.random.key(0), X, 2, spatial_dims=()),
}


@pytest.mark.parametrize("name", list(EMPTY_SPATIAL))
def test_empty_spatial_dims_is_rejected(name):
    with pytest.raises(ValueError, match=r"^`spatial_dims` must name at least one axis, got \(\)"):
        EMPTY_SPATIAL[name]()


@pytest.mark.parametrize(
    "size, error, match",
    [
        (0, ValueError, r"`block_size` must be positive, got 0\.$"),
        (-2, ValueError, r"`block_size` must be positive, got -2\.$"),
        ([0, 2], ValueError, r"`block_size` must be positive, got \[0, 2\]\.$"),
        ((3, 3, 3), ValueError, r"one entry per spatial dim \(2\), got \(3, 3, 3\)"),
        (2.5, TypeError, "`block_size` must be a positive int or a sequence of them, got 2.5"),
        (True, TypeError, "`block_size` must be a positive int or a sequence of them, got True"),
        ((2, 2.0), TypeError, r"got \(2, 2.0\)"),
    ],
)
def test_canonical_sizes_reports_the_value_as_given(size, error, match):
    with pytest.raises(error, match=match):
        checks.canonical_sizes(size, 2, "block_size")
    assert checks.canonical_sizes(3, 2, "block_size") == (3, 3)
    assert checks.canonical_sizes([3, np.int64(2)], 2, "block_size") == (3, 2)


def test_choices_come_from_their_literal_types():
    assert masking.NORMALIZE_CHOICES == ("actual", "expected", "none")
    assert drop_path.MODE_CHOICES == ("row", "batch")
    assert schedules.RULES == ("dropblock", "linear")
    with pytest.raises(ValueError, match=r"`normalize` must be one of \('actual', 'expected'"):
        checks.check_choice("mean", "normalize", masking.NORMALIZE_CHOICES)
    with pytest.raises(ValueError, match="got 1"):
        checks.check_choice(1, "mode", drop_path.MODE_CHOICES)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: checks.check_bool("yes", "calibrate"), TypeError, "`calibrate` must be a bool"),
        (lambda: checks.check_bool(1, "calibrate"), TypeError, "got 1"),
        (lambda: checks.check_count(1.0, "num_patches"), TypeError, "`num_patches` must be an int"),
        (lambda: checks.check_count(True, "num_patches"), TypeError, "got True"),
        (lambda: checks.check_count(-1, "num_patches"), ValueError, "at least 0, got -1"),
        (lambda: checks.check_count(0, "num_blocks", 1), ValueError, "at least 1, got 0"),
        (lambda: checks.check_real_scalar("0", "fill"), TypeError, "`fill` must be a float"),
        (lambda: checks.check_real_scalar(jnp.zeros(3), "fill"), ValueError, "`fill` must be a"),
        (
            lambda: checks.check_real_scalar(jnp.asarray(1j), "fill"),
            TypeError,
            "`fill` must have a real dtype",
        ),
        (lambda: checks.as_floating_array([1.0]), TypeError, "`x` must be an array, got list"),
        (
            lambda: checks.as_floating_array(jnp.ones(2, jnp.int32)),
            TypeError,
            "`x` must have a floating dtype, got int32",
        ),
        (
            lambda: checks.as_floating_array(np.ones(2, bool), "params['w']"),
            TypeError,
            r"`params\['w'\]` must have a floating dtype, got bool",
        ),
    ],
)
def test_other_checks(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_accepted_static_options():
    checks.check_bool(np.bool_(True), "calibrate")
    assert checks.check_count(np.int64(3), "num_patches") == 3
    checks.check_real_scalar(np.float16(2.0), "fill")
    checks.check_real_scalar(jnp.asarray(3, jnp.int8), "fill")
    assert checks.as_floating_array(np.ones(2, np.float16)).dtype == jnp.float16


# --- every argument of every public function reaches its check -----------------------------------


def _params(w=X):
    return {"w": w}


# function name: (call with defaults, {argument: (bad value, error, match)}).
ARGUMENTS = {
    "dropblock": (
        lambda key, x=X, keep_prob=0.9, block_size=3, **kw: jaxdrop.dropblock(
            key, x, keep_prob, block_size, **kw
        ),
        {
            "x": (jnp.ones((2, 4, 4, 3), jnp.int32), TypeError, "`x` must have a floating"),
            "keep_prob": (np.asarray(1.5), ValueError, r"`keep_prob` must be in \[0, 1\]"),
            "block_size": ((3, 3, 3), ValueError, "`block_size` must be an int or have one"),
            "spatial_dims": ((1, 4), ValueError, "`spatial_dims`: axis 4 is out of bounds"),
            "broadcast_dims": ((7,), ValueError, "`broadcast_dims`: axis 7 is out of bounds"),
            "normalize": ("mean", ValueError, "`normalize` must be one of"),
            "calibrate": ("yes", TypeError, "`calibrate` must be a bool"),
        },
    ),
    "dropout": (
        lambda key, x=X, keep_prob=0.9, **kw: jaxdrop.dropout(key, x, keep_prob, **kw),
        {
            "x": ([1.0, 2.0], TypeError, "`x` must be an array"),
            "keep_prob": (-0.1, ValueError, "`keep_prob` must be in"),
            "broadcast_dims": (1.0, TypeError, "`broadcast_dims` must be an int or a sequence"),
        },
    ),
    "spatial_dropout": (
        lambda key, x=X, keep_prob=0.9, **kw: jaxdrop.spatial_dropout(key, x, keep_prob, **kw),
        {
            "x": (jnp.ones(3, bool), TypeError, "`x` must have a floating"),
            "keep_prob": ("0.9", TypeError, "`keep_prob` must be a float"),
            "spatial_dims": ((1, 1), ValueError, "`spatial_dims` must not repeat"),
        },
    ),
    "drop_path": (
        lambda key, x=X, keep_prob=0.9, **kw: jaxdrop.drop_path(key, x, keep_prob, **kw),
        {
            "x": (jnp.ones(3, jnp.int8), TypeError, "`x` must have a floating"),
            "keep_prob": (jnp.ones(2), ValueError, "`keep_prob` must be a scalar"),
            "mode": ("example", ValueError, "`mode` must be one of"),
            "scale_by_keep": (1, TypeError, "`scale_by_keep` must be a bool"),
            "batch_axis": (4, ValueError, "`batch_axis`: axis 4 is out of bounds"),
        },
    ),
    "cutout": (
        lambda key, x=X, size=2, **kw: jaxdrop.cutout(key, x, size, **kw),
        {
            "x": (jnp.ones((2, 4, 4, 3), jnp.int8), TypeError, "`x` must have a floating"),
            "size": (2.5, TypeError, "`size` must be a positive int"),
            "spatial_dims": ((-5,), ValueError, "`spatial_dims`: axis -5 is out of bounds"),
            "num_patches": (-1, ValueError, "`num_patches` must be at least 0"),
            "fill": ("0", TypeError, "`fill` must be a float"),
        },
    ),
    "dropconnect": (
        # Every leaf selected, so that an integer leaf reaches the dtype check.
        lambda key, params=None, keep_prob=0.5, where=lambda path, leaf: True: jaxdrop.dropconnect(
            key, _params() if params is None else params, keep_prob, where=where
        ),
        {
            "params": (
                _params(jnp.ones((2, 2), jnp.int32)),
                TypeError,
                r"`params\['w'\]` must have a floating",
            ),
            "keep_prob": (jnp.float32(np.nan), ValueError, "`keep_prob` must be in"),
            "where": ("kernel", TypeError, "`where` must be a callable"),
        },
    ),
    "layer_keep_probs": (
        lambda key, keep_prob=0.9, num_layers=2, **kw: jaxdrop.layer_keep_probs(
            keep_prob, num_layers, **kw
        ),
        {
            "keep_prob": (np.asarray(-1.0), ValueError, "`keep_prob` must be in"),
            "num_layers": (2.0, TypeError, "`num_layers` must be an int"),
            "rule": ("cubic", ValueError, "`rule` must be one of"),
            "from_drop_rate": (1, TypeError, "`from_drop_rate` must be a bool"),
        },
    ),
    "drop_path_keep_probs": (
        lambda key, num_blocks=4, final_keep_prob=0.5, **kw: jaxdrop.drop_path_keep_probs(
            num_blocks, final_keep_prob, **kw
        ),
        {
            "num_blocks": (0, ValueError, "`num_blocks` must be at least 1"),
            "final_keep_prob": (1.5, ValueError, "`final_keep_prob` must be in"),
            "first_block_kept": ("yes", TypeError, "`first_block_kept` must be a bool"),
        },
    ),
}
ARGUMENT_CASES = [(fn, arg) for fn, (_, table) in ARGUMENTS.items() for arg in table]


@pytest.mark.parametrize("fn, arg", ARGUMENT_CASES, ids=[f"{f}-{a}" for f, a in ARGUMENT_CASES])
def test_every_argument_is_checked(key, fn, arg):
    call, table = ARGUMENTS[fn]
    value, error, match = table[arg]
    with pytest.raises(error, match=match):
        call(key, **{arg: value})
    call(key)  # the defaults of the table are valid
