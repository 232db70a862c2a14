"""``diff(a, b)``: what changed between two graphs, as data and as text.

Nodes and edges are matched by name (node names are stable across edits). Each gets a
status, which is what a drawing of the diff colours by:

* ``"added"``, ``"removed"``;
* ``"changed"``: the block, role or level differs (the fields that differ are listed);
* ``"retyped"``: the block is the same but what reaches it is not (e.g. ``dec0`` after the
  skip into ``merge0`` was removed): it computes something else and its trained weights
  no longer fit;
* ``"same"``.

>>> import unetgraph as ug
>>> a = ug.unet(3, 2, widths=(8, 16))
>>> d = ug.diff(a, a.set("enc0", norm="group", groups=4).remove_skip("enc0"))
>>> {n: s for n, s in d.status.items() if s != "same"}
{'enc0': 'changed', 'merge0': 'removed', 'dec0': 'retyped'}
>>> d.nodes["enc0"].fields
(FieldChange(path='norm', old='batch', new='group'), FieldChange(path='groups', old=32, new=4))
>>> d.params_delta
-576
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Literal

from .blocks.base import block_from_dict
from .errors import SpecError
from .graph import Edge, Node, UNetGraph
from .types import Role
from .util import short_repr

__all__ = ["diff", "GraphDiff", "NodeDiff", "EdgeDiff", "FieldChange", "BlockLabel"]

Status = Literal["added", "removed", "changed", "retyped", "same"]
_MARK = {"added": "+", "removed": "-", "changed": "~", "retyped": "≈", "same": " "}


@dataclass(frozen=True)
class FieldChange:
    """One difference inside a node: ``path`` is a block field (``"norm"``, ``"blocks[1].heads"``),
    ``"block"`` when the block's type changed, or ``"role"``/``"level"``."""

    path: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.path}: {_show(self.old)} → {_show(self.new)}"


class BlockLabel(str):
    """A block named by its type and label in a :class:`FieldChange` (the block's type changed)."""

    def __repr__(self) -> str:
        return str(self)


def _show(value: Any) -> str:
    return str(value) if isinstance(value, BlockLabel) else repr(value)


@dataclass(frozen=True)
class NodeDiff:
    """A node of either graph: its status, both versions, what changed and the parameter change."""

    name: str
    status: Status
    old: Node | None
    new: Node | None
    fields: tuple[FieldChange, ...] = ()

    @property
    def params_delta(self) -> int:
        return (self.new.params if self.new else 0) - (self.old.params if self.old else 0)

    def describe(self) -> str:
        """What happened to the node, in a few words."""
        if self.old is None or self.new is None:
            n = self.new or self.old
            return f"{n.role.value}, level {n.level}: {n.block.label()} → {n.type}" if n else ""
        if self.status == "retyped":
            ins = f"input {_types(self.old.inputs)} → {_types(self.new.inputs)}"
            out = f", output {self.old.type} → {self.new.type}" if self.old.type != self.new.type else ""
            return ins + out
        return "; ".join(map(str, self.fields))


@dataclass(frozen=True)
class EdgeDiff:
    """An edge of either graph (matched by ``src→dst``); ``changed`` is a new kind or port,
    ``retyped`` the same edge carrying another type."""

    src: str
    dst: str
    status: Status
    old: Edge | None
    new: Edge | None

    @property
    def name(self) -> str:
        return f"{self.src}→{self.dst}"

    def describe(self) -> str:
        if self.old is None or self.new is None:
            e = self.new or self.old
            return f"{e.kind.value}, {e.type}" if e else ""
        parts = [
            f"{what} {a} → {b}"
            for what, a, b in (
                ("kind", self.old.kind.value, self.new.kind.value),
                ("port", self.old.port, self.new.port),
                ("out", self.old.out, self.new.out),
                ("type", self.old.type, self.new.type),
            )
            if a != b
        ]
        return ", ".join(parts) or f"{self.new.kind.value}, {self.new.type}"


class GraphDiff:
    """The result of :func:`diff`.

    Attributes:
        a, b: the two graphs.
        nodes: :class:`NodeDiff` by node name, for every node of either graph, in a merged
            order (``b``'s order, removed nodes placed after their predecessor in ``a``).
        edges: :class:`EdgeDiff` by ``(src, dst)``, every edge of either graph.
        outputs: ``(a.outputs, b.outputs)``.

    ``status`` and ``edge_status`` map names to statuses (what a drawing needs);
    ``print(d)`` gives the readable text; ``bool(d)`` says whether anything differs.
    """

    def __init__(self, a: UNetGraph, b: UNetGraph) -> None:
        for arg, value in (("a", a), ("b", b)):
            if not isinstance(value, UNetGraph):
                raise SpecError(f"diff: {arg} must be a UNetGraph, got {type(value).__name__} {short_repr(value)}")
        self.a, self.b = a, b
        self.nodes: dict[str, NodeDiff] = {n: _node_diff(a, b, n) for n in _merged_order(a, b)}
        ea = {(e.src, e.dst): e for e in a.edges()}
        eb = {(e.src, e.dst): e for e in b.edges()}
        keys = list(eb) + [k for k in ea if k not in eb]
        self.edges: dict[tuple[str, str], EdgeDiff] = {k: _edge_diff(ea.get(k), eb.get(k), k) for k in keys}
        self.outputs = (a.outputs, b.outputs)

    @property
    def status(self) -> dict[str, Status]:
        """Node name → status, for every node of either graph."""
        return {n: d.status for n, d in self.nodes.items()}

    @property
    def edge_status(self) -> dict[tuple[str, str], Status]:
        """``(src, dst)`` → status, for every edge of either graph."""
        return {k: d.status for k, d in self.edges.items()}

    def _by(self, status: Status) -> list[str]:
        return [n for n, d in self.nodes.items() if d.status == status]

    @property
    def added(self) -> list[str]:
        return self._by("added")

    @property
    def removed(self) -> list[str]:
        return self._by("removed")

    @property
    def changed(self) -> list[str]:
        return self._by("changed")

    @property
    def retyped(self) -> list[str]:
        return self._by("retyped")

    @property
    def params_delta(self) -> int:
        """``b.params - a.params``."""
        return self.b.params - self.a.params

    def __bool__(self) -> bool:
        return (
            any(d.status != "same" for d in self.nodes.values())
            or any(d.status != "same" for d in self.edges.values())
            or self.outputs[0] != self.outputs[1]
            or self.a.name != self.b.name
        )

    def first_difference(self) -> tuple[str | None, str] | None:
        """The first difference other than the graphs' names, as ``(node, words)`` (``node`` is
        ``None`` for an edge or the outputs), or ``None``: what a check that a graph still has
        another library's layout names (``ug.interop.to_diffusers``, ``to_smp``)."""
        node = next((d for d in self.nodes.values() if d.status != "same"), None)
        if node is not None:
            return node.name, f"{node.name}: {node.status} ({node.describe()})"
        edge = next((d for d in self.edges.values() if d.status != "same"), None)
        if edge is not None:
            return None, f"edge {edge.name}: {edge.describe()}"
        if self.outputs[0] != self.outputs[1]:
            return None, f"outputs {', '.join(self.outputs[0])} → {', '.join(self.outputs[1])}"
        return None

    def summary(self) -> str:
        counts = [
            f"{len(v)} {k}"
            for k, v in (
                ("added", self.added),
                ("removed", self.removed),
                ("changed", self.changed),
                ("retyped", self.retyped),
            )
            if v
        ]
        return (
            f"{self.a.name} → {self.b.name}: {', '.join(counts) or 'no node changes'}; "
            f"params {self.a.params:,} → {self.b.params:,} ({self.params_delta:+,})"
        )

    def _rows(self) -> list[tuple[str, str, str, str]]:
        rows = [
            (_MARK[d.status], n, d.describe(), _delta(d.params_delta))
            for n, d in self.nodes.items()
            if d.status != "same"
        ]
        rows += [
            (_MARK[d.status], f"edge {d.name}", d.describe(), "")
            for d in self.edges.values()
            if d.status not in ("same", "retyped")
        ]
        if self.outputs[0] != self.outputs[1]:
            rows.append(("~", "outputs", f"{', '.join(self.outputs[0])} → {', '.join(self.outputs[1])}", ""))
        if self.a.name != self.b.name:
            rows.append(("~", "name", f"{self.a.name} → {self.b.name}", ""))
        return rows

    def __str__(self) -> str:
        rows = self._rows()
        if not rows:
            return f"{self.a.name} → {self.b.name}: no differences"
        w = max(len(r[1]) for r in rows)
        lines = [self.summary()]
        lines += [f"{m} {name.ljust(w)}  {what}{f'  ({p} params)' if p else ''}" for m, name, what, p in rows]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<GraphDiff {self.summary()}>"

    def scene(self, detail: str = "blocks", **options: Any) -> Any:
        """Both graphs in one drawing, changes marked: see :func:`unetgraph.render.diff_scene`."""
        from .render import diff_scene

        return diff_scene(self, detail, **options)

    def render(self, detail: str = "blocks", *, direction: str = "TB", legend: bool = True, **options: Any) -> Any:
        """A ``graphviz.Digraph`` of both graphs, added/removed/changed parts marked
        (``options``: ``input_shape``, ``annotate``, ``heat``)."""
        from .render import render

        return render(self.scene(detail, **options), direction=direction, legend=legend)

    def to_dot(self, detail: str = "blocks", *, direction: str = "TB", legend: bool = True, **options: Any) -> str:
        """The DOT text of :meth:`render` (needs neither graphviz package nor ``dot``)."""
        from .render import to_dot

        return to_dot(self.scene(detail, **options), direction=direction, legend=legend)

    def save_figure(self, path: Any, detail: str = "blocks", **options: Any) -> Any:
        """Write the drawing of :meth:`render` to ``path`` (``.svg``, ``.png``, ``.pdf``, ``.dot``), atomically."""
        from .render import save_figure

        scene_options = {k: options.pop(k) for k in ("input_shape", "annotate", "heat") if k in options}
        return save_figure(self.scene(detail, **scene_options), path, **options)

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><td>{m}</td><td>{html.escape(n)}</td><td>{html.escape(w)}</td><td>{p}</td></tr>"
            for m, n, w, p in self._rows()
        )
        return (
            f"<p><b>{html.escape(self.summary())}</b></p><table><thead><tr><th></th><th>what</th>"
            f"<th>change</th><th>params</th></tr></thead><tbody>{body}</tbody></table>"
        )


def diff(a: UNetGraph, b: UNetGraph) -> GraphDiff:
    """What changed from ``a`` to ``b``: nodes, edges, block fields, outputs, parameters.

    Returns:
        A :class:`GraphDiff`; ``print`` it for the text form.

    Raises:
        SpecError: ``a`` or ``b`` is not a :class:`~unetgraph.UNetGraph`.
    """
    return GraphDiff(a, b)


def _types(types: tuple[Any, ...]) -> str:
    return " + ".join(map(str, types)) or "nothing"


def _delta(n: int) -> str:
    return f"{n:+,}" if n else ""


def _merged_order(a: UNetGraph, b: UNetGraph) -> list[str]:
    order = list(b)
    for i, n in enumerate(a):
        if n not in b:
            before = next((p for p in reversed(list(a)[:i]) if p in order), None)
            order.insert(order.index(before) + 1 if before else 0, n)
    return order


def _node_diff(a: UNetGraph, b: UNetGraph, name: str) -> NodeDiff:
    old = a[name] if name in a else None
    new = b[name] if name in b else None
    if old is None or new is None:
        return NodeDiff(name, "added" if old is None else "removed", old, new)
    fields = [
        FieldChange(k, _plain(getattr(old, k)), _plain(getattr(new, k)))
        for k in ("role", "level")
        if getattr(old, k) != getattr(new, k)
    ]
    fields += _spec_changes(old.block, new.block)
    if fields:
        return NodeDiff(name, "changed", old, new, tuple(fields))
    if old.inputs != new.inputs or old.outputs != new.outputs:
        return NodeDiff(name, "retyped", old, new)
    return NodeDiff(name, "same", old, new)


def _spec_changes(old: Any, new: Any) -> list[FieldChange]:
    """Field changes between two specs; a spec that is not data (a backbone holding a module
    instance) is compared whole."""
    try:
        return _block_changes(old.to_dict(), new.to_dict(), "")
    except SpecError:
        return [] if old == new else [FieldChange("block", BlockLabel(old.label()), BlockLabel(new.label()))]


def _block_changes(old: Any, new: Any, path: str) -> list[FieldChange]:
    """Differences between two ``to_dict()`` values, as dotted paths; a new type is one change."""
    if isinstance(old, dict) and isinstance(new, dict) and old.get("type") == new.get("type"):
        out = []
        for k in dict.fromkeys([*old, *new]):
            out += _block_changes(old.get(k), new.get(k), f"{path}.{k}" if path else k)
        return out
    if (
        isinstance(old, list)
        and isinstance(new, list)
        and len(old) == len(new)
        and all(isinstance(v, dict) for v in old + new)
    ):
        return [c for i, (x, y) in enumerate(zip(old, new)) for c in _block_changes(x, y, f"{path}[{i}]")]
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict) and "type" in old:
        return [FieldChange(path or "block", _label(old), _label(new))]
    return [FieldChange(path, _plain(old), _plain(new))]


def _label(data: dict[str, Any]) -> BlockLabel:
    return BlockLabel(f"{data['type']} ({block_from_dict(data).label()})")


def _plain(value: Any) -> Any:
    if isinstance(value, Role):
        return value.value
    return tuple(_plain(v) for v in value) if isinstance(value, list) else value


def _edge_diff(old: Edge | None, new: Edge | None, key: tuple[str, str]) -> EdgeDiff:
    if old is None or new is None:
        return EdgeDiff(*key, "added" if old is None else "removed", old, new)
    if (old.kind, old.port, old.out) != (new.kind, new.port, new.out):
        return EdgeDiff(*key, "changed", old, new)
    return EdgeDiff(*key, "retyped" if old.type != new.type else "same", old, new)
