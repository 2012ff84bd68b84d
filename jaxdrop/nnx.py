"""Flax NNX modules of jaxdrop."""

from jaxdrop._src.nnx import DropBlock as DropBlock

__all__ = ["DropBlock"]
