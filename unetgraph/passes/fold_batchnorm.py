"""Fold an inference-mode batch norm into the convolution that feeds it."""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from ..errors import LoweringError
from .base import PassResult, called_module, copy_meta, drop_module, module_users, replace_node, target_of

__all__ = ["fold_batchnorm", "fold_into_conv", "NORM_TAILS"]


def fold_batchnorm(gm: fx.GraphModule) -> PassResult:
    """Fold each ``Conv → BatchNorm`` pair into the convolution, in place.

    In eval mode a batch norm is ``y = (x - mean) / sqrt(var + eps) * gamma + beta``, an
    affine map per channel, so it folds into the preceding convolution's weight and bias.
    Unlike ``torch.fx.experimental.optimization.fuse`` this folds transposed convolutions
    too (their output channels are the weight's second axis, per group).

    A pair is left alone, with a note saying why, when the norm is in training mode or
    keeps no running statistics, when the convolution's output has other users, or when
    the convolution module is called more than once. A batch-norm subclass with a forward of
    its own is folded only when its tail is known (:data:`NORM_TAILS`: timm's
    ``BatchNormAct2d`` applies its ``drop`` and ``act`` children after the norm; they stay, as
    calls of their own); any other is left alone.

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
        bn = called_module(gm, node, _BatchNorm)
        if bn is None:
            continue
        src = node.args[0] if node.args else None
        conv = called_module(gm, src, _ConvNd) if isinstance(src, fx.Node) else None
        if not isinstance(src, fx.Node) or conv is None:
            what = src.name if isinstance(src, fx.Node) else repr(src)
            notes.append(f"{node.target} follows {what}, not a convolution")
            continue
        tail = _tail(bn)
        why = _why_not(gm, node, src, bn) or ("" if tail is not None else _own_forward(bn))
        if why:
            notes.append(f"{node.target} not folded into {src.target}: {why}")
            continue
        fold_into_conv(conv, bn)
        kept = _keep_tail(gm, node, src, bn, tail) if tail else []
        if not tail:
            replace_node(gm, node, src)
            drop_module(gm, target_of(node))
        changes.append(f"{node.target} folded into {src.target}" + (f" ({', '.join(kept)} kept)" if kept else ""))
    if changes:
        gm.graph.lint()
        gm.recompile()
    return PassResult("fold_batchnorm", tuple(changes), tuple(notes))


#: batch-norm subclasses whose forward is the norm then some of their children, in order, by
#: ``module.qualname`` (matched by name: unetgraph does not import them)
NORM_TAILS: dict[str, tuple[str, ...]] = {"timm.layers.norm_act.BatchNormAct2d": ("drop", "act")}


def _tail(bn: nn.Module) -> tuple[str, ...] | None:
    """What ``bn`` applies after normalising: ``()`` for torch's own batch norms, the children
    of a known norm-and-activation module, ``None`` for one whose forward is unknown."""
    cls = type(bn)
    if cls.forward is _BatchNorm.forward or cls.forward is nn.BatchNorm2d.forward:
        return ()
    return NORM_TAILS.get(f"{cls.__module__}.{cls.__qualname__}")


def _own_forward(bn: nn.Module) -> str:
    return f"{type(bn).__qualname__} has a forward of its own (it may do more than normalise)"


def _keep_tail(gm: fx.GraphModule, node: fx.Node, src: fx.Node, bn: nn.Module, tail: tuple[str, ...]) -> list[str]:
    """Replace the norm-and-activation call by calls of its tail children, which stay where they
    were (``….bn1.act``) in a plain container that holds no norm state any more."""
    kept = [c for c in tail if not isinstance(bn.get_submodule(c), nn.Identity)]
    container = nn.Module()
    for child in kept:
        container.add_module(child, bn.get_submodule(child))
    gm.set_submodule(target_of(node), container)
    h: fx.Node = src
    with gm.graph.inserting_before(node):
        for child in kept:
            h = copy_meta(node, gm.graph.call_module(f"{node.target}.{child}", (h,)))
    replace_node(gm, node, h)
    return kept


def _why_not(gm: fx.GraphModule, bn_node: fx.Node, conv_node: fx.Node, bn: _BatchNorm) -> str:
    if bn.training:
        return "the norm is in training mode (call .eval() first)"
    if bn.running_mean is None or bn.running_var is None:
        return "the norm keeps no running statistics (track_running_stats=False)"
    if len(conv_node.users) != 1:
        return f"the convolution's output also feeds {', '.join(u.name for u in conv_node.users if u is not bn_node)}"
    if len(module_users(gm, target_of(conv_node))) != 1:
        return "the convolution module is called more than once"
    if len(module_users(gm, target_of(bn_node))) != 1:
        return "the norm module is called more than once"
    return ""


@torch.no_grad()
def fold_into_conv(conv: _ConvNd, bn: _BatchNorm) -> None:
    """Fold eval-mode ``bn`` into ``conv``'s weight and bias, in place (``conv`` gains a bias).

    Computed in float64 and stored in the convolution's dtype.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise LoweringError(
            f"fold_into_conv: the {type(bn).__name__} keeps no running statistics (track_running_stats=False); "
            "there is nothing to fold"
        )
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
