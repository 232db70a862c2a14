"""Convolution blocks: ``ConvBlock`` (n × conv → norm → act) and ``Head`` (the output projection)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from math import prod
from typing import Sequence

from torch import nn

from ..errors import ShapeError, SpecError
from ..sizes import SizeOp, Window
from ..types import TensorType
from .base import BlockSpec, register_block
from .layers import ACTS, NORMS, axes_text, conv_cls, conv_label, make_norm, norm_notes, validate_norm_act

__all__ = ["ConvBlock", "Head", "same_padding", "check_groups", "cond_input"]


def same_padding(kernel: int, field: str) -> int:
    """Padding that keeps the size for an odd ``kernel`` at stride 1."""
    if kernel % 2 == 0:
        raise SpecError(f"{field}: padding='same' needs an odd kernel, got {kernel}; give padding explicitly")
    return kernel // 2


def check_groups(norm: str, groups: int, channels: int, what: str = "") -> None:
    """Refuse a GroupNorm whose ``groups`` do not divide ``channels``."""
    if norm == "group" and channels % groups:
        where = f" ({what})" if what else ""
        raise SpecError(f"GroupNorm groups={groups} does not divide {channels} channels{where}")


def _spatial_input(spec: BlockSpec, inputs: Sequence[TensorType]) -> TensorType:
    (x,) = inputs
    if x.dims == 0:
        raise ShapeError(f"{spec.type_name} needs a spatial input (N, C, ...), got a per-sample vector of {x.channels}")
    return x


def cond_input(
    spec: BlockSpec, inputs: Sequence[TensorType], sources: Sequence[str], form: str, what: str, missing: str
) -> TensorType:
    """The conditioning input (port 1) of ``spec``, which must be of ``form`` (``what`` says it in
    words); ``missing`` says how to add one when there is none. Raises :class:`ShapeError`."""
    if len(inputs) < 2:
        raise ShapeError(f"{spec.type_name} needs {what}: {missing}")
    if inputs[1].form != form:
        name = sources[1] if len(sources) > 1 else "the cond input"
        raise ShapeError(f"{spec.type_name} needs {what} on its cond edge, got {inputs[1]} from {name}")
    return inputs[1]


@register_block
@dataclass(frozen=True)
class ConvBlock(BlockSpec):
    """``convs`` × (convolution → norm → activation), then optional dropout.

    Args:
        channels: output channels; ``None`` keeps the input's. Builders fill it per level.
        convs: number of convolutions.
        mid_channels: output channels of every convolution but the last (``None``: ``channels``),
            e.g. 3D U-Net's encoder doubles the channels only in its second convolution.
        kernel: kernel size, an int or one per spatial axis.
        padding: ``"same"`` (keeps sizes, odd kernels), ``"valid"`` (no padding, as in
            Ronneberger et al. 2015) or explicit ints.
        stride: stride of the first convolution (a downsampling block when > 1).
        norm: ``"batch"``, ``"group"``, ``"instance"``, ``"layer"`` (over channels) or ``"none"``.
        groups: GroupNorm groups (``norm="group"``).
        act: ``"relu"``, ``"leaky_relu"``, ``"silu"``, ``"gelu"`` or ``"none"``.
        dropout: probability of the dropout after the last activation (0 = none).
        bias: conv bias; ``None`` means "only without a norm" (a norm's shift makes it redundant).

    Shape:
        ``(N, C_in, *S) → (N, channels, *S')`` with ``S'`` from the kernel, padding and stride.
    """

    channels: int | None = None
    convs: int = 2
    kernel: int | tuple[int, ...] = 3
    padding: str | int | tuple[int, ...] = "same"
    stride: int | tuple[int, ...] = 1
    norm: str = "batch"
    groups: int = 32
    act: str = "relu"
    dropout: float = 0.0
    bias: bool | None = None
    mid_channels: int | None = None

    def validate(self) -> None:
        validate_norm_act(self)
        self._positive_int("channels", optional=True)
        self._positive_int("convs")
        self._positive_int("mid_channels", optional=True)
        self._int_or_tuple("kernel")
        self._int_or_tuple("stride")
        if not (isinstance(self.padding, str) and self.padding in ("same", "valid")):
            self._int_or_tuple("padding", zero=True)
        self._require(
            isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1, "dropout", "a probability in [0, 1)"
        )
        self._require(self.bias is None or isinstance(self.bias, bool), "bias", "True, False or None")
        if self.padding == "same":
            for k in self.kernel if isinstance(self.kernel, tuple) else (self.kernel,):
                same_padding(k, f"{self.type_name}.padding")

    @property
    def has_bias(self) -> bool:
        return self.norm == "none" if self.bias is None else self.bias

    def _pad(self, dims: int, axis: int) -> int:
        if self.padding == "valid":
            return 0
        if self.padding == "same":
            return self._per_axis("kernel", dims, axis) // 2
        return self._per_axis("padding", dims, axis)

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        x = _spatial_input(self, inputs)
        self._check_axes(x.dims, "kernel", "stride", "padding")
        out = self.channels or x.channels
        check_groups(self.norm, self.groups, out)
        if self.mid_channels is not None and self.convs > 1:
            check_groups(self.norm, self.groups, self.mid_channels, "mid_channels")
        if self.stride == 1:
            return x.with_(channels=out)
        strides = [self._per_axis("stride", x.dims, a) for a in range(x.dims)]
        return TensorType(out, x.scale).rescaled(tuple(Fraction(1, s) for s in strides))

    def shape_notes(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> list[str]:
        if self.norm == "none":
            return []
        (x,) = inputs
        dims, sizes, notes = len(x) - 2, list(x[2:]), []
        for i in range(self.convs):  # each norm sees its conv's output
            sizes = [self.size_ops(dims, a)[i].apply(n)[0] for a, n in enumerate(sizes)]
            channels = output[1] if i == self.convs - 1 else (self.mid_channels or output[1])
            notes += norm_notes(self.norm, self.groups, (x[0], channels, *sizes))
        return list(dict.fromkeys(notes))

    def size_ops(self, dims: int, axis: int) -> tuple[SizeOp, ...]:
        k, p = self._per_axis("kernel", dims, axis), self._pad(dims, axis)
        first = Window(k, self._per_axis("stride", dims, axis), p)
        return (first,) + (Window(k, 1, p),) * (self.convs - 1)

    def _kernel(self, dims: int) -> tuple[int, ...]:
        return tuple(self._per_axis("kernel", dims, a) for a in range(dims))

    def _widths(self, cin: int, cout: int) -> list[tuple[int, int]]:
        """``(in, out)`` channels of each convolution."""
        mid = self.mid_channels or cout
        outs = [mid] * (self.convs - 1) + [cout]
        return list(zip([cin, *outs[:-1]], outs))

    def build(self, inputs: Sequence[TensorType], output: TensorType) -> nn.Module:
        (x,) = inputs
        dims, cout = x.dims, output.channels
        conv = conv_cls(dims)
        pad = tuple(self._pad(dims, a) for a in range(dims))
        stride = tuple(self._per_axis("stride", dims, a) for a in range(dims))
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, (cin, c) in enumerate(self._widths(x.channels, cout)):
            layers[f"conv{i}"] = conv(
                cin, c, self._kernel(dims), stride=stride if i == 0 else 1, padding=pad, bias=self.has_bias
            )
            if self.norm != "none":
                layers[f"norm{i}"] = NORMS[self.norm][0](c, dims, self.groups)
            if self.act != "none":
                layers[f"act{i}"] = ACTS[self.act]()
        if self.dropout:
            layers["dropout"] = nn.Dropout(self.dropout)
        return nn.Sequential(layers)

    def params(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        (x,) = inputs
        k, cout = prod(self._kernel(x.dims)), output.channels
        total = 0
        for cin, c in self._widths(x.channels, cout):
            total += cin * c * k + (c if self.has_bias else 0)
            if self.norm != "none":
                total += NORMS[self.norm][1] * c
        return total

    def flops(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        (x,) = inputs
        dims, k, cout = len(x) - 2, prod(self._kernel(len(x) - 2)), output[1]
        sizes = list(x[2:])
        total = 0
        for i, (cin, c) in enumerate(self._widths(x[1], cout)):
            sizes = [self.size_ops(dims, a)[i].apply(n)[0] for a, n in enumerate(sizes)]
            total += 2 * x[0] * prod(sizes) * c * cin * k
        return total

    def label(self) -> str:
        head = f"{self.convs}×conv{axes_text(self.kernel)}"
        return conv_label(self, head + (" valid" if self.padding == "valid" else ""))


@register_block
@dataclass(frozen=True)
class Head(BlockSpec):
    """The output projection: one convolution (1×1 by default) to ``channels`` outputs, with bias,
    optionally pre-activated by ``norm → act`` (DDPM's output block: GroupNorm → SiLU → conv3×3).

    Args:
        channels: output channels; builders set ``out_channels``.
        kernel: odd kernel size, an int or one per axis.
        norm, groups, eps: a norm before the convolution (``"none"`` by default).
        act: an activation before the convolution (``"none"`` by default).

    Shape:
        ``(N, C_in, *S) → (N, channels, *S)``.
    """

    channels: int | None = None
    kernel: int | tuple[int, ...] = 1
    norm: str = "none"
    groups: int = 32
    eps: float | None = None
    act: str = "none"

    def validate(self) -> None:
        validate_norm_act(self)
        self._positive_int("channels", optional=True)
        self._int_or_tuple("kernel")
        for k in self.kernel if isinstance(self.kernel, tuple) else (self.kernel,):
            same_padding(k, f"{self.type_name}.kernel")

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        x = _spatial_input(self, inputs)
        self._check_axes(x.dims, "kernel")
        check_groups(self.norm, self.groups, x.channels)
        return x.with_(channels=self.channels or x.channels)

    def build(self, inputs: Sequence[TensorType], output: TensorType) -> nn.Module:
        (x,) = inputs
        kernel = tuple(self._per_axis("kernel", x.dims, a) for a in range(x.dims))
        conv = conv_cls(x.dims)(x.channels, output.channels, kernel, padding=tuple(k // 2 for k in kernel))
        if self.norm == "none" and self.act == "none":
            return conv
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if self.norm != "none":
            layers["norm"] = make_norm(self.norm, x.channels, x.dims, self.groups, self.eps)
        if self.act != "none":
            layers["act"] = ACTS[self.act]()
        layers["conv"] = conv
        return nn.Sequential(layers)

    def params(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        (x,) = inputs
        k = prod(self._per_axis("kernel", x.dims, a) for a in range(x.dims))
        norm = NORMS[self.norm][1] * x.channels if self.norm != "none" else 0
        return x.channels * output.channels * k + output.channels + norm

    def shape_notes(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> list[str]:
        return norm_notes(self.norm, self.groups, inputs[0]) if self.norm != "none" else []

    def flops(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        (x,) = inputs
        k = prod(self._per_axis("kernel", len(x) - 2, a) for a in range(len(x) - 2))
        return 2 * x[0] * prod(output[2:]) * output[1] * x[1] * k

    def label(self) -> str:
        k = axes_text(self.kernel)
        pre = "".join(f"{p} → " for p in (self.norm, self.act) if p != "none")
        return f"{pre}conv{k} → {self.channels}" if self.channels else f"{pre}conv{k}"
