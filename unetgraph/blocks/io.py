"""Graph inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import nn

from ..types import TensorType
from .base import BlockSpec, register_block

__all__ = ["Input"]


@register_block
@dataclass(frozen=True)
class Input(BlockSpec):
    """A graph input of ``channels`` channels and ``dims`` spatial axes: ``(N, channels, *S)``."""

    channels: int = 3
    dims: int = 2

    min_inputs = 0
    max_inputs = 0

    def validate(self) -> None:
        self._positive_int("channels")
        self._require(self.dims in (1, 2, 3), "dims", "1, 2 or 3")

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        return TensorType.spatial(self.channels, self.dims)

    def build(self, inputs: Sequence[TensorType], output: TensorType) -> nn.Module:
        return nn.Identity()

    def params(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        return 0

    def flops(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        return 0

    def label(self) -> str:
        return f"{self.channels}ch {self.dims}D"
