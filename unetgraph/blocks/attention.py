"""Attention over spatial positions: ``SelfAttention``, ``CrossAttention`` (to a context
sequence, text-conditioning style) and ``LinearAttention`` (linear in the number of positions)."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ShapeError, SpecError
from ..types import TensorType
from .base import BlockSpec, register_block
from .conv import _spatial_input, check_groups, cond_input
from .layers import NORMS, conv_cls, make_norm, norm_notes, validate_norm_act

__all__ = [
    "SelfAttention",
    "CrossAttention",
    "LinearAttention",
    "AttentionModule",
    "LinearAttentionModule",
    "multihead",
    "heads_for",
]


_CONTEXT = "a context, a sequence (N, L, D)"


def multihead(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Scaled dot-product attention with ``heads`` heads over projected sequences.

    Shape:
        ``q: (N, L, H·d)``, ``k, v: (N, L', H·d)`` → ``(N, L, H·d)``.
    """

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (heads, -1)).transpose(1, 2)  # (N, H, L, d)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).flatten(2)


def heads_for(heads: int | None, head_dim: int | None, channels: int) -> int:
    """The number of heads over ``channels`` given ``heads`` or ``head_dim`` (neither: one head).

    Raises:
        ShapeError: they do not divide ``channels``.
    """
    if head_dim is not None:
        if channels % head_dim:
            raise ShapeError(f"head_dim={head_dim} does not divide {channels} channels")
        return channels // head_dim
    heads = heads or 1
    if channels % heads:
        raise ShapeError(f"heads={heads} does not divide {channels} channels")
    return heads


class AttentionModule(nn.Module):
    """Multi-head dot-product attention of every spatial position to every position (or to a
    context sequence), with ``torch.nn.functional.scaled_dot_product_attention``.

    ``norm → q, k, v → SDPA → out`` then ``(out + x) / output_scale``; submodules in the
    order of diffusers' ``Attention`` (``norm, to_q, to_k, to_v, to_out``).

    Shape:
        ``x: (N, C, *S)`` [+ ``context: (N, L, D)``] → ``(N, C, *S)``.
    """

    def __init__(
        self,
        norm: nn.Module | None,
        to_q: nn.Linear,
        to_k: nn.Linear,
        to_v: nn.Linear,
        to_out: nn.Linear,
        heads: int,
        residual: bool,
        output_scale: float,
    ) -> None:
        super().__init__()
        self.norm, self.to_q, self.to_k, self.to_v, self.to_out = norm, to_q, to_k, to_v, to_out
        self.heads, self.residual, self.output_scale = heads, residual, output_scale

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = x if self.norm is None else self.norm(x)
        seq = h.flatten(2).transpose(1, 2)  # (N, positions, C)
        kv = seq if context is None else context
        out = multihead(self.to_q(seq), self.to_k(kv), self.to_v(kv), self.heads)
        out = self.to_out(out)
        out = out.transpose(1, 2).reshape(x.shape)
        if self.residual:
            out = out + x
        return out / self.output_scale if self.output_scale != 1 else out


@dataclass(frozen=True)
class _AttentionSpec(BlockSpec):
    """Fields and checks shared by the softmax attention blocks (not registered)."""

    heads: int | None = None
    head_dim: int | None = None
    norm: str = "group"
    groups: int = 32
    eps: float | None = None
    bias: bool = True
    residual: bool = True
    output_scale: float = 1.0
    out_bias: bool = True

    def validate(self) -> None:
        validate_norm_act(self)
        self._positive_int("heads", optional=True)
        self._positive_int("head_dim", optional=True)
        if self.heads is not None and self.head_dim is not None:
            raise SpecError(f"{self.type_name}: give heads or head_dim, not both (the other follows from channels)")
        self._require(isinstance(self.bias, bool), "bias", "True or False")
        self._require(isinstance(self.residual, bool), "residual", "True or False")
        self._require(isinstance(self.out_bias, bool), "out_bias", "True or False")
        self._require(
            isinstance(self.output_scale, (int, float)) and self.output_scale > 0, "output_scale", "a positive number"
        )

    def n_heads(self, channels: int) -> int:
        """Heads for ``channels``; raises :class:`ShapeError` when they do not divide."""
        return heads_for(self.heads, self.head_dim, channels)

    def _query(self, inputs: Sequence[TensorType]) -> TensorType:
        x = _spatial_input(self, inputs[:1])
        self.n_heads(x.channels)
        check_groups(self.norm, self.groups, x.channels)
        return x

    def _kv_channels(self, inputs: Sequence[TensorType]) -> int:
        return inputs[1].channels if len(inputs) > 1 else inputs[0].channels

    def build(self, inputs: Sequence[TensorType], output: TensorType) -> nn.Module:
        x, c_kv = inputs[0], self._kv_channels(inputs)
        c = x.channels
        return AttentionModule(
            norm=make_norm(self.norm, c, x.dims, self.groups, self.eps) if self.norm != "none" else None,
            to_q=nn.Linear(c, c, bias=self.bias),
            to_k=nn.Linear(c_kv, c, bias=self.bias),
            to_v=nn.Linear(c_kv, c, bias=self.bias),
            to_out=nn.Linear(c, c, bias=self.out_bias),
            heads=self.n_heads(c),
            residual=self.residual,
            output_scale=float(self.output_scale),
        )

    def shape_notes(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> list[str]:
        return norm_notes(self.norm, self.groups, inputs[0]) if self.norm != "none" else []

    def params(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        c, c_kv, b = inputs[0].channels, self._kv_channels(inputs), int(self.bias)
        norm = NORMS[self.norm][1] * c if self.norm != "none" else 0
        return norm + (c * c + c * b) + 2 * (c_kv * c + c * b) + (c * c + c * int(self.out_bias))

    def flops(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        n, c, positions = inputs[0][0], inputs[0][1], prod(inputs[0][2:])
        keys, c_kv = (inputs[1][1], inputs[1][2]) if len(inputs) > 1 else (positions, c)
        projections = 2 * n * (positions * c * c * 2 + keys * c_kv * c * 2)
        return projections + 4 * n * positions * keys * c  # q·kᵀ and weights·v over all heads

    def label(self) -> str:
        heads = (
            f"head_dim {self.head_dim}" if self.head_dim else f"{self.heads or 1} head{'s' * ((self.heads or 1) > 1)}"
        )
        return f"{self.type_name} ({heads})"


@register_block
@dataclass(frozen=True)
class SelfAttention(_AttentionSpec):
    """Self-attention over all spatial positions (the DDPM attention block: GroupNorm, one
    head by default, residual), built on ``scaled_dot_product_attention``.

    Args:
        heads / head_dim: the number of heads, or the width of one (give one of them;
            neither means one head). They must divide the channels.
        norm, groups, eps: the normalisation of the input (GroupNorm by default).
        bias: biases of the q, k, v projections.
        residual: add the input to the output (diffusers' ``residual_connection``).
        output_scale: the result is divided by it (diffusers' ``rescale_output_factor``).
        out_bias: the bias of the output projection.

    Shape:
        ``(N, C, *S) → (N, C, *S)``.
    """

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        return self._query(inputs)


@register_block
@dataclass(frozen=True)
class CrossAttention(_AttentionSpec):
    """Attention from every spatial position to a context sequence ``(N, L, D)`` that arrives
    on a ``cond`` edge (e.g. text-encoder states from an ``Input(kind="context")``).

    Queries come from the normalised input, keys and values from the context (projected
    from ``D`` to the input's channels). Fields as :class:`SelfAttention`; ``bias`` defaults
    to ``False`` as in text-conditioned diffusion U-Nets.

    Shape:
        ``x: (N, C, *S)``, ``context: (N, L, D)`` → ``(N, C, *S)``.
    """

    bias: bool = False

    max_cond = 1

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        x = self._query(inputs)
        cond_input(self, inputs, sources, "sequence", _CONTEXT, "add a cond edge from an Input(kind='context')")
        return x


class LinearAttentionModule(nn.Module):
    """Linear attention (Katharopoulos et al. 2020; Shen et al. 2021's softmax on q and k), as in
    the DDPM implementation of denoising-diffusion-pytorch: cost linear in the positions.

    Shape:
        ``(N, C, *S) → (N, C, *S)``.
    """

    def __init__(self, norm: nn.Module | None, to_qkv: nn.Module, to_out: nn.Module, heads: int, head_dim: int) -> None:
        super().__init__()
        self.norm, self.to_qkv, self.to_out = norm, to_qkv, to_out
        self.heads, self.head_dim = heads, head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.norm is None else self.norm(x)
        inner = self.heads * self.head_dim
        qkv = self.to_qkv(h).flatten(2)  # (N, 3·inner, positions)
        q, k, v = (qkv[:, i * inner : (i + 1) * inner].unflatten(1, (self.heads, self.head_dim)) for i in range(3))
        q = q.softmax(dim=-2) * self.head_dim**-0.5
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        out = out.flatten(1, 2).unflatten(2, x.shape[2:])
        return self.to_out(out) + x


@register_block
@dataclass(frozen=True)
class LinearAttention(BlockSpec):
    """Linear attention over spatial positions with a residual (cheap at high resolution).

    Args:
        heads, head_dim: ``heads × head_dim`` is the inner width (independent of channels).
        norm, groups, eps: the input normalisation.

    Shape:
        ``(N, C, *S) → (N, C, *S)``.
    """

    heads: int = 4
    head_dim: int = 32
    norm: str = "group"
    groups: int = 1
    eps: float | None = None

    def validate(self) -> None:
        validate_norm_act(self)
        self._positive_int("heads")
        self._positive_int("head_dim")

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        x = _spatial_input(self, inputs)
        check_groups(self.norm, self.groups, x.channels)
        return x

    def build(self, inputs: Sequence[TensorType], output: TensorType) -> nn.Module:
        (x,) = inputs
        conv, inner = conv_cls(x.dims), self.heads * self.head_dim
        return LinearAttentionModule(
            norm=make_norm(self.norm, x.channels, x.dims, self.groups, self.eps) if self.norm != "none" else None,
            to_qkv=conv(x.channels, 3 * inner, 1, bias=False),
            to_out=conv(inner, x.channels, 1),
            heads=self.heads,
            head_dim=self.head_dim,
        )

    def shape_notes(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> list[str]:
        return norm_notes(self.norm, self.groups, inputs[0]) if self.norm != "none" else []

    def params(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        c, inner = inputs[0].channels, self.heads * self.head_dim
        norm = NORMS[self.norm][1] * c if self.norm != "none" else 0
        return norm + c * 3 * inner + inner * c + c

    def flops(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        n, c, positions = inputs[0][0], inputs[0][1], prod(inputs[0][2:])
        inner = self.heads * self.head_dim
        return 2 * n * positions * (c * 3 * inner + inner * c) + 4 * n * positions * inner * self.head_dim

    def label(self) -> str:
        return f"linear attention ({self.heads}×{self.head_dim})"
