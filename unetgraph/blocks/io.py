"""Graph inputs: images and volumes, and the conditioning inputs of diffusion models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import nn

from ..types import TensorType
from .base import BlockSpec, register_block

__all__ = ["Input", "INPUT_KINDS"]

# kind -> the TensorType form it produces
INPUT_KINDS = {"image": "dense", "timestep": "scalar", "label": "index", "context": "sequence"}


@register_block
@dataclass(frozen=True)
class Input(BlockSpec):
    """A graph input. The lowered module takes the graph's inputs positionally, in order.

    Args:
        channels: channels of an image, or the feature size ``D`` of a context sequence.
        dims: spatial axes of an image (1, 2 or 3).
        kind: ``"image"`` ``(N, channels, *S)``; ``"timestep"`` ``(N,)`` (diffusion step,
            any real dtype); ``"label"`` ``(N,)`` integer class labels; ``"context"``
            ``(N, L, channels)`` (e.g. text-encoder states for cross-attention; any ``L``).

    Example:
        >>> import unetgraph as ug
        >>> str(ug.Input(kind="timestep").infer([]))
        'scalar (N,)'
    """

    channels: int = 3
    dims: int = 2
    kind: str = "image"

    min_inputs = 0
    max_inputs = 0

    def validate(self) -> None:
        self._positive_int("channels")
        self._require(self.dims in (1, 2, 3), "dims", "1, 2 or 3")
        self._choice("kind", list(INPUT_KINDS))

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        if self.kind == "image":
            return TensorType.spatial(self.channels, self.dims)
        return TensorType(self.channels, (), INPUT_KINDS[self.kind])

    def build(self, inputs: Sequence[TensorType], output: TensorType) -> nn.Module:
        return nn.Identity()

    def params(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        return 0

    def flops(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        return 0

    def label(self) -> str:
        if self.kind == "image":
            return f"{self.channels}ch {self.dims}D"
        return self.kind if self.kind != "context" else f"context D={self.channels}"
