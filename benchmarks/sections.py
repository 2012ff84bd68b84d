"""The sections of the Markdown report: the method, then one table (or more) per part."""

from __future__ import annotations

import math

import compile_time
import devices
import harness
import matrix
import pieces
import vmapped
from measurements import HEADLINE, Index, Results


def label(name: str, error: str) -> str:
    """A row's name, with the error of a case that failed."""
    return name + (f" — failed: {error}" if error else "")


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
                label(c.name, c.error),
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
    """One table per input size: the first is the benchmark's (bounded), the rest are shown."""
    if not r.compile:
        return []
    lines = []
    for i, (variants, size) in enumerate(r.compile):
        lines += compile_table(r, variants, size, bounded=i == 0)
    return lines


def compile_table(r: Results, variants, size, bounded: bool) -> list[str]:
    import resnet

    overhead_of, flax_overhead = compile_time.overheads(variants)
    rows = []
    for v in variants:
        overhead = overhead_of[v.name]
        rows.append(
            [
                label(v.name, v.error),
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
    # Groups 3 and 4 run at 1/16 and 1/32 of the input (conv1, the max pool and the first
    # blocks of groups 2 to 4 halve it, rounding up): 7x7 and 4x4 at 112 px, 2x2 and 1x1 at 32.
    g3, g4 = -(-size["image"] // 16), -(-size["image"] // 32)
    role = (
        "the benchmark's size, bounded by the compile-time target"
        if bounded
        else "reported with no bound"
    )
    role += f"; groups 3 and 4 on {g3}x{g3} and {g4}x{g4} maps after their first stride"
    return [
        f"## Compile time: ResNet train step at {size['image']} px, stages {stages}, "
        f"{resnet.regularizer_sites(size['stage_sizes'])} regulariser call sites",
        "",
        f"{size['image']}x{size['image']} input ({role}), batch {size['batch']}, Adam (optax), "
        "BatchNorm statistics updated; the regulariser after conv1 and conv2 and on the shortcut "
        f"of every block of groups 3 and 4, keep_prob {r.keep_prob}, block 7. Each measurement "
        "clears JAX's caches and builds a fresh step; "
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
            row = [
                label(name, fwd.error if fwd is not None else ""),
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
    shape = harness.shape_name(pieces.SHAPE)
    lines = [
        f"## Pieces of the mask at {shape}, block {pieces.BLOCK}",
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
                    label(c.name, c.error),
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
                    label(c.name, c.error),
                    harness.fmt(c.median_ms, 3),
                    harness.fmt(c.min_ms, 3),
                ]
                for c in p["in_dropblock"]
            ],
        )
    return lines
