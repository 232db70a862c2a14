"""``Transformer``: a spatial transformer over the positions of a feature map (latent diffusion's
text-conditioned attention block; diffusers' ``Transformer2DModel`` with ``BasicTransformerBlock``)."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpecError
from ..types import TensorType
from .attention import _CONTEXT, heads_for, multihead
from .base import BlockSpec, register_block
from .conv import _spatial_input, check_groups, cond_input
from .layers import conv_cls, norm_notes, validate_norm_act

__all__ = ["Transformer", "TransformerModule", "TransformerLayer", "SequenceAttention", "FeedForward"]


class SequenceAttention(nn.Module):
    """Multi-head attention of a sequence to itself or to a context: ``to_q, to_k, to_v, to_out``.

    Shape:
        ``x: (N, L, C)`` [+ ``context: (N, L', D)``] → ``(N, L, C)``.
    """

    def __init__(self, channels: int, kv_channels: int, heads: int, bias: bool, out_bias: bool, dropout: float) -> None:
        super().__init__()
        self.to_q = nn.Linear(channels, channels, bias=bias)
        self.to_k = nn.Linear(kv_channels, channels, bias=bias)
        self.to_v = nn.Linear(kv_channels, channels, bias=bias)
        self.to_out = nn.Linear(channels, channels, bias=out_bias)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.heads = heads

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        kv = x if context is None else context
        return self.dropout(self.to_out(multihead(self.to_q(x), self.to_k(kv), self.to_v(kv), self.heads)))


class FeedForward(nn.Module):
    """``proj → GEGLU or GELU → dropout → out`` (Shazeer 2020's gated GELU: half of ``proj``'s
    output gates the other half).

    Shape:
        ``(N, L, C) → (N, L, C)``.
    """

    def __init__(self, channels: int, inner: int, gated: bool, dropout: float) -> None:
        super().__init__()
        self.proj = nn.Linear(channels, inner * (2 if gated else 1))
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.out = nn.Linear(inner, channels)
        self.gated = gated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        if self.gated:
            halves = h.chunk(2, dim=-1)
            h = halves[0] * F.gelu(halves[1])
        else:
            h = F.gelu(h)
        return self.out(self.dropout(h))


class TransformerLayer(nn.Module):
    """``x + attn1(norm1(x))``, ``x + attn2(norm2(x), context)`` (when there is a context),
    ``x + ff(norm3(x))``; ``attn1`` attends to the context too with ``only_cross_attention``.

    Shape:
        ``x: (N, L, C)`` [+ ``context: (N, L', D)``] → ``(N, L, C)``.
    """

    def __init__(
        self,
        norm1: nn.LayerNorm,
        attn1: SequenceAttention,
        norm2: nn.LayerNorm | None,
        attn2: SequenceAttention | None,
        norm3: nn.LayerNorm,
        ff: FeedForward,
        only_cross_attention: bool,
    ) -> None:
        super().__init__()
        self.norm1, self.attn1, self.norm2, self.attn2, self.norm3, self.ff = norm1, attn1, norm2, attn2, norm3, ff
        self.only_cross_attention = only_cross_attention

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x), context if self.only_cross_attention else None) + x
        if self.attn2 is not None and self.norm2 is not None:
            x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class TransformerModule(nn.Module):
    """``GroupNorm → proj_in → layers → proj_out``, added to the input. The projections are 1×1
    convolutions on the map, or linear layers on the sequence (``linear=True``).

    Submodule names follow diffusers' ``Transformer2DModel`` (``norm, proj_in,
    transformer_blocks, proj_out``; the layers are ``layer0``, ``layer1``, … rather than bare
    numbers), so its weights map one to one.

    Shape:
        ``x: (N, C, *S)`` [+ ``context: (N, L, D)``] → ``(N, C, *S)``.
    """

    def __init__(
        self, norm: nn.GroupNorm, proj_in: nn.Module, layers: list[TransformerLayer], proj_out: nn.Module, linear: bool
    ) -> None:
        super().__init__()
        self.norm, self.proj_in = norm, proj_in
        self.transformer_blocks = nn.Module()  # children layer0, layer1, …: submodule names are never bare numbers
        for i, layer in enumerate(layers):
            self.transformer_blocks.add_module(f"layer{i}", layer)
        self.proj_out = proj_out
        self.linear = linear

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(x)
        if not self.linear:
            h = self.proj_in(h)
        seq = h.flatten(2).transpose(1, 2)  # (N, positions, C)
        if self.linear:
            seq = self.proj_in(seq)
        for layer in self.transformer_blocks.children():
            seq = layer(seq, context)
        if self.linear:
            seq = self.proj_out(seq)
        h = seq.transpose(1, 2).unflatten(2, x.shape[2:])
        if not self.linear:
            h = self.proj_out(h)
        return h + x


@register_block
@dataclass(frozen=True)
class Transformer(BlockSpec):
    """A spatial transformer (Rombach et al. 2022's latent diffusion U-Net): the feature map's
    positions go through ``layers`` pre-norm transformer layers (self-attention, cross-attention
    to a context sequence, feed-forward), between a GroupNorm + projection in and a projection
    out, with a residual around the whole block.

    The context arrives on a ``cond`` edge (an ``Input(kind="context")``); without one the
    layers have no cross-attention.

    Args:
        heads / head_dim: the number of heads, or the width of one (one of them; neither: one
            head). They must divide the channels.
        layers: transformer layers (diffusers' ``transformer_layers_per_block``).
        groups, eps: the input GroupNorm (diffusers: ``eps=1e-6``).
        norm_eps: the layers' LayerNorms.
        linear_projection: the projections in and out are linear layers on the sequence
            instead of 1×1 convolutions (diffusers' ``use_linear_projection``).
        only_cross_attention: the first attention attends to the context too (so both do).
        ff: ``"geglu"`` (gated GELU, the default) or ``"gelu"``; ``ff_mult`` the hidden width
            as a multiple of the channels.
        bias: biases of the q, k, v projections; ``out_bias`` that of the output projection.
        dropout: after each attention's output projection and inside the feed-forward.

    Shape:
        ``x: (N, C, *S)`` [+ ``context: (N, L, D)``] → ``(N, C, *S)``.
    """

    heads: int | None = None
    head_dim: int | None = None
    layers: int = 1
    groups: int = 32
    eps: float | None = 1e-6
    norm_eps: float = 1e-5
    linear_projection: bool = False
    only_cross_attention: bool = False
    ff: str = "geglu"
    ff_mult: int = 4
    bias: bool = False
    out_bias: bool = True
    dropout: float = 0.0

    max_cond = 1

    def validate(self) -> None:
        validate_norm_act(self)
        self._positive_int("heads", optional=True)
        self._positive_int("head_dim", optional=True)
        if self.heads is not None and self.head_dim is not None:
            raise SpecError("Transformer: give heads or head_dim, not both (the other follows from channels)")
        self._positive_int("layers")
        self._positive_int("ff_mult")
        self._require(isinstance(self.norm_eps, float) and self.norm_eps > 0, "norm_eps", "a positive float")
        self._choice("ff", ["geglu", "gelu"])
        for field in ("linear_projection", "only_cross_attention", "bias", "out_bias"):
            self._require(isinstance(getattr(self, field), bool), field, "True or False")
        self._require(
            isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1, "dropout", "a probability in [0, 1)"
        )

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        x = _spatial_input(self, inputs[:1])
        heads_for(self.heads, self.head_dim, x.channels)
        check_groups("group", self.groups, x.channels)
        if len(inputs) > 1 or self.only_cross_attention:
            why = "only_cross_attention" if self.only_cross_attention else "cross-attention"
            cond_input(
                self, inputs, sources, "sequence", _CONTEXT, f"{why} needs a cond edge from an Input(kind='context')"
            )
        return x

    def _context(self, inputs: Sequence[TensorType]) -> int | None:
        return inputs[1].channels if len(inputs) > 1 else None

    def build(self, inputs: Sequence[TensorType], output: TensorType) -> nn.Module:
        x, ctx = inputs[0], self._context(inputs)
        c, heads = x.channels, heads_for(self.heads, self.head_dim, x.channels)

        def attention(kv: int) -> SequenceAttention:
            return SequenceAttention(c, kv, heads, self.bias, self.out_bias, float(self.dropout))

        layers = [
            TransformerLayer(
                norm1=nn.LayerNorm(c, eps=self.norm_eps),
                attn1=attention(ctx if self.only_cross_attention and ctx is not None else c),
                norm2=nn.LayerNorm(c, eps=self.norm_eps) if ctx is not None else None,
                attn2=attention(ctx) if ctx is not None else None,
                norm3=nn.LayerNorm(c, eps=self.norm_eps),
                ff=FeedForward(c, c * self.ff_mult, self.ff == "geglu", float(self.dropout)),
                only_cross_attention=self.only_cross_attention,
            )
            for _ in range(self.layers)
        ]
        norm = nn.GroupNorm(self.groups, c, eps=1e-6 if self.eps is None else self.eps)
        proj_in: nn.Module
        proj_out: nn.Module
        if self.linear_projection:
            proj_in, proj_out = nn.Linear(c, c), nn.Linear(c, c)
        else:
            conv = conv_cls(x.dims)
            proj_in, proj_out = conv(c, c, 1), conv(c, c, 1)
        return TransformerModule(norm, proj_in, layers, proj_out, self.linear_projection)

    def shape_notes(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> list[str]:
        return norm_notes("group", self.groups, inputs[0])

    def _attention_params(self, c: int, kv: int) -> int:
        b = int(self.bias)
        return (c * c + c * b) + 2 * (kv * c + c * b) + (c * c + c * int(self.out_bias))

    def params(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        c, ctx = inputs[0].channels, self._context(inputs)
        inner = c * self.ff_mult
        ff_width = inner * (2 if self.ff == "geglu" else 1)
        layer = 2 * c * 2 + self._attention_params(c, ctx if self.only_cross_attention and ctx is not None else c)
        layer += (c * ff_width + ff_width) + (inner * c + c)
        if ctx is not None:
            layer += 2 * c + self._attention_params(c, ctx)
        return 2 * c + 2 * (c * c + c) + self.layers * layer

    def flops(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        n, c, positions = inputs[0][0], inputs[0][1], prod(inputs[0][2:])
        ctx = (inputs[1][1], inputs[1][2]) if len(inputs) > 1 else None  # (L, D)
        inner = c * self.ff_mult
        ff_width = inner * (2 if self.ff == "geglu" else 1)

        def attention(keys: int, kv: int) -> int:
            return 2 * n * (2 * positions * c * c + 2 * keys * kv * c) + 4 * n * positions * keys * c

        self_keys = ctx if self.only_cross_attention and ctx is not None else (positions, c)
        layer = attention(*self_keys) + 2 * n * positions * (c * ff_width + inner * c)
        if ctx is not None:
            layer += attention(*ctx)
        return 2 * (2 * n * positions * c * c) + self.layers * layer

    def label(self) -> str:
        heads = (
            f"head_dim {self.head_dim}" if self.head_dim else f"{self.heads or 1} head{'s' * ((self.heads or 1) > 1)}"
        )
        layers = f"{self.layers} layers, " if self.layers > 1 else ""
        return f"transformer ({layers}{heads})"
