"""unetgraph: a U-Net as a typed graph, shape-checked before it runs and lowered to ``torch.fx``.

>>> import unetgraph as ug
>>> g = ug.unet(3, 2, widths=(16, 32, 64))
>>> g.check((1, 3, 64, 64)).outputs["head"]
(1, 2, 64, 64)
"""

from . import dynamic, passes, presets
from .blocks import (
    ACTS,
    NORMS,
    BlockSpec,
    ConvBlock,
    Down,
    Head,
    Input,
    Merge,
    Up,
    block_names,
    create_block,
    get_block,
    leaf_module,
    register_block,
    unregister_block,
)
from .build import unet
from .check import CheckReport, SizeRules, check, valid_sizes
from .dynamic import CompiledUNet, compile, export_shapes, served_axes
from .eject import eject, eject_source
from .errors import GraphError, LoweringError, NodeNotFoundError, RegistryError, ShapeError, SpecError, UNetGraphError
from .export import ExportedUNet, OnnxUNet, export, load
from .graph import Edge, GraphBuilder, In, Level, Node, UNetGraph
from .lower import fx_node_names, lower
from .passes import Optimized, OptimizeReport, PassResult, optimize
from .types import EdgeKind, Role, TensorType

__version__ = "0.1.0"

__all__ = [
    "unet",
    "UNetGraph",
    "GraphBuilder",
    "Node",
    "Edge",
    "Level",
    "In",
    "BlockSpec",
    "ConvBlock",
    "Down",
    "Up",
    "Merge",
    "Head",
    "Input",
    "NORMS",
    "ACTS",
    "register_block",
    "unregister_block",
    "get_block",
    "block_names",
    "create_block",
    "leaf_module",
    "check",
    "valid_sizes",
    "CheckReport",
    "SizeRules",
    "lower",
    "fx_node_names",
    "Role",
    "EdgeKind",
    "TensorType",
    "UNetGraphError",
    "SpecError",
    "RegistryError",
    "GraphError",
    "NodeNotFoundError",
    "ShapeError",
    "LoweringError",
    "presets",
    "passes",
    "optimize",
    "Optimized",
    "OptimizeReport",
    "PassResult",
    "dynamic",
    "compile",
    "CompiledUNet",
    "export_shapes",
    "served_axes",
    "export",
    "load",
    "ExportedUNet",
    "OnnxUNet",
    "eject",
    "eject_source",
]
