"""The optional peers: timm and miguelvr's DropBlock on PyTorch, keras-cv on Keras' JAX backend.

Each is skipped with a printed reason when it is not installed. PyTorch runs in its own pass,
after every JAX timing (its OpenMP threads spin for a while after each call and would steal the
cores from a JAX call timed right after); keras-cv runs last (importing it imports TensorFlow,
which must not sit in the process while the others are timed).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import statistics
from collections.abc import Sequence

import harness

TORCH_FLOOR = "torch `x * 2` (floor)"


def load_timm_drop():
    """timm's `layers/drop.py` alone: `timm.layers` imports torchvision, which it does not need."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("timm is not installed (pip install --no-deps timm)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "layers", "drop.py")
    module_spec = importlib.util.spec_from_file_location("_timm_drop", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def torch_cases(
    shape: tuple[int, ...],
    dtype_name: str,
    blocks: Sequence[int],
    keep_prob: float,
    rate_keys: int,
    backward: bool,
    skipped: set[str],
) -> list[harness.Case]:
    try:
        import torch
    except ImportError:
        skipped.add(
            "PyTorch peers: torch is not installed (pip install torch==2.13.0, a CPU build)"
        )
        return []
    n, h, w, c = shape
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand((n, c, h, w), generator=gen) + 1.0).to(tdtype)  # NCHW: PyTorch's layout.
    g = torch.randn((n, c, h, w), generator=gen).to(tdtype)
    drop_prob = 1.0 - keep_prob
    # name -> (fn(x), block, nominal drop rate)
    impls = {TORCH_FLOOR: (lambda x: x * 2, None, None)}
    try:
        timm_drop = load_timm_drop()
    except Exception as error:  # noqa: BLE001 - an optional peer.
        skipped.add(f"timm: {error}")
        timm_drop = None
    try:
        from dropblock import DropBlock2D
    except ImportError:
        skipped.add("miguelvr dropblock: not installed (pip install --no-deps dropblock)")
        DropBlock2D = None
    for block in blocks:
        if timm_drop is not None:
            impls[f"timm `drop_block_2d(couple_channels=False)` (per-channel), block {block}"] = (
                functools.partial(
                    timm_drop.drop_block_2d,
                    drop_prob=drop_prob,
                    block_size=block,
                    couple_channels=False,
                ),
                block,
                drop_prob,
            )
            impls[f"timm `drop_block_2d` default (shared mask), block {block}"] = (
                functools.partial(timm_drop.drop_block_2d, drop_prob=drop_prob, block_size=block),
                block,
                drop_prob,
            )
        if DropBlock2D is not None:
            module = DropBlock2D(drop_prob=drop_prob, block_size=block).train()
            impls[f"miguelvr `DropBlock2D` (one mask shared by channels), block {block}"] = (
                module,
                block,
                drop_prob,
            )

    def sync(out):
        return out  # PyTorch on CPU runs synchronously.

    cases = []
    for name, (fn, block, nominal) in impls.items():
        group = (tuple(shape), dtype_name, block)

        def compile_fwd(fn=fn):
            def call():
                with torch.no_grad():
                    return fn(x)

            return call

        def drop_rate(fn=fn):
            with torch.no_grad():
                return statistics.fmean(
                    float((fn(x) == 0).float().mean()) for _ in range(rate_keys)
                )

        cases.append(
            harness.Case(
                group,
                name,
                "fwd",
                compile_fwd,
                sync,
                drop_rate if nominal is not None and rate_keys else None,
                nominal,
                framework="torch",
            )
        )
        if backward:

            def compile_bwd(fn=fn):
                xr = x.detach().clone().requires_grad_(True)

                def call():
                    xr.grad = None
                    fn(xr).backward(g)
                    return xr.grad

                return call

            cases.append(harness.Case(group, name, "fwd+bwd", compile_bwd, sync, framework="torch"))
    return cases


def shim_keras_cv_pooling():
    """keras-cv 0.9 passes NHWC-style 4-element pooling windows, which Keras 3 rejects on JAX.

    Keras 3's `ops.max_pool` takes the spatial window only; this converts `[1, h, w, 1]` to
    `(h, w)` for keras-cv's DropBlock2D module, and changes nothing else.
    """
    import keras_cv.src.layers.regularization.dropblock_2d as module

    real = module.ops
    if getattr(real, "_jaxdrop_shim", False):
        return

    class Ops:
        _jaxdrop_shim = True

        def __getattr__(self, name):
            return getattr(real, name)

        def max_pool(self, x, pool_size, strides=None, padding="valid", data_format=None):
            if len(pool_size) == 4:
                pool_size = tuple(pool_size[1:3])
            if strides is not None and len(strides) == 4:
                strides = tuple(strides[1:3])
            return real.max_pool(x, pool_size, strides, padding, data_format)

    module.ops = Ops()


def keras_cv_cases(
    shape: tuple[int, ...],
    dtype_name: str,
    blocks: Sequence[int],
    keep_prob: float,
    rate_keys: int,
    skipped: set[str],
) -> list[harness.Case]:
    """keras-cv's DropBlock2D on Keras' JAX backend, eager (it does not trace under jax.jit)."""
    if importlib.util.find_spec("keras_cv") is None:
        skipped.add(
            "keras-cv: not installed (it needs TensorFlow to import: "
            "pip install keras-cv tensorflow-cpu)"
        )
        return []
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import jax
        import jax.numpy as jnp
        import keras
        import keras_cv

        if keras.backend.backend() != "jax":
            skipped.add(f"keras-cv: Keras runs on {keras.backend.backend()!r}, not JAX")
            return []
        shim_keras_cv_pooling()
    except Exception as error:  # noqa: BLE001 - an optional peer.
        skipped.add(f"keras-cv: {harness.short_error(error)}")
        return []
    dtype = jnp.dtype(dtype_name)
    x = jax.random.uniform(jax.random.key(1), shape, jnp.float32, 1.0, 2.0).astype(dtype)
    cases = []
    for block in blocks:
        layer = keras_cv.layers.DropBlock2D(rate=1.0 - keep_prob, block_size=block, seed=0)

        def compile_fwd(layer=layer):
            return lambda: layer(x, training=True)

        def drop_rate(layer=layer):
            return statistics.fmean(
                float(jnp.mean(layer(x, training=True) == 0)) for _ in range(rate_keys)
            )

        cases.append(
            harness.Case(
                (tuple(shape), dtype_name, block),
                f"keras-cv `DropBlock2D` (JAX backend, eager), block {block}",
                "fwd",
                compile_fwd,
                jax.block_until_ready,
                drop_rate if rate_keys else None,
                1.0 - keep_prob,
            )
        )
    return cases


def run(shapes, dtypes, blocks_for, keep_prob, repeats, warmup, rate_keys, backward):
    """Times the peers, PyTorch first and keras-cv last; returns (cases, skip reasons)."""
    cases, skipped = [], set()
    for shape in shapes:
        for dtype in dtypes:
            group = torch_cases(
                shape, dtype, blocks_for[shape], keep_prob, rate_keys, backward, skipped
            )
            if group:
                print(f"torch {harness.shape_name(shape)} {dtype}", flush=True)
                harness.run_group(group, repeats, warmup)
                cases += group
    for shape in shapes:
        for dtype in dtypes:
            group = keras_cv_cases(shape, dtype, blocks_for[shape], keep_prob, rate_keys, skipped)
            if group:
                print(f"keras-cv {harness.shape_name(shape)} {dtype}", flush=True)
                harness.run_group(group, repeats, warmup)
                cases += group
    for reason in sorted(skipped):
        print(f"skipped: {reason}", flush=True)
    return cases, skipped
