"""PatchDropout and patch_restore against the NumPy oracle (tests/oracle.py).

Exact properties first (the kept count, the prefix untouched, the output is the tokens gathered
at the returned indices, the ordering, the gradient, the inverse), then the statistics of the
selection with fixed keys: every subset equally likely, and subsets independent across examples
and keys.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from oracle import collectives, patch_gather, patch_keep_count, patch_scatter
from scipy import stats

import jaxdrop


def tokens_of(shape, dtype=jnp.float32):
    # Distinct values per token, so that a gather from the wrong position shows.
    return jax.random.normal(jax.random.key(1), shape).astype(dtype)


def kept_mask(indices: np.ndarray, num_patches: int) -> np.ndarray:
    """``(..., L_p)`` bool: True at the kept positions."""
    mask = np.zeros(indices.shape[:-1] + (num_patches,), bool)
    np.put_along_axis(mask, indices, True, axis=-1)
    return mask


@pytest.mark.parametrize(
    ("shape", "keep_prob", "prefix", "ordered"),
    [
        ((8, 17, 4), 0.5, 1, False),  # class token, 16 patches: keep 8
        ((8, 17, 4), 0.5, 1, True),
        ((3, 2, 20, 3), 0.3, 4, False),  # two batch axes, 4 registers: keep floor(4.8) = 4
        ((12, 5), 0.75, 0, True),  # one example, no prefix: keep 9
        ((4, 10, 2), 0.01, 0, False),  # at least one token: keep 1
        ((4, 10, 2), 0.0, 2, True),  # keep_prob 0 keeps one too (timm's max(1, .))
    ],
)
def test_matches_the_oracle(key, shape, keep_prob, prefix, ordered):
    tokens = tokens_of(shape)
    out, indices = jaxdrop.patch_dropout(
        key, tokens, keep_prob, num_prefix_tokens=prefix, ordered=ordered, return_indices=True
    )
    num_patches = shape[-2] - prefix
    k = patch_keep_count(num_patches, keep_prob)
    assert out.shape == shape[:-2] + (prefix + k, shape[-1]) and out.dtype == tokens.dtype
    assert indices.shape == shape[:-2] + (k,) and indices.dtype == jnp.int32
    indices = np.asarray(indices)
    # Distinct positions among the patch tokens (the prefix excluded).
    assert np.all((indices >= 0) & (indices < num_patches))
    assert np.all(kept_mask(indices, num_patches).sum(-1) == k)
    # The output is exactly the prefix, then the patch tokens at the indices, in their order.
    np.testing.assert_array_equal(out, patch_gather(np.asarray(tokens), indices, prefix))
    if ordered:
        assert np.all(np.diff(indices, axis=-1) > 0)
    # The same call without indices gives the same tokens.
    again = jaxdrop.patch_dropout(key, tokens, keep_prob, num_prefix_tokens=prefix, ordered=ordered)
    np.testing.assert_array_equal(again, out)


@pytest.mark.parametrize(
    ("num_patches", "keep_prob"),
    [(100, 0.29), (100, 0.71), (196, 0.5), (196, 0.25), (64, 0.75), (7, 0.5), (3, 0.2), (1, 0.5)],
)
def test_kept_count_is_timms_for_the_decimal_keep_prob(key, num_patches, keep_prob):
    tokens = jnp.zeros((2, num_patches, 1))
    out = jaxdrop.patch_dropout(key, tokens, keep_prob)
    assert out.shape[-2] == patch_keep_count(num_patches, keep_prob)


def test_keep_prob_one_and_no_patch_tokens_return_the_tokens(key):
    tokens = tokens_of((3, 9, 2))
    out, indices = jaxdrop.patch_dropout(key, tokens, 1.0, num_prefix_tokens=1, return_indices=True)
    assert out is tokens
    np.testing.assert_array_equal(indices, np.broadcast_to(np.arange(8), (3, 8)))
    # Only prefix tokens: nothing to choose from, nothing dropped, no indices.
    out, indices = jaxdrop.patch_dropout(key, tokens, 0.5, num_prefix_tokens=9, return_indices=True)
    assert out is tokens and indices.shape == (3, 0)


def test_concrete_jax_keep_prob_is_converted(key):
    tokens = tokens_of((4, 12, 3))
    a = jaxdrop.patch_dropout(key, tokens, jnp.float32(0.5))
    b = jaxdrop.patch_dropout(key, tokens, 0.5)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey])
def test_jit_and_vmap_equal_a_loop(make_key):
    tokens = tokens_of((6, 11, 3))
    keys = jax.random.split(make_key(3), 6)

    def f(k, t):
        return jaxdrop.patch_dropout(k, t, 0.4, num_prefix_tokens=1, return_indices=True)

    eager = f(keys[0], tokens)
    jitted = jax.jit(f)(keys[0], tokens)
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_array_equal(a, b)
    batched = jax.vmap(f)(keys, tokens)
    for i in range(6):
        one = f(keys[i], tokens[i])
        for a, b in zip(batched, one, strict=True):
            np.testing.assert_array_equal(a[i], b)


def test_gradient_scatters_back_to_the_kept_tokens(key):
    tokens = tokens_of((4, 13, 5))
    weights = np.asarray(jax.random.normal(jax.random.key(2), (4, 1 + 6, 5)))

    def loss(t):
        return jnp.sum(jaxdrop.patch_dropout(key, t, 0.5, num_prefix_tokens=1) * weights)

    grad = jax.jit(jax.grad(loss))(tokens)
    _, indices = jaxdrop.patch_dropout(key, tokens, 0.5, num_prefix_tokens=1, return_indices=True)
    # d out[j] / d tokens[i] is 1 where out[j] is tokens[i]: the weights scattered back, zeros
    # at the dropped tokens, exactly.
    expected = patch_scatter(weights, np.asarray(indices), 13, 1, np.zeros(5, np.float32))
    np.testing.assert_array_equal(grad, expected)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_dtype_is_kept_bit_for_bit(key, dtype):
    tokens = tokens_of((4, 9, 3), dtype)
    out, indices = jaxdrop.patch_dropout(key, tokens, 0.5, num_prefix_tokens=1, return_indices=True)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, patch_gather(np.asarray(tokens), np.asarray(indices), 1))


def subset_codes(indices: np.ndarray, num_patches: int) -> np.ndarray:
    """One integer per example naming its kept subset (a bit mask of the kept positions)."""
    return kept_mask(indices, num_patches).reshape(-1, num_patches) @ (1 << np.arange(num_patches))


@pytest.mark.parametrize(
    ("num_patches", "keep_prob", "ordered"), [(6, 0.34, True), (5, 0.6, False)]
)
def test_every_subset_is_equally_likely(num_patches, keep_prob, ordered):
    # 6 patches keep 2 (15 subsets), 5 keep 3 (10 subsets), over 6000 examples of one call.
    n = 6000
    tokens = jnp.zeros((n, 1 + num_patches, 1))
    _, indices = jaxdrop.patch_dropout(
        jax.random.key(4),
        tokens,
        keep_prob,
        num_prefix_tokens=1,
        ordered=ordered,
        return_indices=True,
    )
    k = patch_keep_count(num_patches, keep_prob)
    codes = subset_codes(np.asarray(indices), num_patches)
    subsets = [sum(1 << i for i in c) for c in itertools.combinations(range(num_patches), k)]
    counts = np.array([np.sum(codes == s) for s in subsets])
    assert counts.sum() == n  # every example kept one of the k-subsets
    # Chi-square goodness of fit to the uniform distribution over subsets; with a fixed key the
    # test is deterministic, and a p-value threshold of 1e-4 is what a correct sampler fails
    # once in 10 000 keys (a bias of a few percent on one subset shows as p < 1e-6 at n = 6000).
    assert stats.chisquare(counts).pvalue > 1e-4
    if not ordered:
        # The random order: the first kept slot is every position equally often.
        first = np.bincount(np.asarray(indices)[:, 0], minlength=num_patches)
        assert stats.chisquare(first).pvalue > 1e-4


def band(p: float, n: int, sigmas: float = 5.0) -> float:
    """Half width of a ``sigmas``-sigma band on a frequency of ``n`` Bernoulli(p) draws."""
    return sigmas * math.sqrt(p * (1 - p) / n)


def test_positions_equally_likely_and_subsets_independent():
    # 16 patches, keep 4, over 4000 examples and two keys.
    n, num_patches, keep_prob = 4000, 16, 0.25
    k = patch_keep_count(num_patches, keep_prob)
    tokens = jnp.zeros((n, num_patches, 1))

    def masks(seed):
        _, idx = jaxdrop.patch_dropout(jax.random.key(seed), tokens, keep_prob, return_indices=True)
        return kept_mask(np.asarray(idx), num_patches).astype(np.float64)

    m1, m2 = masks(5), masks(6)
    off = ~np.eye(num_patches, dtype=bool)
    # Each frequency below is a mean of independent Bernoulli draws (one per example, examples
    # independent), so a 5-sigma band fails a correct sampler with probability below 6e-7 per
    # entry, 2e-4 over the 16 + 3 * 256 entries checked.
    rate = k / num_patches
    assert np.all(np.abs(m1.mean(0) - rate) < band(rate, n))
    # Same example: a pair is kept together with probability k(k-1) / (L(L-1)) (sampling
    # without replacement), below the (k/L)^2 of independent positions.
    same = k * (k - 1) / (num_patches * (num_patches - 1))
    co = m1.T @ m1 / n
    assert np.all(np.abs(co[off] - same) < band(same, n))
    # Different examples of one call, and one example under two keys: (k/L)^2, every pair.
    half = n // 2
    across_examples = m1[:half].T @ m1[half:] / half
    assert np.all(np.abs(across_examples - rate**2) < band(rate**2, half))
    across_keys = m1.T @ m2 / n
    assert np.all(np.abs(across_keys - rate**2) < band(rate**2, n))


@pytest.mark.slow  # 5 to 8 s in the quick loop on 2 idle cores: the full run only
def test_restore_inverts_patch_dropout(key):
    tokens = tokens_of((3, 2, 1 + 12, 4))
    for ordered in (False, True):
        out, indices = jaxdrop.patch_dropout(
            key, tokens, 0.5, num_prefix_tokens=1, ordered=ordered, return_indices=True
        )
        mask_token = np.arange(4, dtype=np.float32) - 10
        full = jaxdrop.patch_restore(out, indices, 13, num_prefix_tokens=1, fill=mask_token)
        expected = patch_scatter(np.asarray(out), np.asarray(indices), 13, 1, mask_token)
        np.testing.assert_array_equal(full, expected)
        kept = np.concatenate(
            [np.ones((3, 2, 1), bool), kept_mask(np.asarray(indices), 12)], axis=-1
        )
        np.testing.assert_array_equal(np.asarray(full)[kept], np.asarray(tokens)[kept])
        np.testing.assert_array_equal(
            np.asarray(full)[~kept], np.broadcast_to(mask_token, (int((~kept).sum()), 4))
        )


def test_restore_dtype_and_gradients(key):
    tokens = tokens_of((4, 1 + 8, 3), jnp.bfloat16)
    out, indices = jaxdrop.patch_dropout(
        key, tokens, 0.25, num_prefix_tokens=1, return_indices=True
    )
    full = jaxdrop.patch_restore(out, indices, 9, num_prefix_tokens=1, fill=jnp.float32(0.5))
    assert full.dtype == jnp.bfloat16

    def loss(kept, fill):
        return jnp.sum(jaxdrop.patch_restore(kept, indices, 9, num_prefix_tokens=1, fill=fill))

    kept = out.astype(jnp.float32)
    g_kept, g_fill = jax.jit(jax.grad(loss, argnums=(0, 1)))(kept, jnp.zeros(3))
    # Every kept token appears once in the output; the mask token fills 4 * (8 - 2) positions.
    np.testing.assert_array_equal(g_kept, np.ones(kept.shape, np.float32))
    np.testing.assert_array_equal(g_fill, np.full(3, 4 * 6, np.float32))


def test_batch_sharding_needs_no_communication():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets 16 CPU devices)")
    mesh = Mesh(np.asarray(jax.devices()[:8]), ("batch",))
    tokens = tokens_of((16, 1 + 16, 8))
    sharded = jax.device_put(tokens, NamedSharding(mesh, P("batch")))

    def f(k, t):
        out, idx = jaxdrop.patch_dropout(k, t, 0.5, num_prefix_tokens=1, return_indices=True)
        return out, idx, jaxdrop.patch_restore(out, idx, 17, num_prefix_tokens=1)

    key = jax.random.key(7)
    step = jax.jit(f)
    assert collectives(step.lower(key, sharded).compile().as_text()) == []
    for a, b in zip(step(key, sharded), step(key, tokens), strict=True):
        np.testing.assert_array_equal(a, b)


def test_errors(key):
    tokens = tokens_of((2, 9, 3))
    with pytest.raises(TypeError, match="`keep_prob`.*traced"):
        jax.jit(lambda p: jaxdrop.patch_dropout(key, tokens, p))(0.5)
    with pytest.raises(ValueError, match="keep_prob"):
        jaxdrop.patch_dropout(key, tokens, 1.5)
    with pytest.raises(TypeError, match="keep_prob"):
        jaxdrop.patch_dropout(key, tokens, "0.5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tokens"):
        jaxdrop.patch_dropout(key, jnp.ones(9), 0.5)
    with pytest.raises(TypeError, match="tokens"):
        jaxdrop.patch_dropout(key, jnp.ones((2, 9, 3), jnp.int32), 0.5)
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        jaxdrop.patch_dropout(key, tokens, 0.5, num_prefix_tokens=10)
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        jaxdrop.patch_dropout(key, tokens, 0.5, num_prefix_tokens=-1)
    with pytest.raises(TypeError, match="ordered"):
        jaxdrop.patch_dropout(key, tokens, 0.5, ordered=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rng"):
        jaxdrop.patch_dropout(jax.random.split(key, 2), tokens, 0.5)
    out, idx = jaxdrop.patch_dropout(key, tokens, 0.5, num_prefix_tokens=1, return_indices=True)
    with pytest.raises(ValueError, match="indices"):
        jaxdrop.patch_restore(out, idx[:, :2], 9, num_prefix_tokens=1)
    with pytest.raises(TypeError, match="indices"):
        jaxdrop.patch_restore(out, idx.astype(jnp.float32), 9, num_prefix_tokens=1)
    with pytest.raises(ValueError, match="length"):
        jaxdrop.patch_restore(out, idx, 4, num_prefix_tokens=1)
    with pytest.raises(TypeError, match="length"):
        jaxdrop.patch_restore(out, idx, 9.0, num_prefix_tokens=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fill"):
        jaxdrop.patch_restore(out, idx, 9, num_prefix_tokens=1, fill=jnp.zeros(2))
