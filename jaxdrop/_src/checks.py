"""Argument checks and canonicalisation shared by every jaxdrop function.

Each check raises ``ValueError`` (bad value, shape or axis) or ``TypeError`` (bad type or dtype)
with a message that names the argument, says what was expected and shows what was received.
Every concrete value is validated, whatever its kind (a Python or NumPy number, a 0-d array, a
JAX array outside a trace); only a traced ``keep_prob`` cannot be inspected without ``checkify``,
so the samplers clip it instead (documented on each public function).
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence
from typing import Any, Literal, TypeGuard, cast, overload

import jax
import jax.numpy as jnp
import numpy as np


def _default_prng_impl() -> str:
    """The default PRNG implementation's name, context managers included."""
    return jax.config.jax_default_prng_impl  # pyright: ignore[reportAttributeAccessIssue]


@functools.cache
def _legacy_key_shape(impl: str) -> tuple[int, ...]:
    """The shape of a legacy (raw ``uint32``) key of the PRNG implementation ``impl``."""
    return jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0, impl=impl))).shape


def check_key(rng: object, name: str = "rng") -> None:
    """Raises unless ``rng`` is one PRNG key: a typed key of shape ``()`` or a legacy key.

    A legacy key is a ``uint32`` array shaped like the key data of the default implementation
    (``(2,)`` for threefry), as ``jax.random`` accepts it. Only the dtype and shape are read, so
    a traced key is checked like any other.
    """
    dtype = getattr(rng, "dtype", None)
    if not isinstance(rng, jax.Array | np.ndarray) or dtype is None:
        raise TypeError(
            f"`{name}` must be a PRNG key from `jax.random.key(seed)` (or a legacy "
            f"`jax.random.PRNGKey(seed)`), got {rng!r}."
        )
    shape = tuple(rng.shape)
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        key_shape: tuple[int, ...] = ()
    elif dtype == np.uint32:
        key_shape = _legacy_key_shape(_default_prng_impl())
    else:
        raise TypeError(
            f"`{name}` must be a PRNG key from `jax.random.key(seed)` (or a legacy uint32 "
            f"`jax.random.PRNGKey(seed)`), got an array of dtype {dtype} and shape {shape}."
        )
    if shape == key_shape:
        return
    if len(shape) > len(key_shape) and shape[len(shape) - len(key_shape) :] == key_shape:
        batch = shape[: len(shape) - len(key_shape)]
        raise ValueError(
            f"`{name}` must be a single PRNG key, got a batch of keys of shape {batch}. To use "
            "one key per example, `jax.vmap` the call over the keys and the examples; otherwise "
            "pass one key, e.g. `key, subkey = jax.random.split(key)` and then `subkey`."
        )
    raise ValueError(
        f"`{name}` must be a legacy key of shape {key_shape} (the default PRNG implementation, "
        f"{_default_prng_impl()}) or a typed key, got a uint32 array of "
        f"shape {shape}."
    )


def as_floating_array(x: jax.typing.ArrayLike, name: str = "x") -> jax.Array:
    """Returns ``x`` as a JAX array, raising ``TypeError`` unless it has a floating dtype."""
    if not isinstance(x, jax.Array | np.ndarray | np.generic | numbers.Number):
        raise TypeError(f"`{name}` must be an array, got {type(x).__name__}.")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must have a floating dtype, got {x.dtype}.")
    return x


def check_real_scalar(value: object, name: str) -> None:
    """Raises unless ``value`` is a real scalar: a number, or a 0-d array of a real dtype."""
    if isinstance(value, bool | np.bool_) or not isinstance(
        value, numbers.Real | jax.Array | np.ndarray | np.generic
    ):
        raise TypeError(f"`{name}` must be a float or a scalar array, got {type(value).__name__}.")
    if isinstance(value, numbers.Real):
        return
    if np.ndim(value) != 0:
        raise ValueError(f"`{name}` must be a scalar, got an array of shape {np.shape(value)}.")
    if not (jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)):
        raise TypeError(f"`{name}` must have a real dtype, got {value.dtype}.")


def concrete_value(value: object) -> float | None:
    """``value`` as a Python float if it is known outside a trace, else ``None``.

    Python and NumPy numbers, 0-d NumPy arrays and JAX arrays outside a trace are concrete. A
    tracer is not, and neither is an array spread over hosts (not fully addressable), whose
    value this process cannot read. Expects a real scalar (see :func:`check_keep_prob`).
    """
    if isinstance(value, numbers.Real):
        return float(value)
    if is_traced(value):
        return None
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        return None
    return float(np.asarray(value))


def is_traced(value: object) -> bool:
    """True for a tracer (a value inside ``jit``, ``vmap``, ``grad``...), with public JAX only.

    A tracer is a ``jax.Array`` whose ``is_fully_addressable`` raises
    ``jax.errors.ConcretizationTypeError``: it has no buffers, so no placement to report.
    """
    if not isinstance(value, jax.Array):
        return False
    try:
        value.is_fully_addressable  # noqa: B018 (the attribute access is the test)
    except jax.errors.ConcretizationTypeError:
        return True
    return False


def check_keep_prob(keep_prob: object, name: str = "keep_prob") -> float | jax.Array:
    """Checks a ``keep_prob`` and returns it in the form the jitted kernels take.

    Any concrete value (a Python number, ``fractions.Fraction`` included, a NumPy scalar or 0-d
    array, a JAX array outside a trace) must lie in [0, 1] and comes back as a Python float, so
    that a concrete ``jnp.float32(0.9)`` is handled exactly like ``0.9``: the same checks
    (against ``min_keep_prob`` too), the same sampler, the same mask, and no dtype promotion of
    ``x`` (a Python float is weakly typed). A traced one must be a real scalar and is returned as
    it is.
    """
    check_real_scalar(keep_prob, name)
    value = concrete_value(keep_prob)
    if value is None:
        return cast(jax.Array, keep_prob)
    if not 0.0 <= value <= 1.0:  # Also rejects NaN.
        raise ValueError(f"`{name}` must be in [0, 1], got {keep_prob!r}.")
    return value


def nothing_to_drop(size: int, keep_prob: float | jax.Array) -> bool:
    """True when there is provably nothing to drop: no units, or a concrete ``keep_prob`` of 1.

    Lets the public functions return their input untouched without compiling anything. Never
    branches on a traced value: a traced ``keep_prob`` of 1 goes through the kernel, which keeps
    everything.
    """
    return size == 0 or concrete_value(keep_prob) == 1.0


def is_python_number(value: object) -> TypeGuard[float]:
    """True for a Python (or NumPy) number, which is safe to branch on outside a trace."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def first_from(*values: Any, error_msg: str) -> Any:
    """The first value that is not ``None``; raises ``ValueError(error_msg)`` if all are.

    As ``flax.nnx.module.first_from`` (private in Flax): a call-time argument, then the
    module's attribute.
    """
    for value in values:
        if value is not None:
            return value
    raise ValueError(error_msg)


# Every module's constructor and call say the same: the probability is given by name.
KEEP_PROB_OR_RATE = (
    "give the probability by name: `keep_prob=` (the probability of keeping a unit, the "
    "functions' argument) or `rate=` (the probability of dropping one, as flax's `rate`, "
    "Equinox's `p`, timm's `drop_prob`), not both: keep_prob = 1 - rate."
)


@overload
def module_keep_prob(
    module: object, keep_prob: object = ..., rate: object = ..., *, optional: Literal[False] = ...
) -> float | jax.Array: ...
@overload
def module_keep_prob(
    module: object, keep_prob: object = ..., rate: object = ..., *, optional: bool
) -> float | jax.Array | None: ...
def module_keep_prob(
    module: object,
    keep_prob: object = None,
    rate: object = None,
    *,
    optional: bool = False,
) -> float | jax.Array | None:
    """A module's ``keep_prob``, from ``keep_prob=`` or ``rate=``, at call time or construction.

    The call's ``keep_prob`` or ``rate`` first, then the module's ``keep_prob`` or ``rate``
    attribute; a ``rate`` becomes ``1 - rate``, a Python float for a Python number and an array
    for an array (a traced one included). Both spellings at once, or neither (unless
    ``optional``, which then returns ``None``: a check at construction, where the value may come
    at call time), is a ``TypeError`` that says ``keep_prob = 1 - rate``. Any module that stores
    ``keep_prob`` and ``rate`` attributes (``None`` when not given) can use it.
    """
    name = type(module).__name__
    for where, kp, r in (
        ("the call", keep_prob, rate),
        ("the constructor", getattr(module, "keep_prob", None), getattr(module, "rate", None)),
    ):
        if kp is not None and r is not None:
            raise TypeError(
                f"{name} got both `keep_prob` ({kp!r}) and `rate` ({r!r}) in {where}: "
                + KEEP_PROB_OR_RATE
            )
        if kp is not None:
            return cast("float | jax.Array", kp)
        if r is not None:
            # Checked as a probability, so that the error names `rate`; 1.0 - keeps a Python
            # number a Python float and an array (traced or not) an array.
            return 1.0 - check_keep_prob(r, "rate")
    if optional:
        return None
    raise TypeError(
        f"{name} has no drop probability, neither in its constructor nor in the call: "
        + KEEP_PROB_OR_RATE
        + f" E.g. `{name}(keep_prob=0.9, ...)`, `{name}(rate=0.1, ...)`, or "
        "`layer(x, keep_prob=0.9)` (a traced value, such as a schedule's, is fine at call time)."
    )


# The fill modes of random_erasing, for the modules' annotations.
FillMode = Literal["zeros", "channel", "pixel"]


def module_p(module: object, p: object = None) -> float | jax.Array:
    """A RandomErasing module's ``p``: the call's, else the constructor's; neither is an error."""
    if p is None:
        p = getattr(module, "p", None)
    if p is None:
        name = type(module).__name__
        raise TypeError(
            f"{name} has no erasing probability, neither in its constructor nor in the call: "
            f"give it by name, e.g. `{name}(p=0.25, ...)` or `layer(x, p=0.25)` (a traced "
            "value, such as a schedule's, is fine at call time)."
        )
    return cast("float | jax.Array", p)


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
    given = size
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (int(size),) * n
    if not isinstance(size, Sequence) or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in size
    ):
        raise TypeError(f"`{name}` must be a positive int or a sequence of them, got {given!r}.")
    if len(size) != n:
        raise ValueError(
            f"`{name}` must be an int or have one entry per spatial dim ({n}), got {tuple(size)!r}."
        )
    if any(s < 1 for s in size):
        raise ValueError(f"`{name}` must be positive, got {given!r}.")
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
