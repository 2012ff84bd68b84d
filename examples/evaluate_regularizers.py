"""What DropBlock does to a network: occlusion robustness and the paper's sweeps, with 95% CIs.

    python examples/evaluate_regularizers.py [--quick] [--out DIR] [--seeds N] [--epochs E]

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
interrupted run. ``--quick`` (CI) runs a reduced grid on 2 seeds for 1 epoch.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from digits.comparison import plot_sweeps, results_text
from digits.data import load_data
from digits.sweeps import STRIDES, WIDTHS, grid, identity, run_all
from digits.train import total_steps


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

    plot_sweeps(sections, runs, out)
    command = "python examples/evaluate_regularizers.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    text = results_text(sections, runs, args, data, command, elapsed)
    (out / "results.md").write_text(text)
    print(text)
    print(f"wrote {out}/results.md, runs.json, occlusion.png, keep_prob.png, block_size.png")
    return {"sections": sections, "runs": runs}


if __name__ == "__main__":
    main()
