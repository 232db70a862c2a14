"""The U layout: which side of the U each box goes on, which way each edge runs, which boxes share a row.

The layout is decided from roles and levels only, never from names, so any topology built
from the standard roles draws as a U: the encoder arm (inputs, stems, encoders, downsamplers)
descends on the left, the bottleneck sits at the bottom, the decoder arm (upsamplers, merges,
decoders, heads) ascends on the right, and conditioning (embeddings) floats in the middle.

Graphviz's ``dot`` ranks nodes top to bottom along edges. So edges of the descending arm
run forward, edges of the ascending arm are handed to ``dot`` reversed (and drawn with
``dir=back``, so the arrow still points the right way), skips tie their two ends to one
row (``rank=same``), and conditioning edges do not constrain the layout at all. A level
with no skip still gets its encoder and decoder tied to one row, so every level reads
across. Everything here is linear in the number of boxes and edges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from ..types import EdgeKind, Role

__all__ = ["Side", "Flow", "SIDES", "Placement", "place"]

Side = Literal["left", "centre", "right"]
Flow = Literal["down", "up", "flat", "free"]

#: Where each role sits: the U's left arm, its bottom/middle, or its right arm.
SIDES: dict[Role, Side] = {
    Role.INPUT: "left",
    Role.STEM: "left",
    Role.ENCODER: "left",
    Role.DOWN: "left",
    Role.BOTTLENECK: "centre",
    Role.EMBEDDING: "centre",
    Role.UP: "right",
    Role.MERGE: "right",
    Role.DECODER: "right",
    Role.HEAD: "right",
}


@dataclass(frozen=True)
class Box:
    """What the layout needs to know about a box: its id, role and level."""

    id: str
    role: Role
    level: int | None


@dataclass(frozen=True)
class Arrow:
    """What the layout needs to know about an edge."""

    src: str
    dst: str
    kind: EdgeKind


@dataclass(frozen=True)
class Placement:
    """The layout decisions.

    Attributes:
        side: per box id, ``"left"``, ``"centre"`` or ``"right"``.
        aux: box ids that float in the middle (embeddings and the inputs only they use).
        flow: per edge (same order as given), ``"down"`` (drawn forward, ranks below),
            ``"up"`` (handed to dot reversed), ``"flat"`` (same row, src left of dst) or
            ``"free"`` (no constraint: conditioning).
        ties: pairs of box ids on one row, the first left of the second.
    """

    side: dict[str, Side]
    aux: frozenset[str]
    flow: tuple[Flow, ...]
    ties: tuple[tuple[str, str], ...]


def place(boxes: Sequence[Box], arrows: Sequence[Arrow]) -> Placement:
    """Decide the U layout of ``boxes`` (in topological order) joined by ``arrows``."""
    by_id = {b.id: b for b in boxes}
    side: dict[str, Side] = {b.id: SIDES[b.role] for b in boxes}
    aux = _aux(boxes, arrows, by_id)
    sources = {a.src for a in arrows if a.kind is EdgeKind.SKIP}
    flow = tuple(_flow(a, side, aux, sources, by_id) for a in arrows)
    ties = [(a.src, a.dst) for a, f in zip(arrows, flow) if f == "flat"]
    ties += _level_ties(boxes, arrows, side, aux, flow, by_id)
    return Placement(side, frozenset(aux), flow, tuple(ties))


def _aux(boxes: Sequence[Box], arrows: Sequence[Arrow], by_id: dict[str, Box]) -> set[str]:
    """Embeddings, and inputs whose every consumer is an embedding or takes them as conditioning."""
    aux = {b.id for b in boxes if b.role is Role.EMBEDDING}
    feeds: dict[str, list[Arrow]] = {}
    for a in arrows:
        feeds.setdefault(a.src, []).append(a)
    for b in boxes:
        out = feeds.get(b.id, [])
        if b.role is Role.INPUT and out and all(a.kind is EdgeKind.COND or a.dst in aux for a in out):
            aux.add(b.id)
    return aux


def _flow(a: Arrow, side: dict[str, Side], aux: set[str], sources: set[str], by_id: dict[str, Box]) -> Flow:
    if a.kind is EdgeKind.COND:
        return "free"
    if a.kind is EdgeKind.SKIP:
        return "flat"
    if a.src in aux or a.dst in aux:
        return "down" if a.src in aux and a.dst in aux else "free"
    s, d = side[a.src], side[a.dst]
    if s == d == "right" and a.dst in sources and by_id[a.src].level == by_id[a.dst].level:
        # a decoder that feeds a skip sits on its level's row (nested U-Nets: UNet++)
        return "flat"
    if s == d:
        return {"left": "down", "centre": "flat", "right": "up"}[s]  # type: ignore[return-value]
    if (s, d) == ("left", "centre"):
        return "down"
    if (s, d) == ("centre", "right"):
        return "up"
    # across the U without a skip (a one-level graph, or an unusual topology): by level
    ls, ld = by_id[a.src].level, by_id[a.dst].level
    if ls is None or ld is None or ls == ld:
        return "flat" if (s, d) == ("left", "right") else "down"
    return "up" if ld < ls else "down"


def _level_ties(
    boxes: Sequence[Box],
    arrows: Sequence[Arrow],
    side: dict[str, Side],
    aux: set[str],
    flow: Sequence[Flow],
    by_id: dict[str, Box],
) -> list[tuple[str, str]]:
    """For each level whose arms no skip ties together, tie the last box of its left arm to the
    first non-upsampling box of its right arm."""
    tied = {by_id[a.src].level for a, f in zip(arrows, flow) if f == "flat" and side[a.src] != side[a.dst]}
    last_left: dict[int, str] = {}
    first_right: dict[int, str] = {}
    for b in boxes:
        if b.level is None or b.id in aux or b.level in tied:
            continue
        if side[b.id] == "left":
            last_left[b.level] = b.id
        elif side[b.id] == "right" and b.role is not Role.UP:
            first_right.setdefault(b.level, b.id)
    return [(last_left[lv], first_right[lv]) for lv in sorted(last_left) if lv in first_right]
