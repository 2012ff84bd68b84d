"""Applying a random keep-mask to an array: normalisation, exact counts and a mask-free backward.

Every jaxdrop method is ``make_mask`` (a function of the key and ``keep_prob`` that returns a
boolean keep-mask broadcastable to ``x``) plus :func:`apply_mask`, which zeroes the dropped units
and rescales the kept ones. :func:`apply_mask` has a custom VJP: the forward pass keeps only the
key, ``keep_prob`` and the scalar scale as residuals, and the backward pass rebuilds the mask from
the key. So no array of ``x``'s size (the mask) stays alive between forward and backward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Normalize = Literal["actual", "expected", "none"]
NORMALIZE_CHOICES = ("actual", "expected", "none")
MaskFn = Callable[[jax.Array, jax.Array], jax.Array]

# Partial sums are taken over at most this many int32 values below 2**16, so they stay below 2**31.
_CHUNK = 2**15
_INT32_LIMIT = 2**31


def _exact_sum_small(values: jax.Array) -> jax.Array:
    """Sum of int32 ``values`` in [0, 2**16), exact in int32 pieces, returned as float32."""
    values = values.ravel()
    if values.size <= _CHUNK:
        return jnp.sum(values, dtype=jnp.int32).astype(jnp.float32)
    pad = (-values.size) % _CHUNK
    partial = jnp.pad(values, (0, pad)).reshape(-1, _CHUNK).sum(axis=1, dtype=jnp.int32)
    return _exact_sum(partial)


def _exact_sum(values: jax.Array) -> jax.Array:
    """Sum of int32 ``values`` in [0, 2**31): split into 16-bit halves so no int32 sum overflows."""
    low = _exact_sum_small(values & 0xFFFF)
    high = _exact_sum_small(values >> 16)
    return low + jnp.float32(2**16) * high


def count_true(mask: jax.Array) -> jax.Array:
    """Number of ``True`` entries of ``mask`` as float32, counted exactly in integers.

    A float16 sum overflows at 65 504 and a float32 sum stops being exact past 2**24, so counts are
    int32 sums over pieces of fewer than 2**31 entries, combined without overflow for any size;
    only the final total is rounded to float32.
    """
    if mask.size < _INT32_LIMIT:
        return jnp.sum(mask, dtype=jnp.int32).astype(jnp.float32)
    # Sum the trailing axes that hold fewer than 2**31 entries in int32, then combine the partial
    # sums exactly. Every jaxdrop mask has a spatial axis, so a trailing block that small exists
    # unless a single axis is longer than 2**31, which we flatten and chunk instead.
    split = mask.ndim
    while split > 0 and np.prod(mask.shape[split - 1 :]) < _INT32_LIMIT:
        split -= 1
    if split == mask.ndim:
        mask = mask.ravel()
        pad = (-mask.size) % _CHUNK
        mask, split = jnp.pad(mask, (0, pad)).reshape(-1, _CHUNK), 1
    partial = jnp.sum(mask, axis=tuple(range(split, mask.ndim)), dtype=jnp.int32)
    return _exact_sum(partial)


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 4))
def _apply(make_mask: MaskFn, rng, x, keep_prob, normalize):
    mask = make_mask(rng, keep_prob)
    return _masked(x, mask, compute_scale(mask, keep_prob, normalize))


def _apply_fwd(make_mask, rng, x, keep_prob, normalize):
    mask = make_mask(rng, keep_prob)
    scale = compute_scale(mask, keep_prob, normalize)
    # Residuals are the key, keep_prob and one scalar: nothing of x's size.
    return _masked(x, mask, scale), (rng, keep_prob, scale)


def _apply_bwd(make_mask, normalize, residuals, g):
    rng, keep_prob, scale = residuals
    # Rebuild the mask from the key instead of keeping it alive since the forward pass.
    mask = make_mask(rng, keep_prob)
    return None, _masked(g, mask, scale), None


_apply.defvjp(_apply_fwd, _apply_bwd)


def apply_mask(
    make_mask: MaskFn,
    rng: jax.Array,
    x: jax.Array,
    keep_prob: float | jax.Array,
    normalize: Normalize,
) -> jax.Array:
    """Returns ``where(mask, x * scale, 0)`` with ``mask = make_mask(rng, keep_prob)``.

    ``make_mask`` must be deterministic in its arguments (it is called again in the backward
    pass) and hashable (a module-level function or a ``functools.partial`` of one). ``keep_prob``
    is clipped to [0, 1] and receives no gradient.
    """
    keep_prob = jnp.clip(lax.stop_gradient(jnp.asarray(keep_prob, jnp.float32)), 0.0, 1.0)
    return _apply(make_mask, rng, x, keep_prob, normalize)
