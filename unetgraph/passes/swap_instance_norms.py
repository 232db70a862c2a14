"""Run instance norms as group norms with one channel per group: equal outputs, a faster kernel.

An instance norm without running statistics normalizes each sample's channel over its
positions, as a group norm with one group per channel does, with the same per-channel scale
and shift. torch computes ``InstanceNorm`` through batch norm on a reshaped input, which costs
4–5× the group-norm kernel on the CPU (32 channels at 128², float32: 0.92 ms against 0.20 ms
contiguous; 2.4 ms against 1.0 ms channels-last). MONAI's U-Nets and nnU-Net use instance norms
in every block.
"""

from __future__ import annotations

import torch.fx as fx
from torch import nn
from torch.nn.modules.instancenorm import _InstanceNorm

from ..record import find_record
from .base import PassResult, called_module, target_of

__all__ = ["swap_instance_norms"]

_INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def swap_instance_norms(gm: fx.GraphModule) -> PassResult:
    """Replace each ``InstanceNorm{1,2,3}d`` without running statistics with an equal
    ``nn.GroupNorm(C, C)`` under the same name, in place, sharing its scale and shift (the
    ``state_dict`` keys and the code stay as they were).

    Left alone, with a note: instance norms with running statistics (in eval mode they apply
    the stored statistics instead), subclasses (their ``forward`` may differ), and every
    instance norm of a module not made by :func:`unetgraph.lower` (its input guard is what
    makes every input batched; an unbatched ``(C, H, W)`` input means something else to a
    group norm).

    Example:
        >>> import unetgraph as ug
        >>> gm = ug.unet(1, 2, widths=(8, 16), block=ug.ConvBlock(norm="instance")).lower().eval()
        >>> swap_instance_norms(gm).changes[0]
        'enc0.norm0: InstanceNorm2d(8) → GroupNorm(8, 8)'
    """
    name = "swap_instance_norms"
    norms: dict[str, _InstanceNorm] = {}  # by path: a module called twice is swapped once
    for node in gm.graph.nodes:
        norm = called_module(gm, node, _InstanceNorm)
        if norm is not None:
            norms[target_of(node)] = norm
    if not norms:
        return PassResult(name, (), ("no instance norms",))
    if find_record(gm) is None:
        return PassResult(name, (), (f"{len(norms)} instance norms left alone: not a module made by unetgraph.lower",))
    changes, notes = [], []
    for target, norm in norms.items():
        if type(norm) not in _INSTANCE_NORMS:
            notes.append(f"{target} left alone: a subclass of {type(norm).__mro__[1].__name__}")
        elif norm.track_running_stats:
            notes.append(f"{target} left alone: it keeps running statistics")
        else:
            c = norm.num_features
            group = nn.GroupNorm(c, c, eps=norm.eps, affine=norm.affine)
            if norm.affine:
                group.weight, group.bias = norm.weight, norm.bias
            gm.add_submodule(target, group.train(norm.training))
            changes.append(f"{target}: {type(norm).__name__}({c}) → GroupNorm({c}, {c})")
    return PassResult(name, tuple(changes), tuple(notes))
