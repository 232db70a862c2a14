"""unetgraph: a U-Net as a typed graph, shape-checked before it runs and lowered to ``torch.fx``.

>>> import unetgraph as ug
>>> g = ug.unet(3, 2, widths=(16, 32, 64))
>>> g.check((1, 3, 64, 64)).outputs["head"]
(1, 2, 64, 64)
"""

from . import dynamic, interop, passes, presets, render
from .blocks import (
    ACTS,
    NORMS,
    Affine,
    AttentionGate,
    BlockSpec,
    ClassEmbedding,
    ConvBlock,
    CrossAttention,
    Down,
    Head,
    Input,
    LinearAttention,
    Merge,
    ResBlock,
    ScaleBy,
    SelfAttention,
    Sequence,
    SqueezeExcitation,
    TimestepEmbedding,
    Transformer,
    Up,
    block_from_dict,
    block_names,
    create_block,
    get_block,
    leaf_module,
    register_block,
    unregister_block,
)
from .build import diffusion_unet, nested_unet, unet
from .check import CheckReport, SizeRules, check, valid_sizes
from .cost import CostReport, NodeCost, summary
from .diff import GraphDiff, diff
from .dynamic import BucketedUNet, CompiledUNet, compile, export_shapes, served_axes
from .eject import eject, eject_source
from .errors import (
    GraphError,
    LoweringError,
    NodeNotFoundError,
    RegistryError,
    RenderError,
    ShapeError,
    SpecError,
    UNetGraphError,
)
from .export import ExportedUNet, OnnxUNet, export, load_exported
from .graph import Edge, GraphBuilder, In, Level, Node, UNetGraph
from .inputs import example_inputs, input_shapes
from .lower import fx_node_names, lower
from .passes import Optimized, OptimizeReport, PassResult, optimize
from .record import LoweredRecord, lowered_record
from .serialize import SCHEMA_VERSION, dumps, load, loads, save
from .transfer import TransferReport, transfer_report, transfer_weights
from .types import EdgeKind, Role, TensorType

__version__ = "0.1.0"

__all__ = [
    "example_inputs",
    "input_shapes",
    "unet",
    "diffusion_unet",
    "nested_unet",
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
    "Sequence",
    "ResBlock",
    "SelfAttention",
    "CrossAttention",
    "LinearAttention",
    "TimestepEmbedding",
    "ClassEmbedding",
    "AttentionGate",
    "SqueezeExcitation",
    "Transformer",
    "Affine",
    "ScaleBy",
    "NORMS",
    "ACTS",
    "register_block",
    "unregister_block",
    "get_block",
    "block_names",
    "create_block",
    "block_from_dict",
    "leaf_module",
    "check",
    "valid_sizes",
    "CheckReport",
    "SizeRules",
    "summary",
    "CostReport",
    "NodeCost",
    "lower",
    "fx_node_names",
    "lowered_record",
    "LoweredRecord",
    "save",
    "load",
    "dumps",
    "loads",
    "SCHEMA_VERSION",
    "diff",
    "GraphDiff",
    "transfer_weights",
    "transfer_report",
    "TransferReport",
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
    "RenderError",
    "presets",
    "interop",
    "render",
    "passes",
    "optimize",
    "Optimized",
    "OptimizeReport",
    "PassResult",
    "dynamic",
    "compile",
    "CompiledUNet",
    "BucketedUNet",
    "export_shapes",
    "served_axes",
    "export",
    "load_exported",
    "ExportedUNet",
    "OnnxUNet",
    "eject",
    "eject_source",
]
