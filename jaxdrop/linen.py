"""Flax linen modules of jaxdrop."""

from jaxdrop._src.linen import Cutout as Cutout
from jaxdrop._src.linen import DropBlock as DropBlock
from jaxdrop._src.linen import DropConnect as DropConnect
from jaxdrop._src.linen import Dropout as Dropout
from jaxdrop._src.linen import DropPath as DropPath
from jaxdrop._src.linen import PatchDropout as PatchDropout
from jaxdrop._src.linen import RandomErasing as RandomErasing
from jaxdrop._src.linen import SpatialDropout as SpatialDropout

__all__ = [
    "Cutout",
    "DropBlock",
    "DropConnect",
    "DropPath",
    "Dropout",
    "PatchDropout",
    "RandomErasing",
    "SpatialDropout",
]
