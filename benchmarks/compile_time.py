"""Trace and compile time of a ResNet-50 train step with a regulariser at 27 call sites.

The step is a forward pass, `jax.value_and_grad` of the cross-entropy, and an Adam update
(optax), with BatchNorm statistics updated. Each measurement clears JAX's caches
(`jax.clear_caches()`), builds a fresh step function and times
`jax.jit(step).lower(...)` (tracing and lowering) and `.compile()` on abstract arguments, so no
parameter is materialised. Variants are measured round-robin and the median is reported.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field

import harness

FULL = {"stage_sizes": (3, 4, 6, 3), "image": 112, "batch": 8}
QUICK = {"stage_sizes": (1, 1, 1, 1), "image": 64, "batch": 2}
# Input sizes (`--compile-images`): the first is the benchmark's, bounded by a target; the others
# are reported with no bound. 32 px (CIFAR-sized) makes every activation small: group 3's maps are
# 4x4 then 2x2 and group 4's 1x1, so block 7 is clipped to the map and every seed grid is
# (batch, 1, 1, C). With a Python keep_prob no call site then uses the sparse CPU sampler (the 256-
# channel grids fall below `_DENSE_BELOW` in jaxdrop/_src/sampling.py, the others go to the dense
# draw by the cost model); at 112 px one site (group 3's first 3x3 conv input, an 8x8 seed grid)
# compiles the sparse one. The overhead is then mostly fixed per call site, against a smaller model.
IMAGES = (112, 32)
QUICK_IMAGES = (64, 32)
NONE = "no regulariser"
FLAX = "`flax.linen.Dropout`"
FIXED = "`jaxdrop.linen.DropBlock`, Python keep_prob"
SCHEDULED = "`jaxdrop.linen.DropBlock`, keep_prob from an optax schedule (traced)"
SCHEDULED_MIN = SCHEDULED[:-1] + ", `min_keep_prob`)"


@dataclass
class Variant:
    name: str
    regularizer: str
    scheduled: bool
    trace_s: list = field(default_factory=list)
    compile_s: list = field(default_factory=list)
    error: str = ""

    @property
    def total_s(self) -> float:
        totals = [a + b for a, b in zip(self.trace_s, self.compile_s, strict=True)]
        return statistics.median(totals) if totals else float("nan")


def overheads(variants: list[Variant]) -> tuple[dict[str, float], float]:
    """Each variant's median total time over no regulariser's, and flax Dropout's overhead."""
    total = {v.name: v.total_s for v in variants}
    none = total.get(NONE, math.nan)
    return {name: t - none for name, t in total.items()}, total.get(FLAX, math.nan) - none


def variants() -> list[Variant]:
    import resnet

    out = [
        Variant(NONE, "none", False),
        Variant(FLAX, "flax", False),
        Variant(FIXED, "dropblock", False),
        Variant(SCHEDULED, "dropblock", True),
    ]
    if resnet.has_min_keep_prob_field():
        out.append(Variant(SCHEDULED_MIN, "dropblock-min", True))
    return out


def make_step(model, tx, schedule):
    """A fresh train step: a new function object, so nothing is reused from an earlier one."""
    import jax
    import optax

    def step(state, batch, key):
        params, batch_stats, opt_state, count = state
        images, labels = batch
        keep_prob = schedule(count) if schedule is not None else None

        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": batch_stats},
                images,
                keep_prob,
                mutable=["batch_stats"],
                rngs={"dropout": key},
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, batch_stats, opt_state, count + 1), loss

    return step


def abstract_arguments(model, tx, size):
    """ShapeDtypeStructs of the step's arguments, from `jax.eval_shape` (nothing allocated)."""
    import jax
    import jax.numpy as jnp

    images = jax.ShapeDtypeStruct((size["batch"], size["image"], size["image"], 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((size["batch"],), jnp.int32)

    def init():
        key = jax.random.key(0)
        variables = model.init(
            {"params": key, "dropout": key}, jnp.zeros(images.shape, images.dtype)
        )
        params = variables["params"]
        return params, variables["batch_stats"], tx.init(params), jnp.zeros((), jnp.int32)

    state = jax.eval_shape(init)
    key = jax.eval_shape(lambda: jax.random.key(0))
    return state, (images, labels), key


def run(keep_prob: float, repeats: int, quick: bool, block_size: int = 7, image: int | None = None):
    """Times every variant at one input size (`image` px, default the size's own)."""
    import jax
    import optax
    import resnet

    size = dict(QUICK if quick else FULL)
    if image is not None:
        size["image"] = image
    tx = optax.adam(1e-3)
    # keep_prob falls linearly from 1 to its target, as the paper schedules it.
    schedule = optax.linear_schedule(1.0, keep_prob, transition_steps=10_000)
    timed = variants()
    prepared = []
    for v in timed:
        model = resnet.ResNet(
            stage_sizes=size["stage_sizes"],
            regularizer=v.regularizer,
            keep_prob=keep_prob,
            block_size=block_size,
        )
        try:
            prepared.append((v, model, abstract_arguments(model, tx, size)))
        except Exception as error:  # noqa: BLE001 - reported in the table.
            v.error = harness.short_error(error)
            print(f"  {v.name} failed: {v.error}", flush=True)
    print(
        f"ResNet train step, stages {list(size['stage_sizes'])}, "
        f"{resnet.regularizer_sites(size['stage_sizes'])} call sites, "
        f"{size['image']}x{size['image']} input, batch {size['batch']}",
        flush=True,
    )
    for _ in range(repeats):
        for v, model, args in prepared:
            if v.error:
                continue
            jax.clear_caches()
            step = make_step(model, tx, schedule if v.scheduled else None)
            try:
                start = time.perf_counter()
                lowered = jax.jit(step).lower(*args)
                traced = time.perf_counter()
                lowered.compile()
                done = time.perf_counter()
            except Exception as error:  # noqa: BLE001 - reported in the table.
                v.error = harness.short_error(error)
                print(f"  {v.name} failed: {v.error}", flush=True)
                continue
            v.trace_s.append(traced - start)
            v.compile_s.append(done - traced)
            print(
                f"  {v.name[:60]:60s} trace+lower {traced - start:6.2f} s  "
                f"compile {done - traced:6.2f} s",
                flush=True,
            )
    return timed, size
