"""Cutout (DeVries and Taylor, 2017): fill random patches of the input images."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxdrop._src import checks, masking


def cutout(
    rng: jax.Array,
    x: jax.typing.ArrayLike,
    size: int | Sequence[int],
    *,
    spatial_dims: int | Sequence[int] = (-3, -2),
    num_patches: int = 1,
    fill: float | jax.Array = 0.0,
) -> jax.Array:
    r"""Fills random square patches of each image (Cutout).

    An input-level augmentation: in every example, ``num_patches`` patches of ``size`` units per
    spatial axis are set to ``fill``, on every channel. Each patch centre is uniform over the
    image, independently per example and patch, so a patch may stick out of the image and is
    then cut by the border (the paper found this important). A patch with centre :math:`c`
    covers :math:`[c - \lfloor s/2 \rfloor, c - \lfloor s/2 \rfloor + s)` along an axis of patch
    size :math:`s`, intersected with the image. Patches may overlap. Nothing is rescaled.

    Examples are the indices of axis 0, unless axis 0 is a spatial axis, in which case ``x`` is a
    single image. Every other non-spatial axis (channels, or frames of a video) shares the
    patches of its example: ``(N, H, W, C)`` and ``(N, C, H, W)`` get ``N`` independent sets of
    patches, ``(H, W, C)`` one. For several batch axes, ``jax.vmap`` over them.

    Args:
      rng: a PRNG key, typed (``jax.random.key``) or legacy (``jax.random.PRNGKey``).
      x: floating array of shape ``(N, H, W, C)`` or ``(H, W, C)`` by default (channels last,
        like Flax); any layout through ``spatial_dims``.
      size: the side of a patch, an int or one int per spatial dim. Larger than the image is
        allowed (the whole image is then covered whatever the centre, if ``size >= 2 * H``).
      spatial_dims: the axes the patches span: ``(-3, -2)`` for ``(N, H, W, C)``, ``(-2, -1)``
        for NCHW, ``(-2,)`` for sequences ``(N, L, C)``.
      num_patches: how many patches per example, at least 0.
      fill: the value written into the patches, a Python float or a traced scalar (cast to
        ``x.dtype``). The patched units receive no gradient from the output.

    Returns:
      An array with the shape and dtype of ``x``.

    Raises:
      TypeError: if ``rng`` is not a PRNG key, ``x`` is not floating, ``fill`` is not a real
        scalar, or an option has the wrong type.
      ValueError: if ``rng`` is a batch of keys, ``size`` is not positive or has the wrong
        length, ``num_patches`` is negative, ``fill`` is not a scalar, or ``spatial_dims`` is
        empty, out of bounds or repeated.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop
      >>> x = jnp.ones((8, 32, 32, 3))
      >>> y = jaxdrop.cutout(jax.random.key(0), x, 16)
      >>> y.shape, y.dtype
      ((8, 32, 32, 3), dtype('float32'))
      >>> bool(jnp.all((y == 0) == (y[..., :1] == 0)))  # shared across channels
      True
      >>> bool(jnp.all(jnp.sum(y[..., 0] == 0, axis=(1, 2)) <= 16 * 16))  # one patch each
      True

    References:
      DeVries and Taylor, `Improved regularization of convolutional neural networks with cutout
      <https://arxiv.org/abs/1708.04552>`_, 2017
    """
    checks.check_key(rng)
    x = checks.as_floating_array(x)
    spatial = checks.canonical_axes(spatial_dims, x.ndim, "spatial_dims", shape=x.shape)
    checks.check_nonempty_axes(spatial, "spatial_dims")
    sizes = checks.canonical_sizes(size, len(spatial), "size")
    num_patches = checks.check_count(num_patches, "num_patches", minimum=0)
    checks.check_real_scalar(fill, "fill")
    if x.size == 0 or num_patches == 0:
        return x
    return _cutout(rng, x, fill, size=sizes, spatial_dims=spatial, num_patches=num_patches)


@functools.partial(jax.jit, static_argnames=("size", "spatial_dims", "num_patches"))
def _cutout(rng, x, fill, *, size, spatial_dims, num_patches):
    # Cast the fill to x's dtype first: a float32 fill must not promote a bfloat16 x.
    fill = jax.lax.stop_gradient(jnp.asarray(fill).astype(x.dtype))

    # Under jax.checkpoint, reverse mode keeps the key (not the mask) for the backward pass and
    # draws the patches again there, as masking.apply_mask does (and with its prevent_cse).
    @functools.partial(jax.checkpoint, prevent_cse=masking._PREVENT_CSE)
    def patched(rng, x, fill):
        keep = cutout_mask(
            rng, x.shape, size=size, spatial_dims=spatial_dims, num_patches=num_patches
        )
        return jnp.where(keep, x, fill)

    return patched(rng, x, fill)


def batch_size(shape: tuple[int, ...], spatial_dims: tuple[int, ...]) -> int:
    """Number of examples: the length of axis 0, or 1 when axis 0 is spatial."""
    return 1 if 0 in spatial_dims else shape[0]


def patch_centres(
    rng: jax.Array, shape: tuple[int, ...], *, spatial_dims: tuple[int, ...], num_patches: int
) -> jax.Array:
    """int32 centres of shape ``(num_patches, batch, len(spatial_dims))``, uniform per axis."""
    draw_shape = (num_patches, batch_size(shape, spatial_dims), len(spatial_dims))
    # Broadcast explicitly: randint would rank-promote, which strict configurations reject.
    extents = jnp.broadcast_to(jnp.asarray([shape[d] for d in spatial_dims], jnp.int32), draw_shape)
    return jax.random.randint(rng, draw_shape, 0, extents, dtype=jnp.int32)


def cutout_mask(
    rng: jax.Array,
    shape: tuple[int, ...],
    *,
    size: tuple[int, ...],
    spatial_dims: tuple[int, ...],
    num_patches: int,
) -> jax.Array:
    """Boolean keep-mask broadcastable to ``shape``: ``False`` on the union of the patches.

    Its shape is ``shape`` with every non-spatial axis but the batch axis set to 1.
    """
    centres = patch_centres(rng, shape, spatial_dims=spatial_dims, num_patches=num_patches)
    batched = 0 not in spatial_dims
    ndim = len(shape)
    # Per patch and example, one start index per axis, broadcast as (num_patches, *x's axes).
    start_shape = (num_patches,) + tuple(
        shape[0] if (d == 0 and batched) else 1 for d in range(ndim)
    )
    covered = None
    for j, (d, s) in enumerate(zip(spatial_dims, size, strict=True)):
        # A centre c covers [c - s // 2, c - s // 2 + s); indices outside the image never match.
        start = (centres[..., j] - s // 2).reshape(start_shape)
        index = jnp.arange(shape[d], dtype=jnp.int32).reshape(
            (1,) + tuple(shape[d] if a == d else 1 for a in range(ndim))
        )
        inside = (index >= start) & (index < start + s)
        covered = inside if covered is None else covered & inside
    assert covered is not None  # spatial_dims is never empty (checked by cutout)
    return ~jnp.any(covered, axis=0)
