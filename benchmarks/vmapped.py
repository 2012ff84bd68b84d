"""`jax.vmap` over per-example keys against the batched call on the same array.

A per-example model (Equinox style, or `nn.vmap` / `nnx.vmap` with split rngs) calls the layer
on one example at a time under `jax.vmap`, with one key per example:

    jax.jit(jax.vmap(lambda k, x: dropblock(k, x, 0.9, 7, normalize=...)))(keys, x)

Each row is timed on the same array as the batched call (one key for the whole batch) and as
`flax.linen.Dropout` vmapped the same way, forward only.
"""

from __future__ import annotations

import functools

import harness

SHAPE = (16, 28, 28, 512)
BLOCK = 7
FLOOR = "jitted `x * 2` (floor)"
FLAX_BATCHED = "`flax.linen.Dropout`, batched (one key)"
FLAX_VMAPPED = "`flax.linen.Dropout`, vmapped (one key per example)"


def batched_name(normalize: str) -> str:
    return f'jaxdrop `normalize="{normalize}"`, batched (one key)'


def vmapped_name(normalize: str, extra: str = "") -> str:
    return f'jaxdrop `normalize="{normalize}"`{extra}, vmapped (one key per example)'


def cases(keep_prob: float, shape=SHAPE, block=BLOCK) -> list[harness.Case]:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    import jaxdrop

    key = jax.random.key(0)
    keys = jax.random.split(jax.random.key(3), shape[0])
    x = jax.random.uniform(jax.random.key(1), shape, jnp.float32, 1.0, 2.0)
    p = jnp.float32(keep_prob)
    dropout = nn.Dropout(rate=1.0 - keep_prob, deterministic=False)

    def flax_drop(k, x):
        return dropout.apply({}, x, rngs={"dropout": k})

    # name -> (fn(key or keys, x, p), vmapped?)
    impls = {
        FLOOR: (lambda k, x, p: x * 2, False),
        FLAX_BATCHED: (lambda k, x, p: flax_drop(k, x), False),
        FLAX_VMAPPED: (lambda k, x, p: jax.vmap(flax_drop)(k, x), True),
    }
    min_keep = harness.has_min_keep_prob()
    for normalize in ("expected", "actual"):
        fn = functools.partial(
            jaxdrop.dropblock, keep_prob=keep_prob, block_size=block, normalize=normalize
        )
        impls[batched_name(normalize)] = (lambda k, x, p, fn=fn: fn(k, x), False)
        impls[vmapped_name(normalize)] = (lambda k, x, p, fn=fn: jax.vmap(fn)(k, x), True)
        traced = functools.partial(jaxdrop.dropblock, block_size=block, normalize=normalize)

        def per_example(k, x, p, traced=traced):
            return jax.vmap(lambda k, x: traced(k, x, p))(k, x)

        impls[vmapped_name(normalize, ", traced keep_prob")] = (per_example, True)
        if min_keep:
            bounded = functools.partial(traced, min_keep_prob=keep_prob)

            def per_example_bounded(k, x, p, bounded=bounded):
                return jax.vmap(lambda k, x: bounded(k, x, p))(k, x)

            impls[vmapped_name(normalize, f", traced keep_prob, `min_keep_prob={keep_prob}`")] = (
                per_example_bounded,
                True,
            )

    out = []
    for name, (fn, vmapped) in impls.items():
        k = keys if vmapped else key

        def compile_fwd(fn=fn, k=k):
            compiled = jax.jit(fn).lower(k, x, p).compile()
            return lambda: compiled(k, x, p)

        out.append(harness.Case(("vmap", shape), name, "fwd", compile_fwd, jax.block_until_ready))
    return out


def run(keep_prob: float, repeats: int, warmup: int) -> list[harness.Case]:
    print(f"vmap over per-example keys, {harness.shape_name(SHAPE)} block {BLOCK}", flush=True)
    timed = cases(keep_prob)
    harness.run_group(timed, repeats, warmup)
    return timed
