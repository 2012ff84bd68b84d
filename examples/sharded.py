"""DropBlock on several devices: a batch-sharded jit, and shard_map with per-device keys.

Two ways to run jaxdrop data-parallel, both without moving activations between devices:

1. **``jax.jit`` over sharded arrays** (the SPMD partitioner). Put ``x`` on a ``Mesh`` with a
   ``NamedSharding`` over the batch axis and call jaxdrop inside ``jax.jit`` with one key,
   replicated. The result is *the same array, bit for bit, as on one device*, whatever the
   mesh: random bits do not depend on the sharding (``jax_threefry_partitionable``, the default
   since JAX 0.5), and each device draws only its own part of the mask. ``normalize="actual"``
   adds one scalar all-reduce (the global count of kept units); ``"expected"`` and ``"none"``
   add no communication at all.
2. **``jax.shard_map``** (you write the per-device program). Each device sees its local shard
   and must draw a different mask: fold the device's position on the batch axis into the key,
   ``jax.random.fold_in(key, lax.axis_index("batch"))``. Here the masks (and therefore the
   result) depend on how the batch is split, and ``normalize="actual"`` counts the kept units
   of the local shard only: use ``"expected"`` for a result that does not depend on the
   number of devices.

Run it on a CPU with 8 simulated devices::

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/sharded.py

``tests/test_sharding.py`` runs the functions below and checks what this text says.
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxdrop

KEEP_PROB = 0.9
BLOCK_SIZE = 3


def batch_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all devices, whose only axis is the batch axis."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("batch",))


def sharded_dropblock(mesh: Mesh, normalize: str = "actual"):
    """``jit`` of DropBlock over a batch-sharded ``x``: the same values as on one device."""
    sharding = NamedSharding(mesh, P("batch"))

    @functools.partial(jax.jit, in_shardings=(None, sharding), out_shardings=sharding)
    def step(key, x):
        return jaxdrop.dropblock(key, x, KEEP_PROB, BLOCK_SIZE, normalize=normalize)

    return step


def per_device_dropblock(mesh: Mesh, normalize: str = "expected"):
    """DropBlock inside ``shard_map``: each device draws its own mask from its own key."""

    @functools.partial(jax.jit)
    @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(), P("batch")), out_specs=P("batch"))
    def step(key, x_local):
        # Without this fold_in every device would draw the same mask for its shard.
        device_key = jax.random.fold_in(key, lax.axis_index("batch"))
        return jaxdrop.dropblock(device_key, x_local, KEEP_PROB, BLOCK_SIZE, normalize=normalize)

    return step


def _collectives():
    """``tests/oracle.py``'s ``collectives``: one HLO pattern for this example and the tests."""
    path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "oracle.py"
    spec = importlib.util.spec_from_file_location("jaxdrop_tests_oracle", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.collectives


collectives = _collectives()


def main() -> None:
    mesh = batch_mesh()
    n = mesh.devices.size
    print(f"jax {jax.__version__}, {n} devices: {jax.devices()}")
    key = jax.random.key(0)
    x = jax.random.normal(jax.random.key(1), (4 * n, 28, 28, 16))
    x_sharded = jax.device_put(x, NamedSharding(mesh, P("batch")))

    for normalize in ("actual", "expected"):
        step = sharded_dropblock(mesh, normalize)
        y = step(key, x_sharded)
        same = bool(
            jnp.array_equal(
                y, jaxdrop.dropblock(key, x, KEEP_PROB, BLOCK_SIZE, normalize=normalize)
            )
        )
        hlo = step.lower(key, x_sharded).compile().as_text()
        print(
            f"jit, normalize={normalize!r}: same as one device: {same}; "
            f"output sharding {y.sharding.spec}; collectives {collectives(hlo)}"
        )

    step = per_device_dropblock(mesh)
    y = step(key, x_sharded)
    per_shard = x.shape[0] // n
    same = all(
        bool(
            jnp.array_equal(
                y[i * per_shard : (i + 1) * per_shard],
                jaxdrop.dropblock(
                    jax.random.fold_in(key, i),
                    x[i * per_shard : (i + 1) * per_shard],
                    KEEP_PROB,
                    BLOCK_SIZE,
                    normalize="expected",
                ),
            )
        )
        for i in range(n)
    )
    hlo = step.lower(key, x_sharded).compile().as_text()
    kept = float(jnp.mean(y != 0))
    print(
        f"shard_map with fold_in keys: shard i == dropblock(fold_in(key, i), shard i): {same}; "
        f"kept fraction {kept:.3f}; collectives {collectives(hlo)}"
    )


if __name__ == "__main__":
    main()
