"""Dynamic shapes from the checker's rules: one export or one compile for every valid size.

The checker knows which input sizes fit (``g.valid_sizes()``: per axis ``minimum + step*k``).
This module turns that into ``torch.export.Dim`` constraints (``step * Dim(...) + c``),
``torch._dynamo.mark_dynamic`` bounds, and wrappers that refuse an invalid size with the
checker's message before any compiled code sees it.

Two measured facts shape it (torch 2.13, CPU):

* ``torch.export`` with ``Dim("H")`` fails on a U-Net (it cannot prove ``(H//4) == 2*(H//8)``);
  ``step * Dim("k")`` works. Sizes where some feature map would have a single row are
  specialised away by export, so a served range starts where every map has at least 2.
* ``torch.compile`` guards on the CPU convolution backend choice
  (``C*H*W <= 20480`` per convolution at batch 1), so one compile covers all sizes on one
  side of those thresholds; :class:`CompiledUNet` counts its compilations so you can see
  it. An exported program or an AOTInductor package (:mod:`unetgraph.export`) is one
  artifact for every served size.
"""

from __future__ import annotations

import math
import operator
import threading
import time
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.pooling import _AvgPoolNd, _MaxPoolNd

from .blocks.layers import CenterCrop, ChannelLayerNorm
from .check import AxisRule, SizeRules, check, valid_sizes
from .contract import InputGuard, axis_word
from .errors import LoweringError, ShapeError
from .graph import UNetGraph
from .inputs import example_inputs, input_shapes
from .lower import lower
from .passes.pipeline import plain
from .passes.prepack import PackedConv, conv_padding
from .record import find_record, lowered_record
from .runtime import check_input_size, guard_inputs, module_guards
from .types import AXIS_NAMES
from .util import TORCH_LOCK, TURNS

__all__ = [
    "ServedAxis",
    "served_axes",
    "export_shapes",
    "mark_dynamic",
    "compile",
    "CompiledUNet",
    "graph_and_module",
    "Buckets",
    "BucketedUNet",
    "padding_exactness",
    "bind_inputs",
]


@dataclass(frozen=True)
class ServedAxis:
    """The sizes one dynamic artifact serves along one spatial axis: ``low + step*k ≤ high``.

    ``low`` may exceed the checker's minimum: export specialises sizes where a feature map
    has a single row, so the range starts where every map has at least two.
    """

    axis: str
    index: int  # the tensor dimension (2 for the first spatial axis)
    low: int
    step: int
    high: int | None = None

    def __contains__(self, n: object) -> bool:
        return (
            isinstance(n, int)
            and n >= self.low
            and (n - self.low) % self.step == 0
            and (self.high is None or n <= self.high)
        )

    def sizes(self, count: int = 3) -> list[int]:
        return [self.low + k * self.step for k in range(count)]

    def describe(self) -> str:
        top = f" up to {self.high}" if self.high is not None else ""
        return f"{self.axis} = {self.low} + {self.step}k{top}"

    def to_dict(self) -> dict[str, Any]:
        return {"axis": self.axis, "index": self.index, "low": self.low, "step": self.step, "high": self.high}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServedAxis:
        return cls(str(data["axis"]), int(data["index"]), int(data["low"]), int(data["step"]), _opt_int(data["high"]))


def _opt_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def graph_and_module(
    model: UNetGraph | fx.GraphModule, *, for_compile: bool = False, **lower_options: Any
) -> tuple[UNetGraph, fx.GraphModule]:
    """``(graph, module)`` for a graph (lowered with ``lower_options``, in eval mode) or a lowered module
    (with plain layers: one with prepacked or folded ones comes back as a copy without them,
    ``passes.plain``). ``for_compile=True`` gives the module itself: its packed
    layers and folded upsamplings trace to standard ops by themselves."""
    if isinstance(model, UNetGraph):
        return model, lower(model, **lower_options).eval()
    record = find_record(model) if isinstance(model, fx.GraphModule) else None
    if record is not None:
        return record.graph, model if for_compile else plain(model)
    raise LoweringError(f"expected a UNetGraph or a GraphModule made by unetgraph.lower, got {type(model).__name__}")


def _spatial_input(g: UNetGraph) -> str:
    spatial = [n for n in g.inputs if g[n].type.dims > 0]
    if len(spatial) != 1:
        raise ShapeError(f"dynamic sizes need one spatial input; graph {g.name} has {', '.join(spatial) or 'none'}")
    return spatial[0]


def served_axes(model: UNetGraph | fx.GraphModule, *, max_size: int | None = None) -> tuple[ServedAxis, ...]:
    """Per spatial axis, the sizes one dynamic export/compile of ``model`` serves.

    Valid sizes come from ``valid_sizes()`` (exact: nothing rounded away). When an axis has
    several residues (``offsets``) that form one finer progression, that progression is
    used; otherwise the first residue's.

    Raises:
        ShapeError: no valid size gives every feature map two rows up to ``max_size``.

    Example:
        >>> import unetgraph as ug
        >>> [a.describe() for a in served_axes(ug.unet(3, 2, widths=(8, 16, 32)))]
        ['H = 8 + 4k', 'W = 8 + 4k']
    """
    g = model if isinstance(model, UNetGraph) else graph_and_module(model)[0]
    x = _spatial_input(g)
    rules = valid_sizes(g)
    dims = g[x].type.dims
    axes = []
    for a, rule in enumerate(rules.axes):
        step = _progression_step(rule)
        others = [r.sizes(4)[-1] for r in rules.axes]
        low = None
        for k in range(256):
            n = rule.minimum + k * step
            if max_size is not None and n > max_size:
                break
            spatial = list(others)
            spatial[a] = n
            report = check(g, input_shapes(g, size=spatial))
            if all(r.output[2 + a] >= 2 for r in report if len(r.output) == 2 + dims):
                low = n
                break
        if low is None:
            raise ShapeError(
                f"no valid {axis_word(rule.axis)} up to {max_size or 'the scan limit'} gives every "
                f"feature map of {g.name} two rows; {rules}"
            )
        axes.append(ServedAxis(AXIS_NAMES[dims][a], 2 + a, low, step, max_size))
    return tuple(axes)


def _progression_step(rule: AxisRule) -> int:
    offsets = rule.offsets
    if len(offsets) > 1:
        d = offsets[1] - offsets[0]
        if all(b - a == d for a, b in pairwise(offsets)) and d * len(offsets) == rule.step:
            return d
    return rule.step


def export_shapes(
    model: UNetGraph | fx.GraphModule, *, batch: bool = True, max_size: int | None = None
) -> dict[str, dict[int, Any]]:
    """``dynamic_shapes`` for ``torch.export.export`` (and ``torch.onnx.export``) of a lowered ``model``.

    Each spatial axis becomes ``step * Dim(...) + c`` over :func:`served_axes`; with
    ``batch=True`` every input shares one ``Dim("batch")`` (the example batch must then be
    at least 2, or export specialises it). A sequence input (a context ``(N, L, D)``) gets a
    ``Dim`` of its own for ``L``.

    Example:
        >>> import unetgraph as ug
        >>> shapes = export_shapes(ug.unet(3, 2, widths=(8, 16, 32)))
        >>> sorted(shapes["x"])
        [0, 2, 3]
    """
    from torch.export import Dim

    g = model if isinstance(model, UNetGraph) else graph_and_module(model)[0]
    x = _spatial_input(g)
    shapes: dict[str, dict[int, Any]] = {name: {} for name in g.inputs}
    if batch:
        b = Dim("batch", min=1)
        for name in g.inputs:
            shapes[name][0] = b
    for name in g.inputs:
        if g[name].type.form == "sequence":  # a context of any length L
            shapes[name][1] = Dim(f"{name}_L", min=1)
    for axis in served_axes(g, max_size=max_size):
        c = axis.low - 2 * axis.step  # size = step*k + c with k ≥ 2 (export specialises k = 0, 1)
        top = None if axis.high is None else (axis.high - c) // axis.step
        k = Dim(f"{x}_{axis.axis}", min=2) if top is None else Dim(f"{x}_{axis.axis}", min=2, max=top)
        expr: Any = k if axis.step == 1 else axis.step * k
        shapes[x][axis.index] = expr if c == 0 else expr + c
    return shapes


def trace_inputs(
    model: UNetGraph | fx.GraphModule, *, batch: int = 2, max_size: int | None = None
) -> tuple[torch.Tensor, ...]:
    """Random inputs of a served size for tracing: not the smallest, not square (a square
    example would tie H to W), batch 2 (batch 1 would be specialised)."""
    g = model if isinstance(model, UNetGraph) else graph_and_module(model)[0]
    axes = served_axes(g, max_size=max_size)
    spatial = [a.sizes(3 + i)[-1] for i, a in enumerate(axes)]
    spatial = [min(s, a.high) if a.high is not None else s for s, a in zip(spatial, axes)]
    return tuple(example_inputs(g, batch=batch, size=spatial).values())


def check_served(name: str, rules: SizeRules, axes: tuple[ServedAxis, ...], sizes: tuple[int, ...]) -> None:
    """Refuse ``sizes`` with the checker's words, then sizes valid but outside the served range."""
    check_input_size(name, rules, sizes)
    for n, axis in zip(sizes, axes):
        if n not in axis:
            word = axis_word(axis.axis)
            raise ShapeError(
                f"input {name} {word} {n} is valid but outside what this artifact serves ({axis.describe()}): "
                "dynamic export and compile need every feature map to keep at least two rows"
                + ("" if axis.high is None else f" and sizes up to max_size={axis.high}"),
                node=name,
            )


def mark_dynamic(
    x: torch.Tensor, model: UNetGraph | fx.GraphModule, *, batch: bool = False, max_size: int | None = None
) -> torch.Tensor:
    """Mark ``x``'s spatial axes (and batch) dynamic for ``torch.compile``.

    Uses ``torch._dynamo.maybe_mark_dynamic``: the valid sizes are multiples of a step,
    which ``mark_dynamic``'s plain ranges cannot express (it would raise a constraint
    violation on the guard ``H % 16 == 0``); the input guard's ``torch._check`` calls
    tell the compiler the step instead. Returns ``x``: the marks live on the tensor object, so
    every later compile that ``x`` goes through treats those axes as dynamic (mark a view,
    ``x.view_as(x)``, to keep ``x`` itself unmarked; :class:`CompiledUNet` does).
    """
    _mark(x, served_axes(model, max_size=max_size), batch)
    return x


def _mark(x: torch.Tensor, axes: tuple[ServedAxis, ...], batch: bool) -> None:
    for axis in axes:
        torch._dynamo.maybe_mark_dynamic(x, axis.index)
    if batch:
        torch._dynamo.maybe_mark_dynamic(x, 0)


def bind_inputs(names: Sequence[str], args: Sequence[Any], kwargs: Mapping[str, Any], model: str) -> tuple[Any, ...]:
    """``args`` and ``kwargs`` as one tuple in the order of ``names`` (the graph's inputs), as the lowered
    module's ``forward(x, t=..., ...)`` binds them; inputs not given are ``None`` (the guards name them).

    Raises:
        ShapeError: more inputs than ``names``, a keyword that is not one of them, or one given twice.
    """
    if len(args) > len(names):
        raise ShapeError(f"{model} takes {len(names)} inputs ({', '.join(names)}), got {len(args)}")
    if not kwargs:
        return tuple(args)
    bound = [*args, *[None] * (len(names) - len(args))]
    for key, value in kwargs.items():
        if key not in names:
            raise ShapeError(f"{model} takes inputs {', '.join(names)}, got an unknown input {key!r}")
        at = names.index(key)
        if at < len(args):
            raise ShapeError(f"{model}: input {key} given twice, by position and by name", node=key)
        bound[at] = value
    return tuple(bound)


def _strides(shape: tuple[int, ...], fmt: torch.memory_format) -> tuple[int, ...]:
    """The strides of a fresh tensor of ``shape`` in memory format ``fmt`` (as ``torch.empty`` makes them)."""
    n = len(shape)
    if fmt in (torch.channels_last, torch.channels_last_3d):
        order, floor = [1, *range(n - 1, 1, -1), 0], 0  # channels innermost; torch does not round sizes 0 up
    else:
        order, floor = list(range(n - 1, -1, -1)), 1
    strides, step = [0] * n, 1
    for d in order:
        strides[d] = step
        step *= max(shape[d], floor)
    return tuple(strides)


def _input_formats(module: fx.GraphModule, names: Sequence[str]) -> list[torch.memory_format]:
    """The memory format each input is converted to right after its guard (``passes.channels_last``),
    or ``torch.contiguous_format``: the layout compiled code is handed (so a layout is never a recompile)."""
    placeholders = {n.name: n for n in module.graph.nodes if n.op == "placeholder"}
    formats = []
    for name in names:
        fmt = torch.contiguous_format
        node = placeholders.get(name)
        users = list(node.users) if node is not None else []
        users += [u for n in users if n.op == "call_module" for u in n.users]  # through the guard
        for user in users:
            if user.op == "call_method" and user.target == "contiguous" and user.kwargs.get("memory_format"):
                fmt = user.kwargs["memory_format"]
        formats.append(fmt)
    return formats


def _in_layout(x: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """``x`` with the strides a fresh tensor of its shape has in ``fmt`` (copied only when it has others),
    as a new tensor object: dynamo keeps its dynamic marks on the caller's tensor object, and every
    later compile that sees it would honour them (a static bucket, the caller's own torch.compile)."""
    rank = {torch.channels_last: 4, torch.channels_last_3d: 5}.get(fmt, x.dim())
    if x.dim() != rank or (fmt != torch.contiguous_format and x.shape[1] == 1):
        # one channel: both layouts are the same memory, and inductor (freezing, dynamic sizes) fails on
        # the channels-last strides of a single channel; the model's own conversion keeps it as is
        fmt = torch.contiguous_format
    if x.stride() == _strides(tuple(x.shape), fmt):
        return x.view_as(x)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt).copy_(x)


class _Inputs:
    """What compiled code is handed: the inputs bound by position or name (:func:`bind_inputs`), checked
    by the lowered module's own guards (a :class:`ShapeError` in their words; numbers become tensors, so
    they never specialise the code), each in one memory layout (so no layout is a recompile)."""

    def __init__(self, module: fx.GraphModule, graph: UNetGraph) -> None:
        self.names = tuple(graph.inputs)
        self.model = graph.name
        self.guards = module_guards(module, graph.inputs)
        self.formats = _input_formats(module, graph.inputs)

    def __call__(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
        inputs = bind_inputs(self.names, args, kwargs, self.model)
        if self.guards is not None:
            inputs = guard_inputs(self.guards, inputs, self.model)
        return tuple(_in_layout(x, f) if isinstance(x, torch.Tensor) else x for x, f in zip(inputs, self.formats))


class CompiledUNet(nn.Module):
    """``torch.compile`` of a lowered U-Net with dynamic spatial sizes and a compilation count.

    Each call first runs the lowered module's input guards eagerly (a clear
    :class:`~unetgraph.errors.ShapeError` for a bad input, not a guard failure; a timestep given
    as a number becomes a tensor, so it never specialises the compiled code), puts every input in
    one memory layout (the one the model converts to: a layout is never a recompile), checks the
    size with the checker's rules, marks its spatial axes dynamic within the served range, and
    runs the compiled module. Inputs may be given by name (:func:`bind_inputs`). ``compilations`` counts
    how many graphs the backend compiled so far (1 after the first call; more means a
    recompile).

    The inductor ``options`` are in force while dynamo traces, not only inside the backend:
    ``freezing`` is read by dynamo then (to keep the weights as constants), so
    ``torch.compile(..., options={"freezing": True})`` alone silently compiles unfrozen
    code (no weight prepacking, no conv+activation fusion). See :class:`_Gate`, which also
    makes compiling safe from several threads.

    Shape:
        as the lowered module.
    """

    def __init__(
        self,
        module: fx.GraphModule,
        graph: UNetGraph,
        *,
        backend: str | Callable = "inductor",
        options: dict[str, Any] | None = None,
        batch: bool = False,
        max_size: int | None = None,
        fullgraph: bool = True,
    ) -> None:
        super().__init__()
        self.module = module
        self._inputs = _Inputs(module, graph)
        self.guards = self._inputs.guards
        self.name = graph.name
        self.input = _spatial_input(graph)
        self.position = graph.inputs.index(self.input)
        self.rules = valid_sizes(graph)
        self.axes = served_axes(graph, max_size=max_size)
        self.batch = batch
        self._gate = _Gate(backend, options)
        self.options = self._gate.options
        self._count = [0]
        inner = self._gate.backend

        def counting(gm: fx.GraphModule, example: list[torch.Tensor]) -> Callable:
            compiled = inner(gm, example)
            self._count[0] += 1
            return compiled

        with TORCH_LOCK:  # a GraphModule made while another thread compiles breaks that compile
            # a GraphModule of its own (same submodules, same weights): its own code object, so dynamo's
            # cache and recompile limit are this instance's, not shared with every compile of ``module``
            shell = fx.GraphModule(module, module.graph)
            self.compiled = torch.compile(shell, backend=counting, fullgraph=fullgraph, dynamic=None)

    @property
    def compilations(self) -> int:
        """Graphs compiled so far (each recompile adds one)."""
        return self._count[0]

    def forward(self, *inputs: Any, **named: Any) -> Any:
        """The lowered module's outputs; inputs by position or by name, as the lowered module takes them."""
        with TURNS.running():  # not while another thread exports
            inputs = self._inputs(inputs, named)  # new tensor objects: marking them leaves the caller's alone
            x = inputs[self.position]
            check_served(self.input, self.rules, self.axes, tuple(x.shape[2:]))
            _mark(x, self.axes, self.batch)
            return self._gate.call(self.compiled, inputs)


class _Ungated(Exception):
    """Raised by a backend asked to compile outside :meth:`_Gate.call`."""


class _Gate:
    """Where the graphs of compiled callables compile: one thread at a time, with the options.

    Dynamo reads some inductor options (``freezing``) while it traces, so a patch seen only by
    the backend comes too late: the call that compiles must run under ``config.patch``. That
    call holds :data:`~unetgraph.util.TORCH_LOCK` (inductor's config patches are per thread on
    torch 2.14, dynamo's compiling is not thread-safe). Patching and locking cost about 70 µs a call, so once a
    callable has compiled its calls run without either. A compile that starts there anyway (a
    recompile: grad mode switched, another memory layout) is refused by the backend before it
    compiles anything (:meth:`backend`) and the call is retried through the gate: every graph
    compiles with the options and the lock, and refused ones are not counted.
    """

    def __init__(self, backend: str | Callable, options: dict[str, Any] | None) -> None:
        self.options = dict(options or {}) if backend == "inductor" else {}
        self._inner = _backend(backend, options)
        self._compiled: set[int] = set()  # ids of the callables that compiled through the gate
        self._inside = threading.local()

    def backend(self, gm: fx.GraphModule, example: list[torch.Tensor]) -> Callable:
        """The backend, refusing (:class:`_Ungated`) when called outside :meth:`call`'s gate."""
        if not getattr(self._inside, "gated", False):
            raise _Ungated
        return self._inner(gm, example)

    def call(self, compiled: Callable, inputs: tuple) -> Any:
        """``compiled(*inputs)``; through the gate unless ``compiled`` has compiled already."""
        if id(compiled) in self._compiled:
            try:
                return compiled(*inputs)
            except torch._dynamo.exc.BackendCompilerFailed as e:
                if not isinstance(e.inner_exception, _Ungated):
                    raise
        from torch._inductor import config

        with TORCH_LOCK:
            self._inside.gated = True
            try:
                with config.patch(self.options):
                    out = compiled(*inputs)
            finally:
                self._inside.gated = False
        self._compiled.add(id(compiled))
        return out


def _backend(backend: str | Callable, options: dict[str, Any] | None) -> Callable:
    if callable(backend):
        if options:
            raise LoweringError("options apply to the inductor backend only")
        return backend
    if backend == "inductor":
        from torch._inductor.compile_fx import compile_fx

        return lambda gm, example: compile_fx(gm, example, config_patches=dict(options or {}))
    if options:
        raise LoweringError("options apply to the inductor backend only")
    from torch._dynamo import lookup_backend

    return lookup_backend(backend)


def compile(
    model: UNetGraph | fx.GraphModule,
    *,
    backend: str | Callable = "inductor",
    options: dict[str, Any] | None = None,
    batch: bool = False,
    max_size: int | None = None,
    fullgraph: bool = True,
    sizes: Any = None,
) -> CompiledUNet | BucketedUNet:
    """Compile ``model`` once for all its valid sizes (see :class:`CompiledUNet`), or, with
    ``sizes``, once per size bucket with every shape static (see :class:`BucketedUNet`).

    Args:
        model: a graph (lowered, in eval mode) or a lowered GraphModule (e.g. from :func:`ug.optimize`).
        backend: a ``torch.compile`` backend name or callable.
        options: inductor config patches. ``None`` gives ``{"freezing": True}`` for a model
            in eval mode with the inductor backend: the weights become constants of the
            compiled code (prepacked, fused with their activations), so compile again after
            changing them; freezing applies to calls made under ``torch.no_grad()``.
            Pass ``{}`` to keep the weights live. For static CPU buckets,
            ``{"freezing": True, "cpp_wrapper": True}`` compiles the code that calls the kernels
            as C++ (1.00–1.03× on the presets at batch 1, 1.09× for the 4-level U-Net at 16²),
            at the price of a precompiled header of about 150 MB in inductor's cache per
            environment and compile setting; not the default for that reason.
        batch: mark the batch axis dynamic too (otherwise each batch size compiles once).
        max_size: the largest spatial size to serve (``None``: unbounded).
        fullgraph: refuse graph breaks (a lowered U-Net has none).
        sizes: spatial sizes to compile static code for (an int for every axis, or a tuple per
            size), e.g. ``sizes=[256, 512]``: the fast mode. With freezing, inductor packs the
            weights for oneDNN and fuses activations only where every shape is known, which a
            dynamic graph cannot offer. Inputs of another valid size are padded up to the
            smallest bucket that holds them where that is exact (valid-convolution U-Nets,
            :func:`padding_exactness`), otherwise refused in words. Each batch size compiles
            once per bucket; ``batch`` and ``max_size`` do not apply.

    Raises:
        LoweringError: the model was lowered with ``pad="auto"`` (its padding is computed in
            Python from the size, so each size is its own graph; compile the ``pad=None`` one).
        ShapeError: a size in ``sizes`` does not fit the graph.
    """
    g, gm = graph_and_module(model, for_compile=True)
    if lowered_record(gm).pad == "auto":
        raise LoweringError("dynamic compile needs a module lowered with pad=None: pad='auto' computes sizes in Python")
    if options is None and backend == "inductor" and not gm.training:
        options = {"freezing": True}
    if sizes is not None:
        return BucketedUNet(gm, g, Buckets.of(g, sizes), backend=backend, options=options, fullgraph=fullgraph)
    return CompiledUNet(gm, g, backend=backend, options=options, batch=batch, max_size=max_size, fullgraph=fullgraph)


# -- static buckets -------------------------------------------------------------------------------

_ELEMENTWISE = frozenset(
    {operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, torch.add, torch.sub, torch.mul}
    | {torch.relu, torch.sigmoid, torch.tanh, F.relu, F.silu, F.gelu, F.leaky_relu, F.sigmoid, F.tanh}
)
_SAME_TENSOR_METHODS = frozenset({"contiguous", "to", "float"})


def _local_layer(gm: fx.GraphModule, node: fx.Node) -> str:
    """'' when ``node`` computes each output position from a window that starts at the matching
    input position (so trailing input cannot reach the leading outputs), else what it does instead."""
    if node.op in ("placeholder", "output", "get_attr"):
        return ""
    if node.op == "call_method":
        return "" if node.target in _SAME_TENSOR_METHODS else f"calls .{node.target}() on a tensor"
    if node.op == "call_function":
        if node.target is torch.cat:
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
            return "" if dim == 1 else f"concatenates along axis {dim}"
        return "" if node.target in _ELEMENTWISE else f"calls {getattr(node.target, '__name__', node.target)}"
    m = gm.get_submodule(str(node.target))
    kind = type(m).__name__
    if isinstance(m, (_ConvNd, PackedConv)):
        padding = m.padding if isinstance(m, PackedConv) else conv_padding(m)
        return "" if padding is not None and not any(padding) else f"{kind} pads its input with {m.padding}"
    if isinstance(m, (_MaxPoolNd, _AvgPoolNd)):
        pads = m.padding if isinstance(m.padding, (tuple, list)) else (m.padding,)
        if any(pads) or m.ceil_mode:
            return f"{kind} pads its input (padding {m.padding}, ceil_mode {m.ceil_mode})"
        return ""
    if isinstance(m, nn.Upsample):
        scale = m.scale_factor
        factors = () if scale is None else scale if isinstance(scale, tuple) else (scale,)
        integer = scale is not None and all(float(f).is_integer() for f in factors)
        return "" if m.mode == "nearest" and integer else f"{kind} ({m.mode}) interpolates near the border"
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return "" if not m.training else f"{kind} in training mode computes statistics over every position"
    if isinstance(m, (ChannelLayerNorm, CenterCrop, InputGuard, nn.Identity, nn.modules.dropout._DropoutNd)):
        return ""
    if type(m).__module__ == "torch.nn.modules.activation" and not isinstance(
        m, (nn.MultiheadAttention, nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d)
    ):
        return ""
    return f"{kind} is not known to keep positions apart"


def padding_exactness(model: UNetGraph | fx.GraphModule) -> str:
    """Why padding an input at its end up to a larger valid size and cropping the output back
    would change the output, or ``''`` when it would not.

    It is exact when the output is aligned with the input and every layer computes each output
    position from a window that starts at the matching input position: unpadded ('valid')
    convolutions and pooling, transposed convolutions, nearest upsampling by whole factors,
    per-position norms and activations, centre-cropped merges (the original U-Net). A layer that
    pads ('same' convolutions: its border sees computed values instead of zeros), normalizes
    over positions (GroupNorm, InstanceNorm), attends, or interpolates near the border breaks it;
    the reason names the first such layer.
    """
    g, gm = (model, lower(model, device="meta").eval()) if isinstance(model, UNetGraph) else graph_and_module(model)
    x = _spatial_input(g)
    rules = valid_sizes(g)
    x_dims = g[x].type.dims
    aligned = all(g[o].type.dims == x_dims and all(s == 1 for s in g[o].type.scale) for o in g.outputs)
    if rules.margin is None or not aligned:
        return "its outputs are not aligned with the input at the same scale"
    for node in gm.graph.nodes:
        why = _local_layer(gm, node)
        if why:
            where = node.meta.get("custom", {}).get("unet_node", node.name)
            return f"{where} ({node.name}): {why}"
    return ""


def _spatial(text: tuple[int, ...]) -> str:
    return "×".join(map(str, text))


@dataclass(frozen=True)
class Buckets:
    """The static input sizes a bucketed compile or package serves, and how other sizes reach them.

    An input of a bucket's size runs as is. An input of another valid size is padded at its end
    up to the smallest bucket that holds it and the output is cropped back, where that is exact
    (:func:`padding_exactness`); otherwise it is refused in words.
    """

    input: str
    rules: SizeRules
    sizes: tuple[tuple[int, ...], ...]
    inexact: str = ""  # why padding up would change the output ('' when it would not)
    margin: tuple[int, ...] = ()

    @classmethod
    def of(cls, model: UNetGraph | fx.GraphModule, sizes: Any) -> Buckets:
        """Validate ``sizes`` (an int per size for every axis, or one tuple per size) against ``model``'s rules.

        Raises:
            ShapeError: no sizes, a size of the wrong rank, or one that does not fit the graph.
        """
        g = model if isinstance(model, UNetGraph) else graph_and_module(model)[0]
        x = _spatial_input(g)
        rules = valid_sizes(g)
        dims = len(rules.axes)
        given = [sizes] if isinstance(sizes, int) else list(sizes or [])
        if not given:
            raise ShapeError("sizes: give at least one spatial size to compile for")
        out = set()
        for s in given:
            size = (s,) * dims if isinstance(s, int) else tuple(int(n) for n in s)
            if len(size) != dims:
                raise ShapeError(f"sizes: {s} has {len(size)} axes; input {x} has {dims} spatial axes", node=x)
            check_input_size(x, rules, size, " (sizes lists the buckets to compile: each must be valid)")
            out.add(size)
        margin = tuple(r.margin or 0 for r in rules.axes)
        return cls(x, rules, tuple(sorted(out, key=lambda b: (math.prod(b), b))), padding_exactness(g), margin)

    def describe(self) -> str:
        pad = "padded up to the smallest bucket that holds them" if not self.inexact else "refused"
        return f"buckets {', '.join(map(_spatial, self.sizes))} for input {self.input}; other valid sizes {pad}"

    def choose(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        """The bucket that serves ``spatial`` (a valid size).

        Raises:
            ShapeError: no bucket holds it, or padding up to one would change the output.
        """
        if spatial in self.sizes:
            return spatial
        listed = ", ".join(map(_spatial, self.sizes))
        where = f"input {self.input} of spatial size {_spatial(spatial)} has no bucket ({listed})"
        if self.inexact:
            raise ShapeError(
                f"{where}, and padding it up would change the output: {self.inexact}; add {spatial} to sizes, "
                "or compile without sizes (one dynamic graph serves every size)",
                node=self.input,
            )
        fits = [b for b in self.sizes if all(n <= m for n, m in zip(spatial, b))]
        if not fits:
            raise ShapeError(f"{where} that holds it: add a larger size to sizes", node=self.input)
        return fits[0]

    def pad(self, x: torch.Tensor, bucket: tuple[int, ...]) -> torch.Tensor:
        """``x`` padded with zeros at the end of each spatial axis up to ``bucket``."""
        pads: list[int] = []
        for n, m in zip(reversed(x.shape[2:]), reversed(bucket)):  # F.pad wants the last axis first
            pads += [0, m - n]
        return F.pad(x, pads)

    def crop(self, y: Any, spatial: tuple[int, ...]) -> Any:
        """Outputs computed on a padded input, cut back to what ``spatial`` gives."""
        if isinstance(y, dict):
            return {k: self.crop(v, spatial) for k, v in y.items()}
        for axis, (n, m) in enumerate(zip(spatial, self.margin), start=2):
            y = y.narrow(axis, 0, n - 2 * m)
        return y

    def to_dict(self) -> dict[str, Any]:
        return {"sizes": [list(b) for b in self.sizes]}


class BucketedUNet(nn.Module):
    """Static, frozen compiles of a lowered U-Net, one per size bucket and batch size.

    A dynamic compile (:class:`CompiledUNet`) serves every size with one graph, but inductor
    cannot pack convolution weights for sizes it does not know, so each call reorders them (the
    cost :mod:`unetgraph.passes.prepack` removes in eager mode). Here each bucket is compiled
    with every shape static, so freezing packs the weights and fuses activations: the speed of a
    hand-written model compiled at one size, for each size listed. Sizes in between are padded
    up where that is exact (:class:`Buckets`). Each ``(batch, bucket)`` pair compiles once, at
    its first call (or in :meth:`prepare`); ``compilations`` counts them and
    ``compile_seconds`` says how long each took. Inputs are checked, bound by name and put in one
    layout first, as :class:`CompiledUNet` does.

    Shape:
        as the lowered module.
    """

    def __init__(
        self,
        module: fx.GraphModule,
        graph: UNetGraph,
        buckets: Buckets,
        *,
        backend: str | Callable = "inductor",
        options: dict[str, Any] | None = None,
        fullgraph: bool = True,
    ) -> None:
        super().__init__()
        self.module = module
        self._inputs = _Inputs(module, graph)
        self.buckets = buckets
        self.position = graph.inputs.index(buckets.input)
        self.graph = graph
        self._gate = _Gate(backend, options)
        self.options = self._gate.options
        self._fullgraph = fullgraph
        self._compiled: dict[tuple[int, tuple[int, ...]], Callable] = {}
        self.compile_seconds: dict[tuple[int, tuple[int, ...]], float] = {}

    @property
    def compilations(self) -> int:
        """Graphs compiled so far: one per ``(batch, bucket)`` pair that ran."""
        return len(self.compile_seconds)

    def _compiled_for(self, key: tuple[int, tuple[int, ...]]) -> Callable:
        compiled = self._compiled.get(key)
        if compiled is not None:
            return compiled
        with TORCH_LOCK:  # a GraphModule made while another thread compiles breaks that compile
            if key not in self._compiled:
                # a GraphModule of its own (same submodules, same weights): its own code object, so
                # dynamo's cache and recompile limit see one static graph per bucket
                shell = fx.GraphModule(self.module, self.module.graph)
                inner = self._gate.backend

                def counting(gm: fx.GraphModule, example: list[torch.Tensor]) -> Callable:
                    start = time.perf_counter()
                    compiled = inner(gm, example)
                    self.compile_seconds[key] = self.compile_seconds.get(key, 0.0) + time.perf_counter() - start
                    return compiled

                self._compiled[key] = torch.compile(shell, backend=counting, fullgraph=self._fullgraph, dynamic=False)
            return self._compiled[key]

    def forward(self, *inputs: Any, **named: Any) -> Any:
        """The lowered module's outputs; inputs by position or by name, as the lowered module takes them."""
        with TURNS.running():  # not while another thread exports
            return self._forward(inputs, named)

    def _forward(self, inputs: tuple, named: dict[str, Any]) -> Any:
        # checked as the lowered module does, each a new tensor object in one layout: never the caller's
        # tensor, which may carry dynamo's dynamic marks that would make this static graph dynamic
        inputs = self._inputs(inputs, named)
        x = inputs[self.position]
        spatial = tuple(x.shape[2:])
        check_input_size(self.buckets.input, self.buckets.rules, spatial)
        bucket = self.buckets.choose(spatial)
        if bucket != spatial:
            x = _in_layout(self.buckets.pad(x, bucket), self._inputs.formats[self.position])
            inputs = (*inputs[: self.position], x, *inputs[self.position + 1 :])
        out = self._gate.call(self._compiled_for((x.shape[0], bucket)), inputs)
        return out if bucket == spatial else self.buckets.crop(out, spatial)

    def prepare(self, batch: int = 1) -> dict[tuple[int, ...], float]:
        """Compile every bucket at ``batch`` now (each runs once on random inputs); returns the
        seconds each bucket's first call took, compile included."""
        seconds = {}
        for bucket in self.buckets.sizes:
            xs = example_inputs(self.graph, batch=batch, size=bucket).values()
            device = next((p.device for p in self.module.parameters()), torch.device("cpu"))
            start = time.perf_counter()
            with torch.no_grad():
                self(*(t.to(device) for t in xs))
            seconds[bucket] = time.perf_counter() - start
        return seconds

    def extra_repr(self) -> str:
        return self.buckets.describe()
