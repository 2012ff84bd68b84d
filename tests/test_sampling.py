"""The sparse seed sampler: exactly the distribution of independent Bernoulli(gamma) draws.

Statistical tests use fixed keys and bands of 5 standard deviations (fail probability below about
6e-7 for a normal statistic, per check); with fixed keys they are deterministic, and each band is
narrow enough that the bugs named next to it (lost seeds, a biased redraw, a wrong gap formula)
fall far outside it.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrop
from jaxdrop._src import dropblock as dropblock_lib
from jaxdrop._src import sampling

N_KEYS = 1000  # Independent grids per statistical check.
SHAPE = (50, 200)  # n = 10 000 positions: above the dense-only size, so the ladder is sparse.
N = math.prod(SHAPE)
Z = 5.0  # Width of every band, in standard deviations.


def _counts(gamma, *, tiers=None, max_chunk=sampling.MAX_CHUNK, shape=SHAPE, seed=0):
    """Seed counts of N_KEYS independent grids, and their per-position totals."""

    @jax.jit
    def draw(keys, gamma):
        grids = jax.vmap(
            lambda k: sampling.bernoulli_seeds(
                k, gamma, shape, dtype=jnp.uint8, tiers=tiers, max_chunk=max_chunk
            )
        )(keys)
        flat = grids.reshape(N_KEYS, -1).astype(jnp.int32)
        return flat.sum(axis=1), flat.sum(axis=0)

    keys = jax.random.split(jax.random.key(seed), N_KEYS)
    counts, per_position = draw(keys, jnp.float32(gamma))
    return np.asarray(counts), np.asarray(per_position)


def _binomial_pmf(n, p, k):
    log = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
    return math.exp(log + k * math.log(p) + (n - k) * math.log1p(-p))


def _check_binomial(counts, n, p):
    """Mean, variance and the whole histogram of ``counts`` against Binomial(n, p)."""
    m = len(counts)
    mean, var = n * p, n * p * (1 - p)
    # Mean: the sample mean has standard deviation sqrt(var / m).
    assert abs(counts.mean() - mean) < Z * math.sqrt(var / m), (counts.mean(), mean)
    # Variance: the sample variance of m near-normal draws has standard deviation
    # var * sqrt(2 / (m - 1)). Catches a capped (lost seeds) or mixed (biased redraw) count.
    assert abs(counts.var(ddof=1) - var) < Z * var * math.sqrt(2 / (m - 1)), (counts.var(), var)
    # Histogram: chi-square over bins of expected size >= 20, tails pooled. The statistic has mean
    # `dof` and standard deviation sqrt(2 dof); the band is 5 of those.
    lo, hi = max(0, int(mean - 4 * math.sqrt(var))), int(mean + 4 * math.sqrt(var)) + 1
    middle = [(_binomial_pmf(n, p, k), np.sum(counts == k)) for k in range(lo, hi)]
    p_low = sum(_binomial_pmf(n, p, k) for k in range(lo))
    p_high = 1.0 - p_low - sum(q for q, _ in middle)
    cells = [(p_low, np.sum(counts < lo)), *middle, (p_high, np.sum(counts >= hi))]
    bins, acc_p, acc_o = [], 0.0, 0
    for prob, obs in cells:
        acc_p, acc_o = acc_p + prob, acc_o + obs
        if acc_p * m >= 20:
            bins.append((acc_p, acc_o))
            acc_p, acc_o = 0.0, 0
    bins[-1] = (bins[-1][0] + acc_p, bins[-1][1] + acc_o)
    chi2 = sum((o - q * m) ** 2 / (q * m) for q, o in bins)
    dof = len(bins) - 1
    assert chi2 < dof + Z * math.sqrt(2 * dof), (chi2, dof)


def _check_uniform_positions(per_position, p):
    """Every position is a seed equally often: chi-square of 50 equal bins of the grid."""
    bins = per_position.reshape(50, -1).sum(axis=1)
    expected = N_KEYS * p * per_position.size / 50
    chi2 = float(np.sum((bins - expected) ** 2 / expected))
    # 49 degrees of freedom: mean 49, standard deviation sqrt(98).
    assert chi2 < 49 + Z * math.sqrt(98), chi2


def test_ladder():
    assert sampling.budget_ladder(100) == ()  # Small grids are drawn densely.
    tiers = sampling.budget_ladder(4_000_000)
    thresholds = [t for t, _ in tiers]
    assert thresholds[0] == 0.25
    assert all(a / b == 8 for a, b in zip(thresholds, thresholds[1:], strict=False))
    for t, k in tiers:
        mean = 4_000_000 * t
        assert mean + 5 * math.sqrt(mean * (1 - t)) <= k <= 4_000_000
    assert tiers[-1][1] <= 1024 < tiers[-2][1]  # The ladder ends at the smallest useful budget.
    assert len(tiers) <= 6  # Few branches to compile.


def test_tier_index_traced():
    tiers = sampling.budget_ladder(4_000_000)
    index = jax.jit(lambda g: sampling.tier_index(g, tiers))
    assert int(index(jnp.float32(0.5))) == 0  # Dense above the top threshold.
    for j, (t, _) in enumerate(tiers):
        assert int(index(jnp.float32(t))) == j + 1  # A threshold belongs to its own tier.
        assert int(index(jnp.float32(t * 1.01))) == j  # Just above it: the tier above.
    assert int(index(jnp.float32(0.0))) == len(tiers)
    assert index._cache_size() == 1


@pytest.mark.parametrize("gamma", [0.003, 0.4])
def test_sparse_and_dense_are_binomial(gamma):
    # 0.003 takes a sparse tier, 0.4 the dense branch of the same switch.
    counts, per_position = _counts(gamma)
    _check_binomial(counts, N, gamma)
    _check_uniform_positions(per_position, gamma)
    # Pure dense sampling (no tiers) agrees with the same checks.
    dense_counts, dense_positions = _counts(gamma, tiers=(), seed=1)
    _check_binomial(dense_counts, N, gamma)
    _check_uniform_positions(dense_positions, gamma)
    # Two-sample check of the means: difference of means has sd sqrt(2 var / m).
    sd = math.sqrt(2 * N * gamma * (1 - gamma) / N_KEYS)
    assert abs(counts.mean() - dense_counts.mean()) < Z * sd


@pytest.mark.parametrize("budget", [5, 30])
def test_overflow_keeps_the_distribution(budget):
    # Mean 30 seeds: a budget of 5 always overflows; 30 overflows about half of the time, which
    # is where redrawing everything on overflow (biased towards small counts) or dropping the
    # seeds past the budget (capped counts) would show most.
    gamma = 30 / N
    tiers = ((1.0, budget),)
    counts, per_position = _counts(gamma, tiers=tiers)
    overflowed = np.mean(counts >= budget)
    assert overflowed > (0.99 if budget == 5 else 0.3)
    _check_binomial(counts, N, gamma)
    _check_uniform_positions(per_position, gamma)


def test_edges_of_gamma():
    draw = jax.jit(lambda g: sampling.bernoulli_seeds(jax.random.key(3), g, SHAPE))
    assert not bool(draw(jnp.float32(0.0)).any())
    assert bool(draw(jnp.float32(1.0)).all())
    assert draw(jnp.float32(0.5)).dtype == jnp.bool_
    # A tiny gamma in the smallest tier: at most a few seeds, never NaN-driven garbage.
    assert int(draw(jnp.float32(1e-7)).sum()) <= 3


def test_chunks_are_independent_and_cover_the_grid():
    # 7 * 3001 positions in 22 chunks of at most 1000, sparse in every chunk.
    shape = (7, 3001)
    gamma = 0.01
    tiers = ((0.25, 300), (0.03, 60))
    counts, per_position = _counts(gamma, tiers=tiers, max_chunk=1000, shape=shape)
    n = math.prod(shape)
    _check_binomial(counts, n, gamma)
    # The first and last chunk are as dense as the rest (no chunk lost or duplicated).
    first, last = per_position[:900].mean() / N_KEYS, per_position[-900:].mean() / N_KEYS
    sd = math.sqrt(gamma * (1 - gamma) / (900 * N_KEYS))
    assert abs(first - gamma) < Z * sd and abs(last - gamma) < Z * sd
    with pytest.raises(ValueError, match="max_chunk"):
        sampling.bernoulli_seeds(jax.random.key(0), 0.1, shape, max_chunk=2**24)


def test_no_retrace_when_keep_prob_changes(key):
    traces = []

    @jax.jit
    def f(key, x, keep_prob):
        traces.append(None)
        return jaxdrop.dropblock(key, x, keep_prob, 5)

    x = jnp.ones((2, 40, 40, 8))
    # Across tiers: gamma goes from about 0.0002 (smallest tier) to dense.
    for keep_prob in [0.999, 0.9, 0.5, 0.05]:
        y = f(key, x, jnp.float32(keep_prob))
        kept = float(jnp.mean(y != 0))
        assert keep_prob - 0.15 < kept <= 1.0
    assert len(traces) == 1


def _mask_fractions(key, shape, keep_prob, block):
    """Per-(example, channel) kept fractions of one dropblock mask."""
    make = jax.jit(
        functools.partial(
            dropblock_lib.dropblock_mask,
            shape=shape,
            spatial_dims=(1, 2),
            block_size=(block, block),
            calibrate=False,
        )
    )
    return np.asarray(make(key, jnp.float32(keep_prob)).mean(axis=(1, 2)).ravel())


def test_dropblock_drop_rate_sparse_matches_dense_and_expectation(monkeypatch):
    shape, keep_prob, block = (32, 28, 28, 64), 0.9, 7
    sizes, blocks = (28, 28), (7, 7)
    gamma = dropblock_lib.seed_probability(jnp.float32(keep_prob), sizes, blocks, False)
    expected = float(
        dropblock_lib.expected_keep(gamma, *dropblock_lib.coverage_histogram(sizes, blocks))
    )
    sparse = _mask_fractions(jax.random.key(4), shape, keep_prob, block)
    monkeypatch.setattr(sampling, "budget_ladder", lambda n: ())  # Dense draws only.
    dense = _mask_fractions(jax.random.key(5), shape, keep_prob, block)
    # Blocks correlate units within a map, so the band comes from the spread of the 2048
    # independent (example, channel) maps, not from a binomial over units.
    for fractions in (sparse, dense):
        sd = fractions.std(ddof=1) / math.sqrt(fractions.size)
        assert abs(fractions.mean() - expected) < Z * sd, (fractions.mean(), expected)
    sd = math.hypot(sparse.std(ddof=1), dense.std(ddof=1)) / math.sqrt(sparse.size)
    assert abs(sparse.mean() - dense.mean()) < Z * sd


@pytest.mark.bigmem
def test_more_than_2_to_the_31_positions():
    # 2**31 + 2**22 positions (2.1 GB of uint8) in chunks below 2**24: no index overflows, and
    # seeds land past position 2**31 as often as anywhere else.
    total, tail = 2**31 + 2**22, 2**22
    gamma = 1e-5

    @jax.jit
    def counts(key):
        seeds = sampling.bernoulli_seeds(key, jnp.float32(gamma), (total,), dtype=jnp.uint8)
        rows = seeds.reshape(-1, 2**22).sum(axis=1, dtype=jnp.int32)
        return rows.sum(), rows[-1]

    all_seeds, tail_seeds = (int(c) for c in counts(jax.random.key(11)))
    mean, tail_mean = total * gamma, tail * gamma
    assert abs(all_seeds - mean) < Z * math.sqrt(mean)
    assert abs(tail_seeds - tail_mean) < Z * math.sqrt(tail_mean)
