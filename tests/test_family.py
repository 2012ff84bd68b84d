"""dropout, spatial_dropout, drop_path, cutout and dropconnect: structure, scale, rates, transforms.

Unit-dropping methods share one mask kernel, so the common properties (identity, zeros, scale,
transforms, dtypes) are tested once over all four; each method then gets its structural test.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest

import jaxdrop
from jaxdrop._src import cutout as cutout_lib


def _dropconnect_array(rng, x, keep_prob):
    return jaxdrop.dropconnect(rng, x, keep_prob)


# The unit-dropping methods on one (N, H, W, C) input: name, function, the mask shape that
# holds the independent draws.
UNIT_METHODS = {
    "dropout": (jaxdrop.dropout, lambda s: s),
    "spatial_dropout": (jaxdrop.spatial_dropout, lambda s: (s[0], 1, 1, s[3])),
    "drop_path": (jaxdrop.drop_path, lambda s: (s[0], 1, 1, 1)),
    "dropconnect": (_dropconnect_array, lambda s: s),
}
SHAPE = (6, 5, 7, 4)  # non-square, small.


def _x(shape=SHAPE, dtype=jnp.float32):
    # Away from zero, so that a zero in the output always means "dropped". Drawn in NumPy: no
    # compilation per shape.
    x = np.random.default_rng(42).uniform(0.5, 2.0, shape).astype(np.float32)
    return jnp.asarray(x, dtype)


@pytest.fixture(params=list(UNIT_METHODS))
def method(request):
    return UNIT_METHODS[request.param]


# --- common properties of the unit-dropping methods ----------------------------------------------


@pytest.mark.parametrize("keep_prob", [1.0, jnp.float32(1.0)])
def test_identity_at_one(method, key, keep_prob):
    fn, _ = method
    x = _x()
    np.testing.assert_array_equal(fn(key, x, keep_prob), x)


@pytest.mark.parametrize(
    "method",
    [pytest.param(m, marks=pytest.mark.slow) if m == "dropout" else m for m in UNIT_METHODS],
    indirect=True,
)
def test_zeros_at_zero_with_finite_gradient(method, key):
    fn, _ = method
    x = _x()
    keep_prob = 0.0
    y = fn(key, x, keep_prob)
    np.testing.assert_array_equal(y, jnp.zeros_like(x))
    grad = jax.grad(lambda x: jnp.sum(fn(key, x, keep_prob)))(x)
    assert bool(jnp.all(jnp.isfinite(grad)))
    np.testing.assert_array_equal(grad, jnp.zeros_like(x))


def test_kept_units_are_scaled_exactly(method, key):
    fn, _ = method
    x = _x()
    keep_prob = 0.7
    y = fn(key, x, keep_prob)
    kept = y != 0
    scale = jnp.float32(1.0) / jnp.float32(keep_prob)
    np.testing.assert_array_equal(y, jnp.where(kept, x * scale, 0.0))
    assert 0 < int(kept.sum()) < x.size  # both kept and dropped units occur with this key


@pytest.mark.parametrize(
    "method",
    [pytest.param(m, marks=pytest.mark.slow) if m == "dropout" else m for m in UNIT_METHODS],
    indirect=True,
)
def test_drop_rate_matches_expectation(method, key):
    fn, mask_shape = method
    shape = (200, 6, 5, 50)
    keep_prob = 0.7
    y = fn(key, jnp.ones(shape), keep_prob)
    # One value per independent draw: units that share a mask entry share its fate.
    shared = tuple(d for d, n in enumerate(mask_shape(shape)) if n == 1)
    draws = jnp.any(y != 0, axis=shared)
    n, kept = draws.size, int(draws.sum())
    # The kept draws are Binomial(n, keep_prob): 5 sigma, a fail probability below 1e-6 (and the
    # key is fixed, so the test is deterministic).
    sigma = np.sqrt(n * keep_prob * (1 - keep_prob))
    assert abs(kept - n * keep_prob) < 5 * sigma


@pytest.mark.parametrize(
    "method",
    [pytest.param(m, marks=pytest.mark.slow) if m == "dropout" else m for m in UNIT_METHODS],
    indirect=True,
)
def test_low_precision_keeps_dtype(method, key):
    fn, _ = method
    dtype = jnp.bfloat16
    x = _x(dtype=dtype)
    y = fn(key, x, 0.9)
    assert y.dtype == dtype
    kept = y != 0
    # Kept units are x * (1 / 0.9) computed in float32 and rounded once to the dtype.
    expected = (x.astype(jnp.float32) * (jnp.float32(1) / jnp.float32(0.9))).astype(dtype)
    np.testing.assert_array_equal(y, jnp.where(kept, expected, jnp.zeros((), dtype)))
    # A strongly typed float32 keep_prob must not promote the output.
    assert fn(key, x, jnp.float32(0.9)).dtype == dtype
    # A keep probability so small that 1 / keep_prob overflows float16: the dropped units are
    # exact zeros, never 0 * inf = NaN.
    y = fn(key, jnp.ones((64, 8, 8, 16), jnp.float16), 1e-6)
    assert y.dtype == jnp.float16
    assert not bool(jnp.any(jnp.isnan(y)))
    assert int(jnp.sum(y == 0)) > 0


# --- dropout -------------------------------------------------------------------------------------


def test_dropout_matches_flax(key):
    x = _x()
    for broadcast_dims in [(), (0, 3)]:
        ours = jaxdrop.dropout(key, x, 0.8, broadcast_dims=broadcast_dims)
        flax = nn.Dropout(rate=0.2, broadcast_dims=broadcast_dims, deterministic=False).apply(
            {}, x, rng=key
        )
        np.testing.assert_array_equal(ours == 0, flax == 0)
        np.testing.assert_allclose(ours, flax, rtol=1e-6)


def test_dropout_broadcast_dims_share_the_mask(key):
    y = jaxdrop.dropout(key, jnp.ones(SHAPE), 0.5, broadcast_dims=(0, -1))
    kept = y != 0
    np.testing.assert_array_equal(kept, jnp.broadcast_to(kept[:1, :, :, :1], SHAPE))
    assert 0 < int(kept[0, :, :, 0].sum()) < 35


# --- spatial_dropout -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, spatial_dims",
    [
        ((8, 5, 7, 16), (-3, -2)),  # NHWC
        ((8, 16, 5, 7), (-2, -1)),  # NCHW
        ((8, 11, 16), (-2,)),  # sequences (N, L, C)
        ((4, 3, 4, 5, 16), (1, 2, 3)),  # volumes
    ],
)
def test_spatial_dropout_drops_whole_maps(key, shape, spatial_dims):
    y = jaxdrop.spatial_dropout(key, jnp.ones(shape), 0.5, spatial_dims=spatial_dims)
    kept = y != 0
    # Each (example, channel) map is entirely kept or entirely dropped ...
    any_kept = jnp.any(kept, axis=spatial_dims, keepdims=True)
    np.testing.assert_array_equal(kept, jnp.broadcast_to(any_kept, shape))
    # ... independently per example and per channel.
    maps = any_kept.reshape(shape[0], -1)
    assert 0 < int(maps.sum()) < maps.size
    assert len({tuple(row) for row in np.asarray(maps)}) > 1


# --- drop_path -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, batch_axis", [((16, 9, 8), 0), ((16, 5, 7, 3), 0), ((9, 16, 8), 1), ((16,), 0)]
)
def test_drop_path_drops_whole_examples(key, shape, batch_axis):
    x = _x(shape)
    y = jaxdrop.drop_path(key, x, 0.5, batch_axis=batch_axis)
    others = tuple(d for d in range(len(shape)) if d != batch_axis)
    kept = jnp.all(y != 0, axis=others)
    np.testing.assert_array_equal(jnp.any(y != 0, axis=others), kept)
    assert 0 < int(kept.sum()) < shape[batch_axis]


def test_drop_path_batch_mode_and_no_scale(key):
    x = _x()
    outcomes = set()
    for i in range(16):
        y = jaxdrop.drop_path(jax.random.key(i), x, 0.5, mode="batch", scale_by_keep=False)
        # All or nothing for the whole batch; kept values are x itself.
        assert bool(jnp.all(y == x)) or bool(jnp.all(y == 0))
        outcomes.add(bool(jnp.all(y == x)))
    assert outcomes == {True, False}


def test_drop_path_keep_probs():
    assert jaxdrop.drop_path_keep_probs(4, 0.5) == (0.875, 0.75, 0.625, 0.5)
    assert jaxdrop.drop_path_keep_probs(1, 0.5) == (0.5,)
    # timm: [1 - r for r in torch.linspace(0, 0.1, 12)].
    timm = tuple(1.0 - r for r in np.linspace(0.0, 0.1, 12))
    np.testing.assert_allclose(
        jaxdrop.drop_path_keep_probs(12, 0.9, first_block_kept=True), timm, atol=1e-12
    )
    assert jaxdrop.drop_path_keep_probs(1, 0.9, first_block_kept=True) == (1.0,)
    assert all(type(p) is float for p in jaxdrop.drop_path_keep_probs(3, 0.8))


# --- cutout --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "shape, spatial_dims, size, num_patches",
    [
        ((6, 12, 9, 3), (1, 2), (5, 4), 1),  # NHWC, non-square, per-axis size, even side
        ((6, 3, 12, 9), (2, 3), 7, 3),  # NCHW, overlapping patches
        ((12, 9, 3), (0, 1), (20, 4), 2),  # a single image; a patch taller than the image
        ((6, 30, 2), (1,), 6, 2),  # sequences
    ],
)
def test_cutout_fills_exactly_the_patches(key, shape, spatial_dims, size, num_patches):
    x = _x(shape)
    y = jaxdrop.cutout(key, x, size, spatial_dims=spatial_dims, num_patches=num_patches, fill=-1.0)
    centres = np.asarray(
        cutout_lib.patch_centres(key, shape, spatial_dims=spatial_dims, num_patches=num_patches)
    )
    sizes = (size,) * len(spatial_dims) if isinstance(size, int) else size
    covered = oracle.cutout_covered(centres, shape, spatial_dims, sizes)
    np.testing.assert_array_equal(y, np.where(covered, -1.0, x))  # untouched elsewhere
    assert covered.any() and not covered.all()
    # The centres are spread over the whole image, not only where a patch fits.
    assert centres.min() >= 0 and all(
        centres[..., j].max() < shape[d] for j, d in enumerate(spatial_dims)
    )


def test_cutout_patch_shape_without_the_private_helper(key):
    # One patch per example: its fill set is a box whose side is `size` unless the border cuts it.
    y = jaxdrop.cutout(key, jnp.ones((32, 20, 20, 2)), 6)
    for example in np.asarray(y[..., 0] == 0):
        rows, cols = np.flatnonzero(example.any(1)), np.flatnonzero(example.any(0))
        assert example.sum() == rows.size * cols.size  # a box
        for idx in (rows, cols):
            assert idx.size == 6 or idx[0] == 0 or idx[-1] == 19
            assert np.all(np.diff(idx) == 1)


def test_cutout_rate_matches_expectation(key):
    n, h, w, s, patches = 4000, 10, 12, 5, 2
    y = jaxdrop.cutout(key, jnp.ones((n, h, w, 1)), s, num_patches=patches)
    filled = np.asarray(jnp.mean(y == 0, axis=(1, 2, 3)))
    # Exactly: a unit is covered by a patch with the product of its per-axis cover
    # probabilities, independently per axis and patch.
    cover = np.multiply.outer(
        oracle.cutout_cover_probability(h, s), oracle.cutout_cover_probability(w, s)
    )
    expected = np.mean(1 - (1 - cover) ** patches)
    # Examples are independent: 5 standard errors of the mean of the per-example fractions.
    assert abs(filled.mean() - expected) < 5 * filled.std() / np.sqrt(n)


@pytest.mark.slow
def test_cutout_transforms_and_dtypes(key):
    x = _x((4, 8, 8, 3), jnp.bfloat16)
    y = jaxdrop.cutout(key, x, 3, fill=jnp.float32(-1.0))
    assert y.dtype == jnp.bfloat16
    # A traced fill: one compilation serves every value.
    step = jax.jit(lambda rng, x, fill: jaxdrop.cutout(rng, x, 3, fill=fill))
    np.testing.assert_array_equal(step(key, x, jnp.float32(-1.0)), y)
    with oracle.compilations() as compiled:
        other = step(key, x, jnp.float32(-2.0))
    assert compiled == []
    np.testing.assert_array_equal(other == -2.0, y == -1.0)
    assert bool(jnp.any(y == -1.0))
    np.testing.assert_array_equal(
        jaxdrop.cutout(jax.random.PRNGKey(0), x, 3), jaxdrop.cutout(jax.random.key(0), x, 3)
    )
    # The gradient is 1 outside the patches and 0 inside, never NaN.
    x = _x((4, 8, 8, 3))
    grad = jax.grad(lambda x: jnp.sum(jaxdrop.cutout(key, x, 20)))(x)  # covers everything
    np.testing.assert_array_equal(grad, jnp.zeros_like(x))
    grad = jax.grad(lambda x: jnp.sum(jaxdrop.cutout(key, x, 3)))(x)
    np.testing.assert_array_equal(grad, (jaxdrop.cutout(key, x, 3) != 0).astype(jnp.float32))
    assert jaxdrop.cutout(key, x, 3, num_patches=0) is x


# --- dropconnect ---------------------------------------------------------------------------------


def _params():
    return {
        "Dense_0": {"kernel": _x((8, 16)), "bias": _x((16,))},
        "Dense_1": {"kernel": _x((8, 16)), "bias": _x((16,))},
        "Conv_0": {"kernel": _x((3, 3, 4, 8)), "bias": _x((8,))},
        "LayerNorm_0": {"scale": _x((16,)), "bias": _x((16,))},
        "step": jnp.asarray(3, jnp.int32),
    }


@pytest.mark.slow
def test_dropconnect_masks_only_weight_matrices_each_with_its_own_mask(key):
    params = _params()
    out = jaxdrop.dropconnect(key, params, 0.5)
    assert jax.tree.structure(out) == jax.tree.structure(params)
    for name in ["Dense_0", "Dense_1", "Conv_0"]:
        kernel, dropped = params[name]["kernel"], out[name]["kernel"]
        kept = dropped != 0
        np.testing.assert_array_equal(dropped, jnp.where(kept, kernel * jnp.float32(2.0), 0.0))
        assert 0 < int(kept.sum()) < kernel.size
        np.testing.assert_array_equal(out[name]["bias"], params[name]["bias"])
    # Identical kernels, different masks: the key is split per leaf.
    assert bool(jnp.any((out["Dense_0"]["kernel"] == 0) != (out["Dense_1"]["kernel"] == 0)))
    assert out["LayerNorm_0"] is params["LayerNorm_0"] or all(
        bool(jnp.all(out["LayerNorm_0"][k] == params["LayerNorm_0"][k])) for k in ("scale", "bias")
    )
    assert out["step"] is params["step"]


def test_dropconnect_where(key):
    params = _params()

    def only_dense_kernels(path, leaf):
        return path[0].key.startswith("Dense") and path[-1].key == "kernel"

    out = jaxdrop.dropconnect(key, params, 0.5, where=only_dense_kernels)
    np.testing.assert_array_equal(out["Conv_0"]["kernel"], params["Conv_0"]["kernel"])
    assert bool(jnp.any(out["Dense_0"]["kernel"] == 0))
    # A bias can be selected too.
    out = jaxdrop.dropconnect(key, params, 0.0, where=lambda path, leaf: path[-1].key == "bias")
    assert bool(jnp.all(out["Dense_0"]["bias"] == 0))
    np.testing.assert_array_equal(out["Dense_0"]["kernel"], params["Dense_0"]["kernel"])


def test_dropconnect_under_jit_with_traced_keep_prob(key):
    params = {"Dense_0": _params()["Dense_0"]}

    @jax.jit
    def loss(params, keep_prob):
        out = jaxdrop.dropconnect(key, params, keep_prob)
        return sum(jnp.sum(leaf) for leaf in jax.tree.leaves(out))

    grads = jax.grad(loss)(params, jnp.float32(0.5))
    loss(params, jnp.float32(0.5))
    with oracle.compilations() as compiled:  # No compilation per keep_prob value.
        jax.grad(loss)(params, jnp.float32(0.0))
        loss(params, jnp.float32(0.7))
    assert compiled == []
    masked = jaxdrop.dropconnect(key, params, 0.5)
    np.testing.assert_array_equal(
        grads["Dense_0"]["kernel"], jnp.where(masked["Dense_0"]["kernel"] != 0, 2.0, 0.0)
    )
    np.testing.assert_array_equal(grads["Dense_0"]["bias"], jnp.ones((16,)))


# --- bad inputs ----------------------------------------------------------------------------------

X = jnp.ones((2, 4, 4, 3))
# One smoke row per function: the checks themselves are tested in tests/test_checks.py. The
# `where` rows are DropConnect's own checks.
BAD_INPUTS = [
    (jaxdrop.dropout, (X, 0.5), {"broadcast_dims": (4,)}, ValueError, "broadcast_dims"),
    (jaxdrop.spatial_dropout, (X, 0.5), {"spatial_dims": (-5,)}, ValueError, "spatial_dims"),
    (jaxdrop.drop_path, (X, 0.5), {"mode": "example"}, ValueError, "mode"),
    (jaxdrop.cutout, (X, 2), {"fill": jnp.zeros(3)}, ValueError, "fill"),
    (jaxdrop.dropconnect, ({"w": X}, 1.5), {}, ValueError, "keep_prob"),
    (jaxdrop.dropconnect, ({"w": X}, 0.5), {"where": "kernel"}, TypeError, "where"),
    (
        jaxdrop.dropconnect,
        ({"w": X}, 0.5),
        {"where": lambda p, v: jnp.bool_(True)},
        TypeError,
        "where",
    ),
    (
        jaxdrop.dropconnect,
        ({"w": jnp.ones((2, 2), jnp.int32)}, 0.5),
        {"where": lambda p, v: True},
        TypeError,
        r"params\['w'\]",
    ),
]


@pytest.mark.parametrize(
    "fn, args, kwargs, error, match",
    BAD_INPUTS,
    ids=[f"{fn.__name__}-{match}-{i}" for i, (fn, _, _, _, match) in enumerate(BAD_INPUTS)],
)
def test_bad_inputs(key, fn, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        fn(key, *args, **kwargs)


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((0, 0.5), {}, ValueError, "num_blocks"),
        ((4, jnp.float32(0.5)), {}, TypeError, "final_keep_prob"),
    ],
)
def test_drop_path_keep_probs_bad_inputs(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        jaxdrop.drop_path_keep_probs(*args, **kwargs)
