"""The static shape checker: every node's exact shapes for an input shape, and the valid input sizes.

Nothing here runs a tensor. Shapes come from the inferred :class:`~unetgraph.types.TensorType`
of each edge (channels) and from each block's size ops (:mod:`unetgraph.sizes`, spatial
sizes with PyTorch's floor rules), so the report is exact for valid (unpadded) convolutions
and odd sizes too.
"""

from __future__ import annotations

import html
from contextvars import ContextVar
from dataclasses import dataclass, replace
from math import lcm
from typing import Any, Iterator, Mapping, Sequence

from . import contract
from .errors import ShapeError
from .graph import Edge, Node, UNetGraph
from .sizes import SizeFailure, SizeOp, apply_ops
from .types import AXIS_NAMES, Role, format_dims
from .util import paused_gc

__all__ = ["Row", "CheckReport", "AxisRule", "SizeRules", "check", "valid_sizes", "pad_rules", "outputs_text"]

Shape = tuple[int, ...]

_SCAN_LIMIT = 1 << 14
_FITTING: ContextVar[bool] = ContextVar("fitting", default=False)  # valid_sizes is running check


@dataclass(frozen=True)
class Row:
    """One node's line of a :class:`CheckReport`."""

    name: str
    role: Role
    level: int | None
    block: str
    inputs: tuple[Shape, ...]
    output: Shape
    params: int
    note: str = ""
    outputs: tuple[Shape, ...] = ()
    """Every output's shape, in port order: ``(output,)``, or a backbone's feature maps (``output``
    is then the last, deepest one)."""

    def __post_init__(self) -> None:
        if not self.outputs:
            object.__setattr__(self, "outputs", (self.output,))


class CheckReport:
    """The result of :func:`check`: one :class:`Row` per node, in topological order.

    ``report["enc2"].output`` is a node's output shape, ``report.outputs`` the model's,
    ``report.params`` the total parameter count; ``print(report)`` shows the table and a
    Jupyter cell renders it as HTML. ``report.padded_from`` holds the input shapes given when
    the report was made at the padded size (``check(g, shape, pad="auto")``), else ``None``.
    """

    def __init__(
        self,
        graph: UNetGraph,
        inputs: Mapping[str, Shape],
        rows: Sequence[Row],
        padded_from: Mapping[str, Shape] | None = None,
    ) -> None:
        self.name = graph.name
        self.padded_from = None if padded_from is None else dict(padded_from)
        self.inputs = dict(inputs)
        self.rows = tuple(rows)
        self._by_name = {r.name: r for r in self.rows}
        self.outputs = {o: self._by_name[o].output for o in graph.outputs}

    def __getitem__(self, name: str) -> Row:
        try:
            return self._by_name[name]
        except KeyError:
            raise ShapeError(f"the report has no node {name!r}", node=str(name)) from None

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def notes(self) -> list[str]:
        """Warnings that do not stop the model, e.g. a pooling that drops an odd row."""
        return [f"{r.name}: {r.note}" for r in self.rows if r.note]

    def _cells(self) -> list[list[str]]:
        return [
            [
                r.name,
                r.role.value,
                "" if r.level is None else str(r.level),
                r.block,
                " + ".join(format_dims(s) for s in r.inputs),
                outputs_text(r.outputs),
                f"{r.params:,}",
            ]
            for r in self.rows
        ]

    def summary(self) -> str:
        ins = ", ".join(f"{k} {v}" for k, v in self.inputs.items())
        if self.padded_from is not None:
            given = [f"{k} {v}" for k, v in self.padded_from.items() if v != self.inputs[k]]
            ins += f" (pad='auto' of {', '.join(given)})" if given else " (pad='auto': already valid)"
        outs = ", ".join(f"{k} {v}" for k, v in self.outputs.items())
        return f"{self.name}: {ins} → {outs} · {len(self.rows)} nodes · {self.params:,} params"

    def __str__(self) -> str:
        head = ["node", "role", "lvl", "block", "in (C×spatial)", "out", "params"]
        cells = self._cells()
        widths = [max(len(row[i]) for row in [head, *cells]) for i in range(len(head))]
        right = {2, 6}

        def line(row: list[str]) -> str:
            return "  ".join(
                c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))
            ).rstrip()

        lines = [self.summary(), line(head), line(["─" * w for w in widths])]
        lines += [line(r) for r in cells]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<CheckReport {self.summary()}>"

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in ["node", "role", "level", "block", "in", "out", "params"])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self._cells())
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return (
            f"<p><b>{html.escape(self.summary())}</b></p><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>" + (f"<ul>{notes}</ul>" if notes else "")
        )


def outputs_text(outputs: Sequence[Shape]) -> str:
    """One output's dims, or every output's of a node with several: ``64×128×128 … 512×8×8 (5)``."""
    if len(outputs) == 1:
        return format_dims(outputs[0])
    return f"{format_dims(outputs[0])} … {format_dims(outputs[-1])} ({len(outputs)})"


def _at(shapes: Mapping[object, Any], e: Edge) -> Any:
    """The shape on edge ``e``: of the output it takes (``(node, out)`` keys for nodes with several)."""
    return shapes[(e.src, e.out)] if (e.src, e.out) in shapes else shapes[e.src]


def _spatial(sizes: Sequence[int]) -> str:
    return "×".join(map(str, sizes))


# -- the plan: per non-input node, its spatial inputs and size ops --------------------


@dataclass(frozen=True)
class _Step:
    node: Node
    edges: tuple[Edge, ...]  # all inputs, port order
    spatial: tuple[int, ...]  # indices into edges of the spatial inputs
    ops: tuple[tuple[SizeOp, ...], ...]  # per axis
    port_ops: tuple[tuple[tuple[SizeOp, ...], ...], ...] = ()  # per output, per axis: nodes with several outputs


def _plan(g: UNetGraph) -> list[_Step]:
    steps = []
    for n in g:
        node = g[n]
        if node.role is Role.INPUT:
            continue
        edges = tuple(g.in_edges(n))
        spatial = tuple(i for i, e in enumerate(edges) if e.type.dims > 0)
        dims = node.type.dims
        port_ops: tuple[tuple[tuple[SizeOp, ...], ...], ...] = ()
        try:
            ops = tuple(node.block.size_ops(dims, a) for a in range(dims)) if spatial and len(node.outputs) == 1 else ()
            if spatial and len(node.outputs) > 1:
                per_axis = [node.block.output_size_ops(node.inputs, dims, a) for a in range(dims)]
                port_ops = tuple(tuple(axis[k] for axis in per_axis) for k in range(len(node.outputs)))
        except ShapeError as e:
            raise e.at(n, node.block.label()) from e
        steps.append(_Step(node, edges, spatial, ops, port_ops))
    return steps


def _agree(step: _Step, sizes: Sequence[Shape]) -> Shape | str:
    """The size a multi-input node works at, or a message saying why its inputs disagree."""
    node, edges = step.node, step.edges
    spatial = [(edges[i], sizes[i]) for i in step.spatial]
    main_edge, main = spatial[-1]
    policy = node.block.size_policy
    for e, s in spatial[:-1]:
        if policy == "crop":
            if any(a < b for a, b in zip(s, main)):
                return (
                    f"{node.describe()} cannot crop {e.describe()} ({_spatial(s)}) to the "
                    f"{_spatial(main)} of {main_edge.describe()}"
                )
        elif s != main:
            hint = ""
            if all(a - b >= 2 and (a - b) % 2 == 0 for a, b in zip(s, main)):
                hint = " (the decoder path is smaller, as with valid convolutions: use Merge(crop=True))"
            return (
                f"{node.describe()} receives {_spatial(main)} from {main_edge.describe()} but "
                f"{_spatial(s)} from {e.describe()}{hint}"
            )
    return main


@paused_gc()
def check(
    g: UNetGraph, input_shape: Sequence[int] | Mapping[str, Sequence[int]], *, pad: str | None = None
) -> CheckReport:
    """Compute every node's input and output shapes for ``input_shape``, statically.

    Args:
        g: the graph.
        input_shape: ``(N, C, *spatial)`` for a graph with one input, or a mapping from
            input names to shapes.
        pad: ``"auto"``: the shapes a module lowered with ``pad="auto"`` runs at, the spatial
            input padded up to the next valid size (:meth:`SizeRules.padded`); the report says
            so (``report.padded_from`` holds the shapes given). ``None``: the shapes as given.

    Returns:
        A :class:`CheckReport`.

    Raises:
        ShapeError: the input has the wrong rank or channels, or some node cannot take what
            reaches it (sizes that disagree at a merge, a size too small for a window). The
            message names the node, the edges and the sizes, and says which input sizes fit.
    """
    if pad not in (None, "auto"):
        raise ShapeError(f"pad: expected None or 'auto', got {pad!r}")
    inputs = _input_shapes(g, input_shape)
    given = None
    if pad == "auto":
        rules = pad_rules(g)
        given = dict(inputs)
        x = inputs[rules.input]
        inputs[rules.input] = (*x[:2], *rules.padded(x[2:]))
    rows = [Row(n, Role.INPUT, g[n].level, g[n].block.label(), (), inputs[n], 0) for n in g.inputs]
    _propagate(g, _plan(g), inputs, rows)
    return CheckReport(g, inputs, rows, padded_from=given)


def _propagate(g: UNetGraph, plan: Sequence[_Step], inputs: Mapping[str, Shape], rows: list[Row] | None) -> None:
    """Walk ``plan`` from ``inputs``, raising where a node cannot take what reaches it; append
    each node's :class:`Row` to ``rows`` when given (``None``: only the verdict)."""
    shapes: dict[object, Shape] = {name: shape for name, shape in inputs.items()}
    for step in plan:
        node = step.node
        ins = tuple(_at(shapes, e) for e in step.edges)
        batch = ins[0][0]
        notes: list[str] = []
        outs: tuple[Shape, ...] = ()
        if not step.spatial:
            out: Shape = (batch, node.type.channels) + (() if node.type.dims == 0 else ins[0][2:])
        else:
            base = _agree(step, [s[2:] for s in ins])
            if isinstance(base, str):
                raise ShapeError(base + _hint(g, shapes), node=node.name)
            for k, ops in enumerate(step.port_ops or (step.ops,)):
                size, lossy = _apply(g, shapes, step, ops, base)
                if lossy:
                    axes = AXIS_NAMES[node.type.dims]
                    notes.append(
                        f"drops trailing positions of {', '.join(f'{axes[a]}={base[a]}' for a in lossy)} "
                        "(floor); the next layers see a shifted grid"
                    )
                outs += ((batch, node.outputs[k].channels, *size),)
            out = outs[-1]
        try:
            notes += node.block.shape_notes(ins, out)
        except ShapeError as e:
            raise e.at(node.name, node.block.label()) from None
        shapes[node.name] = out
        if len(outs) > 1:
            shapes.update(((node.name, k), s) for k, s in enumerate(outs))
        if rows is not None:
            label, params = node.block.label(), node.params
            if len(outs) > 1:
                notes = list(dict.fromkeys(notes))
            rows.append(Row(node.name, node.role, node.level, label, ins, out, params, "; ".join(notes), outs))


def _apply(
    g: UNetGraph, shapes: Mapping[object, Shape], step: _Step, ops: Sequence[tuple[SizeOp, ...]], base: Shape
) -> tuple[list[int], list[int]]:
    """The spatial size one output of ``step`` gets from ``base``, and the axes where a floor dropped positions."""
    size, lossy = [], []
    for axis, axis_ops in enumerate(ops):
        try:
            n, exact = apply_ops(axis_ops, base[axis])
        except SizeFailure as e:
            src = step.edges[step.spatial[-1]].describe()
            raise ShapeError(
                f"{step.node.describe()} receives {_spatial(base)} from {src}: {e}" + _hint(g, shapes, too_small=True),
                node=step.node.name,
            ) from None
        size.append(n)
        if not exact:
            lossy.append(axis)
    return size, lossy


def _input_shapes(g: UNetGraph, input_shape: Sequence[int] | Mapping[str, Sequence[int]]) -> dict[str, Shape]:
    if isinstance(input_shape, Mapping):
        given = dict(input_shape)
        missing = [n for n in g.inputs if n not in given]
        extra = [n for n in given if n not in g.inputs]
        if missing or extra:
            raise ShapeError(
                f"input shapes: graph {g.name} takes {', '.join(g.inputs)}"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; no input named {', '.join(map(str, extra))}" if extra else "")
            )
    elif len(g.inputs) == 1:
        given = {g.inputs[0]: input_shape}
    else:
        raise ShapeError(f"graph {g.name} has inputs {', '.join(g.inputs)}: give a dict of shapes")
    shapes: dict[str, Shape] = {}
    for name, given_shape in given.items():
        t = g[name].type
        try:
            shape = tuple(given_shape)
            ok = all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
        except TypeError:
            ok = False
        if not ok:
            raise ShapeError(
                f"input {name} expects a shape {t.pattern()} of positive integers, got {given_shape!r}", node=name
            )
        why = contract.shape_problem(name, shape, t.form, t.channels, t.axes if t.form == "dense" else ())
        if why is not None:
            raise ShapeError(why, node=name)
        shapes[name] = shape
    batches = {s[0] for s in shapes.values()}
    if len(batches) > 1:
        raise ShapeError(f"inputs disagree on the batch size: {', '.join(f'{k} {v}' for k, v in shapes.items())}")
    return shapes


def _hint(g: UNetGraph, shapes: Mapping[object, Shape], too_small: bool = False) -> str:
    """``": input height 70 is not a multiple of 16"``, or nothing when the sizes can't explain it."""
    if _FITTING.get():
        return ""
    try:
        rules = valid_sizes(g)
    except ShapeError:
        return ""
    spatial = shapes[rules.input][2:]
    why = rules.explain(spatial)
    if why is None:
        return ""
    if too_small and any(n < r.minimum for n, r in zip(spatial, rules.axes)):
        levels = len(g.levels)
        return f": the input {_spatial(spatial)} is too small for {levels} levels; {rules}"
    return f": {why}; {rules}"


# -- valid input sizes ---------------------------------------------------------------


@dataclass(frozen=True)
class AxisRule:
    """The valid sizes along one axis: ``minimum + step*k + o`` for ``k ≥ 0`` and ``o`` in ``offsets``.

    ``margin`` says how the output relates to the input at valid sizes: the output is
    ``input - 2*margin`` (0 for padded U-Nets, 92 for the original valid U-Net), or
    ``None`` when the output is not aligned with the input (e.g. a different scale).
    """

    axis: str
    minimum: int
    step: int
    offsets: tuple[int, ...] = (0,)
    margin: int | None = 0

    def __contains__(self, n: object) -> bool:
        return isinstance(n, int) and contract.axis_contains(n, self.minimum, self.step, self.offsets)

    def next(self, n: int) -> int:
        """The smallest valid size ``≥ n``."""
        return contract.next_valid(n, self.minimum, self.step, self.offsets)

    def sizes(self, count: int = 4) -> list[int]:
        """The first ``count`` valid sizes."""
        return contract.axis_sizes(self.minimum, self.step, self.offsets, count)

    def describe(self, plural: bool = False) -> str:
        return contract.describe_axis(self.minimum, self.step, self.offsets, plural)

    def explain(self, n: int) -> str | None:
        """Why ``n`` is not valid (``None`` if it is)."""
        return contract.axis_problem(self.axis, n, self.minimum, self.step, self.offsets)

    def as_tuple(self) -> tuple[str, int, int, tuple[int, ...], int]:
        """``(axis, minimum, step, offsets, margin)``: the plain data the input contract
        (:mod:`unetgraph.contract`, the lowered module's guard and padding) works on."""
        return (self.axis, self.minimum, self.step, self.offsets, self.margin or 0)


@dataclass(frozen=True)
class SizeRules:
    """The valid spatial sizes of a graph's input, one :class:`AxisRule` per axis.

    ``str(rules)`` reads like "H and W must be multiples of 16, at least 16".
    """

    input: str
    axes: tuple[AxisRule, ...]

    def __str__(self) -> str:
        groups: dict[tuple, list[str]] = {}
        for r in self.axes:
            groups.setdefault((r.minimum, r.step, r.offsets), []).append(r.axis)
        parts = []
        for key, names in groups.items():
            rule = next(r for r in self.axes if (r.minimum, r.step, r.offsets) == key)
            many = len(names) > 1
            subject = " and ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " and " + names[-1]
            desc = rule.describe(plural=many)
            verb = "may be" if desc == "any size" else "must be"
            parts.append(f"{subject} {verb} {desc}")
        return "; ".join(parts)

    def contains(self, spatial: Sequence[int]) -> bool:
        return len(spatial) == len(self.axes) and all(n in r for n, r in zip(spatial, self.axes))

    def next_valid(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """The smallest valid size at least ``spatial`` on every axis."""
        return tuple(r.next(n) for n, r in zip(spatial, self.axes))

    def padded(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """The size ``lower(pad="auto")`` pads ``spatial`` to: the next valid size, with the margin a
        valid-convolution network consumes padded too."""
        return tuple(n + sum(contract.padding(n, r.as_tuple())) for n, r in zip(spatial, self.axes))

    def explain(self, spatial: Sequence[int]) -> str | None:
        """Why ``spatial`` does not fit (the first failing axis), or ``None``."""
        for n, r in zip(spatial, self.axes):
            why = r.explain(n)
            if why:
                return why
        return None

    @property
    def margin(self) -> tuple[int, ...] | None:
        """Per axis, how much smaller than the input the output is on each side (``None``: not aligned)."""
        m = tuple(r.margin for r in self.axes)
        return None if any(v is None for v in m) else m  # type: ignore[return-value]


@paused_gc()
def valid_sizes(g: UNetGraph, *, exact: bool = True) -> SizeRules:
    """Which spatial sizes of the input fit the graph, per axis.

    A size fits when every node accepts what reaches it and, with ``exact=True``, no
    down-sampling drops trailing positions (so tiles line up, as the original U-Net asks).
    ``exact=False`` gives every size :func:`check` accepts (they differ only where merges
    crop). The rule is found by evaluating the size ops along each axis: the smallest
    fitting size, then the pattern that repeats with the graph's total stride. Limits that
    count all axes at once then raise the minimum until the smallest sizes pass :func:`check`
    at batch 1, so a valid size fits every batch size: a norm's limits follow what its
    statistics are taken over (``ug.NormKind.stats``, whatever the norm is called), e.g. one
    per sample and channel needs more than one position, one per group more than one value.

    Raises:
        ShapeError: the graph has several spatial inputs, or no size up to 16384 fits.
    """
    spatial_inputs = [n for n in g.inputs if g[n].type.dims > 0]
    if len(spatial_inputs) != 1:
        raise ShapeError(
            f"valid_sizes needs one spatial input; graph {g.name} has {', '.join(spatial_inputs) or 'none'}"
        )
    x = spatial_inputs[0]
    dims = g[x].type.dims
    plan = _plan(g)
    out = g.outputs[0]
    rules = []
    for axis in range(dims):
        step = 1
        for n in g:
            for t in g[n].outputs:
                if t.dims == dims:
                    step = lcm(step, t.scale[axis].denominator)
        rules.append(_axis_rule(plan, x, out, axis, step, AXIS_NAMES[dims][axis], g[out].type.dims == dims, exact))
    return SizeRules(x, _fit_whole_shape(g, plan, tuple(rules)))


def pad_rules(g: UNetGraph) -> SizeRules:
    """The valid sizes ``pad="auto"`` pads the spatial input up to (exact: nothing rounded away),
    and so the output can be cropped back to the input's size.

    Raises:
        ShapeError: ``g`` has no single spatial input, no valid size, or a first output that is
            not at the input's scale and aligned with it.
    """
    spatial = [n for n in g.inputs if g[n].type.dims > 0]
    if len(spatial) != 1:
        raise ShapeError(
            f"pad='auto' pads the spatial input up to a valid size; graph {g.name} has "
            + (f"{len(spatial)} spatial inputs" if spatial else "no spatial input")
            + f" ({', '.join(f'{n} {g[n].type.pattern()}' for n in g.inputs)})"
        )
    rules = valid_sizes(g)
    out = g[g.outputs[0]].type
    if rules.margin is None or any(s != 1 for s in out.scale):
        raise ShapeError(
            f"pad='auto' needs an output at the input's scale and aligned with it; "
            f"{g.outputs[0]} is at scale {out.scale}",
            node=g.outputs[0],
        )
    return rules


def input_shapes_at(
    g: UNetGraph, spatial: Sequence[int], *, batch: int = 1, context_length: int = 8
) -> dict[str, tuple[int, ...]]:
    """The shape of every input of ``g`` with its image inputs at ``spatial`` (not checked):
    timesteps and labels ``(N,)``, contexts ``(N, L, D)``, vectors ``(N, D)``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name in g.inputs:
        t = g[name].type
        if t.form in ("scalar", "index"):
            shapes[name] = (batch,)
        elif t.form == "sequence":
            shapes[name] = (batch, context_length, t.channels)
        else:
            shapes[name] = (batch, t.channels, *(spatial if t.dims else ()))
    return shapes


def _fit_whole_shape(g: UNetGraph, plan: Sequence[_Step], rules: tuple[AxisRule, ...]) -> tuple[AxisRule, ...]:
    """Raise every axis' minimum until the smallest sizes pass :func:`check` together at batch 1.

    The per-axis scan cannot see limits that count the positions of all axes at once (an
    InstanceNorm needs more than one, a GroupNorm more than one value per group)."""
    token = _FITTING.set(True)
    try:
        for _ in range(64):
            try:
                _propagate(g, plan, input_shapes_at(g, [r.minimum for r in rules]), None)
                return rules
            except ShapeError as e:
                failure = e
            rules = tuple(_from_next(r) for r in rules)
        raise ShapeError(f"no input size fits graph {g.name}: {failure}") from failure
    finally:
        _FITTING.reset(token)


def _from_next(r: AxisRule) -> AxisRule:
    """The same sizes, starting at the next one."""
    first = r.next(r.minimum + 1)
    return replace(r, minimum=first, offsets=tuple(sorted((r.minimum + o - first) % r.step for o in r.offsets)))


def _run_axis(plan: Sequence[_Step], x: str, axis: int, n: int, exact: bool) -> dict[object, int] | None:
    """Sizes along ``axis`` of every node for input size ``n``; ``None`` if it does not fit."""
    sizes: dict[object, int] = {x: n}
    for step in plan:
        if not step.spatial:
            continue
        vals = [_at(sizes, step.edges[i]) for i in step.spatial]
        base = vals[-1]
        if step.node.block.size_policy == "crop":
            if any(v < base for v in vals):
                return None
        elif any(v != base for v in vals):
            return None
        for k, ops in enumerate(step.port_ops or (step.ops,)):
            try:
                size, whole = apply_ops(ops[axis], base)
            except SizeFailure:
                return None
            if exact and not whole:
                return None
            if step.port_ops:
                sizes[(step.node.name, k)] = size
        sizes[step.node.name] = size
    return sizes


def _axis_rule(
    plan: Sequence[_Step], x: str, out: str, axis: int, step: int, name: str, aligned: bool, exact: bool
) -> AxisRule:
    def ok(n: int) -> bool:
        return _run_axis(plan, x, axis, n, exact) is not None

    start = 1
    while True:
        first = next((n for n in range(start, _SCAN_LIMIT + 1) if ok(n)), None)
        if first is None:
            raise ShapeError(
                f"no input {contract.axis_word(name)} up to {_SCAN_LIMIT} fits graph: "
                "check the kernels, paddings and merges"
            )
        offsets = tuple(o for o in range(step) if ok(first + o))
        # the pattern must repeat; if it doesn't yet, start later
        if all(ok(n) == ((n - first) % step in offsets) for n in range(first + step, first + 3 * step)):
            break
        start = first + 1
    margin: int | None = None
    if aligned:
        margins = set()
        for n in (first + o + k * step for k in range(3) for o in offsets):
            sizes = _run_axis(plan, x, axis, n, exact)
            diff = n - sizes[out] if sizes else -1
            margins.add(diff // 2 if diff >= 0 and diff % 2 == 0 else None)
        margin = margins.pop() if len(margins) == 1 else None
    return AxisRule(name, first, step, offsets, margin)
