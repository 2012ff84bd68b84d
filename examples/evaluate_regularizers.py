"""What DropBlock does to a network: occlusion robustness and the paper's sweeps, with 95% CIs.

    python examples/evaluate_regularizers.py [--quick] [--out DIR] [--seeds N] [--epochs E]
        [--train-size N] [--size {16,32}] [--network {resnet,plain,both}] [--grid {paper,decisive}]
        [--lr LR] [--jobs J] [--rows LABEL [LABEL ...]]

Trains the small ResNet of `train_digits.py` on scikit-learn's digits (upsampled to 16 x 16; with
strides (1, 2, 1, 1) the regularised groups 3 and 4 both work on 8 x 8 maps, so blocks up to
7 x 7 fit) once per configuration and seed, and reports, over the seeds:

1. occlusion robustness: test accuracy with a square occluder of the background colour covering
   0%, about 10%, 25% and 40% of the image (random position per image, the same for every
   model), for no regularisation, dropout, SpatialDropout, DropBlock (fixed, scheduled,
   scheduled with calibrate=True), Cutout, RandomErasing (DeiT's settings) and scheduled
   DropBlock + Cutout;
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
interrupted run (a ``runs.json`` trained with other settings is refused). ``--quick`` (CI) runs
a reduced grid on 2 seeds for 1 epoch.

``--grid decisive`` is the test at 32 x 32 instead: the occlusion section only, at 32 x 32, 25
epochs on 400 training images, for both networks (``--network both``: the ResNet with BatchNorm,
strides (1, 2, 1, 1), regularised on its 16 x 16 maps; and a plain six-convolution network
without normalisation, regularised on its 16 x 16 and 8 x 8 maps), each in ``DIR/<network>/``;
rows: no regularisation, dropout, SpatialDropout, DropBlock blocks 3, 5 and 7 fixed and
scheduled (keep_prob 0.9), Cutout and RandomErasing; divergent runs are counted per row. It
trains in 2 worker processes (``--jobs``), both networks sharing them: one process leaves part
of 2 cores idle. ``--rows`` trains only the rows named (and no regularisation, for the
pairing): with ``--lr`` and another ``--out``, whether a lower learning rate removes a
divergence. Every option given explicitly overrides the grid's defaults.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from pathlib import Path

from digits.comparison import plot_sweeps, results_text
from digits.sweeps import GRIDS, STRIDES, WIDTHS, cached_data, identity, run_all
from digits.train import total_steps

# Per grid: size, epochs, training images, networks, worker processes, output directory.
DEFAULTS = {
    "paper": (16, 20, 300, "resnet", 1, "out/evaluation"),
    "decisive": (32, 25, 400, "both", 2, "out/evaluation-32"),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a reduced grid in about a minute (CI)")
    p.add_argument("--grid", choices=tuple(GRIDS), default="paper", help="(paper)")
    p.add_argument("--out", default=None, help="output directory (out/evaluation[-32])")
    p.add_argument("--seeds", type=int, default=None, help="seeds per configuration (5)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (20; 40)")
    p.add_argument("--train-size", type=int, default=None, help="training images (300; 400)")
    p.add_argument("--size", type=int, choices=(16, 32), default=None, help="input side (16; 32)")
    p.add_argument("--network", choices=("resnet", "plain", "both"), default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3, help="Adam, cosine decay (3e-3)")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (1; 2)")
    p.add_argument(
        "--rows",
        nargs="+",
        default=None,
        metavar="LABEL",
        help="the decisive grid's rows to train (no regularisation always, for the pairing)",
    )
    args = p.parse_args(argv)
    size, epochs, train_size, network, jobs, out = DEFAULTS[args.grid]
    args.jobs = args.jobs or jobs
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    args.seeds = args.seeds or (2 if args.quick else 5)
    if args.seeds < 2:
        p.error(f"--seeds must be at least 2 for a confidence interval, got {args.seeds}")
    args.epochs = args.epochs or (1 if args.quick else epochs)
    args.size, args.network = args.size or size, args.network or network
    args.train_size, args.out = args.train_size or train_size, args.out or out
    # What the shared trainer reads: one evaluation, at the end; keep_prob and block_size come
    # from each configuration.
    args.framework, args.evals, args.keep_prob, args.block_size = "linen", 1, 0.9, 3
    # The ResNet's regularised groups 3 and 4 both on maps of half the input's side.
    args.widths, args.strides = WIDTHS, STRIDES
    return args


def study(args, network: str, out: Path):
    """One network's sections, settings and output directory."""
    args = copy.copy(args)
    args.both, args.network = args.network == "both", network
    data = cached_data(args.train_size, args.size)
    args.steps = total_steps(data, args)
    sections = GRIDS[args.grid](args.quick, args.size)
    if args.rows:
        unknown = set(args.rows) - set(sections["main"])
        if args.grid != "decisive" or unknown:
            raise ValueError(
                f"`--rows` takes labels of the decisive grid {list(sections['main'])}, got "
                f"{args.rows} with --grid {args.grid}."
            )
        keep = ("no regularisation", *args.rows)
        sections["main"] = {k: v for k, v in sections["main"].items() if k in keep}
    distinct = {identity(c) for s in sections.values() for c in s.values()}
    print(
        f"{network}, {data.source}: {len(data.x_train)} train / {len(data.x_test)} test "
        f"images of {data.x_train.shape[1:]}; {len(distinct)} configurations x {args.seeds} "
        f"seeds, {args.epochs} epochs ({args.steps} steps) each"
    )
    out.mkdir(parents=True, exist_ok=True)
    return sections, args, out


def main(argv=None) -> dict:
    """One network: its sections and runs; ``--network both``: those of each, by network."""
    args = parse_args(argv)
    command = "python examples/evaluate_regularizers.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    start = time.perf_counter()
    if args.network == "both":
        studies = [study(args, n, Path(args.out) / n) for n in ("resnet", "plain")]
    else:
        studies = [study(args, args.network, Path(args.out))]
    all_runs = run_all(studies, args.jobs)
    elapsed = time.perf_counter() - start
    results = {}
    for (sections, one, out), runs in zip(studies, all_runs, strict=True):
        data = cached_data(one.train_size, one.size)
        figures = plot_sweeps(sections, runs, one.size, out)
        text = results_text(sections, runs, one, data, command, elapsed)
        (out / "results.md").write_text(text)
        print(text)
        print(f"wrote {out}/results.md, runs.json, " + ", ".join(figures))
        results[one.network] = {"sections": sections, "runs": runs}
    return results if args.network == "both" else results[args.network]


if __name__ == "__main__":
    main()
