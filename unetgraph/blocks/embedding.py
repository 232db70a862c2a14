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

__all__ = ["TimestepEmbedding", "ClassEmbedding", "Sinusoidal", "FourierFeatures"]


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

    out: torch.Tensor

    def __init__(self, dim: int, flip_sin_to_cos: bool, freq_shift: float, max_period: float, scale: float) -> None:
        super().__init__()
        self.dim, self.flip, self.shift, self.max_period, self.scale = (
            dim,
            flip_sin_to_cos,
            freq_shift,
            max_period,
            scale,
        )
        # holds no values, only the dtype the module was moved to (``lower(dtype=...)``): the
        # encoding is computed in float32 and handed on in that dtype
        self.register_buffer("out", torch.empty(0), persistent=False)

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
        return emb.to(self.out.dtype)


class FourierFeatures(nn.Module):
    """Random Fourier features of a noise level (Tancik et al. 2020; Song et al. 2021's score
    models): ``[sin(2π·w·t), cos(2π·w·t)]`` with fixed frequencies ``w ~ N(0, scale²)``, of ``log t``
    when ``log`` (diffusers' ``GaussianFourierProjection``).

    The frequencies are a parameter that does not train (``requires_grad=False``), so they are
    saved, loaded and moved with the model like its weights.

    Shape:
        ``(N,) → (N, dim)``.
    """

    def __init__(self, dim: int, scale: float, log: bool, flip_sin_to_cos: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim // 2) * scale, requires_grad=False)
        self.log, self.flip = log, flip_sin_to_cos

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = t.float()
        if self.log:
            x = torch.log(x)
        args = x[:, None] * self.weight[None, :] * 2 * math.pi
        sin, cos = torch.sin(args), torch.cos(args)
        return torch.cat([cos, sin] if self.flip else [sin, cos], dim=-1).to(self.weight.dtype)


@register_block
@dataclass(frozen=True)
class TimestepEmbedding(BlockSpec):
    """An encoding of a timestep input, then an MLP ``Linear → act → Linear`` (DDPM).

    Args:
        channels: the embedding width (``4 × base width`` in DDPM); ``None`` uses ``4 * dim``.
        dim: width of the encoding (DDPM: the first level's width); builders fill ``None`` with it.
        act: the MLP's activation; ``mlp=False`` returns the encoding itself.
        encoding: ``"sinusoidal"`` (the transformer's position encoding of the step, DDPM) or
            ``"fourier"`` (random Fourier features of a continuous noise level, score-based
            models; ``dim / 2`` fixed random frequencies, a parameter that does not train).
        flip_sin_to_cos: ``[cos, sin]`` instead of ``[sin, cos]``.
        freq_shift, max_period: the sinusoidal frequencies' conventions (diffusers' DDPM: ``1, 10000``).
        scale: sinusoidal: multiplies the arguments; fourier: the standard deviation of the
            random frequencies when the module is built (diffusers: 16).
        log: fourier only: encode ``log t`` (the noise level σ as score models take it).

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
    encoding: str = "sinusoidal"
    log: bool = True

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
        self._choice("encoding", ["sinusoidal", "fourier"])
        self._require(isinstance(self.log, bool), "log", "True or False")
        self._require(
            self.encoding != "fourier" or self.dim is None or self.dim % 2 == 0, "dim", "an even width for fourier"
        )
        if not self.mlp and self.channels not in (None, self.dim):
            raise ShapeError(f"TimestepEmbedding.channels={self.channels}: without the MLP the width is dim={self.dim}")

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        _require_form(self, inputs[0], "scalar", "a timestep input (N,)", (list(sources) or [""])[0])
        dim = self._dim()
        width = dim if not self.mlp else (self.channels or 4 * dim)
        return TensorType(width, ())

    def _dim(self) -> int:
        """The encoding's width; a typed error while it is unset (the builder may fill it later)."""
        if self.dim is None:
            raise ShapeError("TimestepEmbedding.dim is not set: give the width of the sinusoidal encoding")
        return self.dim

    def build(self, inputs: Sequence[TensorType], output: TensorType) -> nn.Module:
        encode: nn.Module
        dim = self._dim()
        if self.encoding == "fourier":
            encode = FourierFeatures(dim, float(self.scale), self.log, self.flip_sin_to_cos)
        else:
            encode = Sinusoidal(dim, self.flip_sin_to_cos, float(self.freq_shift), float(self.max_period), self.scale)
        if not self.mlp:
            return encode
        layers = OrderedDict(
            encode=encode,
            linear1=nn.Linear(dim, output.channels),
            act=make_act(self.act, output.channels),
            linear2=nn.Linear(output.channels, output.channels),
        )
        return nn.Sequential(layers)

    def params(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        c, dim = output.channels, self._dim()
        frequencies = dim // 2 if self.encoding == "fourier" else 0
        return frequencies + ((dim * c + c + c * c + c + act_params(self.act, c)) if self.mlp else 0)

    def flops(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        n, c = output
        return 2 * n * (self._dim() * c + c * c) if self.mlp else 0

    def label(self) -> str:
        width = self.channels or (4 * self.dim if self.dim else "4·dim")
        return f"{self.encoding} {self.dim or ''}".rstrip() + (f" → MLP {width}" if self.mlp else "")


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
