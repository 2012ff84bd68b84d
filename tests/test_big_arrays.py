"""Index and count arithmetic at sizes where 32-bit integers and float32 counts break.

- One example with more than 2**24 units: a float32 count is no longer exact there, so the scale
  of ``normalize="actual"`` must come from an exact integer count (compared with NumPy int64).
- An array of more than 2**31 elements (bfloat16, 4.3 GB; ``@pytest.mark.bigmem``, skip it
  locally with ``-m "not bigmem"``): seed positions past 2**31 must not overflow int32, and the
  structure, drop rate and scale must hold everywhere, including past flat index 2**31.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrop
from jaxdrop._src import masking


def window_sums(a: np.ndarray, b: int) -> np.ndarray:
    """Sums of every ``b x b`` window of a 2-D array (VALID), via an integral image."""
    s = np.zeros((a.shape[0] + 1, a.shape[1] + 1), np.int64)
    s[1:, 1:] = a.astype(np.int64).cumsum(0).cumsum(1)
    return s[b:, b:] - s[:-b, b:] - s[b:, :-b] + s[:-b, :-b]


def blocks_explain(dropped: np.ndarray, b: int, margin: int = 0) -> bool:
    """True iff every dropped unit (away from a ``margin`` of a crop's border) lies in a full
    ``b x b`` block of dropped units: the morphological opening, vectorised for large maps."""
    fits = window_sums(dropped, b) == b * b  # A seed position whose whole block is dropped.
    padded = np.pad(fits, b - 1)
    covered = window_sums(padded, b) > 0  # The union of those blocks, back on the map.
    inner = (slice(margin, dropped.shape[0] - margin), slice(margin, dropped.shape[1] - margin))
    return bool(np.array_equal(covered[inner], dropped[inner]))


def coverage_values(h: int, b: int) -> np.ndarray:
    """Per position along an axis of length ``h``: how many seed positions cover it."""
    i = np.arange(h)
    return np.minimum(i, h - b) - np.maximum(0, i - b + 1) + 1


def expected_keep(keep_prob: float, h: int, w: int, b: int) -> float:
    """Exact expected kept fraction of a ``h x w`` map with the paper's gamma."""
    gamma = (1 - keep_prob) * h * w / (b * b * (h - b + 1) * (w - b + 1))
    ch, fh = np.unique(coverage_values(h, b), return_counts=True)
    cw, fw = np.unique(coverage_values(w, b), return_counts=True)
    keep = (1 - gamma) ** np.multiply.outer(ch, cw).astype(float)
    return float(np.einsum("i,j,ij->", fh / h, fw / w, keep))


def scale_ulps(scale: float, total: int, kept: int) -> float:
    """Distance of a float32 ``scale`` from the exact ``total / kept``, in float32 ulps."""
    exact = total / kept
    return abs(scale - exact) / float(np.spacing(np.float32(exact)))


# ---------------------------------------------------------------------------------------------
# More than 2**24 units in one example
# ---------------------------------------------------------------------------------------------


# The 123 M element count is marked slow; the sizes before it already pass 2**24.
@pytest.mark.parametrize(
    "n", [2**24 - 1, 2**24 + 1, 2**25 + 3, pytest.param(123_456_789, marks=pytest.mark.slow)]
)
def test_count_true_is_exact_up_to_one_final_rounding(n):
    # A float32 running sum cannot count past 2**24 (2**24 + 1 == 2**24 in float32); the integer
    # count is exact and only the total is rounded to float32, once.
    shape = (n // 4096 + 1, 4096)

    @jax.jit
    def count():
        i = jax.lax.broadcasted_iota(jnp.int32, shape, 0) * 4096
        j = jax.lax.broadcasted_iota(jnp.int32, shape, 1)
        return masking.count_true(i + j < n)

    assert float(count()) == float(np.float32(n))


# Two examples (40.5 M units) are marked slow; one example already has more than 2**24.
@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_actual_scale_past_2_24_units_per_example(batch):
    # One example of 4500 x 4500 = 20.25M units, more than 2**24: the scale of "actual" is
    # size / kept with kept counted exactly (NumPy int64 here), rounded as float32 arithmetic
    # on exact integers rounds: float32(size) / float32(kept), within one ulp of the exact ratio.
    shape = (batch, 4500, 4500, 1)
    y = jax.jit(lambda k: jaxdrop.dropblock(k, jnp.ones(shape), 0.9, 7))(jax.random.key(0))
    y = np.asarray(y)
    total = math.prod(shape)
    kept = int(np.count_nonzero(y))
    assert kept > 2**24 * batch
    values = np.unique(y[y != 0])
    assert values.size == 1  # Every kept unit is x * the same scale.
    expected = np.float32(total) / np.float32(kept)
    assert values[0] == expected
    assert scale_ulps(float(values[0]), total, kept) <= 1.0
    # The drop rate and the block structure of the first example, on a corner and the middle.
    np.testing.assert_allclose(kept / total, expected_keep(0.9, 4500, 4500, 7), atol=3e-3)
    for crop in (y[0, :300, :300, 0], y[0, 2100:2400, 2100:2400, 0]):
        assert blocks_explain(crop == 0, 7, margin=6)


# ---------------------------------------------------------------------------------------------
# More than 2**31 elements
# ---------------------------------------------------------------------------------------------

# 46400 x 46400 = 2 152 960 000 units (4.3 GB in bfloat16) and, with block 3, a seed grid of
# 46398 x 46398 = 2 152 774 404 positions: both past 2**31 = 2 147 483 648.
SIDE = 46400
BLOCK = 3
KEEP_PROB = 0.9


@pytest.mark.bigmem
def test_past_2_31_elements():
    shape = (1, SIDE, SIDE, 1)
    total = math.prod(shape)
    assert total > 2**31 and (SIDE - BLOCK + 1) ** 2 > 2**31

    # x = ones is built inside the jit, so only the output (4.3 GB) has to exist.
    step = jax.jit(lambda k: jaxdrop.dropblock(k, jnp.ones(shape, jnp.bfloat16), KEEP_PROB, BLOCK))
    compiled = step.lower(jax.random.key(0)).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    # The mask and its intermediates are bytes per unit; no int32 / uint32 array of x's size.
    assert temp < 3 * total, f"dropblock needs {temp / 1e9:.1f} GB of temporaries"
    y = compiled(jax.random.key(0))
    # A zero-copy NumPy view of the output, read in slabs of rows to keep memory low.
    bits = np.asarray(y).reshape(SIDE, SIDE).view(np.uint16)

    # Every kept unit is x * the same scale, float32(total) / float32(kept) as bfloat16, and
    # every dropped unit is +0.0 (bits 0). Kept units are counted per row in int64.
    rows = np.zeros(SIDE, np.int64)
    kept_bits = set()
    for start in range(0, SIDE, 2000):
        slab = bits[start : start + 2000]
        nonzero = slab != 0
        rows[start : start + 2000] = np.count_nonzero(nonzero, axis=1)
        kept_bits.update(np.unique(slab[nonzero]).tolist())
    kept = int(rows.sum())
    scale = np.float32(total) / np.float32(kept)
    assert scale_ulps(float(scale), total, kept) <= 1.0
    assert kept_bits == {int(np.asarray(scale, jnp.bfloat16).view(np.uint16))}

    # The drop rate over the whole map, and over its last 100 rows, which lie past flat index
    # 2**31 (an int32 position would wrap there). Standard deviations, from the number of
    # seeds (each drops up to 9 units): 2e-5 overall, 5e-4 over 100 rows; tolerances 10 and 6.
    expected = expected_keep(KEEP_PROB, SIDE, SIDE, BLOCK)
    assert abs(kept / total - expected) < 2e-4, (kept / total, expected)
    assert (SIDE - 100) * SIDE > 2**31
    tail = rows[-100:].sum() / (100 * SIDE)
    assert abs(tail - expected) < 3e-3, (tail, expected)

    # Structure: every dropped unit in a full 3 x 3 block, in crops before and past 2**31.
    for start in (0, SIDE // 2, SIDE - 200):
        crop = bits[start : start + 200] == 0
        assert blocks_explain(crop, BLOCK, margin=BLOCK - 1)
    # The last rows and columns are dropped too (seeds reach the far corner).
    corner = bits[-300:, -300:] == 0
    assert corner[-BLOCK:].any() and corner[:, -BLOCK:].any()
    assert blocks_explain(corner, BLOCK, margin=BLOCK - 1)
