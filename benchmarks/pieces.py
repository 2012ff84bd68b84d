"""The pieces of DropBlock's mask at one shape: seed sampling, and the block expansion.

These time private functions of `jaxdrop._src`, which change with the implementation, so each
table adapts to what the checked-out code exposes and says so:

- seed sampling: the sparse sampler against the dense `jax.random.bernoulli` draw, at the
  headline gamma and at a large one, through `sampling.bernoulli_seeds` (a `gamma_cap` of None
  draws densely and a float lets CPU use the sparse sampler);
- block expansion: `lax.reduce_window` max against shifted-slice ORs (`b - 1` per axis, the
  `dilate` of `jaxdrop`) and log2(b) doublings, alone on a seed grid and inside the whole
  `dropblock` call (by swapping `dilate` for the time of one compilation).
"""

from __future__ import annotations

import inspect
import math

import harness

SHAPE = (16, 28, 28, 512)
BLOCK = 7


def reduce_window_or(s, axis: int, b: int):
    """Window max: a seed at s drops [s, s + b): pad b - 1 zeros on both sides, VALID window b."""
    import jax.numpy as jnp
    from jax import lax

    window = tuple(b if d == axis else 1 for d in range(s.ndim))
    padding = tuple((b - 1, b - 1) if d == axis else (0, 0) for d in range(s.ndim))
    return lax.reduce_window(s, jnp.zeros((), s.dtype), lax.max, window, (1,) * s.ndim, padding)


def doubling_or(s, axis: int, b: int):
    """The same windows from ORs of windows of doubling width: log2(b) steps instead of b - 1."""
    import jax.numpy as jnp
    from jax import lax

    pad = [(0, 0)] * s.ndim
    pad[axis] = (b - 1, b - 1)
    w = jnp.pad(s, pad)
    width = 1
    while 2 * width <= b:
        length = w.shape[axis] - width
        w = lax.slice_in_dim(w, 0, length, axis=axis) | lax.slice_in_dim(
            w, width, width + length, axis=axis
        )
        width *= 2
    if width < b:
        length = w.shape[axis] - (b - width)
        w = lax.slice_in_dim(w, 0, length, axis=axis) | lax.slice_in_dim(
            w, b - width, b - width + length, axis=axis
        )
    return w


def seed_grid_shape(shape=SHAPE, block=BLOCK) -> tuple[int, ...]:
    return (shape[0], shape[1] - block + 1, shape[2] - block + 1, shape[3])


def headline_gamma(keep_prob: float, shape=SHAPE, block=BLOCK) -> float:
    """The paper's gamma (equation 1) for a square block on the spatial axes 1 and 2."""
    h, w = shape[1], shape[2]
    return (1 - keep_prob) / block**2 * h / (h - block + 1) * w / (w - block + 1)


def sampler_variants(gamma: float) -> tuple[str, dict[str, dict]]:
    """(what the code exposes, label -> keyword options of `sampling.bernoulli_seeds`)."""
    from jaxdrop._src import sampling

    params = inspect.signature(sampling.bernoulli_seeds).parameters
    if "gamma_cap" in params:
        rows = {"leading_axes": 1} if "leading_axes" in params else {}
        path = "sparse where the CPU cost model prefers it"
        plan = getattr(sampling, "sparse_plan", None)
        if plan is not None:
            try:
                sparse = plan(seed_grid_shape(), rows.get("leading_axes", 0), gamma) is not None
                path = "sparse" if sparse else "dense (the CPU cost model's choice)"
            except Exception:  # noqa: BLE001 - a label only.
                pass
        return "a static budget from `gamma_cap`, one row per example", {
            f"{path} (`gamma_cap={gamma:.4g}`)": {"gamma_cap": gamma, **rows},
            "dense `jax.random.bernoulli` (`gamma_cap=None`)": {"gamma_cap": None, **rows},
        }
    return "", {}


def sampling_cases(keep_prob: float) -> tuple[str, list[harness.Case], int, float]:
    import jax
    import jax.numpy as jnp

    from jaxdrop._src import sampling

    seed_shape = seed_grid_shape()
    n = math.prod(seed_shape)
    gamma = headline_gamma(keep_prob)
    key = jax.random.key(0)
    cases = []
    exposes = ""
    # The headline gamma, and a large one where a sparse sampler has most to do.
    for g in (gamma, 0.2):
        exposes, variants = sampler_variants(g)
        for label, options in variants.items():

            def compile_(options=options, g=g):
                fn = jax.jit(
                    lambda k, g: sampling.bernoulli_seeds(
                        k, g, seed_shape, dtype=jnp.uint8, **options
                    )
                )
                compiled = fn.lower(key, jnp.float32(g)).compile()
                return lambda: compiled(key, jnp.float32(g))

            name = f"gamma {g:.4f}: {label}"
            cases.append(harness.Case(("pieces",), name, "fwd", compile_, jax.block_until_ready))
    return exposes, cases, n, gamma


def expansion_cases(keep_prob: float) -> list[harness.Case]:
    import jax
    import jax.numpy as jnp
    from jax import lax

    from jaxdrop._src import dropblock as lib

    gamma = headline_gamma(keep_prob)
    seeds = jax.random.bernoulli(jax.random.key(0), gamma, seed_grid_shape()).astype(jnp.uint8)
    strategies = {"`lax.reduce_window` max per axis": reduce_window_or}
    if hasattr(lib, "dilate"):
        strategies["shifted-slice ORs, b - 1 per axis (`jaxdrop` `dilate`)"] = lib.dilate
    strategies["shifted-slice ORs, log2(b) doublings per axis"] = doubling_or
    cases = []
    reference = None
    for label, fn in strategies.items():
        for barrier in (False, True):
            for dtype in (jnp.uint8, jnp.bool_):

                def expand(s, fn=fn, barrier=barrier, dtype=dtype):
                    s = s.astype(dtype)
                    for i, axis in enumerate((1, 2)):
                        if i and barrier:
                            s = lax.optimization_barrier(s)
                        s = fn(s, axis, BLOCK)
                    return s != 0

                out = jax.jit(expand)(seeds)
                if reference is None:
                    reference = out
                if not bool(jnp.all(out == reference)):
                    raise AssertionError(f"{label} expands the seeds differently")

                def compile_(expand=expand):
                    compiled = jax.jit(expand).lower(seeds).compile()
                    return lambda: compiled(seeds)

                name = f"{label}, {jnp.dtype(dtype).name}"
                name += ", barrier between axes" if barrier else ""
                cases.append(
                    harness.Case(("pieces",), name, "fwd", compile_, jax.block_until_ready)
                )
    return cases


def in_dropblock_cases(keep_prob: float) -> list[harness.Case]:
    """The whole `dropblock` call with its `dilate` as it is, and swapped for `reduce_window`."""
    import jax
    import jax.numpy as jnp

    import jaxdrop
    from jaxdrop._src import dropblock as lib

    if not hasattr(lib, "dilate"):
        return []
    x = jax.random.uniform(jax.random.key(1), SHAPE, jnp.float32, 1.0, 2.0)
    key = jax.random.key(0)

    def fn(k, x):
        return jaxdrop.dropblock(k, x, keep_prob, BLOCK)

    def compile_with(expand):
        def compile_():
            original, used = lib.dilate, []

            def counted(*args):
                used.append(1)
                return expand(*args)

            lib.dilate = counted
            try:
                jax.clear_caches()  # The jitted implementation must be traced again.
                compiled = jax.jit(fn).lower(key, x).compile()
            finally:
                lib.dilate = original
                jax.clear_caches()
            if not used:
                raise RuntimeError("this code does not expand blocks with `dilate`")
            return lambda: compiled(key, x)

        return compile_

    return [
        harness.Case(
            ("pieces",),
            "`dropblock`, shifted-slice ORs (as shipped)",
            "fwd",
            compile_with(lib.dilate),
            jax.block_until_ready,
        ),
        harness.Case(
            ("pieces",),
            "`dropblock`, `lax.reduce_window` max instead",
            "fwd",
            compile_with(reduce_window_or),
            jax.block_until_ready,
        ),
    ]


def run(keep_prob: float, repeats: int, warmup: int) -> dict:
    print(f"pieces of the mask at {harness.shape_name(SHAPE)}, block {BLOCK}", flush=True)
    exposes, sampling, n, gamma = sampling_cases(keep_prob)
    harness.run_group(sampling, repeats, warmup)
    expansion = expansion_cases(keep_prob)
    harness.run_group(expansion, repeats, warmup)
    whole = in_dropblock_cases(keep_prob)
    harness.run_group(whole, repeats, warmup)
    return {
        "exposes": exposes,
        "sampling": sampling,
        "expansion": expansion,
        "in_dropblock": whole,
        "n": n,
        "gamma": gamma,
    }
