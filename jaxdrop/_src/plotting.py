"""Pictures of what each method drops, like Figure 1 of the DropBlock paper (needs matplotlib)."""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrop._src import checks
from jaxdrop._src.cutout import cutout
from jaxdrop._src.dropblock import dropblock
from jaxdrop._src.dropout import dropout
from jaxdrop._src.spatial_dropout import spatial_dropout

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Height of the column titles (two lines of 9-point text at 100 dpi), in pixels.
HEADER_PX = 36
DPI = 100
# White margin around each panel, in pixels.
PAD_PX = 2


def _import_matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "`jaxdrop.plot_masks` needs matplotlib, which is optional: install it with "
            "`pip install 'jaxdrop[plot]'` (or `pip install matplotlib`)."
        ) from e
    return Figure


@dataclasses.dataclass(frozen=True)
class _Panel:
    """One column of the figure: a title and the method, ``fn(key, x)``."""

    title: str
    fn: Callable[[jax.Array, jax.Array], jax.Array]
    # Whether the method may run on one channel and have its mask broadcast over the others.
    # SpatialDropout (whole channels) and Cutout (every channel of a patch) define their own
    # relation between channels, so they always see them all.
    shareable: bool


def _panels(keep_prob: float, block_sizes: Sequence[int], cutout_size: int) -> list[_Panel]:
    panels = [
        _Panel("dropout", lambda k, x: dropout(k, x, keep_prob), shareable=True),
        _Panel("SpatialDropout", lambda k, x: spatial_dropout(k, x, keep_prob), shareable=False),
    ]
    for b in block_sizes:
        panels.append(
            _Panel(
                f"DropBlock {b}x{b}",
                lambda k, x, b=b: dropblock(k, x, keep_prob, b),
                shareable=True,
            )
        )
    panels.append(
        _Panel(
            f"Cutout {cutout_size}x{cutout_size}",
            lambda k, x: cutout(k, x, cutout_size),
            shareable=False,
        )
    )
    return panels


def plot_masks(
    rng: jax.Array,
    x: jax.typing.ArrayLike,
    *,
    keep_prob: float = 0.85,
    block_sizes: Sequence[int] = (3, 7, 15),
    cutout_size: int | None = None,
    channels: Sequence[int] | None = None,
    share_channels: bool | None = None,
    panel_px: int = 160,
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    r"""Draws what dropout, SpatialDropout, DropBlock and Cutout remove from an image or features.

    A grid like Figure 1 of the DropBlock paper: the first column is the input, then one column
    per method, each applied once (with its own key) to the whole input by the public jaxdrop
    function: :func:`jaxdrop.dropout`, :func:`jaxdrop.spatial_dropout`, :func:`jaxdrop.dropblock`
    at each of ``block_sizes``, and :func:`jaxdrop.cutout`. Dropout removes scattered units,
    SpatialDropout whole channels, DropBlock contiguous regions and Cutout one square of the input.
    Each column's title gives the fraction of units kept.

    Two layouts:

    * **image** (default for 3 channels): one row, the image in colour. Dropped pixels are black,
      which is what the network sees. With ``share_channels`` (default on for images) dropout and
      DropBlock draw one mask per pixel, shared by the colour channels, as in the paper's figure;
      SpatialDropout drops whole colour planes either way, which is its definition.
    * **feature maps**: one row per channel in ``channels`` (default: the first four), each
      normalised to its own range in grey, with dropped units painted red. Masks are drawn over
      all channels at once, as inside a network, so the rows of one column come from one draw.

    Every panel is ``panel_px`` pixels high and ``round(panel_px * W / H)`` wide, so the PNG is
    exactly ``(len(block_sizes) + 4) * round(panel_px * W / H)`` pixels wide (input, dropout,
    SpatialDropout, the DropBlocks, Cutout) and ``rows * panel_px + 36`` high (the 36 pixels hold
    the column titles), at 100 dpi.

    Args:
      rng: a PRNG key, typed (``jax.random.key``) or legacy (``jax.random.PRNGKey``).
      x: an image or feature map of shape ``(H, W, C)`` (or ``(H, W)``, one channel), floating
        or integer. An RGB image may be in [0, 1] or [0, 255].
      keep_prob: the keep probability of dropout, SpatialDropout and DropBlock.
      block_sizes: the DropBlock block sizes to show, one column each.
      cutout_size: the side of the Cutout square; by default half the smaller spatial side, as
        DeVries and Taylor used on CIFAR-10 (16 of 32).
      channels: the channels to show as rows (feature-map layout). ``None``: the image layout
        for 3 channels, otherwise the first four channels.
      share_channels: share dropout's and DropBlock's masks across channels
        (``broadcast_dims=(-1,)``); default: on in the image layout, off otherwise.
      panel_px: the height of one panel, in pixels.
      path: if given, the PNG is written there.

    Returns:
      The ``matplotlib.figure.Figure`` (not attached to pyplot, so it needs no backend and is
      freed with its last reference).

    Raises:
      ImportError: if matplotlib is not installed (``pip install 'jaxdrop[plot]'``).
      TypeError: if ``rng`` is not a PRNG key.
      ValueError: if ``rng`` is a batch of keys, ``x`` is not 2-D or 3-D, ``keep_prob`` is
        outside [0, 1], a size is not a positive int, or a channel is out of range.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop
      >>> x = jax.random.uniform(jax.random.key(1), (32, 32, 3))
      >>> fig = jaxdrop.plot_masks(jax.random.key(0), x, block_sizes=(3, 7))
      >>> [round(v) for v in fig.get_size_inches() * fig.dpi]  # 6 panels of 160 px, + titles
      [960, 196]
      >>> fig.savefig("masks.png")  # doctest: +SKIP

    References:
      Ghiasi et al, `DropBlock: A regularization method for convolutional networks
      <https://arxiv.org/abs/1810.12890>`_, 2018 (Figure 1)

      DeVries and Taylor, `Improved Regularization of Convolutional Neural Networks with Cutout
      <https://arxiv.org/abs/1708.04552>`_, 2017
    """
    checks.check_key(rng)
    Figure = _import_matplotlib()
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3:
        raise ValueError(f"`x` must have shape (H, W, C) or (H, W), got shape {x.shape}.")
    h, w, c = x.shape
    keep_prob = float(checks.check_keep_prob(keep_prob))
    block_sizes = tuple(_positive_int(b, "block_sizes") for b in block_sizes)
    cutout_size = max(1, min(h, w) // 2) if cutout_size is None else cutout_size
    cutout_size = _positive_int(cutout_size, "cutout_size")
    panel_px = _positive_int(panel_px, "panel_px")
    image = channels is None and c == 3
    if channels is None:
        channels = () if image else tuple(range(min(c, 4)))
    channels = tuple(channels)
    for ch in channels:
        if not isinstance(ch, numbers.Integral) or not -c <= ch < c:
            raise ValueError(f"`channels`: channel {ch!r} is out of range for {c} channels.")
    share = image if share_channels is None else share_channels
    checks.check_bool(share, "share_channels")

    # Each method sees the whole input as a batch of one: masks are read off its output on ones,
    # so they are exactly what the public function drops, whatever its rescaling.
    ones = jnp.ones((1, h, w, c), jnp.float32)
    shared = jnp.ones((1, h, w, 1), jnp.float32)
    panels = _panels(keep_prob, block_sizes, cutout_size)
    keys = jax.random.split(rng, len(panels))
    masks = []
    for panel, key in zip(panels, keys, strict=True):
        m = panel.fn(key, shared if share and panel.shareable else ones) != 0
        masks.append(np.broadcast_to(np.asarray(m)[0], (h, w, c)))

    nrows, ncols = (1 if image else len(channels)), 1 + len(panels)
    panel_w = max(1, round(panel_px * w / h))
    width, height = ncols * panel_w, nrows * panel_px + HEADER_PX
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    titles = [f"input\n{h} x {w} x {c}"] + [
        f"{panel.title}\nkept {m.mean():.2f}" for panel, m in zip(panels, masks, strict=True)
    ]
    pad = PAD_PX if min(panel_w, panel_px) > 4 * PAD_PX else 0
    for col in range(ncols):
        for row in range(nrows):
            # Axes placed in exact pixels (no tight layout), so the PNG has the stated size;
            # `pad` white pixels around each panel keep neighbouring maps apart.
            bottom = (nrows - 1 - row) * panel_px
            ax = fig.add_axes(
                (
                    (col * panel_w + pad) / width,
                    (bottom + pad) / height,
                    (panel_w - 2 * pad) / width,
                    (panel_px - 2 * pad) / height,
                )
            )
            ax.set_axis_off()
            mask = None if col == 0 else masks[col - 1]
            if image:
                ax.imshow(_rgb(x) * (1.0 if mask is None else mask), interpolation="nearest")
            else:
                ch = channels[row]
                grey = _grey_with_drops(x[:, :, ch], None if mask is None else mask[:, :, ch])
                ax.imshow(grey, interpolation="nearest")
                if col == 0:
                    ax.text(
                        0.04,
                        0.96,
                        f"ch {ch % c}",
                        color="yellow",
                        fontsize=8,
                        va="top",
                        transform=ax.transAxes,
                    )
        fig.text(
            (col + 0.5) / ncols, 1 - 2 / height, titles[col], ha="center", va="top", fontsize=9
        )
    if path is not None:
        fig.savefig(path, dpi=DPI, format="png")
    return fig


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must hold positive ints, got {value!r}.")
    return int(value)


def _rgb(x: np.ndarray) -> np.ndarray:
    """An RGB image as floats in [0, 1] (from [0, 1] floats or [0, 255] values)."""
    x = x.astype(np.float32)
    return np.clip(x / 255.0 if x.max() > 1.0 else x, 0.0, 1.0)


def _grey_with_drops(channel: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    """One channel normalised to [0, 1] in grey, with dropped units painted red."""
    channel = channel.astype(np.float32)
    low, high = float(channel.min()), float(channel.max())
    grey = (channel - low) / (high - low) if high > low else np.zeros_like(channel)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    if keep is not None:
        rgb[~keep] = (0.85, 0.1, 0.1)
    return rgb
