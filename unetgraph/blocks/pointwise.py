"""Elementwise blocks without weights: ``Affine`` (``x · scale + shift``) and ``ScaleBy`` (multiply
or divide by a per-sample scalar input, e.g. a score model's output by its noise level)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..types import TensorType
from .base import BlockSpec, register_block
from .conv import _spatial_input, cond_input

__all__ = ["Affine", "ScaleBy", "AffineModule", "ScaleByModule"]


class AffineModule(nn.Module):
    """``x · scale + shift`` with constant numbers.

    Shape:
        ``(N, C, *S) → (N, C, *S)``.
    """

    def __init__(self, scale: float, shift: float) -> None:
        super().__init__()
        self.scale, self.shift = scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale != 1:  # Python constants: decided when the graph is traced
            x = x * self.scale
        if self.shift != 0:
            x = x + self.shift
        return x


@register_block
@dataclass(frozen=True)
class Affine(BlockSpec):
    """A fixed elementwise affine map ``x · scale + shift``, e.g. images in [0, 1] to [-1, 1]
    (``scale=2, shift=-1``: diffusers' ``center_input_sample``). ``Affine()`` is the identity: a
    node that computes nothing (lowering gives it no layer), where a graph needs a node
    between two others (the middle of a U-Net without a middle block).

    Shape:
        ``(N, C, *S) → (N, C, *S)``.
    """

    scale: float = 1.0
    shift: float = 0.0

    def validate(self) -> None:
        for field in ("scale", "shift"):
            value = getattr(self, field)
            self._require(isinstance(value, (int, float)) and not isinstance(value, bool), field, "a number")

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        return _spatial_input(self, inputs)

    def build(self, inputs: Sequence[TensorType], output: TensorType) -> nn.Module:
        return AffineModule(float(self.scale), float(self.shift))

    def params(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        return 0

    def flops(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        return 0

    def label(self) -> str:
        if self.scale == 1 and self.shift == 0:
            return "identity"
        return f"x·{self.scale:g} {'+' if self.shift >= 0 else '−'} {abs(self.shift):g}"


class ScaleByModule(nn.Module):
    """Multiply or divide ``x`` by one number per sample.

    Shape:
        ``x: (N, C, *S)``, ``s: (N,)`` → ``(N, C, *S)``.
    """

    def __init__(self, divide: bool) -> None:
        super().__init__()
        self.divide = divide

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        s = s.reshape((x.shape[0],) + (1,) * (x.dim() - 1))
        return x / s if self.divide else x * s


@register_block
@dataclass(frozen=True)
class ScaleBy(BlockSpec):
    """Multiply (``op="multiply"``) or divide (``op="divide"``) the input by a per-sample scalar
    ``(N,)`` that arrives on a ``cond`` edge, such as the noise level σ of a score model whose
    network predicts ``score · σ`` (diffusers' ``UNet2DModel`` with Fourier time embedding
    divides its output by the timestep).

    Shape:
        ``x: (N, C, *S)``, ``s: (N,)`` → ``(N, C, *S)``.
    """

    op: str = "divide"

    max_cond = 1

    def validate(self) -> None:
        self._choice("op", ["divide", "multiply"])

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        x = _spatial_input(self, inputs[:1])
        cond_input(self, inputs, sources, "scalar", "a per-sample scalar (N,)", "add a cond edge from e.g. t")
        return x

    def build(self, inputs: Sequence[TensorType], output: TensorType) -> nn.Module:
        return ScaleByModule(self.op == "divide")

    def params(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        return 0

    def flops(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        return 0

    def label(self) -> str:
        return "÷ cond" if self.op == "divide" else "× cond"
