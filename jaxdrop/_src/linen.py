"""Flax linen wrappers: draw a key, apply the ``deterministic`` rule, call the function."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax

from jaxdrop._src import masking
from jaxdrop._src.dropblock import dropblock


def first(*values: Any) -> Any:
    """The first value that is not ``None`` (a call-time argument wins over the attribute)."""
    return next(v for v in values if v is not None)


def call_stochastic(
    module: nn.Module,
    fn: Callable[..., jax.Array],
    x: jax.Array,
    deterministic: bool | None,
    rng: jax.Array | None,
    *args: Any,
    **kwargs: Any,
) -> jax.Array:
    """The plumbing shared by every linen module of jaxdrop.

    Merges ``deterministic`` as ``flax.linen.Dropout`` does, returns ``x`` untouched in
    deterministic mode, and otherwise calls ``fn(rng, x, *args, **kwargs)`` with a key drawn
    from the module's ``rng_collection`` (unless ``rng`` is given).
    """
    deterministic = nn.merge_param("deterministic", module.deterministic, deterministic)
    if deterministic:
        return x
    if rng is None:
        rng = module.make_rng(module.rng_collection)
    return fn(rng, x, *args, **kwargs)


class DropBlock(nn.Module):
    """DropBlock as a linen module: see :func:`jaxdrop.dropblock`.

    Attributes:
      keep_prob: probability of keeping a unit. A call-time ``keep_prob`` (which may be traced,
        e.g. a schedule's value) overrides it.
      block_size: the side of a block, an int or one per spatial dim.
      spatial_dims: the axes that blocks span (channels last by default).
      broadcast_dims: axes that share one mask.
      normalize: ``"actual"``, ``"expected"`` or ``"none"``.
      calibrate: solve gamma so that the expected kept fraction is ``keep_prob``.
      deterministic: if true, return the input untouched; merged with the call argument as in
        ``flax.linen.Dropout``.
      rng_collection: the rng collection the key is drawn from.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop
      >>> layer = jaxdrop.linen.DropBlock(keep_prob=0.9, block_size=3)
      >>> x = jnp.ones((2, 16, 16, 4))
      >>> y = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
      >>> y.shape
      (2, 16, 16, 4)
      >>> bool(jnp.all(layer.apply({}, x, deterministic=True) == x))
      True
    """

    keep_prob: float
    block_size: int | Sequence[int]
    spatial_dims: int | Sequence[int] = (-3, -2)
    broadcast_dims: int | Sequence[int] = ()
    normalize: masking.Normalize = "actual"
    calibrate: bool = False
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        deterministic: bool | None = None,
        *,
        keep_prob: float | jax.Array | None = None,
        rng: jax.Array | None = None,
    ) -> jax.Array:
        """Applies DropBlock unless deterministic; ``keep_prob`` overrides the attribute."""
        return call_stochastic(
            self,
            dropblock,
            x,
            deterministic,
            rng,
            first(keep_prob, self.keep_prob),
            self.block_size,
            spatial_dims=self.spatial_dims,
            broadcast_dims=self.broadcast_dims,
            normalize=self.normalize,
            calibrate=self.calibrate,
        )
