"""Reports: the results table, versions and machine, and the figures of `train_digits.py`."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import flax
import jax
import numpy as np
import optax

import jaxdrop

from .train import Run


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
