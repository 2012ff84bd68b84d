"""PatchDropout (Liu et al., 2023): keep a random subset of the patch tokens of each example."""

from __future__ import annotations

import functools
import math
import numbers
from typing import Literal, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdrop._src import checks


def num_kept_tokens(num_patches: int, keep_prob: float) -> int:
    """``max(1, int(num_patches * keep_prob))``, 0 when there are no patch tokens.

    The product is rounded to 6 decimals before the floor, so that a decimal ``keep_prob`` keeps
    the count it reads as: ``0.29`` of 100 tokens keeps 29, where binary floating point gives
    ``100 * 0.29 = 28.999999999999996``.
    """
    if num_patches == 0:
        return 0
    return max(1, math.floor(round(num_patches * keep_prob, 6)))


def _static_keep_prob(keep_prob: object) -> float:
    """``keep_prob`` as a Python float in [0, 1]; a traced value is a ``TypeError``."""
    checks.check_real_scalar(keep_prob, "keep_prob")
    value = checks.concrete_value(keep_prob)
    if value is None:
        raise TypeError(
            "`keep_prob` of `patch_dropout` must be a concrete number (a Python float, or a JAX "
            "scalar outside a trace), got a traced value: the number of kept tokens sets the "
            "shape of the output, which JAX must know when it traces. Under `jax.jit`, mark it "
            "static (`static_argnames=('keep_prob',)`) or close over a Python float; a schedule "
            "over steps needs one compiled step per distinct value."
        )
    checks.check_keep_prob(value)
    return value


def _check_tokens(tokens: jax.typing.ArrayLike, name: str = "tokens") -> jax.Array:
    tokens = checks.as_floating_array(tokens, name)
    if tokens.ndim < 2:
        raise ValueError(
            f"`{name}` must have shape (..., L, C) (at least 2 dimensions), got shape "
            f"{tokens.shape}. Add a trailing axis of size 1 for one feature per token."
        )
    return tokens


def _check_prefix(num_prefix_tokens: object, length: int) -> int:
    num_prefix_tokens = checks.check_count(num_prefix_tokens, "num_prefix_tokens", minimum=0)
    if num_prefix_tokens > length:
        raise ValueError(
            f"`num_prefix_tokens` must be at most the number of tokens ({length}), got "
            f"{num_prefix_tokens}."
        )
    return num_prefix_tokens


@overload
def patch_dropout(
    rng: jax.Array,
    tokens: jax.typing.ArrayLike,
    keep_prob: float | jax.Array,
    *,
    num_prefix_tokens: int = 0,
    ordered: bool = False,
    return_indices: Literal[False] = False,
) -> jax.Array: ...


@overload
def patch_dropout(
    rng: jax.Array,
    tokens: jax.typing.ArrayLike,
    keep_prob: float | jax.Array,
    *,
    num_prefix_tokens: int = 0,
    ordered: bool = False,
    return_indices: Literal[True],
) -> tuple[jax.Array, jax.Array]: ...


def patch_dropout(
    rng: jax.Array,
    tokens: jax.typing.ArrayLike,
    keep_prob: float | jax.Array,
    *,
    num_prefix_tokens: int = 0,
    ordered: bool = False,
    return_indices: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Keeps a random subset of the patch tokens of each example (PatchDropout).

    A vision transformer trained with PatchDropout sees, per example, a random subset of its
    patch tokens: attention and MLP costs fall with the number of tokens, so training gets
    faster as well as regularised (FLIP drops 50% to 75% of the patches). Of the
    :math:`L_p = L - \text{num\_prefix\_tokens}` patch tokens,

    .. math::

      k = \max\bigl(1, \lfloor L_p \cdot \text{keep\_prob} \rfloor\bigr)

    are kept, a subset drawn uniformly among the :math:`\binom{L_p}{k}`, independently per
    example. The ``num_prefix_tokens`` leading tokens (a class token, registers) are always kept,
    untouched, in front. Nothing is rescaled. This is timm's ``patch_dropout_forward`` with
    ``keep_prob = 1 - prob``: the same count (:math:`\lfloor L_p (1 - \text{prob}) \rfloor`, at
    least 1), the same random order of the kept tokens unless ``ordered=True``, the same indices.

    Every axis before the last two indexes examples: ``(N, L, C)`` gets ``N`` independent
    subsets, ``(L, C)`` one, ``(N, M, L, C)`` ``N * M``. With ``jax.vmap`` over per-example keys
    and ``(L, C)`` examples, the result equals a Python loop over the examples. The selection
    has no data-dependent control flow, and a batch sharded over devices needs no communication.

    The kept tokens receive the output's gradient; the dropped ones get exactly zero.

    Args:
      rng: a PRNG key, typed (``jax.random.key``) or legacy (``jax.random.PRNGKey``).
      tokens: floating array of shape ``(..., L, C)``: tokens on axis -2, features on axis -1.
      keep_prob: fraction of the patch tokens to keep, in [0, 1], **static**: a Python float,
        or a concrete JAX scalar (converted). Unlike the rest of the family it cannot be traced,
        because :math:`k` sets the output's shape. ``1.0`` returns ``tokens`` unchanged (with
        indices ``0 .. L_p - 1``). The product :math:`L_p \cdot \text{keep\_prob}` is rounded to
        6 decimals before the floor, so that ``0.29`` of 100 tokens keeps 29 (binary floating
        point gives 28.999999999999996).
      num_prefix_tokens: how many leading tokens (class token, registers) are always kept, in
        front, and not counted in :math:`L_p`. timm's modules default to 1; the function, like
        timm's, to 0.
      ordered: keep the kept tokens in their original order (indices sorted ascending). By
        default they come in the random order of the draw, as in timm, which a transformer
        without positional order in its computation does not mind.
      return_indices: also return the indices of the kept tokens.

    Returns:
      ``out`` of shape ``(..., num_prefix_tokens + k, C)`` and the dtype of ``tokens``: the
      prefix tokens, then the kept patch tokens. With ``return_indices=True``, ``(out,
      indices)``: ``indices`` is an ``int32`` array of shape ``(..., k)`` holding positions
      **among the patch tokens, excluding the prefix** (as timm's), so that
      ``out[..., num_prefix_tokens:, :]`` equals
      ``jnp.take_along_axis(tokens[..., num_prefix_tokens:, :], indices[..., None], axis=-2)``.
      :func:`patch_restore` puts the kept tokens back in place.

    Raises:
      TypeError: if ``rng`` is not a PRNG key, ``tokens`` is not floating, ``keep_prob`` is
        traced or not a real scalar, or an option has the wrong type.
      ValueError: if ``rng`` is a batch of keys, ``tokens`` has fewer than 2 dimensions,
        ``keep_prob`` is outside [0, 1], or ``num_prefix_tokens`` is negative or exceeds ``L``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop
      >>> tokens = jnp.ones((8, 1 + 64, 192))  # a class token and 8 x 8 patches
      >>> out = jaxdrop.patch_dropout(jax.random.key(0), tokens, 0.25, num_prefix_tokens=1)
      >>> out.shape, out.dtype
      ((8, 17, 192), dtype('float32'))
      >>> out, idx = jaxdrop.patch_dropout(
      ...     jax.random.key(0), tokens, 0.5, num_prefix_tokens=1, ordered=True,
      ...     return_indices=True)
      >>> idx.shape, idx.dtype, bool(jnp.all(jnp.diff(idx) > 0))
      ((8, 32), dtype('int32'), True)

    References:
      Liu et al, `PatchDropout: Economizing vision transformers using patch dropout
      <https://arxiv.org/abs/2208.07220>`_, 2023;
      Li et al, `Scaling language-image pre-training via masking
      <https://arxiv.org/abs/2212.00794>`_, 2023
    """
    checks.check_key(rng)
    tokens = _check_tokens(tokens)
    keep = _static_keep_prob(keep_prob)
    length = tokens.shape[-2]
    num_prefix_tokens = _check_prefix(num_prefix_tokens, length)
    checks.check_bool(ordered, "ordered")
    checks.check_bool(return_indices, "return_indices")
    num_patches = length - num_prefix_tokens
    num_keep = num_kept_tokens(num_patches, keep)
    if num_keep == num_patches:
        # Everything is kept (keep_prob 1, or no patch tokens): the tokens as they are, in order.
        if not return_indices:
            return tokens
        indices = jnp.broadcast_to(
            jnp.arange(num_patches, dtype=jnp.int32), tokens.shape[:-2] + (num_patches,)
        )
        return tokens, indices
    out, indices = _patch_dropout(
        rng,
        tokens,
        num_keep=num_keep,
        num_prefix_tokens=num_prefix_tokens,
        ordered=bool(ordered),
    )
    return (out, indices) if return_indices else out


def patch_dropout_or_all(
    rng: jax.Array | None,
    tokens: jax.Array,
    keep_prob: float | jax.Array | None,
    **options,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """The modules' rule: ``patch_dropout`` with a key, every token without one (evaluation).

    Without a key the function runs at ``keep_prob`` 1, which returns the tokens unchanged (and,
    with ``return_indices=True``, every index) and draws nothing, so evaluation has the training
    output's structure.
    """
    if rng is None:
        rng, keep_prob = jax.random.key(0), 1.0  # Not drawn from at keep_prob 1.
    return patch_dropout(rng, tokens, keep_prob, **options)  # pyright: ignore[reportCallIssue, reportArgumentType]


def kept_patch_indices(
    rng: jax.Array, batch_shape: tuple[int, ...], num_patches: int, num_keep: int, ordered: bool
) -> jax.Array:
    """``int32`` indices of shape ``batch_shape + (num_keep,)``: a uniform subset per example.

    The first ``num_keep`` of a uniformly random permutation of ``range(num_patches)``, drawn
    per example by sorting 64 random bits per token (two ``uint32`` sort keys): a uniform
    permutation but for ties, whose probability is below ``num_patches**2 / 2**65``.
    """
    # The batch axes lead the draw, so a batch sharded over devices draws its own bits
    # (threefry's partitionable bits) and sorts its own rows: no communication.
    bits = jax.random.bits(rng, batch_shape + (num_patches, 2), jnp.uint32)
    iota = lax.broadcasted_iota(jnp.int32, batch_shape + (num_patches,), len(batch_shape))
    *_, order = lax.sort((bits[..., 0], bits[..., 1], iota), dimension=-1, num_keys=2)
    indices = order[..., :num_keep]
    if ordered:
        indices = jnp.sort(indices, axis=-1)
    return indices


@functools.partial(jax.jit, static_argnames=("num_keep", "num_prefix_tokens", "ordered"))
def _patch_dropout(rng, tokens, *, num_keep, num_prefix_tokens, ordered):
    batch_shape = tokens.shape[:-2]
    prefix = tokens[..., :num_prefix_tokens, :]
    patches = tokens[..., num_prefix_tokens:, :]
    indices = kept_patch_indices(rng, batch_shape, patches.shape[-2], num_keep, ordered)
    # A gather along the token axis: its transpose scatters the gradient back to the kept tokens.
    kept = jnp.take_along_axis(patches, indices[..., None], axis=-2)
    return jnp.concatenate([prefix, kept], axis=-2), indices


def patch_restore(
    tokens: jax.typing.ArrayLike,
    indices: jax.typing.ArrayLike,
    length: int,
    *,
    num_prefix_tokens: int = 0,
    fill: float | jax.Array = 0.0,
) -> jax.Array:
    r"""Puts the tokens kept by :func:`patch_dropout` back in place (the inverse scatter).

    Given the output of ``patch_dropout(..., return_indices=True)`` (or any per-token output of a
    model run on it, such as an encoder's features or per-token logits) and its indices, returns
    the full sequence of ``length`` tokens: the prefix tokens in front as they are, each kept
    patch token at its original position, and ``fill`` at the dropped positions. This is the
    "unshuffle" of an MAE decoder (He et al., 2022), whose learned mask token is ``fill``.

    ``patch_restore(out, indices, L, num_prefix_tokens=P)`` equals ``tokens`` wherever a token
    was kept, for ``out, indices = patch_dropout(key, tokens, keep_prob, num_prefix_tokens=P,
    return_indices=True)`` and ``L = tokens.shape[-2]``, whatever ``ordered``.

    Args:
      tokens: floating array of shape ``(..., num_prefix_tokens + k, C)``: the prefix tokens,
        then the ``k`` kept patch tokens in the order of ``indices``.
      indices: integer array of shape ``(..., k)`` (the leading axes of ``tokens``): the
        position of each kept token among the patch tokens, **excluding the prefix**, as
        :func:`patch_dropout` returns them. They must be distinct; an out-of-range index is
        dropped (JAX's scatter default).
      length: the full length ``L`` of the restored sequence, prefix included (the ``L`` of the
        tokens given to :func:`patch_dropout`).
      num_prefix_tokens: how many leading tokens are prefix tokens, as given to
        :func:`patch_dropout`.
      fill: the value of the dropped positions: a scalar, or an array broadcastable to
        ``(..., L - num_prefix_tokens, C)`` such as a learned mask token of shape ``(C,)``. Cast
        to the dtype of ``tokens``. It receives the gradient of the dropped positions (MAE
        learns its mask token so).

    Returns:
      An array of shape ``(..., length, C)`` and the dtype of ``tokens``.

    Raises:
      TypeError: if ``tokens`` is not floating, ``indices`` is not an integer array, ``fill`` is
        not a real array, or ``length`` or ``num_prefix_tokens`` is not an int.
      ValueError: if the shapes of ``tokens`` and ``indices`` do not match, ``k`` exceeds
        ``length - num_prefix_tokens``, or ``fill`` does not broadcast.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop
      >>> tokens = jnp.arange(2 * 5 * 1, dtype=jnp.float32).reshape(2, 5, 1) + 1
      >>> out, idx = jaxdrop.patch_dropout(
      ...     jax.random.key(0), tokens, 0.5, num_prefix_tokens=1, return_indices=True)
      >>> out.shape
      (2, 3, 1)
      >>> full = jaxdrop.patch_restore(out, idx, 5, num_prefix_tokens=1)
      >>> full.shape
      (2, 5, 1)
      >>> bool(jnp.all((full == tokens) | (full == 0)))  # kept in place, zeros elsewhere
      True
      >>> bool(jnp.all(jnp.sum(full[..., 0] != 0, axis=-1) == 3))
      True

    References:
      He et al, `Masked autoencoders are scalable vision learners
      <https://arxiv.org/abs/2111.06377>`_, 2022
    """
    tokens = _check_tokens(tokens)
    if not isinstance(indices, jax.Array | np.ndarray):
        raise TypeError(
            f"`indices` must be an integer array (from `patch_dropout(..., "
            f"return_indices=True)`), got {type(indices).__name__}."
        )
    indices = jnp.asarray(indices)
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise TypeError(f"`indices` must have an integer dtype, got {indices.dtype}.")
    if not isinstance(length, numbers.Integral) or isinstance(length, bool):
        raise TypeError(f"`length` must be an int, got {length!r}.")
    length = int(length)
    num_prefix_tokens = checks.check_count(num_prefix_tokens, "num_prefix_tokens", minimum=0)
    num_keep = tokens.shape[-2] - num_prefix_tokens
    if num_keep < 0:
        raise ValueError(
            f"`num_prefix_tokens` ({num_prefix_tokens}) exceeds the number of tokens, got "
            f"`tokens` of shape {tokens.shape}."
        )
    if indices.shape != tokens.shape[:-2] + (num_keep,):
        raise ValueError(
            f"`indices` must have shape {tokens.shape[:-2] + (num_keep,)} (the leading axes of "
            f"`tokens`, then its {num_keep} kept patch tokens), got {indices.shape}."
        )
    num_patches = length - num_prefix_tokens
    if num_keep > num_patches:
        raise ValueError(
            f"`length` must be at least the number of tokens of `tokens` "
            f"({tokens.shape[-2]}), got {length}."
        )
    if isinstance(fill, bool) or not isinstance(
        fill, numbers.Real | jax.Array | np.ndarray | np.generic
    ):
        raise TypeError(f"`fill` must be a float or a real array, got {type(fill).__name__}.")
    fill_array = jnp.asarray(fill)
    if not (
        jnp.issubdtype(fill_array.dtype, jnp.floating)
        or jnp.issubdtype(fill_array.dtype, jnp.integer)
    ):
        raise TypeError(f"`fill` must have a real dtype, got {fill_array.dtype}.")
    target = tokens.shape[:-2] + (num_patches, tokens.shape[-1])
    try:
        np.broadcast_shapes(fill_array.shape, target)
    except ValueError:
        raise ValueError(
            f"`fill` must broadcast to {target} (the restored patch tokens), got shape "
            f"{fill_array.shape}."
        ) from None
    return _patch_restore(
        tokens,
        indices.astype(jnp.int32),
        fill_array,
        length=length,
        num_prefix_tokens=num_prefix_tokens,
    )


@functools.partial(jax.jit, static_argnames=("length", "num_prefix_tokens"))
def _patch_restore(tokens, indices, fill, *, length, num_prefix_tokens):
    batch_shape = tokens.shape[:-2]
    prefix = tokens[..., :num_prefix_tokens, :]
    kept = tokens[..., num_prefix_tokens:, :]
    channels = tokens.shape[-1]
    num_patches = length - num_prefix_tokens
    # Cast the fill first: a float32 mask token must not promote bfloat16 tokens. Broadcast with
    # the rank spelled out (strict rank promotion).
    fill = fill.astype(tokens.dtype)
    fill = jnp.broadcast_to(
        fill.reshape((1,) * (len(batch_shape) + 2 - fill.ndim) + fill.shape),
        batch_shape + (num_patches, channels),
    )

    def scatter(base, idx, values):  # One example: (L_p, C), (k,), (k, C).
        return base.at[idx].set(values)

    for _ in batch_shape:
        scatter = jax.vmap(scatter)
    return jnp.concatenate([prefix, scatter(fill, indices, kept)], axis=-2)
