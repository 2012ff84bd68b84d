"""Flax linen wrappers: draw a key, apply the ``deterministic`` rule, call the function.

What every module here adds to its function, as ``flax.linen.Dropout``: ``deterministic``
(an attribute merged with the call's, ``nn.merge_param``), a key drawn from the
``rng_collection`` rng stream (``"dropout"``) unless ``rng`` is passed, and the call
``layer(x, deterministic, rng)`` in Flax's order. The drop probability is given by name,
``keep_prob=`` or ``rate=`` (``keep_prob = 1 - rate``), at construction or at call time (the
call's wins, and may be traced, e.g. a schedule's value). Every other argument is the
function's, keyword-only, with the same name and default (channels last).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax

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


class Stochastic(nn.Module):
    """Base of the linen modules with a drop probability: checks ``keep_prob`` / ``rate``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Here rather than as a decorator, so that the subclasses Flax's transforms generate
        # (``nn.remat(DropBlock)``) reject a bare probability too.
        by_name(cls)

    def __post_init__(self) -> None:
        # Both spellings at once fail here, at construction, not at the first call.
        checks.module_keep_prob(self, optional=True)
        super().__post_init__()


class DropBlock(Stochastic, kw_only=True):
    """DropBlock as a linen module: the arguments are :func:`jaxdrop.dropblock`'s, by name.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop
      >>> layer = jaxdrop.linen.DropBlock(rate=0.1, block_size=3)  # or keep_prob=0.9
      >>> x = jnp.ones((2, 16, 16, 4))
      >>> y = layer.apply({}, x, False, rngs={"dropout": jax.random.key(0)})
      >>> y.shape
      (2, 16, 16, 4)
      >>> bool(jnp.all(layer.apply({}, x, deterministic=True) == x))
      True
    """

    keep_prob: float | None = None
    rate: float | None = None
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
        rng: jax.Array | None = None,
        *,
        keep_prob: float | jax.Array | None = None,
        rate: float | jax.Array | None = None,
    ) -> jax.Array:
        """Applies DropBlock unless deterministic; a call-time probability wins."""
        return call_stochastic(
            self,
            dropblock,
            x,
            deterministic,
            rng,
            checks.module_keep_prob(self, keep_prob, rate),
            self.block_size,
            spatial_dims=self.spatial_dims,
            broadcast_dims=self.broadcast_dims,
            normalize=self.normalize,
            calibrate=self.calibrate,
            min_keep_prob=self.min_keep_prob,
        )


class Dropout(Stochastic, kw_only=True):
    """Dropout as a linen module: the arguments are :func:`jaxdrop.dropout`'s, by name.

    ``flax.linen.Dropout(rate)`` is ``Dropout(rate=rate)``; ``keep_prob=`` is the same with
    ``keep_prob = 1 - rate``. It adds ``broadcast_dims`` and a traced call-time probability.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop
      >>> layer = jaxdrop.linen.Dropout(rate=0.1)
      >>> x = jnp.ones((4, 64))
      >>> layer.apply({}, x, False, rngs={"dropout": jax.random.key(0)}).shape
      (4, 64)
    """

    keep_prob: float | None = None
    rate: float | None = None
    broadcast_dims: int | Sequence[int] = ()
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        deterministic: bool | None = None,
        rng: jax.Array | None = None,
        *,
        keep_prob: float | jax.Array | None = None,
        rate: float | jax.Array | None = None,
    ) -> jax.Array:
        """Applies dropout unless deterministic; a call-time probability wins."""
        return call_stochastic(
            self,
            dropout,
            x,
            deterministic,
            rng,
            checks.module_keep_prob(self, keep_prob, rate),
            broadcast_dims=self.broadcast_dims,
        )


class SpatialDropout(Stochastic, kw_only=True):
    """SpatialDropout as a linen module: the arguments are :func:`jaxdrop.spatial_dropout`'s,
    by name.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop
      >>> layer = jaxdrop.linen.SpatialDropout(keep_prob=0.8)
      >>> x = jnp.ones((2, 16, 16, 8))
      >>> layer.apply({}, x, False, rngs={"dropout": jax.random.key(0)}).shape
      (2, 16, 16, 8)
    """

    keep_prob: float | None = None
    rate: float | None = None
    spatial_dims: int | Sequence[int] = (-3, -2)
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        deterministic: bool | None = None,
        rng: jax.Array | None = None,
        *,
        keep_prob: float | jax.Array | None = None,
        rate: float | jax.Array | None = None,
    ) -> jax.Array:
        """Applies SpatialDropout unless deterministic; a call-time probability wins."""
        return call_stochastic(
            self,
            spatial_dropout,
            x,
            deterministic,
            rng,
            checks.module_keep_prob(self, keep_prob, rate),
            spatial_dims=self.spatial_dims,
        )


class DropPath(Stochastic, kw_only=True):
    """DropPath (stochastic depth) as a linen module: the arguments are
    :func:`jaxdrop.drop_path`'s, by name.

    Apply it to a residual branch before the addition:
    ``x + DropPath(rate=0.1)(branch(x), deterministic)``; timm's ``DropPath(drop_prob)`` is
    ``DropPath(rate=drop_prob)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop
      >>> layer = jaxdrop.linen.DropPath(rate=0.1)
      >>> x = jnp.ones((8, 197, 384))
      >>> layer.apply({}, x, False, rngs={"dropout": jax.random.key(0)}).shape
      (8, 197, 384)
    """

    keep_prob: float | None = None
    rate: float | None = None
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
        rng: jax.Array | None = None,
        *,
        keep_prob: float | jax.Array | None = None,
        rate: float | jax.Array | None = None,
    ) -> jax.Array:
        """Applies DropPath unless deterministic; a call-time probability wins."""
        return call_stochastic(
            self,
            drop_path,
            x,
            deterministic,
            rng,
            checks.module_keep_prob(self, keep_prob, rate),
            mode=self.mode,
            scale_by_keep=self.scale_by_keep,
            batch_axis=self.batch_axis,
        )


class Cutout(nn.Module):
    """Cutout as a linen module: the arguments are :func:`jaxdrop.cutout`'s.

    An augmentation: use it on the input images in training only. It has no probability, so
    ``size`` may be positional.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop
      >>> layer = jaxdrop.linen.Cutout(size=16)
      >>> x = jnp.ones((2, 32, 32, 3))
      >>> layer.apply({}, x, False, rngs={"dropout": jax.random.key(0)}).shape
      (2, 32, 32, 3)
    """

    size: int | Sequence[int]
    _: dataclasses.KW_ONLY
    spatial_dims: int | Sequence[int] = (-3, -2)
    num_patches: int = 1
    fill: float = 0.0
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(
        self, x: jax.Array, deterministic: bool | None = None, rng: jax.Array | None = None
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


class PatchDropout(Stochastic, kw_only=True):
    """PatchDropout as a linen module: the arguments are :func:`jaxdrop.patch_dropout`'s, by name.

    timm's ``PatchDropout(prob, num_prefix_tokens)`` is ``PatchDropout(rate=prob,
    num_prefix_tokens=...)``; ``num_prefix_tokens`` defaults to the function's 0, not timm's 1.
    The probability is static (it sets the output's length): a traced call-time one is the
    function's ``TypeError``. When deterministic, every token comes back unchanged and, with
    ``return_indices=True``, with all the indices ``0 .. L_p - 1`` (the function at
    ``keep_prob=1``), so the caller's code is the same in both modes.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop
      >>> layer = jaxdrop.linen.PatchDropout(keep_prob=0.5, num_prefix_tokens=1)
      >>> x = jnp.ones((8, 1 + 64, 192))
      >>> layer.apply({}, x, False, rngs={"dropout": jax.random.key(0)}).shape
      (8, 33, 192)
      >>> layer.apply({}, x, deterministic=True).shape
      (8, 65, 192)
    """

    keep_prob: float | None = None
    rate: float | None = None
    num_prefix_tokens: int = 0
    ordered: bool = False
    return_indices: bool = False
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        deterministic: bool | None = None,
        rng: jax.Array | None = None,
        *,
        keep_prob: float | jax.Array | None = None,
        rate: float | jax.Array | None = None,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Applies PatchDropout unless deterministic; a call-time probability wins."""
        key = training_key(self, deterministic, rng)
        kp = None if key is None else checks.module_keep_prob(self, keep_prob, rate)
        return patch_dropout_or_all(
            key,
            x,
            kp,
            num_prefix_tokens=self.num_prefix_tokens,
            ordered=self.ordered,
            return_indices=self.return_indices,
        )


class RandomErasing(Stochastic, kw_only=True):
    """Random Erasing as a linen module: the arguments are :func:`jaxdrop.random_erasing`'s, by
    name.

    An augmentation: use it on the input images in training only. ``p`` is the probability of
    erasing an image, as torchvision's and the function's ``p`` (timm's ``probability``); like
    the other modules' probability it is given by name, at construction or at call time (the
    call's wins, and may be traced, e.g. a schedule's value).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop
      >>> layer = jaxdrop.linen.RandomErasing(p=0.25, fill="pixel")
      >>> x = jnp.ones((2, 32, 32, 3))
      >>> layer.apply({}, x, False, rngs={"dropout": jax.random.key(0)}).shape
      (2, 32, 32, 3)
    """

    p: float | None = None
    area: tuple[float, float] = (0.02, 1 / 3)
    aspect: tuple[float, float] = (0.3, 10 / 3)
    fill: checks.FillMode | float = "zeros"
    max_count: int = 1
    spatial_dims: Sequence[int] = (-3, -2)
    channel_axis: int | None = -1
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        deterministic: bool | None = None,
        rng: jax.Array | None = None,
        *,
        p: float | jax.Array | None = None,
    ) -> jax.Array:
        """Applies Random Erasing unless deterministic; a call-time ``p`` wins."""
        return call_stochastic(
            self,
            random_erasing,
            x,
            deterministic,
            rng,
            checks.module_p(self, p),
            area=self.area,
            aspect=self.aspect,
            fill=self.fill,
            max_count=self.max_count,
            spatial_dims=self.spatial_dims,
            channel_axis=self.channel_axis,
        )


def _call_layer(module: DropConnect, *args: Any, **kwargs: Any) -> Any:
    return module.layer(*args, **kwargs)


class DropConnect(Stochastic):
    """DropConnect around a layer: the arguments are :func:`jaxdrop.dropconnect`'s, by name.

    ``layer`` (positional) is the wrapped module, e.g. ``nn.Dense(128)``; ``where`` selects its
    ``params`` leaves (default: kernels). In training every call runs ``layer`` with a fresh
    mask on the way in (``nn.map_variables``: the stored parameters never change); when
    deterministic it is ``layer`` unchanged. The wrapper shares the layer's scope
    (``nn.share_scope``), so its parameter tree is exactly the layer's and pretrained weights
    load into either. The call's arguments go to ``layer``, except ``deterministic``, ``rng``,
    ``keep_prob`` and ``rate`` (keyword-only).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import flax.linen as nn
      >>> import jaxdrop
      >>> layer = jaxdrop.linen.DropConnect(nn.Dense(128), rate=0.5)
      >>> x = jnp.ones((4, 64))
      >>> variables = layer.init(jax.random.key(0), x, deterministic=True)
      >>> jax.tree.map(jnp.shape, variables)
      {'params': {'bias': (128,), 'kernel': (64, 128)}}
    """

    layer: nn.Module
    _: dataclasses.KW_ONLY
    keep_prob: float | None = None
    rate: float | None = None
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
        rng: jax.Array | None = None,
        keep_prob: float | jax.Array | None = None,
        rate: float | jax.Array | None = None,
        **kwargs: Any,
    ) -> Any:
        """Runs ``layer`` with dropped connections unless deterministic."""
        key = training_key(self, deterministic, rng)
        if key is None:
            return self.layer(*args, **kwargs)
        kp = checks.module_keep_prob(self, keep_prob, rate)

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
