"""Sampling the seed grid of DropBlock: independent Bernoulli(gamma) draws, one per position.

Two samplers give that distribution, with no data-dependent control flow in either: the work
and the shapes are fixed when the function is traced.

**Dense.** ``jax.random.bernoulli(key, gamma, shape)`` with a float32 ``gamma``: one uniform per
position. It runs on GPU and TPU (where threefry is cheap and scatters are slow), for a traced
``keep_prob`` with no static bound on ``gamma``, and wherever the CPU cost model below says it is
the cheaper one.

**Sparse (CPU).** DropBlock seeds are rare (``gamma`` is about 0.003 for a 28 x 28 map, block 7,
``keep_prob`` 0.9), so the sparse sampler draws only the seeds. The seed grid is viewed as
``(R, n)`` rows: the leading axes before the first spatial axis are the rows (the batch axis
always is one, so that ``vmap`` batches the draw and the partitioner splits it with the batch),
and trailing leading axes are merged into the row while rows are short (NCHW: a row per example,
``C * H' * W'`` long). In each row the number of non-seeds before the first seed, and between
consecutive seeds, are independent Geometric(gamma) variables. One uniform ``u`` in (0, 1] gives
one gap, ``floor(log(u) / log1p(-gamma))`` (inverse CDF: ``P(gap >= k) = (1 - gamma)**k``). A
cumulative sum turns ``K`` gaps into the positions of the row's first ``K`` seeds, and a scatter
writes them into a zero row of bytes. The cost is ``R * K`` draws plus one pass over the bytes.

**A static budget.** ``K`` fixes a shape, so it is static, computed from a static upper bound
``gamma_cap`` on ``gamma``: the smallest ``K`` for which the Chernoff bound
``P(Binomial(n, gamma_cap) > K) <= exp(-n KL((K + 1) / n || gamma_cap))`` is at most
``2**-40 / max(R, 2**20)``, so that, by the union bound over the rows, some row of a call has
more than ``K`` seeds with probability below ``2**-40``. (The ``2**20`` keeps ``K`` independent
of ``R`` for all but huge calls: a device's share of a sharded batch draws the same arrays on 1
or 16 devices.) Seeds past the ``K``-th of a row are then not drawn:
that is the sampler's one approximation, and it is far below the ``2**-23`` float32 resolution
of ``gamma`` itself. ``dropblock`` derives ``gamma_cap`` from a Python ``keep_prob`` (rounded up
to a power of 4, so nearby values share a compilation) or from ``min_keep_prob``.

**Draws that do not depend on the budget.** The uniforms are drawn as one array of shape
``(K, R, sub_rows)``, the budget on the leading axis. With threefry (partitionable, JAX's
default) the bits of an element depend only on the key and the element's row-major index, so
the first ``K1`` gaps of every row are the same for any budget ``K2 >= K1``: two calls that
differ only in the budget (a Python ``keep_prob`` and a traced one with ``min_keep_prob``) give
the same seeds unless a row has more seeds than the smaller budget (probability below
``2**-40``). The budget does decide whether the sparse sampler is used at all (the cost model
below weighs ``K`` against the row length), so it is the same sampler only where both bounds
choose the sparse one (``docs/guide/reproducibility.md``).

**Per platform.** ``jax.lax.platform_dependent`` picks the sparse sampler on CPU and the dense
one elsewhere. It lowers to a ``stablehlo.case`` whose index is a constant of the lowering
platform (and, for a single-platform lowering, holds only that platform's branch); XLA folds it
away, so the compiled program holds no conditional, and under ``vmap`` the index stays an
unbatched constant, so the case is not turned into a select that runs both samplers
(tests/test_lowering.py). The CPU choice is static too: a cost model, ``R * (K *
_SPARSE_DRAW_NS + n * _SPARSE_POSITION_NS)`` against ``R * n * _DENSE_POSITION_NS``, picks the
dense draw on every platform when it is not more expensive, and for grids below
``_DENSE_BELOW`` positions.

**Index arithmetic.** The cumulative sum runs in float32 over integer-valued steps clipped to
``n + 1``. For ``n < 2**24`` every prefix that lands inside the row is computed exactly (all its
partial sums are integers below ``2**24``), and every prefix that passes the end stays past it
(a sum of non-negative terms rounds to at least ``min(true sum, 2**24)``), in any summation
order. Rows longer than that are split into sub-rows of fewer than ``2**24`` positions, each
with its own draws (exact by independence), so no index overflows int32, even past ``2**31``
positions.

Precision: like ``jax.random.bernoulli``, both samplers are exact up to float32 rounding of
``gamma`` and of the uniforms (about ``2**-23``), plus, for the sparse one, the ``2**-40``
budget overflow above. Both depend only on the key and the position, so a sharded call equals
the unsharded one bit for bit, and a ``vmap`` over threefry keys equals the loop over examples
(with ``jax_threefry_partitionable``, the default; not for ``rbg`` / ``unsafe_rbg`` keys, whose
batched draw JAX computes differently).
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp

# Positions are exact float32 integers below 2**24 (see the module docstring).
MAX_ROW = 2**24 - 1
# log2 of the bound on the probability that some row of a call has more seeds than its budget.
LOG2_OVERFLOW = -40
# The budget covers this many rows at once (a bound of 2**-60 per row) whatever the call's row
# count, so a row's budget, and a device's draws under a sharded batch, do not depend on how many
# rows (devices) the call has; only calls with more rows than this divide the bound further.
ROWS_COVERED = 2**20
# Trailing leading axes are merged into the row while rows are shorter than this: short rows
# pay the budget's tail margin (a few standard deviations plus a constant) once each.
_MIN_ROW = 2**14
# Grids smaller than this are drawn densely: the fixed costs dominate either way, and the dense
# draw compiles one sampler instead of one per platform.
_DENSE_BELOW = 4096
# CPU cost model, in nanoseconds: one gap of the sparse sampler (a uniform, a log, the cumsum
# and the scatter), one position of its zeroed row, and one position of the dense draw.
# Measured on the 2-core CPU with jax 0.10.2: the fastest of 30 jitted calls of each sampler
# alone, 4 to 16 rows of 16 384 to 10**6 positions, budgets of 64 to 8 192 (the dense draw costs
# more per position on the larger grids; this is its cheapest, so close calls go to dense).
_SPARSE_DRAW_NS = 15.0
_SPARSE_POSITION_NS = 0.05
_DENSE_POSITION_NS = 3.4


def _kl(a: float, g: float) -> float:
    """Kullback-Leibler divergence of Bernoulli(a) from Bernoulli(g), for 0 < g < 1."""
    inside = a * math.log(a / g) if a > 0 else 0.0
    outside = (1.0 - a) * math.log((1.0 - a) / (1.0 - g)) if a < 1 else 0.0
    return inside + outside


def log_tail_bound(n: int, g: float, k: int) -> float:
    """Natural log of the Chernoff bound on ``P(Binomial(n, g) >= k)``: ``-n KL(k / n || g)``.

    A rigorous upper bound for ``k >= n g``; 0 (the trivial bound) below that, and ``-inf`` for
    ``k > n`` (impossible) or ``g = 0 < k``.
    """
    if k > n or (g <= 0.0 and k > 0):
        return -math.inf
    if k <= n * g:
        return 0.0
    return -n * _kl(k / n, g)


def seed_budget(n: int, gamma_cap: float, rows: int = 1) -> int:
    """The smallest ``K`` whose bound on ``P(Binomial(n, gamma_cap) > K)`` is at most ``delta``.

    ``delta = 2**-40 / max(rows, ROWS_COVERED)``: over ``rows`` independent rows of ``n``
    positions, some row has more than ``K`` seeds with probability below ``2**-40`` (union
    bound) whenever the seed probability is at most ``gamma_cap``. ``n`` when no smaller ``K``
    is certified.
    """
    if gamma_cap <= 0.0:
        return 0
    if gamma_cap >= 1.0:
        return n
    log_target = LOG2_OVERFLOW * math.log(2.0) - math.log(max(rows, ROWS_COVERED))
    # P(X > K) = P(X >= K + 1), and the bound falls as K grows past n g: bisect on K.
    low, high = max(0, math.floor(n * gamma_cap)), n  # The bound holds at high = n.
    while low < high:
        mid = (low + high) // 2
        if log_tail_bound(n, gamma_cap, mid + 1) <= log_target:
            high = mid
        else:
            low = mid + 1
    return low


@dataclasses.dataclass(frozen=True)
class Plan:
    """The sparse sampler's static layout: ``rows`` rows of ``sub_rows`` sub-rows of ``length``.

    ``row_axes`` leading axes of the grid form the rows; each sub-row draws ``budget`` gaps.
    """

    row_axes: int
    rows: int
    row_length: int
    sub_rows: int
    length: int
    budget: int


def row_axes(shape: tuple[int, ...], leading_axes: int) -> int:
    """How many leading axes of ``shape`` index rows (the rest is one row, flattened).

    All ``leading_axes`` (the axes before the first spatial one), except that trailing ones are
    merged into the row while it is shorter than ``_MIN_ROW``; axis 0 stays a row axis, so the
    rows split along a sharded batch.
    """
    axes = leading_axes
    while axes > 1 and math.prod(shape[axes:]) < _MIN_ROW:
        axes -= 1
    return axes


def sparse_plan(
    shape: tuple[int, ...], leading_axes: int, gamma_cap: float, max_row: int = MAX_ROW
) -> Plan | None:
    """The sparse sampler's layout for a seed grid, or None where the dense draw is cheaper.

    The rows, sub-rows and their length depend only on ``shape`` and ``leading_axes``; the
    budget, and with it the choice of sampler (the cost model weighs the budget against the row
    length), depend on ``gamma_cap`` too. So two bounds that both choose the sparse sampler draw
    the same seeds (the module docstring), but a looser bound may choose the dense draw.
    """
    if not 0 < max_row <= MAX_ROW:
        raise ValueError(f"`max_row` must be in [1, 2**24 - 1], got {max_row!r}.")
    axes = row_axes(shape, leading_axes)
    rows = math.prod(shape[:axes])
    row_length = math.prod(shape[axes:])
    if rows * row_length < _DENSE_BELOW or not 0.0 <= gamma_cap < 1.0:
        return None
    sub_rows = -(-row_length // max_row)
    length = -(-row_length // sub_rows)
    budget = seed_budget(length, gamma_cap, rows * sub_rows)
    sparse = rows * sub_rows * (budget * _SPARSE_DRAW_NS + length * _SPARSE_POSITION_NS)
    dense = rows * row_length * _DENSE_POSITION_NS
    if sparse >= dense:
        return None
    return Plan(axes, rows, row_length, sub_rows, length, budget)


def _dense(rng, gamma, *, shape, dtype) -> jax.Array:
    return jax.random.bernoulli(rng, gamma, shape).astype(dtype)


def sparse_uniforms(rng: jax.Array, plan: Plan) -> jax.Array:
    """The sparse sampler's uniforms in (0, 1], shaped ``(rows, sub_rows, budget)``.

    Drawn with the budget on the leading axis, so that (partitionable threefry numbers elements
    by their row-major index) the first ``K`` gaps of a row do not change when the budget grows
    past ``K``; then moved last, an ``O(rows * budget)`` transpose. A device holding some rows
    of a sharded batch draws only their gaps, since the partitioner splits the draw along the
    row axis. Values in (0, 1] so that ``log(u)`` is finite.
    """
    u = jax.random.uniform(rng, (plan.budget, plan.rows, plan.sub_rows), jnp.float32)
    return jnp.moveaxis(1.0 - u, 0, -1)


def _sparse(rng, gamma, *, shape, dtype, plan: Plan) -> jax.Array:
    """The first ``plan.budget`` seeds of every sub-row, from geometric gaps."""
    n = plan.length
    log_q = jnp.log1p(-gamma)
    u = sparse_uniforms(rng, plan)  # One uniform per gap.
    # gamma = 0 (log_q = 0) has no seed at all: every gap is past the end.
    safe_log_q = jnp.where(log_q < 0, log_q, jnp.float32(-1.0))
    gaps = jnp.where(log_q < 0, jnp.log(u) / safe_log_q, jnp.float32(n))
    # Integer-valued steps in [1, n + 1]; a gap of n or more already ends the sub-row.
    steps = jnp.floor(jnp.minimum(gaps, jnp.float32(n))) + 1.0
    ends = jnp.cumsum(steps, axis=-1)  # Exact while <= n (see the module docstring).
    pos = jnp.minimum(ends - 1.0, jnp.float32(n)).astype(jnp.int32)

    def scatter(pos):
        # Position n (past the end) is dropped.
        return (
            jnp.zeros((n,), dtype)
            .at[pos]
            .set(jnp.ones((), dtype), mode="drop", indices_are_sorted=True)
        )

    grid = jax.vmap(jax.vmap(scatter))(pos).reshape(plan.rows, plan.sub_rows * n)
    if plan.sub_rows * n != plan.row_length:
        grid = grid[:, : plan.row_length]  # The padding of the last sub-row.
    return grid.reshape(shape)


def bernoulli_seeds(
    rng: jax.Array,
    gamma: jax.Array,
    shape: tuple[int, ...],
    *,
    dtype=jnp.bool_,
    gamma_cap: float | None = None,
    leading_axes: int = 0,
    max_row: int = MAX_ROW,
) -> jax.Array:
    """Array of ``shape`` whose entries are independent Bernoulli(``gamma``) draws.

    ``gamma`` is a float32 scalar in [0, 1], possibly traced; a float32 probability keeps the
    draw exact to 2**-23 (``jax.random.bernoulli`` samples its uniform in the dtype of ``p``,
    and a bfloat16 ``p`` of 4e-4 gives about 19 times too many hits).

    Args:
      rng: a PRNG key.
      gamma: the seed probability, a float32 scalar in [0, 1].
      shape: the static shape of the grid.
      dtype: the output dtype (``bool`` or an integer type holding 0 and 1).
      gamma_cap: a static upper bound on ``gamma``, or None (no bound: the dense draw). With a
        bound, CPU uses the sparse sampler where the cost model prefers it; a ``gamma`` above
        the bound loses the seeds past each row's budget.
      leading_axes: how many leading axes of ``shape`` may index rows (the axes before the
        first spatial one).
      max_row: the longest sub-row (at most ``2**24 - 1``); smaller values are for tests.

    Returns:
      An array of ``shape`` and ``dtype``, 1 (``True``) at the seeds.
    """
    gamma = jnp.asarray(gamma, jnp.float32)
    plan = None if gamma_cap is None else sparse_plan(shape, leading_axes, gamma_cap, max_row)
    dense = partial(_dense, shape=shape, dtype=dtype)
    if plan is None:
        return dense(rng, gamma)
    # A case on the platform index, a constant of the lowering that XLA folds away: no
    # data-dependent control flow, and under vmap the index stays unbatched (no select).
    return jax.lax.platform_dependent(
        rng, gamma, cpu=partial(_sparse, shape=shape, dtype=dtype, plan=plan), default=dense
    )
