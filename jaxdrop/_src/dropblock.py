"""DropBlock (Ghiasi, Lin and Le, 2018): drop contiguous blocks of feature maps."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdrop._src import checks, masking, sampling

# Bisection steps for `calibrate=True`: gamma lies in [0, 1] and 40 halvings bring the bracket
# below 1e-12, far under float32's resolution at any gamma that matters.
_CALIBRATE_STEPS = 40
# The static bound on gamma for the sparse sampler: the float64 gamma plus a margin for the
# float32 arithmetic of the run-time gamma, and for a Python keep_prob rounded up to a power of
# 4. A rung costs at most about 4 times the draws of the exact bound, and the draws (about
# n * gamma per row) are a small part of a call that touches every unit of x; powers of 2 would
# halve that and double the compilations of a changing Python keep_prob (keep_probs 0.5 to 0.9,
# a factor 5 in the paper's gamma, span at most 3 rungs of 4).
_CAP_RELATIVE = 2.0**-10
_CAP_ABSOLUTE = 2.0**-16
_CAP_LADDER = 4.0


def dropblock(
    rng: jax.Array,
    x: jax.typing.ArrayLike,
    keep_prob: float | jax.Array,
    block_size: int | Sequence[int],
    *,
    spatial_dims: int | Sequence[int] = (-3, -2),
    broadcast_dims: int | Sequence[int] = (),
    normalize: masking.Normalize = "actual",
    calibrate: bool = False,
    min_keep_prob: float | None = None,
) -> jax.Array:
    r"""Drops contiguous blocks of each feature map (DropBlock).

    DropBlock zeroes ``block_size``-sized regions of each feature map instead of independent
    units, which removes whole semantic parts (a head, a foot) and makes the rest of the network
    learn from what remains. Seeds are drawn independently with probability ``gamma`` at every
    position where a whole block fits inside the map; a seed at position ``s`` drops ``[s, s + b)``
    along each spatial axis. Every dropped unit therefore belongs to a full block lying inside the
    map, for odd and even block sizes and non-square maps alike. The kept units are then rescaled.

    With spatial sizes :math:`H_d` and block sizes :math:`b_d` (clipped to :math:`H_d`), the
    paper's equation (1), generalised to any number of axes, is

    .. math::

      \gamma = \frac{1 - \text{keep\_prob}}{\prod_d b_d}
               \prod_d \frac{H_d}{H_d - b_d + 1},

    clipped to :math:`[0, 1]`. With ``calibrate=True``, :math:`\gamma` instead solves
    :math:`\frac{1}{\prod_d H_d}\sum_i (1 - \gamma)^{c_i} = \text{keep\_prob}`, where :math:`c_i`
    is the number of seed positions whose block covers unit :math:`i`: the expected fraction of
    kept units is then exactly ``keep_prob``.

    Args:
      rng: a PRNG key, typed (``jax.random.key``) or legacy (``jax.random.PRNGKey``).
      x: floating array of shape ``(..., H, W, C)`` by default (channels last, like Flax); any
        layout through ``spatial_dims``.
      keep_prob: probability of keeping a unit, a Python float or a scalar array. ``1.0``
        returns ``x`` unchanged and ``0.0`` returns zeros. A concrete scalar array (such as
        ``jnp.float32(0.9)`` outside ``jit``) is checked and used exactly like the Python float
        of its value. A traced value cannot be checked: it is clipped to [0, 1] (to
        ``[min_keep_prob, 1]`` with a bound), and NaN gives zeros in every mode. It receives no
        gradient.
      block_size: the side of a block, an int or one int per spatial dim. A block larger than
        its axis is clipped to the axis length.
      spatial_dims: the axes that blocks span: ``(-3, -2)`` for ``(N, H, W, C)``, ``(-2, -1)``
        for NCHW, ``(-2,)`` for sequences ``(N, L, C)``, ``(-4, -3, -2)`` for volumes.
      broadcast_dims: axes that share one mask, as in ``flax.linen.Dropout``: ``(-1,)`` shares a
        mask across channels, ``(0,)`` across the batch. Every other axis gets its own mask.
      normalize: how kept units are rescaled. ``"actual"`` (Algorithm 1, step 8): by
        ``mask.size / mask.sum()`` over the whole mask, counted exactly in integers.
        ``"expected"``: by ``1 / keep_prob``, with no reduction over the array. ``"none"``: not
        rescaled. A mask that drops everything gives zeros, never NaN or Inf.
      calibrate: solve ``gamma`` so that the expected kept fraction is exactly ``keep_prob``,
        instead of using the paper's formula.
      min_keep_prob: a static lower bound on a traced ``keep_prob`` (e.g. a schedule's final
        value), a Python float in (0, 1]. A traced ``keep_prob`` below it is clipped up to it,
        and ``normalize="expected"`` scales by the clipped value; a traced NaN still gives
        zeros. It bounds ``gamma``,
        which lets CPU draw only the seeds (a fixed budget per row) instead of one uniform per
        position; without it a traced ``keep_prob`` is drawn densely, which on CPU costs several
        times more for a large map. A Python ``keep_prob`` needs no bound (its ``gamma`` is
        known when tracing, rounded up to a power of 4 so nearby values share a compilation)
        and must not be below it.

    Returns:
      An array with the shape and dtype of ``x``.

    Raises:
      TypeError: if ``rng`` is not a PRNG key, ``x`` is not floating, or an option has the wrong
        type.
      ValueError: if ``rng`` is a batch of keys, a concrete ``keep_prob`` is outside [0, 1],
        ``block_size`` is not positive or has the wrong length, ``spatial_dims`` is empty, an axis
        is out of bounds or repeated, ``spatial_dims`` and ``broadcast_dims`` overlap,
        ``normalize`` is unknown, or ``min_keep_prob`` is not in (0, 1] or above a Python
        ``keep_prob``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop
      >>> x = jnp.ones((8, 28, 28, 64))
      >>> y = jaxdrop.dropblock(jax.random.key(0), x, 0.9, 7)
      >>> y.shape, y.dtype
      ((8, 28, 28, 64), dtype('float32'))
      >>> bool(jnp.all((y == 0) | (y > 1)))  # kept units are rescaled
      True
      >>> y = jaxdrop.dropblock(jax.random.key(0), x, 0.9, 7, calibrate=True)
      >>> round(float(jnp.mean(y != 0)), 2)
      0.9

    .. note::
      The paper's :math:`\gamma` ignores that blocks overlap and that units near the border are
      covered by fewer seed positions, so its real drop rate is below ``1 - keep_prob``.
      ``calibrate=True`` removes that gap. The default stays the paper's formula, as in the
      reference implementations. The gap grows as ``keep_prob`` falls: at 0.5 on 28 x 28 maps
      with block 7 the paper's gamma keeps 63% of the units on average (the DropBlock guide of
      the documentation tabulates the exact expectation for common sizes):

      >>> x = jnp.ones((16, 28, 28, 64))
      >>> paper = jaxdrop.dropblock(jax.random.key(0), x, 0.5, 7)
      >>> calibrated = jaxdrop.dropblock(jax.random.key(0), x, 0.5, 7, calibrate=True)
      >>> round(float(jnp.mean(paper != 0)), 1), round(float(jnp.mean(calibrated != 0)), 1)
      (0.6, 0.5)

    .. warning::
      Seeds are only drawn where a whole block fits (as in the paper's Algorithm 1), so units
      near the border are dropped less often than central ones; ``calibrate`` matches the
      average rate, not the rate per position.

    References:
      Ghiasi et al, `DropBlock: A regularization method for convolutional networks
      <https://arxiv.org/abs/1810.12890>`_, 2018
    """
    checks.check_key(rng)
    x = checks.as_floating_array(x)
    keep_prob = checks.check_keep_prob(keep_prob)
    spatial = checks.canonical_axes(spatial_dims, x.ndim, "spatial_dims", shape=x.shape)
    checks.check_nonempty_axes(spatial, "spatial_dims", "; for independent units use `dropout`")
    broadcast = checks.canonical_axes(broadcast_dims, x.ndim, "broadcast_dims", shape=x.shape)
    checks.check_disjoint(spatial, "spatial_dims", broadcast, "broadcast_dims")
    block = checks.canonical_sizes(block_size, len(spatial), "block_size")
    checks.check_choice(normalize, "normalize", masking.NORMALIZE_CHOICES)
    checks.check_bool(calibrate, "calibrate")
    python_keep_prob = checks.is_python_number(keep_prob)
    if min_keep_prob is not None:
        min_keep_prob = checks.check_python_keep_prob(min_keep_prob, "min_keep_prob")
        if min_keep_prob <= 0.0:
            raise ValueError(
                f"`min_keep_prob` must be in (0, 1], got {min_keep_prob!r}; use None for no bound."
            )
        if python_keep_prob and keep_prob < min_keep_prob:
            raise ValueError(
                f"`keep_prob` must be at least `min_keep_prob`, got keep_prob={keep_prob!r} and "
                f"min_keep_prob={min_keep_prob!r}."
            )
    if checks.nothing_to_drop(x.size, keep_prob):
        return x
    broadcast = tuple(sorted(broadcast))
    mask_shape = tuple(1 if d in broadcast else n for d, n in enumerate(x.shape))
    return _dropblock(
        rng,
        x,
        keep_prob,
        block_size=block,
        spatial_dims=spatial,
        broadcast_dims=broadcast,
        normalize=normalize,
        calibrate=bool(calibrate),
        min_keep_prob=min_keep_prob,
        seed_cap=seed_cap(
            mask_shape,
            spatial,
            block,
            calibrate,
            float(keep_prob) if python_keep_prob else None,
            min_keep_prob,
        ),
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "block_size",
        "spatial_dims",
        "broadcast_dims",
        "normalize",
        "calibrate",
        "min_keep_prob",
        "seed_cap",
    ),
)
def _dropblock(
    rng,
    x,
    keep_prob,
    *,
    block_size,
    spatial_dims,
    broadcast_dims,
    normalize,
    calibrate,
    min_keep_prob,
    seed_cap,
):
    mask_shape = tuple(1 if d in broadcast_dims else n for d, n in enumerate(x.shape))
    if min_keep_prob is not None:
        # The documented clip, before apply_mask (so the "expected" scale uses it too). NaN
        # stays NaN (clip propagates it), which apply_mask turns into 0 and dropblock_mask into
        # an all-dropped mask, as without a bound: a broken schedule gives zeros, never a mask.
        keep_prob = jnp.clip(jnp.asarray(keep_prob, jnp.float32), min_keep_prob, 1.0)
    make_mask = functools.partial(
        dropblock_mask,
        shape=mask_shape,
        spatial_dims=spatial_dims,
        block_size=block_size,
        calibrate=calibrate,
        seed_cap=seed_cap,
    )
    return masking.apply_mask(make_mask, rng, x, keep_prob, normalize)


def clipped_blocks(
    shape: tuple[int, ...], spatial_dims: tuple[int, ...], block_size: tuple[int, ...]
) -> tuple[int, ...]:
    """Block sizes clipped to their axes."""
    return tuple(min(b, shape[d]) for d, b in zip(spatial_dims, block_size, strict=True))


def paper_gamma_factor(sizes: Sequence[int], blocks: Sequence[int]) -> float:
    """``gamma / (1 - keep_prob)`` of the paper's equation (1), per axis."""
    return math.prod(h / (b * (h - b + 1)) for h, b in zip(sizes, blocks, strict=True))


def coverage_histogram(sizes: Sequence[int], blocks: Sequence[int]) -> tuple[np.ndarray, ...]:
    """How many seed positions cover each unit: the distinct counts and their frequencies.

    Along one axis of length ``h`` with block ``b``, unit ``i`` is covered by the seeds
    ``s`` in ``[max(0, i - b + 1), min(i, h - b)]``; over several axes the counts multiply.
    """
    counts = np.ones((), np.int64)
    for h, b in zip(sizes, blocks, strict=True):
        i = np.arange(h)
        per_axis = np.minimum(i, h - b) - np.maximum(0, i - b + 1) + 1
        counts = np.multiply.outer(counts, per_axis)
    values, freq = np.unique(counts, return_counts=True)
    return values, freq / counts.size


def expected_keep(gamma: jax.Array, values: np.ndarray, weights: np.ndarray) -> jax.Array:
    """Expected kept fraction ``mean_i (1 - gamma) ** c_i`` for a seed probability ``gamma``."""
    # exp(c * log1p(-gamma)) is accurate for the small gammas DropBlock uses; at gamma = 1 it is
    # exp(-inf) = 0 exactly.
    log_q = jnp.log1p(-gamma)
    return jnp.sum(
        jnp.asarray(weights, jnp.float32) * jnp.exp(jnp.asarray(values, jnp.float32) * log_q)
    )


def seed_probability(
    keep_prob: jax.Array, sizes: Sequence[int], blocks: Sequence[int], calibrate: bool
) -> jax.Array:
    """The float32 seed probability gamma in [0, 1] for a float32 ``keep_prob`` in [0, 1]."""
    if not calibrate:
        gamma = jnp.clip((1.0 - keep_prob) * jnp.float32(paper_gamma_factor(sizes, blocks)), 0, 1)
        # keep_prob = 0 drops everything, as flax.linen.Dropout at rate 1 (the formula alone
        # would still keep about a third of the units).
        return jnp.where(keep_prob <= 0.0, 1.0, gamma)
    values, weights = coverage_histogram(sizes, blocks)

    def bisect(_, bracket):
        low, high = bracket
        mid = 0.5 * (low + high)
        too_many_kept = expected_keep(mid, values, weights) > keep_prob
        return jnp.where(too_many_kept, mid, low), jnp.where(too_many_kept, high, mid)

    # expected_keep falls monotonically from 1 (gamma = 0) to 0 (gamma = 1), so bisection on a
    # traced keep_prob converges with a fixed number of steps and no Python branch. Unrolled in
    # Python: a fori_loop would lower to a while loop, which XLA:GPU runs with a host round trip.
    bracket = (jnp.float32(0.0), jnp.float32(1.0))
    for step in range(_CALIBRATE_STEPS):
        bracket = bisect(step, bracket)
    gamma = bracket[1]
    # keep_prob = 1 must give exactly no seed, not the bracket's last 2**-40.
    return jnp.where(keep_prob >= 1.0, 0.0, gamma)


def numpy_gamma(keep_prob: float, sizes: Sequence[int], blocks: Sequence[int], calibrate: bool):
    """:func:`seed_probability` in float64 NumPy, for a Python ``keep_prob`` in [0, 1]."""
    if keep_prob <= 0.0:
        return 1.0
    if not calibrate:
        return min(1.0, (1.0 - keep_prob) * paper_gamma_factor(sizes, blocks))
    if keep_prob >= 1.0:
        return 0.0
    values, weights = coverage_histogram(sizes, blocks)
    low, high = 0.0, 1.0
    for _ in range(60):  # The bracket ends below 1e-18.
        mid = 0.5 * (low + high)
        if float(np.sum(weights * np.exp(values * np.log1p(-mid)))) > keep_prob:
            low = mid
        else:
            high = mid
    return high


def gamma_bound(
    keep_prob: float, sizes: Sequence[int], blocks: Sequence[int], calibrate: bool
) -> float:
    """An upper bound on the run-time float32 :func:`seed_probability` at ``keep_prob``.

    A larger ``keep_prob`` gives a smaller float32 ``gamma`` too (the paper's product falls with
    it, and each bisection step's comparison is monotone in it), so this also bounds ``gamma``
    for every traced ``keep_prob`` clipped up to ``keep_prob``.
    """
    gamma = numpy_gamma(keep_prob, sizes, blocks, calibrate)
    # The margin covers the float32 rounding of the run-time gamma: relative for the paper's
    # product, absolute for the float32 bisection of calibrate (tests/test_sampling.py checks
    # the bound over a sweep of keep_probs and layouts).
    return min(1.0, gamma * (1.0 + _CAP_RELATIVE) + _CAP_ABSOLUTE)


def seed_cap(
    mask_shape: tuple[int, ...],
    spatial_dims: tuple[int, ...],
    block_size: tuple[int, ...],
    calibrate: bool,
    keep_prob: float | None,
    min_keep_prob: float | None,
) -> float | None:
    """A static upper bound on the run-time float32 ``gamma``, or None (the dense draw).

    From a Python ``keep_prob`` (rounded up to a power of 4: Python values within one step
    share a compilation) or else from ``min_keep_prob``; None for a traced ``keep_prob`` with
    no bound, and wherever the sampler's cost model prefers the dense draw anyway (so all such
    Python values share one compilation).
    """
    bound = min_keep_prob if keep_prob is None else keep_prob
    if bound is None:
        return None
    blocks = clipped_blocks(mask_shape, spatial_dims, block_size)
    sizes = tuple(mask_shape[d] for d in spatial_dims)
    cap = gamma_bound(bound, sizes, blocks, calibrate)
    if keep_prob is not None:
        rung = 1.0
        while rung / _CAP_LADDER >= cap:
            rung /= _CAP_LADDER
        cap = rung
    seeds = _seed_shape(mask_shape, spatial_dims, blocks)
    if sampling.sparse_plan(seeds, min(spatial_dims), cap) is None:
        return None
    return cap


def _seed_shape(
    shape: tuple[int, ...], spatial_dims: tuple[int, ...], blocks: tuple[int, ...]
) -> tuple[int, ...]:
    """The seed grid: each spatial axis shortened to the positions where a whole block fits."""
    seed_shape = list(shape)
    for d, b in zip(spatial_dims, blocks, strict=True):
        seed_shape[d] = shape[d] - b + 1
    return tuple(seed_shape)


def dilate(seeds: jax.Array, axis: int, block: int) -> jax.Array:
    """Expands each seed along ``axis``: a seed at ``s`` drops ``[s, s + block)``.

    The seed axis has length ``h - block + 1``. Unit ``i`` is dropped iff a seed lies in
    ``(i - block, i]``; padding ``block - 1`` zeros on both sides makes that the slice
    ``[i, i + block)`` of the padded axis, which has length ``h + block - 1``, so the OR of the
    ``block`` shifted slices of length ``h`` is the expansion: O(block) work per unit. ``seeds``
    holds 0/1 bytes (or bools), so ``|`` is the OR.

    Chosen over ``lax.reduce_window`` max and over log2(block) doublings of the window because
    inside ``dropblock`` it was the fastest on CPU (``benchmarks/bench_dropblock.py``, "block
    expansion" table).
    """
    pad = [(0, 0)] * seeds.ndim
    pad[axis] = (block - 1, block - 1)
    padded = jnp.pad(seeds, pad)
    length = seeds.shape[axis] + block - 1
    out = lax.slice_in_dim(padded, 0, length, axis=axis)
    for shift in range(1, block):
        out = out | lax.slice_in_dim(padded, shift, shift + length, axis=axis)
    return out


def dropblock_mask(
    rng: jax.Array,
    keep_prob: jax.Array,
    *,
    shape: tuple[int, ...],
    spatial_dims: tuple[int, ...],
    block_size: tuple[int, ...],
    calibrate: bool,
    seed_cap: float | None = None,
) -> jax.Array:
    """Boolean keep-mask of ``shape``: ``False`` on the union of the sampled blocks.

    ``seed_cap`` is a static upper bound on ``gamma`` (:func:`seed_cap`), or None for the dense
    draw.
    """
    blocks = clipped_blocks(shape, spatial_dims, block_size)
    sizes = tuple(shape[d] for d in spatial_dims)
    gamma = seed_probability(keep_prob, sizes, blocks, calibrate)
    # Seeds are sparse: with a bound on gamma, CPU draws only them (sampling.py). Bytes rather
    # than bool: XLA:CPU vectorises the windows and the final select better on uint8.
    dropped = sampling.bernoulli_seeds(
        rng,
        gamma,
        _seed_shape(shape, spatial_dims, blocks),
        dtype=jnp.uint8,
        gamma_cap=seed_cap,
        leading_axes=min(spatial_dims),
    )
    # Separable expansion: a box is the product of per-axis windows, O(b) work per unit and axis.
    # The barrier materialises each axis's result: fused, the second axis would re-read b
    # shifted slices of the first for every unit, O(b**2) per unit.
    for i, (d, b) in enumerate(zip(spatial_dims, blocks, strict=True)):
        if i:
            dropped = lax.optimization_barrier(dropped)
        dropped = dilate(dropped, d, b)
    # keep_prob is 0 (or NaN) only where everything must drop: a traced 0 without a bound (gamma
    # is then 1 and the dense draw already drops everything) and a traced NaN, which with
    # `min_keep_prob` is drawn by the sparse sampler, whose budget holds only K seeds per row.
    # A scalar condition, fused into the comparison: no extra pass over the mask.
    return (dropped == 0) & (keep_prob > 0)
