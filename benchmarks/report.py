"""The Markdown report and the targets, each checked against the ratios of one run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import compile_time
import devices
import harness
import matrix
import vmapped

HEADLINE = ((16, 28, 28, 512), "float32", 7)
# The default-allocator targets: (shape, block, bound on the ratio to the floor).
ALLOCATOR_TARGETS = (((16, 28, 28, 512), 7, 2.5), ((16, 56, 56, 256), 3, 3.0))


@dataclass
class Results:
    """Everything one run measured; a part that was not run stays None."""

    command: str
    commit: str
    keep_prob: float
    repeats: int
    warmup: int
    rate_keys: int
    quick: bool = False
    wall_s: float = math.nan
    matrix: list = field(default_factory=list)
    tuned: dict | None = None
    vmap: list | None = None
    compile: tuple | None = None
    devices: dict | None = None
    pieces: dict | None = None
    peers: list = field(default_factory=list)
    skipped: set = field(default_factory=set)


@dataclass
class Target:
    area: str  # what the check measures, e.g. "vmap cost"
    text: str
    value: float
    bound: float | None  # None: shown, with no timed bound (a test checks it).
    unit: str = "x"

    @property
    def verdict(self) -> str:
        if math.isnan(self.value):
            return "NOT MEASURED"
        if self.bound is None:
            return "SHOWN"
        return "PASS" if self.value <= self.bound else "FAIL"

    @property
    def bound_text(self) -> str:
        return "none: a test checks it" if self.bound is None else f"{self.bound:g}{self.unit}"

    @property
    def measured(self) -> str:
        return "–" if math.isnan(self.value) else f"{self.value:.2f}{self.unit}"

    def line(self) -> str:
        return (
            f"{self.verdict:12s} {self.area}: {self.text}: measured {self.measured} "
            f"(bound {self.bound_text})"
        )


class Index:
    """Medians of the matrix cases by (shape, dtype, name, mode)."""

    def __init__(self, cases):
        self.cases = {(c.group[0], c.group[1], c.name, c.mode): c for c in cases}

    def get(self, shape, dtype, name, mode):
        return self.cases.get((tuple(shape), dtype, name, mode))

    def ms(self, shape, dtype, name, mode) -> float:
        case = self.get(shape, dtype, name, mode)
        return case.median_ms if case is not None else math.nan


# ---------------------------------------------------------------------------------------------
# Targets


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
    if r.compile is None:
        return []
    variants, _ = r.compile
    total = {v.name: v.total_s for v in variants}
    none = total.get(compile_time.NONE, math.nan)
    flax_overhead = total.get(compile_time.FLAX, math.nan) - none
    out = []
    for name in (compile_time.FIXED, compile_time.SCHEDULED, compile_time.SCHEDULED_MIN):
        if name not in total:
            continue
        out.append(
            Target(
                "compile time",
                f"compile-time overhead of {name} over no regulariser, as a multiple of flax "
                "Dropout's",
                harness.ratio(total[name] - none, flax_overhead),
                1.0,
            )
        )
    return out


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
    """The 0.1 targets at the headline shape, kept so that a regression shows."""
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
            f"per-channel forward over the floor {where}",
            rel(per, "fwd", matrix.FLOOR),
            3.0,
        ),
        Target(
            "speed bounds of 0.1",
            f"per-channel forward over flax Dropout {where}",
            rel(per, "fwd", flax),
            0.15,
        ),
        Target(
            "speed bounds of 0.1",
            f"per-channel forward+backward over the floor {where}",
            rel(per, "fwd+bwd", matrix.FLOOR),
            3.0,
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
    matrix_targets = allocator_targets(r, index) + release_targets(r, index) if r.matrix else []
    return vmap_targets(r) + compile_targets(r) + devices_targets(r) + matrix_targets


# ---------------------------------------------------------------------------------------------
# Sections


def method_lines(r: Results) -> list[str]:
    return [
        f"- Steady state: the median of {r.repeats} timed calls after {r.warmup} untimed ones "
        f"(fewer, at least 3, for a case slower than {harness.CASE_BUDGET_S:g} s / {r.repeats} "
        "a call); implementations compared with each other are interleaved round-robin, every "
        "call ends in `block_until_ready()`. Compile time (`jit(...).lower(...).compile()` plus "
        "the first call) is reported apart. Forward+backward is `jax.vjp` and the pullback in "
        "one `jax.jit`; its floor is the same for `x * 2`.",
        "- A traced keep_prob is a `jnp.float32` argument of the jitted function; without "
        "`min_keep_prob` it has no static bound on gamma.",
    ]


def headline_section(r: Results, index: Index) -> list[str]:
    shape, dtype, block = HEADLINE
    flax = matrix.flax_name(r.keep_prob)
    names = [matrix.FLOOR, flax] + [
        matrix.jaxdrop_name(label, block)
        for label in matrix.jaxdrop_variants(r.keep_prob, harness.has_min_keep_prob())
    ]
    header = ["implementation", "forward ms", "× floor", "× flax Dropout", "fwd+bwd × floor"]
    if r.tuned is not None:
        header += ["tuned malloc: forward ms", "tuned: × floor", "tuned: fwd+bwd × floor"]
    rows = []
    for name in names:
        if index.get(shape, dtype, name, "fwd") is None:
            continue
        fwd = index.ms(shape, dtype, name, "fwd")
        row = [
            name,
            harness.fmt(fwd, 3),
            harness.fmt(harness.ratio(fwd, index.ms(shape, dtype, matrix.FLOOR, "fwd"))),
            harness.fmt(harness.ratio(fwd, index.ms(shape, dtype, flax, "fwd"))),
            harness.fmt(
                harness.ratio(
                    index.ms(shape, dtype, name, "fwd+bwd"),
                    index.ms(shape, dtype, matrix.FLOOR, "fwd+bwd"),
                )
            ),
        ]
        if r.tuned is not None:
            row += tuned_cells(r.tuned, shape, dtype, name)
        rows.append(row)
    return [
        f"## Headline: {harness.shape_name(shape)} {dtype}, block {block}, keep_prob "
        f"{r.keep_prob}, default allocator",
        "",
        *harness.table(header, rows),
    ]


def tuned_cells(tuned: dict, shape, dtype, name) -> list[str]:
    def get(n, mode):
        return tuned.get(f"{harness.shape_name(shape)}|{dtype}|{n}|{mode}", math.nan)

    fwd = get(name, "fwd")
    return [
        harness.fmt(fwd, 3),
        harness.fmt(harness.ratio(fwd, get(matrix.FLOOR, "fwd"))),
        harness.fmt(harness.ratio(get(name, "fwd+bwd"), get(matrix.FLOOR, "fwd+bwd"))),
    ]


def vmap_section(r: Results) -> list[str]:
    if r.vmap is None:
        return []
    ms = {c.name: c.median_ms for c in r.vmap}
    rows = []
    for c in r.vmap:
        batched = math.nan
        for normalize in ("expected", "actual"):
            if f'"{normalize}"' in c.name:
                batched = ms.get(vmapped.batched_name(normalize), math.nan)
        rows.append(
            [
                c.name + (f" — failed: {c.error}" if c.error else ""),
                harness.fmt(c.median_ms, 3),
                harness.fmt(harness.ratio(c.median_ms, ms.get(vmapped.FLOOR, math.nan))),
                harness.fmt(harness.ratio(c.median_ms, batched)),
                harness.fmt(harness.ratio(c.median_ms, ms.get(vmapped.FLAX_VMAPPED, math.nan))),
                harness.fmt(c.compile_s),
            ]
        )
    return [
        f"## vmap over per-example keys: {harness.shape_name(vmapped.SHAPE)} float32, block "
        f"{vmapped.BLOCK}, keep_prob {r.keep_prob}",
        "",
        "`jax.jit(jax.vmap(lambda k, x: f(k, x)))(keys, x)` with one key per example, against "
        "the batched call `jax.jit(f)(key, x)` on the same array. Under `vmap`, "
        '`normalize="actual"` counts the kept units of each example; batched, of the whole '
        "array.",
        "",
        *harness.table(
            [
                "implementation",
                "forward ms",
                "× floor",
                "× jaxdrop batched (same normalize)",
                "× flax vmapped",
                "compile s",
            ],
            rows,
        ),
    ]


def compile_section(r: Results) -> list[str]:
    if r.compile is None:
        return []
    import resnet

    variants, size = r.compile
    total = {v.name: v.total_s for v in variants}
    none = total.get(compile_time.NONE, math.nan)
    flax_overhead = total.get(compile_time.FLAX, math.nan) - none
    rows = []
    for v in variants:
        overhead = v.total_s - none
        rows.append(
            [
                v.name + (f" — failed: {v.error}" if v.error else ""),
                harness.fmt(harness.statistics_median(v.trace_s)),
                harness.fmt(harness.statistics_median(v.compile_s)),
                harness.fmt(v.total_s),
                harness.fmt(overhead) if v.name != compile_time.NONE else "–",
                harness.fmt(harness.ratio(overhead, flax_overhead))
                if v.name not in (compile_time.NONE, compile_time.FLAX)
                else "–",
                str(len(v.trace_s)),
            ]
        )
    stages = list(size["stage_sizes"])
    return [
        f"## Compile time: ResNet train step, stages {stages}, "
        f"{resnet.regularizer_sites(size['stage_sizes'])} regulariser call sites",
        "",
        f"{size['image']}x{size['image']} input, batch {size['batch']}, Adam (optax), BatchNorm "
        "statistics updated; the regulariser after conv1 and conv2 and on the shortcut of every "
        "block of groups 3 and 4, keep_prob "
        f"{r.keep_prob}, block 7. Each measurement clears JAX's caches and builds a fresh step; "
        "medians over the repeats.",
        "",
        *harness.table(
            [
                "regulariser",
                "trace+lower s",
                "compile s",
                "total s",
                "overhead s",
                "overhead × flax Dropout's",
                "repeats",
            ],
            rows,
        ),
    ]


def devices_section(r: Results) -> list[str]:
    if r.devices is None:
        return []
    names = devices.names(harness.has_min_keep_prob())
    header = ["devices", "global batch"]
    for name in names:
        header += [f"{name}: ms", "ms per example"]
    header.append("jaxdrop (Python keep_prob) × floor")
    rows = []
    for count, result in sorted(r.devices.items()):
        row = [str(count), str(devices.PER_DEVICE * count)]
        if "error" in result and isinstance(result["error"], str):
            rows.append(row + [f"failed: {result['error']}"] + ["–"] * (len(header) - 3))
            continue
        for name in names:
            ms = result.get(name, {}).get("median_ms", math.nan)
            row += [harness.fmt(ms, 3), harness.fmt(ms / (devices.PER_DEVICE * count), 3)]
        row.append(
            harness.fmt(
                harness.ratio(
                    result.get(devices.PYTHON, {}).get("median_ms", math.nan),
                    result.get(devices.FLOOR, {}).get("median_ms", math.nan),
                )
            )
        )
        rows.append(row)
    return [
        f"## Many devices: global `jit`, {devices.PER_DEVICE} examples of "
        f"{harness.shape_name(devices.EXAMPLE)} per simulated CPU device, block {devices.BLOCK}",
        "",
        "Each device count runs in its own process "
        "(`XLA_FLAGS=--xla_force_host_platform_device_count=N`), the batch sharded over a "
        "one-axis mesh, one replicated key. Simulated devices share this machine's cores, so the "
        "time per call grows with the count even when the work per device does not: compare "
        "jaxdrop's ratio to the floor across counts.",
        "",
        *harness.table(header, rows),
    ]


def matrix_sections(r: Results) -> list[str]:
    cases = r.matrix + r.peers
    index = Index(cases)
    flax = matrix.flax_name(r.keep_prob)
    groups = []
    for c in cases:
        if (c.group[0], c.group[1]) not in groups:
            groups.append((c.group[0], c.group[1]))
    lines = []
    for shape, dtype in groups:
        names = []
        for c in cases:
            if (c.group[0], c.group[1]) == (shape, dtype) and c.name not in names:
                names.append(c.name)
        header = [
            "implementation",
            "fwd median ms",
            "fwd min ms",
            "fwd × floor",
            "fwd × flax",
            "fwd+bwd median ms",
            "fwd+bwd × floor",
            "fwd+bwd × flax",
            "compile s (fwd / fwd+bwd)",
            "drop rate (nominal; expected)",
        ]
        if r.tuned is not None:
            header += ["tuned malloc: fwd ms", "tuned: fwd × floor", "tuned: fwd+bwd × floor"]
        rows = []
        for name in names:
            fwd = index.get(shape, dtype, name, "fwd")
            bwd = index.get(shape, dtype, name, "fwd+bwd")
            is_torch = fwd is not None and fwd.framework == "torch"
            floor = "torch `x * 2` (floor)" if is_torch else matrix.FLOOR
            note = " (torch floor)" if is_torch else ""

            def rel(case, ref, mode, shape=shape, dtype=dtype):
                return harness.ratio(
                    case.median_ms if case else math.nan, index.ms(shape, dtype, ref, mode)
                )

            rate = "–"
            if fwd is not None and not math.isnan(fwd.rate):
                rate = f"{fwd.rate:.4f} ({harness.fmt(fwd.nominal)}"
                rate += f"; {fwd.expected:.4f})" if fwd.expected is not None else ")"
            failed = fwd.error if fwd is not None and fwd.error else ""
            row = [
                name + (f" — failed: {failed}" if failed else ""),
                harness.fmt(fwd.median_ms if fwd else math.nan, 3),
                harness.fmt(fwd.min_ms if fwd else math.nan, 3),
                harness.fmt(rel(fwd, floor, "fwd")) + note,
                harness.fmt(rel(fwd, flax, "fwd")),
                harness.fmt(bwd.median_ms if bwd else math.nan, 3),
                harness.fmt(rel(bwd, floor, "fwd+bwd")),
                harness.fmt(rel(bwd, flax, "fwd+bwd")),
                f"{harness.fmt(fwd.compile_s if fwd else math.nan)} / "
                f"{harness.fmt(bwd.compile_s if bwd else math.nan)}",
                rate,
            ]
            if r.tuned is not None:
                row += tuned_cells(r.tuned, shape, dtype, name) if not is_torch else ["–"] * 3
            rows.append(row)
        lines += [
            f"### {harness.shape_name(shape)} {dtype}, keep_prob {r.keep_prob}",
            "",
            *harness.table(header, rows),
        ]
    if not lines:
        return []
    return [
        "## Full matrix, default allocator",
        "",
        f"Drop rate: the fraction of exact zeros in the output (inputs are drawn in [1, 2)), "
        f"averaged over {r.rate_keys} keys; nominal is `1 - keep_prob`; for jaxdrop the "
        "expected rate of the paper's gamma is given too (below nominal: blocks overlap and "
        "border units are covered by fewer seeds; `calibrate=True` closes that gap).",
        "",
        *lines,
    ]


def pieces_section(r: Results) -> list[str]:
    if r.pieces is None:
        return []
    p = r.pieces
    shape = harness.shape_name(pieces_shape())
    lines = [
        f"## Pieces of the mask at {shape}, block {pieces_block()}",
        "",
        f"Seed grid {p['n']:,} positions, paper gamma {p['gamma']:.5f} (about "
        f"{p['n'] * p['gamma']:,.0f} seeds).",
        "",
    ]
    if p["sampling"]:
        lines += [f"Seed sampling: this code's sampler uses {p['exposes']}.", ""]
        lines += harness.table(
            ["seed sampling", "median ms", "min ms", "compile s"],
            [
                [
                    c.name + (f" — failed: {c.error}" if c.error else ""),
                    harness.fmt(c.median_ms, 3),
                    harness.fmt(c.min_ms, 3),
                    harness.fmt(c.compile_s),
                ]
                for c in p["sampling"]
            ],
        )
    else:
        lines += ["Seed sampling: this code exposes no sampler the table knows how to call.", ""]
    lines += harness.table(
        ["block expansion (both spatial axes, to a bool mask)", "median ms", "min ms"],
        [[c.name, harness.fmt(c.median_ms, 3), harness.fmt(c.min_ms, 3)] for c in p["expansion"]],
    )
    if p["in_dropblock"]:
        lines += harness.table(
            [
                "block expansion inside `dropblock` (per-channel, Python keep_prob)",
                "median ms",
                "min ms",
            ],
            [
                [
                    c.name + (f" — failed: {c.error}" if c.error else ""),
                    harness.fmt(c.median_ms, 3),
                    harness.fmt(c.min_ms, 3),
                ]
                for c in p["in_dropblock"]
            ],
        )
    return lines


def pieces_shape():
    import pieces

    return pieces.SHAPE


def pieces_block():
    import pieces

    return pieces.BLOCK


def write(r: Results, out: str, tuned_column: bool) -> list[Target]:
    index = Index(r.matrix)
    targets = all_targets(r)
    lines = [
        "# DropBlock benchmark results",
        "",
        f"Written by `benchmarks/bench_dropblock.py` in {r.wall_s / 60:.1f} minutes. Command:",
        "",
        "```bash",
        r.command,
        "```",
        "",
        *harness.machine_lines(r.commit, tuned_column),
        *method_lines(r),
        "",
    ]
    if r.quick:
        lines += [
            "**A `--quick` run**: smaller sizes and fewer repeats, to check the script; rerun "
            "without `--quick` for figures to quote.",
            "",
        ]
    if r.skipped:
        lines += ["Skipped peers:", ""] + [f"- {s}" for s in sorted(r.skipped)] + [""]
    lines += [
        "## Targets, checked on this run's medians",
        "",
        *harness.table(
            ["", "area", "target", "measured", "bound"],
            [[t.verdict, t.area, t.text, t.measured, t.bound_text] for t in targets],
        ),
    ]
    if index.get(*HEADLINE[:2], matrix.FLOOR, "fwd") is not None:
        lines += headline_section(r, index)
    lines += vmap_section(r)
    lines += compile_section(r)
    lines += devices_section(r)
    lines += matrix_sections(r)
    lines += pieces_section(r)
    with open(out, "w") as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")
    print(f"wrote {out}", flush=True)
    return targets
