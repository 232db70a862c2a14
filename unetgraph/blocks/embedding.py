"""Embedding nodes: a timestep or class label becomes a per-sample vector ``(N, D)`` that
reaches conditioned blocks (``ResBlock``) through ``cond`` edges."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..errors import ShapeError
from ..types import TensorType
from .base import BlockSpec, register_block
from .layers import ACTS, act_params, make_act

__all__ = ["TimestepEmbedding", "ClassEmbedding", "Sinusoidal"]


def _require_form(spec: BlockSpec, x: TensorType, form: str, what: str, source: str) -> None:
    if x.form != form:
        raise ShapeError(f"{spec.type_name} needs {what}, got {x} from {source or 'its input'}")


class Sinusoidal(nn.Module):
    """The transformer's sinusoidal position encoding of a timestep (Vaswani et al. 2017), as DDPM uses it.

    Frequencies are ``exp(-ln(max_period) * i / (dim/2 - freq_shift))``; the output is
    ``[sin, cos]`` (``[cos, sin]`` with ``flip_sin_to_cos``), computed in float32 like
    diffusers' ``get_timestep_embedding``.

    Shape:
        ``(N,) → (N, dim)``.
    """

    def __init__(self, dim: int, flip_sin_to_cos: bool, freq_shift: float, max_period: float, scale: float) -> None:
        super().__init__()
        self.dim, self.flip, self.shift, self.max_period, self.scale = (
            dim,
            flip_sin_to_cos,
            freq_shift,
            max_period,
            scale,
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        exponent = -math.log(self.max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
        freqs = torch.exp(exponent / (half - self.shift))
        args = t[:, None].float() * freqs[None, :]
        if self.scale != 1:  # a Python constant: decided when the graph is traced
            args = args * self.scale
        sin, cos = torch.sin(args), torch.cos(args)
        emb = torch.cat([cos, sin] if self.flip else [sin, cos], dim=-1)
        if self.dim % 2:
            emb = torch.nn.functional.pad(emb, (0, 1))
        return emb


@register_block
@dataclass(frozen=True)
class TimestepEmbedding(BlockSpec):
    """Sinusoidal encoding of a timestep input, then an MLP ``Linear → act → Linear`` (DDPM).

    Args:
        channels: the embedding width (``4 × base width`` in DDPM); ``None`` uses ``4 * dim``.
        dim: width of the sinusoidal encoding (DDPM: the first level's width); builders
            fill ``None`` with it.
        act: the MLP's activation; ``mlp=False`` returns the encoding itself.
        flip_sin_to_cos, freq_shift, max_period, scale: the encoding's conventions
            (diffusers' DDPM: ``False, 1, 10000, 1``).

    Shape:
        ``t: (N,) → (N, channels)``.
    """

    channels: int | None = None
    dim: int | None = None
    act: str = "silu"
    mlp: bool = True
    flip_sin_to_cos: bool = False
    freq_shift: float = 1.0
    max_period: float = 10000.0
    scale: float = 1.0

    def validate(self) -> None:
        self._positive_int("channels", optional=True)
        self._positive_int("dim", optional=True)
        self._require(self.dim is None or self.dim >= 2, "dim", "at least 2")
        self._choice("act", list(ACTS))
        self._require(isinstance(self.mlp, bool), "mlp", "True or False")
        self._require(isinstance(self.flip_sin_to_cos, bool), "flip_sin_to_cos", "True or False")
        self._require(
            isinstance(self.freq_shift, (int, float)) and (self.dim is None or self.freq_shift < self.dim // 2),
            "freq_shift",
            "a number < dim / 2",
        )
        self._require(isinstance(self.max_period, (int, float)) and self.max_period > 1, "max_period", "a number > 1")
        self._require(isinstance(self.scale, (int, float)), "scale", "a number")
        if not self.mlp and self.channels not in (None, self.dim):
            raise ShapeError(f"TimestepEmbedding.channels={self.channels}: without the MLP the width is dim={self.dim}")

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        _require_form(self, inputs[0], "scalar", "a timestep input (N,)", (list(sources) or [""])[0])
        if self.dim is None:
            raise ShapeError("TimestepEmbedding.dim is not set: give the width of the sinusoidal encoding")
        width = self.dim if not self.mlp else (self.channels or 4 * self.dim)
        return TensorType(width, ())

    def build(self, inputs: Sequence[TensorType], output: TensorType) -> nn.Module:
        encode = Sinusoidal(self.dim, self.flip_sin_to_cos, float(self.freq_shift), float(self.max_period), self.scale)
        if not self.mlp:
            return encode
        layers = OrderedDict(
            encode=encode,
            linear1=nn.Linear(self.dim, output.channels),
            act=make_act(self.act, output.channels),
            linear2=nn.Linear(output.channels, output.channels),
        )
        return nn.Sequential(layers)

    def params(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        c = output.channels
        return (self.dim * c + c + c * c + c + act_params(self.act, c)) if self.mlp else 0

    def flops(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        n, c = output
        return 2 * n * (self.dim * c + c * c) if self.mlp else 0

    def label(self) -> str:
        width = self.channels or (4 * self.dim if self.dim else "4·dim")
        return f"sinusoidal {self.dim or ''}".rstrip() + (f" → MLP {width}" if self.mlp else "")


@register_block
@dataclass(frozen=True)
class ClassEmbedding(BlockSpec):
    """A learned vector per class label (``nn.Embedding``), added to the time embedding in
    class-conditional diffusion models.

    Shape:
        ``y: (N,) integers in [0, num_classes) → (N, channels)``.
    """

    num_classes: int = 10
    channels: int | None = None

    def validate(self) -> None:
        self._positive_int("num_classes")
        self._positive_int("channels", optional=True)

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        _require_form(self, inputs[0], "index", "integer class labels (N,)", (list(sources) or [""])[0])
        if self.channels is None:
            raise ShapeError("ClassEmbedding.channels is not set: give the embedding width (the time embedding's)")
        return TensorType(self.channels, ())

    def build(self, inputs: Sequence[TensorType], output: TensorType) -> nn.Module:
        return nn.Embedding(self.num_classes, output.channels)

    def params(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        return self.num_classes * output.channels

    def flops(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        return 0

    def label(self) -> str:
        return f"{self.num_classes} classes → {self.channels}"
