"""Flax NNX wrappers, mirroring ``flax.nnx.Dropout``: fork the stream at construction, draw a key
per call, apply the ``deterministic`` rule, call the function."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from flax import nnx

from jaxdrop._src import masking
from jaxdrop._src.dropblock import dropblock

Rngs = nnx.Rngs | nnx.RngStream


def _first_from(*values: Any, error_msg: str) -> Any:
    # A local copy of flax.nnx.module.first_from, which is private.
    for value in values:
        if value is not None:
            return value
    raise ValueError(error_msg)


class Stochastic(nnx.Module):
    """Base of jaxdrop's NNX modules: the rng stream, the ``deterministic`` flag and their rules."""

    def init_stochastic(
        self, deterministic: bool | None, rng_collection: str, rngs: Rngs | None
    ) -> None:
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        if isinstance(rngs, nnx.Rngs):
            self.rngs = rngs[rng_collection].fork()
        elif isinstance(rngs, nnx.RngStream):
            self.rngs = rngs.fork()
        elif rngs is None:
            self.rngs = nnx.data(None)
        else:
            raise TypeError(f"`rngs` must be a Rngs, RngStream or None, got {type(rngs).__name__}.")

    def call_stochastic(
        self,
        fn: Callable[..., jax.Array],
        x: jax.Array,
        deterministic: bool | None,
        rngs: Rngs | jax.Array | None,
        *args: Any,
        **kwargs: Any,
    ) -> jax.Array:
        """Returns ``x`` if deterministic, else ``fn(key, x, *args, **kwargs)``."""
        name = type(self).__name__
        deterministic = _first_from(
            deterministic,
            self.deterministic,
            error_msg=(
                f"No `deterministic` argument was provided to {name}: pass it to the constructor "
                "or the call, or use `model.train()` / `model.eval()`."
            ),
        )
        if deterministic:
            return x
        rngs = _first_from(
            rngs,
            self.rngs,
            error_msg=(
                f"`deterministic` is False, but no `rngs` argument was provided to {name} "
                "as either a __call__ argument or a constructor argument."
            ),
        )
        if isinstance(rngs, nnx.Rngs):
            key = rngs[self.rng_collection]()
        elif isinstance(rngs, nnx.RngStream):
            key = rngs()
        elif isinstance(rngs, jax.Array):
            key = rngs
        else:
            raise TypeError(
                f"`rngs` must be a Rngs, RngStream or jax.Array, got {type(rngs).__name__}."
            )
        return fn(key, x, *args, **kwargs)

    def set_view(self, deterministic: bool | None = None) -> None:
        """Used by ``nnx.view``: ``deterministic=True`` disables the masking."""
        if deterministic is not None:
            self.deterministic = deterministic


class DropBlock(Stochastic):
    """DropBlock as an NNX module: see :func:`jaxdrop.dropblock`.

    Switch it with ``model.train()`` / ``model.eval()`` as ``flax.nnx.Dropout``. Its key comes
    from the ``rng_collection`` stream of the ``rngs`` given at construction (forked), or from
    the ``rngs`` given at call time, and the stream advances on every call.

    Args:
      keep_prob: probability of keeping a unit. NNX attributes are static under ``nnx.jit``, so a
        value that changes every step (a schedule) should be passed at call time instead.
      block_size: the side of a block, an int or one per spatial dim.
      spatial_dims: the axes that blocks span (channels last by default).
      broadcast_dims: axes that share one mask.
      normalize: ``"actual"``, ``"expected"`` or ``"none"``.
      calibrate: solve gamma so that the expected kept fraction is ``keep_prob``.
      deterministic: if true, return the input untouched. The call argument wins.
      rng_collection: the rng stream to draw keys from.
      rngs: ``nnx.Rngs`` or ``nnx.RngStream``, or ``None`` to pass keys at call time.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxdrop
      >>> layer = jaxdrop.nnx.DropBlock(0.9, 3, rngs=nnx.Rngs(dropout=0))
      >>> x = jnp.ones((2, 16, 16, 4))
      >>> layer(x).shape
      (2, 16, 16, 4)
      >>> layer.eval()
      >>> bool(jnp.all(layer(x) == x))
      True
    """

    def __init__(
        self,
        keep_prob: float,
        block_size: int | Sequence[int],
        *,
        spatial_dims: int | Sequence[int] = (-3, -2),
        broadcast_dims: int | Sequence[int] = (),
        normalize: masking.Normalize = "actual",
        calibrate: bool = False,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: Rngs | None = None,
    ):
        self.keep_prob = keep_prob
        self.block_size = block_size
        self.spatial_dims = spatial_dims
        self.broadcast_dims = broadcast_dims
        self.normalize = normalize
        self.calibrate = calibrate
        self.init_stochastic(deterministic, rng_collection, rngs)

    def __call__(
        self,
        x: jax.Array,
        *,
        deterministic: bool | None = None,
        keep_prob: float | jax.Array | None = None,
        rngs: Rngs | jax.Array | None = None,
    ) -> jax.Array:
        """Applies DropBlock unless deterministic; ``keep_prob`` overrides the attribute."""
        return self.call_stochastic(
            dropblock,
            x,
            deterministic,
            rngs,
            _first_from(keep_prob, self.keep_prob, error_msg="no keep_prob"),
            self.block_size,
            spatial_dims=self.spatial_dims,
            broadcast_dims=self.broadcast_dims,
            normalize=self.normalize,
            calibrate=self.calibrate,
        )
