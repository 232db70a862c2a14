"""DOT text for a :class:`~unetgraph.render.scene.Scene` laid out by :mod:`~unetgraph.render.layout`.

One pass over the items and one over the links: the text grows linearly with the graph.
Colours, edge styles and mark styles are small tables here; change an entry to restyle.
"""

from __future__ import annotations

import html
from itertools import pairwise
from typing import Iterable, Sequence

from ..errors import RenderError
from ..types import EdgeKind, Role
from .layout import Arrow, Box, Placement, place
from .scene import Item, Link, Scene

__all__ = ["ROLE_COLOURS", "SKIP_STYLES", "EDGE_STYLES", "MARK_STYLES", "DIRECTIONS", "dot_lines", "to_dot"]

DIRECTIONS = ("TB", "BT", "LR", "RL")
FONT = "Helvetica"

#: role → (fill, border)
ROLE_COLOURS: dict[Role, tuple[str, str]] = {
    Role.INPUT: ("#eeeeee", "#666666"),
    Role.STEM: ("#e4dcf2", "#7e6aa8"),
    Role.ENCODER: ("#d4e6f7", "#3d85c6"),
    Role.DOWN: ("#e3eef8", "#6fa8dc"),
    Role.BOTTLENECK: ("#f8d9d4", "#cc4125"),
    Role.UP: ("#e6f2df", "#93c47d"),
    Role.MERGE: ("#fff2cc", "#bf9000"),
    Role.DECODER: ("#d5ebcb", "#38761d"),
    Role.HEAD: ("#f4dce8", "#a64d79"),
    Role.EMBEDDING: ("#fde6cf", "#e69138"),
}

#: edge kind → DOT attributes (skips are styled by their merge kind instead)
EDGE_STYLES: dict[EdgeKind, dict[str, str]] = {
    EdgeKind.DATA: {"color": "#555555"},
    EdgeKind.SKIP: {"color": "#7f7f7f", "style": "dashed", "penwidth": "1.4"},
    EdgeKind.COND: {"color": "#e69138", "style": "dotted", "penwidth": "1.4", "arrowhead": "empty"},
}

#: merge kind of a skip → DOT attributes; others use EDGE_STYLES[EdgeKind.SKIP]
SKIP_STYLES: dict[str, dict[str, str]] = {
    "concat": {"color": "#3d85c6", "style": "solid", "penwidth": "1.8"},
    "add": {"color": "#6aa84f", "style": "dashed", "penwidth": "1.8", "arrowhead": "odot"},
}

#: mark → (node attributes, edge attributes, title prefix)
MARK_STYLES: dict[str, tuple[dict[str, str], dict[str, str], str]] = {
    "added": ({"color": "#2e7d32", "penwidth": "3"}, {"color": "#2e7d32", "penwidth": "2.5"}, "+ "),
    "removed": (
        {"color": "#c62828", "penwidth": "2.5", "style": "rounded,filled,dashed", "fillcolor": "#fbe3e3"},
        {"color": "#c62828", "penwidth": "2.5", "style": "dashed"},
        "− ",
    ),
    "changed": ({"color": "#ef6c00", "penwidth": "3"}, {"color": "#ef6c00", "penwidth": "2.5"}, "~ "),
}

_HEAT_STOPS = ((0.0, (255, 247, 236)), (0.5, (252, 141, 89)), (1.0, (179, 0, 0)))
_HEAT_WORDS = {"flops": "FLOPs", "params": "parameters", "memory": "activation memory"}


def heat_colour(t: float) -> str:
    """A colour from light (0) to dark red (1), for heat colouring.

    >>> heat_colour(0.0), heat_colour(1.0)
    ('#fff7ec', '#b30000')
    """
    t = min(max(t, 0.0), 1.0)
    for (a, ca), (b, cb) in pairwise(_HEAT_STOPS):
        if t <= b:
            f = (t - a) / (b - a)
            return "#" + "".join(f"{round(x + (y - x) * f):02x}" for x, y in zip(ca, cb))
    return "#b30000"


# DOT's keywords, in any case: a graph named Node must be quoted (``digraph Node {`` is a syntax error)
DOT_KEYWORDS = ("node", "edge", "graph", "digraph", "subgraph", "strict")


def _q(s: str) -> str:
    """A quoted DOT ID."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _attrs(d: dict[str, str]) -> str:
    """``k="v", ...``; labels are HTML-like (``<...>``), everything else is quoted."""
    return ", ".join(f"{k}={v if k == 'label' else _q(v)}" for k, v in d.items())


def _wrap(text: str, width: int = 44) -> list[str]:
    """Break a long ``a → b → c`` chain into lines of about ``width`` characters."""
    if len(text) <= width:
        return [text]
    lines: list[str] = []
    for part in text.split(" → "):
        if lines and len(lines[-1]) + 3 + len(part) <= width:
            lines[-1] += " → " + part
        else:
            lines.append(part if not lines else "→ " + part)
    return lines


def _label(it: Item, dark: bool = False) -> str:
    e = html.escape
    title = f"<b>{e(it.title)}</b>"
    if it.mark:
        title = e(MARK_STYLES[it.mark][2]) + (f"<s>{title}</s>" if it.mark == "removed" else title)
    text = _wrap(it.text)
    first = title + (f" · {e(text[0])}" if text and text[0] else "")
    lines = [first, *(e(t) for t in text[1:])]
    notes = " · ".join(n for n in it.notes if n)
    if notes:  # graphviz refuses an empty <font></font>
        colour = "#f3f3f3" if dark else "#444444"
        lines.append(f'<font point-size="9" color="{colour}">{e(notes)}</font>')
    return "<" + "<br/>".join(lines) + ">"


def _item_attrs(it: Item, side: str) -> dict[str, str]:
    fill, border = ROLE_COLOURS.get(it.role, ("#ffffff", "#666666"))
    dark = it.heat is not None and it.heat > 0.6
    a = {"label": _label(it, dark), "fillcolor": fill, "color": border, "id": it.id, "group": side}
    a["tooltip"] = f"{it.title} ({it.role.value}{'' if it.level is None else f', level {it.level}'}) {it.text}"
    if it.heat is not None:
        a["fillcolor"] = heat_colour(it.heat)
        if dark:
            a["fontcolor"] = "white"
    if it.mark:
        a.update(MARK_STYLES[it.mark][0])
    return a


def _link_attrs(ln: Link) -> dict[str, str]:
    a = dict(EDGE_STYLES[ln.kind])
    if ln.kind is EdgeKind.SKIP and ln.merge in SKIP_STYLES:
        a.update(SKIP_STYLES[ln.merge])
    if ln.mark:
        a.update(MARK_STYLES[ln.mark][1])
    a["id"] = f"{ln.src}:{ln.dst}"
    a["class"] = ln.kind.value + (f" {ln.merge}" if ln.merge else "")
    return a


def dot_lines(scene: Scene, *, direction: str = "TB", legend: bool = True) -> list[str]:
    """The body of the DOT graph (one statement per line), for ``graphviz.Digraph(body=...)``."""
    if direction not in DIRECTIONS:
        raise RenderError(f"direction: expected one of {', '.join(DIRECTIONS)}, got {direction!r}")
    ids = [it.id for it in scene.items]
    if len(set(ids)) != len(ids):
        raise RenderError(f"scene {scene.name}: item ids repeat")
    known = set(ids)
    for ln in scene.links:
        if ln.src not in known or ln.dst not in known:
            raise RenderError(f"scene {scene.name}: link {ln.src}→{ln.dst} ends at an unknown item")
    placement = place(
        [Box(it.id, it.role, it.level) for it in scene.items], [Arrow(ln.src, ln.dst, ln.kind) for ln in scene.links]
    )
    out = [
        "\t"
        + "graph ["
        + _attrs(
            {
                "rankdir": direction,
                "newrank": "true",
                "nodesep": "0.3",
                "ranksep": "0.32",
                "fontname": FONT,
                "fontsize": "10",
                "label": _graph_label(scene, legend),
                "labelloc": "t",
                "bgcolor": "white",
                "pad": "0.3",
            }
        )
        + "]\n",
        "\tnode ["
        + _attrs(
            {
                "shape": "box",
                "style": "rounded,filled",
                "fontname": FONT,
                "fontsize": "10",
                "margin": "0.1,0.04",
                "height": "0.3",
                "penwidth": "1.2",
            }
        )
        + "]\n",
        "\tedge [" + _attrs({"fontname": FONT, "fontsize": "9", "arrowsize": "0.7", "color": "#555555"}) + "]\n",
    ]
    out += _items(scene, placement)
    out += _links(scene.links, placement)
    for a, b in placement.ties:
        out.append(f"\t{{rank=same; {_q(a)}; {_q(b)}}}\n")
    flat = {(ln.src, ln.dst) for ln, f in zip(scene.links, placement.flow) if f == "flat"}
    for a, b in placement.ties:
        if (a, b) not in flat:  # a level tie without an edge: keep the encoder on the left
            out.append(f"\t{_q(a)} -> {_q(b)} [style=invis]\n")
    return out


def _items(scene: Scene, placement: Placement) -> list[str]:
    out: list[str] = []
    framed: dict[str, list[str]] = {}
    for it in scene.items:
        side = "aux" if it.id in placement.aux else placement.side[it.id]
        line = f"{_q(it.id)} [{_attrs(_item_attrs(it, side))}]\n"
        if it.cluster is None:
            out.append("\t" + line)
        else:
            framed.setdefault(it.cluster, []).append("\t\t" + line)
    for cid, lines in framed.items():
        label = html.escape(scene.clusters.get(cid, cid))
        out.append(f"\tsubgraph {_q('cluster_' + cid)} {{\n")
        out.append(
            "\t\tgraph ["
            + _attrs(
                {
                    "label": f'<<font point-size="10">{label}</font>>',
                    "style": "rounded,dashed",
                    "color": "#999999",
                    "labeljust": "l",
                    "margin": "6",
                }
            )
            + "]\n"
        )
        out += lines
        out.append("\t}\n")
    return out


def _links(links: Sequence[Link], placement: Placement) -> list[str]:
    out = []
    for ln, flow in zip(links, placement.flow):
        a = _link_attrs(ln)
        src, dst = ln.src, ln.dst
        if flow == "up":  # ranks run downward: hand dot the reversed edge, draw the arrow back
            src, dst = dst, src
            a["dir"] = "back"
        elif flow == "free":
            a["constraint"] = "false"
        out.append(f"\t{_q(src)} -> {_q(dst)} [{_attrs(a)}]\n")
    return out


def _key(colour: str, glyph: str, text: str) -> str:
    return f'<font color="{colour}">{glyph}</font> {html.escape(text)}'


def _legend_rows(scene: Scene) -> list[str]:
    """Legend lines: box colours (roles, or the heat scale), then edges and marks."""
    roles: list[Role] = []
    for it in scene.items:
        if it.role not in roles:
            roles.append(it.role)
    if scene.heat is None:
        boxes = [_key(ROLE_COLOURS[r][1], "■", r.value) for r in sorted(roles, key=list(Role).index)]
    else:
        boxes = [_key(heat_colour(t), "■", f"{round(100 * t)}%") for t in (0.1, 0.25, 0.5, 0.75, 1)]
        boxes.append(html.escape(f"of the largest box's {_HEAT_WORDS[scene.heat]}"))
    kinds: list[tuple[EdgeKind, str | None]] = []
    for ln in scene.links:
        if (ln.kind, ln.merge) not in kinds:
            kinds.append((ln.kind, ln.merge))
    lines = []
    for kind, merge in kinds:
        attrs = dict(EDGE_STYLES[kind])
        if kind is EdgeKind.SKIP and merge in SKIP_STYLES:
            attrs.update(SKIP_STYLES[merge])
        glyph = {"dashed": "╌╌▶", "dotted": "┈┈▷"}.get(attrs.get("style", ""), "━━▶")
        text = {EdgeKind.DATA: "data", EdgeKind.COND: "conditioning"}.get(kind) or f"skip ({merge})"
        lines.append(_key(attrs["color"], glyph, text))
    for m in _present([*(it.mark for it in scene.items), *(ln.mark for ln in scene.links)]):
        lines.append(_key(MARK_STYLES[m][0]["color"], "□", f"{MARK_STYLES[m][2].strip()} {m}"))
    return ["    ".join(row) for row in (boxes, lines) if row]


def _graph_label(scene: Scene, legend: bool) -> str:
    """The title, and under it the legend, as one HTML label above the drawing (a legend node
    would sit in some row of the U and stretch it)."""
    rows = [f'<font point-size="14"><b>{html.escape(scene.title)}</b></font>']
    if legend and scene.items:
        rows += _legend_rows(scene)
    return "<" + "<br/>".join(rows) + "<br/>>"


def _present(marks: Iterable[str | None]) -> list[str]:
    found = {m for m in marks if m}
    return [m for m in MARK_STYLES if m in found]


def to_dot(scene: Scene, *, direction: str = "TB", legend: bool = True) -> str:
    """The whole DOT source of ``scene``."""
    name = scene.name
    if not (name.isascii() and name.isidentifier()) or name.lower() in DOT_KEYWORDS:
        name = _q(name)  # as the graphviz package quotes it, so render()'s source is this text
    return f"digraph {name} {{\n" + "".join(dot_lines(scene, direction=direction, legend=legend)) + "}\n"
