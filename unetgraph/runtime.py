"""Modules that lowered GraphModules call at run time: the input guard and ``pad="auto"``.

They hold plain data (channel counts, :class:`~unetgraph.check.SizeRules`), so a lowered
module pickles and exports like any other. Under ``torch.compile``/``torch.export`` the
size checks become ``torch._check`` assertions instead of Python branches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks.base import leaf_module
from .check import AxisRule, SizeRules
from .errors import ShapeError

__all__ = ["InputGuard", "PadToValid", "CropToInput", "check_input_size"]


def _compiling() -> bool:
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def check_input_size(name: str, rules: SizeRules, sizes: tuple[int, ...], hint: str = "") -> None:
    """Raise :class:`ShapeError` with the checker's words when ``sizes`` (spatial) do not fit ``rules``.

    Shared by the input guard and by compiled or exported modules, which check sizes
    before handing them to code that would fail with a guard or assertion message.
    """
    if not rules.contains(sizes):
        raise ShapeError(
            f"input {name} of spatial size {'×'.join(map(str, sizes))} does not fit: "
            f"{rules.explain(sizes)}; {rules}{hint}",
            node=name,
        )


def _padding(rule: AxisRule, n: int) -> tuple[int, int]:
    """``(left, right)`` padding that makes ``n`` valid and keeps the output centred over the input."""
    m = rule.margin or 0
    padded = rule.next(n + 2 * m)
    left = m + (padded - 2 * m - n) // 2
    return left, padded - n - left


@leaf_module
class InputGuard(nn.Module):
    """Refuse a missing input, or one of the wrong rank, channels, dtype or size, with a
    :class:`ShapeError` before any layer runs.

    Args:
        name: the input's name.
        channels: channels (dense) or feature size (sequence) expected.
        dims: spatial axes (dense inputs).
        rules: valid spatial sizes to enforce, if any.
        hint: appended to size errors.
        form: the input's :class:`~unetgraph.types.TensorType` form: ``"dense"``,
            ``"scalar"`` ``(N,)``, ``"index"`` ``(N,)`` integers, ``"sequence"`` ``(N, L, D)``.
        signature: the lowered module's arguments, named when an input is missing.
        match_module: also refuse an input on another device than the module, or a dense or
            sequence input of another dtype: a buffer of the guard (``like``, not in the
            state_dict) follows ``module.to(...)`` and says which. Off for guards that stand
            alone (a loaded artifact's).
    """

    def __init__(
        self,
        name: str,
        channels: int,
        dims: int,
        rules: SizeRules | None,
        hint: str = "",
        form: str = "dense",
        signature: tuple[str, ...] = (),
        match_module: bool = True,
    ) -> None:
        super().__init__()
        self.name, self.channels, self.dims, self.rules, self.hint = name, channels, dims, rules, hint
        self.form, self.signature, self.match_module = form, tuple(signature) or (name,), match_module
        self.register_buffer("like", torch.empty(0), persistent=False)

    def _expect(self) -> str:
        if self.form in ("scalar", "index"):
            return "(N,)" + (" integer class labels" if self.form == "index" else "")
        if self.form == "sequence":
            return f"(N, L, {self.channels})"
        return f"(N, {self.channels}, ...) with {self.dims} spatial axes"

    def forward(self, x: torch.Tensor | None) -> torch.Tensor:
        if x is None:
            raise ShapeError(
                f"input {self.name} is missing: the model is called as forward({', '.join(self.signature)}) "
                f"and {self.name} must be a tensor {self._expect()}",
                node=self.name,
            )
        channel_axis = {"dense": 1, "sequence": 2}.get(self.form)
        rank = {"scalar": 1, "index": 1, "sequence": 3}.get(self.form, self.dims + 2)
        wrong_dtype = self.form == "index" and (x.is_floating_point() or x.is_complex())
        if x.dim() != rank or wrong_dtype or (channel_axis is not None and x.shape[channel_axis] != self.channels):
            raise ShapeError(
                f"input {self.name} expects {self._expect()}, got shape {tuple(x.shape)} of {x.dtype}",
                node=self.name,
            )
        if self.match_module:
            self._match(x)
        if self.rules is not None:
            sizes = x.shape[2:]
            if _compiling():
                for n, r in zip(sizes, self.rules.axes):
                    torch._check(n >= r.minimum)
                    if r.offsets == (0,):
                        torch._check((n - r.minimum) % r.step == 0)
            else:
                check_input_size(self.name, self.rules, tuple(sizes), self.hint)
        return x

    def _match(self, x: torch.Tensor) -> None:
        """The device and dtype torch would otherwise refuse deep inside the first layer."""
        like = self.like
        if x.device != like.device:
            raise ShapeError(
                f"input {self.name} is on {x.device} but the model is on {like.device}: "
                f"move the input ({self.name}.to({str(like.device)!r})) or the model (model.to({str(x.device)!r}))",
                node=self.name,
            )
        if self.form in ("dense", "sequence") and x.dtype != like.dtype:
            raise ShapeError(
                f"input {self.name} is {x.dtype} but the model computes in {like.dtype}: "
                f"pass {self.name}.to({like.dtype})",
                node=self.name,
            )

    def extra_repr(self) -> str:
        return f"{self.name}: {self._expect()}{'; ' + str(self.rules) if self.rules else ''}"


@leaf_module
class PadToValid(nn.Module):
    """Pad each spatial axis up to the next valid size (``pad="auto"``), centred."""

    def __init__(self, rules: SizeRules, mode: str = "constant") -> None:
        super().__init__()
        self.rules, self.mode = rules, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for n, rule in zip(reversed(x.shape[2:]), reversed(self.rules.axes)):  # F.pad wants the last axis first
            pads += _padding(rule, n)
        return F.pad(x, pads, mode=self.mode)

    def extra_repr(self) -> str:
        return f"{self.rules}, mode={self.mode!r}"


@leaf_module
class CropToInput(nn.Module):
    """Crop the output back to the input's spatial size, undoing :class:`PadToValid`."""

    def __init__(self, rules: SizeRules) -> None:
        super().__init__()
        self.rules = rules

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        for axis, (n, rule) in enumerate(zip(x.shape[2:], self.rules.axes), start=2):
            left, _ = _padding(rule, n)
            y = y.narrow(axis, left - (rule.margin or 0), n)
        return y
