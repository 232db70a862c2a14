"""Drop layers that pass their input through: ``nn.Identity``, and dropout in eval mode."""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from .base import PassResult, drop_module, replace_node

__all__ = ["drop_identities"]

# functional dropouts: (function, name of its training flag, position of that flag)
_DROPOUT_FUNCTIONS = {
    F.dropout: ("training", 2),
    F.dropout1d: ("training", 2),
    F.dropout2d: ("training", 2),
    F.dropout3d: ("training", 2),
    F.alpha_dropout: ("training", 2),
    F.feature_alpha_dropout: ("training", 2),
    torch.dropout: ("train", 2),
}


def drop_identities(gm: fx.GraphModule) -> PassResult:
    """Remove ``nn.Identity`` calls, and dropout calls that are in eval mode, in place.

    A dropout module in training mode is kept (it is not an identity then), with a note.
    Functional dropouts (``F.dropout(x, p, training=False)`` from traced blocks) go too.

    Example:
        >>> import unetgraph as ug
        >>> gm = ug.unet(1, 1, widths=(4, 8), block=ug.ConvBlock(dropout=0.1)).lower().eval()
        >>> drop_identities(gm).changes
        ('enc0.dropout', 'mid.dropout', 'dec0.dropout')
    """
    changes, notes = [], []
    for node in list(gm.graph.nodes):
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            if isinstance(module, _DropoutNd) and module.training:
                notes.append(f"{node.target} kept: dropout in training mode (call .eval() first)")
                continue
            if not isinstance(module, (nn.Identity, _DropoutNd)):
                continue
        elif node.op == "call_function" and node.target in _DROPOUT_FUNCTIONS:
            flag, pos = _DROPOUT_FUNCTIONS[node.target]
            training = node.kwargs.get(flag, node.args[pos] if len(node.args) > pos else True)
            if training is not False:
                notes.append(f"{node.name} kept: functional dropout with training={training!r}")
                continue
        else:
            continue
        replace_node(gm, node, node.args[0])
        if node.op == "call_module":
            drop_module(gm, node.target)
        changes.append(str(node.target) if node.op == "call_module" else node.name)
    if changes:
        gm.graph.lint()
        gm.recompile()
    return PassResult("drop_identities", tuple(changes), tuple(notes))
