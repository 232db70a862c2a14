"""Modules that lowered GraphModules call at run time: the input guard and ``pad="auto"``.

They are :mod:`unetgraph.contract`'s modules (the one implementation of the input contract,
which ejected files copy) raising unetgraph's typed errors, built from the checker's
:class:`~unetgraph.check.SizeRules`. They hold plain data, so a lowered module pickles and
exports like any other. Under ``torch.compile``/``torch.export`` the size checks become
``torch._check`` assertions instead of Python branches; under ``torch.fx`` tracing each stays
one ``call_module`` node (any tracer keeps it whole).
"""

from __future__ import annotations

from typing import Any, NoReturn, Sequence

import torch
from torch import nn

from . import contract
from .blocks.base import leaf_module
from .check import SizeRules
from .errors import LoweringError, ShapeError
from .types import TensorType

__all__ = [
    "InputGuard",
    "PadToValid",
    "CropToInput",
    "axis_tuples",
    "check_input_size",
    "guard_inputs",
    "module_guards",
]


def axis_tuples(rules: SizeRules | None) -> tuple[tuple[Any, ...], ...]:
    """The contract's axis tuples ``(axis, minimum, step, offsets, margin)`` of ``rules`` (none: ``()``)."""
    if rules is None:
        return ()
    return tuple(r.as_tuple() for r in rules.axes)


def check_input_size(name: str, rules: SizeRules, sizes: tuple[int, ...], hint: str = "") -> None:
    """Raise :class:`ShapeError` with the checker's words when ``sizes`` (spatial) do not fit ``rules``.

    The input guard's own check, for compiled or exported modules, which check sizes before
    handing them to code that would fail with a guard or assertion message.
    """
    axes = axis_tuples(rules)
    if contract.size_problem(name, tuple(sizes), axes, "") is not None:  # the rule's words only when needed
        raise ShapeError(str(contract.size_problem(name, tuple(sizes), axes, str(rules), hint)), node=name)


@leaf_module
class InputGuard(contract.InputGuard):
    """Refuse a missing input, or one of the wrong type, rank, channels, dtype, device, batch or
    size, with a :class:`ShapeError` before any layer runs; timesteps and labels given as one
    number (or a 0-dim or ``(1,)`` tensor) are broadcast to the batch. See
    :class:`unetgraph.contract.InputGuard`.

    Args:
        name: the input's name.
        type: the input's :class:`~unetgraph.types.TensorType` (form, channels, axes).
        rules: valid spatial sizes to enforce, if any.
        hint: appended to size errors.
        signature: the lowered module's arguments, named when an input is missing.
        match_module: also refuse an input on another device than the module, or a dense or
            sequence input of another dtype. Off for guards that stand alone (a loaded artifact's).
        classes: class labels: the consuming embedding's number of classes (``0``: unchecked).
    """

    def __init__(
        self,
        name: str,
        type: TensorType,
        rules: SizeRules | None = None,
        *,
        hint: str = "",
        signature: Sequence[str] = (),
        match_module: bool = True,
        classes: int = 0,
    ) -> None:
        super().__init__(
            name,
            form=type.form,
            channels=type.channels,
            axes=type.axes if type.form == "dense" else (),
            sizes=axis_tuples(rules),
            rule="" if rules is None else str(rules),
            hint=hint,
            signature=tuple(signature),
            match=match_module,
            classes=classes,
        )

    def refuse(self, message: str) -> NoReturn:
        raise ShapeError(message, node=self.name)


@leaf_module
class PadToValid(contract.PadToValid):
    """Pad each spatial axis up to the next valid size of ``rules``, centred (``pad="auto"``)."""

    def __init__(self, rules: SizeRules, mode: str = "constant", name: str = "") -> None:
        super().__init__(axis_tuples(rules), mode, name)

    def refuse(self, message: str) -> NoReturn:
        raise LoweringError(message)

    def refuse_input(self, message: str) -> NoReturn:
        raise ShapeError(message, node=self.name or None)


@leaf_module
class CropToInput(contract.CropToInput):
    """Crop the output back to the input's spatial size, undoing :class:`PadToValid`."""

    def __init__(self, rules: SizeRules) -> None:
        super().__init__(axis_tuples(rules))


def guard_inputs(guards: Sequence[InputGuard], inputs: Sequence[Any], model: str) -> tuple[torch.Tensor, ...]:
    """Run ``guards`` (one per model input, in order) on ``inputs`` eagerly, as the lowered module's
    forward does: typed errors in words, numbers and single values broadcast to the first input's batch.

    Used where inputs must be checked before compiled code or an artifact sees them.
    """
    if len(inputs) > len(guards):
        names = ", ".join(g.name for g in guards)
        raise ShapeError(f"{model} takes {len(guards)} inputs ({names}), got {len(inputs)}")
    ready: list[torch.Tensor] = []
    for i, guard in enumerate(guards):
        x: Any = inputs[i] if i < len(inputs) else None  # anything: the guard says what is wrong with it
        # forward, not __call__: torch.export and fx tracers replace nn.Module.__call__ for every
        # thread while they trace, so a module called here meanwhile lands in another thread's trace
        ready.append(guard.forward(x) if i == 0 else guard.forward(x, ready[0]))
    return tuple(ready)


def module_guards(module: nn.Module, names: Sequence[str]) -> list[InputGuard] | None:
    """The input guards of a lowered module, in input order, or ``None`` (lowered with ``guard=False``)."""
    guards = [getattr(module, f"{n}_guard", None) for n in names]
    return None if not all(isinstance(g, InputGuard) for g in guards) else guards  # type: ignore[return-value]
