"""Equinox wrappers, mirroring ``eqx.nn.Dropout``: apply the ``inference`` rule, call the function.

What every module here adds to its function, as ``eqx.nn.Dropout``: ``inference`` (a field that
``eqx.nn.inference_mode`` toggles; the call's wins) and a key passed at call time, ``key=``
(required in training). The drop probability is given by name, ``keep_prob=`` or ``rate=``
(``keep_prob = 1 - rate``; ``eqx.nn.Dropout(p)`` is ``Dropout(rate=p)``), at construction or at
call time (the call's wins, and may be traced, e.g. a schedule's value). Every other argument is
the function's, keyword-only, with the same name.

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
from jaxdrop._src.by_name import by_name
from jaxdrop._src.cutout import cutout
from jaxdrop._src.drop_path import MODE_CHOICES, drop_path
from jaxdrop._src.dropblock import dropblock
from jaxdrop._src.dropconnect import Where, dropconnect, is_weight_matrix
from jaxdrop._src.dropout import dropout
from jaxdrop._src.patch_dropout import patch_dropout_or_all
from jaxdrop._src.random_erasing import random_erasing
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


def check_probability(module: object) -> None:
    """At construction: one of ``keep_prob`` / ``rate`` at most, and a probability."""
    keep_prob = checks.module_keep_prob(module, optional=True)
    if keep_prob is not None:
        checks.check_keep_prob(keep_prob)


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


@by_name
class DropBlock(eqx.Module):
    """DropBlock as an Equinox module: the arguments are :func:`jaxdrop.dropblock`'s, by name.

    The layout default is one channels-first example, ``(C, H, W)``, as ``eqx.nn.Conv2d``:
    ``spatial_dims=(-2, -1)``; pass ``spatial_dims=(-3, -2)`` for ``(H, W, C)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import equinox as eqx
      >>> import jaxdrop.equinox
      >>> layer = jaxdrop.equinox.DropBlock(rate=0.1, block_size=3)
      >>> x = jnp.ones((4, 16, 16))  # one (C, H, W) example
      >>> layer(x, key=jax.random.key(0)).shape
      (4, 16, 16)
      >>> bool(jnp.all(eqx.nn.inference_mode(layer)(x) == x))
      True
    """

    _: dataclasses.KW_ONLY
    keep_prob: float | jax.Array | None = None
    rate: float | jax.Array | None = None
    block_size: int | Sequence[int] = _static_ints()
    spatial_dims: int | Sequence[int] = _static_ints(SPATIAL_DIMS)
    broadcast_dims: int | Sequence[int] = _static_ints(())
    normalize: masking.Normalize = _static("actual")
    calibrate: bool = _static(False)
    min_keep_prob: float | None = _static(None)
    inference: bool = False

    def __check_init__(self) -> None:
        check_probability(self)
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
        rate: float | jax.Array | None = None,
    ) -> jax.Array:
        """Applies DropBlock unless in inference mode; a call-time probability wins."""
        keep_prob = checks.module_keep_prob(self, keep_prob, rate)
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


@by_name
class Dropout(eqx.Module):
    """Dropout as an Equinox module: the arguments are :func:`jaxdrop.dropout`'s, by name.

    ``eqx.nn.Dropout(p)`` is ``Dropout(rate=p)``; it adds ``broadcast_dims`` and a traced
    call-time probability.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop.equinox
      >>> layer = jaxdrop.equinox.Dropout(rate=0.1)
      >>> layer(jnp.ones(64), key=jax.random.key(0)).shape
      (64,)
    """

    _: dataclasses.KW_ONLY
    keep_prob: float | jax.Array | None = None
    rate: float | jax.Array | None = None
    broadcast_dims: int | Sequence[int] = _static_ints(())
    inference: bool = False

    def __check_init__(self) -> None:
        check_probability(self)

    def __call__(
        self,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        inference: bool | None = None,
        keep_prob: float | jax.Array | None = None,
        rate: float | jax.Array | None = None,
    ) -> jax.Array:
        """Applies dropout unless in inference mode; a call-time probability wins."""
        keep_prob = checks.module_keep_prob(self, keep_prob, rate)
        key = training_key(self, key, inference, keep_prob)
        if key is None:
            return x
        return dropout(key, x, keep_prob, broadcast_dims=self.broadcast_dims)


@by_name
class SpatialDropout(eqx.Module):
    """SpatialDropout as an Equinox module: the arguments are
    :func:`jaxdrop.spatial_dropout`'s, by name.

    On one ``(C, H, W)`` example (the default, ``spatial_dims=(-2, -1)``) it keeps or drops
    each channel's map.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop.equinox
      >>> layer = jaxdrop.equinox.SpatialDropout(keep_prob=0.8)
      >>> layer(jnp.ones((8, 16, 16)), key=jax.random.key(0)).shape
      (8, 16, 16)
    """

    _: dataclasses.KW_ONLY
    keep_prob: float | jax.Array | None = None
    rate: float | jax.Array | None = None
    spatial_dims: int | Sequence[int] = _static_ints(SPATIAL_DIMS)
    inference: bool = False

    def __check_init__(self) -> None:
        check_probability(self)

    def __call__(
        self,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        inference: bool | None = None,
        keep_prob: float | jax.Array | None = None,
        rate: float | jax.Array | None = None,
    ) -> jax.Array:
        """Applies SpatialDropout unless in inference mode; a call-time probability wins."""
        keep_prob = checks.module_keep_prob(self, keep_prob, rate)
        key = training_key(self, key, inference, keep_prob)
        if key is None:
            return x
        return spatial_dropout(key, x, keep_prob, spatial_dims=self.spatial_dims)


@by_name
class DropPath(eqx.Module):
    """DropPath (stochastic depth) as an Equinox module: the arguments are
    :func:`jaxdrop.drop_path`'s, by name.

    Apply it to a residual branch before the addition: ``x + self.drop_path(branch(x), key=k)``.
    The default ``mode="batch"`` draws once per call: the layer sees one example, so under
    ``jax.vmap`` with one key per example each example keeps or drops its branch on its own, as
    ``mode="row"`` does over a batch.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop.equinox
      >>> layer = jaxdrop.equinox.DropPath(rate=0.1)
      >>> layer(jnp.ones((197, 384)), key=jax.random.key(0)).shape
      (197, 384)
    """

    _: dataclasses.KW_ONLY
    keep_prob: float | jax.Array | None = None
    rate: float | jax.Array | None = None
    mode: Literal["row", "batch"] = _static("batch")
    scale_by_keep: bool = _static(True)
    batch_axis: int = _static(0)
    inference: bool = False

    def __check_init__(self) -> None:
        check_probability(self)
        checks.check_choice(self.mode, "mode", MODE_CHOICES)
        checks.check_bool(self.scale_by_keep, "scale_by_keep")

    def __call__(
        self,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        inference: bool | None = None,
        keep_prob: float | jax.Array | None = None,
        rate: float | jax.Array | None = None,
    ) -> jax.Array:
        """Applies DropPath unless in inference mode; a call-time probability wins."""
        keep_prob = checks.module_keep_prob(self, keep_prob, rate)
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
    """Cutout as an Equinox module: the arguments are :func:`jaxdrop.cutout`'s.

    An augmentation: use it on the input image, in training only. It has no probability, so
    ``size`` may be positional. ``x`` is always one example (``jaxdrop.cutout`` of ``x[None]``):
    the patches are shared over every non-spatial axis, whatever the layout, so that a
    ``(C, H, W)`` image is not taken for ``C`` examples. ``fill`` may be a JAX scalar.

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


@by_name
class PatchDropout(eqx.Module):
    """PatchDropout as an Equinox module: the arguments are :func:`jaxdrop.patch_dropout`'s, by
    name.

    ``x`` is one example's ``(L, C)`` tokens (the model is ``jax.vmap``ped with one key per
    example). timm's ``PatchDropout(prob, num_prefix_tokens)`` is ``PatchDropout(rate=prob,
    num_prefix_tokens=...)``; ``num_prefix_tokens`` defaults to the function's 0, not timm's 1.
    The probability is static (it sets the output's length): a traced call-time one is the
    function's ``TypeError``. In inference mode every token comes back unchanged and, with
    ``return_indices=True``, with all the indices ``0 .. L_p - 1`` (the function at
    ``keep_prob=1``), so the caller's code is the same in both modes.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import equinox as eqx
      >>> import jaxdrop.equinox
      >>> layer = jaxdrop.equinox.PatchDropout(keep_prob=0.5, num_prefix_tokens=1)
      >>> x = jnp.ones((1 + 64, 192))  # one example's tokens
      >>> layer(x, key=jax.random.key(0)).shape
      (33, 192)
      >>> eqx.nn.inference_mode(layer)(x).shape
      (65, 192)
    """

    _: dataclasses.KW_ONLY
    keep_prob: float | jax.Array | None = None
    rate: float | jax.Array | None = None
    num_prefix_tokens: int = _static(0)
    ordered: bool = _static(False)
    return_indices: bool = _static(False)
    inference: bool = False

    def __check_init__(self) -> None:
        check_probability(self)
        checks.check_count(self.num_prefix_tokens, "num_prefix_tokens", minimum=0)
        checks.check_bool(self.ordered, "ordered")
        checks.check_bool(self.return_indices, "return_indices")

    def __call__(
        self,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        inference: bool | None = None,
        keep_prob: float | jax.Array | None = None,
        rate: float | jax.Array | None = None,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Applies PatchDropout unless in inference mode; a call-time probability wins."""
        keep_prob = checks.module_keep_prob(self, keep_prob, rate)
        key = training_key(self, key, inference, keep_prob)
        return patch_dropout_or_all(
            key,
            x,
            keep_prob,
            num_prefix_tokens=self.num_prefix_tokens,
            ordered=self.ordered,
            return_indices=self.return_indices,
        )


@by_name
class RandomErasing(eqx.Module):
    """Random Erasing as an Equinox module: the arguments are :func:`jaxdrop.random_erasing`'s,
    by name.

    An augmentation: use it on the input image, in training only. ``x`` is one channels-first
    image, ``(C, H, W)`` as ``eqx.nn.Conv2d`` takes it: ``spatial_dims=(-2, -1)`` and
    ``channel_axis=-3`` by default (pass ``spatial_dims=(-3, -2), channel_axis=-1`` for ``(H, W,
    C)``); the model is ``jax.vmap``ped with one key per image. ``p`` is the probability of
    erasing the image, as torchvision's and the function's ``p`` (timm's ``probability``); like
    the other modules' probability it is given by name, at construction or at call time (the
    call's wins, and may be traced, e.g. a schedule's value). ``p`` and ``fill`` are leaves (as
    ``Cutout``'s ``fill``): use ``eqx.filter_jit``, which keeps a string ``fill`` static.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop.equinox
      >>> layer = jaxdrop.equinox.RandomErasing(p=0.25, fill="pixel")
      >>> layer(jnp.ones((3, 32, 32)), key=jax.random.key(0)).shape
      (3, 32, 32)
    """

    _: dataclasses.KW_ONLY
    p: float | jax.Array | None = None
    area: tuple[float, float] = _static_ints((0.02, 1 / 3))
    aspect: tuple[float, float] = _static_ints((0.3, 10 / 3))
    fill: checks.FillMode | float | jax.Array = "zeros"
    max_count: int = _static(1)
    spatial_dims: Sequence[int] = _static_ints(SPATIAL_DIMS)
    channel_axis: int | None = _static(-3)
    inference: bool = False

    def __check_init__(self) -> None:
        if self.p is not None:
            checks.check_keep_prob(self.p, "p")
        checks.check_count(self.max_count, "max_count", minimum=1)

    def __call__(
        self,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        inference: bool | None = None,
        p: float | jax.Array | None = None,
    ) -> jax.Array:
        """Applies Random Erasing unless in inference mode; a call-time ``p`` wins."""
        p = checks.module_p(self, p)
        key = training_key(self, key, inference)
        if key is None:
            return x
        return random_erasing(
            key,
            x,
            p,
            area=self.area,
            aspect=self.aspect,
            fill=self.fill,
            max_count=self.max_count,
            spatial_dims=self.spatial_dims,
            channel_axis=self.channel_axis,
        )


@by_name
class DropConnect(eqx.Module):
    """DropConnect around a layer: the arguments are :func:`jaxdrop.dropconnect`'s, by name.

    ``layer`` (positional) is the wrapped module, e.g. ``eqx.nn.Linear(64, 128, key=k)``.
    ``where`` is a predicate ``where(path, leaf)`` on its arrays (``path[-1].name`` is the field
    name); the default masks the weights, never a bias, as the linen and NNX modules. In
    training every call runs ``layer`` with freshly masked weights (the stored ones never
    change); in inference it is ``layer`` unchanged. The wrapper adds no arrays of its own.
    Under ``jax.vmap`` with one key per example each example gets its own mask, as in Wan et
    al. The call's arguments go to ``layer``, except ``key``, ``inference``, ``keep_prob`` and
    ``rate``, which are the wrapper's.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import equinox as eqx
      >>> import jaxdrop.equinox
      >>> linear = eqx.nn.Linear(64, 128, key=jax.random.key(0))
      >>> layer = jaxdrop.equinox.DropConnect(linear, rate=0.5)
      >>> x = jnp.ones(64)
      >>> bool(jnp.all(layer(x, inference=True) == linear(x)))
      True
    """

    layer: Callable[..., Any]
    _: dataclasses.KW_ONLY
    keep_prob: float | jax.Array | None = None
    rate: float | jax.Array | None = None
    where: Where | None = eqx.field(default=None, static=True)
    inference: bool = False

    def __check_init__(self) -> None:
        if not callable(self.layer):
            raise TypeError(
                f"`layer` must be a callable module, e.g. eqx.nn.Linear, got {self.layer!r}."
            )
        check_probability(self)

    def __call__(
        self,
        *args: Any,
        key: jax.Array | None = None,
        inference: bool | None = None,
        keep_prob: float | jax.Array | None = None,
        rate: float | jax.Array | None = None,
        **kwargs: Any,
    ) -> Any:
        """Runs ``layer`` with dropped connections unless in inference mode."""
        keep_prob = checks.module_keep_prob(self, keep_prob, rate)
        key = training_key(self, key, inference, keep_prob)
        if key is None:
            return self.layer(*args, **kwargs)
        params, rest = eqx.partition(self.layer, eqx.is_array)
        where = is_weight if self.where is None else self.where
        masked = dropconnect(key, params, keep_prob, where=where)
        return eqx.combine(masked, rest)(*args, **kwargs)
