"""Freeze and unfreeze parts of a lowered module for fine-tuning: by graph node or role.

A frozen part's parameters stop taking gradients (``requires_grad=False``). With
``norms="eval"`` its normalisation layers that keep running statistics (batch norms,
instance norms that track them) also stay in evaluation mode, so ``model.train()`` no longer
updates their statistics or normalises with batch statistics: the usual way to fine-tune a
pretrained encoder on small batches. Such a norm becomes a ``Frozen…`` subclass of its own class
(``FrozenBatchNorm2d``) whose ``train()`` keeps it in evaluation mode; its parameters, buffers
and ``state_dict`` keys are unchanged, and :func:`unfreeze` gives it its class back.

>>> import torch, unetgraph as ug
>>> gm = ug.unet(3, 2, widths=(8, 16)).lower()
>>> ug.freeze(gm, role="encoder")
Frozen(nodes=('enc0',), parameters=824, norms=2)
>>> gm.train().enc0.norm0.training, type(gm.enc0.norm0).__name__
(False, 'FrozenBatchNorm2d')
>>> ug.unfreeze(gm, role="encoder").parameters
824
"""

from __future__ import annotations

import sys
import threading
from typing import Iterable, NamedTuple

import torch.fx as fx
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from .errors import SpecError
from .graph import UNetGraph
from .record import lowered_record
from .types import Role
from .util import short_repr

__all__ = ["freeze", "unfreeze", "Frozen", "frozen_nodes", "NORMS_MODES"]

NORMS_MODES = ("eval", "train")
_CLASSES: dict[type[nn.Module], type[nn.Module]] = {}
_LOCK = threading.Lock()


class Frozen(NamedTuple):
    """What :func:`freeze` or :func:`unfreeze` changed: the graph nodes, how many parameters, how many norms."""

    nodes: tuple[str, ...]
    parameters: int
    norms: int


def freeze(
    gm: fx.GraphModule,
    *,
    role: Role | str | Iterable[Role | str] | None = None,
    node: str | Iterable[str] | None = None,
    norms: str = "eval",
) -> Frozen:
    """Stop the parameters of the chosen graph nodes from training, in place.

    Args:
        gm: a module made by :func:`unetgraph.lower`.
        role: the nodes of these roles (``"encoder"``: a backbone, or every encoder block).
        node: these nodes, by name (``"encoder"``); with ``role``, the nodes matching both.
        norms: ``"eval"`` keeps their running-statistics norms in evaluation mode from now on,
            whatever ``gm.train()`` says; ``"train"`` leaves the norms' mode to ``gm``.

    Returns:
        A :class:`Frozen`: the nodes, the parameter count frozen, the norms kept in evaluation mode.

    Raises:
        SpecError: no node is chosen, or ``norms`` is unknown.
        NodeNotFoundError: a name is not a node of the graph.
    """
    if norms not in NORMS_MODES:
        raise SpecError(f"freeze: norms must be one of {', '.join(map(repr, NORMS_MODES))}, got {norms!r}")
    names = frozen_nodes(lowered_record(gm, "freeze: gm").graph, role=role, node=node)
    params = count = 0
    for module in _modules(gm, names):
        for p in module.parameters(recurse=False):
            params += p.numel() if p.requires_grad else 0
            p.requires_grad_(False)
        if norms == "eval" and _tracks_stats(module):
            with _LOCK:
                module.__class__ = _frozen_class(type(module))
            module.train(False)
            count += 1
    return Frozen(names, params, count)


def unfreeze(
    gm: fx.GraphModule,
    *,
    role: Role | str | Iterable[Role | str] | None = None,
    node: str | Iterable[str] | None = None,
) -> Frozen:
    """Let the chosen nodes train again: parameters take gradients, frozen norms get their class
    back and follow ``gm``'s mode. Arguments as :func:`freeze`."""
    names = frozen_nodes(lowered_record(gm, "unfreeze: gm").graph, role=role, node=node)
    params = count = 0
    for module in _modules(gm, names):
        for p in module.parameters(recurse=False):
            params += 0 if p.requires_grad else p.numel()
            p.requires_grad_(True)
        base = getattr(type(module), "_unfrozen_class", None)
        if base is not None:
            module.__class__ = base
            module.train(gm.training)
            count += 1
    return Frozen(names, params, count)


def frozen_nodes(
    g: UNetGraph,
    *,
    role: Role | str | Iterable[Role | str] | None = None,
    node: str | Iterable[str] | None = None,
) -> tuple[str, ...]:
    """The graph nodes ``role`` and ``node`` choose, in graph order."""
    if role is None and node is None:
        raise SpecError("choose what to freeze: role='encoder', node='encoder' or both")
    wanted = None
    if node is not None:
        names = [node] if isinstance(node, str) else node
        if not isinstance(names, Iterable) or not all(isinstance(n, str) for n in names):
            raise SpecError(f"node: expected a node name or names, got {short_repr(node)}")
        wanted = {g[n].name for n in names}
    chosen = tuple(n.name for n in g.nodes(role=role) if wanted is None or n.name in wanted)
    if not chosen:
        raise SpecError(
            f"no node is {'of role ' + repr(role) if role is not None else ''} "
            f"{'named ' + ', '.join(sorted(wanted)) if wanted else ''}".strip()
        )
    return chosen


def _modules(gm: fx.GraphModule, names: tuple[str, ...]) -> list[nn.Module]:
    """Every submodule under the chosen nodes' names (``encoder``, ``encoder.layer1.0.conv1``, …)."""
    prefixes = tuple(f"{n}." for n in names)
    return [m for path, m in gm.named_modules() if path in names or path.startswith(prefixes)]


def _tracks_stats(module: nn.Module) -> bool:
    return isinstance(module, _NormBase) and module.track_running_stats


def _frozen_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` of a frozen norm: it stays in evaluation mode."""
    return nn.Module.train(self, False)


def _frozen_class(cls: type[nn.Module]) -> type[nn.Module]:
    """``Frozen<cls>``: ``cls`` whose ``train()`` keeps evaluation mode (one class per norm class,
    kept in this module so that frozen modules pickle)."""
    if getattr(cls, "_unfrozen_class", None) is not None:
        return cls
    if cls not in _CLASSES:
        name = f"Frozen{cls.__name__}"
        if hasattr(sys.modules[__name__], name):  # another class of the same name: keep both importable
            name = f"Frozen{cls.__module__.replace('.', '_')}_{cls.__name__}"
        frozen = type(name, (cls,), {"train": _frozen_train, "_unfrozen_class": cls, "__module__": __name__})
        frozen.__qualname__ = name
        setattr(sys.modules[__name__], name, frozen)
        _CLASSES[cls] = frozen
    return _CLASSES[cls]
