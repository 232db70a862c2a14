"""Gates: ``AttentionGate`` (a skip merge that weighs the skip by attention, Oktay et al. 2018)
and ``SqueezeExcitation`` (channel and/or spatial recalibration, Hu et al. 2018, Roy et al. 2018)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from math import prod
from typing import Sequence

import torch
from torch import nn

from ..errors import ShapeError, SpecError
from ..types import TensorType
from .base import BlockSpec, register_block
from .conv import _spatial_input, check_groups
from .layers import conv_cls, make_norm, norm_params, validate_norm_act

__all__ = ["AttentionGate", "SqueezeExcitation", "AttentionGateModule", "SqueezeExcitationModule"]


class AttentionGateModule(nn.Module):
    """Additive attention gate: ``x · σ(ψ(relu(W_g g + W_x x)))``.

    Shape:
        ``x: (N, C_x, *S)`` (the skip), ``g: (N, C_g, *S)`` (the gating signal) → ``(N, C_x, *S)``.
    """

    def __init__(self, w_g: nn.Module, w_x: nn.Module, psi: nn.Module) -> None:
        super().__init__()
        self.W_g, self.W_x, self.psi = w_g, w_x, psi

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        alpha = self.psi(torch.relu(self.W_g(g) + self.W_x(x)))
        return x * alpha


@register_block
@dataclass(frozen=True)
class AttentionGate(BlockSpec):
    """The attention gate of Attention U-Net (Oktay et al. 2018) as a skip merge.

    A skip edge brings the encoder features ``x`` (port 0), the decoder path brings the gating
    signal ``g`` (port 1, at the same scale: the up-sampled coarser features, as in the widely
    used AttU_Net). 1×1 convolutions ``W_x``, ``W_g`` map both to ``channels``, their sum goes
    through ReLU, a 1×1 convolution ``ψ`` to one channel and a sigmoid: the attention
    coefficients that scale ``x``. Feed the gated skip and the decoder path to a ``Merge``.

    Args:
        channels: the intermediate width ``F_int``; ``None`` is half of ``x``'s channels.
        norm: a norm after each 1×1 convolution (``"batch"`` as in AttU_Net) or ``"none"``.
        groups: GroupNorm groups (``norm="group"``).

    Shape:
        ``x: (N, C_x, *S)``, ``g: (N, C_g, *S)`` → ``(N, C_x, *S)``.
    """

    channels: int | None = None
    norm: str = "batch"
    groups: int = 32

    min_inputs = 2
    max_inputs = 2

    def validate(self) -> None:
        validate_norm_act(self)
        self._positive_int("channels", optional=True)

    def _inner(self, x_channels: int) -> int:
        return self.channels or max(1, x_channels // 2)

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        x, g = inputs
        names = list(sources) or ["x", "g"]
        for t, name in ((x, names[0]), (g, names[1])):
            if t.form != "dense" or t.dims == 0:
                raise ShapeError(f"AttentionGate needs spatial inputs, got {t} from {name}")
        if x.scale != g.scale:
            raise ShapeError(
                f"AttentionGate needs the gating signal at the skip's scale: {names[0]} is at {x.scale}, "
                f"{names[1]} at {g.scale} (up-sample the decoder path first)"
            )
        check_groups(self.norm, self.groups, self._inner(x.channels))
        return x

    def build(self, inputs: Sequence[TensorType], output: TensorType) -> nn.Module:
        x, g = inputs
        conv, inner, dims = conv_cls(x.dims), self._inner(x.channels), x.dims

        def branch(cin: int, cout: int, groups: int) -> nn.Module:
            layers: OrderedDict[str, nn.Module] = OrderedDict(conv=conv(cin, cout, 1))
            if self.norm != "none":
                layers["norm"] = make_norm(self.norm, cout, dims, groups)
            return nn.Sequential(layers)

        psi = branch(inner, 1, 1)
        psi.add_module("sigmoid", nn.Sigmoid())
        return AttentionGateModule(branch(g.channels, inner, self.groups), branch(x.channels, inner, self.groups), psi)

    def params(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        x, g = inputs
        inner = self._inner(x.channels)
        norms = 2 * norm_params(self.norm, inner) + norm_params(self.norm, 1)
        return (g.channels + x.channels) * inner + 2 * inner + inner + 1 + norms

    def flops(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        x, g = inputs
        inner = self._inner(x[1])
        return 2 * x[0] * prod(x[2:]) * inner * (x[1] + g[1] + 1)

    def label(self) -> str:
        return f"attention gate ({self.channels or 'C/2'})"


class SqueezeExcitationModule(nn.Module):
    """Channel (cSE) and/or spatial (sSE) squeeze-and-excitation; scSE adds the two.

    Shape:
        ``(N, C, *S) → (N, C, *S)``.
    """

    def __init__(self, channel: nn.Module | None, spatial: nn.Module | None, dims: int) -> None:
        super().__init__()
        if channel is None and spatial is None:
            raise SpecError("SqueezeExcitationModule needs a channel branch, a spatial branch or both; got neither")
        self.channel, self.spatial, self.dims = channel, spatial, dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs: list[torch.Tensor] = []
        if self.channel is not None:
            weights = self.channel(x.flatten(2).mean(-1))
            outs.append(x * weights[(slice(None), slice(None)) + (None,) * self.dims])
        if self.spatial is not None:
            outs.append(x * self.spatial(x))
        return outs[0] if len(outs) == 1 else outs[0] + outs[1]


@register_block
@dataclass(frozen=True)
class SqueezeExcitation(BlockSpec):
    """Squeeze-and-excitation: re-weigh channels from their global averages (``"cse"``, Hu et
    al. 2018), positions from a 1×1 convolution (``"sse"``), or both added (``"scse"``, Roy et
    al. 2018).

    Args:
        mode: ``"cse"``, ``"sse"`` or ``"scse"``.
        reduction: the channel MLP's bottleneck is ``channels // reduction`` (at least 1).

    Shape:
        ``(N, C, *S) → (N, C, *S)``.
    """

    mode: str = "scse"
    reduction: int = 16

    def validate(self) -> None:
        self._choice("mode", ["cse", "sse", "scse"])
        self._positive_int("reduction")

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        return _spatial_input(self, inputs)

    def _hidden(self, c: int) -> int:
        return max(1, c // self.reduction)

    def build(self, inputs: Sequence[TensorType], output: TensorType) -> nn.Module:
        (x,) = inputs
        c, hidden = x.channels, self._hidden(x.channels)
        channel = spatial = None
        if self.mode in ("cse", "scse"):
            channel = nn.Sequential(
                OrderedDict(fc1=nn.Linear(c, hidden), relu=nn.ReLU(), fc2=nn.Linear(hidden, c), sigmoid=nn.Sigmoid())
            )
        if self.mode in ("sse", "scse"):
            spatial = nn.Sequential(OrderedDict(conv=conv_cls(x.dims)(c, 1, 1), sigmoid=nn.Sigmoid()))
        return SqueezeExcitationModule(channel, spatial, x.dims)

    def params(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        c, hidden = inputs[0].channels, self._hidden(inputs[0].channels)
        cse = 2 * c * hidden + hidden + c if self.mode in ("cse", "scse") else 0
        sse = c + 1 if self.mode in ("sse", "scse") else 0
        return cse + sse

    def flops(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        (x,) = inputs
        c, hidden = x[1], self._hidden(x[1])
        cse = 2 * x[0] * 2 * c * hidden if self.mode in ("cse", "scse") else 0
        sse = 2 * x[0] * prod(x[2:]) * c if self.mode in ("sse", "scse") else 0
        return cse + sse

    def label(self) -> str:
        return f"{self.mode} /{self.reduction}" if self.mode != "sse" else "sse"
