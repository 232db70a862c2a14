"""The vocabulary of the graph: node roles, edge kinds and the tensor type carried by every edge."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from fractions import Fraction
from typing import Sequence

from .contract import input_pattern, input_rank

__all__ = ["format_dims", "Role", "EdgeKind", "TensorType", "AXIS_NAMES", "FORMS"]


class Role(str, Enum):
    """What a node does in the U. Roles drive layout, selection and defaults, never behaviour."""

    INPUT = "input"
    STEM = "stem"
    ENCODER = "encoder"
    DOWN = "down"
    BOTTLENECK = "bottleneck"
    UP = "up"
    MERGE = "merge"
    DECODER = "decoder"
    HEAD = "head"
    EMBEDDING = "embedding"

    def __str__(self) -> str:
        return self.value


class EdgeKind(str, Enum):
    """``data`` is the main path, ``skip`` crosses the U from encoder to merge, ``cond`` carries conditioning."""

    DATA = "data"
    SKIP = "skip"
    COND = "cond"

    def __str__(self) -> str:
        return self.value


AXIS_NAMES = {0: (), 1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}


# The layouts a tensor on an edge can have, beside ``dense`` (N, C, *spatial) / (N, C):
# per-sample scalars such as diffusion timesteps, integer class labels, and sequences such
# as text-encoder states for cross-attention.
FORMS = ("dense", "scalar", "index", "sequence")


@dataclass(frozen=True)
class TensorType:
    """The static type of a tensor on an edge.

    Args:
        channels: size of dimension 1 (the feature size ``D`` of a sequence).
        scale: per spatial axis, the nominal size relative to the graph input
            (``Fraction(1, 4)`` two levels down). Its length is the number of spatial
            dimensions; an empty tuple is a per-sample vector ``(N, channels)``.
        form: ``"dense"`` ``(N, channels, *spatial)``; ``"scalar"`` ``(N,)`` floats (a
            diffusion timestep); ``"index"`` ``(N,)`` integers (class labels); ``"sequence"``
            ``(N, L, channels)`` of any length ``L`` (cross-attention context). Only graph
            inputs produce the last three; they carry no spatial axes.
    """

    channels: int
    scale: tuple[Fraction, ...]
    form: str = "dense"

    @classmethod
    def spatial(cls, channels: int, dims: int) -> TensorType:
        """The type of a full-resolution input with ``dims`` spatial axes."""
        return cls(channels, (Fraction(1),) * dims)

    @classmethod
    def of_shape(cls, shape: Sequence[int], *, cond: bool = False) -> TensorType:
        """The type a concrete shape has at full resolution: ``(N,)`` a per-sample scalar,
        ``(N, C)`` a vector, ``(N, C, *spatial)`` dense (blocks given shapes, not types).

        ``cond``: the shape arrives on a ``cond`` edge, where three axes are a context
        sequence ``(N, L, C)``: conditioning is a scalar, a vector or a sequence, never dense."""
        if len(shape) < 2:
            return cls(1, (), "scalar")
        if cond and len(shape) == 3:
            return cls(shape[2], (), "sequence")
        return cls(shape[1], (Fraction(1),) * (len(shape) - 2))

    @property
    def dims(self) -> int:
        return len(self.scale)

    @property
    def rank(self) -> int:
        """Number of tensor dimensions, batch included."""
        return input_rank(self.form, self.dims)

    @property
    def axes(self) -> tuple[str, ...]:
        """Axis letters (``("H", "W")`` in 2D)."""
        return AXIS_NAMES.get(self.dims, tuple(f"S{i}" for i in range(self.dims)))

    def pattern(self) -> str:
        """The expected shape in words: ``(N, 3, H, W)``, ``(N,)``, ``(N, L, 512)``."""
        return input_pattern(self.form, self.channels, self.axes)

    def with_(
        self, *, channels: int | None = None, scale: tuple[Fraction, ...] | None = None, form: str | None = None
    ) -> TensorType:
        """This type with the given fields replaced (the others kept)."""
        return TensorType(
            self.channels if channels is None else channels,
            self.scale if scale is None else scale,
            self.form if form is None else form,
        )

    def rescaled(self, factors: tuple[Fraction, ...]) -> TensorType:
        """This type with each axis' scale multiplied by ``factors``."""
        return replace(self, scale=tuple(s * f for s, f in zip(self.scale, factors, strict=True)))

    def __str__(self) -> str:
        if self.form == "scalar":
            return "scalar (N,)"
        if self.form == "index":
            return "labels (N,)"
        if self.form == "sequence":
            return f"sequence (N, L, {self.channels})"
        if not self.scale:
            return f"{self.channels}"
        scales = {str(s) for s in self.scale}
        scale = scales.pop() if len(scales) == 1 else "×".join(str(s) for s in self.scale)
        return f"{self.channels}ch@{scale} ({self.dims}D)"


def format_dims(shape: tuple[int, ...]) -> str:
    """A shape without its batch axis, for tables and drawings: ``(N, 64, 32, 32)`` → ``"64×32×32"``,
    a per-sample scalar ``(N,)`` → ``"(N,)"``."""
    return "×".join(map(str, shape[1:])) or "(N,)"
