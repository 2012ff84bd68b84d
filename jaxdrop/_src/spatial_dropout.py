"""SpatialDropout (Tompson et al., 2015): drop whole feature maps."""

from __future__ import annotations

from collections.abc import Sequence

import jax

from jaxdrop._src import checks, masking


def spatial_dropout(
    rng: jax.Array,
    x: jax.typing.ArrayLike,
    keep_prob: float | jax.Array,
    *,
    spatial_dims: int | Sequence[int] = (-3, -2),
) -> jax.Array:
    r"""Drops whole feature maps (SpatialDropout).

    Adjacent units of a convolutional feature map are strongly correlated, so dropping them
    independently barely regularises. SpatialDropout keeps or drops a feature map as a whole:
    the mask has the shape of ``x`` with every spatial axis set to 1, so each index of the other
    axes (for ``(N, H, W, C)``: each example and channel) gets its own Bernoulli(``keep_prob``)
    draw, shared over the whole map. Kept maps are scaled by ``1 / keep_prob``. This is Keras'
    ``SpatialDropout1D/2D/3D`` for any number of spatial axes and any layout.

    Args:
      rng: a PRNG key, typed (``jax.random.key``) or legacy (``jax.random.PRNGKey``).
      x: floating array of shape ``(..., H, W, C)`` by default (channels last, like Flax); any
        layout through ``spatial_dims``.
      keep_prob: probability of keeping a feature map, a Python float or a traced scalar.
        ``1.0`` returns ``x`` unchanged and ``0.0`` returns zeros. A traced value is not checked;
        it is clipped to [0, 1] (NaN counts as 0). It receives no gradient.
      spatial_dims: the axes a feature map spans, at least one: ``(-3, -2)`` for
        ``(N, H, W, C)``, ``(-2, -1)`` for NCHW, ``(-2,)`` for sequences ``(N, L, C)``,
        ``(-4, -3, -2)`` for volumes. Every other axis gets its own draws.

    Returns:
      An array with the shape and dtype of ``x``.

    Raises:
      TypeError: if ``rng`` is not a PRNG key, ``x`` is not floating, or an option has the wrong
        type.
      ValueError: if ``rng`` is a batch of keys, a concrete ``keep_prob`` is outside [0, 1], or
        ``spatial_dims`` is empty, out of bounds or repeated.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop
      >>> x = jnp.ones((8, 16, 16, 64))
      >>> y = jaxdrop.spatial_dropout(jax.random.key(0), x, 0.8)
      >>> y.shape, y.dtype
      ((8, 16, 16, 64), dtype('float32'))
      >>> kept = jnp.any(y != 0, axis=(1, 2))  # per example and channel
      >>> bool(jnp.all(jnp.all(y != 0, axis=(1, 2)) == kept))  # whole maps only
      True
      >>> round(float(jnp.mean(kept)), 1)
      0.8

    References:
      Tompson et al, `Efficient object localization using convolutional networks
      <https://arxiv.org/abs/1411.4280>`_, 2015
    """
    checks.check_key(rng)
    x = checks.as_floating_array(x)
    keep_prob = checks.check_keep_prob(keep_prob)
    spatial = checks.canonical_axes(spatial_dims, x.ndim, "spatial_dims", shape=x.shape)
    checks.check_nonempty_axes(spatial, "spatial_dims", "; for independent units use `dropout`")
    if checks.nothing_to_drop(x.size, keep_prob):
        return x
    mask_shape = tuple(1 if d in spatial else n for d, n in enumerate(x.shape))
    return masking.drop_units(rng, x, keep_prob, mask_shape=mask_shape, normalize="expected")
