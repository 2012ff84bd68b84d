"""What DropBlock does to a network: occlusion robustness and the paper's sweeps, with 95% CIs.

    python examples/evaluate_regularizers.py [--quick] [--out DIR] [--seeds N] [--epochs E]

Trains the small ResNet of `train_digits.py` on scikit-learn's digits (upsampled to 16 x 16; with
strides (1, 2, 1, 1) the regularised groups 3 and 4 both work on 8 x 8 maps, so blocks up to
7 x 7 fit) once per configuration and seed, and reports, over the seeds:

1. occlusion robustness: test accuracy with a square occluder of the background colour covering
   0%, about 10%, 25% and 40% of the image (random position per image, the same for every
   model), for no regularisation, dropout, SpatialDropout, DropBlock (fixed, scheduled,
   scheduled with calibrate=True), Cutout and scheduled DropBlock + Cutout;
2. the keep_prob sweep of the paper's Fig. 3a: dropout and DropBlock at keep_prob 0.95, 0.9,
   0.8 and 0.7, with and without the linear schedule;
3. the block_size sweep: scheduled DropBlock with block_size 1 (a unit: dropout's mask with
   DropBlock's gamma), 3, 5 and 7;
4. per-channel masks against one mask shared across channels (``broadcast_dims=(-1,)``).

Every number is a mean over seeds with its 95% Student-t interval, and every comparison is
paired: seed ``s`` gives every configuration the same initial parameters and the same data order,
and the interval is that of the per-seed differences. A difference counts as significant only
when its interval excludes 0.

Writes ``DIR/results.md`` (tables, command, versions, wall time), ``DIR/runs.json`` (every
per-seed number), and ``DIR/occlusion.png``, ``DIR/keep_prob.png``, ``DIR/block_size.png``.
Finished runs are cached in ``DIR/runs.json``: rerunning the same command continues an
interrupted run. ``--quick`` (CI) runs a reduced grid on 2 seeds for 1 epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from digits import report, stats
from digits.data import load_data, occlude, occluder_side
from digits.train import Config, LinenTrainer, accuracy, in_chunks, total_steps, train

# The image fractions the occluder covers (its side is rounded to whole pixels).
OCCLUSION = (0.0, 0.10, 0.25, 0.40)
KEEP_PROBS = (0.95, 0.9, 0.8, 0.7)
BLOCK_SIZES = (1, 3, 5, 7)
# The model: groups 3 and 4 (the regularised ones) on 8 x 8 maps of a 16 x 16 input.
WIDTHS = (16, 32, 32, 32)
STRIDES = (1, 2, 1, 1)


def dropout(kp: float, scheduled: bool) -> Config:
    return Config(
        f"dropout {kp}{', scheduled' if scheduled else ''}", "dropout", scheduled, False, kp
    )


def dropblock(kp: float, scheduled: bool, block_size: int = 3, **kw) -> Config:
    name = f"DropBlock {kp}{', scheduled' if scheduled else ''}, block {block_size}"
    return Config(name, "dropblock", scheduled, keep_prob=kp, block_size=block_size, **kw)


def grid(quick: bool) -> dict[str, dict[str, Config]]:
    """The configurations of each section, by their row label."""
    kp, cut = 0.9, 8  # Cutout: an 8 x 8 patch, a quarter of the image.
    main = {
        "no regularisation": Config("none", "none"),
        "dropout": dropout(kp, False),
        "SpatialDropout": Config("SpatialDropout 0.9", "spatial_dropout", keep_prob=kp),
        "DropBlock, fixed": dropblock(kp, False),
        "DropBlock, scheduled": dropblock(kp, True),
        "DropBlock, scheduled, calibrate=True": dropblock(kp, True, calibrate=True),
        "Cutout 8 x 8": Config("Cutout 8", "none", cutout=cut),
        "DropBlock, scheduled + Cutout": dropblock(kp, True, cutout=cut),
    }
    kps, sizes = ((0.9, 0.7), (1, 3)) if quick else (KEEP_PROBS, BLOCK_SIZES)
    if quick:
        keep = ("no regularisation", "dropout", "DropBlock, fixed", "DropBlock, scheduled")
        main = {k: main[k] for k in keep}
    sweep = {}
    for p in kps:
        for scheduled in (False, True):
            tag = ", scheduled" if scheduled else ""
            sweep[f"dropout {p}{tag}"] = dropout(p, scheduled)
            sweep[f"DropBlock {p}{tag}"] = dropblock(p, scheduled)
    blocks = {f"block_size {b}": dropblock(kp, True, b) for b in sizes}
    masks = {
        "per-channel mask": dropblock(kp, True),
        "shared across channels": dropblock(kp, True, broadcast_dims=(-1,)),
    }
    return {"main": main, "keep_prob": sweep, "block_size": blocks, "masks": masks}


def identity(config: Config) -> str:
    """A config's identity without its label: rows of different sections that are the same
    configuration share one set of trained models."""
    return json.dumps({k: v for k, v in dataclasses.asdict(config).items() if k != "name"})


def static_part(config: Config) -> Config:
    """What the compiled train step depends on (the keep_prob and the schedule are traced)."""
    return dataclasses.replace(config, name="", keep_prob=None, scheduled=False)


def static_label(static: Config) -> str:
    parts = [static.kind]
    if static.kind == "dropblock":
        parts.append(f"block {static.block_size}")
    if static.calibrate:
        parts.append("calibrate")
    if static.broadcast_dims:
        parts.append(f"broadcast_dims {static.broadcast_dims}")
    if static.cutout:
        parts.append(f"Cutout {static.cutout}")
    return ", ".join(parts)


def run_all(sections, data, args, out: Path, progress) -> dict[str, list[dict]]:
    """Trains every distinct configuration once per seed; returns per-seed records by identity.

    A record holds the clean test accuracy and the accuracy at each occluder size. Records are
    saved to ``runs.json`` as they finish, and those already there are reused.
    """
    cache_path = out / "runs.json"
    saved = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    cache, seconds = saved.get("runs", {}), saved.get("seconds", {})
    traces = saved.get("traces", {})
    n_test, size = len(data.x_test), data.x_test.shape[1]
    occluded = [
        occlude(data.x_test, occluder_side(f, size), data.background, seed=1_000 + i)
        for i, f in enumerate(OCCLUSION)
    ]
    configs = {}
    for section in sections.values():
        for config in section.values():
            configs.setdefault(identity(config), config)
    trainers = {}
    for ident, config in configs.items():
        done = cache.get(ident, [])
        seeds = [s for s in range(args.seeds) if s >= len(done)]
        if not seeds:
            progress.update(args.steps * args.seeds)
            continue
        progress.update(args.steps * (args.seeds - len(seeds)))
        progress.set_description(config.name)
        static = static_part(config)
        if static not in trainers:
            trainers[static] = LinenTrainer(
                config, data, args, total_steps(data, args), dynamic=True
            )
        trainer = trainers[static]
        trainer.configure(config)
        records = list(done)
        tic = time.perf_counter()

        def evaluate(seed, trainer, state, records=records):
            logits = [in_chunks(lambda x: trainer.logits(state, x), x, n_test) for x in occluded]
            records.append(
                {
                    "seed": seed,
                    "test": accuracy(logits[0], data.y_test),
                    "occluded": [accuracy(lg, data.y_test) for lg in logits],
                }
            )

        runs, _, _ = train(
            config, data, args, seeds, progress, on_trained=evaluate, trainer=trainer
        )
        for record, run in zip(records[len(done) :], runs, strict=True):
            record["train"] = run.train_acc[-1]
        cache[ident] = records
        seconds[ident] = seconds.get(ident, 0.0) + time.perf_counter() - tic
        traces[static_label(static)] = trainer.traces
        saved = {"runs": cache, "seconds": seconds, "traces": traces}
        cache_path.write_text(json.dumps(saved, indent=1))
    args.traces = traces
    args.train_seconds = sum(seconds.values())
    return cache


# --- the report -------------------------------------------------------------------------------


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
    lines = [
        "Test accuracy (%) by occluder, mean [95% CI]:",
        "",
        f"| configuration | {head} |",
        "|---|" + "---|" * len(sides),
    ]
    for label, config in main.items():
        r = runs[identity(config)]
        cells = [interval_cell(metric(r, "occluded", i)) for i in range(len(sides))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for ref_label, ref in (("no regularisation", none), ("dropout", drop)):
        lines += [
            "",
            f"Paired difference against {ref_label} (percentage points, mean [95% CI]; "
            "* = the interval excludes 0):",
            "",
            f"| configuration | {head} |",
            "|---|" + "---|" * len(sides),
        ]
        for label, config in main.items():
            r = runs[identity(config)]
            if r is ref:
                continue
            cells = [
                diff_cell(metric(r, "occluded", i), metric(ref, "occluded", i))
                for i in range(len(sides))
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a reduced grid in about a minute (CI)")
    p.add_argument("--out", default="out/evaluation", help="output directory")
    p.add_argument("--seeds", type=int, default=None, help="seeds per configuration (5)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (20)")
    p.add_argument("--train-size", type=int, default=300, help="training images (300)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3, help="Adam, cosine decay (3e-3)")
    args = p.parse_args(argv)
    args.seeds = args.seeds or (2 if args.quick else 5)
    if args.seeds < 2:
        p.error(f"--seeds must be at least 2 for a confidence interval, got {args.seeds}")
    args.epochs = args.epochs or (1 if args.quick else 20)
    # What the shared trainer reads: one evaluation, at the end; keep_prob and block_size come
    # from each configuration.
    args.framework, args.evals, args.keep_prob, args.block_size = "linen", 1, 0.9, 3
    args.widths, args.strides = WIDTHS, STRIDES
    return args


def main(argv=None) -> dict:
    from tqdm import tqdm

    args = parse_args(argv)
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(None, args.train_size, 16)
    args.steps = total_steps(data, args)
    sections = grid(args.quick)
    distinct = {identity(c) for s in sections.values() for c in s.values()}
    print(
        f"{data.source}: {len(data.x_train)} train / {len(data.x_test)} test images of "
        f"{data.x_train.shape[1:]}; {len(distinct)} configurations x {args.seeds} seeds, "
        f"{args.epochs} epochs ({args.steps} steps) each"
    )
    with tqdm(total=args.steps * args.seeds * len(distinct), unit="step", file=sys.stderr) as bar:
        runs = run_all(sections, data, args, out, bar)
    elapsed = time.perf_counter() - start

    main_cfg, sweep, blocks, masks = (
        sections[k] for k in ("main", "keep_prob", "block_size", "masks")
    )
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

    def dropout_pair(label):  # DropBlock against dropout at the same keep_prob and schedule
        return label.replace("DropBlock", "dropout") if label.startswith("DropBlock") else None

    none = runs[identity(main_cfg["no regularisation"])]
    sweep_md = sweep_table(sweep, runs, dropout_pair, "dropout", none)
    blocks_md = sweep_table(blocks, runs, lambda label: "block_size 1", "block_size 1", none)
    masks_md = sweep_table(masks, runs, lambda label: "per-channel mask", "per-channel mask", none)
    occlusion_md = main_tables(main_cfg, runs)
    command = "python examples/evaluate_regularizers.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    sides = ", ".join(f"{occluder_side(f, 16)}" for f in OCCLUSION)
    text = f"""# What DropBlock does to a small ResNet on digits: occlusion and sweeps, with 95% CIs

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
    (out / "results.md").write_text(text)
    print(text)
    print(f"wrote {out}/results.md, runs.json, occlusion.png, keep_prob.png, block_size.png")
    return {"sections": sections, "runs": runs}


if __name__ == "__main__":
    main()
