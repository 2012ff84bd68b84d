"""Argument checks and canonicalisation shared by every jaxdrop function.

Each check raises ``ValueError`` (bad value, shape or axis) or ``TypeError`` (bad type or dtype)
with a message that names the argument, says what was expected and shows what was received.
Only Python values are validated: a traced ``keep_prob`` cannot be inspected without ``checkify``,
so the samplers clip it instead (documented on each public function).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TypeGuard

import jax
import jax.numpy as jnp
import numpy as np


def as_floating_array(x: jax.typing.ArrayLike, name: str = "x") -> jax.Array:
    """Returns ``x`` as a JAX array, raising ``TypeError`` unless it has a floating dtype."""
    if not isinstance(x, jax.Array | np.ndarray | np.generic | numbers.Number):
        raise TypeError(f"`{name}` must be an array, got {type(x).__name__}.")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must have a floating dtype, got {x.dtype}.")
    return x


def check_keep_prob(keep_prob: float | jax.Array, name: str = "keep_prob") -> None:
    """Checks a Python ``keep_prob`` lies in [0, 1]; a JAX value must be a real scalar."""
    if isinstance(keep_prob, bool) or not isinstance(
        keep_prob, numbers.Real | jax.Array | np.ndarray | np.generic
    ):
        raise TypeError(
            f"`{name}` must be a float or a scalar JAX array, got {type(keep_prob).__name__}."
        )
    if isinstance(keep_prob, numbers.Real):
        if not 0.0 <= keep_prob <= 1.0:  # Also rejects NaN.
            raise ValueError(f"`{name}` must be in [0, 1], got {keep_prob!r}.")
        return
    if np.ndim(keep_prob) != 0:
        raise ValueError(f"`{name}` must be a scalar, got an array of shape {np.shape(keep_prob)}.")
    if not (
        jnp.issubdtype(keep_prob.dtype, jnp.floating)
        or jnp.issubdtype(keep_prob.dtype, jnp.integer)
    ):
        raise TypeError(f"`{name}` must have a real dtype, got {keep_prob.dtype}.")


def is_python_number(value: object) -> TypeGuard[float]:
    """True for a Python (or NumPy) number, which is safe to branch on outside a trace."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def canonical_axes(
    axes: int | Sequence[int], ndim: int, name: str, *, shape: tuple[int, ...] | None = None
) -> tuple[int, ...]:
    """Normalises ``axes`` to a tuple of distinct non-negative ints, in the given order."""
    if isinstance(axes, numbers.Integral) and not isinstance(axes, bool):
        axes = (int(axes),)
    if not isinstance(axes, Sequence) or not all(
        isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in axes
    ):
        raise TypeError(f"`{name}` must be an int or a sequence of ints, got {axes!r}.")
    out = []
    for axis in axes:
        if not -ndim <= axis < ndim:
            where = f" (`x` has shape {shape})" if shape is not None else ""
            raise ValueError(
                f"`{name}`: axis {axis} is out of bounds for array of dimension {ndim}{where}."
            )
        out.append(int(axis) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"`{name}` must not repeat an axis, got {tuple(axes)!r}.")
    return tuple(out)


def check_disjoint(a: tuple[int, ...], a_name: str, b: tuple[int, ...], b_name: str) -> None:
    """Raises ``ValueError`` if two canonical axis tuples share an axis."""
    common = sorted(set(a) & set(b))
    if common:
        raise ValueError(
            f"`{a_name}` and `{b_name}` must not share an axis, got {a_name}={a} and "
            f"{b_name}={b} (both contain {tuple(common)})."
        )


def canonical_sizes(size: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    """Turns an int or a sequence of ``n`` ints, each positive, into a tuple of ``n`` ints."""
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (int(size),) * n
    if not isinstance(size, Sequence) or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in size
    ):
        raise TypeError(f"`{name}` must be a positive int or a sequence of them, got {size!r}.")
    if len(size) != n:
        raise ValueError(
            f"`{name}` must be an int or have one entry per spatial dim ({n}), got {tuple(size)!r}."
        )
    if any(s < 1 for s in size):
        raise ValueError(f"`{name}` must be positive, got {tuple(size)!r}.")
    return tuple(int(s) for s in size)


def check_choice(value: object, name: str, choices: Sequence[str]) -> None:
    """Raises ``ValueError`` unless ``value`` is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}.")


def check_bool(value: object, name: str) -> None:
    """Raises ``TypeError`` unless ``value`` is a Python bool (a static option)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"`{name}` must be a bool, got {value!r}.")


def canonical_axis(axis: int, ndim: int, name: str, *, shape: tuple[int, ...] | None = None) -> int:
    """Normalises a single ``axis`` to a non-negative int."""
    if not isinstance(axis, numbers.Integral) or isinstance(axis, bool):
        raise TypeError(f"`{name}` must be an int, got {axis!r}.")
    return canonical_axes(axis, ndim, name, shape=shape)[0]


def check_nonempty_axes(axes: tuple[int, ...], name: str, hint: str = "") -> None:
    """Raises ``ValueError`` if a canonical axis tuple is empty."""
    if not axes:
        raise ValueError(f"`{name}` must name at least one axis, got (){hint}.")


def check_count(value: object, name: str, minimum: int = 0) -> int:
    """Returns ``value`` as an int, raising unless it is an int of at least ``minimum``."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be at least {minimum}, got {value!r}.")
    return int(value)


def check_python_keep_prob(keep_prob: object, name: str) -> float:
    """A ``keep_prob`` that must be a Python number in [0, 1] (a static configuration value)."""
    if not is_python_number(keep_prob):
        raise TypeError(f"`{name}` must be a Python float, got {type(keep_prob).__name__}.")
    check_keep_prob(keep_prob, name)
    return float(keep_prob)
