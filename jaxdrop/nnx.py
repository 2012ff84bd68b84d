"""Flax NNX modules of jaxdrop."""

from jaxdrop._src.nnx import Cutout as Cutout
from jaxdrop._src.nnx import DropBlock as DropBlock
from jaxdrop._src.nnx import DropConnect as DropConnect
from jaxdrop._src.nnx import Dropout as Dropout
from jaxdrop._src.nnx import DropPath as DropPath
from jaxdrop._src.nnx import PatchDropout as PatchDropout
from jaxdrop._src.nnx import RandomErasing as RandomErasing
from jaxdrop._src.nnx import SpatialDropout as SpatialDropout

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
