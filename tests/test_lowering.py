"""No data-dependent control flow in what an accelerator would run (deterministic, no device).

XLA:GPU runs every ``stablehlo.case`` / ``if`` / ``while`` by copying its predicate to the host
and waiting for the device, and under ``vmap`` a batched predicate becomes a select that runs
every branch. So ``jax.export(jax.jit(f), platforms=[...])`` of every family function, forward
and forward+backward, must hold no ``case``, ``if`` or ``while`` at all for one accelerator
platform. The sampler is chosen per platform by a primitive with one lowering per platform, so
a single-platform lowering holds only that platform's sampler, with no ``case`` to pick it.
CPU lowerings may hold ``while`` loops: JAX lowers threefry on CPU with a rolled loop (a static
trip count, not data-dependent).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest

import jaxdrop
from jaxdrop._src import sampling

X = jnp.ones((2, 28, 28, 8))  # A 26 x 26 x 8 seed grid per example at block 3: sparse on CPU.
KEEP = jnp.float32(0.9)


def control_flow(module: str) -> dict[str, int]:
    """Counts of the ``stablehlo`` control-flow ops in a lowered module."""
    return {op: len(re.findall(rf"\bstablehlo\.{op}\b", module)) for op in ("case", "if", "while")}


def lowered(fn, args, platform: str) -> str:
    return jax.export.export(jax.jit(fn), platforms=[platform])(*args).mlir_module()


def forward_and_backward(fn):
    """``fn(key, x, *rest)`` and the gradient of its sum with respect to ``x``."""
    return jax.value_and_grad(lambda x, key, *rest: fn(key, x, *rest).sum())


def _dropblock(keep, calibrate, normalize):
    min_keep_prob = 0.8 if keep == "traced-min" else None

    def fn(key, x, *keep_prob):
        p = keep_prob[0] if keep_prob else 0.9
        return jaxdrop.dropblock(
            key,
            x,
            p,
            3,
            normalize=normalize,
            calibrate=calibrate,
            min_keep_prob=min_keep_prob,
        )

    return fn, () if keep == "python" else (KEEP,)


DROPBLOCK_CASES = [
    (keep, calibrate, normalize)
    for keep in ("python", "traced", "traced-min")
    for calibrate in (False, True)
    for normalize in ("actual", "expected")
]


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize(("keep", "calibrate", "normalize"), DROPBLOCK_CASES)
def test_dropblock_has_no_control_flow_on_accelerators(platform, keep, calibrate, normalize):
    fn, extra = _dropblock(keep, calibrate, normalize)
    key = jax.random.key(0)
    forward = lowered(fn, (key, X, *extra), platform)
    assert control_flow(forward) == {"case": 0, "if": 0, "while": 0}
    # The accelerators use the dense draw: no scatter of seed positions.
    assert "stablehlo.scatter" not in forward
    backward = lowered(forward_and_backward(fn), (X, key, *extra), platform)
    assert control_flow(backward) == {"case": 0, "if": 0, "while": 0}


def test_vmapped_dropblock_has_no_control_flow():
    # One key per example, as in an Equinox model: nothing to turn into a select.
    def fn(keys, x):
        return jax.vmap(lambda k, x: jaxdrop.dropblock(k, x, 0.9, 3, normalize="expected"))(keys, x)

    keys = jax.random.split(jax.random.key(0), 2)
    for platform in ("cuda", "tpu"):
        assert control_flow(lowered(fn, (keys, X), platform)) == {"case": 0, "if": 0, "while": 0}
    assert control_flow(lowered(fn, (keys, X), "cpu"))["case"] == 0


@pytest.mark.parametrize("keep", ["python", "traced-min"])
def test_cpu_uses_the_sparse_sampler_with_no_conditional(keep):
    fn, extra = _dropblock(keep, False, "actual")
    key = jax.random.key(0)
    module = lowered(fn, (key, X, *extra), "cpu")
    assert "stablehlo.scatter" in module  # The sparse sampler, not the dense draw.
    assert control_flow(module)["case"] == control_flow(module)["if"] == 0
    compiled = jax.jit(fn).lower(key, X, *extra).compile().as_text()
    assert "conditional(" not in compiled
    assert sampling.sparse_plan((2, 26, 26, 8), 1, 0.25**3) is not None


def test_a_lowering_for_several_platforms_holds_each_sampler():
    # One module for CPU and CUDA: JAX picks the per-platform lowering with a case on the
    # platform index (the caller's choice; a single-platform lowering has none).
    fn, extra = _dropblock("python", False, "actual")
    module = jax.export.export(jax.jit(fn), platforms=["cpu", "cuda"])(jax.random.key(0), X)
    text = module.mlir_module()
    assert "stablehlo.scatter" in text  # The CPU sampler is there ...
    assert control_flow(text)["case"] > 0  # ... beside the dense one, behind the platform case.
    assert module.platforms == ("cpu", "cuda")


FAMILY = {
    "dropout": lambda k, x, p: jaxdrop.dropout(k, x, p),
    "spatial_dropout": lambda k, x, p: jaxdrop.spatial_dropout(k, x, p),
    "drop_path": lambda k, x, p: jaxdrop.drop_path(k, x, p),
    "drop_path-batch": lambda k, x, p: jaxdrop.drop_path(k, x, p, mode="batch"),
    "cutout": lambda k, x, p: jaxdrop.cutout(k, x, 9, num_patches=2) * p,
    "dropconnect": lambda k, x, p: jaxdrop.dropconnect(k, {"w": x}, p)["w"],
}


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("name", FAMILY)
def test_family_has_no_control_flow_on_accelerators(platform, name):
    fn = FAMILY[name]
    key = jax.random.key(0)
    forward = lowered(fn, (key, X, KEEP), platform)
    assert control_flow(forward) == {"case": 0, "if": 0, "while": 0}
    backward = lowered(forward_and_backward(fn), (X, key, KEEP), platform)
    assert control_flow(backward) == {"case": 0, "if": 0, "while": 0}


def test_the_check_sees_control_flow():
    # What the 0.1 sampler had: a data-dependent cond and switch, and a bisection fori_loop.
    def fn(x):
        x = jax.lax.cond(x.sum() > 0, lambda x: x * 2, lambda x: x, x)
        x = jax.lax.switch((x.sum() > 1).astype(jnp.int32), [lambda x: x, lambda x: -x], x)
        return jax.lax.fori_loop(0, x.shape[0], lambda i, x: x + i, x)

    for platform in ("cuda", "tpu"):
        counts = control_flow(lowered(fn, (jnp.ones(3),), platform))
        assert counts["case"] == 2 and counts["if"] + counts["while"] >= 1, counts
