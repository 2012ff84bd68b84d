"""Sharded data-parallel use: every jaxdrop function on 8 devices, under jit and shard_map.

``tests/conftest.py`` gives the CPU backend 16 simulated devices; the meshes use the first 8.

For every function, on a batch-sharded ``x`` inside ``jax.jit`` (a 1-D ``("batch",)`` mesh, and
a 2-D ``("batch", "model")`` mesh with channels over ``"model"``):

- the values are those of the unsharded call with the same key, bit for bit;
- the output keeps the input's sharding;
- the compiled HLO has no collective on a non-scalar operand (no all-gather, all-to-all,
  collective-permute or reduce-scatter of data); ``normalize="actual"`` has one kind of
  communication only, a scalar all-reduce of the count, and the other options none at all.

And the shard_map example (``examples/sharded.py``) with per-device keys.
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from oracle import collectives

import jaxdrop

DEVICES = 8
ROOT = pathlib.Path(__file__).resolve().parent.parent
multi_device = pytest.mark.skipif(
    jax.device_count() < DEVICES, reason="needs 8 devices (tests/conftest.py sets 16 CPU devices)"
)


PER_DEVICE_DEVICES = 16
PER_DEVICE_EXAMPLES = 2


def random_array_shapes(devices: int) -> dict[str, list[str]]:
    """The shapes of the ``u32`` (random bits) arrays in the per-device compiled program.

    DropBlock at ``(2 * devices, 28, 28, 512)`` float32, block 7, batch sharded over
    ``devices`` devices (2 examples each), with a Python ``keep_prob``, a traced one, and a
    traced one with ``min_keep_prob``. Only compiled, never run.
    """
    mesh = Mesh(np.asarray(jax.devices()[:devices]), ("batch",))
    x = jax.ShapeDtypeStruct(
        (PER_DEVICE_EXAMPLES * devices, 28, 28, 512),
        jnp.float32,
        sharding=NamedSharding(mesh, P("batch")),
    )
    cases = {
        "python": lambda k, x, p: jaxdrop.dropblock(k, x, 0.9, 7),
        "traced": lambda k, x, p: jaxdrop.dropblock(k, x, p, 7),
        "traced-min": lambda k, x, p: jaxdrop.dropblock(k, x, p, 7, min_keep_prob=0.8),
    }
    shapes = {}
    for name, fn in cases.items():
        compiled = jax.jit(fn).lower(jax.random.key(0), x, jnp.float32(0.9)).compile().as_text()
        shapes[name] = sorted(set(re.findall(r"u32\[[\d,]+\]", compiled)))
    return shapes


@pytest.mark.slow
def test_per_device_draws_do_not_depend_on_the_device_count():
    # The sampler draws per row (example), and the partitioner splits the rows with the batch:
    # a device draws the same random arrays whether it is one of 1 or of 16 devices. (The 0.1
    # sampler drew the whole global gap list on every device.)
    if jax.device_count() < PER_DEVICE_DEVICES:
        pytest.skip(f"needs {PER_DEVICE_DEVICES} devices (tests/conftest.py sets 16 CPU devices)")
    many = random_array_shapes(PER_DEVICE_DEVICES)
    one = random_array_shapes(1)
    assert many == one
    local_seed_grid = f"u32[{PER_DEVICE_EXAMPLES},22,22,512]"
    assert local_seed_grid in one["traced"]  # The dense draw, of the local seed grid only.
    for name in ("python", "traced-min"):
        # The sparse draw: a budget of gaps per local example, nothing of the seed grid's size.
        assert local_seed_grid not in one[name]
        # (The budget is the leading axis, so that a draw does not change when it grows.)
        assert any(re.fullmatch(rf"u32\[\d+,{PER_DEVICE_EXAMPLES},1\]", t) for t in one[name])


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def is_scalar(hlo_type: str) -> bool:
    """True for a scalar type such as ``s32[]``, or a tuple of them."""
    return re.search(r"\[\d", hlo_type) is None


def meshes() -> dict[str, Mesh]:
    devices = np.asarray(jax.devices()[:DEVICES])
    return {
        "batch": Mesh(devices, ("batch",)),
        "batch+model": Mesh(devices.reshape(4, 2), ("batch", "model")),
    }


def spec_for(mesh_name: str, layout: str) -> P:
    """Batch over ``"batch"``; on the 2-D mesh, channels over ``"model"``."""
    if mesh_name == "batch":
        return P("batch")
    return {
        "nhwc": P("batch", None, None, "model"),
        "nchw": P("batch", "model"),
        "nlc": P("batch", None, "model"),
    }[layout]


SHAPES = {"nhwc": (16, 28, 28, 8), "nchw": (16, 8, 28, 28), "nlc": (16, 64, 8)}

# name: (layout, function of (key, x), communication allowed: "scalar" all-reduces or "none")
METHODS = {
    # A 26 x 26 x 8 seed grid per example: the sparse sampler's tiers are used.
    "dropblock": ("nhwc", lambda k, x: jaxdrop.dropblock(k, x, 0.9, 3), "scalar"),
    "dropblock-expected": (
        "nhwc",
        lambda k, x: jaxdrop.dropblock(k, x, 0.9, 3, normalize="expected"),
        "none",
    ),
    "dropblock-calibrated-shared-channels": (
        "nhwc",
        lambda k, x: jaxdrop.dropblock(k, x, 0.8, 5, broadcast_dims=(-1,), calibrate=True),
        "scalar",
    ),
    # A traced keep_prob with a static bound: the sparse sampler too.
    "dropblock-min-keep-prob": (
        "nhwc",
        lambda k, x: jaxdrop.dropblock(k, x, jnp.float32(0.9), 3, min_keep_prob=0.8),
        "scalar",
    ),
    "dropblock-nchw": (
        "nchw",
        lambda k, x: jaxdrop.dropblock(k, x, 0.9, (3, 4), spatial_dims=(-2, -1)),
        "scalar",
    ),
    "dropblock-1d": (
        "nlc",
        lambda k, x: jaxdrop.dropblock(k, x, 0.9, 5, spatial_dims=(-2,), normalize="expected"),
        "none",
    ),
    "dropout": ("nhwc", lambda k, x: jaxdrop.dropout(k, x, 0.8), "none"),
    "dropout-shared-map": (
        "nhwc",
        lambda k, x: jaxdrop.dropout(k, x, 0.8, broadcast_dims=(1, 2)),
        "none",
    ),
    "spatial_dropout": ("nhwc", lambda k, x: jaxdrop.spatial_dropout(k, x, 0.8), "none"),
    "spatial_dropout-nchw": (
        "nchw",
        lambda k, x: jaxdrop.spatial_dropout(k, x, 0.8, spatial_dims=(-2, -1)),
        "none",
    ),
    "drop_path": ("nlc", lambda k, x: jaxdrop.drop_path(k, x, 0.8), "none"),
    "drop_path-batch": ("nhwc", lambda k, x: jaxdrop.drop_path(k, x, 0.5, mode="batch"), "none"),
    "cutout": ("nhwc", lambda k, x: jaxdrop.cutout(k, x, 9, num_patches=2), "none"),
    "cutout-nchw": (
        "nchw",
        lambda k, x: jaxdrop.cutout(k, x, (5, 9), spatial_dims=(-2, -1), fill=0.5),
        "none",
    ),
    "patch_dropout": ("nlc", lambda k, x: jaxdrop.patch_dropout(k, x, 0.5), "none"),
    "random_erasing": (
        "nhwc",
        lambda k, x: jaxdrop.random_erasing(k, x, 0.5, max_count=2, fill="channel"),
        "none",
    ),
}


def check_communication(compiled: str, allowed: str) -> None:
    found = collectives(compiled)
    moving_data = [c for c in found if not is_scalar(c[1])]
    assert not moving_data, f"collectives on non-scalar operands: {moving_data}"
    if allowed == "none":
        assert not found, f"expected no communication at all, got {found}"
    else:
        assert all(op == "all-reduce" for op, _ in found), found


@functools.cache
def inputs(layout: str) -> np.ndarray:
    return np.asarray(jax.random.normal(jax.random.key(1), SHAPES[layout]))


# ---------------------------------------------------------------------------------------------
# jit over sharded arrays
# ---------------------------------------------------------------------------------------------


# Every method on the 2-D mesh; the 1-D mesh (8 batch shards) for a representative few (and
# for DropBlock's defaults in test_example_jit_matches_single_device).
CASES = [
    pytest.param(name, "batch+model", marks=pytest.mark.slow)
    # the slowest, only in the full run
    if name in ("dropblock", "dropblock-nchw", "dropout", "random_erasing")
    else (name, "batch+model")
    for name in METHODS
] + [(name, "batch") for name in ("dropblock-expected", "dropout", "cutout")]


@multi_device
@pytest.mark.parametrize(("name", "mesh_name"), CASES)
def test_sharded_jit_matches_single_device(name, mesh_name):
    layout, fn, allowed = METHODS[name]
    x = inputs(layout)
    sharding = NamedSharding(meshes()[mesh_name], spec_for(mesh_name, layout))
    x_sharded = jax.device_put(x, sharding)
    key = jax.random.key(0)
    compiled = jax.jit(fn).lower(key, x_sharded).compile()
    y = compiled(key, x_sharded)
    # The reference: the same call on one device, unsharded.
    expected = fn(key, jax.device_put(x, jax.devices()[0]))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))
    assert y.sharding.is_equivalent_to(x_sharded.sharding, x.ndim), (y.sharding, sharding)
    check_communication(compiled.as_text(), allowed)


@multi_device
def test_actual_normalization_is_one_scalar_all_reduce():
    # What the README says: normalize="actual" needs the global count of kept units, so a mask
    # split over devices costs exactly a scalar all-reduce; a mask shared over the sharded
    # batch axis (broadcast_dims=(0,)) is whole on every device and needs none.
    mesh = meshes()["batch"]
    x = jax.device_put(inputs("nhwc"), NamedSharding(mesh, P("batch")))
    key = jax.random.key(0)
    split = jax.jit(lambda k, x: jaxdrop.dropblock(k, x, 0.9, 3)).lower(key, x).compile()
    found = collectives(split.as_text())
    assert found and all(op == "all-reduce" and is_scalar(t) for op, t in found), found
    shared = jax.jit(lambda k, x: jaxdrop.dropblock(k, x, 0.9, 3, broadcast_dims=(0,)))
    assert collectives(shared.lower(key, x).compile().as_text()) == []


@multi_device
@pytest.mark.slow
@pytest.mark.parametrize("normalize", ["actual"])
def test_sharded_training_step(normalize):
    # A data-parallel gradient step with a traced keep_prob (a schedule's value): the backward
    # pass, which redraws the mask from the key, moves no data either; the gradient has x's
    # sharding and the single-device values.
    mesh = meshes()["batch+model"]
    sharding = NamedSharding(mesh, spec_for("batch+model", "nhwc"))
    x = inputs("nhwc")
    target = np.asarray(jax.random.normal(jax.random.key(2), x.shape))

    def loss(x, target, key, keep_prob):
        y = jaxdrop.dropblock(key, x, keep_prob, 3, normalize=normalize)
        return jnp.mean((y - target) ** 2)

    step = jax.jit(jax.value_and_grad(loss))
    args = (jax.device_put(x, sharding), jax.device_put(target, sharding), jax.random.key(0))
    compiled = step.lower(*args, jnp.float32(0.9)).compile()
    value, grad = compiled(*args, jnp.float32(0.9))
    expected_value, expected_grad = step(x, target, jax.random.key(0), jnp.float32(0.9))
    # The loss is a float32 mean whose partial sums run in another order across shards: a few
    # ulps of relative error per partial sum (2.4e-6 seen with jax 0.9.2). The gradient, which
    # holds the mask exactly, is compared at 1e-6.
    np.testing.assert_allclose(float(value), float(expected_value), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(expected_grad), rtol=1e-6, atol=0)
    assert grad.sharding.is_equivalent_to(sharding, x.ndim)
    # The loss itself is a mean over the sharded batch: a scalar all-reduce is expected there.
    check_communication(compiled.as_text(), "scalar")


@multi_device
@pytest.mark.parametrize("mesh_name", ["batch", "batch+model"])
def test_sharded_dropconnect(mesh_name):
    # Parameters are replicated under data parallelism, or split over "model" (tensor
    # parallelism): every leaf keeps its sharding and values, and nothing is communicated.
    mesh = meshes()[mesh_name]
    kernel_spec = P() if mesh_name == "batch" else P(None, "model")
    params = {
        "dense": {
            "kernel": jax.random.normal(jax.random.key(3), (64, 32)),
            "bias": jnp.zeros((32,)),
        }
    }
    shardings = {
        "dense": {
            "kernel": NamedSharding(mesh, kernel_spec),
            "bias": NamedSharding(mesh, P()),
        }
    }
    sharded = jax.device_put(params, shardings)
    key = jax.random.key(0)
    fn = jax.jit(lambda k, p: jaxdrop.dropconnect(k, p, 0.7))
    compiled = fn.lower(key, sharded).compile()
    out = compiled(key, sharded)
    expected = jaxdrop.dropconnect(key, params, 0.7)
    for got, want, s in zip(
        jax.tree.leaves(out), jax.tree.leaves(expected), jax.tree.leaves(shardings), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        assert got.sharding.is_equivalent_to(s, got.ndim)
    check_communication(compiled.as_text(), "none")


@multi_device
def test_random_bits_need_threefry_partitionable():
    # Why the README tells users to keep jax_threefry_partitionable on (the default since JAX
    # 0.5): with it, random bits do not depend on the sharding and each device draws only its
    # part. With it off the values are still the same (jit never changes values), but the
    # partitioner moves random bits between devices, x-sized data.
    assert jax.config.jax_threefry_partitionable
    mesh = meshes()["batch"]
    x = jax.device_put(inputs("nhwc"), NamedSharding(mesh, P("batch")))
    key = jax.random.key(0)
    with jax.threefry_partitionable(False):
        fn = jax.jit(lambda k, x: jaxdrop.dropout(k, x, 0.8))
        compiled = fn.lower(key, x).compile()
        y = compiled(key, x)
        expected = jaxdrop.dropout(key, inputs("nhwc"), 0.8)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))
    assert any(not is_scalar(t) for _, t in collectives(compiled.as_text()))


# ---------------------------------------------------------------------------------------------
# shard_map with per-device keys: examples/sharded.py
# ---------------------------------------------------------------------------------------------


@functools.cache
def example():
    spec = importlib.util.spec_from_file_location("sharded_example", ROOT / "examples/sharded.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@multi_device
@pytest.mark.parametrize("normalize", ["actual"])
def test_example_jit_matches_single_device(normalize):
    mesh = example().batch_mesh()
    x = inputs("nhwc")
    x_sharded = jax.device_put(x, NamedSharding(mesh, P("batch")))
    step = example().sharded_dropblock(mesh, normalize)
    key = jax.random.key(0)
    y = step(key, x_sharded)
    expected = jaxdrop.dropblock(
        key, x, example().KEEP_PROB, example().BLOCK_SIZE, normalize=normalize
    )
    np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))
    compiled = step.lower(key, x_sharded).compile()
    check_communication(compiled.as_text(), "scalar" if normalize == "actual" else "none")
    # Data parallelism divides the work: each device holds the temporaries of its own shard
    # only (the mask, the seed grid), not of the whole batch.
    single = jax.jit(
        lambda k, x: jaxdrop.dropblock(
            k, x, example().KEEP_PROB, example().BLOCK_SIZE, normalize=normalize
        )
    )
    single_temp = single.lower(key, x).compile().memory_analysis().temp_size_in_bytes
    sharded_temp = compiled.memory_analysis().temp_size_in_bytes
    assert sharded_temp <= 2 * single_temp / mesh.devices.size, (sharded_temp, single_temp)


def _check_per_device(shape):
    mesh = example().batch_mesh()
    n = mesh.devices.size
    x = np.ones(shape, np.float32)
    x_sharded = jax.device_put(x, NamedSharding(mesh, P("batch")))
    step = example().per_device_dropblock(mesh)
    key = jax.random.key(0)
    y = np.asarray(step(key, x_sharded))
    local = shape[0] // n
    for i in range(n):
        # Device i applies DropBlock to its shard with the key fold_in(key, i).
        expected = jaxdrop.dropblock(
            jax.random.fold_in(key, i),
            x[i * local : (i + 1) * local],
            example().KEEP_PROB,
            example().BLOCK_SIZE,
            normalize="expected",
        )
        np.testing.assert_array_equal(y[i * local : (i + 1) * local], np.asarray(expected))
    # Same input on every device, different masks: the keys differ per device.
    assert not np.array_equal(y[:local] == 0, y[local : 2 * local] == 0)
    assert collectives(step.lower(key, x_sharded).compile().as_text()) == []


@multi_device
def test_example_shard_map_per_device_keys_small_map():
    # 8 x 8 maps: the seed grid of each shard is small enough to be drawn densely.
    _check_per_device((16, 8, 8, 4))


@pytest.mark.slow
@multi_device
def test_example_shard_map_per_device_keys_sparse_sampler():
    # 28 x 28 maps: the sparse sampler's tiers are used inside shard_map.
    _check_per_device((16, 28, 28, 8))
    example().main()
