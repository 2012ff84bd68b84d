"""The report of `evaluate_regularizers.py`: tables of means and paired differences over seeds
with their 95% intervals, the figures, and ``results.md``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from digits import report, stats
from digits.data import occluder_side
from digits.model import PLAIN_WIDTHS
from digits.sweeps import OCCLUSION, STRIDES, WIDTHS, diverged, identity


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def interval_cell(values) -> str:
    ci = stats.t_interval(values)
    return f"{pct(ci.mean)} [{pct(ci.low)}, {pct(ci.high)}]"


def diff_cell(a, b) -> str:
    """A paired difference in percentage points, starred when its interval excludes 0."""
    d = stats.paired(a, b)
    star = " *" if d.excludes_zero() else ""
    return f"{100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]{star}"


def metric(records, key: str, level: int | None = None) -> np.ndarray:
    records = sorted(records, key=lambda r: r["seed"])
    if level is None:
        return np.array([r[key] for r in records])
    return np.array([r[key][level] for r in records])


def occluded_percent(size: int) -> np.ndarray:
    """The image fraction (%) each occluder covers, its side rounded to whole pixels."""
    return np.array([100 * occluder_side(f, size) ** 2 / size**2 for f in OCCLUSION])


def main_tables(main, runs, size: int) -> str:
    sides = [occluder_side(f, size) for f in OCCLUSION]
    head = " | ".join(
        f"{s} x {s} ({p:.1f}%)" if s else "none"
        for s, p in zip(sides, occluded_percent(size), strict=True)
    )

    def table(title, cell, skip=None, extra=None) -> list[str]:
        """``cell(records, i)`` for every configuration (but ``skip``) and occluder ``i``;
        ``extra(records)``, if given, a last column."""
        more = " divergent runs |" if extra else ""
        lines = [title, "", f"| configuration | {head} |{more}"]
        lines.append("|---|" + "---|" * (len(sides) + bool(extra)))
        for label, config in main.items():
            r = runs[identity(config)]
            if r is not skip:
                cells = [cell(r, i) for i in range(len(sides))] + ([extra(r)] if extra else [])
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return lines

    lines = table(
        "Test accuracy (%) by occluder, mean [95% CI]; divergent runs (non-finite training "
        "loss or train accuracy below 20%) are counted, and kept in the means:",
        lambda r, i: interval_cell(metric(r, "occluded", i)),
        extra=lambda r: f"{sum(map(diverged, r))} of {len(r)}",
    )
    refs = [
        (label, runs[identity(main[label])])
        for label in ("no regularisation", "dropout")
        if label in main
    ]
    for ref_label, ref in refs:
        lines += [""] + table(
            f"Paired difference against {ref_label} (percentage points, mean [95% CI]; "
            "* = the interval excludes 0):",
            lambda r, i, ref=ref: diff_cell(metric(r, "occluded", i), metric(ref, "occluded", i)),
            skip=ref,
        )
    return "\n".join(lines)


def sweep_table(section, runs, pairs, ref_name, none) -> str:
    """Rows: mean [CI] of test accuracy, and the paired differences with a reference row and
    with no regularisation (``none``: its records)."""
    lines = [
        "| configuration | test accuracy (%) | train accuracy (%) "
        f"| paired difference vs {ref_name} | vs no regularisation |",
        "|---|---|---|---|---|",
    ]
    for label, config in section.items():
        r = runs[identity(config)]
        ref_label = pairs(label)
        ref = runs[identity(section[ref_label])] if ref_label else None
        diff = (
            ""
            if ref is None or ref is r
            else f"{diff_cell(metric(r, 'test'), metric(ref, 'test'))} ({ref_label})"
        )
        lines.append(
            f"| {label} | {interval_cell(metric(r, 'test'))} | "
            f"{pct(metric(r, 'train').mean())} | {diff} | "
            f"{diff_cell(metric(r, 'test'), metric(none, 'test'))} |"
        )
    return "\n".join(lines)


def plot_occlusion(main, runs, size: int, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5), dpi=100)
    ax = fig.subplots()
    x = occluded_percent(size)
    for label, config in main.items():
        r = runs[identity(config)]
        cis = [stats.t_interval(metric(r, "occluded", i)) for i in range(len(OCCLUSION))]
        mean = 100 * np.array([c.mean for c in cis])
        (line,) = ax.plot(x, mean, marker="o", ms=4, label=label)
        ax.fill_between(
            x,
            [100 * c.low for c in cis],
            [100 * c.high for c in cis],
            color=line.get_color(),
            alpha=0.12,
            lw=0,
        )
    ax.set_xlabel("occluded fraction of the image (%)", fontsize=12)
    ax.set_ylabel("test accuracy (%)", fontsize=12)
    ax.set_title("Accuracy under a square occluder (mean and 95% CI over seeds)", fontsize=12)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)


def plot_paired(main, runs, size: int, path: Path) -> None:
    """Each row's paired difference against no regularisation at each occluder, with its 95%
    interval: the decision at a glance (an interval that crosses 0 decides nothing)."""
    from matplotlib.figure import Figure

    ref = runs[identity(main["no regularisation"])]
    rows = [label for label in main if label != "no regularisation"]
    fig = Figure(figsize=(9, 0.45 * len(rows) + 1.6), dpi=100)
    ax = fig.subplots()
    levels = occluded_percent(size)
    offsets = np.linspace(-0.3, 0.3, len(levels))
    for i, (level, dy) in enumerate(zip(levels, offsets, strict=True)):
        diffs = [
            stats.paired(metric(runs[identity(main[r])], "occluded", i), metric(ref, "occluded", i))
            for r in rows
        ]
        y = np.arange(len(rows)) + dy
        mean = np.array([100 * d.mean for d in diffs])
        err = np.array(
            [[100 * (d.mean - d.low) for d in diffs], [100 * (d.high - d.mean) for d in diffs]]
        )
        label = f"occluder {level:.0f}%" if level else "clean"
        ax.errorbar(mean, y, xerr=err, fmt="o", ms=3, capsize=2, label=label)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(np.arange(len(rows)), rows, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("paired difference against no regularisation (pp, mean and 95% CI)", fontsize=11)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)


def plot_sweep(series, xs, xlabel, title, path: Path) -> None:
    """``series``: label -> list of per-seed accuracy arrays, one per x."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.subplots()
    for label, values in series.items():
        cis = [stats.t_interval(v) for v in values]
        mean = [100 * c.mean for c in cis]
        err = [100 * c.half_width for c in cis]
        ax.errorbar(xs, mean, yerr=err, marker="o", ms=4, capsize=3, label=label)
    ax.set_xlabel(xlabel, fontsize=12)
    ax.set_ylabel("test accuracy (%)", fontsize=12)
    ax.set_title(title, fontsize=11)
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def plot_sweeps(sections, runs, size: int, out: Path) -> list[str]:
    """``occlusion.png`` and, with the paper grid's sweeps, ``keep_prob.png`` and
    ``block_size.png`` (without them, ``paired.png``) in ``out``; returns their names."""
    plot_occlusion(sections["main"], runs, size, out / "occlusion.png")
    if "keep_prob" not in sections:
        plot_paired(sections["main"], runs, size, out / "paired.png")
        return ["occlusion.png", "paired.png"]
    sweep, blocks = sections["keep_prob"], sections["block_size"]
    kps = sorted({c.keep_prob for c in sweep.values()}, reverse=True)
    series = {}
    for kind, name in (("dropout", "dropout"), ("dropblock", "DropBlock")):
        for scheduled in (False, True):
            label = f"{name}{', scheduled' if scheduled else ''}"
            series[label] = [
                metric(runs[identity(c)], "test")
                for p in kps
                for c in sweep.values()
                if c.kind == kind and c.scheduled == scheduled and c.keep_prob == p
            ]
    plot_sweep(
        series,
        kps,
        "keep_prob (group 4)",
        "keep_prob sweep (mean and 95% CI)",
        out / "keep_prob.png",
    )
    sizes = [c.block_size for c in blocks.values()]
    plot_sweep(
        {
            "DropBlock, scheduled, keep_prob 0.9": [
                metric(runs[identity(c)], "test") for c in blocks.values()
            ]
        },
        sizes,
        "block_size",
        "block_size sweep (mean and 95% CI)",
        out / "block_size.png",
    )
    return ["occlusion.png", "keep_prob.png", "block_size.png"]


def sweeps_text(sections, runs) -> str:
    """Sections 2 to 4 of the paper grid's ``results.md``."""
    sweep, blocks, masks = (sections[k] for k in ("keep_prob", "block_size", "masks"))

    def dropout_pair(label):  # DropBlock against dropout at the same keep_prob and schedule
        return label.replace("DropBlock", "dropout") if label.startswith("DropBlock") else None

    none = runs[identity(sections["main"]["no regularisation"])]
    sweep_md = sweep_table(sweep, runs, dropout_pair, "dropout", none)
    blocks_md = sweep_table(blocks, runs, lambda label: "block_size 1", "block_size 1", none)
    masks_md = sweep_table(masks, runs, lambda label: "per-channel mask", "per-channel mask", none)
    return f"""
## 2. keep_prob sweep (the paper's Fig. 3a)

DropBlock (block_size 3) against dropout at the same keep_prob and schedule:

{sweep_md}

![keep_prob sweep](keep_prob.png)

## 3. block_size sweep (scheduled, keep_prob 0.9)

{blocks_md}

![block_size sweep](block_size.png)

## 4. Per-channel against shared masks (scheduled, keep_prob 0.9, block_size 3)

{masks_md}
"""


def model_text(args, size: int) -> str:
    """The setup's description of the network and where its regulariser acts."""
    where = (
        "with the keep_prob given for the deeper maps and a quarter of its drop rate in the "
        "others (`jaxdrop.layer_keep_probs`); scheduled = "
        f"`optax.linear_schedule(1.0, keep_prob, {args.steps})`"
    )
    if args.network == "plain":
        side = size // 2
        return (
            f"linen plain network: six 3 x 3 convolutions with ReLU, widths {PLAIN_WIDTHS} in "
            "stages of two with 2 x 2 max pooling between them, no normalisation; the "
            f"regulariser follows each convolution of stages 2 and 3 ({side} x {side} and "
            f"{side // 2} x {side // 2} maps), {where}"
        )
    side = size // 2
    return (
        f"linen ResNet, widths {WIDTHS}, strides {STRIDES}, one basic block per group; groups "
        f"3 and 4 work on {side} x {side} maps; the regulariser follows every convolution and the "
        f"skip connection of groups 3 and 4, {where}"
    )


def wall_text(args) -> str:
    """The wall time of the invocations that trained, as ``runs.json`` keeps it (none in the
    runs stored before it was kept)."""
    if args.wall_seconds is None:
        return ""
    workers = f"{args.jobs} worker processes" if args.jobs > 1 else "one process"
    both = ", both networks at once" if args.both else ""
    return f"{args.wall_seconds:.0f} s of wall time training ({workers}{both}); "


def results_text(sections, runs, args, data, command: str, elapsed: float) -> str:
    """``results.md``: the sections' tables, the figures and the setup."""
    size = data.x_test.shape[1]
    occlusion_md = main_tables(sections["main"], runs, size)
    sweeps_md = sweeps_text(sections, runs) if "keep_prob" in sections else ""
    paired_md = "" if sweeps_md else "\n![paired differences](paired.png)\n"
    sides = ", ".join(f"{occluder_side(f, size)}" for f in OCCLUSION)
    cut = size // 2
    title = "occlusion and sweeps" if sweeps_md else "occlusion"
    network = "plain network" if args.network == "plain" else "small ResNet"
    return f"""# What DropBlock does to a {network} on digits: {title}, with 95% CIs

All accuracies in %, mean over {args.seeds} seeds [95% Student-t interval]. Paired differences are
per-seed differences (same initial parameters and data order), in percentage points; `*` marks an
interval that excludes 0 (significant at the 95% level), and nothing else is a difference.

## 1. Occlusion robustness

{occlusion_md}

![occlusion](occlusion.png)
{paired_md}{sweeps_md}
## Setup

- command: `{command.strip()}`
- data: {data.source}, upsampled to {size} x {size}; {len(data.x_train)} training and
  {len(data.x_test)} test images (fixed stratified split), standardised with the training
  statistics
- model: {model_text(args, size)}
- training: {args.epochs} epochs of {args.steps // args.epochs} steps, batch {args.batch_size},
  Adam with lr {args.lr} and cosine decay; seeds {list(range(args.seeds))}: seed s fixes the
  initial parameters and the data order of every configuration
- Cutout: one {cut} x {cut} patch per training image (centre uniform, cut by the border), painted
  in the background colour, like the test occluders
- RandomErasing: DeiT's settings (`jaxdrop.random_erasing(key, x, 0.25, fill="pixel")`: each
  training image erased with probability 0.25, one rectangle of 2% to 33% of the image, aspect
  0.3 to 3.3, filled with N(0, 1) noise per pixel, not the occluders' background colour)
- occluders: squares of side {sides} pixels wholly inside the {size} x {size} image, in the
  background colour (they erase strokes), one position per test image drawn from a fixed seed,
  shared by all models
- compiled train steps (keep_prob and schedule traced, so one per kind of configuration and
  process that trained it), as counted when each kind was trained: {args.traces}
- time: {wall_text(args)}{args.train_seconds:.0f} s training and evaluating this network's
  models, summed over configurations (and over invocations when a run was continued);
  {elapsed:.0f} s for the invocation that wrote this report
- versions: {report.versions()}, scipy {__import__("scipy").__version__}
- machine: {report.machine()}
"""
