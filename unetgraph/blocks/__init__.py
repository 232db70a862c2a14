"""Block specs and their registry. Importing this package registers the built-in blocks."""

from .attention import CrossAttention, LinearAttention, SelfAttention
from .base import (
    BlockSpec,
    block_from_dict,
    block_names,
    create_block,
    get_block,
    is_leaf_module,
    leaf_module,
    register_block,
    unregister_block,
)
from .conv import ConvBlock, Head
from .embedding import ClassEmbedding, TimestepEmbedding
from .gates import AttentionGate, SqueezeExcitation
from .io import Input
from .layers import ACTS, NORMS
from .merge import Merge
from .pointwise import Affine, ScaleBy
from .resblock import ResBlock
from .sampling import Down, Up
from .sequence import Sequence
from .transformer import Transformer

__all__ = [
    "BlockSpec",
    "register_block",
    "unregister_block",
    "get_block",
    "block_names",
    "create_block",
    "block_from_dict",
    "leaf_module",
    "is_leaf_module",
    "ConvBlock",
    "Head",
    "Down",
    "Up",
    "Merge",
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
]
