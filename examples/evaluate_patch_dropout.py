"""What PatchDropout does to a small ViT on digits: accuracy and training time, with 95% CIs.

    python examples/evaluate_patch_dropout.py [--quick] [--out DIR] [--seeds N] [--epochs E]

Trains the ViT of ``digits/vit.py`` with the benchmark's geometry (patch 4 on 32 x 32 inputs: 64
patch tokens and a CLS token; depth 6, MLP 4x; learned position embeddings added before
PatchDropout, as timm does) but, by default, a third of its width: 64 with 2 heads instead of 192
with 3, and 8 epochs of 1,000 images, so that the 20 trainings of the full study take about a
quarter of an hour on 2 idle CPU cores (estimated from the CPU time of one training; not measured
whole). ``--width 192 --heads 3`` trains the benchmark's ViT itself, about 8 times the compute
per step. The data are scikit-learn's digits, upsampled from 8 x 8 to 32 x 32, and each seed trains
once at each keep_prob of ``--keep-probs`` (1.0, 0.75, 0.5, 0.25). keep_prob 1.0 is the
unmodified model (no ``jaxdrop.patch_dropout`` call); the others keep ``max(1, int(64 *
keep_prob))`` patch tokens per training example, drawn per example, and evaluate on every token.

The design is the paired one of ``evaluate_regularizers.py``: seed ``s`` gives every keep_prob
the same initial parameters and the same data order; every number is a mean over seeds with its
95% Student-t interval, and every comparison with keep_prob 1.0 is the interval of the per-seed
differences, significant only when it excludes 0. Besides accuracy it reports the training time
of each run (steady state: every step after the first, which compiles), since the point of
PatchDropout is to train on fewer tokens.

Writes ``DIR/results.md`` (table, command, versions, wall time) and ``DIR/runs.json`` (every
per-seed number). Finished runs are cached in ``DIR/runs.json``: rerunning the same command
continues an interrupted run. ``--quick`` (CI) trains a 1-block ViT of width 32 on 200 images
for 1 epoch, at keep_prob 1.0 and 0.5, on 2 seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy
from digits import report

# The statistics and table cells of the regularisers' evaluation (the same design).
from digits.comparison import diff_cell, interval_cell, metric, pct
from digits.data import load_data
from digits.train import accuracy, in_chunks
from digits.trainers import init_key, loss_fn
from digits.vit import ViT, kept_tokens

KEEP_PROBS = (1.0, 0.75, 0.5, 0.25)
SIZE, PATCH = 32, 4


def make_model(args, keep_prob: float) -> ViT:
    # keep_prob 1.0 is the unmodified model: no patch_dropout call at all.
    return ViT(
        10,
        keep_prob=None if keep_prob == 1.0 else keep_prob,
        patch=PATCH,
        width=args.width,
        depth=args.depth,
        heads=args.heads,
    )


def make_steps(args, keep_prob: float, total_steps: int):
    """The jitted train step of one keep_prob and the (keep_prob-free) evaluation."""
    model = make_model(args, keep_prob)
    # AdamW with a linear warmup over the first 10% of the steps and a cosine decay, as ViTs
    # are trained (timm's recipes); weight decay 0.05.
    lr = optax.warmup_cosine_decay_schedule(
        0.0, args.lr, max(1, total_steps // 10), total_steps, end_value=args.lr * 0.01
    )
    tx = optax.adamw(lr, weight_decay=args.weight_decay)

    @jax.jit
    def init(key, x):
        params = model.init(key, x, False)["params"]
        return params, tx.init(params)

    @jax.jit
    def train_step(state, key, x, y):
        params, opt_state = state

        def objective(params):
            logits = model.apply({"params": params}, x, True, rngs={"dropout": key})
            return loss_fn(logits, y)

        loss, grads = jax.value_and_grad(objective)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return init, train_step


def predict_fn(args):
    model = make_model(args, 1.0)  # evaluation sees every token, whatever the keep_prob

    @jax.jit
    def predict(params, x):
        return model.apply({"params": params}, x, False)

    return predict


def train_one(args, data, keep_prob, seed, steps, predict) -> dict:
    """One training of ``keep_prob`` from ``seed``; returns its record."""
    init, train_step = steps
    n = len(data.x_train)
    per_epoch = max(1, n // args.batch_size)
    state = init(init_key(seed), jnp.asarray(data.x_train[:1]))
    rng = np.random.default_rng(seed)  # the data order: the same for every keep_prob
    key = jax.random.key(10_000 + seed)  # PatchDropout's keys, folded with the step
    step, first, losses = 0, None, []
    tic = time.perf_counter()
    for _ in range(args.epochs):
        order = rng.permutation(n)
        for i in range(per_epoch):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            state, loss = train_step(
                state, jax.random.fold_in(key, step), data.x_train[idx], data.y_train[idx]
            )
            losses.append(loss)
            if step == 0:
                jax.block_until_ready(loss)
                first = time.perf_counter()
            step += 1
    jax.block_until_ready(state)
    end = time.perf_counter()
    chunk = min(2048, len(data.x_test))
    logits = in_chunks(lambda x: predict(state[0], x), data.x_test, chunk)
    train_logits = in_chunks(lambda x: predict(state[0], x), data.x_train, chunk)
    return {
        "seed": seed,
        "test": accuracy(logits, data.y_test),
        "train": accuracy(train_logits, data.y_train),
        "loss": float(np.mean(jax.device_get(losses[-per_epoch:]))),
        # Steady state: every step after the first (the first one compiles), per step.
        "step_s": (end - first) / max(1, step - 1),
        "first_step_s": first - tic,
    }


def run_all(args, data, out: Path, progress) -> dict[str, list[dict]]:
    """Trains every keep_prob once per seed; reuses what ``runs.json`` already holds."""
    path = out / "runs.json"
    # Through JSON, as it is saved (tuples become lists), so that a saved setup compares equal.
    ident = json.loads(
        json.dumps({k: v for k, v in vars(args).items() if k not in ("out", "seeds")})
    )
    saved = json.loads(path.read_text()) if path.exists() else {}
    runs = saved.get("runs", {}) if saved.get("setup") == ident else {}
    predict = predict_fn(args)
    total = args.epochs * max(1, len(data.x_train) // args.batch_size)
    for kp in args.keep_probs:
        records = runs.setdefault(str(kp), [])
        todo = [s for s in range(args.seeds) if s not in {r["seed"] for r in records}]
        progress.update(args.seeds - len(todo))
        if not todo:
            continue
        steps = make_steps(args, kp, total)
        for seed in todo:
            progress.set_description(f"keep_prob {kp}, seed {seed}")
            records.append(train_one(args, data, kp, seed, steps, predict))
            path.write_text(json.dumps({"setup": ident, "runs": runs}, indent=1))
            progress.update(1)
    return runs


def results_table(args, runs, tokens: int) -> str:
    base = runs[str(1.0)]
    base_step = np.median(metric(base, "step_s"))
    lines = [
        "| keep_prob | patch tokens kept | test accuracy (%) | paired difference vs 1.0 (pp) "
        "| train accuracy (%) | step time vs 1.0 (median) | tokens kept vs 1.0 |",
        "|---|---|---|---|---|---|---|",
    ]
    for kp in args.keep_probs:
        r = runs[str(kp)]
        kept = tokens if kp == 1.0 else kept_tokens(tokens, kp)
        diff = "" if kp == 1.0 else diff_cell(metric(r, "test"), metric(base, "test"))
        step = np.median(metric(r, "step_s")) / base_step
        # With the CLS token, which is always kept.
        proportional = (kept + 1) / (tokens + 1)
        lines.append(
            f"| {kp} | {kept} of {tokens} | {interval_cell(metric(r, 'test'))} | {diff} "
            f"| {pct(metric(r, 'train').mean())} | {step:.2f} | {proportional:.2f} |"
        )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a tiny ViT, 2 seeds, 1 epoch (CI)")
    p.add_argument("--out", default="out/patch_dropout", help="output directory")
    p.add_argument("--seeds", type=int, default=None, help="seeds per keep_prob (5)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (8)")
    p.add_argument("--train-size", type=int, default=None, help="training images (1000)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate (2e-3)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--width", type=int, default=None, help="token width (64; quick: 32)")
    p.add_argument("--depth", type=int, default=None, help="transformer blocks (6; quick: 1)")
    p.add_argument("--heads", type=int, default=None, help="attention heads (2)")
    p.add_argument(
        "--keep-probs",
        type=lambda s: tuple(float(v) for v in s.split(",")),
        default=None,
        help="comma-separated; must include 1.0 (1.0,0.75,0.5,0.25)",
    )
    args = p.parse_args(argv)
    args.seeds = args.seeds or (2 if args.quick else 5)
    if args.seeds < 2:
        p.error(f"--seeds must be at least 2 for a confidence interval, got {args.seeds}")
    args.epochs = args.epochs or (1 if args.quick else 8)
    args.train_size = args.train_size or (200 if args.quick else 1000)
    args.keep_probs = args.keep_probs or ((1.0, 0.5) if args.quick else KEEP_PROBS)
    if 1.0 not in args.keep_probs:
        p.error(f"--keep-probs must include 1.0 (the reference), got {args.keep_probs}")
    # The model: the benchmark's geometry at a third of its width (see the docstring), or a
    # tiny one for --quick.
    args.depth = args.depth or (1 if args.quick else 6)
    args.width = args.width or (32 if args.quick else 64)
    args.heads = args.heads or 2
    return args


def main(argv=None) -> dict:
    from tqdm import tqdm

    args = parse_args(argv)
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(None, args.train_size, SIZE)
    tokens = (SIZE // PATCH) ** 2
    steps = args.epochs * max(1, len(data.x_train) // args.batch_size)
    print(
        f"{data.source}: {len(data.x_train)} train / {len(data.x_test)} test images of "
        f"{data.x_train.shape[1:]}; keep_probs {args.keep_probs} x {args.seeds} seeds, "
        f"{args.epochs} epochs ({steps} steps) each"
    )
    total = len(args.keep_probs) * args.seeds
    with tqdm(total=total, unit="run", file=sys.stderr) as bar:
        runs = run_all(args, data, out, bar)
    elapsed = time.perf_counter() - start
    command = "python examples/evaluate_patch_dropout.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    text = f"""# What PatchDropout does to a small ViT on digits: accuracy and step time (95% CIs)

Test accuracy in %, mean over {args.seeds} seeds [95% Student-t interval]; paired differences
against keep_prob 1.0 (the unmodified model) are per-seed differences (same initial parameters
and data order), in percentage points; `*` marks an interval that excludes 0 (significant at the
95% level), and nothing else is a difference. Train accuracy: mean over seeds, on every token.
Step time: the median over seeds of each run's mean steady-state step, as a ratio to keep_prob
1.0's; "tokens kept" is the ratio expected if the cost were proportional to the tokens the
blocks see (patch tokens kept plus the CLS token).

{results_table(args, runs, tokens)}

## Setup

- command: `{command.strip()}`
- data: {data.source}, upsampled to {SIZE} x {SIZE} (bilinear); {len(data.x_train)} training and
  {len(data.x_test)} test images (fixed stratified split), standardised with the training
  statistics
- model: linen ViT, patch {PATCH} ({tokens} patch tokens and a CLS token), depth {args.depth},
  width {args.width}, {args.heads} heads, MLP 4x; learned position embeddings added before
  `jaxdrop.patch_dropout(key, tokens, keep_prob, num_prefix_tokens=1)` (training only)
- training: {args.epochs} epochs of {steps // args.epochs} steps, batch {args.batch_size}, AdamW
  (weight decay {args.weight_decay}), peak lr {args.lr} after a 10% linear warmup, cosine
  decay; seeds {list(range(args.seeds))}: seed s fixes the initial parameters and the data
  order at every keep_prob
- wall time: {elapsed:.0f} s for this invocation (load average at the end:
  {", ".join(f"{v:.1f}" for v in os.getloadavg())})
- versions: {report.versions()}, scipy {scipy.__version__}
- machine: {report.machine()}
"""
    (out / "results.md").write_text(text)
    print(text)
    print(f"wrote {out}/results.md, runs.json")
    return {"runs": runs, "args": args}


if __name__ == "__main__":
    main()
