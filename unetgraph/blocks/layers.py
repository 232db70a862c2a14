"""Small ``nn.Module`` layers the built-in blocks are made of, and per-dimension lookups.

Norm and activation tables are plain dicts: add an entry to offer a new ``norm=`` or
``act=`` name to :class:`~unetgraph.blocks.conv.ConvBlock` and friends.
"""

from __future__ import annotations

from dataclasses import fields
from math import prod
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ShapeError
from .base import BlockSpec, leaf_module

__all__ = [
    "axes_text",
    "conv_label",
    "validate_norm_act",
    "norm_notes",
    "NORMS",
    "ACTS",
    "conv_cls",
    "conv_transpose_cls",
    "make_norm",
    "NORM_TYPES",
    "ChannelLayerNorm",
    "Concat",
    "Add",
    "center_crop",
]


def conv_cls(dims: int) -> type[nn.Module]:
    return (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]


def conv_transpose_cls(dims: int) -> type[nn.Module]:
    return (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[dims - 1]


@leaf_module
class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis at every position (ConvNeXt's "LayerNorm2d")."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.movedim(1, -1), self.weight.shape, self.weight, self.bias, self.eps)
        return y.movedim(-1, 1)


# every normalization layer a block makes: they take low-precision inputs with float32 weights
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, ChannelLayerNorm)


def _batch(channels: int, dims: int, groups: int) -> nn.Module:
    return (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dims - 1](channels)


def _instance(channels: int, dims: int, groups: int) -> nn.Module:
    return (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)[dims - 1](channels, affine=True)


def _batch_plain(channels: int, dims: int, groups: int) -> nn.Module:
    return (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dims - 1](channels, affine=False)


# name -> (factory(channels, dims, groups), parameters per channel)
NORMS: dict[str, tuple[Callable[[int, int, int], nn.Module], int]] = {
    "batch": (_batch, 2),
    "batch_noaffine": (_batch_plain, 0),  # statistics only, no scale/shift (Caffe's BatchNorm layer)
    "instance": (_instance, 2),
    "group": (lambda c, d, g: nn.GroupNorm(g, c), 2),
    "layer": (lambda c, d, g: ChannelLayerNorm(c), 2),
}


def axes_text(value: int | tuple[int, ...]) -> str:
    """A per-axis field for labels: ``3`` or ``1×3×3``."""
    return "×".join(map(str, value)) if isinstance(value, tuple) else str(value)


def conv_label(spec: BlockSpec, head: str) -> str:
    """``head`` then the stride, norm, activation and dropout a conv-like spec has, in a few words."""
    parts = [head]
    if getattr(spec, "stride", 1) != 1:
        parts.append(f"stride {spec.stride}")  # type: ignore[attr-defined]
    parts += [p for p in (getattr(spec, "norm", "none"), getattr(spec, "act", "none")) if p != "none"]
    if getattr(spec, "dropout", 0):
        parts.append(f"drop {spec.dropout:g}")  # type: ignore[attr-defined]
    return " ".join(parts)


def validate_norm_act(spec: BlockSpec) -> None:
    """Check whichever of the fields ``norm``, ``groups``, ``eps``, ``act`` a spec has, the same way
    for every block: a known table name (or ``"none"``), positive groups, positive ``eps``."""
    names = {f.name for f in fields(spec)}
    if "norm" in names:
        spec._choice("norm", [*NORMS, "none"])
    if "groups" in names:
        spec._positive_int("groups")
    if "eps" in names:
        eps = spec.eps  # type: ignore[attr-defined]
        spec._require(eps is None or (isinstance(eps, float) and eps > 0), "eps", "a positive float")
    if "act" in names:
        spec._choice("act", [*ACTS, "none"])


def norm_notes(kind: str, groups: int, shape: Sequence[int]) -> list[str]:
    """What a ``NORMS[kind]`` layer does with too few values at ``shape`` ``(N, C, *S)``, by
    torch's own rules: raise :class:`ShapeError` where torch would raise in every mode, return
    a note where it raises only in training or its output is constant."""
    n, c, positions = shape[0], shape[1], prod(shape[2:])
    at = "×".join(map(str, shape[2:])) or "1"
    if kind == "group":
        per_group = c // groups * positions
        if n * per_group == 1:  # F.group_norm refuses a single value, in every mode
            raise ShapeError(f"GroupNorm sees one value per group ({c} channels in {groups} groups at {at})")
        return [f"GroupNorm sees one value per group at {at}: its output is constant"] if per_group == 1 else []
    if kind == "instance" and positions == 1:  # normalises per sample with input statistics, in every mode
        raise ShapeError(f"InstanceNorm needs more than one position, gets {at}")
    if kind.startswith("batch") and n * positions == 1:
        return [f"batch norm sees one value per channel at {tuple(shape)}: it raises in training mode"]
    return []


def make_norm(kind: str, channels: int, dims: int, groups: int, eps: float | None = None) -> nn.Module:
    """The ``NORMS[kind]`` layer for ``channels``, with its ``eps`` set when given."""
    norm = NORMS[kind][0](channels, dims, groups)
    if eps is not None:
        norm.eps = eps
    return norm


ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "silu": nn.SiLU,
    "gelu": nn.GELU,
}


class Concat(nn.Module):
    """Concatenate inputs along channels, after centre-cropping them to the smallest when ``crop``."""

    def __init__(self, crop: bool = False) -> None:
        super().__init__()
        self.crop = crop

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.crop:
            xs = center_crop(xs)
        return torch.cat(xs, dim=1)


class Add(nn.Module):
    """Sum inputs, after centre-cropping them to the smallest when ``crop``."""

    def __init__(self, crop: bool = False) -> None:
        super().__init__()
        self.crop = crop

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.crop:
            xs = center_crop(xs)
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


@leaf_module
class CenterCrop(nn.Module):
    """Crop the first input's spatial axes, centred, to the sizes of the second."""

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        for axis in range(2, x.dim()):
            start = (x.shape[axis] - like.shape[axis]) // 2
            x = x.narrow(axis, start, like.shape[axis])
        return x


def center_crop(xs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Centre-crop every tensor to the smallest spatial size among them."""
    dims = xs[0].dim()
    target = [min(x.shape[a] for x in xs) for a in range(2, dims)]
    out = []
    for x in xs:
        for a, size in zip(range(2, dims), target):
            x = x.narrow(a, (x.shape[a] - size) // 2, size)
        out.append(x)
    return tuple(out)
