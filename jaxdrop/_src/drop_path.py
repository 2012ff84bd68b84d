"""DropPath, or stochastic depth (Huang et al., 2016): drop a whole residual branch."""

from __future__ import annotations

import typing
from typing import Literal

import jax

from jaxdrop._src import checks, masking

Mode = Literal["row", "batch"]
MODE_CHOICES: tuple[str, ...] = typing.get_args(Mode)


def drop_path(
    rng: jax.Array,
    x: jax.typing.ArrayLike,
    keep_prob: float | jax.Array,
    *,
    mode: Mode = "row",
    scale_by_keep: bool = True,
    batch_axis: int = 0,
) -> jax.Array:
    r"""Drops a whole residual branch per example (DropPath, stochastic depth).

    Apply it to the output of a residual branch before the addition,
    ``x + drop_path(rng, branch(x), keep_prob)``: a dropped example then skips the block and
    passes through the identity shortcut, which trains a network of random depth. With
    ``mode="row"`` every example (index of ``batch_axis``) is kept or dropped on its own, as timm's
    ``drop_path`` and torchvision's ``stochastic_depth(mode="row")``; with ``mode="batch"`` one
    draw keeps or drops the branch for the whole batch. Works for any rank: images
    ``(B, H, W, C)``, token sequences ``(B, L, C)``, ...

    .. math::

      y_b = \frac{m_b\, x_b}{\text{keep\_prob}}, \qquad m_b \sim \text{Bernoulli}(\text{keep\_prob})

    (without the division when ``scale_by_keep=False``).

    Args:
      rng: a PRNG key, typed (``jax.random.key``) or legacy (``jax.random.PRNGKey``).
      x: floating array with a batch axis, e.g. ``(B, L, C)`` or ``(B, H, W, C)``.
      keep_prob: probability of keeping the branch (the paper's survival probability
        :math:`p_l`), a Python float or a traced scalar. ``1.0`` returns ``x`` unchanged and
        ``0.0`` returns zeros. A traced value is not checked; it is clipped to [0, 1] (NaN
        counts as 0). It receives no gradient. See :func:`drop_path_keep_probs` for the usual
        values over depth.
      mode: ``"row"`` (one draw per example) or ``"batch"`` (one draw for the whole array).
      scale_by_keep: scale kept examples by ``1 / keep_prob`` (as timm's default), so the
        expectation is ``x``. ``False`` leaves them unscaled, as in the paper, which instead
        multiplies the branch by ``keep_prob`` at test time.
      batch_axis: the axis of ``x`` whose indices are dropped independently in ``"row"`` mode.

    Returns:
      An array with the shape and dtype of ``x``.

    Raises:
      TypeError: if ``rng`` is not a PRNG key, ``x`` is not floating, or an option has the wrong
        type.
      ValueError: if ``rng`` is a batch of keys, a concrete ``keep_prob`` is outside [0, 1],
        ``mode`` is unknown, or ``batch_axis`` is out of bounds.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop
      >>> x = jnp.ones((64, 197, 384))  # (batch, tokens, channels)
      >>> y = jaxdrop.drop_path(jax.random.key(0), x, 0.9)
      >>> y.shape, y.dtype
      ((64, 197, 384), dtype('float32'))
      >>> kept = jnp.all(y != 0, axis=(1, 2))  # whole examples are kept or dropped
      >>> bool(jnp.all(kept | jnp.all(y == 0, axis=(1, 2))))
      True

    References:
      Huang et al, `Deep networks with stochastic depth <https://arxiv.org/abs/1603.09382>`_,
      2016
    """
    checks.check_key(rng)
    x = checks.as_floating_array(x)
    keep_prob = checks.check_keep_prob(keep_prob)
    checks.check_choice(mode, "mode", MODE_CHOICES)
    checks.check_bool(scale_by_keep, "scale_by_keep")
    batch = checks.canonical_axis(batch_axis, x.ndim, "batch_axis", shape=x.shape)
    if checks.nothing_to_drop(x.size, keep_prob):
        return x
    if mode == "row":
        mask_shape = tuple(n if d == batch else 1 for d, n in enumerate(x.shape))
    else:
        mask_shape = (1,) * x.ndim
    normalize = "expected" if scale_by_keep else "none"
    return masking.drop_units(rng, x, keep_prob, mask_shape=mask_shape, normalize=normalize)


def drop_path_keep_probs(
    num_blocks: int, final_keep_prob: float, *, first_block_kept: bool = False
) -> tuple[float, ...]:
    r"""Keep probabilities of ``num_blocks`` residual blocks, falling linearly with depth.

    The stochastic depth paper's linear decay rule: block :math:`l = 1, \dots, L` is kept with

    .. math::

      p_l = 1 - \frac{l}{L} (1 - p_L),

    so early blocks, which extract low-level features used by everything after them, are rarely
    dropped and the last block is kept with ``final_keep_prob`` (:math:`p_L`, 0.5 in the paper).
    With ``first_block_kept=True`` the drop rates are instead spaced from 0 to
    ``1 - final_keep_prob`` over the blocks, so the first block is never dropped: timm's
    ``calculate_drop_path_rates`` / ``torch.linspace(0, drop_path_rate, depth)`` used by ViT,
    DeiT, Swin and ConvNeXt, with ``drop_path_rate = 1 - final_keep_prob``.

    Args:
      num_blocks: the number of residual blocks :math:`L`, at least 1.
      final_keep_prob: the keep probability of the last block, a Python float in [0, 1].
      first_block_kept: space the rates as timm does (first block kept with probability 1).

    Returns:
      A tuple of ``num_blocks`` Python floats, one ``keep_prob`` per block in order, ready to be
      used as static module attributes.

    Raises:
      TypeError: if ``num_blocks`` is not an int or ``final_keep_prob`` is not a Python float.
      ValueError: if ``num_blocks`` is below 1 or ``final_keep_prob`` is outside [0, 1].

    Examples:
      >>> import jaxdrop
      >>> jaxdrop.drop_path_keep_probs(4, 0.5)
      (0.875, 0.75, 0.625, 0.5)
      >>> jaxdrop.drop_path_keep_probs(5, 0.8, first_block_kept=True)
      (1.0, 0.95, 0.9, 0.85, 0.8)

    References:
      Huang et al, `Deep networks with stochastic depth <https://arxiv.org/abs/1603.09382>`_,
      2016
    """
    num_blocks = checks.check_count(num_blocks, "num_blocks", minimum=1)
    final_keep_prob = checks.check_python_keep_prob(final_keep_prob, "final_keep_prob")
    checks.check_bool(first_block_kept, "first_block_kept")
    drop = 1.0 - final_keep_prob
    if first_block_kept:
        steps = max(num_blocks - 1, 1)
        fractions = [i / steps for i in range(num_blocks)]
    else:
        fractions = [(i + 1) / num_blocks for i in range(num_blocks)]
    # Rounding to 12 digits removes float noise such as 0.8500000000000001 (so the doctest values
    # read as written); the change is below 1e-12, far under float32's resolution.
    return tuple(round(1.0 - f * drop, 12) for f in fractions)
