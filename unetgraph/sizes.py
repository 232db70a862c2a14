"""Spatial size arithmetic along one axis.

Blocks describe how they change a spatial size as a short sequence of the ops below;
the checker evaluates them, and the valid-size analysis scans them. All follow PyTorch's
formulas exactly (floor division, as in ``nn.Conv*`` and ``nn.*Pool*`` with
``ceil_mode=False``). Each op also says whether it was *exact*: whether every input
position reached the output (pooling an odd size drops the last row; a padded stride-2
conv does not).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Union

__all__ = ["Window", "Transposed", "Scale", "Pad", "SizeOp", "apply_ops", "SizeFailure"]


class SizeFailure(Exception):
    """Internal: a size op cannot produce a valid size. The checker turns it into a ShapeError."""


@dataclass(frozen=True)
class Window:
    """A sliding window (convolution or pooling): ``floor((n + 2p - d(k-1) - 1) / s) + 1``."""

    kernel: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1

    def apply(self, n: int) -> tuple[int, bool]:
        span = n + 2 * self.padding - self.dilation * (self.kernel - 1) - 1
        if span < 0:
            raise SizeFailure(f"{n} is smaller than the window ({self.describe()})")
        out = span // self.stride + 1
        # exact: the last window still reaches the last real (unpadded) input position
        last = (out - 1) * self.stride - self.padding + self.dilation * (self.kernel - 1)
        return out, last >= n - 1

    def describe(self) -> str:
        parts = [f"kernel {self.kernel}"]
        if self.stride != 1:
            parts.append(f"stride {self.stride}")
        if self.padding:
            parts.append(f"padding {self.padding}")
        if self.dilation != 1:
            parts.append(f"dilation {self.dilation}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Transposed:
    """A transposed convolution: ``(n-1)s - 2p + d(k-1) + output_padding + 1``."""

    kernel: int
    stride: int = 1
    padding: int = 0
    output_padding: int = 0
    dilation: int = 1

    def apply(self, n: int) -> tuple[int, bool]:
        out = (n - 1) * self.stride - 2 * self.padding + self.dilation * (self.kernel - 1) + self.output_padding + 1
        if out < 1:
            raise SizeFailure(f"transposed convolution turns {n} into {out}")
        return out, True

    def describe(self) -> str:
        return f"transposed kernel {self.kernel}, stride {self.stride}"


@dataclass(frozen=True)
class Scale:
    """Resampling by a rational factor: ``floor(n * factor)`` (``F.interpolate``'s rule).

    With ``exact=True`` a non-integral result is an error (pixel shuffle/unshuffle).
    """

    factor: Fraction
    exact: bool = False

    def apply(self, n: int) -> tuple[int, bool]:
        value = Fraction(n) * self.factor
        out = value.numerator // value.denominator
        integral = value.denominator == 1
        if self.exact and not integral:
            raise SizeFailure(f"{n} is not divisible by {1 / self.factor}")
        if out < 1:
            raise SizeFailure(f"scaling {n} by {self.factor} gives {out}")
        return out, integral

    def describe(self) -> str:
        return f"scale {self.factor}"


@dataclass(frozen=True)
class Pad:
    """Zeros added before and after (asymmetric padding, e.g. diffusers' ``Downsample2D``)."""

    before: int = 0
    after: int = 0

    def apply(self, n: int) -> tuple[int, bool]:
        return n + self.before + self.after, True

    def describe(self) -> str:
        return f"pad {self.before}, {self.after}"


SizeOp = Union[Window, Transposed, Scale, Pad]


def apply_ops(ops: tuple[SizeOp, ...], n: int) -> tuple[int, bool]:
    """Apply ``ops`` in order; returns the size and whether every input position was used
    (``False`` when a floor dropped trailing rows, e.g. max-pooling 35 to 17)."""
    exact = True
    for op in ops:
        n, ok = op.apply(n)
        exact = exact and ok
    return n, exact
