"""Slow, deliberately simple NumPy references for jaxdrop, written independently of the library.

Everything here loops over seeds, patches or units in plain Python and NumPy, so that it is easy
to check by reading. The property tests draw the random part (seed grid, Bernoulli mask, patch
centres) the same way the implementation does, build the expected output here, and compare
exactly.

The last section holds the two measurements of compiled programs that the tests share: how many
XLA compilations a block of code triggers, and which cross-device collectives compiled HLO has.
"""

from __future__ import annotations

import contextlib
import decimal
import itertools
import math
import re
from collections.abc import Iterator, Sequence

import jax
import numpy as np

# ---------------------------------------------------------------------------------------------
# DropBlock
# ---------------------------------------------------------------------------------------------


def clip_blocks(sizes: Sequence[int], blocks: Sequence[int]) -> tuple[int, ...]:
    """A block larger than its axis is clipped to the axis length."""
    return tuple(min(b, h) for h, b in zip(sizes, blocks, strict=True))


def paper_gamma(keep_prob: float, sizes: Sequence[int], blocks: Sequence[int]) -> float:
    """Equation (1) of the paper, generalised per axis, clipped to [0, 1]; 1 at keep_prob 0."""
    if keep_prob <= 0.0:
        return 1.0
    gamma = (1.0 - keep_prob) * math.prod(sizes) / math.prod(blocks)
    gamma /= math.prod(h - b + 1 for h, b in zip(sizes, blocks, strict=True))
    return min(max(gamma, 0.0), 1.0)


def coverage(sizes: Sequence[int], blocks: Sequence[int]) -> np.ndarray:
    """How many seed positions cover each unit of a map, by painting every block once."""
    counts = np.zeros(tuple(sizes), np.int64)
    seed_ranges = [range(h - b + 1) for h, b in zip(sizes, blocks, strict=True)]
    for seed in itertools.product(*seed_ranges):
        counts[tuple(slice(s, s + b) for s, b in zip(seed, blocks, strict=True))] += 1
    return counts


def expected_keep_map(gamma: float, sizes: Sequence[int], blocks: Sequence[int]) -> np.ndarray:
    """Probability that each unit of a map is kept: no covering seed fires."""
    return (1.0 - gamma) ** coverage(sizes, blocks).astype(np.float64)


def dropblock_keep(
    seeds: np.ndarray, spatial_dims: Sequence[int], blocks: Sequence[int]
) -> np.ndarray:
    """Keep-mask from a boolean seed grid: a seed at ``s`` drops ``[s, s + b)`` on each axis.

    The seed grid has ``H - b + 1`` positions along each spatial axis (seeds only where a whole
    block fits), so the mask has ``H`` there.
    """
    shape = list(seeds.shape)
    block_of = dict(zip(spatial_dims, blocks, strict=True))
    for d, b in block_of.items():
        shape[d] += b - 1
    keep = np.ones(shape, bool)
    for position in zip(*np.nonzero(seeds), strict=True):
        index = tuple(
            slice(p, p + block_of[d]) if d in block_of else p for d, p in enumerate(position)
        )
        keep[index] = False
    return keep


def is_union_of_full_blocks(
    dropped: np.ndarray, spatial_dims: Sequence[int], blocks: Sequence[int]
) -> bool:
    """True iff every dropped unit lies in a full block, inside the map, that is all dropped.

    A morphological opening: find every position whose whole block is dropped, paint those
    blocks again, and compare with the dropped set.
    """
    block_of = dict(zip(spatial_dims, blocks, strict=True))
    seed_shape = [n - block_of.get(d, 1) + 1 for d, n in enumerate(dropped.shape)]
    fits = np.zeros(seed_shape, bool)
    for position in itertools.product(*map(range, seed_shape)):
        index = tuple(
            slice(p, p + block_of[d]) if d in block_of else p for d, p in enumerate(position)
        )
        fits[position] = dropped[index].all()
    return bool(np.array_equal(~dropblock_keep(fits, spatial_dims, blocks), dropped))


# ---------------------------------------------------------------------------------------------
# Cutout
# ---------------------------------------------------------------------------------------------


def cutout_covered(
    centres: np.ndarray, shape: Sequence[int], spatial_dims: Sequence[int], sizes: Sequence[int]
) -> np.ndarray:
    """Boolean array of ``shape``, True on the in-image part of every patch, by loops.

    ``centres`` has shape ``(num_patches, examples, len(spatial_dims))``; the examples are axis 0
    unless axis 0 is spatial (a single image). A patch of side ``s`` centred at ``c`` covers
    ``[c - s // 2, c - s // 2 + s)``, cut by the border.
    """
    covered = np.zeros(tuple(shape), bool)
    batched = 0 not in spatial_dims
    for patch in centres:
        for n, centre in enumerate(patch):
            index: list[object] = [slice(None)] * len(shape)
            if batched:
                index[0] = n
            for d, c, s in zip(spatial_dims, centre, sizes, strict=True):
                start = int(c) - s // 2
                index[d] = slice(max(start, 0), max(start + s, 0))
            covered[tuple(index)] = True
    return covered


def cutout_cover_probability(height: int, size: int) -> np.ndarray:
    """Per position along one axis: the fraction of the ``height`` centres whose patch covers it."""
    prob = np.zeros(height)
    for c in range(height):
        start = c - size // 2
        prob[max(start, 0) : max(start + size, 0)] += 1.0 / height
    return prob


# ---------------------------------------------------------------------------------------------
# PatchDropout
# ---------------------------------------------------------------------------------------------


def patch_keep_count(num_patches: int, keep_prob: float) -> int:
    """timm's ``max(1, int(L * (1 - prob)))`` for the decimal ``keep_prob`` as written.

    Computed in exact decimal arithmetic from ``repr(keep_prob)``, so ``0.29`` of 100 is 29.
    """
    if num_patches == 0:
        return 0
    return max(1, math.floor(decimal.Decimal(repr(float(keep_prob))) * num_patches))


def patch_gather(tokens: np.ndarray, indices: np.ndarray, num_prefix: int) -> np.ndarray:
    """The prefix tokens, then ``tokens[..., num_prefix + indices[...], :]``, by loops."""
    batch = tokens.shape[:-2]
    k = indices.shape[-1]
    out = np.empty(batch + (num_prefix + k, tokens.shape[-1]), tokens.dtype)
    for b in itertools.product(*(range(n) for n in batch)):
        out[b][:num_prefix] = tokens[b][:num_prefix]
        for j in range(k):
            out[b][num_prefix + j] = tokens[b][num_prefix + int(indices[b][j])]
    return out


def patch_scatter(
    kept: np.ndarray, indices: np.ndarray, length: int, num_prefix: int, fill: np.ndarray
) -> np.ndarray:
    """The inverse of :func:`patch_gather`: ``fill`` where no index points, by loops."""
    batch = kept.shape[:-2]
    out = np.empty(batch + (length, kept.shape[-1]), kept.dtype)
    out[..., num_prefix:, :] = np.broadcast_to(fill, out[..., num_prefix:, :].shape)
    for b in itertools.product(*(range(n) for n in batch)):
        out[b][:num_prefix] = kept[b][:num_prefix]
        for j, i in enumerate(indices[b]):
            out[b][num_prefix + int(i)] = kept[b][num_prefix + j]
    return out


# ---------------------------------------------------------------------------------------------
# Random Erasing
# ---------------------------------------------------------------------------------------------


def random_erasing_rectangles(
    gen: np.random.Generator,
    height: int,
    width: int,
    *,
    p: float,
    area: tuple[float, float] = (0.02, 1 / 3),
    aspect: tuple[float, float] = (0.3, 10 / 3),
    max_count: int = 1,
) -> list[tuple[int, int, int, int]]:
    """timm's ``RandomErasing._erase`` for one image, in float64: its ``(top, left, h, w)``.

    Erase with probability ``p``; ``count`` uniform in ``[1, max_count]``; per rectangle up to
    10 attempts, the first with ``h < height and w < width`` taken, its corner uniform.
    """
    if gen.random() >= p:
        return []
    count = int(gen.integers(1, max_count + 1)) if max_count > 1 else 1
    rectangles = []
    for _ in range(count):
        for _ in range(10):
            target = gen.uniform(*area) * height * width / count
            ratio = math.exp(gen.uniform(math.log(aspect[0]), math.log(aspect[1])))
            h = int(round(math.sqrt(target * ratio)))
            w = int(round(math.sqrt(target / ratio)))
            if w < width and h < height:
                top = int(gen.integers(0, height - h + 1))
                left = int(gen.integers(0, width - w + 1))
                rectangles.append((top, left, h, w))
                break
    return rectangles


def rectangles_mask(
    rectangles: Sequence[tuple[int, int, int, int]], height: int, width: int
) -> np.ndarray:
    """``(height, width)`` bool, True on the union of the rectangles."""
    mask = np.zeros((height, width), bool)
    for top, left, h, w in rectangles:
        mask[top : top + h, left : left + w] = True
    return mask


# ---------------------------------------------------------------------------------------------
# Scaling and masking
# ---------------------------------------------------------------------------------------------


def actual_scale(keep: np.ndarray) -> np.float32:
    """``size / kept`` with both counted in int64, rounded once to float32; 0 if nothing kept."""
    total = np.int64(keep.size)
    kept = np.int64(np.count_nonzero(keep))
    if kept == 0:
        return np.float32(0.0)
    # The library divides float32(total) by float32(kept); below 2**24 both are exact and a
    # float64 quotient rounded to float32 is the correctly rounded float32 quotient.
    return np.float32(np.float32(total) / np.float32(kept))


def expected_scale(keep_prob: float) -> np.float32:
    """``1 / keep_prob`` in float32, 0 when everything is dropped."""
    keep_prob = np.float32(min(max(keep_prob, 0.0), 1.0))
    return np.float32(0.0) if keep_prob == 0 else np.float32(1.0) / keep_prob


def apply_keep(x: np.ndarray, keep: np.ndarray, scale: np.float32) -> np.ndarray:
    """Kept units times ``scale`` (multiplied in float32 at least, cast back), others exactly 0."""
    compute = np.promote_types(x.dtype, np.float32)
    out = np.zeros_like(x)
    keep = np.broadcast_to(keep, x.shape)
    out[keep] = (x[keep].astype(compute) * scale.astype(compute)).astype(x.dtype)
    return out


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Exact equality of two arrays of the same dtype, NaN equal to NaN."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    af, bf = a.astype(np.float64), b.astype(np.float64)
    return bool(np.all((af == bf) | (np.isnan(af) & np.isnan(bf))))


# ---------------------------------------------------------------------------------------------
# Compiled programs
# ---------------------------------------------------------------------------------------------

# The event JAX records once per XLA backend compilation (jax/_src/dispatch.py), whatever
# was jitted: a user's jax.jit, a library-internal jit, an nnx.jit or an eqx.filter_jit.
_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def compilations() -> Iterator[list[str]]:
    """Lists the names of the functions XLA compiles inside the ``with`` block.

    ``with compilations() as compiled: ...`` then ``assert compiled == []``. Warm up first:
    the first call of anything compiles.
    """
    compiled: list[str] = []

    def listener(event: str, duration: float, **kwargs: object) -> None:
        del duration
        if event == _BACKEND_COMPILE:
            compiled.append(str(kwargs.get("fun_name", "?")))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiled
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


_COLLECTIVE = re.compile(
    r"=\s*(\(.*?\)|\S+)\s+(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter|"
    r"collective-broadcast|ragged-all-to-all)(?:-start)?\("
)


def collectives(hlo_text: str) -> list[tuple[str, str]]:
    """``(op, result type)`` of every cross-device collective in compiled HLO text."""
    return [(m.group(2), m.group(1)) for m in _COLLECTIVE.finditer(hlo_text)]
