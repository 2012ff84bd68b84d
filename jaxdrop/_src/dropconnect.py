"""DropConnect (Wan et al., 2013): drop weights, not units, over a pytree of parameters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrop._src import checks, masking

Where = Callable[[tuple[Any, ...], Any], bool]


def is_weight_matrix(path: tuple[Any, ...], leaf: Any) -> bool:
    """The default selection of :func:`dropconnect`: floating leaves with at least 2 axes.

    Kernels of ``Dense``/``Conv``/``DenseGeneral``/``Linear``, weight matrices and embedding
    tables have 2 or more axes; biases, normalisation scales and offsets and running statistics
    have 1 or 0, and integer leaves (counters) are never selected.
    """
    del path
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating) and np.ndim(leaf) >= 2


def dropconnect(
    rng: jax.Array,
    params: Any,
    keep_prob: float | jax.Array,
    *,
    where: Where | None = None,
) -> Any:
    r"""Drops individual weights of the selected parameters (DropConnect).

    Instead of dropping units (activations), DropConnect drops connections: each weight of a
    selected leaf is kept independently with probability ``keep_prob``, and kept weights are
    scaled by ``1 / keep_prob``, so the expected weights are unchanged. Run the layer with the
    returned parameters, drawing a new mask every training step. ``params`` is any pytree: a
    single kernel, or a whole Flax ``params`` tree. The key is split so that every selected leaf
    gets its own independent mask; unselected leaves are returned as they are.

    .. math::

      W' = \frac{M \odot W}{\text{keep\_prob}}, \qquad
      M_{ij} \sim \text{Bernoulli}(\text{keep\_prob}).

    Args:
      rng: a PRNG key, typed (``jax.random.key``) or legacy (``jax.random.PRNGKey``).
      params: a pytree of parameters, e.g. a kernel of shape ``(in, out)`` or
        ``variables["params"]`` of a Flax model.
      keep_prob: probability of keeping a weight, a Python float or a traced scalar. ``1.0``
        returns ``params`` unchanged and ``0.0`` zeroes the selected leaves. A traced value is
        not checked; it is clipped to [0, 1] (NaN counts as 0). It receives no gradient.
      where: which leaves to mask, a predicate ``where(path, leaf) -> bool`` on the key path
        (as in ``jax.tree_util.tree_flatten_with_path``) and the leaf. By default, the floating
        leaves with at least 2 axes: kernels and weight matrices, not biases, normalisation
        parameters or scalars. Select by name with e.g.
        ``lambda path, leaf: path[-1].key == "kernel"``.

    Returns:
      A pytree with the structure of ``params``: every selected leaf masked and rescaled, with its
      shape and dtype; the others untouched.

    Raises:
      TypeError: if ``rng`` is not a PRNG key, ``where`` is not callable or does not return a
        bool, or a selected leaf is not a floating array.
      ValueError: if ``rng`` is a batch of keys, or a concrete ``keep_prob`` is outside [0, 1].

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdrop
      >>> params = {"kernel": jnp.ones((256, 128)), "bias": jnp.ones((128,))}
      >>> dropped = jaxdrop.dropconnect(jax.random.key(0), params, 0.5)
      >>> jax.tree.map(lambda p: p.shape, dropped)
      {'bias': (128,), 'kernel': (256, 128)}
      >>> round(float(jnp.mean(dropped["kernel"] != 0)), 2), bool(jnp.all(dropped["bias"] == 1))
      (0.5, True)

    References:
      Wan et al, `Regularization of neural networks using DropConnect
      <https://proceedings.mlr.press/v28/wan13.html>`_, 2013
    """
    checks.check_key(rng)
    keep_prob = checks.check_keep_prob(keep_prob)
    if where is None:
        where = is_weight_matrix
    elif not callable(where):
        raise TypeError(
            f"`where` must be a callable `where(path, leaf) -> bool` or None, got {where!r}."
        )
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    selected = []
    for i, (path, leaf) in enumerate(leaves):
        chosen = where(path, leaf)
        if not isinstance(chosen, bool | np.bool_):
            raise TypeError(
                f"`where` must return a Python bool, got {chosen!r} for the leaf at "
                f"params{jax.tree_util.keystr(path)}."
            )
        if chosen:
            checks.as_floating_array(leaf, name=f"params{jax.tree_util.keystr(path)}")
            selected.append(i)
    if checks.nothing_to_drop(sum(np.size(leaves[i][1]) for i in selected), keep_prob):
        return params
    out = [leaf for _, leaf in leaves]
    keys = jax.random.split(rng, len(selected))
    for key, i in zip(keys, selected, strict=True):
        leaf = checks.as_floating_array(out[i])
        if leaf.size:
            out[i] = masking.drop_units(
                key, leaf, keep_prob, mask_shape=leaf.shape, normalize="expected"
            )
    return jax.tree_util.tree_unflatten(treedef, out)
