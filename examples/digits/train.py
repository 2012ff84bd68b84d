"""Training: the configurations, and the loop over seeds and epochs with its evaluations and
orbax checkpoints (``--resume``); the train steps are in `trainers.py`."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from .checkpoints import Checkpoints
from .trainers import LinenTrainer, NnxTrainer


@dataclasses.dataclass(frozen=True)
class Config:
    """One regulariser setting; ``None`` fields take the run's ``--keep-prob``, ``--block-size``."""

    name: str
    kind: str  # "none", "dropout", "spatial_dropout" or "dropblock"
    scheduled: bool = False
    calibrate: bool = False
    keep_prob: float | None = None
    block_size: int | None = None
    # Axes that share one mask: (-1,) gives every channel the same mask.
    broadcast_dims: tuple[int, ...] = ()
    # Side of the Cutout patch applied to the training images (0: no Cutout).
    cutout: int = 0
    # Probability of RandomErasing per training image (0: none), DeiT's settings otherwise.
    erasing: float = 0.0


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


@dataclasses.dataclass
class Run:
    """Curves of one configuration and seed, evaluated at `epochs`."""

    epochs: list[int]
    train_acc: list[float]
    test_acc: list[float]
    train_loss: list[float]


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, -1) == labels))


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


def make_trainer(config, data, args):
    trainer_cls = LinenTrainer if args.framework == "linen" else NnxTrainer
    return trainer_cls(config, data, args, total_steps(data, args))


def total_steps(data, args) -> int:
    return args.epochs * max(1, len(data.x_train) // args.batch_size)


def train(
    config, data, args, seeds, progress, *, checkpoint_dir=None, on_trained=None, trainer=None
):
    """Trains `config` once per seed; returns the runs, the traces and the group-3 features of
    the first test image under the last trained state.

    With ``checkpoint_dir``, saves a checkpoint per seed at every evaluation epoch, and with
    ``args.resume`` continues each seed from its latest checkpoint. ``on_trained(seed, trainer,
    state)``, if given, sees each trained model (the evaluation's occlusion tests use it).
    ``trainer`` reuses a (dynamic) trainer, and its compiled step, built for another config.
    """
    n = len(data.x_train)
    steps_per_epoch = max(1, n // args.batch_size)
    trainer = make_trainer(config, data, args) if trainer is None else trainer
    eval_at = set(np.linspace(0, args.epochs, args.evals + 1).round().astype(int).tolist())
    runs, state = [], None
    x_eval = np.concatenate([data.x_train, data.x_test])
    chunk = min(EVAL_CHUNK, len(x_eval))
    for seed in seeds:
        rng = np.random.default_rng(seed)
        state = trainer.init(seed, data.x_train)
        key = jax.random.key(10_000 + seed)
        run = Run([], [], [], [])
        step, losses, start_epoch = 0, [], 1
        ckpt = None
        if checkpoint_dir is not None:
            ckpt = Checkpoints(Path(checkpoint_dir) / f"seed{seed}")
            last = ckpt.latest() if getattr(args, "resume", False) else None
            if last is not None:
                tree, meta = ckpt.load(last, trainer.checkpoint_tree(state))
                state = trainer.restore(state, tree)
                run, step, start_epoch = Run(**meta["run"]), meta["step"], last + 1
                for _ in range(last):  # Replay the data order up to the checkpoint.
                    rng.permutation(n)
                progress.update(step)
        for epoch in range(start_epoch, args.epochs + 1):
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
                if ckpt is not None:
                    meta = {"step": step, "run": dataclasses.asdict(run)}
                    ckpt.save(epoch, trainer.checkpoint_tree(state), meta)
        if ckpt is not None:
            ckpt.close()
        if on_trained is not None:
            on_trained(seed, trainer, state)
        runs.append(run)
    # The group-3 input maps of the first test image, for the feature-map figure.
    features = in_chunks(functools.partial(trainer.features, state), x_eval[n : n + 1], chunk)[0]
    return runs, trainer.traces, features
