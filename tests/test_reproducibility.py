"""The reproducibility contract of docs/guide/reproducibility.md, one test per statement.

Each test quotes the statement it checks. ``X`` is a (2, 28, 28, 8) batch at block 3: its seed grid
is sparse on CPU for a Python ``keep_prob`` of 0.9 and for the bound ``min_keep_prob=0.8``
(``test_the_cases_use_the_sparse_sampler``), and dense for a traced ``keep_prob`` with no bound.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxdrop
from jaxdrop._src import dropblock as dropblock_src
from jaxdrop._src import sampling

X = jax.random.normal(jax.random.key(42), (2, 28, 28, 8)) + 3.0  # No zero in x.
BLOCK = 3


def mask(y) -> np.ndarray:
    return np.asarray(y) != 0


def sparse_python(key, x, **kwargs):
    return jaxdrop.dropblock(key, x, 0.9, BLOCK, **kwargs)


_traced = jax.jit(lambda key, x, p: jaxdrop.dropblock(key, x, p, BLOCK))  # Dense: no bound.
_traced_min = jax.jit(lambda key, x, p: jaxdrop.dropblock(key, x, p, BLOCK, min_keep_prob=0.8))


def test_the_cases_use_the_sparse_sampler():
    for keep_prob, bound in ((0.9, None), (None, 0.8)):
        cap = dropblock_src.seed_cap(X.shape, (1, 2), (BLOCK, BLOCK), False, keep_prob, bound)
        assert cap is not None
    assert dropblock_src.seed_cap(X.shape, (1, 2), (BLOCK, BLOCK), False, None, None) is None


# "The key. Different keys give different masks."
def test_depends_on_the_key():
    assert not np.array_equal(
        mask(sparse_python(jax.random.key(0), X)), mask(sparse_python(jax.random.key(1), X))
    )


# "The shapes. ... the first example of a batch of two does not get the mask it gets alone."
def test_depends_on_the_shape():
    key = jax.random.key(0)
    assert not np.array_equal(mask(sparse_python(key, X))[:1], mask(sparse_python(key, X[:1])))


# "The value of `keep_prob`."
def test_depends_on_the_value_of_keep_prob():
    key = jax.random.key(0)
    assert not np.array_equal(
        mask(sparse_python(key, X)), mask(jaxdrop.dropblock(key, X, 0.8, BLOCK))
    )


# "The static options that shape the mask ... `normalize` changes only the scale of the kept
# units, never which units are kept."
@pytest.mark.slow
def test_depends_on_static_options_but_not_on_normalize():
    key = jax.random.key(0)
    plain = mask(sparse_python(key, X))
    assert not np.array_equal(plain, mask(sparse_python(key, X, calibrate=True)))
    assert not np.array_equal(plain, mask(jaxdrop.dropblock(key, X, 0.9, 5)))
    for normalize in ("expected", "none"):
        np.testing.assert_array_equal(plain, mask(sparse_python(key, X, normalize=normalize)))


# "On CPU, DropBlock draws its seeds with a sparse sampler ... when `gamma` has a static bound
# ... and with one uniform per position (the dense draw) for a traced `keep_prob` with no bound.
# The two give different masks for the same key (with the same distribution)."
def test_sparse_and_dense_differ_on_cpu():
    key = jax.random.key(0)
    sparse = mask(sparse_python(key, X))
    dense = mask(_traced(key, X, 0.9))
    assert not np.array_equal(sparse, dense)
    # Both are DropBlock masks at the same rate: the difference is the draw, not the method.
    assert abs(sparse.mean() - dense.mean()) < 0.05


# "GPU and TPU always use the dense draw, so a CPU mask from the sparse sampler is not the mask
# a GPU or TPU computes."
@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_accelerators_use_the_dense_draw(platform):
    def fn(key, x):
        return jaxdrop.dropblock(key, x, 0.9, BLOCK)

    cpu = jax.export.export(jax.jit(fn), platforms=["cpu"])(jax.random.key(0), X).mlir_module()
    other = jax.export.export(jax.jit(fn), platforms=[platform])(jax.random.key(0), X)
    assert "stablehlo.scatter" in cpu  # The sparse sampler's scatter of seed positions ...
    assert "stablehlo.scatter" not in other.mlir_module()  # ... is not in the accelerator's.


# "Which sampler a bound chooses depends on the bound: a loose one (a small `min_keep_prob`)
# may choose the dense draw."
def test_a_loose_bound_may_choose_the_dense_draw():
    # Block 1 on a 64 x 64 map: gamma is 1 - keep_prob. 0.99 is sparse, a bound of 0.5 is not.
    shape, spatial, blocks = (2, 64, 64, 8), (1, 2), (1, 1)
    assert dropblock_src.seed_cap(shape, spatial, blocks, False, 0.99, None) is not None
    assert dropblock_src.seed_cap(shape, spatial, blocks, False, None, 0.5) is None


# "A Python `keep_prob`, the same value as a concrete JAX scalar ..., and a traced `keep_prob`
# with `min_keep_prob` give the same mask whenever both use the sparse sampler ... An eager call
# and the jitted call agree."
def test_python_concrete_and_traced_with_bound_give_the_same_mask():
    key = jax.random.key(0)
    python = sparse_python(key, X)
    np.testing.assert_array_equal(python, jaxdrop.dropblock(key, X, jnp.float32(0.9), BLOCK))
    np.testing.assert_array_equal(
        mask(python), mask(sparse_python(key, X, min_keep_prob=0.8))
    )  # A Python value with a bound: the Python value's sampler.
    np.testing.assert_array_equal(mask(python), mask(_traced_min(key, X, jnp.float32(0.9))))
    # Eager and jitted calls agree too.
    np.testing.assert_array_equal(python, jax.jit(sparse_python)(key, X))


# "(the sparse sampler's draws do not depend on its budget: the first `K` uniforms of a row are
# the same for any larger budget)"
@pytest.mark.slow
def test_the_sparse_draws_are_prefix_stable_in_the_budget():
    small = sampling.Plan(row_axes=1, rows=3, row_length=5000, sub_rows=2, length=2500, budget=7)
    large = sampling.Plan(row_axes=1, rows=3, row_length=5000, sub_rows=2, length=2500, budget=40)
    key = jax.random.key(0)
    u_small = np.asarray(sampling.sparse_uniforms(key, small))
    u_large = np.asarray(sampling.sparse_uniforms(key, large))
    assert u_small.shape == (3, 2, 7) and u_large.shape == (3, 2, 40)
    np.testing.assert_array_equal(u_large[..., :7], u_small)

    # And so the seeds: two bounds, one gamma below both, the same grid.
    def draw(cap):
        return sampling.bernoulli_seeds(key, 0.004, (3, 5000), gamma_cap=cap, leading_axes=1)

    budgets = [sampling.sparse_plan((3, 5000), 1, cap).budget for cap in (0.01, 0.04)]
    assert budgets[0] < budgets[1]
    np.testing.assert_array_equal(draw(0.01), draw(0.04))


# "A concrete JAX scalar `keep_prob` is checked like a Python float, in every function: a value
# outside [0, 1] (or NaN) raises `ValueError` ... it is used exactly like the Python float of its
# value (same sampler, same mask)."
@pytest.mark.parametrize(
    "fn",
    [
        lambda p, **kw: jaxdrop.dropblock(jax.random.key(0), X, p, BLOCK, **kw),
        lambda p: jaxdrop.dropout(jax.random.key(0), X, p),
        lambda p: jaxdrop.spatial_dropout(jax.random.key(0), X, p),
        lambda p: jaxdrop.drop_path(jax.random.key(0), X, p),
        lambda p: jaxdrop.dropconnect(jax.random.key(0), {"w": X}, p),
    ],
    ids=["dropblock", "dropout", "spatial_dropout", "drop_path", "dropconnect"],
)
def test_a_concrete_jax_scalar_is_checked_like_a_python_float(fn):
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"`keep_prob` must be in \[0, 1\]"):
            fn(jnp.float32(bad))
    np.testing.assert_array_equal(
        jax.tree.leaves(fn(jnp.float32(0.75)))[0], jax.tree.leaves(fn(0.75))[0]
    )


# "... and so does a value below `min_keep_prob`"
def test_a_concrete_jax_scalar_is_checked_against_min_keep_prob():
    with pytest.raises(ValueError, match="`keep_prob` must be at least `min_keep_prob`"):
        jaxdrop.dropblock(jax.random.key(0), X, jnp.float32(0.5), BLOCK, min_keep_prob=0.8)


# "`x`'s dtype. float32, bfloat16 and float16 inputs get the same mask, and a float32
# `keep_prob` does not promote `x`: the output has `x`'s dtype."
def test_does_not_depend_on_the_dtype():
    key = jax.random.key(0)
    want = mask(sparse_python(key, X))
    for dtype in (jnp.bfloat16, jnp.float16):
        for p in (0.9, jnp.float32(0.9)):
            y = jaxdrop.dropblock(key, X.astype(dtype), p, BLOCK)
            assert y.dtype == dtype
            np.testing.assert_array_equal(mask(y), want)


# "Sharding and the number of devices. A sharded call equals the unsharded one, bit for bit, on
# any mesh."
@pytest.mark.slow
def test_does_not_depend_on_sharding_or_the_device_count():
    if jax.device_count() < 2:
        pytest.skip("needs 2 devices (tests/conftest.py sets 16 CPU devices)")
    key = jax.random.key(0)
    for p, fn in ((0.9, lambda k, x, p: sparse_python(k, x)), (0.9, _traced)):
        want = mask(jax.jit(fn)(key, X, p))
        for mesh_shape in ((2, 1), (1, 2), (2, 2)):  # Batch, channels, both; 2 and 4 devices.
            if jax.device_count() < mesh_shape[0] * mesh_shape[1]:
                continue
            devices = np.asarray(jax.devices()[: mesh_shape[0] * mesh_shape[1]])
            mesh = Mesh(devices.reshape(mesh_shape), ("batch", "model"))
            sharded = jax.device_put(X, NamedSharding(mesh, P("batch", None, None, "model")))
            np.testing.assert_array_equal(mask(jax.jit(fn)(key, sharded, p)), want)


# "With threefry keys (typed `jax.random.key` or legacy `jax.random.PRNGKey`), `jax.vmap` over
# one key per example equals the loop over examples, bit for bit."
@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey])
@pytest.mark.slow
def test_vmap_equals_the_loop_for_threefry_keys(make_key):
    keys = jax.random.split(make_key(3), 2)
    for fn in (
        lambda k, x: sparse_python(k, x),
        lambda k, x: _traced(k, x, jnp.float32(0.9)),
        lambda k, x: _traced_min(k, x, jnp.float32(0.9)),
    ):
        batched = jax.jit(jax.vmap(fn))(keys, X[:, None])
        for i in range(2):
            np.testing.assert_array_equal(batched[i], fn(keys[i], X[i : i + 1]))


# "A typed key and the legacy key of the same seed give the same mask."
def test_typed_and_legacy_keys_agree():
    np.testing.assert_array_equal(
        sparse_python(jax.random.key(7), X), sparse_python(jax.random.PRNGKey(7), X)
    )


# "With `rbg` or `unsafe_rbg` keys, a vmapped call does not equal the loop over examples ...
# Each example still gets its own mask, but not the loop's."
@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg"])
def test_vmap_differs_from_the_loop_for_rbg_keys(impl):
    keys = jax.random.split(jax.random.key(3, impl=impl), 2)
    batched = jax.vmap(sparse_python)(keys, X[:, None])
    loop = [sparse_python(keys[i], X[i : i + 1]) for i in range(2)]
    assert not all(np.array_equal(batched[i], loop[i]) for i in range(2))
    assert not np.array_equal(mask(batched[0]), mask(batched[1]))  # Still one mask per example.


# "A traced NaN gives zeros, in every function and every `normalize` mode, `min_keep_prob`
# included."
CALLS = {
    "dropblock": lambda k, x, p: jaxdrop.dropblock(k, x, p, BLOCK),
    "dropblock-expected": lambda k, x, p: jaxdrop.dropblock(k, x, p, BLOCK, normalize="expected"),
    "dropblock-none-calibrate": lambda k, x, p: jaxdrop.dropblock(
        k, x, p, BLOCK, normalize="none", calibrate=True
    ),
    "dropblock-min": lambda k, x, p: jaxdrop.dropblock(k, x, p, BLOCK, min_keep_prob=0.8),
    "dropblock-min-expected": lambda k, x, p: jaxdrop.dropblock(
        k, x, p, BLOCK, min_keep_prob=0.8, normalize="expected"
    ),
    "dropout": lambda k, x, p: jaxdrop.dropout(k, x, p),
    "spatial_dropout": lambda k, x, p: jaxdrop.spatial_dropout(k, x, p),
    "drop_path": lambda k, x, p: jaxdrop.drop_path(k, x, p),
    "drop_path-batch-unscaled": lambda k, x, p: jaxdrop.drop_path(
        k, x, p, mode="batch", scale_by_keep=False
    ),
    "dropconnect": lambda k, x, p: jaxdrop.dropconnect(k, {"w": x}, p)["w"],
}


@pytest.mark.parametrize("name", CALLS)
def test_a_traced_nan_gives_zeros(name):
    y = jax.jit(CALLS[name])(jax.random.key(0), X, jnp.float32(jnp.nan))
    np.testing.assert_array_equal(y, np.zeros(X.shape, X.dtype))


# "A traced value outside [0, 1] is clipped to [0, 1], and to `[min_keep_prob, 1]` with a bound:
# above 1 the output is `x` unchanged; below 0 it is all zeros, or with a bound the output at
# `min_keep_prob`."
@pytest.mark.slow  # 5 to 8 s in the quick loop on 2 idle cores: the full run only
def test_a_traced_value_out_of_range_is_clipped():
    key = jax.random.key(0)
    for name, fn in CALLS.items():
        f = jax.jit(fn)
        np.testing.assert_array_equal(f(key, X, jnp.float32(1.5)), X, err_msg=name)
        low = f(key, X, jnp.float32(-0.5))
        if "min" in name:
            np.testing.assert_array_equal(low, f(key, X, jnp.float32(0.8)), err_msg=name)
        else:
            np.testing.assert_array_equal(low, np.zeros(X.shape, X.dtype), err_msg=name)
