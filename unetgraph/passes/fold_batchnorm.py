"""Fold an inference-mode batch norm into the convolution that feeds it."""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from .base import PassResult, drop_module, is_module, module_users, replace_node

__all__ = ["fold_batchnorm", "fold_into_conv"]


def fold_batchnorm(gm: fx.GraphModule) -> PassResult:
    """Fold each ``Conv → BatchNorm`` pair into the convolution, in place.

    In eval mode a batch norm is ``y = (x - mean) / sqrt(var + eps) * gamma + beta``, an
    affine map per channel, so it folds into the preceding convolution's weight and bias.
    Unlike ``torch.fx.experimental.optimization.fuse`` this folds transposed convolutions
    too (their output channels are the weight's second axis, per group).

    A pair is left alone, with a note saying why, when the norm is in training mode or
    keeps no running statistics, when the convolution's output has other users, or when
    the convolution module is called more than once.

    Returns:
        A :class:`PassResult` listing each folded pair.

    Example:
        >>> import torch, unetgraph as ug
        >>> gm = ug.unet(1, 1, widths=(4, 8)).lower().eval()
        >>> fold_batchnorm(gm).changes[0]
        'enc0.norm0 folded into enc0.conv0'
    """
    changes, notes = [], []
    for node in list(gm.graph.nodes):
        if not is_module(gm, node, _BatchNorm):
            continue
        src = node.args[0] if node.args else None
        if not (isinstance(src, fx.Node) and is_module(gm, src, _ConvNd)):
            what = src.name if isinstance(src, fx.Node) else repr(src)
            notes.append(f"{node.target} follows {what}, not a convolution")
            continue
        bn, conv = gm.get_submodule(node.target), gm.get_submodule(src.target)
        why = _why_not(gm, node, src, bn)
        if why:
            notes.append(f"{node.target} not folded into {src.target}: {why}")
            continue
        fold_into_conv(conv, bn)
        replace_node(gm, node, src)
        drop_module(gm, node.target)
        changes.append(f"{node.target} folded into {src.target}")
    if changes:
        gm.graph.lint()
        gm.recompile()
    return PassResult("fold_batchnorm", tuple(changes), tuple(notes))


def _why_not(gm: fx.GraphModule, bn_node: fx.Node, conv_node: fx.Node, bn: _BatchNorm) -> str:
    if bn.training:
        return "the norm is in training mode (call .eval() first)"
    if bn.running_mean is None or bn.running_var is None:
        return "the norm keeps no running statistics (track_running_stats=False)"
    if len(conv_node.users) != 1:
        return f"the convolution's output also feeds {', '.join(u.name for u in conv_node.users if u is not bn_node)}"
    if len(module_users(gm, conv_node.target)) != 1:
        return "the convolution module is called more than once"
    if len(module_users(gm, bn_node.target)) != 1:
        return "the norm module is called more than once"
    return ""


@torch.no_grad()
def fold_into_conv(conv: _ConvNd, bn: _BatchNorm) -> None:
    """Fold eval-mode ``bn`` into ``conv``'s weight and bias, in place (``conv`` gains a bias).

    Computed in float64 and stored in the convolution's dtype.
    """
    dtype = conv.weight.dtype
    std = torch.sqrt(bn.running_var.double() + bn.eps)
    scale = (bn.weight.double() if bn.weight is not None else torch.ones_like(std)) / std
    shift = (bn.bias.double() if bn.bias is not None else torch.zeros_like(std)) - bn.running_mean.double() * scale
    w = conv.weight.double()
    k = w.dim() - 2
    if conv.transposed:  # (in, out / groups, *kernel): output channel j of group g is g * out_per_group + j
        g = conv.groups
        grouped = w.reshape(g, w.shape[0] // g, w.shape[1], *w.shape[2:])
        w = (grouped * scale.reshape(g, 1, w.shape[1], *(1,) * k)).reshape(w.shape)
    else:  # (out, in / groups, *kernel)
        w = w * scale.reshape(-1, *(1,) * (k + 1))
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    conv.weight = nn.Parameter(w.to(dtype), requires_grad=conv.weight.requires_grad)
    conv.bias = nn.Parameter((bias * scale + shift).to(dtype), requires_grad=conv.weight.requires_grad)
