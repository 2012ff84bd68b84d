"""The targets, each checked against the ratios of one run."""

from __future__ import annotations

import math
from dataclasses import dataclass

import compile_time
import devices
import harness
import matrix
import vmapped
from measurements import HEADLINE, Index, Results

# The default-allocator targets: (shape, block, bound on the ratio to the floor).
ALLOCATOR_TARGETS = (((16, 28, 28, 512), 7, 2.5), ((16, 56, 56, 256), 3, 3.0))


@dataclass
class Target:
    area: str  # what the check measures, e.g. "vmap cost"
    text: str
    value: float
    bound: float | None  # None: shown, with no timed bound (a test checks it, or `unbounded`).
    unit: str = "x"
    unbounded: str = "none: a test checks it"  # The bound column of a row with no bound.
    test: str = ""  # A property a test checks rather than the run: the test, shown as measured.

    @property
    def verdict(self) -> str:
        if self.test:
            return "SHOWN"
        if math.isnan(self.value):
            return "NOT MEASURED"
        if self.bound is None:
            return "SHOWN"
        return "PASS" if self.value <= self.bound else "FAIL"

    @property
    def bound_text(self) -> str:
        return self.unbounded if self.bound is None else f"{self.bound:g}{self.unit}"

    @property
    def measured(self) -> str:
        if self.test:
            return f"checked by `{self.test}`"
        return "–" if math.isnan(self.value) else f"{self.value:.2f}{self.unit}"

    def line(self) -> str:
        measured = self.measured if self.test else f"measured {self.measured}"
        return f"{self.verdict:12s} {self.area}: {self.text}: {measured} (bound {self.bound_text})"


def allocator_targets(r: Results, index: Index) -> list[Target]:
    out = []
    for shape, block, bound in ALLOCATOR_TARGETS:
        for label in ("per-channel", "shared mask `broadcast_dims=(-1,)`"):
            name = matrix.jaxdrop_name(label, block)
            for mode in ("fwd", "fwd+bwd"):
                value = harness.ratio(
                    index.ms(shape, "float32", name, mode),
                    index.ms(shape, "float32", matrix.FLOOR, mode),
                )
                out.append(
                    Target(
                        "speed, default allocator",
                        f"default allocator, {label} {mode} at {harness.shape_name(shape)} "
                        f"float32, block {block}, over its floor",
                        value,
                        bound,
                    )
                )
    return out


def vmap_targets(r: Results) -> list[Target]:
    if r.vmap is None:
        return []
    ms = {c.name: c.median_ms for c in r.vmap}
    out = []
    for normalize in ("expected", "actual"):
        v = ms.get(vmapped.vmapped_name(normalize), math.nan)
        out.append(
            Target(
                "vmap cost",
                f'vmap over per-example keys, `normalize="{normalize}"`, over the batched call',
                harness.ratio(v, ms.get(vmapped.batched_name(normalize), math.nan)),
                1.3,
            )
        )
        out.append(
            Target(
                "vmap cost",
                f'vmap over per-example keys, `normalize="{normalize}"`, over flax Dropout '
                "vmapped the same way",
                harness.ratio(v, ms.get(vmapped.FLAX_VMAPPED, math.nan)),
                0.15,
            )
        )
    return out


def compile_targets(r: Results) -> list[Target]:
    """Compile overhead over flax Dropout's: bounded at the first input size, shown at the rest."""
    if not r.compile:
        return []
    out = []
    for i, (variants, size) in enumerate(r.compile):
        overhead, flax_overhead = compile_time.overheads(variants)
        for name in (compile_time.FIXED, compile_time.SCHEDULED, compile_time.SCHEDULED_MIN):
            if name not in overhead:
                continue
            out.append(
                Target(
                    "compile time",
                    f"compile-time overhead of {name} in the ResNet train step at "
                    f"{size['image']} px, over no regulariser, as a multiple of flax Dropout's",
                    harness.ratio(overhead[name], flax_overhead),
                    1.0 if i == 0 else None,
                    unbounded="none: reported at small activations",
                )
            )
    return out


def lowering_targets() -> list[Target]:
    """A property of the lowered programs, not of a timing: the test suite checks it."""
    return [
        Target(
            "control flow",
            "no data-dependent control flow (`case` / `if` on a run-time value, or `while`) in "
            "the GPU and TPU lowerings (`jax.export` for cuda and tpu) of every public function, "
            "forward and forward+backward",
            math.nan,
            None,
            test="tests/test_lowering.py",
        )
    ]


def devices_targets(r: Results) -> list[Target]:
    """How jaxdrop's time per example grows with the device count, over the floor's growth.

    Simulated devices share the cores, so only the comparison with the floor means anything;
    the compiled programs' sizes are what the unit test checks.
    """
    if not r.devices:
        return []

    def per_example(count, name):
        ms = r.devices.get(count, {}).get(name, {}).get("median_ms", math.nan)
        return ms / (devices.PER_DEVICE * count)

    counts = sorted(r.devices)
    low, high = counts[0], counts[-1]
    out = []
    for name in devices.names(harness.has_min_keep_prob())[1:]:
        growth = harness.ratio(per_example(high, name), per_example(low, name))
        floor_growth = harness.ratio(
            per_example(high, devices.FLOOR), per_example(low, devices.FLOOR)
        )
        out.append(
            Target(
                "device scaling",
                f"{name}: time per example at {high} devices over {low}, divided by the same "
                "growth of the floor",
                harness.ratio(growth, floor_growth),
                None,
            )
        )
    return out


def release_targets(r: Results, index: Index) -> list[Target]:
    """The 0.1 targets at the headline shape, kept so that a regression shows.

    Its per-channel bounds over the floor (3x) are gone: `allocator_targets` checks the same
    ratios at 2.5x.
    """
    shape, dtype, block = HEADLINE
    per = matrix.jaxdrop_name("per-channel", block)
    shared = matrix.jaxdrop_name("shared mask `broadcast_dims=(-1,)`", block)
    flax = matrix.flax_name(r.keep_prob)

    def rel(name, mode, ref):
        return harness.ratio(index.ms(shape, dtype, name, mode), index.ms(shape, dtype, ref, mode))

    where = f"at {harness.shape_name(shape)} {dtype}, block {block}"
    out = [
        Target(
            "speed bounds of 0.1",
            f"per-channel forward over flax Dropout {where}",
            rel(per, "fwd", flax),
            0.15,
        ),
        Target(
            "speed bounds of 0.1",
            f"one mask for all channels, forward over the floor {where}",
            rel(shared, "fwd", matrix.FLOOR),
            1.5,
        ),
    ]
    worst, worst_name = math.nan, ""
    for (shape_, dtype_, name, mode), case in index.cases.items():
        if not name.startswith("jaxdrop"):
            continue
        value = harness.ratio(case.median_ms, index.ms(shape_, dtype_, flax, mode))
        if not math.isnan(value) and (math.isnan(worst) or value > worst):
            worst = value
            worst_name = f"{name} [{mode}] at {harness.shape_name(shape_)} {dtype_}"
    out.append(
        Target(
            "speed bounds of 0.1",
            f"slowest jaxdrop row over flax Dropout ({worst_name or 'none'})",
            worst,
            1.0,
        )
    )
    return out


def all_targets(r: Results) -> list[Target]:
    """The targets of the parts that ran (a missing case in one of them is NOT MEASURED)."""
    index = Index(r.matrix)
    speed = allocator_targets(r, index) if r.matrix else []
    release = release_targets(r, index) if r.matrix else []
    return (
        vmap_targets(r)
        + speed
        + lowering_targets()
        + compile_targets(r)
        + devices_targets(r)
        + release
    )
