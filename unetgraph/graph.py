"""``UNetGraph``: a typed DAG of blocks joined by data, skip and conditioning edges.

The graph owns a ``networkx.DiGraph`` and never hands it out for mutation. Every graph is
valid by construction: :class:`UNetGraph` lints its structure and infers every edge's
:class:`~unetgraph.types.TensorType` when it is created, so a graph that exists is a graph
whose channels and scales fit. Build one with :func:`unetgraph.unet` or, for any other
topology, with :class:`GraphBuilder`.
"""

from __future__ import annotations

import difflib
import keyword
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import networkx as nx
import torch.fx

from .blocks.base import BlockSpec
from .errors import GraphError, NodeNotFoundError, SpecError, UNetGraphError
from .types import EdgeKind, Role, TensorType
from .util import paused_gc, short_repr

if TYPE_CHECKING:
    from pathlib import Path

    import graphviz

    from .check import CheckReport, SizeRules
    from .cost import CostReport

__all__ = [
    "Node",
    "Edge",
    "Level",
    "In",
    "UNetGraph",
    "GraphBuilder",
    "check_identifier",
    "check_node_name",
    "edge_kind",
    "as_inputs",
    "port_levels",
]


@dataclass(frozen=True)
class Node:
    """A node as seen from outside: its block spec and its inferred types.

    Attributes:
        name: unique identifier; lowering names submodules and fx nodes after it.
        role: what the node does in the U (:class:`~unetgraph.types.Role`).
        level: resolution level (0 = input resolution), ``None`` for nodes outside the U.
        block: the block spec.
        inputs: the types arriving at each input port, in port order.
        type: the output type; for a node with several outputs (a backbone's feature maps), the
            last output's (the deepest feature, where the main path continues).
        outputs: the type of each output port, in port order (``(type,)`` for most blocks).
        levels: the level of each output port: the node's level for one output; for several,
            the node's level plus how many halvings each output is below the node's input
            (``None`` where that is not a power of two).
    """

    name: str
    role: Role
    level: int | None
    block: BlockSpec
    inputs: tuple[TensorType, ...]
    type: TensorType
    outputs: tuple[TensorType, ...] = ()
    levels: tuple[int | None, ...] = ()

    def __post_init__(self) -> None:
        if not self.outputs:
            object.__setattr__(self, "outputs", (self.type,))
        if not self.levels:
            object.__setattr__(self, "levels", (self.level,) * len(self.outputs))

    @property
    def params(self) -> int:
        """Parameter count of this node's block (static, nothing is built for built-in blocks)."""
        return self.block.params(self.inputs, self.type) if self.role is not Role.INPUT else 0

    def describe(self) -> str:
        """``name (label)``, the form errors and tables use."""
        return f"{self.name} ({self.block.label()})"


@dataclass(frozen=True)
class Edge:
    """A typed edge: output ``out`` of ``src`` feeds input ``port`` of ``dst``.

    ``out`` is 0 unless ``src`` has several outputs (a backbone's feature maps); ``type`` is the
    type of that output. Two nodes are joined by at most one edge, so ``src→dst`` names it.
    """

    src: str
    dst: str
    kind: EdgeKind
    port: int
    type: TensorType
    out: int = 0

    @property
    def name(self) -> str:
        return f"{self.src}→{self.dst}"

    @property
    def source(self) -> str:
        """The source output: ``enc1``, or ``encoder[2]`` for output 2 of a node with several."""
        return f"{self.src}[{self.out}]" if self.out else self.src

    def describe(self) -> str:
        """How messages refer to the edge: ``up1`` for data, ``skip enc1→merge1`` otherwise
        (``skip encoder[2]→merge3`` from output 2 of a backbone)."""
        return self.source if self.kind is EdgeKind.DATA else f"{self.kind.value} {self.source}→{self.dst}"


class In(NamedTuple):
    """An input of a node being added: ``In("enc1", EdgeKind.SKIP)``; a bare name means data.
    ``out`` picks an output of a node with several (``In("encoder", EdgeKind.SKIP, out=2)``)."""

    src: str
    kind: EdgeKind = EdgeKind.DATA
    out: int = 0


@dataclass(frozen=True)
class Level:
    """The nodes of one resolution level and the skips that leave it."""

    index: int
    nodes: tuple[Node, ...]
    skips: tuple[Edge, ...]

    def role(self, role: Role | str) -> tuple[Node, ...]:
        role = Role(role)
        return tuple(n for n in self.nodes if n.role is role)

    @property
    def encoder(self) -> tuple[Node, ...]:
        return self.role(Role.ENCODER)

    @property
    def decoder(self) -> tuple[Node, ...]:
        return self.role(Role.DECODER)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)


# Names the lowered module's generated code reads as globals (torch.fx writes these bare, so an
# input of that name would shadow them in ``forward``): fx's own globals and the builtins it calls.
CODE_NAMES = ("self", "torch", "inf", "nan", "NoneType", "device", "fx_pytree", "pytree", "slice", "getattr")

# Names that would collide with attributes of the lowered GraphModule (its class's and those
# every instance sets, such as ``training`` and ``meta``) or with the generated code.
_RESERVED = (
    frozenset(dir(torch.fx.GraphModule)) | frozenset(dir(torch.fx.GraphModule(torch.nn.Module(), torch.fx.Graph())))
) | frozenset(CODE_NAMES)

# The submodules lowering adds beside the nodes' (see unetgraph.lower): per input its guard and,
# with pad="auto", the padding of the first spatial input; per output, with pad="auto", its crop.
LOWERING_SUFFIXES = {"input": ("_guard", "_pad"), "output": ("_crop",)}

# Longest node name: graphviz refuses longer identifiers (16,384 bytes) and a drawing labels nodes
# by name, as do error messages and generated code.
MAX_NAME_LENGTH = 1000


def check_identifier(name: object, what: str) -> str:
    """``name`` if it may name a node or a model, else a :class:`GraphError` saying why.

    The one rule for every name that ends up in generated code (fx nodes, submodules, the
    lowered class, ejected source): a ``str`` that is a Python identifier, not a keyword, and
    in Unicode NFKC normal form. Python reads identifiers NFKC-normalised, so ``ｅnc``
    (a full-width ``ｅ``) and ``enc`` would be one name in generated code but two in the graph;
    such names are refused rather than silently normalised, and the error gives the normal form.

    Args:
        what: how the message calls the name (``"node name"``, ``"graph name"``).
    """
    if not isinstance(name, str):
        raise GraphError(f"{what} must be a string, got {type(name).__name__} {short_repr(name)}")
    if len(name) > MAX_NAME_LENGTH:
        raise GraphError(
            f"{what} {short_repr(name)} has {len(name):,} characters, over the limit of {MAX_NAME_LENGTH:,}",
            node=name if what == "node name" else None,
        )
    if not name.isidentifier() or keyword.iskeyword(name):
        raise GraphError(
            f"{what} {short_repr(name)} is not a Python identifier (letters, digits, _; not a keyword): "
            "it names code the graph is lowered to",
            node=name if what == "node name" else None,
        )
    normal = unicodedata.normalize("NFKC", name)
    if normal != name:
        raise GraphError(
            f"{what} {short_repr(name)} is not in Unicode NFKC normal form: Python reads it as {normal!r}, "
            f"which could clash with another name; use {normal!r}",
            node=name if what == "node name" else None,
        )
    return name


def check_node_name(name: object) -> str:
    """``name`` if it may name a node: :func:`check_identifier`'s rule, and not an attribute of
    the lowered ``GraphModule`` (its class's or an instance's: ``forward``, ``training``,
    ``meta``...) nor a name its generated code reads (:data:`CODE_NAMES`: ``torch``...), nor
    starting with ``_``; else a :class:`GraphError`."""
    name = check_identifier(name, "node name")
    if name in CODE_NAMES:
        raise GraphError(
            f"node name {name!r} is reserved (the lowered module's generated code uses it); pick another", node=name
        )
    if name in _RESERVED or name.startswith("_"):
        raise GraphError(
            f"node name {name!r} is reserved (it would shadow a GraphModule attribute); pick another", node=name
        )
    return name


def _check_lowering_names(g: nx.DiGraph, outputs: Sequence[str]) -> None:
    """Refuse a node named as a submodule lowering adds (:data:`LOWERING_SUFFIXES`): ``x_guard``
    for an input ``x``, ``x_pad``, ``head_crop`` for an output ``head``.

    Raises:
        GraphError: naming the node and the input or output whose submodule it would replace.
    """
    owners = [(n, "input") for n in g if g.nodes[n]["role"] is Role.INPUT] + [(o, "output") for o in outputs]
    for owner, what in owners:
        for suffix in LOWERING_SUFFIXES[what]:
            if owner + suffix in g:
                raise GraphError(
                    f"node name {owner + suffix!r} is reserved: lowering names the {suffix[1:]} of {what} "
                    f"{owner} so; pick another",
                    node=owner + suffix,
                )


def _roles(role: Role | str | Iterable[Role | str] | None) -> frozenset[Role] | None:
    if role is None:
        return None
    roles = [role] if isinstance(role, (str, Role)) else role
    try:
        return frozenset(Role(r) for r in roles)
    except (TypeError, ValueError):
        raise SpecError(f"unknown role in {short_repr(role)}; roles: {', '.join(r.value for r in Role)}") from None


def _levels(level: int | Iterable[int] | None) -> set[int] | None:
    if level is None:
        return None
    values: list[object] = [level] if not isinstance(level, Iterable) or isinstance(level, (str, bytes)) else [*level]
    out: set[int] = set()
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool):
            raise SpecError(f"level: expected an integer or several, got {short_repr(level)}")
        out.add(v)
    return out


def edge_kind(kind: object) -> EdgeKind:
    """``kind`` as an :class:`EdgeKind` (``"data"``, ``"skip"``, ``"cond"`` or the enum); else a
    :class:`GraphError` listing the kinds."""
    try:
        return EdgeKind(kind)
    except (TypeError, ValueError):
        raise GraphError(f"unknown edge kind {short_repr(kind)}; kinds: data, skip, cond") from None


def as_inputs(items: object) -> list[In]:
    """The inputs of a node being added, in port order: each item a node name (a data edge),
    an :class:`In` or a ``(src, kind)`` or ``(src, kind, out)`` tuple. Raises :class:`SpecError` for anything else,
    :class:`GraphError` for an unknown kind."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise SpecError(f"inputs: expected a list of node names or In(src, kind), got {short_repr(items)}")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            out.append(In(item))
        elif isinstance(item, tuple) and len(item) in (1, 2, 3) and isinstance(item[0], str):
            port = item[2] if len(item) == 3 else 0
            if not isinstance(port, int) or isinstance(port, bool) or port < 0:
                raise SpecError(f"inputs[{i}]: out must be a non-negative integer, got {short_repr(port)}")
            out.append(In(item[0], edge_kind(item[1]) if len(item) >= 2 else EdgeKind.DATA, port))
        else:
            raise SpecError(f"inputs[{i}]: expected a node name or In(src, kind, out), got {short_repr(item)}")
    return out


class UNetGraph:
    """An immutable, typed U-Net graph.

    Args:
        nodes: ``(name, block, role, level)`` for every node.
        edges: ``(src, dst, kind, port)`` for every edge, or ``(src, dst, kind, port, out)`` for
            an edge from output ``out`` of a node with several outputs.
        outputs: names of the nodes whose outputs the model returns, in order.
        name: the model's name (the lowered GraphModule's class name).

    Raises:
        GraphError: a structural invariant is broken (see :meth:`lint`).
        ShapeError, SpecError: a block does not accept the types that reach it.

    Example:
        >>> import unetgraph as ug
        >>> g = ug.unet(3, 2, widths=(8, 16))
        >>> [e.name for e in g.skips]
        ['enc0→merge0']
        >>> g["merge0"].type.channels
        16
    """

    @paused_gc()
    def __init__(
        self,
        nodes: Iterable[tuple[str, BlockSpec, Role | str, int | None]],
        edges: Iterable[tuple[str, str, EdgeKind | str, int] | tuple[str, str, EdgeKind | str, int, int]],
        outputs: Sequence[str],
        *,
        name: str = "UNet",
    ) -> None:
        g: nx.DiGraph = nx.DiGraph()
        for node_name, block, role, level in nodes:
            _add_node(g, node_name, block, role, level)
        for record in edges:
            _add_edge(g, *_edge_record(record))
        self._g = g
        self._outputs = tuple(outputs)
        self.name = check_identifier(name, "graph name")
        self._order = _lint(g, self._outputs)
        self._position = {n: i for i, n in enumerate(self._order)}
        for n in self._order:
            _infer(g, n)
        _check_outputs(g, self._outputs)

    # -- queries ---------------------------------------------------------------------
    def __getitem__(self, name: str) -> Node:
        if not isinstance(name, str):
            raise NodeNotFoundError(
                f"node names are strings; got {type(name).__name__} {short_repr(name)} (graph {self.name})"
            )
        if name not in self._g:
            hint = difflib.get_close_matches(name[:100], list(self._g), n=3)
            extra = f"; did you mean {', '.join(hint)}?" if hint else ""
            raise NodeNotFoundError(f"no node {short_repr(name)} in graph {self.name}{extra}", node=name)
        a = self._g.nodes[name]
        return Node(name, a["role"], a["level"], a["block"], a["inputs"], a["type"], a["outputs"], a["levels"])

    def __contains__(self, name: object) -> bool:
        return name in self._g

    def __iter__(self) -> Iterator[str]:
        """Node names in a fixed topological order (insertion order where free)."""
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def nodes(
        self,
        role: Role | str | Iterable[Role | str] | None = None,
        level: int | Iterable[int] | None = None,
        where: Callable[[Node], bool] | None = None,
    ) -> list[Node]:
        """Nodes in topological order, filtered by role(s), level(s) and a predicate.

        Raises:
            SpecError: a role is unknown, a level is not an integer, ``where`` is not callable.
        """
        roles = _roles(role)
        levels = _levels(level)
        if where is not None and not callable(where):
            raise SpecError(f"where: expected a function of a Node, got {short_repr(where)}")
        out = []
        for n in self._order:
            a = self._g.nodes[n]
            if roles is not None and a["role"] not in roles:
                continue
            if levels is not None and a["level"] not in levels:
                continue
            node = self[n]
            if where is None or where(node):
                out.append(node)
        return out

    def edges(
        self, kind: EdgeKind | str | None = None, *, src: str | None = None, dst: str | None = None
    ) -> list[Edge]:
        """Edges ordered by destination (topologically) then port, optionally filtered."""
        kind = None if kind is None else edge_kind(kind)
        out = []
        for n in self._order if dst is None else [self[dst].name]:
            for e in self.in_edges(n):
                if (kind is None or e.kind is kind) and (src is None or e.src == src):
                    out.append(e)
        return out

    def in_edges(self, name: str) -> list[Edge]:
        """Edges into ``name`` in port order."""
        self[name]
        return sorted((self._edge(u, name) for u in self._g.predecessors(name)), key=lambda e: e.port)

    def out_edges(self, name: str) -> list[Edge]:
        """Edges out of ``name`` in the order of their destinations."""
        self[name]
        pos = self._position
        return sorted((self._edge(name, v) for v in self._g.successors(name)), key=lambda e: (pos[e.dst], e.port))

    def _edge(self, u: str, v: str) -> Edge:
        a = self._g.edges[u, v]
        return Edge(u, v, a["kind"], a["port"], self._g.nodes[u]["outputs"][a["out"]], a["out"])

    @property
    def skips(self) -> list[Edge]:
        """The skip edges, e.g. ``enc2→merge2``."""
        return self.edges(EdgeKind.SKIP)

    @property
    def inputs(self) -> tuple[str, ...]:
        """Names of the input nodes, in order (the lowered module's arguments)."""
        return tuple(n for n in self._order if self._g.nodes[n]["role"] is Role.INPUT)

    @property
    def outputs(self) -> tuple[str, ...]:
        """Names of the nodes whose outputs the model returns."""
        return self._outputs

    @property
    def levels(self) -> list[int]:
        """Level indices present, shallow to deep."""
        return sorted({a["level"] for _, a in self._g.nodes(data=True) if a["level"] is not None})

    def level(self, index: int) -> Level:
        """A view of one level: its nodes (topological order) and the skips leaving it."""
        if index not in self.levels:
            raise NodeNotFoundError(f"graph {self.name} has no level {index}; levels: {self.levels}")
        nodes = tuple(self.nodes(level=index))
        skips = tuple(e for e in self.skips if self._g.nodes[e.src]["levels"][e.out] == index)
        return Level(index, nodes, skips)

    @property
    def dims(self) -> int:
        """Spatial dimensions of the main input (1, 2 or 3)."""
        return self[self.inputs[0]].type.dims

    @property
    def params(self) -> int:
        """Total parameter count, from the specs."""
        return sum(self[n].params for n in self._order)

    def lint(self) -> None:
        """Check the invariants: acyclic, identifier names, ports contiguous and within each
        block's arity, skips between nodes of one level into multi-input blocks, every node
        reachable from an input and reaching an output. Raises :class:`GraphError`."""
        _lint(self._g, self._outputs)

    def to_networkx(self) -> nx.DiGraph:
        """A fresh copy as a ``networkx.DiGraph`` (attributes: role, level, block, type; kind, port)."""
        return self._g.copy()

    # -- structure as data ----------------------------------------------------------
    def node_records(self) -> list[tuple[str, BlockSpec, Role, int | None]]:
        """``(name, block, role, level)`` per node, in order: the constructor's ``nodes``."""
        return [(n, a["block"], a["role"], a["level"]) for n in self._order for a in [self._g.nodes[n]]]

    def edge_records(self) -> list[tuple[str, str, EdgeKind, int] | tuple[str, str, EdgeKind, int, int]]:
        """``(src, dst, kind, port)`` per edge, ``(src, dst, kind, port, out)`` for one from output
        ``out > 0`` of a node with several: the constructor's ``edges``."""
        return [
            (e.src, e.dst, e.kind, e.port, e.out) if e.out else (e.src, e.dst, e.kind, e.port) for e in self.edges()
        ]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UNetGraph):
            return NotImplemented
        return (
            self.name == other.name
            and self._outputs == other._outputs
            and self.node_records() == other.node_records()
            and sorted(self.edge_records()) == sorted(other.edge_records())
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        x = self[self.inputs[0]].type
        outs = ", ".join(str(self[o].type.channels) for o in self._outputs)
        return (
            f"UNetGraph({self.name!r}: {len(self)} nodes, {len(self.skips)} skips, "
            f"levels {self.levels[0]}–{self.levels[-1]}, {x.dims}D, {x.channels}→{outs} channels, "
            f"{self.params:,} params)"
        )

    # -- downstream conveniences (the logic lives in check.py and lower.py) --------
    def check(self, input_shape: Sequence[int] | dict[str, Sequence[int]], *, pad: str | None = None) -> CheckReport:
        """Static shapes of every node for ``input_shape`` (at the padded size with ``pad="auto"``):
        see :func:`unetgraph.check.check`."""
        from .check import check

        return check(self, input_shape, pad=pad)

    def valid_sizes(self, *, exact: bool = True) -> SizeRules:
        """Which input sizes the graph accepts: see :func:`unetgraph.check.valid_sizes`."""
        from .check import valid_sizes

        return valid_sizes(self, exact=exact)

    def lower(self, **options: Any) -> torch.fx.GraphModule:
        """A ``torch.fx.GraphModule`` of this graph: see :func:`unetgraph.lower.lower`."""
        from .lower import lower

        return lower(self, **options)

    # -- edits: each returns a new graph, this one stays as it is (logic in edit.py) ----
    def replace(self, node: str, block: BlockSpec, **where: Any) -> UNetGraph:
        """A copy with ``node``'s block replaced: see :func:`unetgraph.edit.replace`."""
        from .edit import replace

        return replace(self, node, block, **where)

    def set(self, node: str, /, **fields: Any) -> UNetGraph:
        """A copy with fields of ``node``'s block changed: see :func:`unetgraph.edit.set_fields`."""
        from .edit import set_fields

        return set_fields(self, node, **fields)

    def map_blocks(self, fn: Callable[[BlockSpec], BlockSpec], **select: Any) -> UNetGraph:
        """A copy with ``fn`` applied to the selected blocks: see :func:`unetgraph.edit.map_blocks`."""
        from .edit import map_blocks

        return map_blocks(self, fn, **select)

    def insert_after(self, anchor: str, block: BlockSpec, **options: Any) -> UNetGraph:
        """A copy with a node after ``anchor``: see :func:`unetgraph.edit.insert_after`."""
        from .edit import insert_after

        return insert_after(self, anchor, block, **options)

    def insert_before(self, anchor: str, block: BlockSpec, **options: Any) -> UNetGraph:
        """A copy with a node before ``anchor``: see :func:`unetgraph.edit.insert_before`."""
        from .edit import insert_before

        return insert_before(self, anchor, block, **options)

    def remove(self, node: str, *, keep: str | None = None) -> UNetGraph:
        """A copy without ``node``, bypassed: see :func:`unetgraph.edit.remove`."""
        from .edit import remove

        return remove(self, node, keep=keep)

    def add(self, name: str, block: BlockSpec, inputs: Sequence[str | In], **options: Any) -> UNetGraph:
        """A copy with a new output branch: see :func:`unetgraph.edit.add`."""
        from .edit import add

        return add(self, name, block, inputs, **options)

    def add_edge(
        self, src: str, dst: str, kind: EdgeKind | str = EdgeKind.DATA, port: int | None = None, *, out: int = 0
    ) -> UNetGraph:
        """A copy with an edge ``src → dst``: see :func:`unetgraph.edit.add_edge`."""
        from .edit import add_edge

        return add_edge(self, src, dst, kind, port, out=out)

    def remove_edge(self, src: str, dst: str) -> UNetGraph:
        """A copy without the edge ``src → dst``: see :func:`unetgraph.edit.remove_edge`."""
        from .edit import remove_edge

        return remove_edge(self, src, dst)

    def add_skip(self, src: str, dst: str, **options: Any) -> UNetGraph:
        """A copy with a skip ``src → dst``: see :func:`unetgraph.edit.add_skip`."""
        from .edit import add_skip

        return add_skip(self, src, dst, **options)

    def remove_skip(self, src: str, dst: str | None = None) -> UNetGraph:
        """A copy without the skips leaving ``src``: see :func:`unetgraph.edit.remove_skip`."""
        from .edit import remove_skip

        return remove_skip(self, src, dst)

    def set_skip(self, src: str, dst: str, **options: Any) -> UNetGraph:
        """A copy with the skip ``src → dst`` merged differently: see :func:`unetgraph.edit.set_skip`."""
        from .edit import set_skip

        return set_skip(self, src, dst, **options)

    def tap(self, *nodes: str) -> UNetGraph:
        """A copy returning ``nodes`` as extra outputs: see :func:`unetgraph.edit.tap`."""
        from .edit import tap

        return tap(self, *nodes)

    def untap(self, *nodes: str) -> UNetGraph:
        """A copy without ``nodes`` among the outputs: see :func:`unetgraph.edit.untap`."""
        from .edit import untap

        return untap(self, *nodes)

    def replace_backbone(
        self, block: BlockSpec, *, node: str = "encoder", decoder_channels: Sequence[int] | None = None
    ) -> UNetGraph:
        """A copy with another backbone, skips kept by level: see :func:`unetgraph.edit.replace_backbone`."""
        from .edit import replace_backbone

        return replace_backbone(self, block, node=node, decoder_channels=decoder_channels)

    def copy(self, *, name: str | None = None) -> UNetGraph:
        """An equal graph, optionally renamed: see :func:`unetgraph.edit.copy`."""
        from .edit import copy

        return copy(self, name=name)

    # -- as data (logic in serialize.py) ------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data (the documented schema): see :func:`unetgraph.serialize.to_dict`."""
        from .serialize import to_dict

        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Any) -> UNetGraph:
        """The graph ``data`` describes: see :func:`unetgraph.serialize.from_dict`."""
        from .serialize import from_dict

        return from_dict(data)

    def save(self, path: str | os.PathLike[str], *, format: str | None = None) -> Path:
        """Write the graph to a JSON or YAML file, atomically: see :func:`unetgraph.serialize.save`."""
        from .serialize import save

        return save(self, path, format=format)

    # -- drawing and cost (the logic lives in render/ and cost.py) ----------------
    def summary(
        self, input_shape: Sequence[int] | dict[str, Sequence[int]] | None = None, **options: Any
    ) -> CostReport:
        """Params, FLOPs and activation memory per node, from the types: see :func:`unetgraph.cost.summary`."""
        from .cost import summary

        return summary(self, input_shape, **options)

    def render(self, detail: str = "blocks", **options: Any) -> graphviz.Digraph:
        """The graph drawn as a U (a ``graphviz.Digraph``): see :func:`unetgraph.render.render`."""
        from .render import render

        return render(self, detail, **options)

    def to_dot(self, detail: str = "blocks", **options: Any) -> str:
        """The DOT source of :meth:`render`'s drawing, without graphviz: see :func:`unetgraph.render.to_dot`."""
        from .render import to_dot

        return to_dot(self, detail, **options)

    def save_figure(self, path: str | Path, detail: str = "blocks", **options: Any) -> Path:
        """Write the drawing to .svg/.png/.pdf/.dot, atomically: see :func:`unetgraph.render.save_figure`."""
        from .render import save_figure

        return save_figure(self, path, detail, **options)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        from .render import repr_mimebundle

        return repr_mimebundle(self, include, exclude)

    def _repr_svg_(self) -> str | None:
        return self._repr_mimebundle_().get("image/svg+xml")


# -- construction and invariants (shared by UNetGraph and GraphBuilder) -------------------


def _add_node(g: nx.DiGraph, name: str, block: BlockSpec, role: Role | str, level: int | None) -> None:
    check_node_name(name)
    if name in g:
        raise GraphError(f"node name {name!r} is used twice", node=name)
    if not isinstance(block, BlockSpec):
        raise SpecError(
            f"node {name!r}: block must be a BlockSpec (e.g. ug.ConvBlock()), got {short_repr(block)}", node=name
        )
    try:
        role = Role(role)
    except ValueError:
        raise SpecError(
            f"node {name!r}: unknown role {short_repr(role)}; roles: {', '.join(r.value for r in Role)}", node=name
        ) from None
    if level is not None and (not isinstance(level, int) or isinstance(level, bool) or level < 0):
        raise SpecError(
            f"node {name!r}: level must be a non-negative integer or None, got {short_repr(level)}", node=name
        )
    g.add_node(name, block=block, role=role, level=level, inputs=(), type=None, outputs=(), levels=())


def _edge_record(record: Sequence[Any]) -> tuple[str, str, EdgeKind | str, int, int]:
    """``(src, dst, kind, port[, out])`` → five fields (``out`` 0 when left out)."""
    if not isinstance(record, (tuple, list)) or len(record) not in (4, 5):
        raise GraphError(f"an edge is (src, dst, kind, port) or (src, dst, kind, port, out), got {short_repr(record)}")
    src, dst, kind, port, *rest = record
    return src, dst, kind, port, rest[0] if rest else 0


def _add_edge(g: nx.DiGraph, src: str, dst: str, kind: EdgeKind | str, port: int, out: int = 0) -> None:
    for end in (src, dst):
        if end not in g:
            raise GraphError(f"edge {src}→{dst}: no node {short_repr(end)}", edge=f"{src}→{dst}")
    if g.has_edge(src, dst):
        raise GraphError(f"edge {src}→{dst} is given twice", edge=f"{src}→{dst}")
    try:
        kind = edge_kind(kind)
    except GraphError as e:
        raise GraphError(f"edge {src}→{dst}: {e.message}", edge=f"{src}→{dst}") from None
    if not isinstance(port, int) or isinstance(port, bool) or port < 0:
        raise GraphError(
            f"edge {src}→{dst}: port must be a non-negative integer, got {short_repr(port)}", edge=f"{src}→{dst}"
        )
    if not isinstance(out, int) or isinstance(out, bool) or out < 0:
        raise GraphError(
            f"edge {src}→{dst}: out must be a non-negative integer, got {short_repr(out)}", edge=f"{src}→{dst}"
        )
    if src == dst:  # longer cycles are found by _lint (a builder's new node has no consumers yet)
        raise GraphError(f"edge {src}→{dst} would close a cycle", edge=f"{src}→{dst}")
    g.add_edge(src, dst, kind=kind, port=port, out=out)


def _lint(g: nx.DiGraph, outputs: Sequence[str]) -> tuple[str, ...]:
    """Check every invariant of a finished graph; return its topological order."""
    if not nx.is_directed_acyclic_graph(g):
        cycle = " → ".join(u for u, _ in nx.find_cycle(g))
        raise GraphError(f"the graph has a cycle: {cycle}")
    index = {n: i for i, n in enumerate(g)}
    order = tuple(nx.lexicographical_topological_sort(g, key=index.__getitem__))
    for n in order:
        _lint_node(g, n)
    for o in outputs:
        if o not in g:
            raise GraphError(f"output {short_repr(o)} is not a node", node=short_repr(o))
    if len(set(outputs)) != len(outputs):
        raise GraphError(f"outputs repeat a node: {list(outputs)}")
    _check_lowering_names(g, outputs)
    inputs = [n for n in order if g.nodes[n]["role"] is Role.INPUT]
    if not inputs:
        raise GraphError("the graph has no input node (role 'input')")
    reached = set(inputs).union(*(nx.descendants(g, i) for i in inputs))
    stray = [n for n in order if n not in reached]
    if stray:
        raise GraphError(f"{', '.join(stray)} cannot be reached from any input", node=stray[0])
    if not outputs:
        raise GraphError("the graph has no outputs")
    feeding = set(outputs).union(*(nx.ancestors(g, o) for o in outputs))
    dangling = [n for n in order if n not in feeding]
    if dangling:
        raise GraphError(
            f"{', '.join(dangling)} feed{'s' if len(dangling) == 1 else ''} no output "
            "(dangling); remove them or mark them as outputs",
            node=dangling[0],
        )
    return order


def _in_ports(g: nx.DiGraph, n: str) -> list[tuple[int, str, EdgeKind]]:
    return sorted(((d["port"], u, d["kind"]) for u, _, d in g.in_edges(n, data=True)), key=lambda t: t[0])


def _source_level(g: nx.DiGraph, u: str, v: str) -> int | None:
    """The level of the output of ``u`` that feeds ``v``."""
    a = g.nodes[u]
    return a["levels"][g.edges[u, v]["out"]] if a["levels"] else a["level"]


def _lint_node(g: nx.DiGraph, n: str) -> None:
    """The invariants local to one node: ports, arity, conditioning and skips into it."""
    a = g.nodes[n]
    block = a["block"]
    ins = _in_ports(g, n)
    ports = [p for p, _, _ in ins]
    if ports != list(range(len(ports))):
        raise GraphError(f"{n}: input ports must be 0..{len(ports) - 1}, got {ports}", node=n)
    if a["role"] is Role.INPUT:
        if ins:
            raise GraphError(f"{n} is an input node but is fed by {', '.join(u for _, u, _ in ins)}", node=n)
        return
    cond = sum(1 for _, _, k in ins if k is EdgeKind.COND)
    arity = len(ins) - cond
    lo, hi = block.min_inputs, block.max_inputs
    if arity < lo or (hi is not None and arity > hi):
        want = f"{lo}" if lo == hi else f"{lo}+" if hi is None else f"{lo}–{hi}"
        what = "merge" if a["role"] is Role.MERGE else "node"
        fed = f" ({', '.join(u for _, u, _ in ins)})" if ins else ""
        raise GraphError(f"{what} {n} ({block.label()}) takes {want} inputs, is fed {arity}{fed}", node=n)
    if cond > block.max_cond:
        srcs = ", ".join(u for _, u, k in ins if k is EdgeKind.COND)
        raise GraphError(
            f"cond edge {srcs}→{n}: {block.type_name} takes no conditioning input"
            if block.max_cond == 0
            else f"{n} ({block.type_name}) takes at most {block.max_cond} cond inputs, is fed {cond}",
            node=n,
        )
    for _, u, k in ins:
        if k is EdgeKind.SKIP:
            if block.max_inputs is not None and block.max_inputs < 2:
                raise GraphError(
                    f"skip {u}→{n} ends at {n} ({block.type_name}), which takes one input; skips must end at a merge",
                    edge=f"{u}→{n}",
                )
            if _several_outputs(g.nodes[u]["block"]):
                if g.nodes[u]["levels"]:
                    _check_skip_level(g, u, n)
                continue  # otherwise not typed yet: _infer checks it
            lu, ln = g.nodes[u]["level"], a["level"]
            if lu is not None and ln is not None and lu != ln:
                raise GraphError(
                    f"skip {u}→{n} joins level {lu} to level {ln}; skips stay within a level", edge=f"{u}→{n}"
                )


def _infer(g: nx.DiGraph, n: str) -> None:
    """Infer node ``n``'s input and output types from its predecessors (already inferred)."""
    a = g.nodes[n]
    ins = _in_ports(g, n)
    types = tuple(_port_type(g, u, n) for _, u, _ in ins)
    sources = tuple(_source_name(g, u, n, k) for _, u, k in ins)
    block: BlockSpec = a["block"]
    try:
        outs = block.infer_outputs(types, sources)
    except UNetGraphError as e:
        raise e.at(n, block.label()) from e
    except Exception as e:  # a user block's own error: keep it as the cause
        raise SpecError(f"{n} ({block.label()}): {type(e).__name__}: {e}", node=n) from e
    if not isinstance(outs, tuple) or not outs or not all(isinstance(t, TensorType) for t in outs):
        raise SpecError(
            f"{n}: {type(block).__name__}.infer returned {short_repr(outs)}, expected a TensorType "
            "(infer_outputs: a tuple of them)",
            node=n,
        )
    a["inputs"], a["type"], a["outputs"] = types, outs[-1], outs
    a["levels"] = port_levels(a["level"], types, outs)


def _port_type(g: nx.DiGraph, u: str, v: str) -> TensorType:
    """The type of the output of ``u`` that feeds ``v``; a GraphError for an output ``u`` lacks."""
    outs, out = g.nodes[u]["outputs"], g.edges[u, v]["out"]
    if out >= len(outs):
        have = "one output" if len(outs) == 1 else f"{len(outs)} outputs (0–{len(outs) - 1})"
        raise GraphError(f"edge {u}→{v} takes output {out} of {u}, which has {have}", edge=f"{u}→{v}", node=v)
    if g.edges[u, v]["kind"] is EdgeKind.SKIP and _several_outputs(g.nodes[u]["block"]):
        _check_skip_level(g, u, v)
    return outs[out]


def _several_outputs(block: BlockSpec) -> bool:
    """Whether ``block`` may have several outputs (it defines ``infer_outputs``): their levels are
    known only once it is typed, so the skips leaving it are checked then."""
    return type(block).infer_outputs is not BlockSpec.infer_outputs


def _source_name(g: nx.DiGraph, u: str, v: str, kind: EdgeKind) -> str:
    out = g.edges[u, v]["out"]
    src = f"{u}[{out}]" if out else u
    return src if kind is EdgeKind.DATA else f"{kind.value} {src}→{v}"


def _check_skip_level(g: nx.DiGraph, u: str, v: str) -> None:
    lu, lv = _source_level(g, u, v), g.nodes[v]["level"]
    if lu is not None and lv is not None and lu != lv:
        out = g.edges[u, v]["out"]
        raise GraphError(
            f"skip {u}[{out}]→{v} joins level {lu} to level {lv}; skips stay within a level "
            f"(output {out} of {u} is at level {lu})",
            edge=f"{u}→{v}",
        )


def port_levels(
    level: int | None, inputs: Sequence[TensorType], outputs: Sequence[TensorType]
) -> tuple[int | None, ...]:
    """The level of each output: the node's own for one output; for several, the node's level plus
    the halvings from the node's first spatial input to the output (``None`` if not a power of two)."""
    if len(outputs) == 1:
        return (level,)
    base = next((t for t in inputs if t.dims), None)
    out: list[int | None] = []
    for t in outputs:
        ratios = {b / s for b, s in zip(base.scale, t.scale)} if base is not None and level is not None else set()
        r = ratios.pop() if len(ratios) == 1 else None
        ok = r is not None and r.denominator == 1 and r.numerator & (r.numerator - 1) == 0
        out.append(level + r.numerator.bit_length() - 1 if ok else None)  # type: ignore[operator, union-attr]
    return tuple(out)


def _check_outputs(g: nx.DiGraph, outputs: Sequence[str]) -> None:
    """A graph returns whole tensors: a node with several outputs cannot be one of its outputs."""
    for o in outputs:
        if len(g.nodes[o]["outputs"]) > 1:
            raise GraphError(
                f"output {o} has {len(g.nodes[o]['outputs'])} outputs of its own; return the nodes that use them",
                node=o,
            )


class GraphBuilder:
    """Build a :class:`UNetGraph` step by step; each step is checked as it is made.

    Every ``add`` lints what is there so far and infers the new node's type, so an error
    names the step that caused it. :meth:`build` runs the full lint and returns the
    immutable graph.

    Example:
        >>> import unetgraph as ug
        >>> b = ug.GraphBuilder(name="Tiny")
        >>> b.input("x", channels=1, dims=1)
        'x'
        >>> b.add("enc0", ug.ConvBlock(channels=4), "encoder", 0, ["x"])
        'enc0'
        >>> b.add("head", ug.Head(channels=2), "head", 0, ["enc0"])
        'head'
        >>> b.build(outputs=["head"])["head"].type.channels
        2
    """

    def __init__(self, name: str = "UNet") -> None:
        self.name = check_identifier(name, "graph name")
        self._g: nx.DiGraph = nx.DiGraph()

    def input(self, name: str = "x", *, channels: int = 1, dims: int = 2, kind: str = "image") -> str:
        """Add an input node: an image of ``channels`` channels and ``dims`` spatial axes, or a
        ``"timestep"``, ``"label"`` or ``"context"`` input (see :class:`~unetgraph.blocks.io.Input`)."""
        from .blocks.io import Input

        return self.add(
            name, Input(channels=channels, dims=dims, kind=kind), Role.INPUT, 0 if kind == "image" else None, []
        )

    def add(
        self,
        name: str,
        block: BlockSpec,
        role: Role | str,
        level: int | None,
        inputs: Sequence[str | In],
    ) -> str:
        """Add node ``name`` fed by ``inputs`` (in port order); returns ``name``.

        ``inputs`` items are node names (data edges) or :class:`In` for skip/cond edges and for
        an output of a node with several (``In("encoder", EdgeKind.SKIP, out=2)``).
        On error nothing is added.
        """
        items = as_inputs(inputs)
        _add_node(self._g, name, block, role, level)
        try:
            for port, (src, kind, out) in enumerate(items):
                _add_edge(self._g, src, name, kind, port, out)
            # The new node has no consumers yet, so it closes no cycle and the rest of the
            # graph keeps its invariants: checking the node itself is the whole step lint.
            _lint_node(self._g, name)
            _infer(self._g, name)
        except UNetGraphError:
            self._g.remove_node(name)
            raise
        return name

    def type_of(self, name: str, out: int | None = None) -> TensorType:
        """The output type of a node added so far (of its output ``out``, for a node with several)."""
        if name not in self._g:
            raise NodeNotFoundError(f"no node {short_repr(name)} yet", node=short_repr(name))
        a = self._g.nodes[name]
        if out is None:
            return a["type"]
        if not isinstance(out, int) or isinstance(out, bool) or not 0 <= out < len(a["outputs"]):
            raise GraphError(f"{name} has no output {short_repr(out)}; it has {len(a['outputs'])}", node=name)
        return a["outputs"][out]

    def node(self, name: str) -> Node:
        """A node added so far, typed (its outputs and their levels included)."""
        if name not in self._g:
            raise NodeNotFoundError(f"no node {short_repr(name)} yet", node=short_repr(name))
        a = self._g.nodes[name]
        return Node(name, a["role"], a["level"], a["block"], a["inputs"], a["type"], a["outputs"], a["levels"])

    def __contains__(self, name: object) -> bool:
        return name in self._g

    def build(self, outputs: Sequence[str]) -> UNetGraph:
        """The finished, immutable graph returning ``outputs``."""
        return UNetGraph(
            [(n, a["block"], a["role"], a["level"]) for n, a in self._g.nodes(data=True)],
            [(u, v, d["kind"], d["port"], d["out"]) for u, v, d in self._g.edges(data=True)],
            outputs,
            name=self.name,
        )
