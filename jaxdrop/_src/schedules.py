"""Per-layer keep probabilities from one schedule: what optax's schedules lack for DropBlock."""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrop._src import checks

Rule = Literal["dropblock", "linear"]
RULES: tuple[str, ...] = typing.get_args(Rule)


def layer_keep_probs(
    keep_prob: float | jax.Array | Callable[[jax.typing.ArrayLike], jax.Array],
    num_layers: int,
    *,
    rule: Rule | Sequence[float] = "dropblock",
    from_drop_rate: bool = False,
) -> jax.Array | Callable[[jax.typing.ArrayLike], jax.Array]:
    r"""Spreads one keep probability (or an optax schedule of it) over the layers of a network.

    The deepest layer gets the full drop rate and shallower layers a fraction of it, as both
    DropBlock and stochastic depth do. Layer :math:`l \in \{0, \dots, L - 1\}` (``L`` =
    ``num_layers``, ordered from the input) keeps units with probability

    .. math::

      p_l = 1 - s_l \, (1 - p), \qquad
      s_l = \begin{cases}
        4^{-(L - 1 - l)} & \text{rule="dropblock"} \\
        (l + 1) / L & \text{rule="linear"}
      \end{cases}

    where :math:`p` is ``keep_prob``. ``"dropblock"`` is the authors' ResNet code: group 4 gets
    the full drop rate, group 3 a quarter of it (and groups 2 and 1, if used, 1/16 and 1/64).
    ``"linear"`` is stochastic depth's linear decay rule (Huang et al.), in which block
    :math:`l` of :math:`L` drops with probability :math:`\tfrac{l}{L}(1 - p_L)`.

    The paper's recipe ("scheduled DropBlock", Section 3 and 4.1): DropBlock after the
    convolutions and on the skip connections of ResNet groups 3 and 4, ``block_size=7``, and
    keep_prob falling linearly from 1.0 to its target (0.9) over training, because a fixed
    keep_prob "does not work well". The schedule itself is an optax schedule,
    ``optax.linear_schedule(1.0, 0.9, total_steps)``; this function spreads its value over the
    layers. Pass each layer's value at call time (``keep_prob=`` of the linen and NNX modules),
    which may be traced inside ``jax.jit`` / ``nnx.jit`` without retracing.

    Args:
      keep_prob: the keep probability of the deepest layer: a Python float, a scalar JAX array
        (traced or not), or a schedule (a callable such as an optax schedule) mapping a step to
        one. With ``from_drop_rate=True`` it is a drop rate ``1 - keep_prob`` instead.
      num_layers: how many layers (or groups) to spread it over, at least 1.
      rule: ``"dropblock"`` (each layer a quarter of the next one's drop rate), ``"linear"``
        (stochastic depth's linear rule), or one drop-rate multiplier in [0, 1] per layer.
      from_drop_rate: read ``keep_prob`` (or the schedule's values) as a drop rate.

    Returns:
      For a value, a float32 array of shape ``(num_layers,)``: the keep probability of each layer,
      shallowest first. For a schedule, a schedule that maps a step to that array, and that can be
      called with a traced step inside ``jax.jit``.

    Raises:
      TypeError: if ``keep_prob`` is neither a number, a scalar array nor a callable, or
        ``num_layers`` is not an int.
      ValueError: if a concrete ``keep_prob`` is outside [0, 1], ``num_layers`` is below 1, ``rule``
        is unknown, or explicit multipliers have the wrong length or lie outside [0, 1].

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> import jaxdrop
      >>> print(jaxdrop.layer_keep_probs(0.9, 2))  # groups 3 and 4
      [0.975 0.9  ]
      >>> print(jaxdrop.layer_keep_probs(0.8, 4, rule="linear"))
      [0.95 0.9  0.85 0.8 ]
      >>> schedule = jaxdrop.layer_keep_probs(optax.linear_schedule(1.0, 0.9, 1000), 2)
      >>> print(schedule(0), schedule(500))
      [1. 1.] [0.9875 0.95  ]
      >>> drop = jaxdrop.layer_keep_probs(
      ...     optax.linear_schedule(0.0, 0.1, 1000), 2, from_drop_rate=True)
      >>> bool(jnp.all(drop(1000) == jaxdrop.layer_keep_probs(0.9, 2)))
      True

    .. note::
      For fixed per-block keep probabilities as static Python floats (module attributes), the
      linear rule is also :func:`jaxdrop.drop_path_keep_probs`; this function adds the DropBlock
      rule, drop-rate inputs, and schedules (values that may be traced).

    .. note::
      The values are computed in float32 and passed to the modules as strongly typed float32
      scalars; a traced value is not checked, and the DropBlock functions clip it to [0, 1].

    References:
      Ghiasi et al, `DropBlock: A regularization method for convolutional networks
      <https://arxiv.org/abs/1810.12890>`_, 2018; the authors' code,
      `tensorflow/tpu models/official/resnet <https://github.com/tensorflow/tpu>`_.

      Huang et al, `Deep Networks with Stochastic Depth <https://arxiv.org/abs/1603.09382>`_, 2016
    """
    scales = _drop_scales(num_layers, rule)
    checks.check_bool(from_drop_rate, "from_drop_rate")
    if callable(keep_prob):
        schedule = keep_prob

        def layer_schedule(step: jax.typing.ArrayLike) -> jax.Array:
            return _spread(schedule(step), scales, from_drop_rate)

        return layer_schedule
    name = "drop_rate" if from_drop_rate else "keep_prob"
    keep_prob = checks.check_keep_prob(keep_prob, name)
    return _spread(keep_prob, scales, from_drop_rate)


def _drop_scales(num_layers: int, rule: Rule | Sequence[float]) -> np.ndarray:
    """The drop-rate multiplier of each layer, as float32, shallowest first."""
    num_layers = checks.check_count(num_layers, "num_layers", minimum=1)
    if isinstance(rule, str):
        checks.check_choice(rule, "rule", RULES)
        depth = np.arange(num_layers, dtype=np.float64)
        if rule == "dropblock":
            scales = 4.0 ** -(num_layers - 1 - depth)
        else:
            scales = (depth + 1) / num_layers
        return scales.astype(np.float32)
    if not isinstance(rule, Sequence) or not all(checks.is_python_number(s) for s in rule):
        raise TypeError(
            f'`rule` must be "dropblock", "linear" or a sequence of floats, got {rule!r}.'
        )
    if len(rule) != num_layers:
        raise ValueError(
            f"`rule` must give one multiplier per layer ({num_layers}), got {len(rule)}: {rule!r}."
        )
    if not all(0.0 <= s <= 1.0 for s in rule):
        raise ValueError(f"`rule` multipliers must be in [0, 1], got {tuple(rule)!r}.")
    return np.asarray(rule, np.float32)


def _spread(value: float | jax.Array, scales: np.ndarray, from_drop_rate: bool) -> jax.Array:
    # Explicit float32: under strict dtype promotion a float64 NumPy or bfloat16 value must not
    # meet the float32 multipliers implicitly. No Python branch on the value, which may be traced.
    value = jnp.asarray(value).astype(jnp.float32)
    drop = value if from_drop_rate else 1.0 - value
    return 1.0 - jnp.asarray(scales) * drop
