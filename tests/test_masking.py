"""masking.py: exact counts at every size, the scale, and the shared Bernoulli kernel.

Counts are compared with NumPy's exact integer counts, never with a tolerance: the scale of
``normalize="actual"`` is ``mask.size / count``, and the count must be exact before its one
rounding to float32.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdrop._src import masking


def random_mask(shape, seed=0, p=0.7):
    return np.random.default_rng(seed).random(shape) < p


@pytest.mark.parametrize(
    "shape",
    [
        (),
        (5,),
        (40_000,),  # 1-D: its own counts
        (3, 7),
        (2, 5, 7, 3),  # NHWC: rows along W
        (2, 3, 127, 5),  # the longest axis summed in int8
        (2, 3, 224, 5),  # split into rows of 112
        (2, 3, 131, 5),  # prime: no divisor to split by, an int32 reduction
        (2, 0, 4, 3),
        (2, 4, 0, 3),
    ],
)
def test_count_true_is_exact(shape):
    mask = random_mask(shape)
    count = jax.jit(masking.count_true)(jnp.asarray(mask))
    assert count.dtype == jnp.float32
    assert float(count) == float(np.count_nonzero(mask))


@pytest.mark.slow
def test_count_true_of_all_true_rows_does_not_overflow_int8():
    # 127 ones per row is the int8 maximum; a 128th would wrap.
    for length in (127, 254):
        mask = jnp.ones((2, length, 3), bool)
        assert float(masking.count_true(mask)) == 2 * length * 3


@pytest.mark.slow
@pytest.mark.parametrize(
    "shape, length, rows_shape",
    [
        ((2, 5, 7, 3), 7, (2, 5, 3)),  # the second-to-last axis, no axes merged
        ((2, 3, 224, 5), 112, (2, 3, 2, 5)),  # (224,) split into (2, 112)
        ((2, 3, 131, 5), 131, (2, 3, 5)),
        ((6,), 1, (6,)),
    ],
)
def test_row_counts_reduce_one_axis(shape, length, rows_shape):
    mask = random_mask(shape, seed=1)
    rows, bound = masking.row_counts(jnp.asarray(mask))
    assert (rows.dtype, rows.shape, bound) == (jnp.int32, rows_shape, length)
    assert int(rows.max()) <= bound
    assert int(jnp.sum(rows)) == np.count_nonzero(mask)


@pytest.mark.slow
def test_xla_cpu_row_sums_is_a_sum():
    mask = random_mask((3, 127, 4), seed=2)
    rows = masking._xla_cpu_row_sums(jnp.asarray(mask), 1)
    assert rows.dtype == jnp.int8
    np.testing.assert_array_equal(rows, mask.sum(axis=1))


@pytest.mark.parametrize(
    "shape, bound",
    [
        ((64,), 2**30),  # total past 2**31 from 64 partial sums
        ((3, 5, 7), 2**28),  # some trailing axes summed first, then carried
        ((5, 2**12), 2**20),  # many partial sums (the trailing axis alone would overflow)
    ],
)
def test_exact_total_past_int32(shape, bound):
    # The path for masks past 2**31 units, exercised with counts near their bound instead of a
    # mask of that size: every partial sum carries, and the exact total is far past 2**31.
    counts = np.random.default_rng(3).integers(bound - 1000, bound, shape, endpoint=True)
    total = jax.jit(masking.exact_total, static_argnums=1)(jnp.asarray(counts, jnp.int32), bound)
    exact = int(counts.sum(dtype=np.int64))
    assert exact > 2**31
    # float64 holds the exact total (< 2**53), so np.float32 rounds it once, as the library must.
    assert float(total) == float(np.float32(float(exact)))


def test_exact_total_below_int32_is_a_plain_sum():
    counts = jnp.asarray([[3, 4], [5, 6]], jnp.int32)
    assert float(masking.exact_total(counts, 6)) == 18.0
    # One int32 reduction, without the carrying variadic `reduce` of the long path.
    primitives = [
        e.primitive.name
        for e in jax.make_jaxpr(masking.exact_total, static_argnums=1)(counts, 6).eqns
    ]
    assert "reduce_sum" in primitives and "reduce" not in primitives
    long_path = jax.make_jaxpr(masking.exact_total, static_argnums=1)(counts, 2**30)
    assert "reduce" in [e.primitive.name for e in long_path.eqns]


def test_compute_scale_never_divides_by_zero():
    dropped = jnp.zeros((4, 4), bool)
    assert float(masking.compute_scale(dropped, jnp.float32(0.5), "actual")) == 0.0
    assert float(masking.compute_scale(dropped, jnp.float32(0.0), "expected")) == 0.0
    kept = jnp.asarray([[True, False], [False, False]])
    assert float(masking.compute_scale(kept, jnp.float32(0.5), "actual")) == 4.0
    assert float(masking.compute_scale(kept, jnp.float32(0.5), "expected")) == 2.0
    assert float(masking.compute_scale(kept, jnp.float32(0.5), "none")) == 1.0


def test_drop_units_is_bernoulli_mask_then_apply_mask(key):
    x = jnp.arange(1.0, 25.0).reshape(2, 3, 4)
    y = masking.drop_units(key, x, 0.5, mask_shape=(2, 1, 4), normalize="expected")
    keep = masking.bernoulli_mask(key, jnp.float32(0.5), shape=(2, 1, 4))
    assert keep.dtype == jnp.bool_ and keep.shape == (2, 1, 4)
    np.testing.assert_array_equal(y, jnp.where(keep, x * jnp.float32(2.0), 0.0))
    # A NaN keep_prob (traced, so unchecked) drops everything: zeros, never NaN.
    y = jax.jit(masking.drop_units, static_argnames=("mask_shape", "normalize"))(
        key, x, jnp.float32(np.nan), mask_shape=x.shape, normalize="actual"
    )
    np.testing.assert_array_equal(y, jnp.zeros_like(x))
