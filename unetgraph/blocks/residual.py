"""Post-activation residual blocks: ``ResidualUnit`` (MONAI's residual unit, Kerfoot et al. 2018)
and ``BasicResBlock`` (the basic block of He et al. 2016, as nnU-Net's and MONAI's ``UnetResBlock``)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from math import prod
from typing import Sequence

import torch
from torch import nn

from ..sizes import SizeOp, Window
from ..types import TensorType
from .base import BlockSpec, register_block
from .conv import _spatial_input, check_groups, same_padding
from .layers import (
    act_params,
    axes_text,
    conv_cls,
    conv_label,
    make_act,
    make_norm,
    norm_notes,
    norm_params,
    post_conv_layers,
    validate_norm_act,
)

__all__ = ["ResidualUnit", "BasicResBlock", "ResidualUnitModule", "BasicResBlockModule"]


def _axes(spec: BlockSpec, field: str, dims: int) -> tuple[int, ...]:
    return tuple(spec._per_axis(field, dims, a) for a in range(dims))


def _check_kernel(spec: BlockSpec) -> None:
    kernel = spec.kernel  # type: ignore[attr-defined]
    for k in kernel if isinstance(kernel, tuple) else (kernel,):
        same_padding(k, f"{spec.type_name}.kernel")


def _check_dropout(spec: BlockSpec) -> None:
    dropout = spec.dropout  # type: ignore[attr-defined]
    spec._require(isinstance(dropout, (int, float)) and 0 <= dropout < 1, "dropout", "a probability in [0, 1)")


def _strided_infer(spec: ResidualUnit | BasicResBlock, inputs: Sequence[TensorType]) -> TensorType:
    """``channels`` (or the input's) at the input's scale divided by ``stride``; every norm sees the output."""
    x = _spatial_input(spec, inputs)
    spec._check_axes(x.dims, "kernel", "stride")
    out = spec.channels or x.channels
    check_groups(spec.norm, spec.groups, out)
    return TensorType(out, x.scale).rescaled(tuple(Fraction(1, s) for s in _axes(spec, "stride", x.dims)))


class ResidualUnitModule(nn.Module):
    """``units(x) + residual(x)``: a chain of convolution units and a shortcut (identity or a conv).

    Shape:
        ``(N, C_in, *S) → (N, C_out, *S / stride)``.
    """

    def __init__(self, units: nn.Module, residual: nn.Module | None) -> None:
        super().__init__()
        self.units = units
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = x if self.residual is None else self.residual(x)
        return self.units(x) + res


@register_block
@dataclass(frozen=True)
class ResidualUnit(BlockSpec):
    """MONAI's residual unit (Kerfoot et al. 2018, ``monai.networks.blocks.ResidualUnit``):
    ``subunits`` × (convolution → norm/dropout/act in ``order``), added to a shortcut.

    The first convolution carries the stride. The shortcut is the input itself when the
    stride is 1 and the channels stay; a 1×1 convolution when only the channels change; and a
    convolution with the block's kernel, stride and padding when it down-samples.

    Args:
        channels: output channels; ``None`` keeps the input's.
        kernel: odd kernel size, an int or one per axis.
        stride: stride of the first convolution (and the shortcut).
        subunits: number of convolution units (MONAI's ``subunits``, at least 1).
        norm, groups, act: as :class:`~unetgraph.ConvBlock` (MONAI's defaults:
            ``"instance(affine=False)"`` and ``"prelu"``).
        dropout: dropout probability, where ``order`` puts its ``D``.
        order: norm (N), dropout (D), activation (A) after each convolution (``"NDA"``).
        bias: convolution biases (the shortcut's too).
        last_conv_only: the last unit is its convolution alone (no norm, dropout or act).

    Shape:
        ``(N, C_in, *S) → (N, channels, *floor((S - 1) / stride + 1))``.
    """

    channels: int | None = None
    kernel: int | tuple[int, ...] = 3
    stride: int | tuple[int, ...] = 1
    subunits: int = 2
    norm: str = "instance(affine=False)"
    groups: int = 32
    act: str = "prelu"
    dropout: float = 0.0
    order: str = "NDA"
    bias: bool = True
    last_conv_only: bool = False

    def validate(self) -> None:
        validate_norm_act(self)
        self._positive_int("channels", optional=True)
        self._int_or_tuple("kernel")
        self._int_or_tuple("stride")
        _check_kernel(self)
        self._positive_int("subunits")
        _check_dropout(self)
        self._require(isinstance(self.bias, bool), "bias", "True or False")
        self._require(isinstance(self.last_conv_only, bool), "last_conv_only", "True or False")

    def _bare(self, unit: int) -> bool:
        """Whether ``unit`` is its convolution alone."""
        return self.last_conv_only and unit == self.subunits - 1

    def _shortcut_kernel(self, cin: int, cout: int, dims: int) -> tuple[int, ...] | None:
        """The shortcut convolution's kernel (``None``: the identity)."""
        if any(s != 1 for s in _axes(self, "stride", dims)):
            return _axes(self, "kernel", dims)
        return (1,) * dims if cin != cout else None

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        return _strided_infer(self, inputs)

    def size_ops(self, dims: int, axis: int) -> tuple[SizeOp, ...]:
        k = self._per_axis("kernel", dims, axis)
        first = Window(k, self._per_axis("stride", dims, axis), k // 2)
        return (first,) + (Window(k, 1, k // 2),) * (self.subunits - 1)

    def shape_notes(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> list[str]:
        if self.norm == "none" or (self.subunits == 1 and self.last_conv_only):
            return []
        return norm_notes(self.norm, self.groups, output)  # every normed unit sees the output's shape

    def build(self, inputs: Sequence[TensorType], output: TensorType) -> nn.Module:
        (x,) = inputs
        dims, cout = x.dims, output.channels
        conv, kernel = conv_cls(dims), _axes(self, "kernel", dims)
        pad = tuple(k // 2 for k in kernel)
        units: OrderedDict[str, nn.Module] = OrderedDict()
        for i in range(self.subunits):
            layers: OrderedDict[str, nn.Module] = OrderedDict(
                conv=conv(
                    x.channels if i == 0 else cout,
                    cout,
                    kernel,
                    stride=_axes(self, "stride", dims) if i == 0 else 1,
                    padding=pad,
                    bias=self.bias,
                )
            )
            if not self._bare(i):
                layers.update(post_conv_layers(self.order, self.norm, self.act, self.dropout, cout, dims, self.groups))
            units[f"unit{i}"] = nn.Sequential(layers)
        short = self._shortcut_kernel(x.channels, cout, dims)
        residual = None
        if short is not None:
            stride = _axes(self, "stride", dims)
            strided = any(s != 1 for s in stride)
            residual = conv(x.channels, cout, short, stride=stride, padding=pad if strided else 0, bias=self.bias)
        return ResidualUnitModule(nn.Sequential(units), residual)

    def params(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        (x,) = inputs
        cout, k, b = output.channels, prod(_axes(self, "kernel", x.dims)), int(self.bias)
        total = 0
        for i in range(self.subunits):
            cin = x.channels if i == 0 else cout
            total += cin * cout * k + cout * b
            if not self._bare(i):
                total += norm_params(self.norm, cout) + act_params(self.act, cout)
        short = self._shortcut_kernel(x.channels, cout, x.dims)
        if short is not None:
            total += x.channels * cout * prod(short) + cout * b
        return total

    def flops(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        (x,) = inputs
        dims, cout = len(x) - 2, output[1]
        per_position = 2 * x[0] * prod(output[2:]) * cout
        k = prod(_axes(self, "kernel", dims))
        total = per_position * k * (x[1] + cout * (self.subunits - 1))
        short = self._shortcut_kernel(x[1], cout, dims)
        return total + (per_position * x[1] * prod(short) if short is not None else 0)

    def label(self) -> str:
        head = f"res unit {self.subunits}×conv{axes_text(self.kernel)}"
        if self.last_conv_only and self.subunits == 1:  # no unit keeps its norm or activation
            return conv_label(self.with_(norm="none", act="none", dropout=0.0), head + " (conv only)")
        return conv_label(self, head + (" (last conv only)" if self.last_conv_only else ""))


class BasicResBlockModule(nn.Module):
    """``act(norm2(conv2(act(norm1(conv1(x))))) + shortcut(x))``, one activation layer used twice,
    dropout after every convolution.

    Shape:
        ``(N, C_in, *S) → (N, C_out, *S / stride)``.
    """

    def __init__(
        self,
        conv1: nn.Module,
        norm1: nn.Module | None,
        conv2: nn.Module,
        norm2: nn.Module | None,
        shortcut: nn.Module | None,
        act: nn.Module | None,
        dropout: float,
    ) -> None:
        super().__init__()
        self.conv1, self.norm1, self.conv2, self.norm2 = conv1, norm1, conv2, norm2
        self.shortcut = shortcut
        self.act = act if act is not None else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.conv1(x))
        if self.norm1 is not None:
            h = self.norm1(h)
        h = self.dropout(self.conv2(self.act(h)))
        if self.norm2 is not None:
            h = self.norm2(h)
        res = x if self.shortcut is None else self.shortcut(x)
        return self.act(h + res)


@register_block
@dataclass(frozen=True)
class BasicResBlock(BlockSpec):
    """The post-activation residual block (He et al. 2016's basic block; MONAI's ``UnetResBlock``
    of DynUNet): ``conv → norm → act → conv → norm``, added to the shortcut, then ``act``.

    When the channels or the stride change, the shortcut is a 1×1 convolution with the stride,
    then the norm. With ``dropout``, a dropout follows every convolution, the shortcut's too
    (as MONAI's ``get_conv_layer`` does). The one activation layer is applied twice, so an
    activation with parameters (``"prelu"``) shares them between both places.

    Args:
        channels: output channels; ``None`` keeps the input's.
        kernel: odd kernel size of both convolutions, an int or one per axis.
        stride: stride of the first convolution and the shortcut.
        norm, groups, act: as :class:`~unetgraph.ConvBlock`.
        dropout: dropout probability after each convolution.
        bias: convolution biases; ``None`` means "only without a norm".

    Shape:
        ``(N, C_in, *S) → (N, channels, *floor((S - 1) / stride + 1))``.
    """

    channels: int | None = None
    kernel: int | tuple[int, ...] = 3
    stride: int | tuple[int, ...] = 1
    norm: str = "instance"
    groups: int = 32
    act: str = "leaky_relu"
    dropout: float = 0.0
    bias: bool | None = None

    def validate(self) -> None:
        validate_norm_act(self)
        self._positive_int("channels", optional=True)
        self._int_or_tuple("kernel")
        self._int_or_tuple("stride")
        _check_kernel(self)
        _check_dropout(self)
        self._require(self.bias is None or isinstance(self.bias, bool), "bias", "True, False or None")

    @property
    def has_bias(self) -> bool:
        return self.norm == "none" if self.bias is None else self.bias

    def _needs_shortcut(self, cin: int, cout: int, dims: int) -> bool:
        return cin != cout or any(s != 1 for s in _axes(self, "stride", dims))

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        return _strided_infer(self, inputs)

    def size_ops(self, dims: int, axis: int) -> tuple[SizeOp, ...]:
        k = self._per_axis("kernel", dims, axis)
        return (Window(k, self._per_axis("stride", dims, axis), k // 2), Window(k, 1, k // 2))

    def shape_notes(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> list[str]:
        return norm_notes(self.norm, self.groups, output)  # every norm sees the output's shape

    def build(self, inputs: Sequence[TensorType], output: TensorType) -> nn.Module:
        (x,) = inputs
        dims, cout = x.dims, output.channels
        conv, kernel, stride = conv_cls(dims), _axes(self, "kernel", dims), _axes(self, "stride", dims)
        pad, bias = tuple(k // 2 for k in kernel), self.has_bias

        def norm() -> nn.Module | None:
            return make_norm(self.norm, cout, dims, self.groups) if self.norm != "none" else None

        shortcut = None
        if self._needs_shortcut(x.channels, cout, dims):
            layers: OrderedDict[str, nn.Module] = OrderedDict(conv=conv(x.channels, cout, 1, stride=stride, bias=bias))
            if self.dropout:
                layers["drop"] = nn.Dropout(self.dropout)
            if self.norm != "none":
                layers["norm"] = make_norm(self.norm, cout, dims, self.groups)
            shortcut = nn.Sequential(layers)
        return BasicResBlockModule(
            conv1=conv(x.channels, cout, kernel, stride=stride, padding=pad, bias=bias),
            norm1=norm(),
            conv2=conv(cout, cout, kernel, padding=pad, bias=bias),
            norm2=norm(),
            shortcut=shortcut,
            act=make_act(self.act, cout) if self.act != "none" else None,
            dropout=self.dropout,
        )

    def params(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        (x,) = inputs
        cout, k, b = output.channels, prod(_axes(self, "kernel", x.dims)), int(self.has_bias)
        total = (x.channels + cout) * cout * k + 2 * cout * b + 2 * norm_params(self.norm, cout)
        total += act_params(self.act, cout)
        if self._needs_shortcut(x.channels, cout, x.dims):
            total += x.channels * cout + cout * b + norm_params(self.norm, cout)
        return total

    def flops(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        (x,) = inputs
        dims, cout = len(x) - 2, output[1]
        per_position = 2 * x[0] * prod(output[2:]) * cout
        total = per_position * prod(_axes(self, "kernel", dims)) * (x[1] + cout)
        return total + (per_position * x[1] if self._needs_shortcut(x[1], cout, dims) else 0)

    def label(self) -> str:
        return conv_label(self, f"basic res conv{axes_text(self.kernel)}")
