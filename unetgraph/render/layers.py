"""The ``detail="layers"`` scene: every layer of every block, each block framed.

The layers are the fx nodes of the graph lowered on the meta device (no weights allocated),
grouped by the graph node they come from (``meta["custom"]["unet_node"]``); with an input
shape, each layer's shape and FLOPs are measured by running the module on meta tensors.
"""

from __future__ import annotations

from math import prod
from typing import Callable, Sequence

import torch
import torch.fx as fx
from torch import nn

from ..cost import CostReport, Shape, fmt_bytes, fmt_count, measure
from ..graph import UNetGraph
from ..lower import lower
from ..types import EdgeKind
from .scene import Item, Link, Scene, merge_kind, note_lines, title_line

__all__ = ["layer_scene", "describe_module"]


def _axes(v: object) -> str:
    return "×".join(map(str, v)) if isinstance(v, tuple) else str(v)


def _conv(m: nn.Module) -> str:
    if not isinstance(m, nn.modules.conv._ConvNd):
        return type(m).__name__
    stride = max(m.stride) if isinstance(m.stride, tuple) else m.stride
    return f"{type(m).__name__} {_axes(m.kernel_size)} {m.in_channels}→{m.out_channels}" + (
        f" /{stride}" if stride > 1 and not isinstance(m, nn.modules.conv._ConvTransposeNd) else ""
    )


# (module class, how to say it in a few words); the first match wins, else the class name
_DESCRIBE: tuple[tuple[type[nn.Module], Callable[[nn.Module], str]], ...] = (
    (nn.modules.conv._ConvNd, _conv),
    (nn.modules.pooling._MaxPoolNd, lambda m: f"{type(m).__name__} {_axes(m.kernel_size)}"),
    (nn.modules.pooling._AvgPoolNd, lambda m: f"{type(m).__name__} {_axes(m.kernel_size)}"),
    (nn.Upsample, lambda m: f"Upsample ×{_axes(m.scale_factor)} {m.mode}"),
    (nn.Linear, lambda m: f"Linear {m.in_features}→{m.out_features}"),
    (nn.GroupNorm, lambda m: f"GroupNorm {m.num_groups}"),
    (nn.Dropout, lambda m: f"Dropout {m.p:g}"),
)


def describe_module(m: nn.Module) -> str:
    """A layer in a few words: ``"Conv2d 3×3 64→128"``, ``"MaxPool2d 2"``, else its class name."""
    for cls, say in _DESCRIBE:
        if isinstance(m, cls):
            return say(m)
    return type(m).__name__


def _function_name(n: fx.Node) -> str:
    return n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))


def layer_scene(g: UNetGraph, cost: CostReport, notes: Sequence[str], heat: str | None) -> Scene:
    gm = lower(g, device="meta", guard=False)
    modules = dict(gm.named_modules())
    measured: dict[str, tuple[Shape | None, int]] = {}
    if cost.inputs is not None:
        measured = measure(gm, *(torch.empty(cost.inputs[n], device="meta") for n in g.inputs))
        measured.update((n, (cost.inputs[n], 0)) for n in g.inputs)
    itemsize = cost.dtype.itemsize
    layers = [n for n in gm.graph.nodes if n.op in ("placeholder", "call_module", "call_function", "call_method")]
    per_block: dict[str, list[fx.Node]] = {}
    for n in layers:
        per_block.setdefault(n.meta["custom"]["unet_node"], []).append(n)

    def params(n: fx.Node) -> int:
        return sum(p.numel() for p in modules[n.target].parameters()) if n.op == "call_module" else 0

    def value(n: fx.Node) -> int:
        shape, flops = measured.get(n.name, (None, 0))
        return {"flops": flops, "params": params(n), "memory": prod(shape) * itemsize if shape else 0}[heat or "params"]

    top = (max((value(n) for n in layers), default=0) or 1) if heat else 1
    clusters: dict[str, str] = {}
    items = []
    for block_name, nodes in per_block.items():
        gnode, row = g[block_name], cost[block_name]
        framed = len(nodes) > 1
        if framed:
            clusters[block_name] = " · ".join(
                [block_name, row.block, *note_lines([row], [a for a in notes if a == "shape"])]
            )
        for n in nodes:
            if n.op == "placeholder":
                title, text = n.name, row.block
            elif n.op == "call_module":
                target = str(n.target)  # a call_module's target is the submodule's path
                title, text = target.removeprefix(f"{block_name}."), describe_module(modules[target])
            else:
                title, text = _function_name(n), ""
            if not framed:
                title, text = block_name, text or title
            items.append(
                Item(
                    n.name,
                    gnode.role,
                    gnode.level,
                    title,
                    text,
                    _layer_notes(n, measured, params(n), notes, itemsize),
                    members=(block_name,),
                    cluster=block_name if framed else None,
                    heat=value(n) / top if heat else None,
                )
            )
    links = []
    for n in layers:
        dst = n.meta["custom"]["unet_node"]
        for a in n.all_input_nodes:
            if a.op not in ("placeholder", "call_module", "call_function", "call_method"):
                continue
            src = a.meta["custom"]["unet_node"]
            kind = EdgeKind.DATA if src == dst else _edge_kind(g, src, dst)
            merge = merge_kind(g[dst].block) if kind is EdgeKind.SKIP else None
            links.append(Link(a.name, n.name, kind, merge, None, () if src == dst else ((src, dst),)))
    return Scene(title_line(g, cost), tuple(items), tuple(links), clusters, heat, g.name)


def _edge_kind(g: UNetGraph, src: str, dst: str) -> EdgeKind:
    for e in g.in_edges(dst):
        if e.src == src:
            return e.kind
    return EdgeKind.DATA


def _layer_notes(
    n: fx.Node, measured: dict[str, tuple[Shape | None, int]], params: int, notes: Sequence[str], itemsize: int
) -> tuple[str, ...]:
    shape, flops = measured.get(n.name, (None, 0))
    out = []
    for what in notes:
        if what == "shape" and shape is not None:
            out.append("×".join(map(str, shape[1:])))
        elif what == "params" and params:
            out.append(f"{fmt_count(params)} params")
        elif what == "flops" and flops:
            out.append(fmt_count(flops, "FLOPs"))
        elif what == "memory" and shape is not None:
            out.append(fmt_bytes(prod(shape) * itemsize))
    return tuple(out)
