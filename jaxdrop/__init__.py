"""jaxdrop: structured dropout for JAX and Flax."""

import importlib.metadata

from jaxdrop import linen as linen
from jaxdrop import nnx as nnx
from jaxdrop._src.cutout import cutout as cutout
from jaxdrop._src.drop_path import drop_path as drop_path
from jaxdrop._src.drop_path import drop_path_keep_probs as drop_path_keep_probs
from jaxdrop._src.dropblock import dropblock as dropblock
from jaxdrop._src.dropconnect import dropconnect as dropconnect
from jaxdrop._src.dropout import dropout as dropout
from jaxdrop._src.multihost import check_same_key as check_same_key
from jaxdrop._src.patch_dropout import patch_dropout as patch_dropout
from jaxdrop._src.patch_dropout import patch_restore as patch_restore
from jaxdrop._src.plotting import plot_masks as plot_masks
from jaxdrop._src.random_erasing import random_erasing as random_erasing
from jaxdrop._src.schedules import layer_keep_probs as layer_keep_probs
from jaxdrop._src.spatial_dropout import spatial_dropout as spatial_dropout

__version__ = importlib.metadata.version("jaxdrop")

__all__ = [
    "check_same_key",
    "cutout",
    "drop_path",
    "drop_path_keep_probs",
    "dropblock",
    "dropconnect",
    "dropout",
    "layer_keep_probs",
    "linen",
    "nnx",
    "patch_dropout",
    "patch_restore",
    "plot_masks",
    "random_erasing",
    "spatial_dropout",
]
