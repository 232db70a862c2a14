"""``ResBlock``: the residual block of diffusion U-Nets and residual segmentation U-Nets."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from math import prod
from typing import Sequence

import torch
from torch import nn

from ..errors import ShapeError, SpecError
from ..sizes import Scale, SizeOp, Window
from ..types import TensorType
from .base import BlockSpec, register_block
from .conv import _spatial_input, check_groups, same_padding
from .layers import ACTS, NORMS, axes_text, conv_cls, conv_label, make_norm, norm_notes, validate_norm_act

__all__ = ["ResBlock", "ResBlockModule"]


class ResBlockModule(nn.Module):
    """``norm → act → [resample] → conv → (+cond) → norm → act → dropout → conv``, plus the
    shortcut (resampled the same way, then a 1×1 convolution when channels change).

    Submodules are registered in the order of diffusers' ``ResnetBlock2D`` (``norm1, conv1,
    cond_proj, norm2, conv2, shortcut``), so its weights map one to one.

    Shape:
        ``x: (N, C_in, *S)``, ``emb: (N, D)`` → ``(N, C_out, *S')``.
    """

    def __init__(
        self,
        norm1: nn.Module | None,
        conv1: nn.Module,
        cond_proj: nn.Module | None,
        norm2: nn.Module | None,
        conv2: nn.Module,
        shortcut: nn.Module | None,
        act: nn.Module | None,
        dropout: float,
        cond: str,
        dims: int,
        output_scale: float,
        resample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.norm1, self.conv1, self.cond_proj, self.norm2, self.conv2 = norm1, conv1, cond_proj, norm2, conv2
        self.shortcut = shortcut
        self.resample = resample
        self.act = act if act is not None else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.cond, self.dims, self.output_scale = cond, dims, output_scale

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = x
        if self.norm1 is not None:
            h = self.act(self.norm1(h))
        if self.resample is not None:  # both paths, after the first norm → act (diffusers' up/down resnets)
            h, x = self.resample(h), self.resample(x)
        h = self.conv1(h)
        e = None
        if self.cond_proj is not None:
            e = self.cond_proj(emb)[(slice(None), slice(None)) + (None,) * self.dims]
            if self.cond == "add":
                h = h + e
        if self.norm2 is not None:
            h = self.norm2(h)
        if e is not None and self.cond == "scale_shift":
            c = h.shape[1]
            h = h * (1 + e[:, :c]) + e[:, c:]
        h = self.conv2(self.dropout(self.act(h)))
        skip = x if self.shortcut is None else self.shortcut(x)
        out = skip + h
        return out / self.output_scale if self.output_scale != 1 else out


@register_block
@dataclass(frozen=True)
class ResBlock(BlockSpec):
    """A residual block (He et al. 2016, pre-activation), optionally conditioned on an embedding.

    ``norm → act → conv → (conditioning) → norm → act → dropout → conv``, added to the input
    (through a 1×1 convolution when channels or the stride change). A ``cond`` edge from an
    embedding node ``(N, D)`` conditions it: ``"add"`` adds ``Linear(act(emb))`` after the first
    convolution (DDPM), ``"scale_shift"`` applies ``norm(h) * (1 + scale) + shift`` (FiLM,
    "ada-group-norm" of improved DDPM). Without a cond edge the block is unconditioned.

    Args:
        channels: output channels; ``None`` keeps the input's. Builders fill it per level.
        kernel: odd kernel size of both convolutions, an int or one per axis.
        stride: stride of the first convolution and the shortcut (a downsampling block when > 1).
        norm: a ``ug.NORMS`` name or ``"none"``; ``groups`` for ``"group"``; ``eps`` its epsilon
            (``None``: torch's default).
        act: a ``ug.ACTS`` name or ``"none"``.
        dropout: dropout probability before the second convolution.
        cond: ``"add"`` or ``"scale_shift"``; used only when a cond edge arrives.
        pre_norm: ``False`` leaves out the first norm → act (conv first), as in the first
            unit of ResUNet, whose input is the image.
        bias: convolution biases (the shortcut's too).
        output_scale: the sum is divided by it (diffusers' ``output_scale_factor``).
        resample: ``"avgpool"`` halves, ``"nearest"`` doubles the size inside the block: after
            the first norm → act, on both the main path and the shortcut (BigGAN-style
            up/down residual blocks; diffusers' ``ResnetBlock2D(down=True)`` / ``(up=True)``).
            ``"none"`` by default; not combined with ``stride``.
        cond_act: apply ``act`` to the embedding before its projection (``False``: diffusers'
            ``skip_time_act=True``, the projection is then a bare ``Linear``).

    Shape:
        ``x: (N, C_in, *S)`` [+ ``emb: (N, D)``] → ``(N, channels, *S / stride)`` (``S / 2``
        or ``S · 2`` with ``resample``).
    """

    channels: int | None = None
    kernel: int | tuple[int, ...] = 3
    stride: int | tuple[int, ...] = 1
    norm: str = "group"
    groups: int = 32
    eps: float | None = None
    act: str = "silu"
    dropout: float = 0.0
    cond: str = "add"
    pre_norm: bool = True
    bias: bool = True
    output_scale: float = 1.0
    resample: str = "none"
    cond_act: bool = True

    max_cond = 1

    def validate(self) -> None:
        validate_norm_act(self)
        self._positive_int("channels", optional=True)
        self._int_or_tuple("kernel")
        self._int_or_tuple("stride")
        for k in self.kernel if isinstance(self.kernel, tuple) else (self.kernel,):
            same_padding(k, f"{self.type_name}.kernel")
        self._require(
            isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1, "dropout", "a probability in [0, 1)"
        )
        self._choice("cond", ["add", "scale_shift"], aliases={"film": "scale_shift"})
        self._require(isinstance(self.pre_norm, bool), "pre_norm", "True or False")
        self._require(isinstance(self.bias, bool), "bias", "True or False")
        self._require(
            isinstance(self.output_scale, (int, float)) and self.output_scale > 0, "output_scale", "a positive number"
        )
        self._choice("resample", list(_RESAMPLE))
        self._require(isinstance(self.cond_act, bool), "cond_act", "True or False")
        strides = self.stride if isinstance(self.stride, tuple) else (self.stride,)
        if self.resample != "none" and any(s != 1 for s in strides):
            raise SpecError(f"ResBlock: resample={self.resample!r} and stride={self.stride!r}: give one of them")

    def _axes(self, field: str, dims: int) -> tuple[int, ...]:
        return tuple(self._per_axis(field, dims, a) for a in range(dims))

    def _needs_shortcut(self, cin: int, cout: int, dims: int) -> bool:
        return cin != cout or any(s != 1 for s in self._axes("stride", dims))

    def _resample_scale(self) -> Fraction:
        return _RESAMPLE[self.resample]

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        x = _spatial_input(self, inputs[:1])
        self._check_axes(x.dims, "kernel", "stride")
        out = self.channels or x.channels
        if self.pre_norm:
            check_groups(self.norm, self.groups, x.channels, "first norm, on the input")
        check_groups(self.norm, self.groups, out)
        if len(inputs) > 1:
            emb, name = inputs[1], sources[1] if len(sources) > 1 else "the cond input"
            if emb.form != "dense" or emb.dims != 0:
                raise ShapeError(f"{name} must be an embedding (N, D) (e.g. from TimestepEmbedding), got {emb}")
        scale = tuple(Fraction(1, s) * self._resample_scale() for s in self._axes("stride", x.dims))
        return TensorType(out, x.scale).rescaled(scale)

    def size_ops(self, dims: int, axis: int) -> tuple[SizeOp, ...]:
        k = self._per_axis("kernel", dims, axis)
        convs = (Window(k, self._per_axis("stride", dims, axis), k // 2), Window(k, 1, k // 2))
        if self.resample == "avgpool":
            return (Window(2, 2), *convs)
        if self.resample == "nearest":
            return (Scale(Fraction(2)), *convs)
        return convs

    def build(self, inputs: Sequence[TensorType], output: TensorType) -> nn.Module:
        x, dims, cout = inputs[0], inputs[0].dims, output.channels
        conv = conv_cls(dims)
        kernel, stride = self._axes("kernel", dims), self._axes("stride", dims)
        pad = tuple(k // 2 for k in kernel)
        norm = self.norm != "none"
        cond_proj = None
        if len(inputs) > 1:
            width = cout * (2 if self.cond == "scale_shift" else 1)
            proj = nn.Linear(inputs[1].channels, width)
            with_act = self.act != "none" and self.cond_act
            cond_proj = nn.Sequential(OrderedDict(act=ACTS[self.act](), linear=proj)) if with_act else proj
        return ResBlockModule(
            norm1=make_norm(self.norm, x.channels, dims, self.groups, self.eps) if norm and self.pre_norm else None,
            conv1=conv(x.channels, cout, kernel, stride=stride, padding=pad, bias=self.bias),
            cond_proj=cond_proj,
            norm2=make_norm(self.norm, cout, dims, self.groups, self.eps) if norm else None,
            conv2=conv(cout, cout, kernel, padding=pad, bias=self.bias),
            shortcut=conv(x.channels, cout, 1, stride=stride, bias=self.bias)
            if self._needs_shortcut(x.channels, cout, dims)
            else None,
            act=ACTS[self.act]() if self.act != "none" else None,
            dropout=self.dropout,
            cond=self.cond,
            dims=dims,
            output_scale=float(self.output_scale),
            resample=_resampler(self.resample, dims),
        )

    def shape_notes(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> list[str]:
        if self.norm == "none":
            return []
        first = norm_notes(self.norm, self.groups, inputs[0]) if self.pre_norm else []
        return list(dict.fromkeys(first + norm_notes(self.norm, self.groups, output)))

    def params(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        x, cout = inputs[0], output.channels
        k, b = prod(self._axes("kernel", x.dims)), int(self.bias)
        per_channel = NORMS[self.norm][1] if self.norm != "none" else 0
        total = x.channels * cout * k + cout * b + cout * cout * k + cout * b + per_channel * cout
        if self.pre_norm:
            total += per_channel * x.channels
        if len(inputs) > 1:
            width = cout * (2 if self.cond == "scale_shift" else 1)
            total += inputs[1].channels * width + width
        if self._needs_shortcut(x.channels, cout, x.dims):
            total += x.channels * cout + cout * b
        return total

    def flops(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        x, (n, cout) = inputs[0], output[:2]
        dims = len(x) - 2
        k, positions = prod(self._axes("kernel", dims)), prod(output[2:])  # resampled: the output's positions
        total = 2 * n * positions * cout * (x[1] + cout) * k
        if len(inputs) > 1:
            total += 2 * n * inputs[1][1] * cout * (2 if self.cond == "scale_shift" else 1)
        if self._needs_shortcut(x[1], cout, dims):
            total += 2 * n * positions * cout * x[1]
        return total

    def label(self) -> str:
        resample = {"avgpool": " ↓avgpool", "nearest": " ↑nearest"}.get(self.resample, "")
        return conv_label(self, f"res conv{axes_text(self.kernel)}{resample}")


# resample mode -> the scale it applies (its layer: _resampler)
_RESAMPLE = {"none": Fraction(1), "avgpool": Fraction(1, 2), "nearest": Fraction(2)}


def _resampler(mode: str, dims: int) -> nn.Module | None:
    if mode == "avgpool":
        return (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[dims - 1](2, stride=2)
    if mode == "nearest":
        return nn.Upsample(scale_factor=2.0, mode="nearest")
    return None
