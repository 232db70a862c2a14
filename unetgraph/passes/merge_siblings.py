"""Compute once what sibling nodes compute from the same input, and run sibling Linears as one.

A diffusion U-Net feeds its time embedding to every residual block, and each block applies its
own activation and its own small ``Linear`` to it: at batch 1, the DDPM preset spends 22 SiLUs
and 22 matrix-vector products (about 80 µs each, mostly call overhead) on one 512-vector.
Attention blocks read one normalized tensor with three ``Linear`` layers (query, key, value).
This pass keeps one of several equal activations of the same tensor, and concatenates the
``Linear`` layers that read the same tensor into one, whose output each former layer's node
takes a ``narrow`` view of: one matrix product and one call instead of several, outputs equal
within float32 rounding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..errors import LoweringError
from .base import (
    PassResult,
    copy_meta,
    drop_module,
    free_target,
    module_users,
    replace_node,
    target_of,
    undone_copy,
)
from .prepack import Fusion, _node_fusion

__all__ = ["merge_siblings", "unmerge", "separate"]

# on a merged Linear's call node: ((target, out_features, had a bias), ...) of the Linears it stands for
MERGED = "unetgraph_merged"


def merge_siblings(gm: fx.GraphModule) -> PassResult:
    """In place: one call for equal activations of the same tensor (ReLU, SiLU, GELU, …, as
    modules or functions, never in-place ones), then one ``nn.Linear`` for the ``nn.Linear``
    layers that read the same tensor, each former node a ``narrow`` of its output.

    Only for inference (the merged weights are new parameters). A ``Linear`` that another node
    also calls, or that is called with more than its input, is left alone.

    Example:
        >>> import unetgraph as ug
        >>> g = ug.diffusion_unet(3, widths=(32, 64), layers_per_block=1, resblock=ug.ResBlock(groups=8),
        ...                       attention=ug.SelfAttention(groups=8))
        >>> changes = merge_siblings(g.lower().eval()).changes
        >>> for line in changes[:3]: print(line.split(":")[0])
        one SiLU of time_embedding instead of 8
        8 Linears reading enc0_0_cond_proj_act run as merged_cond_proj_linear (128→416)
        3 Linears reading enc1_0_attn_transpose run as enc1_0_attn.to_q_to_k_to_v (64→192)
    """
    changes = _merge_activations(gm) + _merge_linears(gm)
    if changes:
        gm.graph.lint()
        gm.recompile()
    return PassResult("merge_siblings", tuple(changes), () if changes else ("no sibling activations or Linears",))


def _activation(gm: fx.GraphModule, node: fx.Node) -> Fusion | None:
    """What ``node`` computes from its one input when it is an out-of-place activation, else ``None``."""
    if len(node.args) != 1 or not isinstance(node.args[0], fx.Node):
        return None
    if node.op == "call_module":
        if node.kwargs or getattr(gm.get_submodule(target_of(node)), "inplace", False):
            return None
    elif node.kwargs.get("inplace", False) is not False:
        return None
    return _node_fusion(gm, node)


def _merge_activations(gm: fx.GraphModule) -> list[str]:
    changes = []
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for source in list(gm.graph.nodes):
        kept: dict[Fusion, tuple[fx.Node, list[str]]] = {}
        for user in sorted(source.users, key=order.__getitem__):
            fusion = _activation(gm, user)
            if fusion is None:
                continue
            if fusion not in kept:
                kept[fusion] = (user, [])
                continue
            first, dropped = kept[fusion]
            dropped.append(user.name)
            target = target_of(user) if user.op == "call_module" else None
            replace_node(gm, user, first)  # first comes before user, so before user's users
            if target is not None:
                drop_module(gm, target)
        for fusion, (first, dropped) in kept.items():
            if dropped:
                what = type(gm.get_submodule(target_of(first))).__name__ if first.op == "call_module" else fusion.attr
                changes.append(
                    f"one {what} of {source.name} instead of {len(dropped) + 1}: {first.name} kept, "
                    f"{_listed(dropped)} dropped"
                )
    return changes


def _linear(gm: fx.GraphModule, node: fx.Node, source: fx.Node) -> nn.Linear | None:
    """The ``nn.Linear`` that ``node`` alone calls on ``source`` alone, else ``None``."""
    if node.op != "call_module" or node.args != (source,) or node.kwargs:
        return None
    module = gm.get_submodule(target_of(node))
    if type(module) is not nn.Linear or len(module_users(gm, target_of(node))) != 1:
        return None
    return module


def _merge_linears(gm: fx.GraphModule) -> list[str]:
    changes = []
    for source in list(gm.graph.nodes):
        groups: dict[tuple[Any, ...], list[tuple[fx.Node, nn.Linear]]] = {}
        for user in source.users:
            linear = _linear(gm, user, source)
            if linear is not None:
                key = (linear.in_features, linear.weight.dtype, linear.weight.device)
                groups.setdefault(key, []).append((user, linear))
        for members in groups.values():
            if len(members) > 1:
                changes.append(_merge(gm, source, members))
    return changes


def _merge(gm: fx.GraphModule, source: fx.Node, members: list[tuple[fx.Node, nn.Linear]]) -> str:
    """Replace ``members`` (Linears reading ``source``) with one Linear and a ``narrow`` each."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    members = sorted(members, key=lambda m: order[m[0]])
    linears = [linear for _, linear in members]
    weight = torch.cat([linear.weight.detach() for linear in linears])
    bias = any(lin.bias is not None for lin in linears)
    merged = nn.Linear(weight.shape[1], weight.shape[0], bias=bias, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        merged.weight.copy_(weight)
        if merged.bias is not None:
            zeros = weight.new_zeros  # a Linear without a bias adds nothing
            merged.bias.copy_(torch.cat([zeros(lin.out_features) if lin.bias is None else lin.bias for lin in linears]))
    merged.train(linears[0].training)
    targets = [target_of(node) for node, _ in members]
    parents = {t.rpartition(".")[0] for t in targets}
    if len(parents) == 1 and len(members) <= 4:
        parent = parents.pop()
        leaves = "_".join(t.rpartition(".")[2] for t in targets)
        target = free_target(gm, f"{parent}.{leaves}" if parent else leaves)
    else:
        suffix = _common_suffix([t.split(".") for t in targets])
        target = free_target(gm, f"merged_{'_'.join(suffix)}" if suffix else f"{source.name}_linears")
    gm.add_submodule(target, merged)
    first = members[0][0]
    with gm.graph.inserting_before(first):
        call = gm.graph.call_module(target, (source,))
    copy_meta(first, call)
    call.meta[MERGED] = tuple((t, lin.out_features, lin.bias is not None) for t, lin in zip(targets, linears))
    start = 0
    for node, linear in members:
        # the node keeps its name (and the graph node it holds): it becomes a view of the merged output
        node.op, node.target = "call_method", "narrow"
        node.args = (call, -1, start, linear.out_features)
        start += linear.out_features
    for t in targets:
        drop_module(gm, t)
    return (
        f"{len(members)} Linears reading {source.name} run as {target} "
        f"({merged.in_features}→{merged.out_features}): {_listed([n.name for n, _ in members])}"
    )


def _common_suffix(paths: list[list[str]]) -> list[str]:
    """The dotted path's tail that every one of ``paths`` ends with (``["cond_proj", "linear"]``)."""
    tail: list[str] = []
    while all(len(p) > len(tail) for p in paths) and len({p[-1 - len(tail)] for p in paths}) == 1:
        tail.insert(0, paths[0][-1 - len(tail)])
    return tail


def _listed(names: list[str], shown: int = 3) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def unmerge(gm: fx.GraphModule) -> PassResult:
    """Undo :func:`merge_siblings`' Linears in place: each part becomes its own ``nn.Linear``
    again, under its old name, with its slice of the weights (the state dict of the module
    before the pass: what a peer's layout, such as ``to_diffusers``, maps key by key).
    Activations computed once stay so (they hold no state)."""
    changes = []
    for call in [n for n in gm.graph.nodes if n.op == "call_module" and MERGED in n.meta]:
        merged = gm.get_submodule(target_of(call))
        if not isinstance(merged, nn.Linear):
            raise LoweringError(f"{call.name}: a merged Linear's node calls a {type(merged).__name__}", node=call.name)
        views = {(n.args[2], n.args[3]): n for n in call.users if n.op == "call_method" and n.target == "narrow"}
        start = 0
        for target, width, bias in call.meta[MERGED]:
            node = views.pop((start, width), None)
            if node is None:
                raise LoweringError(
                    f"{call.name}: no view of columns {start}–{start + width} for {target}", node=call.name
                )
            part = nn.Linear(
                merged.in_features, width, bias=bias, device=merged.weight.device, dtype=merged.weight.dtype
            )
            with torch.no_grad():
                part.weight.copy_(merged.weight[start : start + width])
                if part.bias is not None and merged.bias is not None:
                    part.bias.copy_(merged.bias[start : start + width])
            gm.add_submodule(target, part.train(merged.training))
            node.op, node.target, node.args = "call_module", target, call.args
            start += width
        if call.users:
            raise LoweringError(
                f"{call.name}: other nodes read the merged output ({', '.join(u.name for u in call.users)})",
                node=call.name,
            )
        changes.append(f"{target_of(call)} back to {len(call.meta[MERGED])} Linears")
        gm.graph.erase_node(call)
        drop_module(gm, target_of(call))
    if changes:
        gm.graph.lint()
        gm.recompile()
    return PassResult("unmerge", tuple(changes))


def separate(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` itself when :func:`merge_siblings` merged no Linears in it, else an unmerged copy
    (``gm`` is untouched; the copy shares every other parameter and buffer)."""
    return undone_copy(gm, unmerge) if any(MERGED in n.meta for n in gm.graph.nodes) else gm
