"""Passes over a lowered GraphModule: plain functions ``pass_(gm) -> PassResult``, one per file.

Each rewrites the module in place, keeps its outputs equal (within float rounding), and
reports what it changed and what it left alone. :func:`optimize` runs the right sequence.
"""

from .base import PassResult
from .channels_last import channels_last
from .drop_identities import drop_identities
from .fold_batchnorm import fold_batchnorm
from .fold_constants import fold_constants
from .fold_upsampling import UpsampledConv, fold_upsampling, unfold_upsampling
from .merge_siblings import merge_siblings, separate, unmerge
from .pipeline import Optimized, OptimizeReport, optimize, plain
from .prepack import PackedConv, PackedLinear, has_packed, prepack, unpack
from .reduced_precision import reduced_precision
from .remove_dead_nodes import remove_dead_nodes
from .swap_instance_norms import swap_instance_norms

__all__ = [
    "PassResult",
    "OptimizeReport",
    "Optimized",
    "optimize",
    "fold_batchnorm",
    "drop_identities",
    "fold_constants",
    "merge_siblings",
    "unmerge",
    "separate",
    "channels_last",
    "remove_dead_nodes",
    "swap_instance_norms",
    "fold_upsampling",
    "unfold_upsampling",
    "UpsampledConv",
    "reduced_precision",
    "prepack",
    "unpack",
    "plain",
    "has_packed",
    "PackedConv",
    "PackedLinear",
]
