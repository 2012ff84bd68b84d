"""Trains a small ResNet on scikit-learn's digits with and without (scheduled) DropBlock.

    python examples/train_digits.py [--quick] [--out DIR] [--framework linen|nnx] [--seeds N]
                                    [--data FILE.npz] [--epochs E] [--train-size N] [--resume] ...

Compares, over several seeds: no regularisation, dropout, SpatialDropout, DropBlock with a fixed
keep_prob, scheduled DropBlock (keep_prob falling linearly from 1.0 with an optax schedule) and
scheduled DropBlock with ``calibrate=True``. Every regulariser sits where the DropBlock paper puts
DropBlock (after the convolutions and on the skip connections of ResNet groups 3 and 4, group 4
with the full drop rate and group 3 a quarter of it: ``jaxdrop.layer_keep_probs``). Prints a table
of test accuracy (mean +- standard deviation over seeds) and train-test gap, and writes:

    DIR/results.md          the table, the command, the versions and the machine
    DIR/curves.png          test accuracy and training loss against epochs, per configuration
    DIR/masks.png           what each method drops from a photograph (load_sample_image)
    DIR/feature_masks.png   the same on the feature maps of a trained network (group 3 input)

Data: by default ``sklearn.datasets.load_digits`` (1,797 images of 8 x 8, shipped with
scikit-learn, so it runs offline), upsampled to 16 x 16 so that 3 x 3 blocks have room in the
8 x 8 maps of group 3, with a fixed stratified split of ``--train-size`` (300) training images;
the rest are the test set. ``--data FILE.npz`` uses your own data instead: an ``.npz`` with
``images`` of shape ``(N, H, W)`` or ``(N, H, W, C)`` (any real dtype; divided by 255 if the
maximum is above 1) and integer ``labels`` of shape ``(N,)`` in ``[0, num_classes)``, e.g.
CIFAR-10 saved with ``np.savez("cifar10.npz", images=x, labels=y)``. Images are resized to
``--size`` (default: 16 for digits, unchanged for your data).

Each configuration compiles one train step, reused for every seed and step: the schedule's
keep_prob is a traced argument of the modules, never a retrace (results.md reports the trace
counts). ``--quick`` (what CI runs) trains every configuration for a few epochs on one seed, in
under a minute on 2 idle cores; the default run takes a few minutes.

``--checkpoint-dir DIR`` saves an orbax checkpoint per configuration and seed at every
evaluation epoch (parameters, batch statistics, optimizer state, step, curves so far, and for NNX
the regularisers' rng streams); ``--resume`` continues from the latest ones. The regularisers'
keys are folded from the step (linen) or restored with their streams (NNX), and the data order is
replayed from the seed, so an interrupted and resumed run ends exactly where the uninterrupted
one does, having drawn the same masks.

The pieces (data, model, training, reports) live in the ``digits`` package beside this script.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from digits import report
from digits.data import load_data
from digits.train import CONFIGS, Run, train


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a run of under a minute (CI)")
    p.add_argument("--out", default="out", help="output directory (default: out)")
    p.add_argument("--framework", choices=("linen", "nnx"), default="linen")
    p.add_argument("--data", default=None, help="an .npz with `images` and `labels`")
    p.add_argument("--seeds", type=int, default=None, help="seeds per configuration (3)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (40)")
    p.add_argument("--train-size", type=int, default=300, help="training images (300)")
    p.add_argument("--size", type=int, default=None, help="resize images to SIZE x SIZE")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3, help="Adam, cosine decay (3e-3)")
    p.add_argument("--keep-prob", type=float, default=0.9, help="target keep_prob, group 4")
    p.add_argument("--block-size", type=int, default=3)
    p.add_argument("--evals", type=int, default=None, help="evaluations over training (10)")
    p.add_argument(
        "--checkpoint-dir", default=None, help="save orbax checkpoints here (one per evaluation)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoints in it"
    )
    p.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help=f"comma-separated subset of {','.join(CONFIGS)}",
    )
    args = p.parse_args(argv)
    quick = args.quick
    args.seeds = args.seeds or (1 if quick else 3)
    args.epochs = args.epochs or (4 if quick else 40)
    args.evals = args.evals or (2 if quick else 10)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = sorted(set(args.configs) - set(CONFIGS))
    if unknown:
        p.error(f"unknown --configs {unknown}; choose from {list(CONFIGS)}")
    if args.resume and args.checkpoint_dir is None:
        p.error("--resume needs --checkpoint-dir")
    return args


def main(argv=None) -> dict[str, list[Run]]:
    from tqdm import tqdm

    args = parse_args(argv)
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(args.data, args.train_size, args.size)
    seeds = list(range(args.seeds))
    steps = args.epochs * max(1, len(data.x_train) // args.batch_size)
    print(
        f"{data.source}: {len(data.x_train)} train / {len(data.x_test)} test images of "
        f"{data.x_train.shape[1:]}, {data.num_classes} classes; {args.framework}, "
        f"{args.epochs} epochs ({steps} steps), seeds {seeds}"
    )
    results, traces, last = {}, {}, None
    with tqdm(total=steps * len(seeds) * len(args.configs), unit="step", file=sys.stderr) as bar:
        for key in args.configs:
            config = CONFIGS[key]
            bar.set_description(config.name)
            ckpt = None if args.checkpoint_dir is None else Path(args.checkpoint_dir) / key
            runs, traces[config.name], features = train(
                config, data, args, seeds, bar, checkpoint_dir=ckpt
            )
            results[config.name] = runs
            # The figure shows the maps of the scheduled DropBlock network when it was trained.
            if key == "scheduled" or last is None:
                last = features
    elapsed = time.perf_counter() - start

    md_table = report.table(results)
    print(md_table)
    print(f"train-step traces per configuration: {traces}")
    report.plot_curves(results, out / "curves.png")
    report.photo_masks(out / "masks.png", args.keep_prob, seed=0)
    report.feature_masks(
        out / "feature_masks.png",
        last,
        args.keep_prob,
        args.block_size,
        seed=0,
    )
    command = "python examples/train_digits.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    text = f"""# jaxdrop: regularising a small ResNet on {data.source}

{md_table}

Test accuracy at the end of training, mean ± standard deviation over {len(seeds)} seed(s)
{seeds}; the gap is train accuracy minus test accuracy (both in evaluation mode).

- command: `{command.strip()}`
- data: {data.source}, {len(data.x_train)} training and {len(data.x_test)} test images of
  {data.x_train.shape[1:]} (fixed stratified split), {data.num_classes} classes
- model: {args.framework} ResNet, widths (16, 32, 48, 64), one basic block per group; the
  regulariser follows every convolution and the skip connection of groups 3 and 4
- training: {args.epochs} epochs of {steps // args.epochs} steps, batch {args.batch_size}, Adam
  with lr {args.lr} and cosine decay; target keep_prob {args.keep_prob} in group 4 and
  {1 - (1 - args.keep_prob) / 4:.4f} in group 3; DropBlock block_size {args.block_size};
  scheduled = `optax.linear_schedule(1.0, {args.keep_prob}, {steps})`
- train-step traces per configuration (1 = no retrace when keep_prob changes): {traces}
- wall time: {elapsed:.0f} s for training and evaluation
- versions: {report.versions()}
- machine: {report.machine()}

![curves](curves.png)

![masks](masks.png)

![feature masks](feature_masks.png)
"""
    (out / "results.md").write_text(text)
    print(f"wrote {out}/results.md, curves.png, masks.png, feature_masks.png ({elapsed:.0f} s)")
    return results


if __name__ == "__main__":
    main()
