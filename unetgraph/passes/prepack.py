"""Keep convolution weights in oneDNN's blocked layout, and fuse the activation that follows.

On the CPU, ``F.conv2d`` hands oneDNN a weight in torch's layout on every call, and oneDNN
reorders the whole weight into its blocked layout before convolving (``ONEDNN_VERBOSE=1``
shows a ``reorder`` of the weight before each ``brg_conv_fwd``). The reorder costs time in
proportion to the weight, not to the work, so it dominates where weights are large and feature
maps small: the deep levels of a U-Net (a 1024→1024 3×3 convolution at 8×8 spends three
quarters of its time reordering its 36 MB weight; see ``benchmarks/prepack.py``).
:class:`PackedConv` reorders once and calls ``torch.ops.mkldnn._convolution_pointwise`` with the
packed weight, fused with the activation that follows where oneDNN has it as a post-op.
:class:`PackedLinear` does the same for ``nn.Linear`` with oneDNN's inner product (torch runs
``F.linear`` on MKL, which takes its AVX2 code path on AMD CPUs).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, NoReturn

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd

from ..blocks.base import leaf_module
from ..errors import LoweringError
from .base import (
    PassResult,
    copy_meta,
    drop_module,
    free_target,
    held_by,
    hold,
    module_users,
    refuse_input,
    replace_node,
)

__all__ = ["prepack", "unpack", "PackedConv", "PackedLinear", "has_packed", "conv_padding"]


class Fusion(NamedTuple):
    """A oneDNN post-op: ``attr`` with its ``scalars`` and ``algorithm`` (the op's own arguments)."""

    attr: str
    scalars: tuple[float, ...] = ()
    algorithm: str = ""


_NONE = Fusion("none")


def _module_fusion(module: nn.Module) -> Fusion | None:
    """The post-op computing ``module`` (an activation layer), or ``None``."""
    if isinstance(module, nn.ReLU):
        return Fusion("relu")
    if isinstance(module, nn.SiLU):
        return Fusion("swish")
    if isinstance(module, nn.GELU):
        return Fusion("gelu", (), module.approximate)
    if isinstance(module, nn.LeakyReLU):
        return Fusion("leaky_relu", (float(module.negative_slope),))
    if isinstance(module, nn.Sigmoid):
        return Fusion("sigmoid")
    if isinstance(module, nn.Tanh):
        return Fusion("tanh")
    if isinstance(module, nn.Hardswish):
        return Fusion("hardswish")
    if isinstance(module, nn.Hardtanh):  # ReLU6 too
        return Fusion("hardtanh", (float(module.min_val), float(module.max_val)))
    return None


# activations called as functions (fused when called on the convolution's output alone)
_FUNCTIONS: dict[Any, Fusion] = {
    F.relu: Fusion("relu"),
    torch.relu: Fusion("relu"),
    F.silu: Fusion("swish"),
    torch.sigmoid: Fusion("sigmoid"),
    F.sigmoid: Fusion("sigmoid"),
    torch.tanh: Fusion("tanh"),
    F.tanh: Fusion("tanh"),
}


def _node_fusion(gm: fx.GraphModule, node: fx.Node) -> Fusion | None:
    """The post-op computing ``node`` from its first argument alone, or ``None``."""
    if node.op == "call_module":
        return _module_fusion(gm.get_submodule(str(node.target)))
    if node.op == "call_function" and node.target in _FUNCTIONS and len(node.args) == 1:
        if all(k == "inplace" for k in node.kwargs):
            return _FUNCTIONS[node.target]
    if node.op == "call_function" and node.target is F.gelu and len(node.args) == 1:
        if set(node.kwargs) <= {"approximate"}:
            return Fusion("gelu", (), str(node.kwargs.get("approximate", "none")))
    return None


def conv_padding(conv: _ConvNd) -> list[int] | None:
    """``conv``'s padding per axis as ints (each side alike), or ``None`` for an asymmetric
    ``"same"`` (an even kernel: torch pads one more on the far side)."""
    if conv.padding == "valid":
        return [0] * len(conv.kernel_size)
    if conv.padding == "same":
        totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        return None if any(t % 2 for t in totals) else [t // 2 for t in totals]
    return [int(p) for p in conv.padding]


def _explicit_padding(conv: _ConvNd) -> list[int] | str:
    """Per-axis symmetric padding of ``conv`` as ints, or why oneDNN's op cannot take it."""
    if conv.padding_mode != "zeros":
        return f"pads in {conv.padding_mode!r} mode (oneDNN pads with zeros only)"
    padding = conv_padding(conv)
    if padding is None:
        return "'same' padding with an even kernel is asymmetric (oneDNN's op takes one value per axis)"
    return padding


def _packable(dtype: torch.dtype) -> bool:
    """float32, and bfloat16 where oneDNN has bfloat16 kernels on this CPU (AVX512-BF16, AMX)."""
    if dtype == torch.float32:
        return True
    return dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _why_not(layer: _ConvNd | nn.Linear) -> str:
    """Why ``layer`` (a convolution or an ``nn.Linear``) cannot be prepacked ('' when it can)."""
    if not torch.backends.mkldnn.is_available():
        return f"torch {torch.__version__} has no oneDNN"
    if layer.weight.device.type != "cpu":
        return f"on {layer.weight.device.type} (oneDNN packing is for the CPU)"
    if not _packable(layer.weight.dtype):
        return f"{layer.weight.dtype} weights (oneDNN packs float32, and bfloat16 on CPUs with its kernels)"
    if isinstance(layer, nn.Linear):
        return ""
    dims = layer.weight.dim() - 2
    if dims not in (2, 3):
        return f"{dims}D (oneDNN's packed convolutions take 2D and 3D)"
    padding = _explicit_padding(layer)
    if isinstance(padding, str):
        return padding
    if layer.transposed:
        if layer.groups > 1 and layer.groups == layer.in_channels:
            return "a depthwise transposed convolution (not in oneDNN's packed op)"
        if any(p >= s for p, s in zip(layer.output_padding, layer.stride)):
            return "output_padding ≥ stride"
    return ""


class _Packed(nn.Module):
    """What a layer with a oneDNN-packed weight shares: its ``weight`` and ``bias`` as its own
    parameters (a module's ``state_dict`` keeps its keys), the fused activation, and a packed
    copy of the weight remade whenever the weight changes in place (its version counter moves)
    or the module moves or is copied. Subclasses say how to pack (:meth:`_pack`)."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        fusion: Fusion,
        activation: nn.Module | Callable | None,
        activation_target: str | None,
        name: str,
    ) -> None:
        super().__init__()
        self.name = name or type(self).__name__  # the layer's path in its model, for errors
        self.weight: torch.Tensor = weight  # the layer's Parameter itself (shared, not copied)
        self.bias: torch.Tensor | None = bias
        self.activation, self.scalars, self.algorithm = fusion.attr, list(fusion.scalars), fusion.algorithm
        self._fusion = (self.activation, self.scalars, self.algorithm)  # the oneDNN op's last three arguments
        if isinstance(activation, nn.Module):
            self.act: nn.Module | None = activation
            self.act_function: Callable | None = None
        else:
            self.act, self.act_function = None, activation
        self.activation_target = activation_target  # where the activation module lived, for unpack
        self._packed: tuple[torch.Tensor | None, int] = (None, -1)  # (packed weight, the weight's version)

    def _pack(self, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def repack(self) -> None:
        """Pack the current weight (or drop the packed copy when the weight cannot be packed)."""
        w = self.weight
        if w.device.type != "cpu" or not _packable(w.dtype):
            self._packed = (None, w._version)
            return
        with torch.no_grad():
            self._packed = (self._pack(w.detach()), w._version)

    def _current(self) -> torch.Tensor | None:
        packed, version = self._packed
        if version != self.weight._version:
            self.repack()
            packed = self._packed[0]
        return packed

    def _fast(self, *xs: torch.Tensor) -> bool:
        """Whether the packed weight serves this call (else the plain layer computes it): not
        while autograd records or ``torch.compile``/``torch.export`` trace (they see the plain
        layer and activation and do their own packing), and only for inputs of the weight's dtype."""
        if torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return False
        if torch.is_grad_enabled() and any(p is not None and p.requires_grad for p in (self.weight, self.bias)):
            return False
        return all(x.dtype == self.weight.dtype for x in xs)

    def _refuse(self, got: tuple[int, ...], expected: str) -> NoReturn:
        """A :class:`ShapeError` naming this layer, for an input it cannot take."""
        refuse_input(self.name, expected, got)

    def to_plain(self) -> tuple[nn.Module, nn.Module | Callable | None]:
        """The plain layer (sharing this module's parameters) and the fused activation."""
        raise NotImplementedError

    def _activate(self, y: torch.Tensor) -> torch.Tensor:
        """The fused activation, computed the plain way."""
        if self.act is not None:
            return self.act(y)
        if self.act_function is not None:
            return self.act_function(y)
        return y

    def activation_layer(self) -> nn.Module | Callable | None:
        """The fused activation as it was in the graph: a module, a function or ``None``."""
        return self.act if self.act is not None else self.act_function

    def _drop_packed(self) -> None:
        self._packed = (None, -1)

    def _apply(self, fn: Callable, recurse: bool = True) -> _Packed:
        super()._apply(fn, recurse)
        self._drop_packed()  # a move or cast: packed again at the next call, where packing applies
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_packed"] = (None, -1)  # oneDNN's tensors do not pickle or deepcopy: packed at the next call
        return state

    def _fused_repr(self) -> str:
        return "" if self.activation == "none" else f", fused {self.activation}"


@leaf_module
class PackedConv(_Packed):
    """A 2D or 3D convolution (plain or transposed) with its weight packed in oneDNN's layout,
    optionally with a fused activation.

    It holds the convolution's ``weight`` and ``bias`` as its own parameters (so a module's
    ``state_dict`` keeps its keys) and a packed copy, remade whenever the weight changes in
    place (``load_state_dict``, ``weight.mul_``: its version counter moves) or the module moves
    (``.to(...)``): a weight that is not float32 (or bfloat16, see :func:`prepack`) on the CPU is
    not packed and the layer computes
    the plain way. It also computes the plain way while autograd records (gradients stay
    right), and under ``torch.compile``/``torch.export`` (they see ``F.conv2d`` + activation and
    do their own packing). :meth:`to_plain` gives the convolution and activation back.

    Shape:
        as the convolution.
    """

    def __init__(
        self,
        conv: _ConvNd,
        fusion: Fusion = _NONE,
        activation: nn.Module | Callable | None = None,
        activation_target: str | None = None,
        *,
        name: str = "",
    ) -> None:
        why, padding = _why_not(conv), _explicit_padding(conv)
        if why or isinstance(padding, str):
            raise LoweringError(f"PackedConv: cannot pack this {type(conv).__name__}: {why or padding}")
        super().__init__(conv.weight, conv.bias, fusion, activation, activation_target, name)
        self.conv_class = type(conv)
        self.transposed = bool(conv.transposed)
        self.in_channels, self.out_channels, self.groups = conv.in_channels, conv.out_channels, conv.groups
        self.kernel_size = tuple(conv.kernel_size)
        self.stride, self.dilation = list(conv.stride), list(conv.dilation)
        self.padding = padding
        self.padding_arg = conv.padding  # as the convolution was built ('same', 'valid' or ints)
        self.output_padding = list(conv.output_padding)
        # the concatenation this convolution reads its inputs without (see _concatenated):
        # (its fx node name, its meta["custom"], the record's graph nodes it held), for unpack
        self.concat: tuple[str, dict[str, Any], tuple[str, ...]] | None = None
        self._parts: dict[tuple[int, ...], tuple[tuple[torch.Tensor, ...], int]] = {}  # input split → packed slices
        self.repack()

    def _pack(self, weight: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return torch.ops.mkldnn._reorder_convolution_transpose_weight(
                weight, self.padding, self.output_padding, self.stride, self.dilation, self.groups, None
            )
        return torch.ops.mkldnn._reorder_convolution_weight(
            weight, self.padding, self.stride, self.dilation, self.groups, None
        )

    def forward(self, x: torch.Tensor, *more: torch.Tensor) -> torch.Tensor:
        if more:
            return self._concatenated((x, *more))
        dims = len(self.kernel_size)
        batched = x.dim() == dims + 2
        if not (batched or x.dim() == dims + 1) or x.shape[-dims - 1] != self.in_channels:
            axes = ", ".join("DHW"[3 - dims :])
            self._refuse(tuple(x.shape), f"(N, {self.in_channels}, {axes}) or ({self.in_channels}, {axes})")
        packed = self._current() if batched and self._fast(x) else None  # unbatched: as the convolution does
        if packed is None:
            return self._plain(x)
        padding: tuple[list[int], ...]
        if self.transposed:
            op, padding = torch.ops.mkldnn._convolution_transpose_pointwise, (self.padding, self.output_padding)
        else:
            op, padding = torch.ops.mkldnn._convolution_pointwise, (self.padding,)
        return op(x, packed, self.bias, *padding, self.stride, self.dilation, self.groups, *self._fusion)

    def _concatenated(self, xs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The convolution of ``torch.cat(xs, 1)``; a large concatenation is never made.

        Above :data:`SPLIT_BYTES` the inputs are convolved one by one with their slices of the
        weight, each result added by oneDNN's sum post-op (the activation fused into the last):
        a buffer that large comes fresh from the system on every call (glibc maps blocks above
        32 MiB), so concatenating pays page faults and zeroing on top of the copy. Under
        :func:`~unetgraph.keep_freed_memory` the copy alone still cost more (78 vs 83 ms on a
        forward that splits), so the rule holds either way.
        """
        rest = [(x.dim(), *x.shape[:1], *x.shape[2:]) for x in xs]
        if any(r != rest[0] for r in rest):  # torch.cat's own error would not name the layer
            self._refuse(tuple(xs[1].shape), f"{tuple(xs[0].shape)} but for the channels, as the first input")
        if not self._fast(*xs):  # first: nothing size-dependent while torch.compile traces
            return self.forward(torch.cat(xs, 1))
        channels = tuple(int(x.shape[1]) for x in xs)
        big = sum(x.numel() * x.element_size() for x in xs) >= SPLIT_BYTES
        splittable = self.weight.dtype == torch.float32 and self.activation in _SPLIT_ACTIVATIONS
        if not (big and splittable and sum(channels) == self.in_channels):
            return self.forward(torch.cat(xs, 1))
        parts = self._split(channels)
        if parts is None:
            return self.forward(torch.cat(xs, 1))
        geometry = (self.padding, self.stride, self.dilation, self.groups)
        op = torch.ops.mkldnn._convolution_pointwise
        y = op(xs[-1], parts[-1], self.bias, *geometry, "none", [], "")
        for k in range(len(xs) - 2, -1, -1):
            act = self.activation if k == 0 and self.activation != "none" else None
            y = op.binary(xs[k], y, parts[k], None, *geometry, "add", None, act, [], "")
        return y

    def _split(self, channels: tuple[int, ...]) -> tuple[torch.Tensor, ...] | None:
        """The weight's input-channel slices for ``channels``, packed (``None`` off the CPU)."""
        w = self.weight
        if self.transposed or self.groups != 1 or w.device.type != "cpu":
            return None
        parts, version = self._parts.get(channels, ((), -1))
        if version != w._version:
            with torch.no_grad():
                slices = torch.split(w.detach(), list(channels), dim=1)
                parts = tuple(
                    torch.ops.mkldnn._reorder_convolution_weight(
                        part.contiguous(), self.padding, self.stride, self.dilation, self.groups, None
                    )
                    for part in slices
                )
            self._parts = {**self._parts, channels: (parts, w._version)}
        return parts

    def _plain(self, x: torch.Tensor) -> torch.Tensor:
        dims = len(self.kernel_size)
        conv: Callable[..., torch.Tensor]
        if self.transposed:
            conv = (F.conv_transpose2d, F.conv_transpose3d)[dims - 2]
            y = conv(
                x, self.weight, self.bias, self.stride, self.padding, self.output_padding, self.groups, self.dilation
            )
        else:
            conv = (F.conv2d, F.conv3d)[dims - 2]
            y = conv(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return self._activate(y)

    def to_plain(self) -> tuple[_ConvNd, nn.Module | Callable | None]:
        """The convolution (a new ``self.conv_class`` sharing this module's parameters) and the
        fused activation (a module, a function or ``None``)."""
        options: dict[str, Any] = dict(
            stride=tuple(self.stride),
            padding=self.padding_arg,
            dilation=tuple(self.dilation),
            groups=self.groups,
            bias=self.bias is not None,
            device="meta",
        )
        if self.transposed:
            options["output_padding"] = tuple(self.output_padding)
        conv = self.conv_class(self.in_channels, self.out_channels, self.kernel_size, **options)
        conv.weight = self.weight
        conv.bias = self.bias
        return conv, self.activation_layer()

    def _drop_packed(self) -> None:
        super()._drop_packed()
        self._parts = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_parts": {}}

    def extra_repr(self) -> str:
        kind = "transposed " if self.transposed else ""
        act = self._fused_repr()
        concat = "" if self.concat is None else f", reads {self.concat[0]}'s inputs"
        return (
            f"{kind}{self.in_channels}→{self.out_channels}, kernel {self.kernel_size}, stride {tuple(self.stride)}, "
            f"padding {tuple(self.padding)}{act}{concat}"
        )


@leaf_module
class PackedLinear(_Packed):
    """An ``nn.Linear`` with its weight packed in oneDNN's layout, optionally with a fused activation.

    Why: on the CPU, ``F.linear`` runs on MKL's GEMM, which on AMD processors takes its AVX2 path;
    oneDNN's inner product takes AVX-512 where the CPU has it (on a Zen 5 EPYC, 2.2× the rate
    for the attention and embedding layers of the diffusion presets; the same rate on Zen 4).
    Like :class:`PackedConv` it keeps ``weight`` and ``bias`` (the ``state_dict`` keeps its
    keys), follows in-place weight changes and moves, and computes the plain way while autograd
    records and under ``torch.compile``/``torch.export`` (inductor packs ``F.linear`` for oneDNN
    itself where the number of rows is dynamic, and runs it on MKL where it is static).
    :meth:`to_plain` gives the ``nn.Linear`` and the activation back.

    Shape:
        as ``nn.Linear``: ``(*, in_features)`` → ``(*, out_features)``.
    """

    def __init__(
        self,
        linear: nn.Linear,
        fusion: Fusion = _NONE,
        activation: nn.Module | Callable | None = None,
        activation_target: str | None = None,
        *,
        name: str = "",
    ) -> None:
        why = _why_not(linear)
        if why:
            raise LoweringError(f"PackedLinear: cannot pack this {type(linear).__name__}: {why}")
        super().__init__(linear.weight, linear.bias, fusion, activation, activation_target, name)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.repack()

    def _pack(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._reorder_linear_weight(weight, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            self._refuse(tuple(x.shape), f"(*, {self.in_features})")
        usable = self._fast(x) and x.dim() >= 2 and x.numel() > 0
        packed = self._current() if usable else None
        if packed is None:
            return self._activate(F.linear(x, self.weight, self.bias))
        return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, *self._fusion)

    def to_plain(self) -> tuple[nn.Linear, nn.Module | Callable | None]:
        """The ``nn.Linear`` (sharing this module's parameters) and the fused activation."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = self.weight
        linear.bias = self.bias  # type: ignore[assignment]  # torch declares Parameter; None or ours, as built
        return linear, self.activation_layer()

    def extra_repr(self) -> str:
        return f"{self.in_features}→{self.out_features}{self._fused_repr()}"


SPLIT_BYTES = 32 * 2**20
"""Concatenations at least this large (all inputs together) are not made by a
:class:`PackedConv` that reads them (glibc's largest ``mmap`` threshold: larger blocks are
mapped fresh, page-faulted and zeroed on every call)."""

_SPLIT_ACTIVATIONS = ("none", "relu")  # post-ops oneDNN applies after its sum (measured on this torch)


def prepack(gm: fx.GraphModule, *, fuse: bool = True) -> PassResult:
    """Replace each 2D/3D CPU convolution with a :class:`PackedConv` and each ``nn.Linear`` with a
    :class:`PackedLinear`, in place, fusing the activation that alone reads its output (ReLU,
    SiLU, GELU, LeakyReLU, sigmoid, tanh, hardswish, hardtanh; with ``fuse=True``).

    The rule is every convolution oneDNN's packed op takes: prepacking never lost in the
    measured table (``benchmarks/prepack.py``: 3×3, 1×1 and 2×2 transposed layers of 16 to 1024
    channels at the sizes U-Net levels see, 2D and 3D, batch 1 and 8); it gains most where
    weights are large and maps small (2–5× for 512–1024 channels at 4–8 pixels a side, batch 1)
    and little at large maps. The others stay, with a note: 1D, other devices or dtypes,
    ``padding_mode`` other than zeros, asymmetric 'same' padding, depthwise transposed ones.

    A packed convolution that alone reads a channel concatenation (a merge before a decoder
    block) takes the concatenated tensors instead, and from :data:`SPLIT_BYTES` on convolves
    them one by one rather than making the concatenation (:meth:`PackedConv._concatenated`); the
    merge's graph node then names that convolution (``ug.fx_node_names``) until :func:`unpack`.

    Weights are packed in float32, and in bfloat16 (after ``optimize(dtype=torch.bfloat16)``) on
    CPUs where oneDNN has bfloat16 kernels; the reorder is exact, so outputs are unchanged within
    rounding (oneDNN sums in another order). The packed weight is used on the CPU, for inputs of
    the weight's dtype, under ``torch.no_grad()``/``inference_mode``;
    :func:`unpack` (or :func:`~unetgraph.passes.plain`, on a copy) gives plain modules back for export, ONNX and
    eject, which :func:`unetgraph.export`, :func:`unetgraph.eject` and :func:`unetgraph.compile`
    do themselves.

    Linears: oneDNN's inner product with a packed weight ran 2.2–2.4× MKL's GEMM on a Zen 5 EPYC
    and as fast on Zen 4 (``benchmarks/prepack.py``); subclasses of ``nn.Linear`` stay.

    Returns:
        A :class:`PassResult`: one line per packed layer (and the activation fused into it),
        notes for the layers left alone.
    """
    name = "prepack"
    changes: list[str] = []
    skipped: dict[str, list[str]] = {}  # why → convolutions
    fused: set[fx.Node] = set()
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or node in fused:
            continue
        layer = gm.get_submodule(str(node.target))
        if not (isinstance(layer, _ConvNd) or type(layer) is nn.Linear):
            continue
        why = _why_not(layer)
        if why:
            skipped.setdefault(why, []).append(str(node.target))
            continue
        shared = len(module_users(gm, str(node.target))) > 1
        act_node = _fusable(gm, node) if fuse and not shared else None
        fusion, target = _NONE, None
        activation: nn.Module | Callable | None = None
        if act_node is not None:
            fusion = _node_fusion(gm, act_node) or _NONE
            if act_node.op == "call_module":
                target = str(act_node.target)
                activation = gm.get_submodule(target)
            elif callable(act_node.target):  # a call_function (_node_fusion fuses no other kind)
                activation = act_node.target
            else:
                raise LoweringError(f"prepack: cannot fuse {act_node.format_node()} (its target is not callable)")
        packed: _Packed = (
            PackedConv(layer, fusion, activation, target, name=str(node.target))
            if isinstance(layer, _ConvNd)
            else PackedLinear(layer, fusion, activation, target, name=str(node.target))
        )
        gm.add_submodule(str(node.target), packed)
        line = f"{node.target}: {_describe(layer)} packed"
        if act_node is not None:
            fused.add(act_node)
            replace_node(gm, act_node, node)
            if act_node.op == "call_module":
                drop_module(gm, str(act_node.target))
            line += f", {act_node.name} ({fusion.attr}) fused"
        changes.append(line)
    changes += _read_concatenations(gm)
    notes = [f"{_names(targets)} left alone: {why}" for why, targets in skipped.items()]
    if not changes and not notes:
        notes.append("no convolutions or Linear layers")
    if changes:
        gm.graph.lint()
        gm.recompile()
    return PassResult(name, tuple(changes), tuple(notes))


def _read_concatenations(gm: fx.GraphModule) -> list[str]:
    """Let each packed 2D/3D convolution that alone reads a channel concatenation (a U-Net's
    merge before its decoder block) take the concatenated tensors themselves; see
    :meth:`PackedConv._concatenated`. One line per convolution."""
    lines = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not torch.cat or len(node.users) != 1:
            continue
        tensors = node.args[0] if node.args else None
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        (user,) = node.users
        if dim != 1 or not isinstance(tensors, (list, tuple)) or len(tensors) < 2:
            continue
        if not all(isinstance(t, fx.Node) for t in tensors) or user.op != "call_module":
            continue
        conv = gm.get_submodule(str(user.target))
        if not isinstance(conv, PackedConv) or conv.concat is not None or user.args != (node,) or user.kwargs:
            continue
        if conv.transposed or conv.groups != 1 or len(module_users(gm, str(user.target))) > 1:
            continue
        held = held_by(gm, node.name)
        conv.concat = (node.name, dict(node.meta.get("custom", {})), held)
        user.args = tuple(tensors)
        hold(gm, held, user.name)
        gm.graph.erase_node(node)
        lines.append(
            f"{user.target}: reads {node.name}'s {len(tensors)} inputs without concatenating them "
            f"(above {SPLIT_BYTES // 2**20} MiB)"
        )
    return lines


def _names(targets: list[str], shown: int = 4) -> str:
    more = len(targets) - shown
    return ", ".join(targets[:shown]) + (f" and {more} more" if more > 0 else "")


def _fusable(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """The activation node that alone reads ``node``'s output and that oneDNN can fuse, if any."""
    if len(node.users) != 1:
        return None
    (user,) = node.users
    if not user.args or user.args[0] is not node or _node_fusion(gm, user) is None:
        return None
    if user.op == "call_module" and len(module_users(gm, str(user.target))) > 1:
        return None  # an activation module called elsewhere too stays (it is not ours to take)
    return user


def _describe(layer: _ConvNd | nn.Linear) -> str:
    weight_mb = layer.weight.numel() * layer.weight.element_size() / 2**20
    if isinstance(layer, nn.Linear):
        return f"Linear {layer.in_features}→{layer.out_features} ({weight_mb:.2g} MB)"
    kernel = "×".join(map(str, layer.kernel_size))
    kind = "transposed " if layer.transposed else ""
    return f"{kind}{kernel} {layer.in_channels}→{layer.out_channels} ({weight_mb:.2g} MB)"


def has_packed(module: nn.Module) -> bool:
    """Whether ``module`` holds any :class:`PackedConv` or :class:`PackedLinear`."""
    return any(isinstance(m, _Packed) for m in module.modules())


def unpack(gm: fx.GraphModule) -> PassResult:
    """Turn every :class:`PackedConv` and :class:`PackedLinear` of ``gm`` back into its plain
    layer and activation, in place.

    The plain layer takes the packed module's place (same parameters, same ``state_dict``
    keys); a fused activation becomes its own node again after it (a module under the path it
    had, with a ``_1`` suffix if that path is taken, or the function it was).
    """
    changes = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        module = gm.get_submodule(str(node.target))
        if not isinstance(module, _Packed):
            continue
        layer, activation = module.to_plain()
        gm.add_submodule(str(node.target), layer)
        line = f"{node.target}: plain {type(layer).__name__}"
        if isinstance(module, PackedConv) and module.concat is not None:
            line += _restore_concatenation(gm, node, module.concat)
        if activation is not None:
            with gm.graph.inserting_after(node):
                if isinstance(activation, nn.Module):
                    target = free_target(gm, module.activation_target or str(node.target) + "_act")
                    gm.add_submodule(target, activation)
                    act = gm.graph.call_module(target, (node,))
                else:
                    act = gm.graph.call_function(activation, (node,))
            copy_meta(node, act)
            node.replace_all_uses_with(act, delete_user_cb=lambda user, act=act: user is not act)
            hold(gm, held_by(gm, node.name), act.name)
            line += f" + {act.name}"
        changes.append(line)
    if changes:
        gm.graph.lint()
        gm.recompile()
    return PassResult("unpack", tuple(changes))


def _restore_concatenation(
    gm: fx.GraphModule, node: fx.Node, concat: tuple[str, dict[str, Any], tuple[str, ...]]
) -> str:
    """Put the concatenation :func:`_read_concatenations` took away back before ``node``."""
    name, custom, held = concat
    with gm.graph.inserting_before(node):
        cat = gm.graph.call_function(torch.cat, (tuple(node.args),), {"dim": 1})
    cat._rename(name)  # its own name again (a suffix where another node took it)
    if custom:
        cat.meta["custom"] = dict(custom)
    node.args = (cat,)
    hold(gm, held, cat.name)
    return f" reading {cat.name}"
