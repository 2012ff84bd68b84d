"""Applying a random keep-mask to an array: normalisation, exact counts and a mask-free backward.

Every dropping method of jaxdrop (all but Cutout, which fills instead) is ``make_mask`` (a
function of the key and ``keep_prob`` that returns a boolean keep-mask broadcastable to ``x``)
plus :func:`apply_mask`, which zeroes the dropped units and rescales the kept ones;
:func:`drop_units` is that pair for the Bernoulli masks of dropout, SpatialDropout, DropPath and
DropConnect. :func:`apply_mask` runs under ``jax.checkpoint``: reverse mode keeps the key and
``keep_prob`` (scalars) between forward and backward and draws the mask again from the key in the
backward pass, so no array of ``x``'s size (the mask) is a residual, and forward mode
(``jax.jvp``, ``jax.linearize``, ``jax.jacfwd``, ``jax.hessian``) works as on any JAX function.
"""

from __future__ import annotations

import functools
import math
import typing
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

Normalize = Literal["actual", "expected", "none"]
NORMALIZE_CHOICES: tuple[str, ...] = typing.get_args(Normalize)
# make_mask(rng, keep_prob) -> a boolean keep-mask (True on the units that are kept).
MaskFn = Callable[[jax.Array, jax.Array], jax.Array]

_INT32_LIMIT = 2**31
# Longest axis that _xla_cpu_row_sums sums in int8 (127 ones still fit in an int8).
_INT8_ROW = 127
# A long axis is split into rows of its largest divisor up to _INT8_ROW, if that is at least
# this long (shorter rows would cost more slice adds than they save).
_MIN_SPLIT = 8


def _xla_cpu_row_sums(mask: jax.Array, axis: int) -> jax.Array:
    """``sum(mask, axis)`` as int8, as a pairwise tree of slice adds (at most 127 slices).

    A speed trick for XLA:CPU. There a reduce over a non-minor axis is a strided scalar loop per
    output element, and a wider accumulator first writes the mask out at that width; an
    elementwise tree of int8 slices instead fuses with the mask's producer and vectorises along
    the trailing axes. Other backends fuse either form.
    """
    values = mask.astype(jnp.int8)
    parts = [lax.index_in_dim(values, i, axis, keepdims=False) for i in range(mask.shape[axis])]
    while len(parts) > 1:
        pairs = [a + b for a, b in zip(parts[::2], parts[1::2], strict=False)]
        parts = pairs + parts[len(pairs) * 2 :]
    return parts[0]


def row_counts(mask: jax.Array) -> tuple[jax.Array, int]:
    """Counts of ``True`` along one axis of ``mask``, as int32, and the most any count can be.

    The reduced axis is the second-to-last, which is spatial in every default layout (W of
    NHWC, H of NCHW, L of NLC), and no axes are merged: reducing a sharded axis first (the
    channels of a tensor-parallel NHWC mask) would all-reduce the partial counts, and flattening
    the mask would all-gather it, whereas this way the only communication is the all-reduce of
    the total (tests/test_sharding.py). A 0-d or 1-D mask is its own counts.
    """
    if mask.ndim < 2:
        return mask.astype(jnp.int32), 1
    axis = mask.ndim - 2
    length = mask.shape[axis]
    if length > _INT8_ROW:
        # Split (never merge) a long axis into (length // row, row), so rows fit in int8.
        row = max(d for d in range(1, _INT8_ROW + 1) if length % d == 0)
        if row >= _MIN_SPLIT:
            mask = mask.reshape(mask.shape[:axis] + (length // row, row) + mask.shape[axis + 1 :])
            axis, length = axis + 1, row
    if 0 < length <= _INT8_ROW:
        return _xla_cpu_row_sums(mask, axis).astype(jnp.int32), length
    return jnp.sum(mask, axis=axis, dtype=jnp.int32), length


def _add_with_carry(a, b):
    # (high, low) stands for high * 2**16 + low with low in [0, 2**16): adding the lows stays
    # below 2**17 and the carry moves to the highs, so nothing overflows below 2**47.
    (high_a, low_a), (high_b, low_b) = a, b
    low = low_a + low_b
    return high_a + high_b + (low >> 16), low & 0xFFFF


def exact_total(counts: jax.Array, bound: int) -> jax.Array:
    """The sum of int32 ``counts`` in [0, bound], as float32, rounded once.

    An int32 sum is exact while the total stays below 2**31. Past that, trailing axes are summed
    in int32 while they cannot reach 2**31 (a plain reduction, no reshape), and the partial sums
    are combined exactly as 16-bit (high, low) pairs by one variadic reduction. Exact below 2**47;
    the float32 result is correctly rounded below 2**40.
    """
    if counts.size * bound < _INT32_LIMIT:
        return jnp.sum(counts, dtype=jnp.int32).astype(jnp.float32)
    split = counts.ndim
    while split > 0 and math.prod(counts.shape[split - 1 :]) * bound < _INT32_LIMIT:
        split -= 1
    partial = jnp.sum(counts, axis=tuple(range(split, counts.ndim)), dtype=jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    high, low = lax.reduce(
        (partial >> 16, partial & 0xFFFF), (zero, zero), _add_with_carry, tuple(range(partial.ndim))
    )
    # high < 2**24 below 2**40 entries, so high * 2**16 is exact and the sum rounds once.
    return high.astype(jnp.float32) * jnp.float32(2**16) + low.astype(jnp.float32)


def count_true(mask: jax.Array) -> jax.Array:
    """Number of ``True`` entries of ``mask`` as float32, counted exactly in integers.

    A float16 sum overflows at 65 504 and a float32 sum stops being exact past 2**24, so counts are
    integer sums, combined without overflow for any size; only the final total is rounded to
    float32, once (correctly rounded below 2**40 entries).
    """
    return exact_total(*row_counts(mask))


def compute_scale(mask: jax.Array, keep_prob: jax.Array, normalize: Normalize) -> jax.Array:
    """The float32 factor applied to kept units."""
    if normalize == "actual":
        # Algorithm 1, step 8: count(M) / count_ones(M). All-dropped gives 0, never Inf or NaN.
        kept = count_true(mask)
        total = jnp.float32(mask.size)
        return jnp.where(kept > 0, total / jnp.maximum(kept, 1.0), 0.0)
    if normalize == "expected":
        # Prevent Inf (and NaN gradients) in the keep_prob = 0 edge case: everything is dropped.
        return jnp.where(keep_prob > 0, 1.0 / jnp.maximum(keep_prob, jnp.float32(1e-30)), 0.0)
    return jnp.float32(1.0)


def _masked(x: jax.Array, mask: jax.Array, scale: jax.Array) -> jax.Array:
    # Multiply in at least float32: a float16 scale overflows past 65 504 (a mask that keeps one
    # unit in 10**5 is enough), and 0 * inf would then be NaN. The result has x's dtype.
    compute = jnp.float32 if jnp.finfo(x.dtype).bits < 32 else x.dtype
    scaled = (x.astype(compute) * scale.astype(compute)).astype(x.dtype)
    return jnp.where(mask, scaled, jnp.zeros((), x.dtype))


def _apply(make_mask: MaskFn, normalize: Normalize, rng, x, keep_prob):
    mask = make_mask(rng, keep_prob)
    return _masked(x, mask, compute_scale(mask, keep_prob, normalize))


# jax.checkpoint's prevent_cse: True wraps the backward pass's redraw of the mask in an
# optimization barrier, so that inside one jit XLA cannot merge it with the forward's draw. False
# lets XLA choose, as it did with the custom VJP this replaces (whose backward redraw XLA merged
# with the forward's): the jitted forward+backward of dropblock (16, 28, 28, 512) block 7 compiles
# to the same program as with the custom VJP (453 HLO ops), against 730 ops with True (the mask
# drawn twice), and an 8-layer MLP with dropout needed 96 MiB of XLA:CPU temporaries with False
# or the custom VJP, 112 MiB with True. The residuals that jax.vjp keeps are the key and
# keep_prob either way, and a forward-only program has no barrier either way.
_PREVENT_CSE = False


def apply_mask(
    make_mask: MaskFn,
    rng: jax.Array,
    x: jax.Array,
    keep_prob: float | jax.Array,
    normalize: Normalize,
) -> jax.Array:
    """Returns ``where(mask, x * scale, 0)`` with ``mask = make_mask(rng, keep_prob)``.

    ``make_mask`` must be deterministic in its arguments: reverse mode calls it again in the
    backward pass (``jax.checkpoint``) instead of keeping the mask. ``keep_prob`` is clipped to
    [0, 1] (NaN becomes 0) and receives no gradient. Differentiable in both modes: the tangent is
    ``where(mask, t * scale, 0)`` with the primal's mask and scale.
    """
    keep_prob = jnp.clip(lax.stop_gradient(jnp.asarray(keep_prob, jnp.float32)), 0.0, 1.0)
    # A traced NaN (a broken schedule) cannot be rejected: treat it as 0, so every method and
    # normalization drops everything instead of each doing something different.
    keep_prob = jnp.where(jnp.isnan(keep_prob), 0.0, keep_prob)
    apply = functools.partial(_apply, make_mask, normalize)
    return jax.checkpoint(apply, prevent_cse=_PREVENT_CSE)(rng, x, keep_prob)


def bernoulli_mask(rng: jax.Array, keep_prob: jax.Array, *, shape: tuple[int, ...]) -> jax.Array:
    """Boolean keep-mask of ``shape``, ``True`` with probability ``keep_prob`` (float32)."""
    # keep_prob arrives as float32 from apply_mask: bernoulli draws its uniform in the dtype of
    # p, and a bfloat16 p would be far too coarse.
    return jax.random.bernoulli(rng, keep_prob, shape)


@functools.partial(jax.jit, static_argnames=("mask_shape", "normalize"))
def drop_units(
    rng: jax.Array,
    x: jax.Array,
    keep_prob: float | jax.Array,
    *,
    mask_shape: tuple[int, ...],
    normalize: Normalize,
) -> jax.Array:
    """Keeps each entry of a Bernoulli mask of ``mask_shape`` (broadcast against ``x``).

    The shared kernel of dropout, spatial dropout, drop path and DropConnect: they differ only in
    which axes of the mask have size 1.
    """
    make_mask = functools.partial(bernoulli_mask, shape=mask_shape)
    return apply_mask(make_mask, rng, x, keep_prob, normalize)
