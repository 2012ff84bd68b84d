"""Equinox modules of jaxdrop (the ``equinox`` extra): ``import jaxdrop.equinox``.

``import jaxdrop`` does not import Equinox; this module does. The modules mirror
``eqx.nn.Dropout``: one example per call, the key at call time, ``eqx.nn.inference_mode``.
"""

from jaxdrop._src.equinox_modules import Cutout as Cutout
from jaxdrop._src.equinox_modules import DropBlock as DropBlock
from jaxdrop._src.equinox_modules import DropConnect as DropConnect
from jaxdrop._src.equinox_modules import Dropout as Dropout
from jaxdrop._src.equinox_modules import DropPath as DropPath
from jaxdrop._src.equinox_modules import PatchDropout as PatchDropout
from jaxdrop._src.equinox_modules import RandomErasing as RandomErasing
from jaxdrop._src.equinox_modules import SpatialDropout as SpatialDropout

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
