"""Flax linen modules of jaxdrop."""

from jaxdrop._src.linen import DropBlock as DropBlock

__all__ = ["DropBlock"]
