"""What every pass shares: the :class:`PassResult` it returns and the edits it makes to a GraphModule.

A pass is a plain function ``pass_(gm) -> PassResult`` that rewrites ``gm`` in place (as
``torch.fx`` passes do), keeps its outputs equal, and says what it changed and what it left
alone and why. Nodes a pass creates carry the ``meta["custom"]`` of the node they replace,
so the graph's node names survive into ``gm.code`` and ``torch.export``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, NoReturn, TypeVar

import torch.fx as fx
from torch import nn

from ..errors import LoweringError, ShapeError
from ..record import attach_record, find_record

_M = TypeVar("_M", bound=nn.Module)

__all__ = [
    "PassResult",
    "replace_node",
    "copy_meta",
    "module_users",
    "drop_module",
    "is_module",
    "called_module",
    "target_of",
    "free_target",
    "undone_copy",
    "has_submodule",
    "held_by",
    "hold",
]


@dataclass(frozen=True)
class PassResult:
    """What one pass did.

    Attributes:
        name: the pass (its function name).
        changes: one line per change, e.g. ``"enc0.norm0 folded into enc0.conv0"``.
        notes: what the pass left alone and why, e.g. a batch norm still in training mode.
    """

    name: str
    changes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def __str__(self) -> str:
        head = f"{self.name}: {len(self.changes)} change{'s' if len(self.changes) != 1 else ''}"
        lines = [head] + [f"  {c}" for c in self.changes] + [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def refuse_input(node: str, expected: str, got: tuple[int, ...], what: str = "an input") -> NoReturn:
    """The :class:`ShapeError` a layer a pass made raises for an input it cannot take, naming its
    node (torch's own errors from inside the layer would not)."""
    raise ShapeError(f"{node}: expected {what} of shape {expected}, got {got}", node=node)


def copy_meta(src: fx.Node, dst: fx.Node) -> fx.Node:
    """Give ``dst`` the graph-node tag of ``src`` (``meta["custom"]``), if it has one."""
    if "custom" in src.meta:
        dst.meta["custom"] = dict(src.meta["custom"])
    return dst


def replace_node(gm: fx.GraphModule, old: fx.Node, new: Any) -> None:
    """Send every use of ``old`` to ``new`` (a node or a Python value) and erase ``old``.

    When ``old`` held a graph node's output (``ug.fx_node_names``), ``new`` takes over.
    """
    if isinstance(new, fx.Node):
        old.replace_all_uses_with(new)
        hold(gm, held_by(gm, old.name), new.name)
    else:
        for user in list(old.users):
            user.args = fx.node.map_arg(user.args, lambda a: new if a is old else a)
            user.kwargs = fx.node.map_arg(user.kwargs, lambda a: new if a is old else a)
    gm.graph.erase_node(old)


def module_users(gm: fx.GraphModule, target: str) -> list[fx.Node]:
    """The ``call_module`` nodes that call the submodule ``target``."""
    return [n for n in gm.graph.nodes if n.op == "call_module" and n.target == target]


def drop_module(gm: fx.GraphModule, target: str) -> bool:
    """Delete submodule ``target`` if no node calls it any more; returns whether it was deleted."""
    if module_users(gm, target):
        return False
    return gm.delete_submodule(target)


def target_of(node: fx.Node) -> str:
    """The dotted path a ``call_module`` or ``get_attr`` node names (fx types a target ``str | Callable``)."""
    if not isinstance(node.target, str):
        raise LoweringError(f"{node.format_node()}: a {node.op} node whose target is not a path ({node.target!r})")
    return node.target


def called_module(gm: fx.GraphModule, node: fx.Node, kind: type[_M]) -> _M | None:
    """The submodule ``node`` calls when it is a ``kind``, else ``None``."""
    if node.op != "call_module":
        return None
    module = gm.get_submodule(target_of(node))
    return module if isinstance(module, kind) else None


def is_module(gm: fx.GraphModule, node: fx.Node, kind: type[nn.Module] | tuple[type[nn.Module], ...]) -> bool:
    """Whether ``node`` calls a submodule of type ``kind``."""
    return node.op == "call_module" and isinstance(gm.get_submodule(target_of(node)), kind)


def free_target(gm: fx.GraphModule, target: str) -> str:
    """``target``, or ``target_1``, ``target_2``… when a submodule or attribute (parameter,
    buffer) already has that dotted path: where a pass may put something new."""
    modules = {name for name, _ in gm.named_modules()}

    def taken(path: str) -> bool:
        parent, _, leaf = path.rpartition(".")
        if path in modules:
            return True
        try:
            return hasattr(gm.get_submodule(parent), leaf)
        except AttributeError:
            return False

    candidate, k = target, 0
    while taken(candidate):
        k += 1
        candidate = f"{target}_{k}"
    return candidate


def undone_copy(gm: fx.GraphModule, undo: Callable[[fx.GraphModule], Any]) -> fx.GraphModule:
    """A copy of ``gm`` sharing its parameters and buffers, with ``undo`` (an inverse pass such
    as ``unpack``) applied to the copy: ``gm`` itself stays as it is."""
    shared: dict[int, Any] = {id(t): t for t in [*gm.parameters(), *gm.buffers()]}
    out = copy.deepcopy(gm, shared)
    undo(out)
    return out


def has_submodule(gm: nn.Module, path: str) -> bool:
    """Whether ``gm`` has a submodule at dotted ``path``."""
    try:
        gm.get_submodule(path)
    except AttributeError:
        return False
    return True


def held_by(gm: fx.GraphModule, name: str) -> tuple[str, ...]:
    """The graph nodes whose output fx node ``name`` holds (``ug.fx_node_names``); none off a
    module made by :func:`unetgraph.lower`."""
    record = find_record(gm)
    return () if record is None else tuple(k for k, v in record.nodes.items() if v == name)


def hold(gm: fx.GraphModule, graph_nodes: tuple[str, ...], name: str) -> None:
    """Graph nodes ``graph_nodes`` are held by fx node ``name`` from now on (``ug.fx_node_names``)."""
    record = find_record(gm)
    if record is not None and graph_nodes:
        attach_record(gm, record.with_(nodes={**record.nodes, **{k: name for k in graph_nodes}}))
