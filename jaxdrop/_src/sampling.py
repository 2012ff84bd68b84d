"""Sampling the seed grid of DropBlock: independent Bernoulli(gamma) draws, one per position.

DropBlock seeds are rare (gamma is about 0.003 for a 28 x 28 map, block 7, keep_prob 0.9), so a
dense draw spends one PRNG call per position to produce almost nothing. :func:`bernoulli_seeds`
instead draws only the seeds, with exactly the distribution of independent Bernoulli(gamma)
draws.

**Geometric gaps.** Over the flattened grid, the number of non-seeds before the first seed, and
between consecutive seeds, are independent Geometric(gamma) variables. One uniform ``u`` in
(0, 1] gives one gap, ``floor(log(u) / log1p(-gamma))`` (inverse CDF:
``P(gap >= k) = P(u <= (1 - gamma)**k) = (1 - gamma)**k``). A cumulative sum turns ``K`` gaps
into the positions of the first ``K`` seeds, and a scatter writes them into a zero grid. The
cost is ``K`` PRNG draws plus one pass that zeroes the grid, instead of one draw per position.

**A static budget for a traced gamma.** ``K`` fixes an array shape, so it must be static, while
``gamma`` may be traced (it follows a traced ``keep_prob``). :func:`budget_ladder` therefore
precomputes, for the static grid size ``n``, a short ladder of tiers: thresholds ``g_j`` spaced
by ``8x`` below ``1/4``, each with the budget ``K_j = n g_j + 5 sqrt(n g_j (1 - g_j)) + 10``
(the mean seed count at ``g_j`` plus 5 standard deviations). At run time ``lax.switch`` picks the
smallest tier whose threshold is at least ``gamma``; above ``1/4`` a dense draw is cheaper and is
used instead. Every branch returns the same grid, so shapes agree, and ``keep_prob`` can change
between calls without a retrace. The ladder stops at a budget of about 1024 draws, below which
the fixed costs dominate, so a chunk of up to ``2**24`` positions has at most six sparse tiers
plus the dense branch (a grid below 4096 positions is simply drawn densely). With a Python
``keep_prob``, ``gamma`` is a constant and XLA keeps only the branch it selects.

**Overflow is exact.** If the ``K``-th seed still lands inside the grid (more seeds than the
budget, which 5 standard deviations make rare), the ``K`` sparse seeds are kept and only the
positions after the ``K``-th seed are drawn densely, with an independent key, under a
``lax.cond``. Given the position of the ``K``-th seed, the later positions of a Bernoulli process
are independent Bernoulli(gamma) draws, so the result is still exact; redrawing everything
instead would bias the distribution against large counts. The dense tier is the same code with a
budget of zero: everything after position -1 is drawn densely.

**Index arithmetic.** The cumulative sum runs in float32 over integer-valued steps clipped to
``n + 1``. For ``n < 2**24`` every prefix that lands inside the grid is computed exactly (all its
partial sums are integers below ``2**24``), and every prefix that passes the end stays past it
(a sum of non-negative terms rounds to at least ``min(true sum, 2**24)``), in any summation
order. Grids larger than that are sampled in chunks of fewer than ``2**24`` positions with split
keys (exact by independence), so no index ever overflows int32, even past ``2**31`` positions.

Precision: like ``jax.random.bernoulli``, the draw is exact up to float32 rounding of ``gamma``
and of the uniforms (about ``2**-23``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

# Sparse sampling is cheaper than a dense draw up to about this gamma (measured on CPU: a sparse
# seed costs about 5 ns, a dense position 3 to 9 ns), and tiers below it are spaced by _RATIO.
_TOP_GAMMA = 0.25
_RATIO = 8.0
# Budget = mean + _SIGMAS standard deviations + _SLACK: overflow (handled exactly, but at the
# cost of a dense draw) then happens in fewer than 1e-6 of the calls at a tier's threshold.
_SIGMAS = 5.0
_SLACK = 10
# Below this budget the fixed costs (zeroing the grid, the scatter) dominate: the ladder ends.
_MIN_BUDGET = 1024
# Grids smaller than this are drawn densely: it is as cheap and compiles one branch only.
_DENSE_BELOW = 4096
# Positions are exact float32 integers below 2**24 (see the module docstring).
MAX_CHUNK = 2**24 - 1


def seed_budget(n: int, gamma: float) -> int:
    """Static number of gaps drawn for a grid of ``n`` positions and a gamma up to ``gamma``."""
    mean = n * gamma
    return min(n, math.ceil(mean + _SIGMAS * math.sqrt(mean * (1.0 - gamma)) + _SLACK))


def budget_ladder(n: int) -> tuple[tuple[float, int], ...]:
    """The sparse tiers ``((threshold, budget), ...)`` for ``n`` positions, largest first.

    Tier ``j`` serves ``threshold_{j+1} < gamma <= threshold_j`` (the last one serves down to
    ``gamma = 0``); a gamma above the first threshold is drawn densely. Thresholds are powers of
    two, exact in float32.
    """
    if n < _DENSE_BELOW:
        return ()
    tiers = []
    gamma = _TOP_GAMMA
    while True:
        budget = seed_budget(n, gamma)
        tiers.append((gamma, budget))
        if budget <= _MIN_BUDGET:
            return tuple(tiers)
        gamma /= _RATIO


def tier_index(gamma: jax.Array, tiers: tuple[tuple[float, int], ...]) -> jax.Array:
    """The ``lax.switch`` branch for a possibly traced ``gamma``.

    0 is the dense draw (``gamma`` above every threshold); ``j + 1`` is tier ``j``, the one with
    the smallest threshold at least ``gamma``.
    """
    thresholds = jnp.asarray([t for t, _ in tiers], jnp.float32)
    return jnp.sum(gamma <= thresholds, dtype=jnp.int32)


def _sparse_branch(budget: int, n: int, dtype):
    """Returns ``(grid, last)``: the first ``budget`` seeds and the position of the last of them.

    ``last >= n`` means the budget covered the whole grid; otherwise the positions after ``last``
    are still undrawn.
    """

    def branch(rng, gamma):
        log_q = jnp.log1p(-gamma)
        # u in (0, 1]: 1 - uniform[0, 1), so log(u) is finite.
        u = 1.0 - jax.random.uniform(rng, (budget,), jnp.float32)
        # gamma = 0 (log_q = 0) has no seed at all: every gap is past the end.
        safe_log_q = jnp.where(log_q < 0, log_q, jnp.float32(-1.0))
        gaps = jnp.where(log_q < 0, jnp.log(u) / safe_log_q, jnp.float32(n))
        # Integer-valued steps in [1, n + 1]; a gap of n or more already ends the grid.
        steps = jnp.floor(jnp.minimum(gaps, jnp.float32(n))) + 1.0
        ends = jnp.cumsum(steps)  # Exact while <= n (see the module docstring).
        pos = jnp.minimum(ends - 1.0, jnp.float32(n)).astype(jnp.int32)
        grid = (
            jnp.zeros((n,), dtype)
            .at[pos]
            .set(jnp.ones((), dtype), mode="drop", indices_are_sorted=True)
        )
        return grid, pos[-1]

    return branch


def _sample_flat(rng, gamma, n: int, dtype, tiers) -> jax.Array:
    """Independent Bernoulli(gamma) draws on ``n < 2**24`` flat positions, sparse where cheap."""
    if not tiers:
        return jax.random.bernoulli(rng, gamma, (n,)).astype(dtype)
    sparse_rng, dense_rng = jax.random.split(rng)
    index = tier_index(gamma, tiers)

    def dense(_):
        return jax.random.bernoulli(dense_rng, gamma, (n,)).astype(dtype)

    def sparse(_):
        branches = [_sparse_branch(k, n, dtype) for _, k in tiers]
        grid, last = lax.switch(index - 1, branches, sparse_rng, gamma)

        def fill_tail(grid):
            # Positions after the last sparse seed are independent of everything drawn so far.
            return jnp.where(lax.iota(jnp.int32, n) > last, dense(None), grid)

        return lax.cond(last < n - 1, fill_tail, lambda grid: grid, grid)

    # No branch returns a constant: inside shard_map, with a per-device key, every branch must
    # vary over the same mesh axes, or lax.switch / lax.cond reject them.
    return lax.cond(index == 0, dense, sparse, None)


def bernoulli_seeds(
    rng: jax.Array,
    gamma: jax.Array,
    shape: tuple[int, ...],
    *,
    dtype=jnp.bool_,
    tiers: tuple[tuple[float, int], ...] | None = None,
    max_chunk: int = MAX_CHUNK,
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
      tiers: the sparse tiers, ``budget_ladder(chunk size)`` by default; ``()`` draws densely.
        For tests: a tiny budget forces the overflow path.
      max_chunk: the largest number of positions sampled at once (at most ``2**24 - 1``).

    Returns:
      An array of ``shape`` and ``dtype``, 1 (``True``) at the seeds.
    """
    if not 0 < max_chunk <= MAX_CHUNK:
        raise ValueError(f"`max_chunk` must be in [1, 2**24 - 1], got {max_chunk!r}.")
    gamma = jnp.asarray(gamma, jnp.float32)
    total = math.prod(shape)
    if total == 0:
        return jnp.zeros(shape, dtype)
    num_chunks = -(-total // max_chunk)
    chunk = -(-total // num_chunks)
    if tiers is None:
        tiers = budget_ladder(chunk)
    if num_chunks == 1:
        return _sample_flat(rng, gamma, chunk, dtype, tiers).reshape(shape)
    # Chunks with independent keys are independent draws: exact, and indices stay below 2**24.
    flat = lax.map(
        lambda key: _sample_flat(key, gamma, chunk, dtype, tiers),
        jax.random.split(rng, num_chunks),
    )
    return flat.reshape(-1)[:total].reshape(shape)
