"""Resolution changes: ``Down`` (pooling or strided conv) and ``Up`` (transposed conv or interpolation + conv)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from math import prod
from typing import Sequence

import torch
from torch import nn

from ..errors import SpecError
from ..sizes import Pad, Scale, SizeOp, Transposed, Window
from ..types import TensorType
from .base import BlockSpec, register_block
from .conv import _spatial_input, check_groups, same_padding
from .layers import (
    act_params,
    axes_text,
    conv_cls,
    conv_transpose_cls,
    norm_notes,
    norm_params,
    post_conv_layers,
    validate_norm_act,
)

__all__ = ["Down", "Up", "SpaceToDepth", "DepthToSpace"]

_POOL = {
    "maxpool": (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d),
    "avgpool": (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d),
}
_INTERP = {"nearest": ("nearest",) * 3, "linear": ("linear", "bilinear", "trilinear")}


def _axes(spec: BlockSpec, field: str, dims: int) -> tuple[int, ...]:
    return tuple(spec._per_axis(field, dims, a) for a in range(dims))


def _flatten_children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[("conv", m)]`` for a single layer, the named children of a ``Sequential``."""
    if isinstance(module, nn.Sequential):
        return list(module.named_children())
    return [("conv", module)]


class SpaceToDepth(nn.Module):
    """Pixel unshuffle in 1D, 2D or 3D: each ``f₁×f₂…`` patch becomes channels, in
    ``nn.PixelUnshuffle``'s channel order (channel-major, then offsets along each axis).

    Shape:
        ``(N, C, *S) → (N, C·∏f, *S/f)``.
    """

    def __init__(self, factors: tuple[int, ...]) -> None:
        super().__init__()
        self.factors = factors

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = len(self.factors)
        for axis in reversed(range(dims)):  # (N, C, S1, f1, S2, f2, ...)
            x = x.unflatten(2 + axis, (-1, self.factors[axis]))
        order = [0, 1, *(3 + 2 * a for a in range(dims)), *(2 + 2 * a for a in range(dims))]
        return x.permute(order).flatten(1, 1 + dims)


class DepthToSpace(nn.Module):
    """Pixel shuffle in 1D, 2D or 3D, the inverse of :class:`SpaceToDepth` (``nn.PixelShuffle`` in 2D).

    Shape:
        ``(N, C·∏f, *S) → (N, C, *S·f)``.
    """

    def __init__(self, factors: tuple[int, ...]) -> None:
        super().__init__()
        self.factors = factors

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = len(self.factors)
        x = x.unflatten(1, (-1, *self.factors))  # (N, C, f1, f2, ..., S1, S2, ...)
        order = [0, 1]
        for a in range(dims):
            order += [2 + dims + a, 2 + a]
        x = x.permute(order)
        for a in reversed(range(dims)):
            x = x.flatten(2 + 2 * a, 3 + 2 * a)
        return x


@register_block
@dataclass(frozen=True)
class Down(BlockSpec):
    """Downsample by ``factor`` per axis (an int, or one per axis, e.g. ``(1, 2, 2)`` in 3D).

    Args:
        mode: ``"maxpool"``, ``"avgpool"``, ``"conv"`` (strided convolution) or
            ``"pixel_unshuffle"`` (each patch becomes channels, lossless; then a 1×1
            convolution when ``channels`` is given).
        factor: the stride.
        kernel: window size; ``None`` uses ``factor`` (non-overlapping windows).
        padding: window padding.
        channels: output channels, ``"conv"`` and ``"pixel_unshuffle"`` only; ``None`` keeps
            the input's (``C·∏factor`` for ``"pixel_unshuffle"``).
        pad_end: zeros appended at the end of each axis before the window, ``"conv"`` only
            (diffusers' ``Downsample2D`` with ``padding=0`` pads one row and column).

    Shape:
        ``(N, C, *S) → (N, C', *floor((S + 2p + pad_end - k) / factor + 1))``.
    """

    mode: str = "maxpool"
    factor: int | tuple[int, ...] = 2
    kernel: int | tuple[int, ...] | None = None
    padding: int | tuple[int, ...] = 0
    channels: int | None = None
    pad_end: int | tuple[int, ...] = 0

    def validate(self) -> None:
        self._choice("mode", ["maxpool", "avgpool", "conv", "pixel_unshuffle"])
        self._int_or_tuple("factor")
        self._int_or_tuple("kernel", optional=True)
        self._int_or_tuple("padding", zero=True)
        self._positive_int("channels", optional=True)
        self._int_or_tuple("pad_end", zero=True)
        if self.mode in ("maxpool", "avgpool") and self.channels is not None:
            raise SpecError(
                f"Down.channels: {self.mode} keeps channels; use mode='conv' to change them to {self.channels}"
            )
        if self.mode != "conv" and self.pad_end != 0:
            raise SpecError(f"Down.pad_end is for mode='conv', not {self.mode!r}")
        if self.mode == "pixel_unshuffle" and (self.kernel is not None or self.padding != 0):
            raise SpecError("Down(mode='pixel_unshuffle') takes no kernel or padding: its windows are the factor")

    def _kernel(self, dims: int) -> tuple[int, ...]:
        return _axes(self, "factor" if self.kernel is None else "kernel", dims)

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        x = _spatial_input(self, inputs)
        self._check_axes(x.dims, "factor", "kernel", "padding")
        for k, p in zip(self._kernel(x.dims), _axes(self, "padding", x.dims)):
            if self.mode != "conv" and 2 * p > k:
                raise SpecError(f"Down.padding={p} must be at most half the pooling kernel {k}")
        self._check_axes(x.dims, "pad_end")
        factors = tuple(Fraction(1, f) for f in _axes(self, "factor", x.dims))
        return x.with_(channels=self.channels or self._unshuffled(x)).rescaled(factors)

    def _unshuffled(self, x: TensorType) -> int:
        return x.channels * prod(_axes(self, "factor", x.dims)) if self.mode == "pixel_unshuffle" else x.channels

    def size_ops(self, dims: int, axis: int) -> tuple[SizeOp, ...]:
        f = self._per_axis("factor", dims, axis)
        if self.mode == "pixel_unshuffle":
            return (Scale(Fraction(1, f), exact=True),)
        window = Window(self._kernel(dims)[axis], f, self._per_axis("padding", dims, axis))
        end = self._per_axis("pad_end", dims, axis)
        return (Pad(0, end), window) if end else (window,)

    def build(self, inputs: Sequence[TensorType], output: TensorType) -> nn.Module:
        (x,) = inputs
        dims = x.dims
        kernel, stride, pad = self._kernel(dims), _axes(self, "factor", dims), _axes(self, "padding", dims)
        if self.mode == "pixel_unshuffle":
            shuffle = SpaceToDepth(stride)
            if self.channels is None:
                return shuffle
            conv = conv_cls(dims)(self._unshuffled(x), output.channels, 1)
            return nn.Sequential(OrderedDict(unshuffle=shuffle, conv=conv))
        if self.mode == "conv":
            conv = conv_cls(dims)(x.channels, output.channels, kernel, stride=stride, padding=pad)
            end = _axes(self, "pad_end", dims)
            if not any(end):
                return conv
            zeros: nn.Module  # pads the far end of each axis, last axis first, as F.pad wants
            if dims == 1:
                zeros = nn.ConstantPad1d((0, end[0]), 0.0)
            elif dims == 2:
                zeros = nn.ConstantPad2d((0, end[1], 0, end[0]), 0.0)
            else:
                zeros = nn.ConstantPad3d((0, end[2], 0, end[1], 0, end[0]), 0.0)
            return nn.Sequential(OrderedDict(pad=zeros, conv=conv))
        return _POOL[self.mode][dims - 1](kernel, stride=stride, padding=pad)

    def _conv_kernel(self, dims: int) -> int:
        """Weights per input-output channel pair of the block's convolution (0: none)."""
        if self.mode == "conv":
            return prod(self._kernel(dims))
        return 1 if self.mode == "pixel_unshuffle" and self.channels is not None else 0

    def params(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        (x,) = inputs
        k = self._conv_kernel(x.dims)
        return (self._unshuffled(x) * output.channels * k + output.channels) if k else 0

    def flops(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        (x,) = inputs
        dims = len(x) - 2
        cin = x[1] * (prod(_axes(self, "factor", dims)) if self.mode == "pixel_unshuffle" else 1)
        return 2 * x[0] * prod(output[2:]) * output[1] * cin * self._conv_kernel(dims)

    def label(self) -> str:
        f = axes_text(self.factor)
        return f"{self.mode} /{f}"


@register_block
@dataclass(frozen=True)
class Up(BlockSpec):
    """Upsample by ``factor`` per axis.

    Args:
        mode: ``"transpose"`` (transposed convolution), ``"nearest"`` or ``"linear"``
            (``"bilinear"``/``"trilinear"`` are accepted) interpolation followed by a convolution,
            or ``"pixel_shuffle"`` (a convolution to ``channels·∏factor``, then channels become
            positions; Shi et al. 2016).
        factor: the scale factor, an int or one per axis.
        channels: output channels; ``None`` keeps the input's. Builders fill it per level.
        kernel: conv kernel; ``None`` means ``factor`` for ``"transpose"`` and 3 otherwise.
        conv: interpolation modes only: ``False`` drops the convolution (channels are kept).
        bias: the convolution's bias.
        norm, groups, act: a norm and an activation after the convolution (``"none"`` by
            default; AttU_Net's ``up_conv`` is nearest ×2 → conv3×3 → batch norm → ReLU).
        dropout: dropout probability after the convolution's norm and activation, or where
            ``order`` puts its ``D``.
        order: the order of norm (N), activation (A) and dropout (D) after the convolution
            (``"NA"``; MONAI's ``"NDA"``, ``"ADN"``, …).
        padding, output_padding: ``"transpose"`` only: the transposed convolution's padding and
            output padding, an int or one per axis (``None``: the padding that makes the output
            exactly ``n * factor``, MONAI's ``(kernel - 1) / 2`` and ``factor - 1`` among them);
            they must give ``kernel - 2 * padding + output_padding == factor``.
        align_corners: ``"linear"`` only: interpolate with the corner pixels aligned.
        conv_first: interpolation modes only: convolve before interpolating (MONAI's
            ``UpSample`` pre-convolution), at the input's resolution.

    Shape:
        ``(N, C, *S) → (N, channels, *(S * factor))``.
    """

    mode: str = "transpose"
    factor: int | tuple[int, ...] = 2
    channels: int | None = None
    kernel: int | tuple[int, ...] | None = None
    conv: bool = True
    bias: bool = True
    norm: str = "none"
    groups: int = 32
    act: str = "none"
    dropout: float = 0.0
    order: str = "NA"
    padding: int | tuple[int, ...] | None = None
    output_padding: int | tuple[int, ...] | None = None
    align_corners: bool = False
    conv_first: bool = False

    def validate(self) -> None:
        validate_norm_act(self)
        self._require(
            isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1, "dropout", "a probability in [0, 1)"
        )
        if not self.conv and (self.norm != "none" or self.act != "none" or self.dropout):
            raise SpecError("Up.norm, Up.act and Up.dropout follow the convolution; with conv=False there is none")
        self._choice(
            "mode",
            ["transpose", "nearest", "linear", "pixel_shuffle"],
            aliases={"bilinear": "linear", "trilinear": "linear"},
        )
        self._require(isinstance(self.bias, bool), "bias", "True or False")
        self._int_or_tuple("factor")
        self._int_or_tuple("kernel", optional=True)
        self._positive_int("channels", optional=True)
        self._require(isinstance(self.conv, bool), "conv", "True or False")
        if self.mode in ("transpose", "pixel_shuffle") and not self.conv:
            raise SpecError("Up.conv=False needs an interpolation mode ('nearest' or 'linear')")
        if not self.conv and self.channels is not None:
            raise SpecError(f"Up.channels: interpolation without a conv keeps channels; cannot give {self.channels}")
        if self.mode != "transpose" and self.kernel is not None:
            for k in self.kernel if isinstance(self.kernel, tuple) else (self.kernel,):
                same_padding(k, "Up.kernel")
        self._int_or_tuple("padding", zero=True, optional=True)
        self._int_or_tuple("output_padding", zero=True, optional=True)
        if self.mode != "transpose" and (self.padding is not None or self.output_padding is not None):
            raise SpecError(f"Up.padding and Up.output_padding are for mode='transpose', not {self.mode!r}")
        if self.output_padding is not None and self.padding is None:
            raise SpecError("Up.output_padding needs padding too (padding=None computes both)")
        self._require(isinstance(self.align_corners, bool), "align_corners", "True or False")
        if self.align_corners and self.mode != "linear":
            raise SpecError(f"Up.align_corners is for mode='linear', not {self.mode!r}")
        self._require(isinstance(self.conv_first, bool), "conv_first", "True or False")
        if self.conv_first and (self.mode not in ("nearest", "linear") or not self.conv):
            raise SpecError("Up.conv_first is for interpolation modes with a convolution ('nearest', 'linear')")

    def _kernel(self, dims: int) -> tuple[int, ...]:
        if self.kernel is None:
            return _axes(self, "factor", dims) if self.mode == "transpose" else (3,) * dims
        return _axes(self, "kernel", dims)

    def _transpose_padding(self, dims: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Padding and output padding of the transposed conv: given, or the ones that make its
        output exactly ``n * factor``."""
        if self.padding is not None:
            pads = _axes(self, "padding", dims)
            extras = (0,) * dims if self.output_padding is None else _axes(self, "output_padding", dims)
            for k, f, p, e in zip(self._kernel(dims), _axes(self, "factor", dims), pads, extras):
                if k - 2 * p + e != f:
                    raise SpecError(
                        f"Up: kernel {k}, padding {p} and output_padding {e} give n·{f} + {k - 2 * p + e - f} "
                        f"positions, not n·{f}: kernel - 2·padding + output_padding must equal the factor"
                    )
                if e >= f:
                    raise SpecError(f"Up.output_padding={e} must be smaller than the factor {f} (torch's rule)")
            return pads, extras
        computed: list[tuple[int, int]] = []
        for k, f in zip(self._kernel(dims), _axes(self, "factor", dims)):
            if k < f:
                raise SpecError(f"Up.kernel={k} is smaller than the factor {f}: the output would have holes")
            p = -(-(k - f) // 2)
            computed.append((p, 2 * p - (k - f)))
        return tuple(p for p, _ in computed), tuple(e for _, e in computed)

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        x = _spatial_input(self, inputs)
        self._check_axes(x.dims, "factor", "kernel", "padding", "output_padding")
        if self.mode == "transpose":
            self._transpose_padding(x.dims)
        factors = tuple(Fraction(f) for f in _axes(self, "factor", x.dims))
        check_groups(self.norm, self.groups, self.channels or x.channels)
        return x.with_(channels=self.channels or x.channels).rescaled(factors)

    def size_ops(self, dims: int, axis: int) -> tuple[SizeOp, ...]:
        f = self._per_axis("factor", dims, axis)
        if self.mode == "transpose":
            pads, extras = self._transpose_padding(dims)
            return (Transposed(self._kernel(dims)[axis], f, pads[axis], extras[axis]),)
        return (Scale(Fraction(f)),)

    def _conv_out(self, output: int, dims: int) -> int:
        """Channels the convolution produces (before a pixel shuffle turns them into positions)."""
        return output * (prod(_axes(self, "factor", dims)) if self.mode == "pixel_shuffle" else 1)

    def build(self, inputs: Sequence[TensorType], output: TensorType) -> nn.Module:
        (x,) = inputs
        dims = x.dims
        if self.norm == "none" and self.act == "none" and not self.dropout:
            return self._resample(x, output)
        layers = OrderedDict(_flatten_children(self._resample(x, output)))
        layers.update(
            post_conv_layers(self.order, self.norm, self.act, self.dropout, output.channels, dims, self.groups)
        )
        if self.dropout and "D" not in self.order:
            layers["dropout"] = nn.Dropout(self.dropout)
        return nn.Sequential(layers)

    def _resample(self, x: TensorType, output: TensorType) -> nn.Module:
        dims, kernel = x.dims, self._kernel(x.dims)
        factor = _axes(self, "factor", dims)
        if self.mode == "transpose":
            pads, extras = self._transpose_padding(dims)
            return conv_transpose_cls(dims)(
                x.channels, output.channels, kernel, stride=factor, padding=pads, output_padding=extras, bias=self.bias
            )
        conv = conv_cls(dims)(
            x.channels,
            self._conv_out(output.channels, dims),
            kernel,
            padding=tuple(k // 2 for k in kernel),
            bias=self.bias,
        )
        if self.mode == "pixel_shuffle":
            return nn.Sequential(OrderedDict(conv=conv, shuffle=DepthToSpace(factor)))
        upsample = nn.Upsample(
            scale_factor=tuple(float(f) for f in factor),
            mode=_INTERP[self.mode][dims - 1],
            align_corners=True if self.align_corners else None,
        )
        if not self.conv:
            return upsample
        if self.conv_first:
            return nn.Sequential(OrderedDict(conv=conv, upsample=upsample))
        return nn.Sequential(OrderedDict(upsample=upsample, conv=conv))

    def shape_notes(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> list[str]:
        return norm_notes(self.norm, self.groups, output)

    def params(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        if not self.conv:
            return 0
        (x,) = inputs
        cout = self._conv_out(output.channels, x.dims)
        post = norm_params(self.norm, output.channels) + act_params(self.act, output.channels)
        return x.channels * cout * prod(self._kernel(x.dims)) + cout * self.bias + post

    def flops(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        if not self.conv:
            return 0
        (x,) = inputs
        # a transposed conv and the conv before a pixel shuffle work per *input* position
        positions = prod(output[2:]) if self.mode in ("nearest", "linear") and not self.conv_first else prod(x[2:])
        cout = self._conv_out(output[1], len(x) - 2)
        return 2 * x[0] * positions * cout * x[1] * prod(self._kernel(len(x) - 2))

    def label(self) -> str:
        f = axes_text(self.factor)
        return f"{self.mode} ×{f}" + ("" if self.conv else " (no conv)")
