"""A global-`jit` DropBlock on 1, 2, 4, 8 simulated CPU devices, 2 examples per device.

The batch is sharded over a one-axis mesh and one replicated key is passed, as the README
recommends; the work a device does should not grow with the number of devices. The device count
of the host platform is fixed when a process starts
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`), so each count runs in its own child
process: run as a script with a JSON config, this file times one count and prints JSON.

Simulated devices share the machine's cores, so the time per call grows with the count even
when the work per device does not: compare the time per example with the `x * 2` floor's.
"""

from __future__ import annotations

import os

import harness

EXAMPLE = (28, 28, 512)
PER_DEVICE = 2
BLOCK = 7
FLOOR = "jitted `x * 2` (floor)"
PYTHON = "jaxdrop, Python keep_prob"
TRACED = "jaxdrop, traced keep_prob"
TRACED_MIN = "jaxdrop, traced keep_prob, `min_keep_prob`"


def names(min_keep_prob: bool) -> list[str]:
    return [FLOOR, PYTHON, TRACED] + ([TRACED_MIN] if min_keep_prob else [])


def device_env(count: int) -> dict[str, str]:
    flags = os.environ.get("XLA_FLAGS", "")
    flags = " ".join(f for f in flags.split() if "force_host_platform_device_count" not in f)
    return {
        "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={count}".strip(),
        # Simulated devices are host (CPU) devices, whatever accelerator the machine has.
        "JAX_PLATFORMS": "cpu",
    }


def child() -> None:
    import functools
    import sys

    config = harness.child_config()
    sys.stdout = sys.stderr  # Progress on stderr: stdout carries the result.
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import jaxdrop

    count, keep_prob = config["count"], config["keep_prob"]
    if jax.device_count() != count:
        raise RuntimeError(f"expected {count} devices, got {jax.device_count()}")
    mesh = jax.make_mesh((count,), ("batch",))
    shape = (PER_DEVICE * count, *EXAMPLE)
    x = jax.random.uniform(jax.random.key(1), shape, jnp.float32, 1.0, 2.0)
    x = jax.device_put(x, NamedSharding(mesh, P("batch")))
    key = jax.random.key(0)
    p = jnp.float32(keep_prob)
    drop = functools.partial(jaxdrop.dropblock, block_size=BLOCK)
    impls = {
        FLOOR: lambda k, x, p: x * 2,
        PYTHON: lambda k, x, p: drop(k, x, keep_prob),
        TRACED: lambda k, x, p: drop(k, x, p),
    }
    if harness.has_min_keep_prob():
        impls[TRACED_MIN] = lambda k, x, p: drop(k, x, p, min_keep_prob=keep_prob)
    cases = []
    for name, fn in impls.items():

        def compile_fwd(fn=fn):
            compiled = jax.jit(fn).lower(key, x, p).compile()
            return lambda: compiled(key, x, p)

        cases.append(
            harness.Case(("devices", count), name, "fwd", compile_fwd, jax.block_until_ready)
        )
    print(f"{count} device(s), global batch {shape}", flush=True)
    harness.run_group(cases, config["repeats"], config["warmup"])
    sys.stdout = sys.__stdout__
    harness.child_result(
        {
            c.name: {"median_ms": c.median_ms, "compile_s": c.compile_s, "error": c.error}
            for c in cases
        }
    )


def run(counts, keep_prob: float, repeats: int, warmup: int) -> dict[int, dict]:
    """Times each device count in its own child process."""
    results = {}
    for count in counts:
        config = {"count": count, "keep_prob": keep_prob, "repeats": repeats, "warmup": warmup}
        results[count] = harness.run_child("devices.py", config, device_env(count))
    return results


if __name__ == "__main__":
    child()
