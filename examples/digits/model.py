"""A small ResNet with regularisers placed as the DropBlock paper places them, in linen and NNX.

Four groups of one basic block each. As in the authors' ResNet code, the regulariser (DropBlock,
or dropout / SpatialDropout for comparison) follows every convolution (after its batch norm) and
the skip connection of the blocks in groups 3 and 4. The per-group keep probabilities come in at
call time, as a length-2 array (group 3, group 4) that may be traced: a schedule's value changes
every step without a retrace.

With a 16 x 16 input and the default strides (1, 2, 1, 2), group 3 works on 8 x 8 maps and
group 4 on 4 x 4, so a 3 x 3 block removes a region of each map rather than a unit. Strides
(1, 2, 1, 1) keep group 4 at 8 x 8 too, so that blocks up to 7 x 7 fit in every regularised map
(what the evaluation uses).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

import jaxdrop

WIDTHS = (16, 32, 48, 64)
STRIDES = (1, 2, 1, 2)
# The plain network's stages (two convolutions each): a quarter of the cost of (32, 64, 128), to
# fit the evaluation's 32 x 32 grid in about an hour on 2 cores.
PLAIN_WIDTHS = (16, 32, 64)
# Groups that get a regulariser (0-based: groups 3 and 4 of the paper).
REGULARISED = (2, 3)
# Regularisers: "none", "dropout", "spatial_dropout" or "dropblock".
KINDS = ("none", "dropout", "spatial_dropout", "dropblock")


# --- linen ------------------------------------------------------------------------------------


def linen_regulariser(
    kind: str, block_size: int, calibrate: bool, broadcast_dims: tuple[int, ...] = ()
) -> nn.Module:
    # keep_prob=1.0 is a placeholder: the value always comes at call time.
    if kind == "dropout":
        return jaxdrop.linen.Dropout(keep_prob=1.0, broadcast_dims=broadcast_dims)
    if kind == "spatial_dropout":
        return jaxdrop.linen.SpatialDropout(keep_prob=1.0)
    if kind == "dropblock":
        return jaxdrop.linen.DropBlock(
            keep_prob=1.0,
            block_size=block_size,
            calibrate=calibrate,
            broadcast_dims=broadcast_dims,
        )
    raise ValueError(f"`kind` must be one of {KINDS[1:]}, got {kind!r}.")


def linen_drop(owner, y, keep_prob: jax.Array | None, train: bool):
    """``owner``'s regulariser on ``y`` (called inside ``owner``'s compact ``__call__``)."""
    if keep_prob is None or owner.kind == "none":
        return y
    layer = linen_regulariser(owner.kind, owner.block_size, owner.calibrate, owner.broadcast_dims)
    return layer(y, deterministic=not train, keep_prob=keep_prob)


class LinenBlock(nn.Module):
    features: int
    strides: int
    kind: str
    block_size: int
    calibrate: bool
    broadcast_dims: tuple[int, ...] = ()

    @nn.compact
    def __call__(self, x, keep_prob: jax.Array | None, train: bool):
        def drop(y):
            return linen_drop(self, y, keep_prob, train)

        norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)  # noqa: E731
        shortcut = x
        if x.shape[-1] != self.features or self.strides != 1:
            shortcut = nn.Conv(self.features, (1, 1), self.strides, use_bias=False)(x)
            shortcut = norm()(shortcut)
        shortcut = drop(shortcut)
        y = nn.Conv(self.features, (3, 3), self.strides, use_bias=False)(x)
        y = drop(nn.relu(norm()(y)))
        y = nn.Conv(self.features, (3, 3), use_bias=False)(y)
        y = drop(norm()(y))
        return nn.relu(y + shortcut)


class LinenResNet(nn.Module):
    num_classes: int
    kind: str = "none"
    block_size: int = 3
    calibrate: bool = False
    # Axes that share one mask: (-1,) shares it across channels.
    broadcast_dims: tuple[int, ...] = ()
    widths: tuple[int, ...] = WIDTHS
    strides: tuple[int, ...] = STRIDES

    @nn.compact
    def __call__(self, x, keep_probs: jax.Array, train: bool):
        x = nn.Conv(self.widths[0], (3, 3), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        for g, (width, stride) in enumerate(zip(self.widths, self.strides, strict=True)):
            if g == REGULARISED[0]:
                # The maps DropBlock sees first, kept for the feature-map figure.
                self.sow("intermediates", "group3_input", x)
            keep_prob = keep_probs[REGULARISED.index(g)] if g in REGULARISED else None
            block = LinenBlock(
                width, stride, self.kind, self.block_size, self.calibrate, self.broadcast_dims
            )
            x = block(x, keep_prob, train)
        return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


class LinenPlainNet(nn.Module):
    """Six 3 x 3 convolutions with ReLU and no normalisation, in three stages of two (max pooling
    between stages), then global average pooling: nothing but the regulariser adds noise.

    The regulariser follows each convolution of stages 2 and 3 (16 x 16 and 8 x 8 maps at a
    32 x 32 input), stage 2 with the first of the two keep probabilities (a quarter of the drop
    rate, as the ResNet's group 3), stage 3 with the second.
    """

    num_classes: int
    kind: str = "none"
    block_size: int = 3
    calibrate: bool = False
    broadcast_dims: tuple[int, ...] = ()
    widths: tuple[int, ...] = PLAIN_WIDTHS

    @nn.compact
    def __call__(self, x, keep_probs: jax.Array, train: bool):
        for stage, width in enumerate(self.widths):
            if stage:
                x = nn.max_pool(x, (2, 2), (2, 2))
            if stage == 1:
                self.sow("intermediates", "group3_input", x)
            keep_prob = keep_probs[stage - 1] if stage else None
            for _ in range(2):
                x = linen_drop(self, nn.relu(nn.Conv(width, (3, 3))(x)), keep_prob, train)
        return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


# --- NNX --------------------------------------------------------------------------------------


def nnx_regulariser(kind: str, block_size: int, calibrate: bool, rngs: nnx.Rngs) -> nnx.Module:
    if kind == "dropout":
        return jaxdrop.nnx.Dropout(keep_prob=1.0, rngs=rngs)
    if kind == "spatial_dropout":
        return jaxdrop.nnx.SpatialDropout(keep_prob=1.0, rngs=rngs)
    if kind == "dropblock":
        return jaxdrop.nnx.DropBlock(
            keep_prob=1.0, block_size=block_size, calibrate=calibrate, rngs=rngs
        )
    raise ValueError(f"`kind` must be one of {KINDS[1:]}, got {kind!r}.")


class NnxBlock(nnx.Module):
    def __init__(self, cin, features, strides, kind, block_size, calibrate, regularised, rngs):
        conv = lambda i, o, k, s=1: nnx.Conv(  # noqa: E731
            i, o, (k, k), strides=s, use_bias=False, rngs=rngs
        )
        norm = lambda n: nnx.BatchNorm(n, momentum=0.9, rngs=rngs)  # noqa: E731
        self.project = cin != features or strides != 1
        if self.project:
            self.short_conv, self.short_norm = conv(cin, features, 1, strides), norm(features)
        self.conv1, self.norm1 = conv(cin, features, 3, strides), norm(features)
        self.conv2, self.norm2 = conv(features, features, 3), norm(features)
        use = regularised and kind != "none"
        make: Callable[[], nnx.Module | None] = lambda: (  # noqa: E731
            nnx_regulariser(kind, block_size, calibrate, rngs) if use else None
        )
        self.drops = nnx.List([make() for _ in range(3)])

    def __call__(self, x, keep_prob):
        def drop(i, y):
            return y if self.drops[i] is None else self.drops[i](y, keep_prob=keep_prob)

        shortcut = self.short_norm(self.short_conv(x)) if self.project else x
        shortcut = drop(0, shortcut)
        y = drop(1, nnx.relu(self.norm1(self.conv1(x))))
        y = drop(2, self.norm2(self.conv2(y)))
        return nnx.relu(y + shortcut)


class NnxResNet(nnx.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        kind: str = "none",
        block_size: int = 3,
        calibrate: bool = False,
        widths: tuple[int, ...] = WIDTHS,
        strides: tuple[int, ...] = STRIDES,
        rngs: nnx.Rngs,
    ):
        self.stem = nnx.Conv(in_channels, widths[0], (3, 3), use_bias=False, rngs=rngs)
        self.stem_norm = nnx.BatchNorm(widths[0], momentum=0.9, rngs=rngs)
        cins: Sequence[int] = (widths[0],) + tuple(widths[:-1])
        self.blocks = nnx.List(
            [
                NnxBlock(cin, w, s, kind, block_size, calibrate, g in REGULARISED, rngs)
                for g, (cin, w, s) in enumerate(zip(cins, widths, strides, strict=True))
            ]
        )
        self.head = nnx.Linear(widths[-1], num_classes, rngs=rngs)

    def features(self, x):
        """The maps entering group 3, where DropBlock first acts."""
        x = nnx.relu(self.stem_norm(self.stem(x)))
        for block in self.blocks[: REGULARISED[0]]:
            x = block(x, None)
        return x

    def __call__(self, x, keep_probs: jax.Array):
        x = self.features(x)
        for g in REGULARISED:
            x = self.blocks[g](x, keep_probs[REGULARISED.index(g)])
        return self.head(jnp.mean(x, axis=(1, 2)))
