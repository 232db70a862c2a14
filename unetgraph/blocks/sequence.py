"""``Sequence``: several blocks run one after the other as one node."""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from typing import Iterable, Literal

import torch
from torch import nn

from ..errors import ShapeError, SpecError, UNetGraphError
from ..sizes import SizeFailure, SizeOp, apply_ops
from ..types import TensorType
from .base import BlockSpec, register_block

__all__ = ["Sequence"]

Shape = tuple[int, ...]


class _Chain(nn.Module):
    """Run the parts in order: the first takes the node's data inputs, each part its
    conditioning inputs (as many as it takes), the others the previous part's output.
    The parts are children named after them, so lowering emits their layers as fx nodes."""

    def __init__(self, parts: list[tuple[str, nn.Module, int]], data_inputs: int | None) -> None:
        super().__init__()
        self.steps = [(name, cond) for name, _, cond in parts]
        self.data_inputs = data_inputs
        for name, module, _ in parts:
            self.add_module(name, module)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        n = len(xs) if self.data_inputs is None else self.data_inputs
        h, cond = xs[:n], xs[n:]
        for name, takes in self.steps:
            h = (getattr(self, name)(*h, *cond[:takes]),)
        return h[0]


@register_block
@dataclass(frozen=True, init=False)
class Sequence(BlockSpec):
    """Blocks applied one after the other inside one node: ``ug.Sequence(ug.ConvBlock(), ug.Head())``.

    Types flow through the parts (each part's ``infer`` sees the previous part's output),
    sizes change by every part's size ops in turn, parameters and FLOPs add up. The
    first part takes the node's inputs (it may be a merge), the others one input each;
    parts that take conditioning (``max_cond``) all receive the node's ``cond`` inputs.
    Lowering emits each part's layers as their own fx nodes, under
    ``<node>.<part><i>`` (``mid.convblock0.conv0``). An empty ``Sequence()`` is the identity.

    Args:
        *parts: the blocks, in order (or ``blocks=[...]``, the stored form).

    Shape:
        ``(N, C_in, *S) → `` the last part's output.

    Example:
        >>> import unetgraph as ug
        >>> seq = ug.Sequence(ug.ConvBlock(channels=8), ug.ConvBlock(convs=1, stride=2))
        >>> str(seq.infer([ug.TensorType.spatial(3, 2)]))
        '8ch@1/2 (2D)'
        >>> seq.label()
        '2×conv3 batch relu → 1×conv3 stride 2 batch relu'
    """

    blocks: tuple[BlockSpec, ...] = ()

    def __init__(self, *parts: BlockSpec, blocks: Iterable[BlockSpec] | None = None) -> None:
        if parts and blocks is not None:
            raise SpecError("Sequence: give the blocks as arguments or as blocks=[...], not both")
        object.__setattr__(self, "blocks", parts if blocks is None else blocks)
        self.__post_init__()

    def validate(self) -> None:
        blocks = self.blocks
        self._require(isinstance(blocks, (list, tuple)), "blocks", "a list of block specs")
        self._set("blocks", tuple(blocks))
        for i, part in enumerate(self.blocks):
            if not isinstance(part, BlockSpec):
                raise SpecError(f"Sequence.blocks[{i}]: expected a block spec (e.g. ug.ConvBlock()), got {part!r}")
            if part.max_inputs == 0:
                raise SpecError(
                    f"Sequence.blocks[{i}]: {part.type_name} takes no input and cannot be part of a Sequence"
                )
            if i and part.min_inputs > 1:
                raise SpecError(
                    f"Sequence.blocks[{i}]: {part.type_name} takes {part.min_inputs}+ inputs; "
                    "only the first block of a Sequence may take several"
                )
        first = self.blocks[0] if self.blocks else None
        cond = max((p.max_cond for p in self.blocks), default=0)
        if cond and first is not None and first.min_inputs != first.max_inputs:
            raise SpecError(
                f"Sequence.blocks[0]: {first.type_name} takes a varying number of inputs, so the "
                "conditioning inputs of later blocks could not be told apart; put it in its own node"
            )
        # derived from the parts (never set from outside): the node's arity is the first part's
        self._set("min_inputs", first.min_inputs if first else 1)
        self._set("max_inputs", first.max_inputs if first else 1)
        self._set("max_cond", cond)

    # -- how types and shapes flow through the parts ----------------------------------
    def _flow(
        self, inputs: typing.Sequence[TensorType], sources: typing.Sequence[str] = ()
    ) -> list[tuple[tuple[TensorType, ...], TensorType]]:
        """``(inputs, output)`` types of each part."""
        n = self.data_inputs(len(inputs))
        h, cond = tuple(inputs[:n]), tuple(inputs[n:])
        names = tuple(sources[:n]) if sources else ()
        steps = []
        for i, part in enumerate(self.blocks):
            ins = h + cond[: part.max_cond]
            srcs = (names + tuple(sources[n:][: part.max_cond])) if names else ()
            try:
                out = part.infer(ins, srcs)
            except UNetGraphError as e:
                raise type(e)(f"{self._part(i)}: {e.message}", node=e.node, edge=e.edge) from e
            steps.append((ins, out))
            h, names = (out,), (self._part(i),)
        return steps

    def _shape_flow(self, inputs: typing.Sequence[Shape]) -> list[tuple[tuple[Shape, ...], Shape]]:
        """``(input shapes, output shape)`` of each part at concrete shapes."""
        types = self.shape_types(inputs)
        n = self.data_inputs(len(inputs))
        h, cond = tuple(inputs[:n]), tuple(inputs[n:])
        spatial = [s[2:] for s in h if len(s) > 2]
        size: tuple[int, ...] = spatial[-1] if spatial else ()
        steps = []
        for i, (part, (_, out)) in enumerate(zip(self.blocks, self._flow(types))):
            ins = h + cond[: part.max_cond]
            if out.dims:
                try:
                    size = tuple(apply_ops(part.size_ops(out.dims, a), n)[0] for a, n in enumerate(size))
                except SizeFailure as e:
                    raise ShapeError(f"{self._part(i)}: {e}") from None
            shape = (inputs[0][0], out.channels, *(size if out.dims else ()))
            steps.append((ins, shape))
            h = (shape,)
        return steps

    def _part(self, i: int) -> str:
        return f"part {i} ({self.blocks[i].label()})"

    @staticmethod
    def _child(i: int, part: BlockSpec) -> str:
        return re.sub(r"\W", "_", part.type_name or type(part).__name__).lower() + str(i)

    # -- the block contract ------------------------------------------------------------
    def infer(self, inputs: typing.Sequence[TensorType], sources: typing.Sequence[str] = ()) -> TensorType:
        steps = self._flow(inputs, sources)
        return steps[-1][1] if steps else inputs[0]

    def size_ops(self, dims: int, axis: int) -> tuple[SizeOp, ...]:
        return tuple(op for part in self.blocks for op in part.size_ops(dims, axis))

    @property
    def size_policy(self) -> Literal["equal", "crop"]:
        return self.blocks[0].size_policy if self.blocks else "equal"

    def shape_notes(self, inputs: typing.Sequence[Shape], output: Shape) -> list[str]:
        notes = []
        for i, (part, (ins, out)) in enumerate(zip(self.blocks, self._shape_flow(inputs))):
            try:
                notes += [f"{self._part(i)}: {note}" for note in part.shape_notes(ins, out)]
            except ShapeError as e:
                raise ShapeError(f"{self._part(i)}: {e.message}") from None
        return notes

    def build(self, inputs: typing.Sequence[TensorType], output: TensorType) -> nn.Module:
        parts = [
            (self._child(i, part), part.build(ins, out), part.max_cond)
            for i, (part, (ins, out)) in enumerate(zip(self.blocks, self._flow(inputs)))
        ]
        return _Chain(parts, None if self.max_cond == 0 else self.data_inputs(len(inputs)))

    def params(self, inputs: typing.Sequence[TensorType], output: TensorType) -> int:
        return sum(part.params(ins, out) for part, (ins, out) in zip(self.blocks, self._flow(inputs)))

    def flops(self, inputs: typing.Sequence[Shape], output: Shape) -> int:
        return sum(part.flops(ins, out) for part, (ins, out) in zip(self.blocks, self._shape_flow(inputs)))

    def label(self) -> str:
        return " → ".join(part.label() for part in self.blocks) if self.blocks else "identity"

    def __repr__(self) -> str:
        return f"Sequence({', '.join(map(repr, self.blocks))})"
