"""Tests of the DropBlock function: exact structure first, statistics against exact expectations."""

import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest
from jax.test_util import check_grads

import jaxdrop
from jaxdrop._src import dropblock as dropblock_src
from jaxdrop._src import sampling

# Representative layouts: (shape, block_size, spatial_dims).
CASES = {
    "nhwc-nonsquare": ((2, 9, 13, 3), 3, (-3, -2)),
    "nhwc-even-block": ((2, 10, 7, 2), (4, 2), (-3, -2)),
    "nhwc-oversize": ((2, 5, 11, 2), 7, (-3, -2)),
    "nchw": ((2, 3, 8, 12), 3, (-2, -1)),
    "1d-sequence": ((3, 40, 2), 5, (-2,)),
    "3d-volume": ((1, 6, 7, 8, 2), 3, (-4, -3, -2)),
}


def _blocks(shape, block, spatial):
    """``block`` per spatial axis, clipped to the map."""
    block = (block,) * len(spatial) if isinstance(block, int) else block
    return list(oracle.clip_blocks([shape[d] for d in spatial], block))


# The two slowest cases only in the full run.
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=pytest.mark.slow) if c in ("nhwc-nonsquare", "nchw") else c
        for c in CASES
    ],
)
def test_zero_set_is_union_of_whole_blocks_inside_map(case):
    shape, block, spatial = CASES[case]
    x = jax.random.uniform(jax.random.key(1), shape, minval=1.0, maxval=2.0)
    keys = jax.random.split(jax.random.key(2), 4)
    for k in keys:
        y = np.asarray(jaxdrop.dropblock(k, x, 0.7, block, spatial_dims=spatial))
        zero = y == 0
        assert zero.any() and not zero.all()  # otherwise the test would prove nothing
        canonical = [d % len(shape) for d in spatial]
        assert oracle.is_union_of_full_blocks(zero, canonical, _blocks(shape, block, spatial))


# The two slowest combinations only in the full run.
@pytest.mark.parametrize(
    ("dtype", "normalize"),
    [
        pytest.param(d, n, marks=pytest.mark.slow)
        if (d, n) in ((jnp.float16, "expected"), (jnp.float32, "actual"))
        else (d, n)
        for d in (jnp.float32, jnp.bfloat16, jnp.float16)
        for n in ("actual", "expected", "none")
    ],
)
def test_kept_values_equal_x_times_scale(key, normalize, dtype):
    x = jax.random.normal(jax.random.key(3), (2, 12, 10, 3)).astype(dtype)
    keep_prob = 0.8
    y = jaxdrop.dropblock(key, x, keep_prob, 3, normalize=normalize)
    assert y.dtype == dtype
    y, x = np.asarray(y.astype(jnp.float32)), np.asarray(x.astype(jnp.float32))
    kept = y != 0
    scale = {
        "actual": np.float32(kept.size) / np.float32(kept.sum()),
        "expected": np.float32(1) / np.float32(keep_prob),
        "none": np.float32(1),
    }[normalize]
    expected = jnp.asarray(x * scale).astype(dtype).astype(jnp.float32)
    np.testing.assert_array_equal(y[kept], np.asarray(expected)[kept])
    assert 0 < kept.mean() < 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "shape,block,spatial,calibrate",
    [
        ((64, 14, 10, 8), 5, (-3, -2), False),
        ((64, 14, 10, 8), 5, (-3, -2), True),
        ((64, 8, 30), 4, (-1,), False),
        ((64, 8, 30), 4, (-1,), True),
    ],
)
def test_drop_rate_matches_exact_expectation(key, shape, block, spatial, calibrate):
    keep_prob = 0.8
    blocks = _blocks(shape, block, spatial)
    sizes = [shape[d] for d in spatial]
    cover = oracle.coverage(sizes, blocks)
    if calibrate:
        expected = keep_prob
    else:
        expected = np.mean((1 - oracle.paper_gamma(keep_prob, sizes, blocks)) ** cover)
    y = jaxdrop.dropblock(key, jnp.ones(shape), keep_prob, block, spatial_dims=spatial,
                          calibrate=calibrate)  # fmt: skip
    # Masks of different examples are independent draws; units inside one mask are correlated
    # (blocks), so the band comes from the spread of the 64 per-example kept fractions: the mean
    # of 64 independent draws lies within 5 standard errors of its expectation except with
    # probability < 1e-6.
    per_example = np.asarray(jnp.mean(y != 0, axis=tuple(range(1, len(shape)))))
    stderr = per_example.std(ddof=1) / np.sqrt(len(per_example))
    assert abs(per_example.mean() - expected) < 5 * stderr
    if not calibrate:  # the paper's formula really drops less than asked for
        assert expected > keep_prob + 0.01


def test_paper_gamma_keeps_more_than_asked_and_calibrate_solves_it():
    # Exact property of the solver: the calibrated gamma gives exactly keep_prob in expectation.
    for sizes, blocks in [((28, 28), (7, 7)), ((7, 7), (3, 3)), ((9, 13), (4, 2)), ((40,), (5,))]:
        cover = oracle.coverage(sizes, blocks)
        for keep_prob in (0.5, 0.9, 0.95):
            gamma = dropblock_src.seed_probability(jnp.float32(keep_prob), sizes, blocks, True)
            np.testing.assert_allclose(np.mean((1 - float(gamma)) ** cover), keep_prob, rtol=1e-5)
            paper = oracle.paper_gamma(keep_prob, sizes, blocks)
            assert float(gamma) > paper


def test_broadcast_dims_share_the_mask(key):
    x = jnp.ones((4, 16, 16, 5))
    y = np.asarray(jaxdrop.dropblock(key, x, 0.7, 3, broadcast_dims=(-1,))) == 0
    np.testing.assert_array_equal(y, np.broadcast_to(y[..., :1], y.shape))
    assert not np.array_equal(y[0], y[1])
    y = np.asarray(jaxdrop.dropblock(key, x, 0.7, 3, broadcast_dims=(0,))) == 0
    np.testing.assert_array_equal(y, np.broadcast_to(y[:1], y.shape))
    assert not np.array_equal(y[..., 0], y[..., 1])


@pytest.mark.slow
def test_masks_are_independent_per_example_and_channel(key):
    y = np.asarray(jaxdrop.dropblock(key, jnp.ones((8, 16, 16, 8)), 0.7, 3)) == 0
    maps = y.transpose(0, 3, 1, 2).reshape(64, -1)
    # 64 maps of 256 units, each about 30% dropped: two equal maps would be a shared mask.
    assert len({m.tobytes() for m in maps}) == 64
    # Independence across maps: the fraction of units dropped in both of two different maps is
    # p_drop ** 2 up to noise (a shared or correlated mask gives p_drop).
    p = maps.mean()
    both = (maps[:, None, :] & maps[None, :, :]).mean(axis=-1)[~np.eye(64, dtype=bool)].mean()
    assert abs(both - p**2) < 0.25 * p * (1 - p)


@pytest.mark.slow
@pytest.mark.parametrize(
    "keep_prob,calibrate,normalize",
    [
        (1.0, False, "actual"),
        (1.0, True, "expected"),
        (1.0, False, "none"),
        (0.0, True, "actual"),
        (0.0, False, "actual"),
        (0.0, False, "expected"),
        (0.0, True, "none"),
    ],
)
def test_keep_prob_edges_python_and_traced(key, x_key, keep_prob, calibrate, normalize):
    x = jax.random.normal(x_key, (2, 9, 9, 2))
    kw = dict(normalize=normalize, calibrate=calibrate)
    eager = jaxdrop.dropblock(key, x, keep_prob, 3, **kw)
    traced = jax.jit(lambda k, x, p: jaxdrop.dropblock(k, x, p, 3, **kw))(key, x, keep_prob)
    want = x if keep_prob == 1.0 else jnp.zeros_like(x)
    np.testing.assert_array_equal(eager, want)
    np.testing.assert_array_equal(traced, want)
    grad = jax.grad(lambda x: jaxdrop.dropblock(key, x, jnp.float32(keep_prob), 3, **kw).sum())(x)
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad, jnp.full_like(x, keep_prob))


@pytest.mark.slow
def test_gradients(key, x_key):
    x = jax.random.normal(x_key, (2, 8, 8, 2))
    for normalize in ("actual", "expected"):
        f = lambda x, n=normalize: jaxdrop.dropblock(key, x, 0.7, 3, normalize=n)  # noqa: E731
        check_grads(f, (x,), order=1, modes=["rev"])
        # Linear in x: the gradient of sum(y) is the mask times the scale.
        y, grad = f(x), jax.grad(lambda x, f=f: f(x).sum())(x)
        np.testing.assert_allclose(grad * x, y, rtol=1e-6)
    # keep_prob receives no gradient.
    g = jax.grad(lambda p: jaxdrop.dropblock(key, x, p, 3, normalize="expected").sum())(0.7)
    assert float(g) == 0.0


@pytest.mark.slow
def test_float16_count_does_not_overflow(key):
    # 400 000 units: a float16 sum of the mask would overflow at 65 504 and zero the output.
    x = jnp.ones((4, 100, 100, 10), jnp.float16)
    y = jaxdrop.dropblock(key, x, 0.9, 5)
    kept = np.asarray(y != 0)
    assert y.dtype == jnp.float16 and np.all(np.isfinite(np.asarray(y, np.float32)))
    np.testing.assert_allclose(np.asarray(y, np.float32)[kept], kept.size / kept.sum(), rtol=1e-3)


# One smoke row: the checks are tested in tests/test_checks.py, and tests/test_properties.py
# draws bad axes, dtypes, block sizes and keep_probs for dropblock over many shapes.
@pytest.mark.parametrize(
    "kwargs,error,match",
    [(dict(broadcast_dims=(1,)), ValueError, "`spatial_dims` and `broadcast_dims`")],
)
def test_bad_input(key, kwargs, error, match):
    args = dict(x=jnp.ones((2, 8, 8, 3)), keep_prob=0.9, block_size=3)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        jaxdrop.dropblock(key, args.pop("x"), args.pop("keep_prob"), args.pop("block_size"), **args)


# ---------------------------------------------------------------------------------------------
# The sparse sampler (CPU, with a static bound on gamma) and min_keep_prob
# ---------------------------------------------------------------------------------------------

SPARSE_CASES = {
    # Seed grids large enough that CPU draws only the seeds.
    "nhwc": ((2, 30, 34, 4), 5, (1, 2)),
    "nchw": ((2, 4, 30, 34), (5, 4), (2, 3)),
    "1d-sequence": ((2, 800, 3), 5, (1,)),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", SPARSE_CASES)
def test_sparse_mask_is_the_oracle_of_its_seeds(key, case):
    shape, block, spatial = SPARSE_CASES[case]
    blocks = tuple(_blocks(shape, block, spatial))
    keep_prob = 0.8
    cap = dropblock_src.seed_cap(shape, spatial, blocks, False, keep_prob, None)
    assert cap is not None  # Otherwise this would test the dense draw.
    sizes = tuple(shape[d] for d in spatial)
    gamma = dropblock_src.seed_probability(jnp.float32(keep_prob), sizes, blocks, False)
    seed_shape = list(shape)
    for d, b in zip(spatial, blocks, strict=True):
        seed_shape[d] -= b - 1
    seeds = sampling.bernoulli_seeds(
        key, gamma, tuple(seed_shape), gamma_cap=cap, leading_axes=min(spatial)
    )
    mask = dropblock_src.dropblock_mask(
        key,
        jnp.float32(keep_prob),
        shape=shape,
        spatial_dims=spatial,
        block_size=blocks,
        calibrate=False,
        seed_cap=cap,
    )
    np.testing.assert_array_equal(
        np.asarray(mask), oracle.dropblock_keep(np.asarray(seeds), spatial, blocks)
    )
    assert 0 < np.asarray(mask).mean() < 1
    # And dropblock itself uses that mask.
    y = jaxdrop.dropblock(key, jnp.ones(shape), keep_prob, block, spatial_dims=spatial)
    np.testing.assert_array_equal(np.asarray(y) != 0, np.asarray(mask))


@pytest.mark.slow
def test_vmap_matches_per_example_loop_with_the_sparse_sampler():
    # Per example, a (28, 28, 8) map: one row of 26 * 26 * 8 seed positions, sparse on CPU.
    keys = jax.random.split(jax.random.key(5), 3)
    xs = jax.random.normal(jax.random.key(6), (3, 28, 28, 8))
    assert dropblock_src.seed_cap(xs.shape[1:], (0, 1), (3, 3), False, 0.9, None) is not None
    for normalize in ("actual", "expected"):
        f = lambda k, x, n=normalize: jaxdrop.dropblock(k, x, 0.9, 3, normalize=n)  # noqa: E731
        batched = jax.vmap(f)(keys, xs)
        for i in range(3):
            np.testing.assert_array_equal(batched[i], f(keys[i], xs[i]))


@pytest.mark.slow
def test_traced_keep_prob_below_min_keep_prob_is_clipped_up(key):
    x = jnp.ones((2, 30, 30, 4))
    f = jax.jit(lambda p: jaxdrop.dropblock(key, x, p, 5, normalize="expected", min_keep_prob=0.8))
    at_min = np.asarray(f(jnp.float32(0.8)))
    assert 0 < (at_min == 0).mean() < 0.3
    # Below the bound (negative included) gives exactly the output at the bound, scale
    # included; NaN (a broken schedule) gives zeros, as without a bound.
    for below in (0.3, 0.0, -2.0):
        np.testing.assert_array_equal(np.asarray(f(jnp.float32(below))), at_min)
    np.testing.assert_array_equal(np.asarray(f(jnp.float32("nan"))), np.zeros_like(x))
    np.testing.assert_array_equal(np.asarray(f(jnp.float32(1.0))), x)
    # Above the bound nothing is clipped: the expected scale is 1 / keep_prob.
    kept = np.asarray(f(jnp.float32(0.9)))
    np.testing.assert_array_equal(kept[kept != 0], np.float32(1) / np.float32(0.9))
    # A Python keep_prob at or above the bound is the plain call.
    np.testing.assert_array_equal(
        jaxdrop.dropblock(key, x, 0.9, 5, min_keep_prob=0.8), jaxdrop.dropblock(key, x, 0.9, 5)
    )


@pytest.mark.parametrize(
    "min_keep_prob,keep_prob,error,match",
    [
        (0.0, 0.9, ValueError, r"`min_keep_prob` must be in \(0, 1\], got 0.0"),
        (1.5, 0.9, ValueError, "`min_keep_prob` must be in"),
        (float("nan"), 0.9, ValueError, "`min_keep_prob`"),
        ("0.8", 0.9, TypeError, "`min_keep_prob` must be a Python float"),
        (jnp.float32(0.8), 0.9, TypeError, "`min_keep_prob` must be a Python float"),
        (0.8, 0.5, ValueError, "`keep_prob` must be at least `min_keep_prob`.*0.5.*0.8"),
    ],
)
def test_bad_min_keep_prob(key, min_keep_prob, keep_prob, error, match):
    with pytest.raises(error, match=match):
        jaxdrop.dropblock(key, jnp.ones((2, 8, 8, 3)), keep_prob, 3, min_keep_prob=min_keep_prob)


@pytest.mark.slow
def test_sparse_sampler_reuses_no_key():
    # Forward and gradient on the sparse path (Python keep_prob, and traced with a bound): the
    # platform case passes the key to both samplers, which the checker must see as one use,
    # and it accepts the backward pass's redraw under jax.checkpoint.
    x = jnp.ones((2, 28, 28, 8))
    with jax.debug_key_reuse(True):
        for seed, p, bound in ((0, 0.9, None), (1, jnp.float32(0.9), 0.8)):
            key = jax.random.key(seed)  # A fresh key per step: using one twice is a reuse.

            def loss(x, key, p=p, bound=bound):
                return jaxdrop.dropblock(key, x, p, 3, min_keep_prob=bound).sum()

            grad = jax.jit(jax.grad(loss))(x, key)
            assert 0 < float(jnp.mean(grad == 0)) < 0.5
