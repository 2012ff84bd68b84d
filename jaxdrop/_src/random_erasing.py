"""Random Erasing (Zhong et al., 2020): erase random rectangles of the input images."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

from jaxdrop._src import checks

FILL_MODES = ("zeros", "channel", "pixel")
# Both reference versions try this many candidate rectangles per erasing.
NUM_ATTEMPTS = 10


def _check_range(value: object, name: str, *, low: float, high: float, open_low: bool) -> tuple:
    """A ``(min, max)`` pair of Python numbers with ``low <= min <= max <= high``."""
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 2
        or not all(checks.is_python_number(v) for v in value)
    ):
        raise TypeError(f"`{name}` must be a pair of Python floats (min, max), got {value!r}.")
    lo, hi = float(value[0]), float(value[1])
    bad_low = lo <= low if open_low else lo < low
    if bad_low or not lo <= hi <= high:  # Also rejects NaN.
        bound = f"{low} < min" if open_low else f"{low} <= min"
        upper = "" if math.isinf(high) else f" <= {high}"
        raise ValueError(f"`{name}` must satisfy {bound} <= max{upper}, got {tuple(value)!r}.")
    return lo, hi


def random_erasing(
    rng: jax.Array,
    images: jax.typing.ArrayLike,
    p: float | jax.Array,
    *,
    area: tuple[float, float] = (0.02, 1 / 3),
    aspect: tuple[float, float] = (0.3, 10 / 3),
    fill: Literal["zeros", "channel", "pixel"] | float | jax.Array = "zeros",
    max_count: int = 1,
    spatial_dims: Sequence[int] = (-3, -2),
    channel_axis: int | None = -1,
) -> jax.Array:
    r"""Erases random rectangles of each image with probability ``p`` (Random Erasing).

    An input-level augmentation, the generalisation of Cutout in current training recipes
    (DeiT's): each image is erased with probability ``p``, independently. An erased image gets
    ``count`` rectangles, ``count = 1`` or, when ``max_count > 1``, uniform in
    ``[1, max_count]`` per image (timm's ``count``). For each rectangle, 10 candidates are drawn
    at once, as both reference versions (torchvision's ``transforms.RandomErasing``, timm's
    ``RandomErasing``) draw them one after another:

    .. math::

      a \sim U(\text{area}) \cdot \frac{H W}{\text{count}}, \quad
      \log r \sim U(\log \text{aspect}), \quad
      h = \operatorname{round}\sqrt{a r}, \quad w = \operatorname{round}\sqrt{a / r},

    and the first candidate with :math:`h < H` and :math:`w < W` is taken (an ``argmax`` over
    the fits, no branching); if none fits, that rectangle erases nothing (the references'
    behaviour). Its top-left corner is uniform among the :math:`(H - h + 1)(W - w + 1)`
    positions that keep it inside the image. ``round`` rounds half to even, as Python's.
    Rectangles may overlap; a later one overwrites an earlier one (relevant for
    ``fill="channel"``). Nothing is rescaled.

    Every axis but the two ``spatial_dims`` and the ``channel_axis`` indexes images: ``(N, H, W,
    C)`` gets ``N`` independent draws, ``(H, W, C)`` one, ``(N, T, H, W, C)`` one per frame.
    With ``jax.vmap`` over per-image keys the result equals a loop over the images. The
    rectangles depend on the key only, not on ``fill``. There is no data-dependent control flow,
    and a batch sharded over devices needs no communication.

    Args:
      rng: a PRNG key, typed (``jax.random.key``) or legacy (``jax.random.PRNGKey``).
      images: floating array of shape ``(..., H, W, C)`` by default (channels last, like Flax);
        any layout through ``spatial_dims`` and ``channel_axis``.
      p: probability of erasing an image (torchvision's ``p``, timm's ``probability``), a Python
        float or a traced scalar: the draw is a Bernoulli in float32 whatever the images' dtype.
        A traced value is not checked; it is clipped to [0, 1] (NaN erases nothing). It receives
        no gradient.
      area: ``(min, max)`` fraction of the image area a rectangle covers, in [0, 1] (torchvision's
        ``scale``, timm's ``min_area, max_area``), divided by ``count`` as in timm.
      aspect: ``(min, max)`` aspect ratio :math:`h / w`, positive (torchvision's ``ratio``, timm's
        ``min_aspect, max_aspect``), drawn log-uniformly.
      fill: ``"zeros"`` (timm's ``"const"``, torchvision's ``value=0``), ``"channel"`` (one
        standard normal value per channel and rectangle: timm's ``"rand"``), ``"pixel"`` (a
        standard normal value per pixel and channel: timm's ``"pixel"``, torchvision's
        ``value="random"``; this draws a normal array the size of ``images``), or a constant:
        a Python float or a scalar array (cast to the images' dtype; it receives no gradient).
        The normal values suit normalised images, as timm notes.
      max_count: the most rectangles per erased image, at least 1 (timm's ``count``).
      spatial_dims: the two axes ``(H, W)`` of an image: ``(-3, -2)`` for ``(..., H, W, C)``,
        ``(-2, -1)`` for ``(..., C, H, W)``. The aspect ratio is the first over the second.
      channel_axis: the axis whose entries share a rectangle (channels): ``-1`` for ``(..., H,
        W, C)``, ``-3`` for ``(..., C, H, W)``, ``None`` for images without one (``(N, H, W)``).

    Returns:
      An array with the shape and dtype of ``images``.

    Raises:
      TypeError: if ``rng`` is not a PRNG key, ``images`` is not floating, ``p`` or a constant
        ``fill`` is not a real scalar, or an option has the wrong type.
      ValueError: if ``rng`` is a batch of keys, a concrete ``p`` is outside [0, 1], ``area``
        or ``aspect`` is not an ordered pair in range, ``fill`` is an unknown mode or not a
        scalar, ``max_count`` is below 1, ``spatial_dims`` does not name two axes, or an axis is
        out of bounds or repeated.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop
      >>> images = jnp.ones((8, 32, 32, 3))
      >>> out = jaxdrop.random_erasing(jax.random.key(0), images, 1.0)
      >>> out.shape, out.dtype
      ((8, 32, 32, 3), dtype('float32'))
      >>> erased = jnp.mean(out[..., 0] == 0, axis=(1, 2))  # one rectangle per image
      >>> bool(jnp.all((erased >= 0.015) & (erased <= 0.34)))
      True
      >>> bool(jnp.all((out == 0) == (out[..., :1] == 0)))  # shared across channels
      True

    References:
      Zhong et al, `Random erasing data augmentation <https://arxiv.org/abs/1708.04896>`_, 2020
    """
    checks.check_key(rng)
    images = checks.as_floating_array(images, "images")
    p = checks.check_keep_prob(p, "p")
    spatial = checks.canonical_axes(spatial_dims, images.ndim, "spatial_dims", shape=images.shape)
    if len(spatial) != 2:
        raise ValueError(
            f"`spatial_dims` must name the two axes (H, W) of an image, got {spatial_dims!r}."
        )
    channel = None
    if channel_axis is not None:
        channel = checks.canonical_axis(
            channel_axis, images.ndim, "channel_axis", shape=images.shape
        )
        if channel in spatial:
            raise ValueError(
                f"`channel_axis` must not be one of `spatial_dims`, got channel_axis="
                f"{channel_axis!r} and spatial_dims={spatial_dims!r}. Pass `channel_axis=None` "
                "for images without channels."
            )
    area = _check_range(area, "area", low=0.0, high=1.0, open_low=False)
    aspect = _check_range(aspect, "aspect", low=0.0, high=math.inf, open_low=True)
    max_count = checks.check_count(max_count, "max_count", minimum=1)
    if isinstance(fill, str):
        checks.check_choice(fill, "fill", FILL_MODES)
        mode, value = fill, 0.0
    else:
        checks.check_real_scalar(fill, "fill")
        mode, value = "constant", fill
    if images.size == 0 or checks.concrete_value(p) == 0.0:
        return images
    return _random_erasing(
        rng,
        images,
        p,
        value,
        area=area,
        log_aspect=(math.log(aspect[0]), math.log(aspect[1])),
        mode=mode,
        max_count=max_count,
        spatial_dims=spatial,
        channel_axis=channel,
    )


def erasing_rectangles(
    rng: jax.Array,
    p: float | jax.Array,
    batch_shape: tuple[int, ...],
    height: int,
    width: int,
    *,
    area: tuple[float, float],
    log_aspect: tuple[float, float],
    max_count: int,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(top, left, h, w)``, each ``int32`` of shape ``batch_shape + (max_count,)``.

    An unused rectangle (image not erased, slot beyond the image's count, no candidate fits)
    has ``h = w = 0`` and erases nothing.
    """
    k_erase, k_count, k_area, k_aspect, k_top, k_left = jax.random.split(rng, 6)
    # Bernoulli(p) in float32 whatever the images' dtype (a bfloat16 uniform is coarse).
    p = lax.stop_gradient(jnp.clip(jnp.asarray(p, jnp.float32), 0.0, 1.0))
    erase = jax.random.uniform(k_erase, batch_shape, jnp.float32) < p
    if max_count > 1:
        count = jax.random.randint(k_count, batch_shape, 1, max_count + 1, dtype=jnp.int32)
    else:
        count = jnp.ones(batch_shape, jnp.int32)
    draws = batch_shape + (max_count, NUM_ATTEMPTS)
    # All the candidates of every rectangle at once, as the references draw them in turn.
    fraction = jax.random.uniform(k_area, draws, jnp.float32, area[0], area[1])
    target = fraction * jnp.float32(height * width) / count.astype(jnp.float32)[..., None, None]
    ratio = jnp.exp(jax.random.uniform(k_aspect, draws, jnp.float32, *log_aspect))
    # jnp.round rounds half to even, as Python's round in both references.
    h = jnp.round(jnp.sqrt(target * ratio)).astype(jnp.int32)
    w = jnp.round(jnp.sqrt(target / ratio)).astype(jnp.int32)
    fits = (h < height) & (w < width)
    # The first candidate that fits (argmax returns the first True), without branching.
    first = jnp.argmax(fits, axis=-1)[..., None]
    h = jnp.take_along_axis(h, first, axis=-1)[..., 0]
    w = jnp.take_along_axis(w, first, axis=-1)[..., 0]
    slot = lax.broadcasted_iota(jnp.int32, batch_shape + (max_count,), len(batch_shape))
    used = erase[..., None] & jnp.any(fits, axis=-1) & (slot < count[..., None])
    h = jnp.where(used, h, 0)
    w = jnp.where(used, w, 0)
    # Uniform among the positions that keep the rectangle inside: [0, H - h] and [0, W - w].
    top = jax.random.randint(k_top, h.shape, 0, height - h + 1, dtype=jnp.int32)
    left = jax.random.randint(k_left, w.shape, 0, width - w + 1, dtype=jnp.int32)
    return top, left, h, w


@functools.partial(
    jax.jit,
    static_argnames=("area", "log_aspect", "mode", "max_count", "spatial_dims", "channel_axis"),
)
def _random_erasing(
    rng, images, p, value, *, area, log_aspect, mode, max_count, spatial_dims, channel_axis
):
    shape = images.shape
    ndim = images.ndim
    h_axis, w_axis = spatial_dims
    image_axes = tuple(d for d in range(ndim) if d not in spatial_dims and d != channel_axis)
    batch_shape = tuple(shape[d] for d in image_axes)
    k_rect, k_fill = jax.random.split(rng)
    top, left, h, w = erasing_rectangles(
        k_rect,
        p,
        batch_shape,
        shape[h_axis],
        shape[w_axis],
        area=area,
        log_aspect=log_aspect,
        max_count=max_count,
    )
    # Per-image values broadcast into the images' layout: image axes kept, the others 1.
    per_image = tuple(shape[d] if d in image_axes else 1 for d in range(ndim))

    def along(axis):
        return lax.broadcasted_iota(
            jnp.int32, tuple(shape[d] if d == axis else 1 for d in range(ndim)), axis
        )

    rows, cols = along(h_axis), along(w_axis)
    inside = []
    for r in range(max_count):
        t, l_, hh, ww = (a[..., r].reshape(per_image) for a in (top, left, h, w))
        inside.append((rows >= t) & (rows < t + hh) & (cols >= l_) & (cols < l_ + ww))
    if mode == "channel":
        # One value per rectangle, image and channel; a later rectangle overwrites an earlier
        # one, as the references erase them in turn.
        per_channel = tuple(
            shape[d] if (d in image_axes or d == channel_axis) else 1 for d in range(ndim)
        )
        values = jax.random.normal(k_fill, (max_count,) + per_channel, jnp.float32)
        out = images
        for r in range(max_count):
            out = jnp.where(inside[r], values[r].astype(images.dtype), out)
        return out
    erased = functools.reduce(jnp.logical_or, inside)
    if mode == "pixel":
        fill = jax.random.normal(k_fill, shape, jnp.float32).astype(images.dtype)
    else:
        # Cast first: a float32 constant must not promote bfloat16 images.
        constant = jnp.float32(0) if mode == "zeros" else jnp.asarray(value)
        fill = lax.stop_gradient(constant.astype(images.dtype))
    return jnp.where(erased, fill, images)
