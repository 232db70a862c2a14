"""Graphs for the drawing and cost tests that the built-in builders cannot make yet: a U-Net
conditioned on a time embedding (custom blocks: a vector input, an embedding, a conditioned
convolution), a UNet++ (nested skips), and a U-Net with one level left without its skip."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from torch import nn

import unetgraph as ug
from unetgraph.blocks.layers import conv_cls
from unetgraph.types import TensorType


@dataclass(frozen=True)
class VecInput(ug.BlockSpec):
    """A per-sample vector input ``(N, channels)`` (e.g. a timestep)."""

    channels: int = 1
    min_inputs = 0
    max_inputs = 0

    def infer(self, inputs, sources=()):
        return TensorType(self.channels, ())

    def build(self, inputs, output):
        return nn.Identity()


@dataclass(frozen=True)
class Embed(ug.BlockSpec):
    """Linear → SiLU on a vector: a time embedding."""

    channels: int = 16

    def infer(self, inputs, sources=()):
        return TensorType(self.channels, ())

    def build(self, inputs, output):
        return nn.Sequential(nn.Linear(inputs[0].channels, output.channels), nn.SiLU())


class _CondConv(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int, dims: int) -> None:
        super().__init__()
        self.conv = conv_cls(dims)(cin, cout, 3, padding=1)
        self.proj = nn.Linear(emb, cout)
        self.dims = dims

    def forward(self, x, e):
        return self.conv(x) + self.proj(e)[(slice(None), slice(None)) + (None,) * self.dims]


@dataclass(frozen=True)
class CondConv(ug.BlockSpec):
    """A 3×3 convolution plus a projection of the conditioning vector (no formulas:
    params and FLOPs come from the BlockSpec defaults, which build and run it on meta tensors)."""

    channels: int | None = None
    max_cond = 1

    def infer(self, inputs, sources=()):
        return inputs[0].with_(channels=self.channels or inputs[0].channels)

    def build(self, inputs, output):
        return _CondConv(inputs[0].channels, output.channels, inputs[1].channels, inputs[0].dims)


@contextlib.contextmanager
def cond_blocks():
    """Register the custom blocks for the duration of a test."""
    for cls in (VecInput, Embed, CondConv):
        ug.register_block(cls, replace=True)
    try:
        yield
    finally:
        for cls in (VecInput, Embed, CondConv):
            ug.unregister_block(cls.__name__)


def cond_unet(levels: int = 3, dims: int = 2) -> ug.UNetGraph:
    """A small diffusion-style U-Net: every conv block takes the time embedding."""
    b = ug.GraphBuilder("CondUNet")
    b.input("x", channels=3, dims=dims)
    b.add("t", VecInput(1), "input", None, [])
    b.add("temb", Embed(16), "embedding", None, ["t"])
    c = [ug.In("temb", "cond")]
    h, skips = "x", []
    for i in range(levels - 1):
        h = b.add(f"enc{i}", CondConv(4 * 2**i), "encoder", i, [h, *c])
        skips.append(h)
        h = b.add(f"down{i + 1}", ug.Down(), "down", i + 1, [h])
    h = b.add("mid", CondConv(4 * 2 ** (levels - 1)), "bottleneck", levels - 1, [h, *c])
    for i in reversed(range(levels - 1)):
        h = b.add(f"up{i}", ug.Up(channels=4 * 2**i), "up", i, [h])
        h = b.add(f"merge{i}", ug.Merge("add"), "merge", i, [ug.In(skips[i], "skip"), h])
        h = b.add(f"dec{i}", CondConv(4 * 2**i), "decoder", i, [h, *c])
    b.add("head", ug.Head(channels=3), "head", 0, [h])
    return b.build(["head"])


def unet_pp(depth: int = 4, dims: int = 2, width: int = 4) -> ug.UNetGraph:
    """UNet++ (Zhou et al. 2018): nested decoders; node ``x{i}_{j}`` at level ``i``, column ``j``."""
    b = ug.GraphBuilder("UNetPP")
    b.input("x", channels=1, dims=dims)
    nodes: dict[tuple[int, int], str] = {}
    h = "x"
    for i in range(depth):
        if i > 0:
            h = b.add(f"down{i}", ug.Down(), "down", i, [nodes[i - 1, 0]])
        role = "bottleneck" if i == depth - 1 else "encoder"
        nodes[i, 0] = b.add(f"x{i}_0", ug.ConvBlock(channels=width * 2**i), role, i, [h])
    for j in range(1, depth):
        for i in range(depth - j):
            up = b.add(f"up{i}_{j}", ug.Up(channels=width * 2**i), "up", i, [nodes[i + 1, j - 1]])
            skips = [ug.In(nodes[i, k], "skip") for k in range(j)]
            m = b.add(f"merge{i}_{j}", ug.Merge(), "merge", i, [*skips, up])
            nodes[i, j] = b.add(f"x{i}_{j}", ug.ConvBlock(channels=width * 2**i), "decoder", i, [m])
    b.add("head", ug.Head(channels=2), "head", 0, [nodes[0, depth - 1]])
    return b.build(["head"])


def without_skip(g: ug.UNetGraph, level: int) -> ug.UNetGraph:
    """``g`` (a ``ug.unet`` graph) with the skip of ``level`` removed: its merge becomes a pass-through
    of the upsampled path, so the level's encoder and decoder are no longer joined."""
    b = ug.GraphBuilder(g.name)
    for name in g:
        node = g[name]
        if node.role is ug.Role.INPUT:
            b.input(name, channels=node.type.channels, dims=node.type.dims)
            continue
        ins = [e.src if e.kind is ug.EdgeKind.DATA else ug.In(e.src, e.kind) for e in g.in_edges(name)]
        if name == f"merge{level}":
            b.add(name, ug.ConvBlock(channels=node.inputs[-1].channels, convs=1), node.role, node.level, ins[-1:])
        else:
            b.add(name, node.block, node.role, node.level, ins)
    return b.build(list(g.outputs))
