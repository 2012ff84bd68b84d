"""Dropout (Srivastava et al., 2014): drop independent units, optionally sharing the mask."""

from __future__ import annotations

from collections.abc import Sequence

import jax

from jaxdrop._src import checks, masking


def dropout(
    rng: jax.Array,
    x: jax.typing.ArrayLike,
    keep_prob: float | jax.Array,
    *,
    broadcast_dims: int | Sequence[int] = (),
) -> jax.Array:
    r"""Drops independent units (dropout).

    Every unit is kept independently with probability ``keep_prob`` and the kept ones are scaled
    by ``1 / keep_prob``, so the expectation of the output is ``x``. This is
    ``flax.linen.Dropout`` with ``keep_prob = 1 - rate``: for the same key it drops exactly the
    same units.

    .. math::

      y = \frac{m \odot x}{\text{keep\_prob}}, \qquad m_i \sim \text{Bernoulli}(\text{keep\_prob}).

    Args:
      rng: a PRNG key, typed (``jax.random.key``) or legacy (``jax.random.PRNGKey``).
      x: floating array of any shape.
      keep_prob: probability of keeping a unit, a Python float or a traced scalar. ``1.0``
        returns ``x`` unchanged and ``0.0`` returns zeros. A traced value is not checked; it is
        clipped to [0, 1] (NaN counts as 0). It receives no gradient.
      broadcast_dims: axes that share one mask, as in ``flax.linen.Dropout``: ``(-1,)`` shares a
        mask across channels, ``(0,)`` across the batch. Every other axis gets its own draws.

    Returns:
      An array with the shape and dtype of ``x``.

    Raises:
      TypeError: if ``rng`` is not a PRNG key, ``x`` is not floating, or an option has the wrong
        type.
      ValueError: if ``rng`` is a batch of keys, a concrete ``keep_prob`` is outside [0, 1], or
        an axis of ``broadcast_dims`` is out of bounds or repeated.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop
      >>> x = jnp.ones((8, 32, 64))
      >>> y = jaxdrop.dropout(jax.random.key(0), x, 0.9)
      >>> y.shape, y.dtype
      ((8, 32, 64), dtype('float32'))
      >>> round(float(jnp.mean(y != 0)), 2)
      0.9
      >>> bool(jnp.allclose(y[y != 0], 1 / 0.9))  # kept units are rescaled
      True

    References:
      Srivastava et al, `Dropout: A simple way to prevent neural networks from overfitting
      <https://jmlr.org/papers/v15/srivastava14a.html>`_, 2014
    """
    checks.check_key(rng)
    x = checks.as_floating_array(x)
    keep_prob = checks.check_keep_prob(keep_prob)
    broadcast = checks.canonical_axes(broadcast_dims, x.ndim, "broadcast_dims", shape=x.shape)
    if checks.nothing_to_drop(x.size, keep_prob):
        return x
    mask_shape = tuple(1 if d in broadcast else n for d, n in enumerate(x.shape))
    return masking.drop_units(rng, x, keep_prob, mask_shape=mask_shape, normalize="expected")
