"""Resolution changes: ``Down`` (pooling or strided conv) and ``Up`` (transposed conv or interpolation + conv)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from math import prod
from typing import Sequence

from torch import nn

from ..errors import SpecError
from ..sizes import Scale, SizeOp, Transposed, Window
from ..types import TensorType
from .base import BlockSpec, register_block
from .conv import _spatial_input, same_padding
from .layers import conv_cls, conv_transpose_cls

__all__ = ["Down", "Up"]

_POOL = {
    "maxpool": (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d),
    "avgpool": (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d),
}
_INTERP = {"nearest": ("nearest",) * 3, "linear": ("linear", "bilinear", "trilinear")}


def _axes(spec: BlockSpec, field: str, dims: int) -> tuple[int, ...]:
    return tuple(spec._per_axis(field, dims, a) for a in range(dims))


@register_block
@dataclass(frozen=True)
class Down(BlockSpec):
    """Downsample by ``factor`` per axis (an int, or one per axis, e.g. ``(1, 2, 2)`` in 3D).

    Args:
        mode: ``"maxpool"``, ``"avgpool"`` or ``"conv"`` (strided convolution).
        factor: the stride.
        kernel: window size; ``None`` uses ``factor`` (non-overlapping windows).
        padding: window padding.
        channels: output channels, ``"conv"`` only; ``None`` keeps the input's.

    Shape:
        ``(N, C, *S) → (N, C', *floor((S + 2p - k) / factor + 1))``.
    """

    mode: str = "maxpool"
    factor: int | tuple[int, ...] = 2
    kernel: int | tuple[int, ...] | None = None
    padding: int | tuple[int, ...] = 0
    channels: int | None = None

    def validate(self) -> None:
        self._choice("mode", ["maxpool", "avgpool", "conv"])
        self._int_or_tuple("factor")
        self._int_or_tuple("kernel", optional=True)
        self._int_or_tuple("padding", zero=True)
        self._positive_int("channels", optional=True)
        if self.mode != "conv" and self.channels is not None:
            raise SpecError(
                f"Down.channels: {self.mode} keeps channels; use mode='conv' to change them to {self.channels}"
            )

    def _kernel(self, dims: int) -> tuple[int, ...]:
        return _axes(self, "factor" if self.kernel is None else "kernel", dims)

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        x = _spatial_input(self, inputs)
        self._check_axes(x.dims, "factor", "kernel", "padding")
        for k, p in zip(self._kernel(x.dims), _axes(self, "padding", x.dims)):
            if self.mode != "conv" and 2 * p > k:
                raise SpecError(f"Down.padding={p} must be at most half the pooling kernel {k}")
        factors = tuple(Fraction(1, f) for f in _axes(self, "factor", x.dims))
        return x.with_(channels=self.channels or x.channels).rescaled(factors)

    def size_ops(self, dims: int, axis: int) -> tuple[SizeOp, ...]:
        return (
            Window(
                self._kernel(dims)[axis], self._per_axis("factor", dims, axis), self._per_axis("padding", dims, axis)
            ),
        )

    def build(self, inputs: Sequence[TensorType], output: TensorType) -> nn.Module:
        (x,) = inputs
        dims = x.dims
        kernel, stride, pad = self._kernel(dims), _axes(self, "factor", dims), _axes(self, "padding", dims)
        if self.mode == "conv":
            return conv_cls(dims)(x.channels, output.channels, kernel, stride=stride, padding=pad)
        return _POOL[self.mode][dims - 1](kernel, stride=stride, padding=pad)

    def params(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        if self.mode != "conv":
            return 0
        (x,) = inputs
        return x.channels * output.channels * prod(self._kernel(x.dims)) + output.channels

    def flops(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        if self.mode != "conv":
            return 0
        (x,) = inputs
        return 2 * x[0] * prod(output[2:]) * output[1] * x[1] * prod(self._kernel(len(x) - 2))

    def label(self) -> str:
        f = "×".join(map(str, self.factor)) if isinstance(self.factor, tuple) else str(self.factor)
        return f"{self.mode} /{f}"


@register_block
@dataclass(frozen=True)
class Up(BlockSpec):
    """Upsample by ``factor`` per axis.

    Args:
        mode: ``"transpose"`` (transposed convolution), ``"nearest"`` or ``"linear"``
            (``"bilinear"``/``"trilinear"`` are accepted) interpolation followed by a convolution.
        factor: the scale factor, an int or one per axis.
        channels: output channels; ``None`` keeps the input's. Builders fill it per level.
        kernel: conv kernel; ``None`` means ``factor`` for ``"transpose"`` and 3 after interpolation.
        conv: interpolation modes only: ``False`` drops the convolution (channels are kept).

    Shape:
        ``(N, C, *S) → (N, channels, *(S * factor))``.
    """

    mode: str = "transpose"
    factor: int | tuple[int, ...] = 2
    channels: int | None = None
    kernel: int | tuple[int, ...] | None = None
    conv: bool = True

    def validate(self) -> None:
        self._choice("mode", ["transpose", "nearest", "linear"], aliases={"bilinear": "linear", "trilinear": "linear"})
        self._int_or_tuple("factor")
        self._int_or_tuple("kernel", optional=True)
        self._positive_int("channels", optional=True)
        self._require(isinstance(self.conv, bool), "conv", "True or False")
        if self.mode == "transpose" and not self.conv:
            raise SpecError("Up.conv=False needs an interpolation mode ('nearest' or 'linear')")
        if not self.conv and self.channels is not None:
            raise SpecError(f"Up.channels: interpolation without a conv keeps channels; cannot give {self.channels}")
        if self.mode != "transpose" and self.kernel is not None:
            for k in self.kernel if isinstance(self.kernel, tuple) else (self.kernel,):
                same_padding(k, "Up.kernel")

    def _kernel(self, dims: int) -> tuple[int, ...]:
        if self.kernel is None:
            return _axes(self, "factor", dims) if self.mode == "transpose" else (3,) * dims
        return _axes(self, "kernel", dims)

    def _transpose_padding(self, dims: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Padding and output padding that make a transposed conv output exactly ``n * factor``."""
        pads, extras = [], []
        for k, f in zip(self._kernel(dims), _axes(self, "factor", dims)):
            if k < f:
                raise SpecError(f"Up.kernel={k} is smaller than the factor {f}: the output would have holes")
            p = -(-(k - f) // 2)
            pads.append(p)
            extras.append(2 * p - (k - f))
        return tuple(pads), tuple(extras)

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        x = _spatial_input(self, inputs)
        self._check_axes(x.dims, "factor", "kernel")
        if self.mode == "transpose":
            self._transpose_padding(x.dims)
        factors = tuple(Fraction(f) for f in _axes(self, "factor", x.dims))
        return x.with_(channels=self.channels or x.channels).rescaled(factors)

    def size_ops(self, dims: int, axis: int) -> tuple[SizeOp, ...]:
        f = self._per_axis("factor", dims, axis)
        if self.mode == "transpose":
            pads, extras = self._transpose_padding(dims)
            return (Transposed(self._kernel(dims)[axis], f, pads[axis], extras[axis]),)
        return (Scale(Fraction(f)),)

    def build(self, inputs: Sequence[TensorType], output: TensorType) -> nn.Module:
        (x,) = inputs
        dims, kernel = x.dims, self._kernel(x.dims)
        factor = _axes(self, "factor", dims)
        if self.mode == "transpose":
            pads, extras = self._transpose_padding(dims)
            return conv_transpose_cls(dims)(
                x.channels, output.channels, kernel, stride=factor, padding=pads, output_padding=extras
            )
        upsample = nn.Upsample(scale_factor=tuple(float(f) for f in factor), mode=_INTERP[self.mode][dims - 1])
        if not self.conv:
            return upsample
        conv = conv_cls(dims)(x.channels, output.channels, kernel, padding=tuple(k // 2 for k in kernel))
        return nn.Sequential(OrderedDict(upsample=upsample, conv=conv))

    def params(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        if not self.conv:
            return 0
        (x,) = inputs
        return x.channels * output.channels * prod(self._kernel(x.dims)) + output.channels

    def flops(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        if not self.conv:
            return 0
        (x,) = inputs
        # a transposed conv does its work per *input* position, a conv per output position
        positions = prod(x[2:]) if self.mode == "transpose" else prod(output[2:])
        return 2 * x[0] * positions * output[1] * x[1] * prod(self._kernel(len(x) - 2))

    def label(self) -> str:
        f = "×".join(map(str, self.factor)) if isinstance(self.factor, tuple) else str(self.factor)
        return f"{self.mode} ×{f}" + ("" if self.conv else " (no conv)")
