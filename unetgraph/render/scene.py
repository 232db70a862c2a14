"""What to draw: a :class:`Scene` of boxes (:class:`Item`) and arrows (:class:`Link`), built from a graph.

A scene is plain data between the graph and the DOT text. :func:`scene` builds one from a
:class:`~unetgraph.graph.UNetGraph` at a level of detail, with annotations from the static
cost model (:mod:`unetgraph.cost`), heat colouring and marks. Tools that draw something that
is not one graph (a diff of two architectures) build scenes, combine them with
:meth:`Scene.union` and mark them with :meth:`Scene.marked`; the layout needs only each
item's role and level.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, Sequence

from ..cost import CostReport, NodeCost, fmt_bytes, fmt_count, summary
from ..errors import NodeNotFoundError, RenderError
from ..graph import UNetGraph
from ..types import EdgeKind, Role, format_dims
from ..util import paused_gc
from .layout import SIDES

__all__ = ["Item", "Link", "Scene", "scene", "DETAILS", "ANNOTATIONS", "MARKS", "HEATS"]

DETAILS = ("levels", "blocks", "layers")
ANNOTATIONS = ("shape", "params", "flops", "memory")
MARKS = ("added", "removed", "changed")
HEATS = ("flops", "params", "memory")

Marks = Mapping["str | tuple[str, str]", str]


@dataclass(frozen=True)
class Item:
    """One box.

    Attributes:
        id: its DOT id (unique in the scene).
        role, level: drive the layout and the colour.
        title: the name shown first (``"enc2"``).
        text: the block in a few words (``"2×conv3 batch relu"``).
        notes: annotation strings (``"256×64×64"``, ``"1.2M params"``).
        members: the graph nodes it stands for (several at ``detail="levels"``).
        cluster: the id of the frame it is drawn in (its block at ``detail="layers"``).
        mark: ``"added"``, ``"removed"``, ``"changed"`` or ``None``.
        heat: 0–1, the share of the heat measure relative to the hottest item.
        port: for one output of a node with several (a backbone's stage), its index; such
            items stay apart at ``detail="levels"`` and their node's cost is on their frame.
    """

    id: str
    role: Role
    level: int | None
    title: str
    text: str = ""
    notes: tuple[str, ...] = ()
    members: tuple[str, ...] = ()
    cluster: str | None = None
    mark: str | None = None
    heat: float | None = None
    port: int | None = None


@dataclass(frozen=True)
class Link:
    """One arrow between two items; ``merge`` is the merge kind of a skip (``"concat"``, ``"add"``)."""

    src: str
    dst: str
    kind: EdgeKind
    merge: str | None = None
    mark: str | None = None
    members: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Scene:
    """Items in topological order, links, frames (cluster id → label) and a title."""

    title: str
    items: tuple[Item, ...]
    links: tuple[Link, ...]
    clusters: Mapping[str, str] = field(default_factory=dict)
    heat: str | None = None
    name: str = "UNet"

    def marked(self, marks: Marks) -> Scene:
        """A copy with ``marks`` applied: keys are graph node names (an item is marked when
        one of its members is; mixed marks read ``"changed"``) or ``(src, dst)`` edges.

        Raises:
            RenderError: a mark is not ``"added"``, ``"removed"`` or ``"changed"``.
            NodeNotFoundError: a key names no node or edge of the scene.
        """
        node_marks, edge_marks = _split_marks(marks)
        known = {m for it in self.items for m in it.members}
        unknown = [n for n in node_marks if n not in known]
        if unknown:
            raise NodeNotFoundError(f"marks: no node {', '.join(map(repr, unknown))} in {self.name}", node=unknown[0])
        known_edges = {m for ln in self.links for m in ln.members}
        unknown_e = [e for e in edge_marks if e not in known_edges]
        if unknown_e:
            u, v = unknown_e[0]
            raise NodeNotFoundError(f"marks: no edge {u}→{v} in {self.name}", node=u)
        items = tuple(replace(it, mark=_combine(node_marks.get(m) for m in it.members) or it.mark) for it in self.items)
        links = tuple(replace(ln, mark=_combine(edge_marks.get(m) for m in ln.members) or ln.mark) for ln in self.links)
        return replace(self, items=items, links=links)

    def union(self, other: Scene, *, mark: str | None = None) -> Scene:
        """This scene plus the items and links of ``other`` that it lacks (by id), the new ones
        marked ``mark``: e.g. the removed parts of an older architecture drawn into the new one."""
        if mark is not None:
            _check_mark(mark)
        have = {it.id for it in self.items}
        items = list(self.items) + [replace(it, mark=mark or it.mark) for it in other.items if it.id not in have]
        seen = {(ln.src, ln.dst, ln.kind) for ln in self.links}
        links = list(self.links) + [
            replace(ln, mark=mark or ln.mark) for ln in other.links if (ln.src, ln.dst, ln.kind) not in seen
        ]
        return replace(self, items=tuple(items), links=tuple(links), clusters={**other.clusters, **self.clusters})


@paused_gc()
def scene(
    g: UNetGraph,
    detail: str = "blocks",
    *,
    input_shape: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    annotate: Iterable[str] | None = None,
    heat: str | None = None,
    marks: Marks | None = None,
    pad: str | None = None,
) -> Scene:
    """The scene of ``g`` at ``detail``: see :func:`unetgraph.render.render` for the arguments."""
    if detail not in DETAILS:
        raise RenderError(f"detail: expected one of {', '.join(map(repr, DETAILS))}, got {detail!r}")
    notes = _annotations(annotate, input_shape)
    if heat is not None and heat not in HEATS:
        raise RenderError(f"heat: expected one of {', '.join(map(repr, HEATS))} or None, got {heat!r}")
    if heat in ("flops", "memory") and input_shape is None:
        raise RenderError(f"heat={heat!r} needs an input shape: render(input_shape=(N, C, H, W), heat={heat!r})")
    cost = summary(g, input_shape, pad=pad)
    if detail == "layers":
        from .layers import layer_scene

        out = layer_scene(g, cost, notes, heat)
    else:
        out = _block_scene(g, cost, notes, heat)
        if detail == "levels":
            out = _collapse_levels(g, out, cost, notes, heat)
    return out.marked(marks) if marks else out


# -- annotations ---------------------------------------------------------------------


def _annotations(annotate: Iterable[str] | None, input_shape: object) -> tuple[str, ...]:
    if annotate is None:
        return ("shape", "params") + (("flops",) if input_shape is not None else ())
    if isinstance(annotate, str):
        annotate = (annotate,)
    out = tuple(annotate)
    bad = [a for a in out if a not in ANNOTATIONS]
    if bad:
        raise RenderError(f"annotate: unknown {', '.join(map(repr, bad))}; choose from {', '.join(ANNOTATIONS)}")
    needs = [a for a in out if a in ("flops", "memory")]
    if needs and input_shape is None:
        raise RenderError(
            f"annotate={needs[0]!r} needs an input shape: render(input_shape=(N, C, H, W), annotate={out!r})"
        )
    return out


def note_lines(rows: Sequence[NodeCost], wanted: Sequence[str]) -> tuple[str, ...]:
    """Annotation strings for the nodes ``rows`` stand for (summed; the shape of the last)."""
    out = []
    for what in wanted:
        if what == "shape":
            out.append(_shape(rows[-1]))
        elif what == "params":
            p = sum(r.params for r in rows)
            if p:
                out.append(f"{fmt_count(p)} params")
        elif what == "flops":
            f = sum(r.flops or 0 for r in rows)
            if f:
                out.append(fmt_count(f, "FLOPs"))
        elif what == "memory":
            out.append(fmt_bytes(sum(r.activation_bytes or 0 for r in rows)))
    return tuple(out)


def _shape(row: NodeCost) -> str:
    if row.output is None:
        return row.type.split(" (")[0]  # "64ch@1/2 (2D)" → "64ch@1/2"
    return format_dims(row.output)


def heat_values(cost: CostReport, heat: str | None, groups: Sequence[Sequence[str]]) -> list[float | None]:
    """Per group of nodes, its ``heat`` measure relative to the largest group (0–1)."""
    if heat is None:
        return [None] * len(groups)
    vals = [sum(cost.value(n, heat) for n in grp) for grp in groups]
    top = max(vals, default=0) or 1
    return [v / top for v in vals]


def heat_note(cost: CostReport, heat: str | None, members: Sequence[str]) -> tuple[str, ...]:
    if heat is None:
        return ()
    total = sum(cost.value(r.name, heat) for r in cost)
    share = sum(cost.value(n, heat) for n in members) / total if total else 0.0
    if not share:
        return ()
    pct = f"{100 * share:.1f}%" if share >= 0.0005 else "<0.1%"
    return (f"{pct} of {'FLOPs' if heat == 'flops' else heat}",)


# -- blocks and levels ---------------------------------------------------------------------


def merge_kind(block: object) -> str:
    """The skip style key of the block a skip ends at: a merge's mode, else the block's type."""
    mode = getattr(block, "mode", None)
    return mode if isinstance(mode, str) else getattr(block, "type_name", type(block).__name__)


def title_line(g: UNetGraph, cost: CostReport) -> str:
    parts = [g.name]
    if cost.inputs is not None:
        ins = ", ".join("×".join(map(str, s)) for s in cost.inputs.values())
        if cost.padded_from is not None:  # drawn at the size pad="auto" runs at
            given = ", ".join("×".join(map(str, s)) for s in cost.padded_from.values())
            ins = f"{given} (pad='auto': {ins})"
        outs = ", ".join("×".join(map(str, cost[o].output)) for o in g.outputs)  # type: ignore[arg-type]
        parts.append(f"{ins} → {outs}")
    parts.append(f"{fmt_count(cost.params)} params")
    if cost.flops is not None:
        parts.append(fmt_count(cost.flops, "FLOPs"))
    return " · ".join(parts)


def _block_scene(g: UNetGraph, cost: CostReport, notes: Sequence[str], heat: str | None) -> Scene:
    names = list(g)
    heats = heat_values(cost, heat, [[n] for n in names] if heat else names)
    items = []
    clusters: dict[str, str] = {}
    links: list[Link] = []
    for n, h in zip(names, heats):
        node, row = g[n], cost[n]
        if len(node.outputs) > 1:
            stage_items, chain = _stages(g, n, row, notes, h)
            items += stage_items
            links += chain
            clusters[n] = " · ".join([n, row.block, *note_lines([row], [a for a in notes if a != "shape"])])
            continue
        items.append(
            Item(
                n,
                node.role,
                node.level,
                n,
                row.block,
                note_lines([row], notes) + heat_note(cost, heat, [n]),
                members=(n,),
                heat=h,
            )
        )
    links += [
        Link(
            port_id(e.src, e.out) if len(g[e.src].outputs) > 1 else e.src,
            port_id(e.dst, 0) if len(g[e.dst].outputs) > 1 else e.dst,
            e.kind,
            merge_kind(g[e.dst].block) if e.kind is EdgeKind.SKIP else None,
            None,
            ((e.src, e.dst),),
        )
        for e in g.edges()
    ]
    return Scene(title_line(g, cost), tuple(items), tuple(links), clusters, heat, g.name)


def port_id(node: str, out: int) -> str:
    """The item id of output ``out`` of a node with several: ``encoder.2``."""
    return f"{node}.{out}"


def _stages(
    g: UNetGraph, n: str, row: NodeCost, notes: Sequence[str], heat: float | None
) -> tuple[list[Item], list[Link]]:
    """A node with several outputs (a backbone) as one box per output at its level, framed, each
    stage feeding the next: the encoder's stages down the left of the U."""
    node = g[n]
    names = node.block.output_names(node.inputs)
    items = []
    for k, (t, level) in enumerate(zip(node.outputs, node.levels)):
        shape = format_dims(row.outputs[k]) if row.outputs else str(t).split(" (")[0]
        items.append(
            Item(
                port_id(n, k),
                node.role,
                level,
                names[k],
                "",
                (shape,) if "shape" in notes else (),
                members=(n,),
                cluster=n,
                heat=heat,
                port=k,
            )
        )
    chain = [Link(port_id(n, k), port_id(n, k + 1), EdgeKind.DATA) for k in range(len(items) - 1)]
    return items, chain


def level_group(role: Role, level: int | None, deepest: bool = False) -> tuple[str, str, Role] | None:
    """The collapsed box a node of ``role`` at ``level`` joins at ``detail="levels"``: its id
    (``encoder@0``, which no node name can be), title and role, or ``None`` when it stays alone
    (inputs, heads, embeddings, unlevelled nodes).
    At a level with a bottleneck (``deepest``) the encoder side joins the bottleneck's box."""
    if level is None or role in (Role.INPUT, Role.HEAD, Role.EMBEDDING):
        return None
    side = SIDES[role]
    if deepest and side == "left":
        side = "centre"
    word, as_role = {
        "left": ("encoder", Role.ENCODER),
        "centre": ("bottleneck", Role.BOTTLENECK),
        "right": ("decoder", Role.DECODER),
    }[side]
    return f"{word}@{level}", f"{word} {level}", as_role  # "@": no node name (an identifier) has one


def _collapse_levels(g: UNetGraph, blocks: Scene, cost: CostReport, notes: Sequence[str], heat: str | None) -> Scene:
    owner: dict[str, str] = {}
    groups: dict[str, list[Item]] = {}
    heads: dict[str, tuple[str, Role, int | None]] = {}
    deep = {it.level for it in blocks.items if it.role is Role.BOTTLENECK}
    for it in blocks.items:
        group = None if it.port is not None else level_group(it.role, it.level, it.level in deep)
        gid = it.id if group is None else group[0]
        owner[it.id] = gid
        if gid not in groups:
            groups[gid] = []
            heads[gid] = (it.title, it.role, it.level) if group is None else (group[1], group[2], it.level)
        groups[gid].append(it)
    order = list(groups)
    heats = heat_values(cost, heat, [[m for it in groups[gid] for m in it.members] for gid in order] if heat else order)
    items = []
    for gid, h in zip(order, heats):
        members = tuple(m for it in groups[gid] for m in it.members)
        title, role, level = heads[gid]
        if len(groups[gid]) == 1 and groups[gid][0].id == gid:
            items.append(replace(groups[gid][0], heat=h))
            continue
        text = _run_length([it.text for it in groups[gid]])
        rows = [cost[m] for m in members]
        items.append(
            Item(
                gid, role, level, title, text, note_lines(rows, notes) + heat_note(cost, heat, members), members, heat=h
            )
        )
    links: dict[tuple[str, str, EdgeKind], Link] = {}
    for ln in blocks.links:
        key = (owner[ln.src], owner[ln.dst], ln.kind)
        if key[0] == key[1]:
            continue
        if key in links:
            old = links[key]
            links[key] = replace(old, members=old.members + ln.members)
        else:
            links[key] = replace(ln, src=key[0], dst=key[1])
    return replace(blocks, items=tuple(items), links=tuple(links.values()))


def _run_length(texts: Sequence[str]) -> str:
    """``["a", "b", "b"]`` → ``"a → 2× b"``."""
    out: list[list] = []
    for t in texts:
        if out and out[-1][0] == t:
            out[-1][1] += 1
        else:
            out.append([t, 1])
    return " → ".join(t if k == 1 else f"{k}× {t}" for t, k in out)


# -- marks ---------------------------------------------------------------------------------


def _check_mark(mark: object) -> None:
    if mark not in MARKS:
        raise RenderError(f"mark {mark!r}: expected one of {', '.join(map(repr, MARKS))}")


def _split_marks(marks: Marks) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    if not isinstance(marks, Mapping):
        raise RenderError(f"marks: expected a mapping of node names or (src, dst) edges to a mark, got {marks!r}")
    nodes: dict[str, str] = {}
    edges: dict[tuple[str, str], str] = {}
    for key, mark in marks.items():
        _check_mark(mark)
        if isinstance(key, str):
            nodes[key] = mark
        elif isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key):
            edges[key] = mark
        else:
            raise RenderError(f"marks: key {key!r} is neither a node name nor a (src, dst) edge")
    return nodes, edges


def _combine(marks: Iterable[str | None]) -> str | None:
    """One mark for a box standing for several nodes: their common mark (``None`` for none),
    else ``"changed"`` (a level with one added block was changed, not added)."""
    found = set(marks)
    return found.pop() if len(found) == 1 else "changed"
