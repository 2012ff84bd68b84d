"""Data: scikit-learn's digits (bundled, so it runs offline) or an .npz, and test-time occluders."""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass
class Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str
    # A raw 0 pixel (the digits' background) after standardisation.
    background: float = 0.0


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
    return Data(x_train, y_train, x_test, y_test, int(labels.max()) + 1, source, float(-mean / std))


def occluder_side(fraction: float, size: int) -> int:
    """The side of a square covering about ``fraction`` of a ``size`` x ``size`` image."""
    return int(round(np.sqrt(fraction) * size))


def occlude(images: np.ndarray, side: int, fill: float, seed: int) -> np.ndarray:
    """Paints one ``side`` x ``side`` square of ``fill`` into each image of ``(N, H, W, C)``.

    The square lies wholly inside the image, at a position uniform over the possible ones, drawn
    per image from ``seed`` alone: the same positions for every model that is evaluated.
    """
    n, h, w = images.shape[:3]
    if side == 0:
        return images
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, h - side + 1, n)
    cols = rng.integers(0, w - side + 1, n)
    out = images.copy()
    for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
        out[i, r : r + side, c : c + side] = fill
    return out
