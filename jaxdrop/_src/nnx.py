"""Flax NNX wrappers, mirroring ``flax.nnx.Dropout``: fork the stream at construction, draw a key
per call, apply the ``deterministic`` rule, call the function."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from flax import nnx

from jaxdrop._src import checks, masking
from jaxdrop._src.cutout import cutout
from jaxdrop._src.drop_path import Mode, drop_path
from jaxdrop._src.dropblock import dropblock
from jaxdrop._src.dropconnect import Where, dropconnect
from jaxdrop._src.dropout import dropout
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
      min_keep_prob: a static lower bound on a traced call-time ``keep_prob`` (a schedule's
        lowest value), or None; see :func:`jaxdrop.dropblock`.
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
        min_keep_prob: float | None = None,
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
        self.min_keep_prob = min_keep_prob
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
            checks.module_keep_prob(self, keep_prob),
            self.block_size,
            spatial_dims=self.spatial_dims,
            broadcast_dims=self.broadcast_dims,
            normalize=self.normalize,
            calibrate=self.calibrate,
            min_keep_prob=self.min_keep_prob,
        )


class Dropout(Stochastic):
    """Dropout as an NNX module: see :func:`jaxdrop.dropout`.

    ``flax.nnx.Dropout`` with ``keep_prob`` instead of ``rate`` and a traced call-time
    ``keep_prob``. Switch it with ``model.train()`` / ``model.eval()``; its key comes from the
    ``rng_collection`` stream of the ``rngs`` given at construction (forked), or from the
    ``rngs`` given at call time, and the stream advances on every call.

    Args:
      keep_prob: probability of keeping a unit. NNX attributes are static under ``nnx.jit``, so a
        value that changes every step (a schedule) should be passed at call time instead.
      broadcast_dims: axes that share one mask.
      deterministic: if true, return the input untouched. The call argument wins.
      rng_collection: the rng stream to draw keys from.
      rngs: ``nnx.Rngs`` or ``nnx.RngStream``, or ``None`` to pass keys at call time.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxdrop
      >>> layer = jaxdrop.nnx.Dropout(0.9, rngs=nnx.Rngs(dropout=0))
      >>> x = jnp.ones((4, 64))
      >>> layer(x).shape
      (4, 64)
      >>> layer.eval()
      >>> bool(jnp.all(layer(x) == x))
      True
    """

    def __init__(
        self,
        keep_prob: float,
        *,
        broadcast_dims: int | Sequence[int] = (),
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: Rngs | None = None,
    ):
        self.keep_prob = keep_prob
        self.broadcast_dims = broadcast_dims
        self.init_stochastic(deterministic, rng_collection, rngs)

    def __call__(
        self,
        x: jax.Array,
        *,
        deterministic: bool | None = None,
        keep_prob: float | jax.Array | None = None,
        rngs: Rngs | jax.Array | None = None,
    ) -> jax.Array:
        """Applies dropout unless deterministic; ``keep_prob`` overrides the attribute."""
        return self.call_stochastic(
            dropout,
            x,
            deterministic,
            rngs,
            checks.module_keep_prob(self, keep_prob),
            broadcast_dims=self.broadcast_dims,
        )


class SpatialDropout(Stochastic):
    """SpatialDropout as an NNX module: see :func:`jaxdrop.spatial_dropout`.

    Switch it with ``model.train()`` / ``model.eval()``, as :class:`Dropout`.

    Args:
      keep_prob: probability of keeping a feature map; pass a per-step value at call time.
      spatial_dims: the axes a feature map spans (channels last by default).
      deterministic: if true, return the input untouched. The call argument wins.
      rng_collection: the rng stream to draw keys from.
      rngs: ``nnx.Rngs`` or ``nnx.RngStream``, or ``None`` to pass keys at call time.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxdrop
      >>> layer = jaxdrop.nnx.SpatialDropout(0.8, rngs=nnx.Rngs(dropout=0))
      >>> layer(jnp.ones((2, 16, 16, 8))).shape
      (2, 16, 16, 8)
    """

    def __init__(
        self,
        keep_prob: float,
        *,
        spatial_dims: int | Sequence[int] = (-3, -2),
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: Rngs | None = None,
    ):
        self.keep_prob = keep_prob
        self.spatial_dims = spatial_dims
        self.init_stochastic(deterministic, rng_collection, rngs)

    def __call__(
        self,
        x: jax.Array,
        *,
        deterministic: bool | None = None,
        keep_prob: float | jax.Array | None = None,
        rngs: Rngs | jax.Array | None = None,
    ) -> jax.Array:
        """Applies SpatialDropout unless deterministic; ``keep_prob`` overrides the attribute."""
        return self.call_stochastic(
            spatial_dropout,
            x,
            deterministic,
            rngs,
            checks.module_keep_prob(self, keep_prob),
            spatial_dims=self.spatial_dims,
        )


class DropPath(Stochastic):
    """DropPath (stochastic depth) as an NNX module: see :func:`jaxdrop.drop_path`.

    Apply it to a residual branch before the addition: ``x + self.drop_path(branch(x))``.
    Switch it with ``model.train()`` / ``model.eval()``, as :class:`Dropout`.

    Args:
      keep_prob: probability of keeping the branch; pass a per-step value at call time.
      mode: ``"row"`` (one draw per example) or ``"batch"`` (one draw for the whole batch).
      scale_by_keep: scale kept examples by ``1 / keep_prob``.
      batch_axis: the axis whose indices are dropped independently in ``"row"`` mode.
      deterministic: if true, return the input untouched. The call argument wins.
      rng_collection: the rng stream to draw keys from.
      rngs: ``nnx.Rngs`` or ``nnx.RngStream``, or ``None`` to pass keys at call time.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxdrop
      >>> layer = jaxdrop.nnx.DropPath(0.9, rngs=nnx.Rngs(dropout=0))
      >>> layer(jnp.ones((8, 197, 384))).shape
      (8, 197, 384)
    """

    def __init__(
        self,
        keep_prob: float,
        *,
        mode: Mode = "row",
        scale_by_keep: bool = True,
        batch_axis: int = 0,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: Rngs | None = None,
    ):
        self.keep_prob = keep_prob
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
        rngs: Rngs | jax.Array | None = None,
    ) -> jax.Array:
        """Applies DropPath unless deterministic; ``keep_prob`` overrides the attribute."""
        return self.call_stochastic(
            drop_path,
            x,
            deterministic,
            rngs,
            checks.module_keep_prob(self, keep_prob),
            mode=self.mode,
            scale_by_keep=self.scale_by_keep,
            batch_axis=self.batch_axis,
        )


class Cutout(Stochastic):
    """Cutout as an NNX module: see :func:`jaxdrop.cutout`.

    An augmentation: use it on the input images, in training only (``model.eval()`` disables it).

    Args:
      size: the side of a patch, an int or one per spatial dim.
      spatial_dims: the axes the patches span (channels last by default).
      num_patches: how many patches per example.
      fill: the value written into the patches.
      deterministic: if true, return the input untouched. The call argument wins.
      rng_collection: the rng stream to draw keys from.
      rngs: ``nnx.Rngs`` or ``nnx.RngStream``, or ``None`` to pass keys at call time.

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


class DropConnect(Stochastic):
    """DropConnect around a layer: see :func:`jaxdrop.dropconnect`.

    In training, every call runs ``layer`` with its selected ``nnx.Param``s (kernels by default)
    masked and rescaled by a fresh mask; in evaluation (``model.eval()``) it is ``layer``
    unchanged. The stored parameters are never modified: the call runs on a copy of the layer
    whose parameters are masked, and any other state the layer updates (batch statistics, its own
    rng counts) is written back. The wrapper's only ``nnx.Param``s are the layer's, under
    ``.layer``.

    Positional and keyword arguments of the call go to ``layer``, except ``deterministic``,
    ``keep_prob`` and ``rngs``, which are the wrapper's (keyword-only).

    Args:
      layer: the wrapped module, e.g. ``nnx.Linear(64, 128, rngs=rngs)``.
      keep_prob: probability of keeping a weight; pass a per-step value at call time.
      where: which parameters to mask, a predicate ``where(path, leaf)`` on the layer's
        parameters as a pure dict (``nnx.to_pure_dict``); default: floating leaves with at least
        2 axes, i.e. kernels.
      deterministic: if true, run the plain layer. The call argument wins.
      rng_collection: the rng stream to draw keys from.
      rngs: ``nnx.Rngs`` or ``nnx.RngStream``, or ``None`` to pass keys at call time.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxdrop
      >>> rngs = nnx.Rngs(0)
      >>> layer = jaxdrop.nnx.DropConnect(nnx.Linear(64, 128, rngs=rngs), keep_prob=0.5, rngs=rngs)
      >>> layer(jnp.ones((4, 64))).shape
      (4, 128)
      >>> layer.eval()
      >>> bool(jnp.all(layer(jnp.ones((4, 64))) == layer.layer(jnp.ones((4, 64)))))
      True
    """

    def __init__(
        self,
        layer: nnx.Module,
        keep_prob: float,
        *,
        where: Where | None = None,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: Rngs | None = None,
    ):
        self.layer = layer
        self.keep_prob = keep_prob
        self.where = where
        self.init_stochastic(deterministic, rng_collection, rngs)

    def __call__(
        self,
        *args: Any,
        deterministic: bool | None = None,
        keep_prob: float | jax.Array | None = None,
        rngs: Rngs | jax.Array | None = None,
        **kwargs: Any,
    ) -> Any:
        """Runs ``layer`` with dropped connections unless deterministic."""
        key = self.training_key(deterministic, rngs)
        if key is None:
            return self.layer(*args, **kwargs)
        kp: float | jax.Array = checks.module_keep_prob(self, keep_prob)
        graphdef, params, rest = nnx.split(self.layer, nnx.Param, ...)
        masked = dropconnect(key, nnx.to_pure_dict(params), kp, where=self.where)
        # replace_by_pure_dict puts new Variables into `params`; the layer's own are untouched.
        nnx.replace_by_pure_dict(params, masked)
        copy = nnx.merge(graphdef, params, rest)
        out = copy(*args, **kwargs)
        nnx.update(self.layer, nnx.state(copy, nnx.Not(nnx.Param)))
        return out
