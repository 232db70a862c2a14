"""Merges: where a skip edge meets the decoder path."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn

from ..errors import ShapeError
from ..types import TensorType
from .base import BlockSpec, register_block
from .layers import CenterCrop

__all__ = ["Merge"]


class _Merge(nn.Module):
    def __init__(self, mode: str, inputs: int, crop: bool) -> None:
        super().__init__()
        self.mode = mode
        self.crop: nn.ModuleDict | None
        if crop:
            self.crop = nn.ModuleDict(OrderedDict((f"in{i}", CenterCrop()) for i in range(inputs - 1)))
        else:
            self.crop = None

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.crop is not None:
            xs = (*(crop(x, xs[-1]) for crop, x in zip(self.crop.values(), xs[:-1])), xs[-1])
        if self.mode == "concat":
            return torch.cat(xs, dim=1)
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


@register_block
@dataclass(frozen=True)
class Merge(BlockSpec):
    """Combine two or more inputs at the same scale.

    Args:
        mode: ``"concat"`` along channels (channels add up) or ``"add"`` (channels must be equal).
        crop: centre-crop every input but the last (the skips) to the last one's size first,
            as the original U-Net does with valid convolutions.

    Shape:
        ``(N, C_i, *S) for each input → (N, ΣC_i or C, *S)``.
    """

    mode: str = "concat"
    crop: bool = False
    min_inputs = 2
    max_inputs = None

    def validate(self) -> None:
        self._choice("mode", ["concat", "add"])
        self._require(isinstance(self.crop, bool), "crop", "True or False")

    @property
    def size_policy(self) -> Literal["equal", "crop"]:
        return "crop" if self.crop else "equal"

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        names = list(sources) or [f"input {i}" for i in range(len(inputs))]
        for t, name in zip(inputs, names):
            if t.form != "dense":  # (N,) timesteps or labels, (N, L, D) context: no channel axis to merge on
                raise ShapeError(
                    f"{self.mode} merges feature maps or vectors (N, C, ...); {name} is {t} (pass it through "
                    "an embedding first)"
                )
        first = inputs[0]
        for t, name in zip(inputs[1:], names[1:]):
            if t.dims != first.dims or t.scale != first.scale:
                raise ShapeError(
                    f"{self.mode} needs inputs at one scale: {names[0]} is at {_scale(first)}, {name} at {_scale(t)}"
                )
        if self.mode == "add":
            # name the first input that disagrees with the last (the main path)
            main, main_name = inputs[-1], names[-1]
            for t, name in zip(inputs[:-1], names[:-1]):
                if t.channels != main.channels:
                    raise ShapeError(
                        f"{name} carries {t.channels} channels, add needs {main.channels} from {main_name}"
                    )
            return main
        return first.with_(channels=sum(t.channels for t in inputs))

    def build(self, inputs: Sequence[TensorType], output: TensorType) -> nn.Module:
        return _Merge(self.mode, len(inputs), self.crop)

    def params(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        return 0

    def flops(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        return 0

    def label(self) -> str:
        return self.mode + (" (crop)" if self.crop else "")


def _scale(t: TensorType) -> str:
    return "×".join(str(s) for s in t.scale) if len(set(t.scale)) > 1 else str(t.scale[0])
