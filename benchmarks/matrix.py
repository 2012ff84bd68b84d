"""The JAX case matrix: `jaxdrop.dropblock` against the `x * 2` floor and `flax.linen.Dropout`.

For each feature-map shape, dtype and block size: the jitted `x * 2` floor (one read and one
write of `x`), `flax.linen.Dropout`, and jaxdrop per-channel, with one mask shared by the
channels, with `normalize="expected"` and with a traced `keep_prob` (plus `min_keep_prob` where
the code has it); forward, and forward+backward (`jax.vjp` and the pullback in one `jax.jit`).

Run as a script with a JSON config, it times the same matrix and prints the medians as JSON: the
entry point uses that to time the matrix again under another allocator.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Sequence

import harness

FLOOR = "jitted `x * 2` (floor)"


def flax_name(keep_prob: float) -> str:
    return f"`flax.linen.Dropout(rate={1 - keep_prob:.2g})`"


def jaxdrop_variants(keep_prob: float, min_keep_prob: bool) -> dict[str, dict]:
    """Label -> (options, traced keep_prob?) of the jaxdrop rows."""
    variants = {
        "per-channel": ({}, False),
        "shared mask `broadcast_dims=(-1,)`": ({"broadcast_dims": (-1,)}, False),
        '`normalize="expected"`': ({"normalize": "expected"}, False),
        "per-channel, traced keep_prob": ({}, True),
    }
    if min_keep_prob:
        variants[f"per-channel, traced keep_prob, `min_keep_prob={keep_prob}`"] = (
            {"min_keep_prob": keep_prob},
            True,
        )
    return variants


def jaxdrop_name(label: str, block: int) -> str:
    return f"jaxdrop {label}, block {block}"


def expected_drop(shape: Sequence[int], block: int, keep_prob: float) -> float | None:
    """The paper gamma's expected drop rate (below nominal), if the private helpers exist."""
    try:
        import jax.numpy as jnp

        from jaxdrop._src import dropblock as lib

        b = min(block, shape[1], shape[2])
        sizes, blocks = (shape[1], shape[2]), (b, b)
        gamma = lib.seed_probability(jnp.float32(keep_prob), sizes, blocks, False)
        return 1.0 - float(lib.expected_keep(gamma, *lib.coverage_histogram(sizes, blocks)))
    except Exception:  # noqa: BLE001 - an informative column only.
        return None


def cases(
    shape: tuple[int, ...],
    dtype_name: str,
    blocks: Sequence[int],
    keep_prob: float,
    *,
    rate_keys: int = 4,
    backward: bool = True,
) -> list[harness.Case]:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    import jaxdrop

    dtype = jnp.dtype(dtype_name)
    key = jax.random.key(0)
    # Inputs in [1, 2): an exact zero in the output is a dropped unit.
    x = jax.random.uniform(jax.random.key(1), shape, jnp.float32, 1.0, 2.0).astype(dtype)
    g = jax.random.normal(jax.random.key(2), shape, jnp.float32).astype(dtype)
    traced_p = jnp.float32(keep_prob)
    dropout = nn.Dropout(rate=1.0 - keep_prob, deterministic=False)

    # name -> (fn(key, x, p), traced keep_prob?, block, nominal drop, expected drop)
    impls = {
        FLOOR: (lambda k, x, p: x * 2, False, None, None, None),
        flax_name(keep_prob): (
            lambda k, x, p: dropout.apply({}, x, rngs={"dropout": k}),
            False,
            None,
            1 - keep_prob,
            None,
        ),
    }
    variants = jaxdrop_variants(keep_prob, harness.has_min_keep_prob())
    for block in blocks:
        expected = expected_drop(shape, block, keep_prob)
        for label, (options, traced) in variants.items():
            if traced:
                fn = functools.partial(jaxdrop.dropblock, block_size=block, **options)

                def call(k, x, p, fn=fn):
                    return fn(k, x, p)
            else:
                fn = functools.partial(
                    jaxdrop.dropblock, keep_prob=keep_prob, block_size=block, **options
                )

                def call(k, x, p, fn=fn):
                    return fn(k, x)

            impls[jaxdrop_name(label, block)] = (call, traced, block, 1 - keep_prob, expected)

    out = []
    for name, (fn, _, block, nominal, expected) in impls.items():
        group = (tuple(shape), dtype_name, block)

        def compile_fwd(fn=fn):
            compiled = jax.jit(fn).lower(key, x, traced_p).compile()
            return lambda: compiled(key, x, traced_p)

        def drop_rate(fn=fn):
            f = jax.jit(fn)
            keys = jax.random.split(jax.random.key(7), rate_keys)
            return statistics.fmean(float(jnp.mean(f(k, x, traced_p) == 0)) for k in keys)

        out.append(
            harness.Case(
                group,
                name,
                "fwd",
                compile_fwd,
                jax.block_until_ready,
                drop_rate if nominal is not None and rate_keys else None,
                nominal,
                expected,
            )
        )
        if backward:

            def fwd_bwd(k, x, p, g, fn=fn):
                y, vjp = jax.vjp(lambda x: fn(k, x, p), x)
                return y, vjp(g)[0]

            def compile_bwd(fwd_bwd=fwd_bwd):
                compiled = jax.jit(fwd_bwd).lower(key, x, traced_p, g).compile()
                return lambda: compiled(key, x, traced_p, g)

            out.append(harness.Case(group, name, "fwd+bwd", compile_bwd, jax.block_until_ready))
    return out


def run(
    shapes: Sequence[tuple[int, ...]],
    dtypes: Sequence[str],
    blocks_for: dict[tuple[int, ...], Sequence[int]],
    keep_prob: float,
    repeats: int,
    warmup: int,
    *,
    rate_keys: int = 4,
    backward: bool = True,
) -> list[harness.Case]:
    """Times the matrix, one (shape, dtype) group at a time."""
    out = []
    for shape in shapes:
        for dtype in dtypes:
            print(f"{harness.shape_name(shape)} {dtype}", flush=True)
            group = cases(
                shape, dtype, blocks_for[shape], keep_prob, rate_keys=rate_keys, backward=backward
            )
            harness.run_group(group, repeats, warmup)
            out += group
    return out


def case_key(case: harness.Case) -> str:
    shape, dtype, _ = case.group
    return f"{harness.shape_name(shape)}|{dtype}|{case.name}|{case.mode}"


def main() -> None:
    import sys

    config = harness.child_config()
    shapes = [tuple(s) for s in config["shapes"]]
    blocks_for = {tuple(s): b for s, b in config["blocks_for"]}
    # Progress on stderr: stdout carries the result.
    sys.stdout = sys.stderr
    timed = run(
        shapes,
        config["dtypes"],
        blocks_for,
        config["keep_prob"],
        config["repeats"],
        config["warmup"],
        rate_keys=0,
        backward=config["backward"],
    )
    sys.stdout = sys.__stdout__
    harness.child_result({case_key(c): c.median_ms for c in timed if c.times})


if __name__ == "__main__":
    main()
