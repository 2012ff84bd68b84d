"""A small vision transformer (linen) with PatchDropout where timm puts it.

As timm's ``VisionTransformer``: a ``patch x patch`` convolution embeds the image as tokens, a
learned CLS token is prepended, learned position embeddings are added to every token (CLS
included), and only then does PatchDropout keep a random subset of the patch tokens of each
example (the CLS token always stays: ``num_prefix_tokens=1``). The kept tokens carry their
position embeddings with them, so the transformer still knows where each came from. Then
``depth`` pre-norm blocks (multi-head self-attention, an MLP of ``mlp_ratio x width`` with GELU),
a final LayerNorm and a linear head on the CLS token.

PatchDropout runs in training only (``train=True``): evaluation always sees every token. With
``keep_prob=None`` the model never calls :func:`jaxdrop.patch_dropout` (the unmodified model);
``keep_prob=1.0`` calls it, and it returns every token as it is. ``keep_prob`` is a static Python
number: the number of tokens kept sets the shapes of everything after it.

With the defaults, a 32 x 32 input gives 64 patch tokens of width 192 and 6 blocks of 3 heads
(about 2.7 M parameters): the ViT of the PatchDropout benchmark (benchmarks/vit_patch_dropout.py).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

import jaxdrop


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    width: int
    heads: int
    mlp_ratio: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.LayerNorm(epsilon=1e-6)(x)
        y = nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=self.width)(y, y)
        x = x + y
        y = nn.LayerNorm(epsilon=1e-6)(x)
        y = nn.gelu(nn.Dense(self.mlp_ratio * self.width)(y), approximate=False)
        return x + nn.Dense(self.width)(y)


class ViT(nn.Module):
    """Attributes:
    num_classes: the number of classes of the head.
    keep_prob: PatchDropout's keep probability in training (a Python number), or ``None`` for
      no PatchDropout call at all.
    patch: the side of a patch, in pixels.
    width: the token width.
    depth: the number of transformer blocks.
    heads: the number of attention heads.
    mlp_ratio: the MLP's hidden width as a multiple of ``width``.
    ordered: PatchDropout keeps the kept tokens in their original order (timm's ``ordered``);
      the transformer is permutation-equivariant and the tokens carry their positions, so the
      result does not depend on it beyond rounding.
    rng_collection: the rng collection PatchDropout's key comes from.
    """

    num_classes: int
    keep_prob: float | None = None
    patch: int = 4
    width: int = 192
    depth: int = 6
    heads: int = 3
    mlp_ratio: int = 4
    ordered: bool = False
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        p = self.patch
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", name="patch_embed")(x)
        x = x.reshape(x.shape[0], -1, self.width)  # (B, L, C), row-major over the patch grid
        cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.width))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)), x], axis=1)
        # timm's trunc_normal_(std=0.02); a plain normal of the same scale here.
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, x.shape[1], self.width))
        # Positions first, then PatchDropout: each kept token keeps its own position.
        x = x + pos
        if train and self.keep_prob is not None:
            x = jaxdrop.patch_dropout(
                self.make_rng(self.rng_collection),
                x,
                self.keep_prob,
                num_prefix_tokens=1,
                ordered=self.ordered,
            )
        for _ in range(self.depth):
            x = Block(self.width, self.heads, self.mlp_ratio)(x)
        x = nn.LayerNorm(epsilon=1e-6)(x)
        return nn.Dense(self.num_classes, name="head")(x[:, 0])


def kept_tokens(num_tokens: int, keep_prob: float) -> int:
    """How many of ``num_tokens`` patch tokens :func:`jaxdrop.patch_dropout` keeps (timm's
    ``max(1, int(num_tokens * keep_prob))``), read off the output shape it traces to."""
    shape = jax.ShapeDtypeStruct((num_tokens, 1), jnp.float32)
    out = jax.eval_shape(lambda x: jaxdrop.patch_dropout(jax.random.key(0), x, keep_prob), shape)
    return out.shape[0]
