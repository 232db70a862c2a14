"""Dead-code removal: nodes nobody reads, submodules nobody calls, tensors nobody uses."""

from __future__ import annotations

from typing import Callable

import torch.fx as fx

from ..runtime import InputGuard
from .base import PassResult, called_module, has_submodule

__all__ = ["remove_dead_nodes"]


def remove_dead_nodes(gm: fx.GraphModule) -> PassResult:
    """Erase pure nodes whose value is never used, then the state they leave unused, in place.

    Removes (1) nodes without users that have no side effect (``torch.fx``'s
    ``eliminate_dead_code``; the input guard is kept: it raises, so it counts as used),
    (2) submodules that no node calls or reads, (3) parameters and buffers of the root
    or of uncalled containers that no ``get_attr`` reads (e.g. what constant folding
    replaced). The ``state_dict`` shrinks accordingly.

    Example:
        >>> import torch, unetgraph as ug
        >>> gm = ug.unet(1, 1, widths=(4, 8)).lower()
        >>> x = next(iter(gm.graph.nodes))
        >>> with gm.graph.inserting_after(x):
        ...     unused = gm.graph.call_function(torch.relu, (x,))
        >>> remove_dead_nodes(gm).changes
        ('node relu',)
    """
    before = [n.name for n in gm.graph.nodes]
    gm.graph.eliminate_dead_code(is_impure_node=_impure(gm))
    after = {n.name for n in gm.graph.nodes}
    changes = [f"node {name}" for name in before if name not in after]

    used = _used_paths(gm)
    modules = [name for name, _ in gm.named_modules() if name]
    for name in modules:
        if not _covered(name, used) and not any(_covered(u, {name}) for u in used) and has_submodule(gm, name):
            gm.delete_submodule(name)
            changes.append(f"submodule {name}")
    for kind, items in (("parameter", gm.named_parameters()), ("buffer", gm.named_buffers())):
        for name, _ in list(items):
            if not _covered(name, used):
                owner, _, attr = name.rpartition(".")
                delattr(gm.get_submodule(owner), attr)
                changes.append(f"{kind} {name}")
    if changes:
        gm.graph.lint()
        gm.recompile()
    return PassResult("remove_dead_nodes", tuple(changes))


def _impure(gm: fx.GraphModule) -> Callable[[fx.Node], bool]:
    def impure(node: fx.Node) -> bool:
        if called_module(gm, node, InputGuard) is not None:
            return True
        return node.is_impure()

    return impure


def _used_paths(gm: fx.GraphModule) -> set[str]:
    """Qualified names that nodes call (``call_module``) or read (``get_attr``), and those a
    called module says it uses besides its own (``reads``, e.g. a folded upsampling's module)."""
    used = {str(n.target) for n in gm.graph.nodes if n.op in ("call_module", "get_attr")}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            used.update(getattr(gm.get_submodule(str(n.target)), "reads", ()))
    return used


def _covered(name: str, used: set[str]) -> bool:
    """Whether ``name`` is a used path or lies inside one (a called module owns its children)."""
    return any(name == u or name.startswith(u + ".") for u in used)
