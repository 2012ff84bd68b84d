"""The report of `evaluate_regularizers.py`: tables of means and paired differences over seeds
with their 95% intervals, the figures, and ``results.md``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from digits import report, stats
from digits.data import occluder_side
from digits.sweeps import OCCLUSION, STRIDES, WIDTHS, identity


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


def main_tables(main, runs) -> str:
    none = runs[identity(main["no regularisation"])]
    drop = runs[identity(main["dropout"])]
    sides = [occluder_side(f, 16) for f in OCCLUSION]
    head = " | ".join(f"{s} x {s} ({pct(s * s / 256)}%)" if s else "none" for s in sides)

    def table(title, cell, skip=None) -> list[str]:
        """``cell(records, i)`` for every configuration (but ``skip``) and occluder ``i``."""
        lines = [title, "", f"| configuration | {head} |", "|---|" + "---|" * len(sides)]
        for label, config in main.items():
            r = runs[identity(config)]
            if r is not skip:
                cells = [cell(r, i) for i in range(len(sides))]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return lines

    lines = table(
        "Test accuracy (%) by occluder, mean [95% CI]:",
        lambda r, i: interval_cell(metric(r, "occluded", i)),
    )
    for ref_label, ref in (("no regularisation", none), ("dropout", drop)):
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


def plot_occlusion(main, runs, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5), dpi=100)
    ax = fig.subplots()
    x = 100 * np.array([occluder_side(f, 16) ** 2 / 256 for f in OCCLUSION])
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


def plot_sweeps(sections, runs, out: Path) -> None:
    """``occlusion.png``, ``keep_prob.png`` and ``block_size.png`` in ``out``."""
    main_cfg, sweep, blocks = (sections[k] for k in ("main", "keep_prob", "block_size"))
    plot_occlusion(main_cfg, runs, out / "occlusion.png")
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


def results_text(sections, runs, args, data, command: str, elapsed: float) -> str:
    """``results.md``: the four sections' tables, the figures and the setup."""
    main_cfg, sweep, blocks, masks = (
        sections[k] for k in ("main", "keep_prob", "block_size", "masks")
    )

    def dropout_pair(label):  # DropBlock against dropout at the same keep_prob and schedule
        return label.replace("DropBlock", "dropout") if label.startswith("DropBlock") else None

    none = runs[identity(main_cfg["no regularisation"])]
    sweep_md = sweep_table(sweep, runs, dropout_pair, "dropout", none)
    blocks_md = sweep_table(blocks, runs, lambda label: "block_size 1", "block_size 1", none)
    masks_md = sweep_table(masks, runs, lambda label: "per-channel mask", "per-channel mask", none)
    occlusion_md = main_tables(main_cfg, runs)
    sides = ", ".join(f"{occluder_side(f, 16)}" for f in OCCLUSION)
    return f"""# What DropBlock does to a small ResNet on digits: occlusion and sweeps, with 95% CIs

All accuracies in %, mean over {args.seeds} seeds [95% Student-t interval]. Paired differences are
per-seed differences (same initial parameters and data order), in percentage points; `*` marks an
interval that excludes 0 (significant at the 95% level), and nothing else is a difference.

## 1. Occlusion robustness

{occlusion_md}

![occlusion](occlusion.png)

## 2. keep_prob sweep (the paper's Fig. 3a)

DropBlock (block_size 3) against dropout at the same keep_prob and schedule:

{sweep_md}

![keep_prob sweep](keep_prob.png)

## 3. block_size sweep (scheduled, keep_prob 0.9)

{blocks_md}

![block_size sweep](block_size.png)

## 4. Per-channel against shared masks (scheduled, keep_prob 0.9, block_size 3)

{masks_md}

## Setup

- command: `{command.strip()}`
- data: {data.source}, upsampled to 16 x 16; {len(data.x_train)} training and {len(data.x_test)}
  test images (fixed stratified split), standardised with the training statistics
- model: linen ResNet, widths {WIDTHS}, strides {STRIDES}, one basic block per group; groups 3
  and 4 work on 8 x 8 maps; the regulariser follows every convolution and the skip connection of
  groups 3 and 4, with the keep_prob given for group 4 and a quarter of its drop rate in group 3
  (`jaxdrop.layer_keep_probs`); scheduled = `optax.linear_schedule(1.0, keep_prob, {args.steps})`
- training: {args.epochs} epochs of {args.steps // args.epochs} steps, batch {args.batch_size},
  Adam with lr {args.lr} and cosine decay; seeds {list(range(args.seeds))}: seed s fixes the
  initial parameters and the data order of every configuration
- Cutout: one 8 x 8 patch per training image (centre uniform, cut by the border), painted in
  the background colour, like the test occluders
- RandomErasing: DeiT's settings (`jaxdrop.random_erasing(key, x, 0.25, fill="pixel")`: each
  training image erased with probability 0.25, one rectangle of 2% to 33% of the image, aspect
  0.3 to 3.3, filled with N(0, 1) noise per pixel, not the occluders' background colour)
- occluders: squares of side {sides} pixels wholly inside the 16 x 16 image, in the background
  colour (they erase strokes), one position per test image drawn from a fixed seed, shared by all
  models
- compiled train steps (keep_prob and schedule traced, so one per kind of configuration),
  as counted when each kind was trained: {args.traces}
- wall time: {args.train_seconds:.0f} s training and evaluating the models (summed over
  invocations when a run was continued), {elapsed:.0f} s for this invocation
- versions: {report.versions()}, scipy {__import__("scipy").__version__}
- machine: {report.machine()}
"""
