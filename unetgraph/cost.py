"""The static cost model: parameters, FLOPs and activation memory per node, from the types alone.

Nothing here builds a layer or runs a tensor for the built-in blocks: parameters come from
each spec's :meth:`~unetgraph.blocks.BlockSpec.params`, FLOPs from its
:meth:`~unetgraph.blocks.BlockSpec.flops` at the concrete shapes :func:`~unetgraph.check.check`
computes (counted as ``torch.utils.flop_counter.FlopCounterMode`` counts: two per
multiply-accumulate of convolutions and matmuls, nothing for norms, activations, pooling
and concatenation), and memory from the output shapes. A block without formulas falls back
to its spec's default, which runs its module on meta tensors (no data, no weights).

Memory counts block outputs, the tensors the graph passes along its edges: ``activation_bytes``
sums them (what a training step keeps at least; layers inside a block keep more) and
``peak_bytes`` is the most that is alive at once in an inference pass that frees each output
after its last consumer ran (skips keep encoder outputs alive until their merge).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from math import prod
from typing import Any, Iterator, Mapping, Sequence

import torch

from .check import check, outputs_text
from .errors import NodeNotFoundError, SpecError, UNetGraphError
from .graph import UNetGraph
from .types import Role
from .util import paused_gc

__all__ = ["NodeCost", "CostReport", "summary", "measure", "flop_counter", "fmt_count", "fmt_bytes"]

Shape = tuple[int, ...]


@dataclass(frozen=True)
class NodeCost:
    """One node's static cost.

    Attributes:
        name, role, level: the node.
        block: the block's label.
        type: the output type as text (``"64ch@1/2 (2D)"``), known without an input shape.
        output: the output shape ``(N, C, *S)``; ``None`` without an input shape.
        params: parameter count.
        flops: floating-point operations of one forward (``None`` without an input shape).
        activation_bytes: bytes of the output tensor, of every output for a node with several
            (``None`` without an input shape).
        outputs: every output's shape for a node with several (a backbone's feature maps;
            ``output`` is the last); ``(output,)`` otherwise.
    """

    name: str
    role: Role
    level: int | None
    block: str
    type: str
    output: Shape | None
    params: int
    flops: int | None
    activation_bytes: int | None
    outputs: tuple[Shape, ...] = ()

    def __post_init__(self) -> None:
        if not self.outputs and self.output is not None:
            object.__setattr__(self, "outputs", (self.output,))

    @property
    def macs(self) -> int | None:
        """Multiply-accumulates: half the FLOPs, the unit many papers quote."""
        return None if self.flops is None else self.flops // 2


class CostReport:
    """Per-node and total cost of a graph (:func:`summary`), a table like torchinfo's from the graph.

    ``report["enc2"].flops`` is one node's count; ``report.flops``, ``report.params``,
    ``report.activation_bytes`` and ``report.peak_bytes`` are totals; ``report.share("enc2")``
    is a node's fraction of the total FLOPs (or params/memory). ``print(report)`` shows the
    table, a Jupyter cell shows it as HTML.
    """

    def __init__(
        self,
        graph: UNetGraph,
        rows: Sequence[NodeCost],
        inputs: Mapping[str, Shape] | None,
        dtype: torch.dtype,
        peak_bytes: int | None,
        padded_from: Mapping[str, Shape] | None = None,
    ) -> None:
        self.name = graph.name
        self.padded_from = None if padded_from is None else dict(padded_from)
        self.rows = tuple(rows)
        self.inputs = None if inputs is None else dict(inputs)
        self.dtype = dtype
        self.peak_bytes = peak_bytes
        self._by_name = {r.name: r for r in self.rows}

    def __getitem__(self, name: str) -> NodeCost:
        try:
            return self._by_name[name]
        except KeyError:
            raise NodeNotFoundError(f"the cost report of {self.name} has no node {name!r}", node=str(name)) from None

    def __iter__(self) -> Iterator[NodeCost]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shaped(self) -> bool:
        """Whether the report was made for an input shape (FLOPs and memory known)."""
        return self.inputs is not None

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def param_bytes(self) -> int:
        return self.params * self.dtype.itemsize

    @property
    def flops(self) -> int | None:
        return sum(r.flops for r in self.rows) if self.shaped else None  # type: ignore[misc]

    @property
    def macs(self) -> int | None:
        return None if self.flops is None else self.flops // 2

    @property
    def input_bytes(self) -> int | None:
        return sum(prod(s) for s in self.inputs.values()) * self.dtype.itemsize if self.inputs is not None else None

    @property
    def activation_bytes(self) -> int | None:
        """Bytes of every block output (inputs excluded)."""
        if not self.shaped:
            return None
        return sum(r.activation_bytes for r in self.rows if r.role is not Role.INPUT)  # type: ignore[misc]

    def value(self, name: str, what: str) -> int:
        """A node's ``"flops"``, ``"params"`` or ``"memory"`` (activation bytes)."""
        row = self[name]
        v = {"flops": row.flops, "params": row.params, "memory": row.activation_bytes}.get(what, -1)
        if v == -1:
            raise SpecError(f"cost measure {what!r}: expected 'flops', 'params' or 'memory'")
        if v is None:
            raise SpecError(f"{what} of {name} needs an input shape: summary(g, input_shape)", node=name)
        return v

    def share(self, name: str, what: str = "flops") -> float:
        """A node's fraction of the total ``what`` (``"flops"``, ``"params"`` or ``"memory"``)."""
        total = sum(self.value(r.name, what) for r in self.rows)
        return self.value(name, what) / total if total else 0.0

    def headline(self) -> str:
        """One line: inputs, totals."""
        parts = [self.name]
        if self.inputs is not None:
            parts.append("input " + ", ".join(f"{k} {_times(v)}" for k, v in self.inputs.items()))
            if self.padded_from is not None:
                given = [f"{k} {_times(v)}" for k, v in self.padded_from.items() if v != self.inputs[k]]
                parts[-1] += f" (pad='auto' of {', '.join(given)})" if given else " (pad='auto': already valid)"
        parts.append(f"{self.params:,} params ({fmt_bytes(self.param_bytes)} {_dtype_name(self.dtype)})")
        if self.shaped:
            parts.append(f"{fmt_count(self.flops, 'FLOPs')} ({fmt_count(self.macs, 'MACs')})")
            parts.append(
                f"activations {fmt_bytes(self.activation_bytes)} (block outputs), "
                f"inference peak {fmt_bytes(self.peak_bytes)}"
            )
        return " · ".join(parts)

    def _table(self) -> tuple[list[str], list[list[str]], set[int]]:
        if self.shaped:
            head = ["node", "role", "lvl", "block", "output", "params", "FLOPs", "FLOPs %", "memory"]
            total = self.flops or 1
            cells = [
                [
                    r.name,
                    r.role.value,
                    "" if r.level is None else str(r.level),
                    r.block,
                    outputs_text(r.outputs),
                    f"{r.params:,}",
                    fmt_count(r.flops),
                    f"{100 * r.flops / total:.1f}",  # type: ignore[operator]
                    fmt_bytes(r.activation_bytes),
                ]
                for r in self.rows
            ]
            return head, cells, {2, 5, 6, 7, 8}
        head = ["node", "role", "lvl", "block", "type", "params"]
        cells = [
            [r.name, r.role.value, "" if r.level is None else str(r.level), r.block, r.type, f"{r.params:,}"]
            for r in self.rows
        ]
        return head, cells, {2, 5}

    def __str__(self) -> str:
        head, cells, right = self._table()
        widths = [max(len(row[i]) for row in [head, *cells]) for i in range(len(head))]

        def line(row: list[str]) -> str:
            return "  ".join(
                c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))
            ).rstrip()

        rule = "─" * len(line(["─" * w for w in widths]))
        lines = [self.headline(), line(head), rule, *(line(c) for c in cells), rule]
        if not self.shaped:
            lines.append("FLOPs and memory need an input shape: g.summary((N, C, H, W))")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<CostReport {self.headline()}>"

    def _repr_html_(self) -> str:
        head, cells, right = self._table()
        th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        align = ["right" if i in right else "left" for i in range(len(head))]
        body = "".join(
            "<tr>" + "".join(f'<td style="text-align:{a}">{html.escape(c)}</td>' for c, a in zip(row, align)) + "</tr>"
            for row in cells
        )
        return (
            f"<p><b>{html.escape(self.headline())}</b></p>"
            f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"
        )


def _times(shape: Shape) -> str:
    return "×".join(map(str, shape))


@paused_gc()
def summary(
    g: UNetGraph,
    input_shape: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    pad: str | None = None,
) -> CostReport:
    """Parameters, FLOPs and activation memory of every node, before any tensor exists.

    Args:
        g: the graph.
        input_shape: ``(N, C, *spatial)`` (or a mapping from input names to shapes). Without
            it the report has parameters only.
        dtype: the element type for the byte counts.
        pad: ``"auto"`` counts a module lowered with ``pad="auto"``: at the padded size of
            ``input_shape`` (any size is accepted; the headline says what it was padded from).

    Returns:
        A :class:`CostReport`.

    Raises:
        ShapeError: the input shape does not fit (as :func:`~unetgraph.check.check` raises).
        SpecError: a block's ``flops`` failed.

    Example:
        >>> import unetgraph as ug
        >>> r = ug.summary(ug.unet(3, 2, widths=(8, 16)), (1, 3, 32, 32))
        >>> r["enc0"].flops  # two 3×3 convs: 2·32·32·8·(3 + 8)·9
        1622016
        >>> r.params == sum(row.params for row in r)
        True
    """
    if not isinstance(dtype, torch.dtype):
        raise SpecError(f"dtype: expected a torch.dtype such as torch.float16, got {dtype!r}")
    itemsize = dtype.itemsize
    report = None if input_shape is None else check(g, input_shape, pad=pad)
    rows = []
    known: dict[object, int] = {}  # blocks repeat (same spec, same shapes): count each once
    for n in g:
        node = g[n]
        if report is None:
            output, flops, nbytes, params = None, None, None, node.params
        else:
            r = report[n]
            output, nbytes, params = r.output, sum(prod(o) for o in r.outputs) * itemsize, r.params
            flops = 0 if node.role is Role.INPUT else _flops(node.name, node.block, r.inputs, r.output, known)
        outs = () if report is None else report[n].outputs
        rows.append(
            NodeCost(n, node.role, node.level, node.block.label(), str(node.type), output, params, flops, nbytes, outs)
        )
    peak = None if report is None else _peak(g, {r.name: r.activation_bytes or 0 for r in rows})
    if report is None:
        return CostReport(g, rows, None, dtype, peak)
    return CostReport(g, rows, report.inputs, dtype, peak, padded_from=report.padded_from)


def _flops(name: str, block: Any, inputs: Sequence[Shape], output: Shape, known: dict[object, int]) -> int:
    try:
        key: object = (block, tuple(inputs), output)
        hash(key)
    except TypeError:  # a spec with unhashable fields: no memo
        key = object()
    if key in known:
        return known[key]
    try:
        known[key] = int(block.flops(inputs, output))
    except UNetGraphError as e:
        raise e.at(name, block.label()) from e
    except Exception as e:  # a user block's own failure: keep it as the cause
        raise SpecError(f"{name} ({block.label()}): flops failed: {type(e).__name__}: {e}", node=name) from e
    return known[key]


def _peak(g: UNetGraph, nbytes: Mapping[str, int]) -> int:
    """Most bytes alive at once when nodes run in topological order and each output is freed
    after its last consumer (graph outputs live to the end)."""
    edges = g.edges()  # grouped by destination, in topological order
    waiting = dict.fromkeys(g, 0)
    for e in edges:
        waiting[e.src] += 1
    keep = set(g.outputs)
    live = peak = i = 0
    for n in g:
        live += nbytes[n]
        peak = max(peak, live)
        while i < len(edges) and edges[i].dst == n:
            src = edges[i].src
            waiting[src] -= 1
            if waiting[src] == 0 and src not in keep:
                live -= nbytes[src]
            i += 1
    return peak


def fmt_count(n: int | None, unit: str = "") -> str:
    """``301_000_000_000`` → ``"301G"``: SI prefixes, about three significant digits; with a
    ``unit`` a space separates number and prefixed unit.

    >>> fmt_count(31_030_658), fmt_count(950), fmt_count(1_622_016, "FLOPs")
    ('31.0M', '950', '1.62 MFLOPs')
    """
    if n is None:
        return "—"
    sep = " " if unit else ""
    for scale, prefix in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "k")):
        if abs(n) >= scale:
            return f"{_digits(n / scale)}{sep}{prefix}{unit}"
    return f"{n}{sep}{unit}"


def fmt_bytes(n: int | None) -> str:
    """``1_310_720`` → ``"1.25 MiB"`` (binary prefixes).

    >>> fmt_bytes(1_310_720), fmt_bytes(512)
    ('1.25 MiB', '512 B')
    """
    if n is None:
        return "—"
    for scale, prefix in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= scale:
            return f"{_digits(n / scale)} {prefix}"
    return f"{n} B"


def _digits(v: float) -> str:
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}" if abs(v) < 100 else f"{v:.0f}"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def flop_counter() -> torch.utils.flop_counter.FlopCounterMode:
    """``torch.utils.flop_counter.FlopCounterMode`` that also counts attention on the CPU.

    Torch registers its SDPA formula for the GPU and meta kernels only, so on the CPU it
    counts ``scaled_dot_product_attention`` as 0; this adds the same formula for the CPU
    kernel, and counts oneDNN's packed convolutions and Linears (:mod:`unetgraph.passes.prepack`)
    as the convolutions and matrix products they are. Every FLOP comparison in unetgraph uses it.
    """
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(query: Shape, key: Shape, value: Shape, *args: object, out_shape: object = None, **kw: object) -> int:
        return sdpa_flop_count(query, key, value)

    mapping: dict = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
    mapping.update(_packed_convolutions())
    return FlopCounterMode(display=False, custom_mapping=mapping)


def _packed_convolutions() -> dict:
    """Formulas for oneDNN's packed convolutions and Linears (``passes.prepack``), as
    ``aten.convolution`` and ``aten.mm`` count them.

    FlopCounterMode looks formulas up by overload packet; the ``binary`` overloads take the
    tensor to add second and the weight third.
    """
    from torch.utils.flop_counter import conv_flop_count

    def weight(x: Shape, rest: tuple) -> list[int]:
        # default: (x, weight, bias, ...); binary: (x, other, weight, bias, ...), bias 1-D or None
        binary = len(rest) > 1 and isinstance(rest[1], torch.Size) and len(rest[1]) == len(x)
        return list(rest[1] if binary else rest[0])

    def packed(x: Shape, *rest: object, out_shape: Shape, **kw: object) -> int:
        return conv_flop_count(list(x), weight(x, rest), list(out_shape), transposed=False)

    def packed_transposed(x: Shape, *rest: object, out_shape: Shape, **kw: object) -> int:
        return conv_flop_count(list(x), weight(x, rest), list(out_shape), transposed=True)

    def linear(x: Shape, *rest: object, out_shape: Shape, **kw: object) -> int:
        return 2 * prod(x) * int(out_shape[-1])  # (…, in) → (…, out): one multiply-add per pair

    mkldnn = torch.ops.mkldnn
    ops = ("_convolution_pointwise", "_convolution_transpose_pointwise", "_linear_pointwise")
    if not all(hasattr(mkldnn, op) for op in ops):
        return {}  # a torch without oneDNN
    return {
        mkldnn._convolution_pointwise: packed,
        mkldnn._convolution_transpose_pointwise: packed_transposed,
        mkldnn._linear_pointwise: linear,
    }


def measure(gm: torch.fx.GraphModule, *args: torch.Tensor) -> dict[str, tuple[Shape | None, int]]:
    """Run ``gm`` on ``args`` and record, per fx node, its output shape and the FLOPs
    ``FlopCounterMode`` counts while it runs: the measured counterpart of :func:`summary`
    (use meta tensors to measure without computing anything).

    Returns:
        fx node name → ``(shape or None for non-tensors, flops)``, for every call node.

    Example:
        >>> import torch, unetgraph as ug
        >>> gm = ug.unet(3, 2, widths=(8, 16)).lower(device="meta")
        >>> m = measure(gm, torch.empty(1, 3, 32, 32, device="meta"))
        >>> m["enc0_conv0"]
        ((1, 8, 32, 32), 442368)
    """
    out: dict[str, tuple[Shape | None, int]] = {}

    class _Probe(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> object:
            if not n.op.startswith("call"):
                return super().run_node(n)
            counter = flop_counter()
            with counter:
                result = super().run_node(n)
            out[n.name] = (tuple(result.shape) if isinstance(result, torch.Tensor) else None, counter.get_total_flops())
            return result

    with torch.no_grad():
        _Probe(gm).run(*args)
    return out
