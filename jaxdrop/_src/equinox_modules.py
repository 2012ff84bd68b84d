"""Equinox wrappers, mirroring ``eqx.nn.Dropout``: apply the ``inference`` rule, call the function.

Equinox layers see one example and the model is ``jax.vmap``ped over the batch with one key per
example, so the defaults that depend on the layout are those of one channels-first example, as
``eqx.nn.Conv`` takes it: ``spatial_dims=(-2, -1)`` for ``(C, H, W)``, and ``DropPath`` draws
once per call (``mode="batch"``), which under ``vmap`` is once per example.

(Named ``equinox_modules``, not ``equinox``: ``_src`` is not a regular package, so pytest's
``--doctest-modules`` puts ``jaxdrop/_src`` on ``sys.path``, where a file named ``equinox.py``
would shadow the Equinox package itself.)
"""

import dataclasses
import numbers
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import equinox as eqx
import jax

from jaxdrop._src import checks, masking
from jaxdrop._src.cutout import cutout
from jaxdrop._src.drop_path import MODE_CHOICES, drop_path
from jaxdrop._src.dropblock import dropblock
from jaxdrop._src.dropconnect import Where, dropconnect, is_weight_matrix
from jaxdrop._src.dropout import dropout
from jaxdrop._src.spatial_dropout import spatial_dropout

# One channels-first example, as eqx.nn.Conv2d takes it: (C, H, W).
SPATIAL_DIMS = (-2, -1)


def _hashable(value: int | Sequence[int]) -> int | Sequence[int]:
    # Static fields are part of the jit cache key, so they must hash: a list becomes a tuple.
    return tuple(value) if isinstance(value, list) else value


def _static(default: Any = dataclasses.MISSING) -> Any:
    """Static configuration, as ``eqx.nn.Conv`` marks its ``stride``."""
    return eqx.field(default=default, static=True)


def _static_ints(default: Any = dataclasses.MISSING) -> Any:
    """Static axes or sizes (an int or a sequence of ints), as ``eqx.nn.Conv``'s ``kernel_size``."""
    return eqx.field(default=default, static=True, converter=_hashable)


def _check_sizes(size: int | Sequence[int], spatial_dims: int | Sequence[int], name: str) -> None:
    """The function's check of ``block_size`` / ``size``, at construction.

    It needs only the number of spatial dims; if ``spatial_dims`` itself is malformed, the
    function reports it at call time, when ``x``'s rank is known.
    """
    if isinstance(spatial_dims, numbers.Integral):
        checks.canonical_sizes(size, 1, name)
    elif isinstance(spatial_dims, Sequence):
        checks.canonical_sizes(size, len(spatial_dims), name)


def is_weight(path: tuple[Any, ...], leaf: Any) -> bool:
    """The default selection of :class:`DropConnect`: the weights, never a bias.

    As :func:`jaxdrop.dropconnect`'s default (floating leaves with at least 2 axes), except a
    leaf named ``bias``: ``eqx.nn.Conv`` stores its bias with shape ``(out, 1, ..., 1)``.
    """
    name = getattr(path[-1], "name", None) if path else None
    return is_weight_matrix(path, leaf) and name != "bias"


class _Switchable(Protocol):
    inference: bool


def training_key(
    module: _Switchable,
    key: jax.Array | None,
    inference: bool | None,
    keep_prob: float | jax.Array | None = None,
) -> jax.Array | None:
    """``None`` in inference mode, else ``key``; training without a key raises ``RuntimeError``.

    The call's ``inference`` wins over the field, as in ``eqx.nn.Dropout``; like its ``p=0``, a
    Python ``keep_prob`` of 1 drops nothing and needs no key.
    """
    if inference is None:
        inference = module.inference
    if checks.is_python_number(keep_prob) and keep_prob == 1.0:
        inference = True
    if inference:
        return None
    if key is None:
        name = type(module).__name__
        raise RuntimeError(
            f"{name} requires a key when running in training mode (inference=False): call it "
            f"with `key=...` (one per example under `jax.vmap`), or switch the model to "
            f"inference with `eqx.nn.inference_mode(model)` or `{name}(..., inference=True)`."
        )
    return key


class DropBlock(eqx.Module):
    """DropBlock as an Equinox module: see :func:`jaxdrop.dropblock`.

    Mirrors ``eqx.nn.Dropout``: it sees one example, takes its key at call time, and
    ``eqx.nn.inference_mode(model)`` switches it off. The layout default is channels first,
    ``(C, H, W)``, as ``eqx.nn.Conv2d``: pass ``spatial_dims=(-3, -2)`` for ``(H, W, C)``.

    Attributes:
      keep_prob: probability of keeping a unit. A call-time ``keep_prob`` (which may be traced,
        e.g. a schedule's value) overrides it.
      block_size: the side of a block, an int or one per spatial dim.
      spatial_dims: the axes that blocks span; ``(-2, -1)``: channels first.
      broadcast_dims: axes that share one mask.
      normalize: ``"actual"``, ``"expected"`` or ``"none"``.
      calibrate: solve gamma so that the expected kept fraction is ``keep_prob``.
      min_keep_prob: a static lower bound on a traced ``keep_prob`` (a schedule's lowest value),
        or None; see :func:`jaxdrop.dropblock`.
      inference: if true, return the input untouched. The call's ``inference`` wins.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import equinox as eqx
      >>> import jaxdrop.equinox
      >>> layer = jaxdrop.equinox.DropBlock(0.9, 3)
      >>> x = jnp.ones((4, 16, 16))  # one (C, H, W) example
      >>> layer(x, key=jax.random.key(0)).shape
      (4, 16, 16)
      >>> bool(jnp.all(eqx.nn.inference_mode(layer)(x) == x))
      True
    """

    keep_prob: float | jax.Array
    block_size: int | Sequence[int] = _static_ints()
    _: dataclasses.KW_ONLY
    spatial_dims: int | Sequence[int] = _static_ints(SPATIAL_DIMS)
    broadcast_dims: int | Sequence[int] = _static_ints(())
    normalize: masking.Normalize = _static("actual")
    calibrate: bool = _static(False)
    min_keep_prob: float | None = _static(None)
    inference: bool = False

    def __check_init__(self) -> None:
        checks.check_keep_prob(self.keep_prob)
        _check_sizes(self.block_size, self.spatial_dims, "block_size")
        checks.check_choice(self.normalize, "normalize", masking.NORMALIZE_CHOICES)
        checks.check_bool(self.calibrate, "calibrate")

    def __call__(
        self,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        inference: bool | None = None,
        keep_prob: float | jax.Array | None = None,
    ) -> jax.Array:
        """Applies DropBlock unless in inference mode; ``keep_prob`` overrides the field."""
        keep_prob = checks.module_keep_prob(self, keep_prob)
        key = training_key(self, key, inference, keep_prob)
        if key is None:
            return x
        return dropblock(
            key,
            x,
            keep_prob,
            self.block_size,
            spatial_dims=self.spatial_dims,
            broadcast_dims=self.broadcast_dims,
            normalize=self.normalize,
            calibrate=self.calibrate,
            min_keep_prob=self.min_keep_prob,
        )


class Dropout(eqx.Module):
    """Dropout as an Equinox module: see :func:`jaxdrop.dropout`.

    ``eqx.nn.Dropout`` with ``keep_prob`` instead of ``p``, ``broadcast_dims`` and a traced
    call-time ``keep_prob``.

    Attributes:
      keep_prob: probability of keeping a unit. A call-time ``keep_prob`` (which may be traced)
        overrides it.
      broadcast_dims: axes that share one mask.
      inference: if true, return the input untouched. The call's ``inference`` wins.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop.equinox
      >>> layer = jaxdrop.equinox.Dropout(0.9)
      >>> layer(jnp.ones(64), key=jax.random.key(0)).shape
      (64,)
    """

    keep_prob: float | jax.Array
    _: dataclasses.KW_ONLY
    broadcast_dims: int | Sequence[int] = _static_ints(())
    inference: bool = False

    def __check_init__(self) -> None:
        checks.check_keep_prob(self.keep_prob)

    def __call__(
        self,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        inference: bool | None = None,
        keep_prob: float | jax.Array | None = None,
    ) -> jax.Array:
        """Applies dropout unless in inference mode; ``keep_prob`` overrides the field."""
        keep_prob = checks.module_keep_prob(self, keep_prob)
        key = training_key(self, key, inference, keep_prob)
        if key is None:
            return x
        return dropout(key, x, keep_prob, broadcast_dims=self.broadcast_dims)


class SpatialDropout(eqx.Module):
    """SpatialDropout as an Equinox module: see :func:`jaxdrop.spatial_dropout`.

    On one ``(C, H, W)`` example (the default layout) it keeps or drops each channel's map.

    Attributes:
      keep_prob: probability of keeping a feature map. A call-time ``keep_prob`` (which may be
        traced) overrides it.
      spatial_dims: the axes a feature map spans; ``(-2, -1)``: channels first.
      inference: if true, return the input untouched. The call's ``inference`` wins.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop.equinox
      >>> layer = jaxdrop.equinox.SpatialDropout(0.8)
      >>> layer(jnp.ones((8, 16, 16)), key=jax.random.key(0)).shape
      (8, 16, 16)
    """

    keep_prob: float | jax.Array
    _: dataclasses.KW_ONLY
    spatial_dims: int | Sequence[int] = _static_ints(SPATIAL_DIMS)
    inference: bool = False

    def __check_init__(self) -> None:
        checks.check_keep_prob(self.keep_prob)

    def __call__(
        self,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        inference: bool | None = None,
        keep_prob: float | jax.Array | None = None,
    ) -> jax.Array:
        """Applies SpatialDropout unless in inference mode; ``keep_prob`` overrides the field."""
        keep_prob = checks.module_keep_prob(self, keep_prob)
        key = training_key(self, key, inference, keep_prob)
        if key is None:
            return x
        return spatial_dropout(key, x, keep_prob, spatial_dims=self.spatial_dims)


class DropPath(eqx.Module):
    """DropPath (stochastic depth) as an Equinox module: see :func:`jaxdrop.drop_path`.

    Apply it to a residual branch before the addition: ``x + self.drop_path(branch(x), key=k)``.
    The default ``mode="batch"`` draws once per call: the layer sees one example, so under
    ``jax.vmap`` with one key per example each example keeps or drops its branch on its own,
    as ``mode="row"`` does over a batch.

    Attributes:
      keep_prob: probability of keeping the branch. A call-time ``keep_prob`` (which may be
        traced) overrides it.
      mode: ``"batch"`` (one draw per call: per example under ``vmap``) or ``"row"`` (one draw
        per index of ``batch_axis``, for a layer that sees a batch).
      scale_by_keep: scale kept examples by ``1 / keep_prob``.
      batch_axis: the axis whose indices are dropped independently in ``"row"`` mode.
      inference: if true, return the input untouched. The call's ``inference`` wins.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop.equinox
      >>> layer = jaxdrop.equinox.DropPath(0.9)
      >>> layer(jnp.ones((197, 384)), key=jax.random.key(0)).shape
      (197, 384)
    """

    keep_prob: float | jax.Array
    _: dataclasses.KW_ONLY
    mode: Literal["row", "batch"] = _static("batch")
    scale_by_keep: bool = _static(True)
    batch_axis: int = _static(0)
    inference: bool = False

    def __check_init__(self) -> None:
        checks.check_keep_prob(self.keep_prob)
        checks.check_choice(self.mode, "mode", MODE_CHOICES)
        checks.check_bool(self.scale_by_keep, "scale_by_keep")

    def __call__(
        self,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        inference: bool | None = None,
        keep_prob: float | jax.Array | None = None,
    ) -> jax.Array:
        """Applies DropPath unless in inference mode; ``keep_prob`` overrides the field."""
        keep_prob = checks.module_keep_prob(self, keep_prob)
        key = training_key(self, key, inference, keep_prob)
        if key is None:
            return x
        return drop_path(
            key,
            x,
            keep_prob,
            mode=self.mode,
            scale_by_keep=self.scale_by_keep,
            batch_axis=self.batch_axis,
        )


class Cutout(eqx.Module):
    """Cutout as an Equinox module: see :func:`jaxdrop.cutout`.

    An augmentation: use it on the input image, in training only. ``x`` is always one example
    (``jaxdrop.cutout`` of ``x[None]``): the patches are shared over every non-spatial axis,
    whatever the layout, so that a ``(C, H, W)`` image is not taken for ``C`` examples.

    Attributes:
      size: the side of a patch, an int or one per spatial dim.
      spatial_dims: the axes the patches span; ``(-2, -1)``: channels first.
      num_patches: how many patches per example.
      fill: the value written into the patches (may be a JAX scalar).
      inference: if true, return the input untouched. The call's ``inference`` wins.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop.equinox
      >>> layer = jaxdrop.equinox.Cutout(16)
      >>> layer(jnp.ones((3, 32, 32)), key=jax.random.key(0)).shape
      (3, 32, 32)
    """

    size: int | Sequence[int] = _static_ints()
    _: dataclasses.KW_ONLY
    spatial_dims: int | Sequence[int] = _static_ints(SPATIAL_DIMS)
    num_patches: int = _static(1)
    fill: float | jax.Array = 0.0
    inference: bool = False

    def __check_init__(self) -> None:
        _check_sizes(self.size, self.spatial_dims, "size")
        checks.check_count(self.num_patches, "num_patches", minimum=0)

    def __call__(
        self, x: jax.Array, *, key: jax.Array | None = None, inference: bool | None = None
    ) -> jax.Array:
        """Applies Cutout unless in inference mode."""
        key = training_key(self, key, inference)
        if key is None:
            return x
        x = checks.as_floating_array(x)
        spatial = checks.canonical_axes(self.spatial_dims, x.ndim, "spatial_dims", shape=x.shape)
        # Negative axes name the same axes of x[None], whose leading axis is the one example.
        return cutout(
            key,
            x[None],
            self.size,
            spatial_dims=tuple(d - x.ndim for d in spatial),
            num_patches=self.num_patches,
            fill=self.fill,
        )[0]


class DropConnect(eqx.Module):
    """DropConnect around a layer: see :func:`jaxdrop.dropconnect`.

    In training, every call runs ``layer`` with its weights masked and rescaled by a fresh mask;
    in inference mode it is ``layer`` unchanged. The wrapper adds no arrays of its own: its
    parameters (``eqx.filter(wrapper, eqx.is_array)``) are exactly the layer's, under
    ``.layer``, and the stored weights are never modified. Under ``jax.vmap`` with one key per
    example, each example gets its own mask, as in Wan et al.

    Positional and keyword arguments of the call go to ``layer``, except ``key``, ``inference``
    and ``keep_prob``, which are the wrapper's: the key draws the mask and is not passed on.

    Attributes:
      layer: the wrapped module, e.g. ``eqx.nn.Linear(64, 128, key=k)`` or ``eqx.nn.Conv2d``.
      keep_prob: probability of keeping a weight. A call-time ``keep_prob`` (which may be
        traced) overrides it.
      where: which arrays to mask, a predicate ``where(path, leaf)`` on the layer's arrays
        (``eqx.filter(layer, eqx.is_array)``; ``path[-1].name`` is the field name). Default:
        floating leaves with at least 2 axes except a ``bias``, i.e. the weights; biases are
        never masked, as in the linen and NNX modules.
      inference: if true, run the plain layer. The call's ``inference`` wins.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import equinox as eqx
      >>> import jaxdrop.equinox
      >>> linear = eqx.nn.Linear(64, 128, key=jax.random.key(0))
      >>> layer = jaxdrop.equinox.DropConnect(linear, keep_prob=0.5)
      >>> layer(jnp.ones(64), key=jax.random.key(1)).shape
      (128,)
      >>> x = jnp.ones(64)
      >>> bool(jnp.all(layer(x, inference=True) == linear(x)))
      True
    """

    layer: Callable[..., Any]
    keep_prob: float | jax.Array
    _: dataclasses.KW_ONLY
    where: Where | None = eqx.field(default=None, static=True)
    inference: bool = False

    def __check_init__(self) -> None:
        if not callable(self.layer):
            raise TypeError(
                f"`layer` must be a callable module, e.g. eqx.nn.Linear, got {self.layer!r}."
            )
        checks.check_keep_prob(self.keep_prob)

    def __call__(
        self,
        *args: Any,
        key: jax.Array | None = None,
        inference: bool | None = None,
        keep_prob: float | jax.Array | None = None,
        **kwargs: Any,
    ) -> Any:
        """Runs ``layer`` with dropped connections unless in inference mode."""
        keep_prob = checks.module_keep_prob(self, keep_prob)
        key = training_key(self, key, inference, keep_prob)
        if key is None:
            return self.layer(*args, **kwargs)
        params, rest = eqx.partition(self.layer, eqx.is_array)
        where = is_weight if self.where is None else self.where
        masked = dropconnect(key, params, keep_prob, where=where)
        return eqx.combine(masked, rest)(*args, **kwargs)
