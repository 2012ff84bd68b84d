"""Figures of what PatchDropout and RandomErasing remove, for the docs (needs matplotlib).

    python examples/plot_vision_masks.py [--out docs] [--seed 0]

Writes two PNGs (100 dpi, every panel ``PANEL`` pixels square, titles above):

    OUT/patch_dropout.png   three digits (scikit-learn's, upsampled to 32 x 32, patch 4: an
                            8 x 8 grid of 64 patches), and the patches `jaxdrop.patch_dropout`
                            keeps at keep_prob 0.75, 0.5 and 0.25, drawn once for the batch
                            (one subset per example); dropped patches are grey
    OUT/random_erasing.png  four photographs (scikit-learn's sample images), and
                            `jaxdrop.random_erasing` with p=1 and each fill: "zeros", "channel",
                            "pixel", and "pixel" with max_count=3; the same key in every column,
                            so each row shows the same rectangles with different fills

The regularisers run exactly as in training: PatchDropout on the (64, 16) patch tokens of each
image, with ``return_indices=True`` to read off which were kept; RandomErasing on the images
standardised per channel (what a network sees; the zeros fill is then the mean colour),
displayed after undoing the standardisation, clipped to [0, 1].
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxdrop

DPI = 100
PANEL = 160  # pixels per panel side
HEADER = 36  # pixels for two lines of titles
PAD = 2  # white pixels around each panel
DROPPED_GREY = 0.8


def panel_grid(rows: int, cols: int):
    """A figure of ``rows x cols`` square panels in exact pixels, and its axes ``[row][col]``."""
    from matplotlib.figure import Figure

    width, height = cols * PANEL, rows * PANEL + HEADER
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    axes = []
    for r in range(rows):
        row = []
        for c in range(cols):
            bottom = (rows - 1 - r) * PANEL
            rect = (
                (c * PANEL + PAD) / width,
                (bottom + PAD) / height,
                (PANEL - 2 * PAD) / width,
                (PANEL - 2 * PAD) / height,
            )
            ax = fig.add_axes(rect)
            ax.set_axis_off()
            row.append(ax)
        axes.append(row)
    return fig, axes


def titles(fig, texts: list[str]) -> None:
    for c, text in enumerate(texts):
        fig.text(
            (c + 0.5) / len(texts),
            1 - 2 / fig.bbox.height,
            text,
            ha="center",
            va="top",
            fontsize=9,
        )


def patch_dropout_figure(path: Path, seed: int, keep_probs=(0.75, 0.5, 0.25), patch: int = 4):
    from sklearn.datasets import load_digits

    digits = load_digits()
    # The first 0, 4 and 7: three shapes that fill the grid differently.
    picks = [int(np.flatnonzero(digits.target == d)[0]) for d in (0, 4, 7)]
    small = jnp.asarray(digits.images[picks] / 16.0, jnp.float32)
    images = np.asarray(jax.image.resize(small, (len(picks), 32, 32), "bilinear"))
    n, g = len(picks), 32 // patch
    # (N, 64, 16) patch tokens, row-major over the 8 x 8 grid, as the ViT's patch embedding.
    tokens = images.reshape(n, g, patch, g, patch).transpose(0, 1, 3, 2, 4).reshape(n, g * g, -1)
    fig, axes = panel_grid(n, 1 + len(keep_probs))
    heads = ["input, 32 x 32\n8 x 8 patches of 4 x 4"]
    keys = jax.random.split(jax.random.key(seed), len(keep_probs))
    for r in range(n):
        axes[r][0].imshow(images[r], cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    for c, (kp, key) in enumerate(zip(keep_probs, keys, strict=True), start=1):
        _, idx = jaxdrop.patch_dropout(key, jnp.asarray(tokens), kp, return_indices=True)
        idx = np.asarray(idx)
        heads.append(f"keep_prob {kp}\n{idx.shape[1]} of 64 patches kept")
        for r in range(n):
            kept = np.zeros(g * g, bool)
            kept[idx[r]] = True
            mask = np.kron(kept.reshape(g, g), np.ones((patch, patch), bool))
            # Ink on white where kept; a flat grey where the token is gone.
            rgb = np.repeat((1.0 - images[r])[..., None], 3, axis=2)
            rgb[~mask] = DROPPED_GREY
            ax = axes[r][c]
            ax.imshow(rgb, vmin=0, vmax=1, interpolation="nearest")
            for t in range(1, g):  # the patch grid
                ax.axhline(t * patch - 0.5, color="white", lw=0.5)
                ax.axvline(t * patch - 0.5, color="white", lw=0.5)
    titles(fig, heads)
    fig.savefig(path, dpi=DPI, format="png")
    return fig


def photographs(size: int = 96) -> np.ndarray:
    """Four ``size x size`` RGB crops in [0, 1] of scikit-learn's two sample photographs (427 x 640,
    halved)."""
    from sklearn.datasets import load_sample_image

    crops = []
    for name, corners in (
        ("china.jpg", [(20, 40), (110, 210)]),
        ("flower.jpg", [(60, 100), (118, 190)]),
    ):
        photo = load_sample_image(name)[::2, ::2].astype(np.float32) / 255.0
        crops += [photo[r : r + size, c : c + size] for r, c in corners]
    return np.stack(crops)


def random_erasing_figure(path: Path, seed: int):
    images = photographs()
    mean = images.mean(axis=(0, 1, 2))
    std = images.std(axis=(0, 1, 2))
    standard = jnp.asarray((images - mean) / std)
    columns = [
        ('p=1\nfill="zeros"', dict(fill="zeros")),
        ('p=1\nfill="channel"', dict(fill="channel")),
        ('p=1\nfill="pixel"', dict(fill="pixel")),
        ('p=1, fill="pixel"\nmax_count=3', dict(fill="pixel", max_count=3)),
    ]
    n = len(images)
    fig, axes = panel_grid(n, 1 + len(columns))
    heads = [f"input\n{images.shape[1]} x {images.shape[2]} x 3"]
    key = jax.random.key(seed)
    for r in range(n):
        axes[r][0].imshow(images[r], interpolation="nearest")
    for c, (head, options) in enumerate(columns, start=1):
        heads.append(head)
        # The same key in every column: the same rectangles (they depend on the key only,
        # except that max_count=3 draws its own), filled differently.
        erased = np.asarray(jaxdrop.random_erasing(key, standard, 1.0, **options))
        shown = np.clip(erased * std + mean, 0.0, 1.0)
        for r in range(n):
            axes[r][c].imshow(shown[r], interpolation="nearest")
    titles(fig, heads)
    fig.savefig(path, dpi=DPI, format="png")
    return fig


def main(argv=None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs", help="output directory (docs)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "patch_dropout.png", out / "random_erasing.png"]
    patch_dropout_figure(paths[0], args.seed)
    random_erasing_figure(paths[1], args.seed)
    print("wrote " + ", ".join(map(str, paths)))
    return paths


if __name__ == "__main__":
    main()
