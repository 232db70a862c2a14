"""Drawing a U-Net as a U: graphviz figures at three levels of detail, and notebook display.

``g.render(...)`` returns a ``graphviz.Digraph`` laid out as a U: the encoder descends on
the left, the bottleneck sits at the bottom, the decoder ascends on the right, each skip
runs straight across, and conditioning arrows float without bending the layout. The pieces:

* :mod:`.scene`: what to draw (boxes and arrows, with labels from the static cost model);
* :mod:`.layout`: where it goes (sides, edge directions, rows), from roles and levels;
* :mod:`.emit`: the DOT text (colours, styles, legend);
* :mod:`.engine`: running ``dot`` and writing files.

Only :func:`render` needs the ``graphviz`` Python package and only SVG/PNG/PDF need the
``dot`` program; :func:`to_dot` needs neither.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from ..diff import GraphDiff
from ..errors import RenderError
from ..graph import UNetGraph
from ..util import short_repr
from .emit import DIRECTIONS, dot_lines
from .emit import to_dot as _scene_dot
from .engine import INSTALL_DOT, INSTALL_PY, find_dot, run_dot, write_figure
from .scene import ANNOTATIONS, DETAILS, HEATS, MARKS, Item, Link, Scene, scene

if TYPE_CHECKING:
    import graphviz

__all__ = [
    "render",
    "diff_scene",
    "to_dot",
    "to_svg",
    "save_figure",
    "scene",
    "Scene",
    "Item",
    "Link",
    "repr_mimebundle",
    "DETAILS",
    "ANNOTATIONS",
    "HEATS",
    "MARKS",
    "DIRECTIONS",
    "INSTALL_DOT",
    "INSTALL_PY",
    "find_dot",
]

Shape = Sequence[int] | Mapping[str, Sequence[int]]

#: above this many nodes a notebook shows the levels view (dot slows down on thousands of boxes)
REPR_MAX_BLOCKS = 200


def _scene(
    source: UNetGraph | Scene,
    detail: str,
    input_shape: Shape | None,
    annotate: Iterable[str] | None,
    heat: str | None,
    marks: Mapping[Any, str] | None,
    pad: str | None = None,
) -> Scene:
    if isinstance(source, Scene):
        if input_shape is not None or annotate is not None or heat is not None or pad is not None:
            raise RenderError("a Scene is already annotated: pass input_shape/annotate/heat/pad when building it")
        return source.marked(marks) if marks else source
    if not isinstance(source, UNetGraph):
        raise RenderError(f"render: expected a UNetGraph or a Scene, got {type(source).__name__}")
    return scene(source, detail, input_shape=input_shape, annotate=annotate, heat=heat, marks=marks, pad=pad)


def to_dot(
    source: UNetGraph | Scene,
    detail: str = "blocks",
    *,
    input_shape: Shape | None = None,
    annotate: Iterable[str] | None = None,
    direction: str = "TB",
    heat: str | None = None,
    marks: Mapping[Any, str] | None = None,
    legend: bool = True,
    pad: str | None = None,
) -> str:
    """The DOT source of the drawing :func:`render` makes; needs neither graphviz package nor ``dot``."""
    s = _scene(source, detail, input_shape, annotate, heat, marks, pad)
    return _scene_dot(s, direction=direction, legend=legend)


def render(
    source: UNetGraph | Scene,
    detail: str = "blocks",
    *,
    input_shape: Shape | None = None,
    annotate: Iterable[str] | None = None,
    direction: str = "TB",
    heat: str | None = None,
    marks: Mapping[Any, str] | None = None,
    legend: bool = True,
    pad: str | None = None,
) -> graphviz.Digraph:
    """Draw ``source`` as a U.

    Args:
        source: the graph (or a prepared :class:`Scene`).
        detail: ``"levels"`` (one box per level and side), ``"blocks"`` (one box per node) or
            ``"layers"`` (every layer, framed by its block; lowers the graph on the meta device).
        input_shape: ``(N, C, *spatial)``: labels then show each output shape, and FLOPs and
            memory become available. Without it labels show the type (``64ch@1/2``).
        annotate: any of ``"shape"``, ``"params"``, ``"flops"``, ``"memory"`` (default:
            shape and params, plus FLOPs with an input shape).
        direction: graphviz ``rankdir``: ``"TB"`` draws the U upright, ``"LR"`` on its side.
        heat: colour boxes by their share of ``"flops"``, ``"params"`` or ``"memory"``.
        marks: node name or ``(src, dst)`` edge → ``"added"``, ``"removed"`` or
            ``"changed"``, e.g. to draw a diff.
        legend: draw the legend (roles, edge kinds, marks, heat scale).
        pad: ``"auto"`` draws a graph lowered with ``pad="auto"`` at the size it runs at:
            ``input_shape`` may be any size and is padded up to the next valid one (as
            :func:`unetgraph.check.check` with ``pad="auto"``).

    Returns:
        A ``graphviz.Digraph``: display it in a notebook, ``.render()``/``.pipe()`` it, or
        read ``.source``.

    Raises:
        RenderError: a bad option, or the ``graphviz`` Python package is missing
            (``pip install 'unetgraph[graphviz]'``).
    """
    s = _scene(source, detail, input_shape, annotate, heat, marks, pad)
    lines = dot_lines(s, direction=direction, legend=legend)
    try:
        import graphviz
    except ImportError:
        raise RenderError(
            f"render() returns a graphviz.Digraph, which needs the graphviz Python package: {INSTALL_PY}; "
            "to_dot() gives the DOT text without it"
        ) from None
    return graphviz.Digraph(name=s.name, body=lines)


def to_svg(source: UNetGraph | Scene, detail: str = "blocks", **options: Any) -> str:
    """The drawing as SVG text (needs ``dot``); options as for :func:`render`."""
    return run_dot(to_dot(source, detail, **options), "svg").decode("utf-8")


# The largest ``dpi`` save_figure takes: print resolution; more only makes huge PNGs slowly.
MAX_DPI = 1200


def save_figure(
    source: UNetGraph | Scene, path: str | os.PathLike[str], detail: str = "blocks", *, dpi: int = 150, **options: Any
) -> Path:
    """Write the drawing to ``path`` (``.svg``, ``.png``, ``.pdf``, ``.json`` or ``.dot``/``.gv``),
    atomically; options as for :func:`render`. ``dpi`` (an int, 1 to :data:`MAX_DPI`) applies to PNG.

    Raises:
        RenderError: an unknown suffix, a ``dpi`` out of range, or ``dot`` is missing for
            anything but DOT text.
    """
    if not isinstance(dpi, int) or isinstance(dpi, bool) or not 1 <= dpi <= MAX_DPI:
        raise RenderError(f"save_figure: dpi must be an int from 1 to {MAX_DPI}, got {short_repr(dpi)}")
    source_text = to_dot(source, detail, **options)
    return write_figure(source_text, path, dpi=dpi if Path(path).suffix.lower() == ".png" else None)


# a diff status → how the drawing marks it ("retyped": same block, new inputs, so its weights change)
_DIFF_MARKS = {"added": "added", "changed": "changed", "retyped": "changed"}


def diff_scene(
    d: GraphDiff,
    detail: str = "blocks",
    *,
    input_shape: Shape | None = None,
    annotate: Iterable[str] | None = None,
    heat: str | None = None,
) -> Scene:
    """Both graphs of a diff in one drawing: ``d.b`` with its added and changed parts marked,
    plus ``d.a``'s removed nodes and edges, marked removed, in their places in the U.

    Pass the result to :func:`render`, :func:`to_dot` or :func:`save_figure`; ``d.render()``
    does it in one call. ``input_shape`` must fit both graphs.
    """
    marks: dict[Any, str] = {n: _DIFF_MARKS[s] for n, s in d.status.items() if s in _DIFF_MARKS}
    marks.update({e: _DIFF_MARKS[s] for e, s in d.edge_status.items() if s in _DIFF_MARKS})
    new = scene(d.b, detail, input_shape=input_shape, annotate=annotate, heat=heat, marks=marks)
    old = scene(d.a, detail, input_shape=input_shape, annotate=annotate, heat=heat)
    return replace(
        new.union(old, mark="removed"), name=f"{d.a.name}_vs_{d.b.name}" if d.a.name != d.b.name else new.name
    )


def repr_mimebundle(g: UNetGraph, include: Any = None, exclude: Any = None) -> dict[str, str]:
    """What a notebook shows for ``g``: the U as SVG when ``dot`` is installed, always its text.

    Never raises: without ``dot`` (or if drawing fails) the bundle has text only.
    """
    bundle = {"text/plain": repr(g)}
    try:
        find_dot()
        detail = "blocks" if len(g) <= REPR_MAX_BLOCKS else "levels"
        bundle["image/svg+xml"] = run_dot(to_dot(g, detail), "svg", timeout=30).decode("utf-8")
    except Exception:  # a repr must not raise; the text stays
        pass
    return bundle
