"""The seed samplers: exactly the distribution of independent Bernoulli(gamma) draws.

The sparse sampler (CPU, with a static bound on gamma) draws a static budget of geometric gaps
per row; the dense one is ``jax.random.bernoulli``. Exact properties first (the budget's bound,
what a gamma above the bound does, the bound on the run-time gamma), then statistics.

Statistical tests use fixed keys and bands of 5 standard deviations (fail probability below about
6e-7 for a normal statistic, per check); with fixed keys they are deterministic, and each band is
narrow enough that the bugs named next to it (lost seeds, a wrong gap formula, a lost or
duplicated sub-row) fall far outside it.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest

import jaxdrop
from jaxdrop._src import dropblock as dropblock_lib
from jaxdrop._src import sampling

N_KEYS = 1000  # Independent grids per statistical check.
SHAPE = (4, 2500)  # 4 rows of 2 500 positions.
N = math.prod(SHAPE)
Z = 5.0  # Width of every band, in standard deviations.


def _counts(gamma, *, gamma_cap, max_row=sampling.MAX_ROW, shape=SHAPE, seed=0):
    """Seed counts of N_KEYS independent grids, and their per-position totals."""
    if gamma_cap is not None:  # Otherwise the test would not test the sparse sampler.
        assert sampling.sparse_plan(shape, 1, gamma_cap, max_row) is not None

    @jax.jit
    def draw(keys, gamma):
        grids = jax.vmap(
            lambda k: sampling.bernoulli_seeds(
                k,
                gamma,
                shape,
                dtype=jnp.uint8,
                gamma_cap=gamma_cap,
                leading_axes=1,
                max_row=max_row,
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


def _log_binomial_tail(n, p, k):
    """Exact natural log of P(Binomial(n, p) >= k), summed term by term from lgamma."""
    terms = [
        math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1)
        + j * math.log(p) + (n - j) * math.log1p(-p)
        for j in range(k, n + 1)
    ]  # fmt: skip
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


@pytest.mark.parametrize(
    "n,g,rows",
    [(2_500, 0.004, 4), (247_808, 2**-8, 16), (500, 0.05, 2**21), (100, 0.3, 1), (40, 0.9, 1)],
)
def test_budget_is_a_rigorous_and_minimal_bound(n, g, rows):
    k = sampling.seed_budget(n, g, rows)
    log_delta = sampling.LOG2_OVERFLOW * math.log(2) - math.log(max(rows, sampling.ROWS_COVERED))
    assert n * g < k <= n
    # The Chernoff bound certifies K, and K - 1 is not certified: K is the smallest.
    assert sampling.log_tail_bound(n, g, k + 1) <= log_delta
    assert sampling.log_tail_bound(n, g, k) > log_delta
    # The bound is an upper bound of the exact tail, at K + 1 and between the mean and K.
    if k < n:
        assert _log_binomial_tail(n, g, k + 1) <= sampling.log_tail_bound(n, g, k + 1)
        assert _log_binomial_tail(n, g, k + 1) <= log_delta
    for j in np.linspace(math.ceil(n * g) + 1, k, 4).astype(int):
        assert _log_binomial_tail(n, g, int(j)) <= sampling.log_tail_bound(n, g, int(j)) + 1e-9
    assert sampling.seed_budget(n, 0.0, rows) == 0
    assert sampling.seed_budget(n, 1.0, rows) == n


def test_budget_does_not_depend_on_the_rows_up_to_rows_covered():
    # So a device's draws are the same whatever the number of devices (test_sharding.py).
    assert sampling.seed_budget(10_000, 0.01, 1) == sampling.seed_budget(10_000, 0.01, 2**20)
    assert sampling.seed_budget(10_000, 0.01, 2**30) > sampling.seed_budget(10_000, 0.01, 1)


def test_layout_keeps_the_batch_axis_and_merges_short_rows():
    # NHWC seed grid: rows are examples. NCHW: channels merge into the row (rows of 484 would be
    # short), but axis 0 stays a row axis even when the row is short.
    assert sampling.row_axes((16, 22, 22, 512), 1) == 1
    assert sampling.row_axes((16, 512, 22, 22), 2) == 1
    assert sampling.row_axes((16, 2, 200, 200), 2) == 2
    assert sampling.row_axes((16, 8, 3), 1) == 1
    assert sampling.row_axes((22, 22, 512), 0) == 0
    plan = sampling.sparse_plan((4, 3 * 2**24), 1, 1e-6)
    assert (plan.rows, plan.sub_rows) == (4, 4) and plan.length < 2**24
    assert sampling.sparse_plan((4, 5000), 1, 0.5) is None  # Dense is cheaper.
    assert sampling.sparse_plan((4, 1000), 1, 0.001) is None  # Small grids are drawn densely.
    with pytest.raises(ValueError, match="max_row"):
        sampling.sparse_plan((4, 100), 1, 0.01, max_row=2**24)


@pytest.mark.slow
@pytest.mark.parametrize("gamma", [0.003, 0.05])
def test_sparse_and_dense_are_binomial(gamma):
    cap = 1.25 * gamma
    counts, per_position = _counts(gamma, gamma_cap=cap)
    _check_binomial(counts, N, gamma)
    _check_uniform_positions(per_position, gamma)
    dense_counts, dense_positions = _counts(gamma, gamma_cap=None, seed=1)
    _check_binomial(dense_counts, N, gamma)
    _check_uniform_positions(dense_positions, gamma)
    # Two-sample check of the means: difference of means has sd sqrt(2 var / m).
    sd = math.sqrt(2 * N * gamma * (1 - gamma) / N_KEYS)
    assert abs(counts.mean() - dense_counts.mean()) < Z * sd


def test_a_gamma_above_the_bound_loses_only_the_seeds_past_the_budget():
    # The documented approximation, made certain: with gamma far above the bound, every row has
    # more seeds than its budget, and exactly the first `budget` of them are drawn.
    shape, cap = (4, 5000), 0.002
    plan = sampling.sparse_plan(shape, 1, cap)
    seeds = jax.jit(
        lambda k: sampling.bernoulli_seeds(
            k, jnp.float32(0.5), shape, dtype=jnp.uint8, gamma_cap=cap, leading_axes=1
        )
    )(jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(seeds).sum(axis=1), [plan.budget] * 4)


@pytest.mark.parametrize("gamma_cap", [None, 0.01])
def test_edges_of_gamma(gamma_cap):
    draw = jax.jit(
        lambda g: sampling.bernoulli_seeds(
            jax.random.key(3), g, SHAPE, gamma_cap=gamma_cap, leading_axes=1
        )
    )
    assert not bool(draw(jnp.float32(0.0)).any())
    assert draw(jnp.float32(0.005)).dtype == jnp.bool_
    # A tiny gamma: at most a few seeds, never NaN-driven garbage.
    assert int(draw(jnp.float32(1e-7)).sum()) <= 3
    if gamma_cap is None:
        assert bool(draw(jnp.float32(1.0)).all())


@pytest.mark.slow
def test_sampler_is_the_same_eager_jitted_and_batched():
    # The per-platform choice (a platform_dependent case) must not change the bits: eager,
    # jitted and vmapped calls give the bits of a jitted call per example, for a key batched on
    # any axis, a batched gamma and nested vmaps (two batch axes).
    def draw(k, g):
        return sampling.bernoulli_seeds(k, g, SHAPE, gamma_cap=0.01, leading_axes=1)

    keys = jax.random.split(jax.random.key(4), (3, 2))
    gammas = jnp.asarray([0.002, 0.005], jnp.float32)
    # The outer vmap maps the keys' axis 1: a batch axis off the front.
    batched = jax.jit(jax.vmap(jax.vmap(draw, in_axes=(0, None)), in_axes=(1, None)))
    got = np.asarray(batched(keys, gammas[0]))
    assert got.shape == (2, 3, *SHAPE)
    for j in range(2):
        for i in range(3):
            want = np.asarray(jax.jit(draw)(keys[i, j], gammas[0]))
            np.testing.assert_array_equal(got[j, i], want)
    eager = np.asarray(draw(keys[0, 0], gammas[1]))
    np.testing.assert_array_equal(eager, np.asarray(jax.jit(draw)(keys[0, 0], gammas[1])))
    over_gamma = np.asarray(jax.jit(jax.vmap(draw, in_axes=(None, 0)))(keys[0, 0], gammas))
    np.testing.assert_array_equal(over_gamma[1], eager)
    assert 0 < over_gamma[0].sum() < over_gamma[1].sum()  # The gammas are not swapped.


@pytest.mark.slow
def test_sub_rows_are_independent_and_cover_the_row():
    # 2 rows of 10 501 positions in sub-rows of at most 1 000 (11 of 955, the last one padded).
    shape, gamma = (2, 10_501), 0.01
    counts, per_position = _counts(gamma, gamma_cap=0.0125, max_row=1000, shape=shape)
    n = math.prod(shape)
    _check_binomial(counts, n, gamma)
    # The start and the end of each row are as dense as the rest (no sub-row lost, duplicated
    # or shifted by the padding).
    rows = per_position.reshape(shape)
    sd = math.sqrt(gamma * (1 - gamma) / (2 * 900 * N_KEYS))
    for part in (rows[:, :900], rows[:, -900:]):
        assert abs(part.mean() / N_KEYS - gamma) < Z * sd


LAYOUTS = [((28, 28), (7, 7)), ((7, 7), (3, 3)), ((9, 13), (4, 2)), ((40,), (5,))]


@pytest.mark.parametrize("calibrate", [False, True])
def test_gamma_bound_covers_the_float32_gamma(calibrate):
    # The budget is only certified if the run-time float32 gamma stays below the static bound
    # computed in float64: checked over a sweep of keep_probs, including ones close to 1 where
    # float32 rounding is largest relative to gamma.
    keep_probs = np.concatenate([np.linspace(0.02, 0.98, 49), [0.99, 0.999, 0.9999, 0.99999]])
    for sizes, blocks in LAYOUTS:
        gamma = functools.partial(
            dropblock_lib.seed_probability, sizes=sizes, blocks=blocks, calibrate=calibrate
        )
        runtime = jax.jit(jax.vmap(gamma))
        gammas = np.asarray(runtime(jnp.asarray(keep_probs, jnp.float32)), np.float64)
        bounds = [dropblock_lib.gamma_bound(float(p), sizes, blocks, calibrate) for p in keep_probs]
        assert np.all(gammas <= bounds), (sizes, keep_probs[gammas > bounds])
        # A larger keep_prob (a traced value clipped up to min_keep_prob) gives a smaller gamma.
        assert np.all(np.diff(gammas) <= 0)


@pytest.mark.slow
def test_traced_keep_prob_across_the_range_of_gamma(key):
    # One compiled program per min_keep_prob, sparse with the bound and dense without, serves
    # gammas from about 0.0002 to the bound (keep_prob clipped up to min_keep_prob) without a
    # recompile, and keeps the exact expected fraction at each.
    @functools.partial(jax.jit, static_argnames="min_keep_prob")
    def f(key, x, keep_prob, min_keep_prob):
        return jaxdrop.dropblock(key, x, keep_prob, 5, min_keep_prob=min_keep_prob) != 0

    x = jnp.ones((2, 40, 40, 8))
    sizes, blocks = (40, 40), (5, 5)
    seed_positions = 36 * 36
    for min_keep_prob in (None, 0.5):
        f(key, x, jnp.float32(0.9), min_keep_prob)
        with oracle.compilations() as compiled:
            for keep_prob in [0.999, 0.9, 0.5, 0.05]:
                kept = np.asarray(f(key, x, jnp.float32(keep_prob), min_keep_prob))
                effective = max(keep_prob, min_keep_prob or 0.0)
                gamma = oracle.paper_gamma(effective, sizes, blocks)
                expected = oracle.expected_keep_map(gamma, sizes, blocks).mean()
                # Efron-Stein: one seed moves a map's kept fraction by at most 25 / 1600, so
                # the variance per map is at most seed_positions * gamma * (25 / 1600) ** 2;
                # the mean of the 16 independent maps lies within 5 of its standard deviations.
                sd = math.sqrt(seed_positions * gamma) * (25 / 1600) / math.sqrt(16)
                assert abs(kept.mean() - expected) < 5 * sd, (keep_prob, kept.mean(), expected)
        assert compiled == []


def test_python_keep_probs_share_a_compilation_per_power_of_4(key):
    x = jnp.ones((2, 40, 40, 8))
    caps = {
        p: dropblock_lib.seed_cap(x.shape, (1, 2), (5, 5), False, p, None)
        for p in (0.5, 0.6, 0.7, 0.8, 0.9)
    }
    assert all(c is not None and math.log(c, 4) == round(math.log(c, 4)) for c in caps.values())
    assert len(set(caps.values())) == 2  # keep_probs 0.5 to 0.9 span two rungs here.
    with oracle.compilations() as compiled:
        for p in caps:
            jaxdrop.dropblock(key, x, p, 5)
    assert compiled == ["jit(_dropblock)"] * 2
    # Grids where the dense draw is cheaper share one compilation for every Python keep_prob.
    assert dropblock_lib.seed_cap((2, 6, 6, 2), (1, 2), (3, 3), False, 0.9, None) is None


def _mask_fractions(key, shape, keep_prob, block, seed_cap):
    """Per-(example, channel) kept fractions of one dropblock mask."""
    make = jax.jit(
        functools.partial(
            dropblock_lib.dropblock_mask,
            shape=shape,
            spatial_dims=(1, 2),
            block_size=(block, block),
            calibrate=False,
            seed_cap=seed_cap,
        )
    )
    return np.asarray(make(key, jnp.float32(keep_prob)).mean(axis=(1, 2)).ravel())


@pytest.mark.slow
def test_dropblock_drop_rate_sparse_matches_dense_and_expectation():
    shape, keep_prob, block = (32, 28, 28, 64), 0.9, 7
    sizes, blocks = (28, 28), (7, 7)
    gamma = dropblock_lib.seed_probability(jnp.float32(keep_prob), sizes, blocks, False)
    expected = float(
        dropblock_lib.expected_keep(gamma, *dropblock_lib.coverage_histogram(sizes, blocks))
    )
    cap = dropblock_lib.seed_cap(shape, (1, 2), (block, block), False, keep_prob, None)
    assert cap is not None
    sparse = _mask_fractions(jax.random.key(4), shape, keep_prob, block, cap)
    dense = _mask_fractions(jax.random.key(5), shape, keep_prob, block, None)
    # Blocks correlate units within a map, so the band comes from the spread of the 2048
    # independent (example, channel) maps, not from a binomial over units.
    for fractions in (sparse, dense):
        sd = fractions.std(ddof=1) / math.sqrt(fractions.size)
        assert abs(fractions.mean() - expected) < Z * sd, (fractions.mean(), expected)
    sd = math.hypot(sparse.std(ddof=1), dense.std(ddof=1)) / math.sqrt(sparse.size)
    assert abs(sparse.mean() - dense.mean()) < Z * sd


@pytest.mark.bigmem
def test_more_than_2_to_the_31_positions():
    # 2**31 + 2**22 positions (2.1 GB of uint8) in one row, sampled in sub-rows below 2**24: no
    # index overflows, and seeds land past position 2**31 as often as anywhere else.
    total, tail = 2**31 + 2**22, 2**22
    gamma = 1e-5

    @jax.jit
    def counts(key):
        seeds = sampling.bernoulli_seeds(
            key, jnp.float32(gamma), (total,), dtype=jnp.uint8, gamma_cap=2 * gamma
        )
        rows = seeds.reshape(-1, 2**22).sum(axis=1, dtype=jnp.int32)
        return rows.sum(), rows[-1]

    all_seeds, tail_seeds = (int(c) for c in counts(jax.random.key(11)))
    mean, tail_mean = total * gamma, tail * gamma
    assert abs(all_seeds - mean) < Z * math.sqrt(mean)
    assert abs(tail_seeds - tail_mean) < Z * math.sqrt(tail_mean)
