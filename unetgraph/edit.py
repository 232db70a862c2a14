"""Edits: each takes a :class:`~unetgraph.graph.UNetGraph` and returns a new one.

A graph is immutable, so an edit works on a private copy of the graph's records
(:meth:`~unetgraph.graph.UNetGraph.node_records`, ``edge_records``, ``outputs``) and ends by
building a new graph through the constructor, which lints the structure and infers every
type again; then the edited graph must still accept some input size. An edit that breaks
any of this raises the typed error of what broke (:class:`~unetgraph.errors.GraphError`,
:class:`~unetgraph.errors.ShapeError`, :class:`~unetgraph.errors.SpecError`) prefixed with
the edit, and nothing changes: edits are never half-applied. Node names are kept, so the
lowered modules' ``state_dict`` keys stay the same for every node an edit did not touch.

The methods of the same names on ``UNetGraph`` call these (``g.replace(...)``), so edits chain:

>>> import unetgraph as ug
>>> g = ug.unet(3, 2, widths=(8, 16, 32))
>>> g2 = g.set_skip("enc1", "merge1", merge="add").remove_skip("enc0").insert_after("enc1", ug.ConvBlock(convs=1))
>>> [e.name for e in g2.skips], g2["merge1"].type.channels
(['enc1_convblock→merge1'], 16)
>>> g.set("enc0", channels=12)["merge0"].type.channels    # widths flow to every consumer
20
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator, Sequence

from .blocks.base import BlockSpec
from .blocks.merge import Merge
from .check import valid_sizes
from .errors import GraphError, NodeNotFoundError, ShapeError, SpecError, UNetGraphError
from .graph import Edge, In, Node, UNetGraph, as_inputs, check_node_name, edge_kind, port_levels
from .types import EdgeKind, Role
from .util import short_repr

__all__ = [
    "replace",
    "set_fields",
    "map_blocks",
    "insert_after",
    "insert_before",
    "remove",
    "add",
    "add_edge",
    "remove_edge",
    "add_skip",
    "remove_skip",
    "set_skip",
    "tap",
    "untap",
    "copy",
    "replace_backbone",
]

# (src, dst, kind, port), or (src, dst, kind, port, out) from output out > 0 of a node with several
EdgeRec = tuple[Any, ...]


def _rec(src: str, dst: str, kind: EdgeKind, port: int, out: int = 0) -> EdgeRec:
    """An edge record, with its ``out`` only when it is not 0 (as ``UNetGraph.edge_records`` gives them)."""
    return (src, dst, kind, port, out) if out else (src, dst, kind, port)


def _at_port(e: EdgeRec, port: int) -> EdgeRec:
    """The edge record ``e`` moved to input ``port``."""
    return (*e[:3], port, *e[4:])


def _out(e: EdgeRec) -> int:
    """Which output of its source an edge record takes."""
    return e[4] if len(e) > 4 else 0


def _several(g: UNetGraph, node: str) -> None:
    """Refuse an edit that would take "the" output of a node with several (a backbone)."""
    n = g[node]
    if len(n.outputs) > 1:
        raise GraphError(
            f"{node} ({n.block.label()}) has {len(n.outputs)} outputs; edit the nodes that use them", node=node
        )


class _Draft:
    """A private, mutable copy of a graph's records for one edit; never seen outside this module."""

    def __init__(self, g: UNetGraph) -> None:
        self.g = g
        self.nodes: list[list[Any]] = [list(r) for r in g.node_records()]  # [name, block, role, level]
        self.edges: list[EdgeRec] = g.edge_records()
        self.outputs: list[str] = list(g.outputs)
        self.name = g.name

    def has(self, name: str) -> bool:
        return any(r[0] == name for r in self.nodes)

    def record(self, name: str) -> list[Any]:
        for r in self.nodes:
            if r[0] == name:
                return r
        raise NodeNotFoundError(f"no node {name!r}", node=name)

    def index(self, name: str) -> int:
        return self.nodes.index(self.record(name))

    def ins(self, dst: str) -> list[EdgeRec]:
        """Edges into ``dst``, in port order."""
        return sorted((e for e in self.edges if e[1] == dst), key=lambda e: e[3])

    def outs(self, src: str) -> list[EdgeRec]:
        return [e for e in self.edges if e[0] == src]

    def new_node(self, name: str, block: BlockSpec, role: Role | str, level: int | None, at: int) -> None:
        check_node_name(name)
        if self.has(name):
            raise GraphError(f"a node named {name!r} exists already; pick another name", node=name)
        self.nodes.insert(at, [name, block, role, level])

    def connect(self, src: str, dst: str, kind: EdgeKind | str, port: int, out: int = 0) -> None:
        """Add ``src→dst`` at ``port``, moving the inputs at ``port`` and after one port on."""
        if any(e[0] == src and e[1] == dst for e in self.edges):
            raise GraphError(f"{src} feeds {dst} already (an edge {src}→{dst} exists)", edge=f"{src}→{dst}")
        path = self.path(dst, src)
        if path:
            raise GraphError(f"edge {src}→{dst} would close a cycle: {' → '.join(path)} → {dst}", edge=f"{src}→{dst}")
        self.edges = [_at_port(e, e[3] + 1) if e[1] == dst and e[3] >= port else e for e in self.edges]
        self.edges.append(_rec(src, dst, edge_kind(kind), port, out))

    def path(self, start: str, end: str) -> list[str]:
        """A path of edges from ``start`` to ``end`` (its nodes), or ``[]`` when there is none."""
        outs: dict[str, list[str]] = {}
        for s, d, *_ in self.edges:
            outs.setdefault(s, []).append(d)
        came: dict[str, str | None] = {start: None}
        todo = [start]
        while todo:
            n = todo.pop()
            if n == end:
                path = [n]
                while came[path[-1]] is not None:
                    path.append(came[path[-1]])  # type: ignore[arg-type]
                return path[::-1]
            for m in outs.get(n, ()):
                if m not in came:
                    came[m] = n
                    todo.append(m)
        return []

    def disconnect(self, src: str, dst: str) -> EdgeRec:
        """Remove ``src→dst``; the inputs after it move one port down. Returns the removed edge."""
        edge = self.edge(src, dst)
        if edge is None:
            raise GraphError(f"there is no edge {src}→{dst}", edge=f"{src}→{dst}")
        self.edges.remove(edge)
        self.edges = [_at_port(e, e[3] - 1) if e[1] == dst and e[3] > edge[3] else e for e in self.edges]
        return edge

    def edge(self, src: str, dst: str) -> EdgeRec | None:
        """The record of ``src→dst``, if there is one."""
        return next((e for e in self.edges if e[0] == src and e[1] == dst), None)

    def bypass(self, name: str, keep: str) -> None:
        """Drop ``name``; its consumers (and the outputs) take ``keep``'s output instead."""
        kept = self.edge(keep, name)
        out = _out(kept) if kept is not None else 0
        for e in self.outs(name):
            _, d, k, p = e[:4]
            if any(f[0] == keep and f[1] == d for f in self.edges):
                raise GraphError(
                    f"bypassing {name} would feed {d} from {keep} twice (it is fed by {keep} already)",
                    edge=f"{keep}→{d}",
                )
            self.edges.remove(e)
            self.edges.append(_rec(keep, d, k, p, out))
        self.outputs = list(dict.fromkeys(keep if o == name else o for o in self.outputs))
        self.drop(name)

    def drop(self, name: str) -> None:
        """Remove ``name``, its edges and its place among the outputs."""
        self.nodes.remove(self.record(name))
        for s, d, *_ in [e for e in self.edges if name in (e[0], e[1])]:
            self.disconnect(s, d)
        self.outputs = [o for o in self.outputs if o != name]

    def build(self) -> UNetGraph:
        new = UNetGraph([tuple(r) for r in self.nodes], self.edges, self.outputs, name=self.name)
        _still_fits(self.g, new)
        return new


def _still_fits(old: UNetGraph, new: UNetGraph) -> None:
    """Refuse a graph that accepts no input size, unless the original accepted none either."""
    if sum(1 for n in new.inputs if new[n].type.dims > 0) != 1:
        return  # valid sizes are defined for one spatial input
    try:
        valid_sizes(new, exact=False)
    except ShapeError as e:
        try:
            valid_sizes(old, exact=False)
        except ShapeError:
            return
        raise ShapeError(f"the edited graph accepts no input size: {e.message}") from None


def _prefixed(what: str, e: UNetGraphError) -> UNetGraphError:
    return type(e)(f"{what}: {e.message}", node=e.node, edge=e.edge)


@contextlib.contextmanager
def _refusing(what: str) -> Iterator[None]:
    """Typed errors raised inside get the edit's name in front (``add_skip enc0→dec0: ...``)."""
    try:
        yield
    except UNetGraphError as e:
        raise _prefixed(what, e) from e


def _edit(what: str, g: UNetGraph, change: Callable[[_Draft], None]) -> UNetGraph:
    """Apply ``change`` to a draft of ``g`` and build the result; errors name the edit."""
    draft = _Draft(g)
    try:
        change(draft)
        return draft.build()
    except UNetGraphError as e:
        raise _prefixed(what, e) from e


def _say(value: object) -> str:
    """An argument as the edit's description shows it: a string as is, anything else in short."""
    return value if isinstance(value, str) and len(value) <= 80 else short_repr(value)


def _graph(g: object) -> UNetGraph:
    if not isinstance(g, UNetGraph):
        raise SpecError(f"expected a UNetGraph to edit, got {type(g).__name__}")
    return g


def _nonc(draft: _Draft, dst: str) -> list[EdgeRec]:
    """The data and skip inputs of ``dst`` (not conditioning), in port order."""
    return [e for e in draft.ins(dst) if e[2] is not EdgeKind.COND]


def _only(ins: list[Edge], choices: list[Edge], node: str, ask: str) -> str:
    """The source of the one edge in ``choices``; else a :class:`GraphError` listing ``ins`` and
    saying which keyword picks one (``src=``, ``keep=``)."""
    if len(choices) != 1:
        listed = ", ".join(e.describe() for e in ins) or "none"
        raise GraphError(f"{node} has {len(ins)} inputs ({listed}); {ask}", node=node)
    return choices[0].src


def _block(block: object, what: str = "block") -> BlockSpec:
    if not isinstance(block, BlockSpec):
        raise SpecError(f"{what}: expected a block spec (e.g. ug.ConvBlock()), got {short_repr(block)}")
    return block


# -- node edits ---------------------------------------------------------------------------


def replace(
    g: UNetGraph, node: str, block: BlockSpec, *, role: Role | str | None = None, level: int | None = None
) -> UNetGraph:
    """``g`` with ``node``'s block replaced by ``block`` (and its role or level, if given).

    The node keeps its name and edges; its consumers are re-typed from the new output.

    Raises:
        NodeNotFoundError: no such node.
        SpecError: ``block`` is not a block spec, or ``role``/``level`` are invalid (as the graph
            checks them for every node).
        ShapeError, SpecError: the new block does not accept what reaches it, or its output
            does not fit the consumers (e.g. an ``add`` merge now sees unequal channels).
    """
    what = f"replace {_say(node)}"
    with _refusing(what):
        _graph(g)[node]
        _block(block)

    def change(d: _Draft) -> None:
        r = d.record(node)
        r[1:] = [block, r[2] if role is None else role, r[3] if level is None else level]

    return _edit(what, g, change)


def set_fields(g: UNetGraph, node: str, **fields: Any) -> UNetGraph:
    """``g`` with fields of ``node``'s block changed: ``set_fields(g, "enc2", convs=3, norm="group")``.

    Raises:
        SpecError: the block has no such field or the value is invalid.
        ShapeError: the changed block no longer fits the graph.
    """
    what = f"set {_say(node)}({', '.join(f'{k}={short_repr(v)}' for k, v in fields.items())})"
    with _refusing(what):
        block = _graph(g)[node].block.with_(**fields)
    return _edit(what, g, lambda d: _set_blocks(d, {node: block}))


def map_blocks(
    g: UNetGraph,
    fn: Callable[[BlockSpec], BlockSpec],
    *,
    role: Role | str | Iterable[Role | str] | None = None,
    level: int | Iterable[int] | None = None,
    where: Callable[[Node], bool] | None = None,
    names: Iterable[str] | None = None,
) -> UNetGraph:
    """``g`` with ``fn(block)`` in place of the block of every selected node, in one edit.

    Selection as in :meth:`UNetGraph.nodes` (role, level, predicate on the
    :class:`~unetgraph.graph.Node`), optionally limited to ``names``; no selector selects
    every node. ``fn`` may return the block unchanged to skip a node, e.g.
    ``lambda b: b.with_(norm="group") if isinstance(b, ug.ConvBlock) else b``.

    Raises:
        SpecError: ``fn`` failed (any exception, kept as the cause) or returned something that
            is not a block (naming the node); a selector is invalid.
        ShapeError: a changed block no longer fits the graph.
    """
    with _refusing("map_blocks"):
        _graph(g)
        if not callable(fn):
            raise SpecError(f"fn: expected a function of a block spec, got {short_repr(fn)}")
        if names is not None and (isinstance(names, (str, bytes)) or not isinstance(names, Iterable)):
            raise SpecError(f"names: expected a list of node names, got {short_repr(names)}")
        wanted = None if names is None else {g[n].name for n in names}
        try:
            selected = [n for n in g.nodes(role=role, level=level, where=where) if wanted is None or n.name in wanted]
        except UNetGraphError:
            raise
        except Exception as e:  # the user's predicate failed
            raise SpecError(f"where: the predicate raised {type(e).__name__}: {e}") from e
    new: dict[str, BlockSpec] = {}
    for n in selected:
        with _refusing(f"map_blocks: {n.name} ({n.block.label()})"):
            try:
                out = fn(n.block)
            except UNetGraphError as e:
                raise type(e)(e.message, node=n.name) from e
            except Exception as e:  # the user's function failed: keep it as the cause
                raise SpecError(f"fn raised {type(e).__name__}: {e}", node=n.name) from e
        new[n.name] = _block(out, f"map_blocks: {n.name}")
    changed = [n for n, b in new.items() if b != g[n].block]
    return _edit(f"map_blocks on {', '.join(changed) or 'nothing'}", g, lambda d: _set_blocks(d, new))


def _set_blocks(d: _Draft, blocks: dict[str, BlockSpec]) -> None:
    for name, block in blocks.items():
        d.record(name)[1] = block


def _derived_name(d: _Draft, anchor: str, block: BlockSpec) -> str:
    """``<anchor>_<block type>`` (``enc3_convblock``), numbered when taken."""
    base = f"{anchor}_{''.join(c if c.isalnum() else '_' for c in block.type_name).lower()}"
    name, i = base, 2
    while d.has(name):
        name, i = f"{base}{i}", i + 1
    return name


_AFTER_ROLE = {Role.INPUT: Role.STEM, Role.MERGE: Role.DECODER}


def insert_after(
    g: UNetGraph,
    anchor: str,
    block: BlockSpec,
    *,
    name: str | None = None,
    role: Role | str | None = None,
    level: int | None = None,
) -> UNetGraph:
    """``g`` with a new node right after ``anchor``: it takes ``anchor``'s output and feeds
    everything ``anchor`` fed (skips included; an output moves to the new node).

    Args:
        anchor: the node to insert after.
        block: the new node's block.
        name: the new node's name (default ``"<anchor>_<block type>"``, e.g. ``enc3_convblock``).
        role: default: the anchor's (``stem`` after an input, ``decoder`` after a merge).
        level: default: the anchor's.

    Raises:
        GraphError: the name is taken or invalid.
        ShapeError, SpecError: the block does not take the anchor's output, or its output
            does not fit the consumers.
    """
    what = f"insert_after {_say(anchor)}"
    with _refusing(what):
        a = _graph(g)[anchor]
        _block(block)
        _several(g, anchor)

    def change(d: _Draft) -> None:
        new = _derived_name(d, anchor, block) if name is None else name
        d.new_node(
            new,
            block,
            _AFTER_ROLE.get(a.role, a.role) if role is None else role,
            a.level if level is None else level,
            d.index(anchor) + 1,
        )
        for s, t, k, p in d.outs(anchor):
            d.edges.remove((s, t, k, p))
            d.edges.append((new, t, k, p))
        d.outputs = [new if o == anchor else o for o in d.outputs]
        d.connect(anchor, new, EdgeKind.DATA, 0)

    return _edit(what, g, change)


def insert_before(
    g: UNetGraph,
    anchor: str,
    block: BlockSpec,
    *,
    src: str | None = None,
    name: str | None = None,
    role: Role | str | None = None,
    level: int | None = None,
) -> UNetGraph:
    """``g`` with a new node on the edge ``src → anchor``: ``src`` feeds the new node, which
    feeds ``anchor`` at the same port and with the same kind (a skip stays a skip).

    Args:
        anchor: the node to insert before.
        block: the new node's block.
        src: which input of ``anchor``; needed when it has several (a merge: ``src="enc2"``
            puts the block on the skip, e.g. a 1×1 conv to match channels for ``add``).
        name: default ``"<anchor>_<block type>"``.
        role, level: default: ``src``'s role and level when ``anchor`` is a merge, else the anchor's.

    Raises:
        GraphError: ``src`` is not an input of ``anchor`` or must be given; the name is taken.
        ShapeError, SpecError: the new block does not fit.
    """
    what = f"insert_before {_say(anchor)}"
    with _refusing(what):
        a = _graph(g)[anchor]
        _block(block)
        ins = [e for e in g.in_edges(anchor) if e.kind is not EdgeKind.COND]
        if src is None:
            src = _only(ins, ins, anchor, "say which with src=")
        edge = next((e for e in ins if e.src == src), None)
        if edge is None:
            raise GraphError(
                f"{short_repr(src)} is not an input of {anchor}; its inputs: {', '.join(e.src for e in ins) or 'none'}",
                node=anchor,
            )
        where = g[edge.src] if a.role is Role.MERGE else a
        # on a skip from a node with several outputs, the new node sits at the level of the output it takes
        where_level = where.levels[edge.out] if a.role is Role.MERGE else where.level

    def change(d: _Draft) -> None:
        new = _derived_name(d, anchor, block) if name is None else name
        d.new_node(
            new, block, where.role if role is None else role, where_level if level is None else level, d.index(anchor)
        )
        d.edges.remove(_rec(edge.src, anchor, edge.kind, edge.port, edge.out))
        d.edges.append((new, anchor, edge.kind, edge.port))
        d.connect(edge.src, new, EdgeKind.DATA, 0, edge.out)

    return _edit(what, g, change)


def remove(g: UNetGraph, node: str, *, keep: str | None = None) -> UNetGraph:
    """``g`` without ``node``: its consumers take the output of its input ``keep`` instead.

    ``keep`` defaults to the node's only input, or, for a merge, its only ``data`` input (the
    main path): ``remove(g, "merge2")`` drops the skip into ``merge2`` along with it. The
    node's other inputs are dropped. A removed output is replaced by ``keep``.

    Raises:
        GraphError: the node is an input, ``keep`` is not among its inputs or must be given,
            or a node would be left feeding nothing (the only path to an output removed).
        ShapeError: the bypass does not type (e.g. removing a ``Down`` leaves the scales of a
            merge unequal).
    """
    what = f"remove {_say(node)}"
    with _refusing(what):
        n = _graph(g)[node]
        if n.role is Role.INPUT:
            raise GraphError(f"{node} is a graph input; inputs cannot be removed", node=node)
        _several(g, node)
        ins = [e for e in g.in_edges(node) if e.kind is not EdgeKind.COND]
        if keep is None:
            data = [e for e in ins if e.kind is EdgeKind.DATA]
            keep = _only(ins, ins if len(ins) == 1 else data, node, "say which one takes its place with keep=")
        elif keep not in [e.src for e in ins]:
            raise GraphError(
                f"keep={short_repr(keep)} is not an input of {node} ({', '.join(e.src for e in ins)})", node=node
            )
    kept: str = keep

    return _edit(what, g, lambda d: d.bypass(node, kept))


def add(
    g: UNetGraph,
    name: str,
    block: BlockSpec,
    inputs: Sequence[str | In],
    *,
    role: Role | str = Role.HEAD,
    level: int | None = None,
) -> UNetGraph:
    """``g`` with a new node ``name`` fed by ``inputs`` (port order), returned as an extra output.

    A new branch feeds nothing yet, so it becomes an output: a deep-supervision head
    (``add(g, "aux1", ug.Head(channels=2), ["dec1"])``) or a feature projection.

    Args:
        inputs: node names (data edges) or :class:`~unetgraph.graph.In` for skip/cond edges;
            empty only for a block that takes none (a new graph input, ``role="input"``).
        role: default ``head``.
        level: default: the first input's level.

    Raises:
        GraphError: the name is taken, an input is unknown, the arity is wrong.
        ShapeError, SpecError: the block does not accept its inputs.
    """
    what = f"add {_say(name)}"
    with _refusing(what):
        _graph(g)
        _block(block)
        items = as_inputs(inputs)
        if not items and block.max_inputs != 0:
            raise GraphError(f"{block.type_name} needs inputs; give them as a list of node names")
        for item in items:
            g[item.src]
        lvl = level if level is not None or not items else g[items[0].src].level

    def change(d: _Draft) -> None:
        d.new_node(name, block, role, lvl, max(d.index(i.src) for i in items) + 1 if items else len(d.nodes))
        for port, item in enumerate(items):
            d.connect(item.src, name, item.kind, port, item.out)
        d.outputs.append(name)

    return _edit(what, g, change)


# -- edges and skips ----------------------------------------------------------------------


def add_edge(
    g: UNetGraph,
    src: str,
    dst: str,
    kind: EdgeKind | str = EdgeKind.DATA,
    port: int | None = None,
    *,
    out: int = 0,
) -> UNetGraph:
    """``g`` with an edge ``src → dst`` of ``kind`` at input ``port``; later ports move one on.

    The default port: a skip goes just before the main (last) input, as in ``ug.unet``'s
    merges; a data edge after the other inputs; a cond edge last. ``out`` picks an output of a
    ``src`` with several (a backbone's feature map).

    Raises:
        GraphError: the edge exists, would close a cycle, ``dst`` does not take another input,
            or the kind or port is invalid.
        ShapeError: ``dst`` does not accept the extra input's type.
    """
    what = f"add_edge {_say(src)}→{_say(dst)}"
    with _refusing(what):
        _graph(g)[src], g[dst]
        new_kind = edge_kind(kind)

    def change(d: _Draft) -> None:
        ins, main = d.ins(dst), len(_nonc(d, dst))
        at = {EdgeKind.COND: len(ins), EdgeKind.SKIP: max(main - 1, 0)}.get(new_kind, main)
        if port is not None and not (isinstance(port, int) and not isinstance(port, bool) and 0 <= port <= len(ins)):
            raise GraphError(f"port must be an integer in 0..{len(ins)}, got {short_repr(port)}", edge=f"{src}→{dst}")
        d.connect(src, dst, new_kind, at if port is None else port, out)

    return _edit(what, g, change)


def remove_edge(g: UNetGraph, src: str, dst: str) -> UNetGraph:
    """``g`` without the edge ``src → dst`` (later inputs of ``dst`` move one port down).

    Raises:
        GraphError: no such edge, or removing it leaves ``dst`` short of inputs or ``src``
            feeding nothing (e.g. the only path to the head).
    """
    what = f"remove_edge {_say(src)}→{_say(dst)}"
    with _refusing(what):
        _graph(g)[src], g[dst]
    return _edit(what, g, lambda d: _cut(d, src, dst))


def _cut(d: _Draft, src: str, dst: str) -> None:
    d.disconnect(src, dst)
    if not _nonc(d, dst):
        raise GraphError(
            f"{dst} would have no input left: {src}→{dst} is the only path into it", node=dst, edge=f"{src}→{dst}"
        )
    if not d.outs(src) and src not in d.outputs:
        raise GraphError(
            f"{src} would feed nothing: {src}→{dst} is its only way to an output", node=src, edge=f"{src}→{dst}"
        )


def add_skip(
    g: UNetGraph,
    src: str,
    dst: str,
    *,
    merge: str | BlockSpec | None = None,
    name: str | None = None,
    out: int = 0,
) -> UNetGraph:
    """``g`` with a skip edge ``src → dst`` (from output ``out`` of a ``src`` with several).

    When ``dst`` takes another input (a merge), the skip joins it just before its main (last)
    input; ``merge`` then also changes how it merges (as :func:`set_skip`). When ``dst``
    takes one input (a decoder block), ``merge`` is required: a merge node (``name``, default
    ``"<dst>_merge"``) is inserted in front of ``dst`` joining the skip and ``dst``'s input.

    Raises:
        GraphError: a cycle (``src`` comes after ``dst``), a skip across levels, an edge that
            exists, ``dst`` is a graph input, or ``dst`` takes one input and no ``merge`` is given.
        ShapeError: the merge does not accept the skip (scale or channels).
    """
    what = f"add_skip {_say(src)}→{_say(dst)}"
    with _refusing(what):
        s, t = _graph(g)[src], g[dst]
        if t.role is Role.INPUT:
            raise GraphError(f"{dst} is a graph input: nothing feeds it, a skip cannot end there", node=dst)
        ins = [e for e in g.in_edges(dst) if e.kind is not EdgeKind.COND]
        room = t.block.max_inputs is None or t.block.max_inputs > len(ins)
        if not room and merge is None:
            raise GraphError(
                f"{dst} ({t.block.label()}) takes {len(ins)} input; end the skip at a merge, "
                "or pass merge='concat' (or 'add') to insert one in front of it",
                node=dst,
            )
        if room:
            block = t.block if merge is None else _merged(t.block, merge, None, dst)
        else:
            spec = merge if isinstance(merge, BlockSpec) else _merged(Merge(), merge, None, dst)

    if room:

        def join(d: _Draft) -> None:
            d.record(dst)[1] = block
            d.connect(src, dst, EdgeKind.SKIP, max(len(ins) - 1, 0), out)

        return _edit(what, g, join)
    main = ins[-1]

    def change(d: _Draft) -> None:
        new = f"{dst}_merge" if name is None else name
        d.new_node(new, spec, Role.MERGE, t.level if t.level is not None else s.level, d.index(dst))
        d.edges.remove(_rec(main.src, dst, main.kind, main.port, main.out))
        d.edges.append((new, dst, main.kind, main.port))
        d.connect(src, new, EdgeKind.SKIP, 0, out)
        d.connect(main.src, new, EdgeKind.DATA, 1, main.out)

    return _edit(what, g, change)


def _merged(block: BlockSpec, merge: str | BlockSpec | None, crop: bool | None, dst: str) -> BlockSpec:
    """``block`` merging as asked: ``merge`` is a mode of ``block`` or a whole new block."""
    if isinstance(merge, BlockSpec):
        block, merge = merge, None
    elif merge is not None and not isinstance(merge, str):
        raise SpecError(f"merge: expected a mode ('concat', 'add') or a merge block, got {short_repr(merge)}")
    changes = {k: v for k, v in (("mode", merge), ("crop", crop)) if v is not None}
    try:
        return block.with_(**changes)
    except SpecError as e:
        raise type(e)(f"{dst}: {e.message}", node=dst) from e


def remove_skip(g: UNetGraph, src: str, dst: str | None = None) -> UNetGraph:
    """``g`` without the skip(s) leaving ``src`` (only the one into ``dst`` if given).

    A merge left with a single input has nothing to merge and is removed: its input feeds
    its consumers directly (so ``dec0`` then sees ``up0``'s channels).

    Raises:
        GraphError: no such skip, or ``src`` would feed nothing.
    """
    what = f"remove_skip {_say(src)}→{'*' if dst is None else _say(dst)}"
    with _refusing(what):
        _graph(g)[src]
        if dst is not None:
            g[dst]
        skips = [e for e in g.out_edges(src) if e.kind is EdgeKind.SKIP and (dst is None or e.dst == dst)]
        if not skips:
            have = ", ".join(e.name for e in g.skips) or "none"
            raise GraphError(f"no skip leaves {src}{f' into {dst}' if dst else ''}; skips: {have}", node=src)

    def change(d: _Draft) -> None:
        for e in skips:
            _cut(d, e.src, e.dst)
            left = _nonc(d, e.dst)
            if len(left) == 1 and d.record(e.dst)[1].min_inputs > 1:
                d.bypass(e.dst, left[0][0])

    return _edit(what, g, change)


def set_skip(
    g: UNetGraph,
    src: str,
    dst: str,
    *,
    merge: str | BlockSpec | None = None,
    crop: bool | None = None,
) -> UNetGraph:
    """``g`` with the skip ``src → dst`` merged differently.

    Args:
        merge: a mode of ``dst``'s block (``"concat"``, ``"add"``), or a whole new merge block.
        crop: centre-crop the skips to the main path (``Merge.crop``).

    The change applies to ``dst``, the node where the skip merges (all its inputs).

    Raises:
        GraphError: there is no skip ``src → dst``.
        ShapeError: the new merge does not accept its inputs (``add`` with unequal channels).
    """
    what = f"set_skip {_say(src)}→{_say(dst)}"
    with _refusing(what):
        _graph(g)[src], g[dst]
        if not any(e.src == src and e.kind is EdgeKind.SKIP for e in g.in_edges(dst)):
            have = ", ".join(e.name for e in g.skips) or "none"
            raise GraphError(f"there is no skip {src}→{dst}; skips: {have}", edge=f"{src}→{dst}")
        if merge is None and crop is None:
            raise SpecError("nothing to set; give merge= and/or crop=")
        block = _merged(g[dst].block, merge, crop, dst)
    return _edit(f"{what} ({dst}: {block.label()})", g, lambda d: _set_blocks(d, {dst: block}))


# -- outputs --------------------------------------------------------------------------------


def tap(g: UNetGraph, *nodes: str) -> UNetGraph:
    """``g`` with ``nodes`` returned as extra outputs, after the existing ones.

    The lowered module then returns a dict of tensors by node name
    (``{"head": ..., "enc2": ...}``); ``check`` reports every output's shape. Tapping an
    output again changes nothing.
    """
    what = f"tap {', '.join(map(_say, nodes))}"
    with _refusing(what):
        for n in nodes:
            _several(_graph(g), n)
    return _edit(what, g, lambda d: d.outputs.extend(dict.fromkeys(n for n in nodes if n not in d.outputs)))


def untap(g: UNetGraph, *nodes: str) -> UNetGraph:
    """``g`` without ``nodes`` among its outputs.

    Raises:
        GraphError: a node is not an output, or it would then feed nothing (dangling) or
            no output would be left.
    """
    what = f"untap {', '.join(map(_say, nodes))}"
    with _refusing(what):
        for n in nodes:
            if n not in _graph(g).outputs:
                raise GraphError(f"{short_repr(n)} is not an output; outputs: {', '.join(g.outputs)}", node=_say(n))

    def change(d: _Draft) -> None:
        d.outputs = [o for o in d.outputs if o not in nodes]

    return _edit(what, g, change)


def copy(g: UNetGraph, *, name: str | None = None) -> UNetGraph:
    """An equal graph, optionally with another model name (the lowered class's name)."""
    with _refusing("copy"):
        _graph(g)

    def change(d: _Draft) -> None:
        d.name = g.name if name is None else name

    return _edit("copy", g, change)


# -- backbones --------------------------------------------------------------------------------


def replace_backbone(
    g: UNetGraph,
    block: BlockSpec,
    *,
    node: str = "encoder",
    decoder_channels: Sequence[int] | None = None,
) -> UNetGraph:
    """``g`` with the backbone ``node`` (a node with several outputs) replaced by ``block``, in one edit.

    Each edge from the old backbone moves to the new one's output at the same level, so a skip
    still joins the merge of its level: ``resnet34`` → ``convnext_atto`` keeps the skips at 1/4 …
    1/16 and drops the one at 1/2 (a merge left with one input is removed, as by
    :func:`remove_skip`). The decoder's convolutions take the new channels. With
    ``decoder_channels`` (deep to shallow, one per decoder level, as in ``ug.unet``) every decoder
    block, and every upsampler with a convolution, of each level gets that level's channels.

    Raises:
        GraphError: ``node`` has one output, or a data edge (the path to the decoder) needs an
            output at a level the new backbone lacks.
        ShapeError, SpecError: the new backbone does not take the input, or the channels do not fit.
    """
    what = f"replace_backbone {_say(node)}"
    with _refusing(what):
        old = _graph(g)[node]
        _block(block)
        if len(old.outputs) < 2:
            raise GraphError(f"{node} ({old.block.label()}) has one output; use replace()", node=node)
        try:
            outs = block.infer_outputs(old.inputs)
        except UNetGraphError as e:
            raise type(e)(f"{block.label()}: {e.message}", node=node) from e
        levels = _decoder_levels(g, decoder_channels)
    new_levels = port_levels(old.level, old.inputs, outs)
    at = {lv: k for k, lv in enumerate(new_levels) if lv is not None}

    def change(d: _Draft) -> None:
        d.record(node)[1] = block
        for e in list(d.outs(node)):
            dst, kind = e[1], e[2]
            level = old.levels[_out(e)]
            if level in at:
                d.edges[d.edges.index(e)] = _rec(node, dst, kind, e[3], at[level])
            elif kind is EdgeKind.SKIP:
                _cut(d, node, dst)
                left = _nonc(d, dst)
                if len(left) == 1 and d.record(dst)[1].min_inputs > 1:
                    d.bypass(dst, left[0][0])
            else:
                raise GraphError(
                    f"{dst} takes {node}'s output at level {level}, and {block.label()} has none there "
                    f"(its outputs are at levels {', '.join(map(str, new_levels))})",
                    node=dst,
                )
        for (name, field_owner), width in levels.items():
            d.record(name)[1] = field_owner.with_(channels=width)

    return _edit(what, g, change)


def _decoder_levels(g: UNetGraph, decoder_channels: Sequence[int] | None) -> dict[tuple[str, BlockSpec], int]:
    """``(node, block) → channels`` for the decoder blocks and conv upsamplers of each decoder level."""
    if decoder_channels is None:
        return {}
    levels = sorted({n.level for n in g.nodes(role=Role.DECODER) if n.level is not None}, reverse=True)
    if not isinstance(decoder_channels, (list, tuple)) or not all(
        isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in decoder_channels
    ):
        raise SpecError(f"decoder_channels: expected positive integers, got {short_repr(decoder_channels)}")
    widths = list(decoder_channels)
    if len(widths) != len(levels):
        raise SpecError(
            f"decoder_channels has {len(widths)} entries; the decoder has {len(levels)} levels "
            f"({', '.join(map(str, levels))}, deep to shallow)"
        )
    out = {}
    for level, width in zip(levels, widths):
        for n in g.nodes(role=(Role.DECODER, Role.UP), level=level):
            fields_ = n.block.to_dict()
            if "channels" in fields_ and (n.role is Role.DECODER or fields_.get("conv", True)):
                out[(n.name, n.block)] = width
    return out
