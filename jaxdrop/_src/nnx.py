"""Flax NNX wrappers, mirroring ``flax.nnx.Dropout``: fork the stream at construction, draw a key
per call, apply the ``deterministic`` rule, call the function.

What every module here adds to its function, as ``flax.nnx.Dropout``: ``deterministic``
(``model.train()`` / ``model.eval()`` set it; the call's wins), and a key from the
``rng_collection`` stream (``"dropout"``) of the ``rngs`` given at construction (forked) or at
call time, a stream that advances on every call. The drop probability is given by name,
``keep_prob=`` or ``rate=`` (``keep_prob = 1 - rate``), at construction or at call time (the
call's wins). NNX attributes are static under ``nnx.jit``, so a value that changes every step (a
schedule) goes in at call time, where it may be traced. Every other argument is the function's,
keyword-only, with the same name and default (channels last).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from flax import nnx

from jaxdrop._src import checks, masking
from jaxdrop._src.by_name import by_name
from jaxdrop._src.cutout import cutout
from jaxdrop._src.drop_path import Mode, drop_path
from jaxdrop._src.dropblock import dropblock
from jaxdrop._src.dropconnect import Where, dropconnect
from jaxdrop._src.dropout import dropout
from jaxdrop._src.patch_dropout import patch_dropout_or_all
from jaxdrop._src.random_erasing import random_erasing
from jaxdrop._src.spatial_dropout import spatial_dropout

Rngs = nnx.Rngs | nnx.RngStream


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

    def init_probability(self, keep_prob: float | None, rate: float | None) -> None:
        """Stores ``keep_prob`` and ``rate``; both at once fails now, not at the first call."""
        self.keep_prob = keep_prob
        self.rate = rate
        checks.module_keep_prob(self, optional=True)

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
        key = self.training_key(deterministic, rngs)
        if key is None:
            return x
        return fn(key, x, *args, **kwargs)

    def training_key(
        self, deterministic: bool | None, rngs: Rngs | jax.Array | None
    ) -> jax.Array | None:
        """``None`` if deterministic, else a key from the call's or the module's ``rngs``."""
        name = type(self).__name__
        deterministic = checks.first_from(
            deterministic,
            self.deterministic,
            error_msg=(
                f"No `deterministic` argument was provided to {name}: pass it to the constructor "
                "or the call, or use `model.train()` / `model.eval()`."
            ),
        )
        if deterministic:
            return None
        rngs = checks.first_from(
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
        return key

    def set_view(self, deterministic: bool | None = None) -> None:
        """Used by ``nnx.view``: ``deterministic=True`` disables the masking."""
        if deterministic is not None:
            self.deterministic = deterministic


@by_name
class DropBlock(Stochastic):
    """DropBlock as an NNX module: the arguments are :func:`jaxdrop.dropblock`'s, by name.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxdrop
      >>> layer = jaxdrop.nnx.DropBlock(rate=0.1, block_size=3, rngs=nnx.Rngs(dropout=0))
      >>> x = jnp.ones((2, 16, 16, 4))
      >>> layer(x).shape
      (2, 16, 16, 4)
      >>> layer.eval()
      >>> bool(jnp.all(layer(x) == x))
      True
    """

    def __init__(
        self,
        *,
        keep_prob: float | None = None,
        rate: float | None = None,
        block_size: int | Sequence[int],
        spatial_dims: int | Sequence[int] = (-3, -2),
        broadcast_dims: int | Sequence[int] = (),
        normalize: masking.Normalize = "actual",
        calibrate: bool = False,
        min_keep_prob: float | None = None,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: Rngs | None = None,
    ):
        self.init_probability(keep_prob, rate)
        self.block_size = block_size
        self.spatial_dims = spatial_dims
        self.broadcast_dims = broadcast_dims
        self.normalize = normalize
        self.calibrate = calibrate
        self.min_keep_prob = min_keep_prob
        self.init_stochastic(deterministic, rng_collection, rngs)

    def __call__(
        self,
        x: jax.Array,
        *,
        deterministic: bool | None = None,
        keep_prob: float | jax.Array | None = None,
        rate: float | jax.Array | None = None,
        rngs: Rngs | jax.Array | None = None,
    ) -> jax.Array:
        """Applies DropBlock unless deterministic; a call-time probability wins."""
        return self.call_stochastic(
            dropblock,
            x,
            deterministic,
            rngs,
            checks.module_keep_prob(self, keep_prob, rate),
            self.block_size,
            spatial_dims=self.spatial_dims,
            broadcast_dims=self.broadcast_dims,
            normalize=self.normalize,
            calibrate=self.calibrate,
            min_keep_prob=self.min_keep_prob,
        )


@by_name
class Dropout(Stochastic):
    """Dropout as an NNX module: the arguments are :func:`jaxdrop.dropout`'s, by name.

    ``flax.nnx.Dropout(rate, rngs=rngs)`` is ``Dropout(rate=rate, rngs=rngs)``; it adds
    ``broadcast_dims`` and a traced call-time probability.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxdrop
      >>> layer = jaxdrop.nnx.Dropout(rate=0.1, rngs=nnx.Rngs(dropout=0))
      >>> layer(jnp.ones((4, 64)), keep_prob=0.8).shape  # the call's probability wins
      (4, 64)
    """

    def __init__(
        self,
        *,
        keep_prob: float | None = None,
        rate: float | None = None,
        broadcast_dims: int | Sequence[int] = (),
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: Rngs | None = None,
    ):
        self.init_probability(keep_prob, rate)
        self.broadcast_dims = broadcast_dims
        self.init_stochastic(deterministic, rng_collection, rngs)

    def __call__(
        self,
        x: jax.Array,
        *,
        deterministic: bool | None = None,
        keep_prob: float | jax.Array | None = None,
        rate: float | jax.Array | None = None,
        rngs: Rngs | jax.Array | None = None,
    ) -> jax.Array:
        """Applies dropout unless deterministic; a call-time probability wins."""
        return self.call_stochastic(
            dropout,
            x,
            deterministic,
            rngs,
            checks.module_keep_prob(self, keep_prob, rate),
            broadcast_dims=self.broadcast_dims,
        )


@by_name
class SpatialDropout(Stochastic):
    """SpatialDropout as an NNX module: the arguments are :func:`jaxdrop.spatial_dropout`'s,
    by name.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxdrop
      >>> layer = jaxdrop.nnx.SpatialDropout(keep_prob=0.8, rngs=nnx.Rngs(dropout=0))
      >>> layer(jnp.ones((2, 16, 16, 8))).shape
      (2, 16, 16, 8)
    """

    def __init__(
        self,
        *,
        keep_prob: float | None = None,
        rate: float | None = None,
        spatial_dims: int | Sequence[int] = (-3, -2),
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: Rngs | None = None,
    ):
        self.init_probability(keep_prob, rate)
        self.spatial_dims = spatial_dims
        self.init_stochastic(deterministic, rng_collection, rngs)

    def __call__(
        self,
        x: jax.Array,
        *,
        deterministic: bool | None = None,
        keep_prob: float | jax.Array | None = None,
        rate: float | jax.Array | None = None,
        rngs: Rngs | jax.Array | None = None,
    ) -> jax.Array:
        """Applies SpatialDropout unless deterministic; a call-time probability wins."""
        return self.call_stochastic(
            spatial_dropout,
            x,
            deterministic,
            rngs,
            checks.module_keep_prob(self, keep_prob, rate),
            spatial_dims=self.spatial_dims,
        )


@by_name
class DropPath(Stochastic):
    """DropPath (stochastic depth) as an NNX module: the arguments are
    :func:`jaxdrop.drop_path`'s, by name.

    Apply it to a residual branch before the addition: ``x + self.drop_path(branch(x))``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxdrop
      >>> layer = jaxdrop.nnx.DropPath(rate=0.1, rngs=nnx.Rngs(dropout=0))
      >>> layer(jnp.ones((8, 197, 384))).shape
      (8, 197, 384)
    """

    def __init__(
        self,
        *,
        keep_prob: float | None = None,
        rate: float | None = None,
        mode: Mode = "row",
        scale_by_keep: bool = True,
        batch_axis: int = 0,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: Rngs | None = None,
    ):
        self.init_probability(keep_prob, rate)
        self.mode = mode
        self.scale_by_keep = scale_by_keep
        self.batch_axis = batch_axis
        self.init_stochastic(deterministic, rng_collection, rngs)

    def __call__(
        self,
        x: jax.Array,
        *,
        deterministic: bool | None = None,
        keep_prob: float | jax.Array | None = None,
        rate: float | jax.Array | None = None,
        rngs: Rngs | jax.Array | None = None,
    ) -> jax.Array:
        """Applies DropPath unless deterministic; a call-time probability wins."""
        return self.call_stochastic(
            drop_path,
            x,
            deterministic,
            rngs,
            checks.module_keep_prob(self, keep_prob, rate),
            mode=self.mode,
            scale_by_keep=self.scale_by_keep,
            batch_axis=self.batch_axis,
        )


class Cutout(Stochastic):
    """Cutout as an NNX module: the arguments are :func:`jaxdrop.cutout`'s.

    An augmentation: use it on the input images, in training only (``model.eval()`` disables
    it). It has no probability, so ``size`` may be positional.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxdrop
      >>> layer = jaxdrop.nnx.Cutout(16, rngs=nnx.Rngs(dropout=0))
      >>> layer(jnp.ones((2, 32, 32, 3))).shape
      (2, 32, 32, 3)
    """

    def __init__(
        self,
        size: int | Sequence[int],
        *,
        spatial_dims: int | Sequence[int] = (-3, -2),
        num_patches: int = 1,
        fill: float = 0.0,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: Rngs | None = None,
    ):
        self.size = size
        self.spatial_dims = spatial_dims
        self.num_patches = num_patches
        self.fill = fill
        self.init_stochastic(deterministic, rng_collection, rngs)

    def __call__(
        self,
        x: jax.Array,
        *,
        deterministic: bool | None = None,
        rngs: Rngs | jax.Array | None = None,
    ) -> jax.Array:
        """Applies Cutout unless deterministic."""
        return self.call_stochastic(
            cutout,
            x,
            deterministic,
            rngs,
            self.size,
            spatial_dims=self.spatial_dims,
            num_patches=self.num_patches,
            fill=self.fill,
        )


@by_name
class PatchDropout(Stochastic):
    """PatchDropout as an NNX module: the arguments are :func:`jaxdrop.patch_dropout`'s, by name.

    timm's ``PatchDropout(prob, num_prefix_tokens)`` is ``PatchDropout(rate=prob,
    num_prefix_tokens=..., rngs=rngs)``; ``num_prefix_tokens`` defaults to the function's 0, not
    timm's 1. The probability is static (it sets the output's length): a traced call-time one is
    the function's ``TypeError``. In eval mode every token comes back unchanged and, with
    ``return_indices=True``, with all the indices ``0 .. L_p - 1`` (the function at
    ``keep_prob=1``), so the caller's code is the same in both modes.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxdrop
      >>> layer = jaxdrop.nnx.PatchDropout(
      ...     keep_prob=0.5, num_prefix_tokens=1, rngs=nnx.Rngs(dropout=0))
      >>> x = jnp.ones((8, 1 + 64, 192))
      >>> layer(x).shape
      (8, 33, 192)
      >>> layer.eval()
      >>> layer(x).shape
      (8, 65, 192)
    """

    def __init__(
        self,
        *,
        keep_prob: float | None = None,
        rate: float | None = None,
        num_prefix_tokens: int = 0,
        ordered: bool = False,
        return_indices: bool = False,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: Rngs | None = None,
    ):
        self.init_probability(keep_prob, rate)
        self.num_prefix_tokens = num_prefix_tokens
        self.ordered = ordered
        self.return_indices = return_indices
        self.init_stochastic(deterministic, rng_collection, rngs)

    def __call__(
        self,
        x: jax.Array,
        *,
        deterministic: bool | None = None,
        keep_prob: float | jax.Array | None = None,
        rate: float | jax.Array | None = None,
        rngs: Rngs | jax.Array | None = None,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Applies PatchDropout unless deterministic; a call-time probability wins."""
        key = self.training_key(deterministic, rngs)
        kp = None if key is None else checks.module_keep_prob(self, keep_prob, rate)
        return patch_dropout_or_all(
            key,
            x,
            kp,
            num_prefix_tokens=self.num_prefix_tokens,
            ordered=self.ordered,
            return_indices=self.return_indices,
        )


@by_name
class RandomErasing(Stochastic):
    """Random Erasing as an NNX module: the arguments are :func:`jaxdrop.random_erasing`'s, by
    name.

    An augmentation: use it on the input images, in training only (``model.eval()`` disables
    it). ``p`` is the probability of erasing an image, as torchvision's and the function's ``p``
    (timm's ``probability``); like the other modules' probability it is given by name, at
    construction or at call time (the call's wins, and may be traced, e.g. a schedule's value).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxdrop
      >>> layer = jaxdrop.nnx.RandomErasing(p=0.25, fill="pixel", rngs=nnx.Rngs(dropout=0))
      >>> layer(jnp.ones((2, 32, 32, 3))).shape
      (2, 32, 32, 3)
    """

    def __init__(
        self,
        *,
        p: float | None = None,
        area: tuple[float, float] = (0.02, 1 / 3),
        aspect: tuple[float, float] = (0.3, 10 / 3),
        fill: checks.FillMode | float = "zeros",
        max_count: int = 1,
        spatial_dims: Sequence[int] = (-3, -2),
        channel_axis: int | None = -1,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: Rngs | None = None,
    ):
        self.p = p
        self.area = area
        self.aspect = aspect
        self.fill = fill
        self.max_count = max_count
        self.spatial_dims = spatial_dims
        self.channel_axis = channel_axis
        self.init_stochastic(deterministic, rng_collection, rngs)

    def __call__(
        self,
        x: jax.Array,
        *,
        deterministic: bool | None = None,
        p: float | jax.Array | None = None,
        rngs: Rngs | jax.Array | None = None,
    ) -> jax.Array:
        """Applies Random Erasing unless deterministic; a call-time ``p`` wins."""
        return self.call_stochastic(
            random_erasing,
            x,
            deterministic,
            rngs,
            checks.module_p(self, p),
            area=self.area,
            aspect=self.aspect,
            fill=self.fill,
            max_count=self.max_count,
            spatial_dims=self.spatial_dims,
            channel_axis=self.channel_axis,
        )


@by_name
class DropConnect(Stochastic):
    """DropConnect around a layer: the arguments are :func:`jaxdrop.dropconnect`'s, by name.

    ``layer`` (positional) is the wrapped module, e.g. ``nnx.Linear(64, 128, rngs=rngs)``;
    ``where`` selects its parameters as a pure dict (``nnx.to_pure_dict``; default: kernels). In
    training every call runs ``layer`` on a copy whose ``nnx.Param``s are masked, and writes
    back any other state it updates (batch statistics, rng counts): the stored parameters never
    change. In evaluation it is ``layer`` unchanged. The wrapper's only ``nnx.Param``s are the
    layer's, under ``.layer``. The call's arguments go to ``layer``, except ``deterministic``,
    ``keep_prob``, ``rate`` and ``rngs`` (keyword-only).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxdrop
      >>> rngs = nnx.Rngs(0)
      >>> layer = jaxdrop.nnx.DropConnect(nnx.Linear(64, 128, rngs=rngs), rate=0.5, rngs=rngs)
      >>> layer(jnp.ones((4, 64))).shape
      (4, 128)
    """

    def __init__(
        self,
        layer: nnx.Module,
        *,
        keep_prob: float | None = None,
        rate: float | None = None,
        where: Where | None = None,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: Rngs | None = None,
    ):
        self.layer = layer
        self.init_probability(keep_prob, rate)
        self.where = where
        self.init_stochastic(deterministic, rng_collection, rngs)

    def __call__(
        self,
        *args: Any,
        deterministic: bool | None = None,
        keep_prob: float | jax.Array | None = None,
        rate: float | jax.Array | None = None,
        rngs: Rngs | jax.Array | None = None,
        **kwargs: Any,
    ) -> Any:
        """Runs ``layer`` with dropped connections unless deterministic."""
        key = self.training_key(deterministic, rngs)
        if key is None:
            return self.layer(*args, **kwargs)
        kp = checks.module_keep_prob(self, keep_prob, rate)
        graphdef, params, rest = nnx.split(self.layer, nnx.Param, ...)
        masked = dropconnect(key, nnx.to_pure_dict(params), kp, where=self.where)
        # replace_by_pure_dict puts new Variables into `params`; the layer's own are untouched.
        nnx.replace_by_pure_dict(params, masked)
        copy = nnx.merge(graphdef, params, rest)
        out = copy(*args, **kwargs)
        nnx.update(self.layer, nnx.state(copy, nnx.Not(nnx.Param)))
        return out
