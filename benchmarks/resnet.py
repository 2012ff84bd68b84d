"""ResNet-50 (bottleneck blocks) in Flax linen, with a regulariser where DropBlock's paper puts it.

The regulariser follows the ReLU of conv1 and of conv2 and is applied to the shortcut of every
block of groups 3 and 4: with stages ``[3, 4, 6, 3]`` that is ``3 * (6 + 3) = 27`` call sites.
``regularizer`` picks what is called there:

- ``"none"``: nothing;
- ``"flax"``: ``flax.linen.Dropout(rate=1 - keep_prob)``;
- ``"dropblock"``: ``jaxdrop.linen.DropBlock(keep_prob=..., block_size=...)``, with the call-time
  ``keep_prob`` when the model gets one (a schedule's traced value);
- ``"dropblock-min"``: the same with ``min_keep_prob=keep_prob`` (the static seed budget for a
  traced keep_prob), where the module has that field.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import jaxdrop

REGULARIZERS = ("none", "flax", "dropblock", "dropblock-min")


def regularizer_sites(stage_sizes: Sequence[int]) -> int:
    """How many call sites the regulariser has: three per block of the last two groups."""
    return 3 * sum(stage_sizes[2:])


def has_min_keep_prob_field() -> bool:
    return "min_keep_prob" in getattr(jaxdrop.linen.DropBlock, "__dataclass_fields__", {})


class Regularizer(nn.Module):
    kind: str
    keep_prob: float
    block_size: int

    @nn.compact
    def __call__(self, x: jax.Array, keep_prob: Any = None) -> jax.Array:
        if self.kind == "none":
            return x
        if self.kind == "flax":
            return nn.Dropout(rate=1.0 - self.keep_prob, deterministic=False)(x)
        options = {"min_keep_prob": self.keep_prob} if self.kind == "dropblock-min" else {}
        layer = jaxdrop.linen.DropBlock(
            keep_prob=self.keep_prob, block_size=self.block_size, deterministic=False, **options
        )
        return layer(x, keep_prob=keep_prob)


class Bottleneck(nn.Module):
    features: int
    strides: int
    regularizer: str
    keep_prob: float
    block_size: int

    @nn.compact
    def __call__(self, x: jax.Array, keep_prob: Any = None) -> jax.Array:
        def reg(y):
            return Regularizer(self.regularizer, self.keep_prob, self.block_size)(y, keep_prob)

        norm = functools.partial(nn.BatchNorm, use_running_average=False, momentum=0.9)
        y = nn.relu(norm()(nn.Conv(self.features, (1, 1), use_bias=False)(x)))
        y = reg(y)
        y = nn.Conv(self.features, (3, 3), self.strides, padding="SAME", use_bias=False)(y)
        y = reg(nn.relu(norm()(y)))
        y = nn.Conv(4 * self.features, (1, 1), use_bias=False)(y)
        y = norm(scale_init=nn.initializers.zeros)(y)
        shortcut = x
        if x.shape[-1] != 4 * self.features or self.strides != 1:
            shortcut = nn.Conv(4 * self.features, (1, 1), self.strides, use_bias=False)(x)
            shortcut = norm()(shortcut)
        return nn.relu(y + reg(shortcut))


class ResNet(nn.Module):
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    num_classes: int = 1000
    regularizer: str = "none"
    keep_prob: float = 0.9
    block_size: int = 7

    @nn.compact
    def __call__(self, x: jax.Array, keep_prob: Any = None) -> jax.Array:
        x = nn.Conv(64, (7, 7), 2, padding=[(3, 3), (3, 3)], use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=False, momentum=0.9)(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
        for group, size in enumerate(self.stage_sizes):
            for i in range(size):
                x = Bottleneck(
                    features=64 * 2**group,
                    strides=2 if group > 0 and i == 0 else 1,
                    # The regulariser sits in groups 3 and 4 only (the last two).
                    regularizer=self.regularizer if group >= 2 else "none",
                    keep_prob=self.keep_prob,
                    block_size=self.block_size,
                )(x, keep_prob)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)
