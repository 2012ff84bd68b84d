"""Flax linen wrappers: draw a key, apply the ``deterministic`` rule, call the function."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax

from jaxdrop._src import checks, masking
from jaxdrop._src.cutout import cutout
from jaxdrop._src.drop_path import Mode, drop_path
from jaxdrop._src.dropblock import dropblock
from jaxdrop._src.dropconnect import Where, dropconnect
from jaxdrop._src.dropout import dropout
from jaxdrop._src.spatial_dropout import spatial_dropout


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
    key = training_key(module, deterministic, rng)
    if key is None:
        return x
    return fn(key, x, *args, **kwargs)


def training_key(
    module: nn.Module, deterministic: bool | None, rng: jax.Array | None
) -> jax.Array | None:
    """``None`` in deterministic mode, else ``rng`` or a key from the module's collection."""
    deterministic = nn.merge_param("deterministic", module.deterministic, deterministic)
    if deterministic:
        return None
    if rng is None:
        rng = module.make_rng(module.rng_collection)
    return rng


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
      min_keep_prob: a static lower bound on a traced call-time ``keep_prob`` (a schedule's
        lowest value), or None; see :func:`jaxdrop.dropblock`.
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
    min_keep_prob: float | None = None
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
            checks.module_keep_prob(self, keep_prob),
            self.block_size,
            spatial_dims=self.spatial_dims,
            broadcast_dims=self.broadcast_dims,
            normalize=self.normalize,
            calibrate=self.calibrate,
            min_keep_prob=self.min_keep_prob,
        )


class Dropout(nn.Module):
    """Dropout as a linen module: see :func:`jaxdrop.dropout`.

    ``flax.linen.Dropout`` with ``keep_prob`` instead of ``rate`` and a traced call-time
    ``keep_prob``.

    Attributes:
      keep_prob: probability of keeping a unit. A call-time ``keep_prob`` (which may be traced,
        e.g. a schedule's value) overrides it.
      broadcast_dims: axes that share one mask.
      deterministic: if true, return the input untouched; merged with the call argument as in
        ``flax.linen.Dropout``.
      rng_collection: the rng collection the key is drawn from.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop
      >>> layer = jaxdrop.linen.Dropout(keep_prob=0.9)
      >>> x = jnp.ones((4, 64))
      >>> y = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
      >>> y.shape
      (4, 64)
      >>> bool(jnp.all(layer.apply({}, x, deterministic=True) == x))
      True
    """

    keep_prob: float
    broadcast_dims: int | Sequence[int] = ()
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
        """Applies dropout unless deterministic; ``keep_prob`` overrides the attribute."""
        return call_stochastic(
            self,
            dropout,
            x,
            deterministic,
            rng,
            checks.module_keep_prob(self, keep_prob),
            broadcast_dims=self.broadcast_dims,
        )


class SpatialDropout(nn.Module):
    """SpatialDropout as a linen module: see :func:`jaxdrop.spatial_dropout`.

    Attributes:
      keep_prob: probability of keeping a feature map. A call-time ``keep_prob`` (which may be
        traced) overrides it.
      spatial_dims: the axes a feature map spans (channels last by default).
      deterministic: if true, return the input untouched; merged with the call argument as in
        ``flax.linen.Dropout``.
      rng_collection: the rng collection the key is drawn from.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop
      >>> layer = jaxdrop.linen.SpatialDropout(keep_prob=0.8)
      >>> x = jnp.ones((2, 16, 16, 8))
      >>> y = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
      >>> y.shape
      (2, 16, 16, 8)
    """

    keep_prob: float
    spatial_dims: int | Sequence[int] = (-3, -2)
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
        """Applies SpatialDropout unless deterministic; ``keep_prob`` overrides the attribute."""
        return call_stochastic(
            self,
            spatial_dropout,
            x,
            deterministic,
            rng,
            checks.module_keep_prob(self, keep_prob),
            spatial_dims=self.spatial_dims,
        )


class DropPath(nn.Module):
    """DropPath (stochastic depth) as a linen module: see :func:`jaxdrop.drop_path`.

    Apply it to a residual branch before the addition: ``x + DropPath(0.9)(branch(x), ...)``.

    Attributes:
      keep_prob: probability of keeping the branch. A call-time ``keep_prob`` (which may be
        traced) overrides it.
      mode: ``"row"`` (one draw per example) or ``"batch"`` (one draw for the whole batch).
      scale_by_keep: scale kept examples by ``1 / keep_prob``.
      batch_axis: the axis whose indices are dropped independently in ``"row"`` mode.
      deterministic: if true, return the input untouched; merged with the call argument as in
        ``flax.linen.Dropout``.
      rng_collection: the rng collection the key is drawn from.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop
      >>> layer = jaxdrop.linen.DropPath(keep_prob=0.9)
      >>> x = jnp.ones((8, 197, 384))
      >>> y = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
      >>> y.shape
      (8, 197, 384)
    """

    keep_prob: float
    mode: Mode = "row"
    scale_by_keep: bool = True
    batch_axis: int = 0
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
        """Applies DropPath unless deterministic; ``keep_prob`` overrides the attribute."""
        return call_stochastic(
            self,
            drop_path,
            x,
            deterministic,
            rng,
            checks.module_keep_prob(self, keep_prob),
            mode=self.mode,
            scale_by_keep=self.scale_by_keep,
            batch_axis=self.batch_axis,
        )


class Cutout(nn.Module):
    """Cutout as a linen module: see :func:`jaxdrop.cutout`.

    An augmentation: use it on the input images in training only.

    Attributes:
      size: the side of a patch, an int or one per spatial dim.
      spatial_dims: the axes the patches span (channels last by default).
      num_patches: how many patches per example.
      fill: the value written into the patches.
      deterministic: if true, return the input untouched; merged with the call argument as in
        ``flax.linen.Dropout``.
      rng_collection: the rng collection the key is drawn from.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop
      >>> layer = jaxdrop.linen.Cutout(size=16)
      >>> x = jnp.ones((2, 32, 32, 3))
      >>> y = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
      >>> y.shape
      (2, 32, 32, 3)
    """

    size: int | Sequence[int]
    spatial_dims: int | Sequence[int] = (-3, -2)
    num_patches: int = 1
    fill: float = 0.0
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(
        self, x: jax.Array, deterministic: bool | None = None, *, rng: jax.Array | None = None
    ) -> jax.Array:
        """Applies Cutout unless deterministic."""
        return call_stochastic(
            self,
            cutout,
            x,
            deterministic,
            rng,
            self.size,
            spatial_dims=self.spatial_dims,
            num_patches=self.num_patches,
            fill=self.fill,
        )


def _call_layer(module: DropConnect, *args: Any, **kwargs: Any) -> Any:
    return module.layer(*args, **kwargs)


class DropConnect(nn.Module):
    """DropConnect around a layer: see :func:`jaxdrop.dropconnect`.

    In training, every call runs ``layer`` with its selected parameters (kernels by default)
    masked and rescaled by a fresh mask; in deterministic mode it is ``layer`` unchanged. The
    wrapper shares the layer's scope (``nn.share_scope``), so its parameter tree is exactly the
    layer's: ``DropConnect(nn.Dense(128), 0.5)`` and ``nn.Dense(128)`` have the same ``params``,
    and pretrained weights load into either. The stored parameters are never modified: the mask
    is applied on the way in (``nn.map_variables``).

    Positional and keyword arguments of the call go to ``layer``, except ``deterministic``,
    ``keep_prob`` and ``rng``, which are the wrapper's (keyword-only).

    Attributes:
      layer: the wrapped module, e.g. ``nn.Dense(128)`` or ``nn.Conv(64, (3, 3))``.
      keep_prob: probability of keeping a weight. A call-time ``keep_prob`` (which may be
        traced) overrides it.
      where: which parameters to mask, a predicate ``where(path, leaf)`` on the layer's
        ``params`` tree (default: floating leaves with at least 2 axes, i.e. kernels).
      deterministic: if true, run the plain layer; merged with the call argument as in
        ``flax.linen.Dropout``.
      rng_collection: the rng collection the key is drawn from.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import flax.linen as nn
      >>> import jaxdrop
      >>> layer = jaxdrop.linen.DropConnect(nn.Dense(128), keep_prob=0.5)
      >>> x = jnp.ones((4, 64))
      >>> variables = layer.init(jax.random.key(0), x, deterministic=True)
      >>> jax.tree.map(jnp.shape, variables)
      {'params': {'bias': (128,), 'kernel': (64, 128)}}
      >>> y = layer.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
      >>> y.shape
      (4, 128)
    """

    layer: nn.Module
    keep_prob: float
    where: Where | None = None
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    def setup(self) -> None:
        # The wrapper adds no parameters and no level to the tree: it uses the layer's scope.
        nn.share_scope(self, self.layer)

    def __call__(
        self,
        *args: Any,
        deterministic: bool | None = None,
        keep_prob: float | jax.Array | None = None,
        rng: jax.Array | None = None,
        **kwargs: Any,
    ) -> Any:
        """Runs ``layer`` with dropped connections unless deterministic."""
        key = training_key(self, deterministic, rng)
        if key is None:
            return self.layer(*args, **kwargs)
        kp: float | jax.Array = checks.module_keep_prob(self, keep_prob)

        def mask(variables: dict[str, Any]) -> dict[str, Any]:
            if "params" not in variables:  # A layer without parameters: nothing to drop.
                return variables
            masked = dropconnect(key, variables["params"], kp, where=self.where)
            return {**variables, "params": masked}

        if self.is_initializing():
            # Create the parameters unmasked first: under `init`, map_variables would store the
            # masked values it passed in.
            self.layer(*args, **kwargs)
        return nn.map_variables(_call_layer, "params", trans_in_fn=mask)(self, *args, **kwargs)
