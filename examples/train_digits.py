"""Trains a small ResNet on scikit-learn's digits with and without (scheduled) DropBlock.

    python examples/train_digits.py [--quick] [--out DIR] [--framework linen|nnx] [--seeds N]
                                    [--data FILE.npz] [--epochs E] [--train-size N] ...

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
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxdrop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_resnet import LinenResNet, NnxResNet  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    kind: str  # "none", "dropout", "spatial_dropout" or "dropblock"
    scheduled: bool = False
    calibrate: bool = False


CONFIGS = {
    "none": Config("no regularisation", "none"),
    "dropout": Config("dropout", "dropout"),
    "spatial": Config("SpatialDropout", "spatial_dropout"),
    "dropblock": Config("DropBlock, fixed keep_prob", "dropblock"),
    "scheduled": Config("DropBlock, scheduled", "dropblock", scheduled=True),
    "calibrated": Config(
        "DropBlock, scheduled, calibrate=True", "dropblock", scheduled=True, calibrate=True
    ),
}


# --- data -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str


def load_data(path: str | None, train_size: int, size: int | None) -> Data:
    from sklearn.model_selection import train_test_split

    if path is None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images, labels = digits.images / 16.0, digits.target
        size = 16 if size is None else size
        source = "sklearn.datasets.load_digits"
    else:
        with np.load(path) as f:
            if "images" not in f or "labels" not in f:
                raise ValueError(f"{path} must hold arrays `images` and `labels`, has {f.files}.")
            images, labels = f["images"], f["labels"]
        images = images.astype(np.float32)
        images = images / 255.0 if images.max() > 1.0 else images
        source = os.path.basename(path)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or labels.shape != (images.shape[0],):
        raise ValueError(
            f"`images` must be (N, H, W) or (N, H, W, C) and `labels` (N,), got "
            f"{images.shape} and {labels.shape}."
        )
    labels = labels.astype(np.int32)
    images = images.astype(np.float32)
    if size is not None and images.shape[1:3] != (size, size):
        shape = (images.shape[0], size, size, images.shape[3])
        images = np.asarray(jax.image.resize(jnp.asarray(images), shape, "bilinear"))
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, train_size=train_size, stratify=labels, random_state=0
    )
    # Standardise with the training images' statistics only.
    mean, std = x_train.mean(), x_train.std()
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    return Data(x_train, y_train, x_test, y_test, int(labels.max()) + 1, source)


# --- training ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """Curves of one configuration and seed, evaluated at `epochs`."""

    epochs: list[int]
    train_acc: list[float]
    test_acc: list[float]
    train_loss: list[float]


def keep_prob_schedule(config: Config, keep_prob: float, total_steps: int) -> Callable:
    """Per-group (3, 4) keep probabilities as a function of the step."""
    if config.scheduled:
        # The paper's schedule: keep_prob falls linearly from 1.0 to its target over training.
        schedule = optax.linear_schedule(1.0, keep_prob, total_steps)
    else:
        schedule = optax.constant_schedule(keep_prob)
    # The authors' scaling: group 4 gets the full drop rate, group 3 a quarter of it.
    return jaxdrop.layer_keep_probs(schedule, 2, rule="dropblock")


def init_key(seed: int) -> jax.Array:
    """The key of the parameter initialisers.

    An "rbg" key (XLA's RngBitGenerator): on CPU its initialisers compile in about a third of
    the time of the default threefry's unrolled rounds, which dominates a short run. The
    regularisers' keys stay default (threefry) keys; jaxdrop accepts either.
    """
    return jax.random.key(seed, impl="rbg")


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, -1) == labels))


def loss_fn(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


class LinenTrainer:
    """One jitted train step per configuration, shared by all seeds and steps."""

    def __init__(self, config, data, args, total_steps):
        self.model = LinenResNet(
            data.num_classes, config.kind, args.block_size, calibrate=config.calibrate
        )
        self.tx = optax.adam(optax.cosine_decay_schedule(args.lr, total_steps))
        self.schedule = keep_prob_schedule(config, args.keep_prob, total_steps)
        self.traces = 0
        model, tx, schedule = self.model, self.tx, self.schedule

        @jax.jit
        def train_step(state, step, key, x, y):
            self.traces += 1  # Runs at trace time only: counts compilations.
            params, batch_stats, opt_state = state
            keep_probs = schedule(step)

            def objective(params):
                logits, updates = model.apply(
                    {"params": params, "batch_stats": batch_stats},
                    x,
                    keep_probs,
                    True,
                    rngs={"dropout": key},
                    mutable=["batch_stats"],
                )
                return loss_fn(logits, y), updates["batch_stats"]

            (loss, batch_stats), grads = jax.value_and_grad(objective, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

        self.train_step = train_step
        self.init_fn, self.predict = linen_shared_fns(data.num_classes)

    def init(self, seed, x):
        params, batch_stats = self.init_fn(init_key(seed), x[:1])
        return params, batch_stats, self.tx.init(params)

    def step(self, state, step, key, x, y):
        return self.train_step(state, step, key, x, y)

    def logits(self, state, x):
        return self.predict(state[0], state[1], x)[0]

    def features(self, state, x):
        return self.predict(state[0], state[1], x)[1]


@functools.cache
def linen_shared_fns(num_classes: int):
    """Initialisation and evaluation, compiled once for every configuration.

    The regularisers hold no variables and are the identity in evaluation mode, so every
    configuration has the parameter tree of the plain network and evaluates as it does: one
    compiled init and one compiled evaluation serve them all. (The train steps differ.)
    """
    plain = LinenResNet(num_classes)
    unused = jnp.ones(2, jnp.float32)  # The plain network ignores its keep_probs.

    @jax.jit
    def init(key, x):
        variables = plain.init(key, x, unused, False)
        return variables["params"], variables["batch_stats"]

    @jax.jit
    def predict(params, batch_stats, x):
        variables = {"params": params, "batch_stats": batch_stats}
        logits, inter = plain.apply(variables, x, unused, False, mutable=["intermediates"])
        return logits, inter["intermediates"]["group3_input"][0]

    return init, predict


class NnxTrainer:
    """The same with NNX: `nnx.jit` steps; the model and optimizer carry their state."""

    def __init__(self, config, data, args, total_steps):
        self.config, self.args, self.data = config, args, data
        self.tx = optax.adam(optax.cosine_decay_schedule(args.lr, total_steps))
        self.schedule = schedule = keep_prob_schedule(config, args.keep_prob, total_steps)
        self.traces = 0

        @nnx.jit
        def train_step(model, optimizer, step, x, y):
            self.traces += 1
            keep_probs = schedule(step)

            def objective(model):
                return loss_fn(model(x, keep_probs), y)

            loss, grads = nnx.value_and_grad(objective)(model)
            optimizer.update(model, grads)
            return loss

        @nnx.jit
        def predict(model, x):
            return model(x, schedule(0))

        @nnx.jit
        def features(model, x):
            return model.features(x)

        self._train_step, self._predict, self._features = train_step, predict, features
        self._create = None

    def init(self, seed, x):
        config, args, data = self.config, self.args, self.data

        # Built under nnx.jit: one compilation for all the initialisers (eagerly, every
        # parameter shape would compile its own), reused for every seed.
        @nnx.jit
        def create(key, dropout_key):
            return NnxResNet(
                x.shape[-1],
                data.num_classes,
                kind=config.kind,
                block_size=args.block_size,
                calibrate=config.calibrate,
                rngs=nnx.Rngs(params=key, dropout=dropout_key),
            )

        if self._create is None:
            self._create = create
        model = self._create(init_key(seed), jax.random.key(10_000 + seed))
        optimizer = nnx.Optimizer(model, self.tx, wrt=nnx.Param)
        # An evaluation view sharing the model's variables: BatchNorm uses its running averages
        # and the regularisers are off.
        view = nnx.view(
            model, deterministic=True, use_running_average=True, raise_if_not_found=False
        )
        return model, optimizer, view

    def step(self, state, step, key, x, y):
        model, optimizer, _ = state
        # The NNX modules draw their keys from their own `dropout` streams; `key` is unused.
        return state, self._train_step(model, optimizer, step, x, y)

    def logits(self, state, x):
        return self._predict(state[2], x)

    def features(self, state, x):
        return self._features(state[2], x)


# Evaluation batch: large enough for the digits in one call, small enough for CIFAR-sized data.
EVAL_CHUNK = 2048


def in_chunks(fn: Callable[[np.ndarray], jax.Array], x: np.ndarray, chunk: int) -> np.ndarray:
    """``fn`` over ``x`` in chunks of exactly ``chunk`` rows (the last one padded): one shape,
    so one compilation, whatever the data size."""
    outs = []
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk]
        pad = chunk - len(part)
        if pad:
            part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), part.dtype)])
        outs.append(np.asarray(fn(part))[: chunk - pad])
    return np.concatenate(outs)


def train(config, data, args, seeds, progress):
    """Trains `config` once per seed; returns the runs, the traces and the last trained state."""
    n = len(data.x_train)
    steps_per_epoch = max(1, n // args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    trainer_cls = LinenTrainer if args.framework == "linen" else NnxTrainer
    trainer = trainer_cls(config, data, args, total_steps)
    eval_at = set(np.linspace(0, args.epochs, args.evals + 1).round().astype(int).tolist())
    runs, state = [], None
    x_eval = np.concatenate([data.x_train, data.x_test])
    chunk = min(EVAL_CHUNK, len(x_eval))
    for seed in seeds:
        rng = np.random.default_rng(seed)
        state = trainer.init(seed, data.x_train)
        key = jax.random.key(10_000 + seed)
        run = Run([], [], [], [])
        step, losses = 0, []
        for epoch in range(1, args.epochs + 1):
            order = rng.permutation(n)
            for i in range(steps_per_epoch):
                idx = order[i * args.batch_size : (i + 1) * args.batch_size]
                state, loss = trainer.step(
                    state, step, jax.random.fold_in(key, step), data.x_train[idx], data.y_train[idx]
                )
                losses.append(loss)
                step += 1
                progress.update(1)
            if epoch in eval_at:
                run.epochs.append(epoch)
                run.train_loss.append(float(np.mean(jax.device_get(losses))))
                losses = []
                # One call (one compiled shape) for both sets.
                logits = in_chunks(functools.partial(trainer.logits, state), x_eval, chunk)
                run.train_acc.append(accuracy(logits[:n], data.y_train))
                run.test_acc.append(accuracy(logits[n:], data.y_test))
        runs.append(run)
    # The group-3 input maps of the first test image, for the feature-map figure.
    features = in_chunks(functools.partial(trainer.features, state), x_eval[n : n + 1], chunk)[0]
    return runs, trainer.traces, features


# --- reports ----------------------------------------------------------------------------------


def summarise(runs: list[Run]) -> dict[str, float]:
    test = np.array([r.test_acc[-1] for r in runs])
    train = np.array([r.train_acc[-1] for r in runs])
    gap = train - test
    return {
        "test": test.mean(),
        "test_std": test.std(),
        "train": train.mean(),
        "gap": gap.mean(),
        "gap_std": gap.std(),
        "best_test": np.mean([max(r.test_acc) for r in runs]),
    }


def table(results: dict[str, list[Run]]) -> str:
    lines = [
        "| configuration | test accuracy | train accuracy | train - test gap |",
        "|---|---|---|---|",
    ]
    for name, runs in results.items():
        s = summarise(runs)
        lines.append(
            f"| {name} | {s['test']:.4f} ± {s['test_std']:.4f} | {s['train']:.4f} "
            f"| {s['gap']:.4f} ± {s['gap_std']:.4f} |"
        )
    return "\n".join(lines)


def versions() -> str:
    import matplotlib
    import sklearn

    return ", ".join(
        f"{name} {version}"
        for name, version in [
            ("python", platform.python_version()),
            ("jax", jax.__version__),
            ("flax", flax.__version__),
            ("optax", optax.__version__),
            ("jaxdrop", jaxdrop.__version__),
            ("numpy", np.__version__),
            ("scikit-learn", sklearn.__version__),
            ("matplotlib", matplotlib.__version__),
        ]
    )


def machine() -> str:
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return (
        f"{platform.system()} {platform.machine()}, {usable} usable of {cores} CPU cores, "
        f"jax devices {jax.devices()}"
    )


def plot_curves(results: dict[str, list[Run]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), dpi=100)
    ax_acc, ax_loss = fig.subplots(1, 2)
    for name, runs in results.items():
        epochs = runs[0].epochs
        test = np.array([r.test_acc for r in runs])
        loss = np.array([r.train_loss for r in runs])
        (line,) = ax_acc.plot(epochs, test.mean(0), marker="o", ms=3, label=name)
        if len(runs) > 1:
            ax_acc.fill_between(
                epochs, test.min(0), test.max(0), color=line.get_color(), alpha=0.15, lw=0
            )
        ax_loss.plot(epochs, loss.mean(0), marker="o", ms=3, label=name)
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy (mean, min-max band)")
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="training loss")
    ax_acc.grid(alpha=0.3)
    ax_loss.grid(alpha=0.3)
    ax_acc.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def photo_masks(path: Path, keep_prob: float, seed: int) -> None:
    from sklearn.datasets import load_sample_image

    # A quarter of the resolution (107 x 160), so single dropped units are visible.
    photo = load_sample_image("china.jpg")[::4, ::4]
    jaxdrop.plot_masks(
        jax.random.key(seed), photo, keep_prob=keep_prob, block_sizes=(5, 11, 21), path=path
    )


def feature_masks(path: Path, features: jax.Array, keep_prob: float, block_size: int, seed: int):
    # The six most active channels of one test image's group-3 input maps.
    fmap = np.asarray(features)
    channels = tuple(np.argsort(-fmap.mean(axis=(0, 1)))[:6].tolist())
    # The run's block size, and a larger one (half the map plus one).
    blocks = tuple(sorted({block_size, min(fmap.shape[:2]) // 2 + 1}))
    jaxdrop.plot_masks(
        jax.random.key(seed),
        fmap,
        keep_prob=keep_prob,
        block_sizes=blocks,
        channels=channels,
        path=path,
    )


# --- main -------------------------------------------------------------------------------------


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
            runs, traces[config.name], features = train(config, data, args, seeds, bar)
            results[config.name] = runs
            # The figure shows the maps of the scheduled DropBlock network when it was trained.
            if key == "scheduled" or last is None:
                last = features
    elapsed = time.perf_counter() - start

    md_table = table(results)
    print(md_table)
    print(f"train-step traces per configuration: {traces}")
    plot_curves(results, out / "curves.png")
    photo_masks(out / "masks.png", args.keep_prob, seed=0)
    feature_masks(
        out / "feature_masks.png",
        last,
        args.keep_prob,
        args.block_size,
        seed=0,
    )
    command = "python examples/train_digits.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    report = f"""# jaxdrop: regularising a small ResNet on {data.source}

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
- versions: {versions()}
- machine: {machine()}

![curves](curves.png)

![masks](masks.png)

![feature masks](feature_masks.png)
"""
    (out / "results.md").write_text(report)
    print(f"wrote {out}/results.md, curves.png, masks.png, feature_masks.png ({elapsed:.0f} s)")
    return results


if __name__ == "__main__":
    main()
