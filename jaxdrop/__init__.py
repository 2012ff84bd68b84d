"""jaxdrop: structured dropout for JAX and Flax."""

import importlib.metadata

from jaxdrop import linen as linen
from jaxdrop import nnx as nnx
from jaxdrop._src.dropblock import dropblock as dropblock

__version__ = importlib.metadata.version("jaxdrop")

__all__ = ["dropblock", "linen", "nnx"]
