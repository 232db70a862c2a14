"""``unet(...)``: the standard U-Net as one call with every part replaceable."""

from __future__ import annotations

from dataclasses import fields
from typing import Callable, Sequence, Union

from .blocks import BlockSpec, ConvBlock, Down, Head, Merge, Up, create_block
from .errors import SpecError
from .graph import GraphBuilder, In, UNetGraph
from .types import EdgeKind, Role

__all__ = ["unet"]

# A part is a spec, a mode name ("maxpool"), one of those per level, or a function of the level.
Part = Union[str, BlockSpec, Sequence[Union[str, BlockSpec]], Callable[[int], Union[str, BlockSpec]]]


def unet(
    in_channels: int,
    out_channels: int,
    widths: Sequence[int] = (64, 128, 256, 512, 1024),
    *,
    dims: int = 2,
    block: Part = ConvBlock(),
    encoder_block: Part | None = None,
    bottleneck_block: Part | None = None,
    decoder_block: Part | None = None,
    down: Part = "maxpool",
    up: Part = "transpose",
    merge: Part = "concat",
    head: BlockSpec | None = None,
    name: str = "UNet",
) -> UNetGraph:
    """Build the standard U-Net graph: ``len(widths)`` levels, one skip per level.

    Nodes are named by level ``i``: ``enc{i}`` and ``down{i+1}`` descend, ``mid`` is the
    bottleneck, ``up{i}``, ``merge{i}`` (fed by the skip ``enc{i}→merge{i}`` then ``up{i}``)
    and ``dec{i}`` ascend, ``head`` projects to ``out_channels``.

    Args:
        in_channels: channels of the input ``x``.
        out_channels: channels of the output (classes, or the predicted noise's channels).
        widths: channels per level, shallow to deep; the last is the bottleneck's.
        dims: spatial dimensions, 1, 2 or 3.
        block: the block of every encoder, bottleneck and decoder node; its ``channels``
            is set per level.
        encoder_block, bottleneck_block, decoder_block: override ``block`` for one role.
        down: ``"maxpool"``, ``"avgpool"``, ``"conv"`` or a :class:`~unetgraph.Down`.
        up: ``"transpose"``, ``"nearest"``, ``"bilinear"`` or an :class:`~unetgraph.Up`;
            mode names take the factor of the matching ``down``.
        merge: ``"concat"``, ``"add"`` or a :class:`~unetgraph.Merge`.
        head: the output block (default: a 1×1 :class:`~unetgraph.Head`).
        name: the model name (the lowered class's name).

    Every part may also be a list with one entry per level (``down``, ``up``: per
    transition, deepest last) or a function of the level returning one, so per-level
    choices (e.g. anisotropic ``Down(factor=(1, 2, 2))``) need no special argument.

    Shape:
        ``x: (N, in_channels, *S) → (N, out_channels, *S)`` for padded blocks; see
        :meth:`UNetGraph.valid_sizes` for which ``S`` fit.

    Example:
        >>> import unetgraph as ug
        >>> g = ug.unet(1, 2, widths=(16, 32, 64), block=ug.ConvBlock(norm="group", groups=8))
        >>> [n.name for n in g.nodes(role="encoder")]
        ['enc0', 'enc1']
        >>> str(g.valid_sizes())
        'H and W must be multiples of 4, at least 4'
    """
    _positive("in_channels", in_channels)
    _positive("out_channels", out_channels)
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or len(widths) == 0:
        raise SpecError(f"widths: expected a non-empty sequence of channel counts, got {widths!r}")
    for i, w in enumerate(widths):
        _positive(f"widths[{i}]", w)
    if dims not in (1, 2, 3):
        raise SpecError(f"dims: expected 1, 2 or 3 spatial dimensions, got {dims!r}")

    depth = len(widths)
    b = GraphBuilder(name)
    x = b.input("x", channels=in_channels, dims=dims)
    h = x
    skips = []
    for i in range(depth - 1):
        h = b.add(f"enc{i}", _block(encoder_block or block, i, widths[i], "encoder_block"), Role.ENCODER, i, [h])
        skips.append(h)
        h = b.add(f"down{i + 1}", _part(down, i, Down, "down"), Role.DOWN, i + 1, [h])
    h = b.add(
        "mid",
        _block(bottleneck_block or block, depth - 1, widths[-1], "bottleneck_block"),
        Role.BOTTLENECK,
        depth - 1,
        [h],
    )
    for i in reversed(range(depth - 1)):
        up_i = _part(up, i, Up, "up")
        if isinstance(up, str) and isinstance(down_i := _part(down, i, Down, "down"), Down):
            up_i = up_i.with_(factor=down_i.factor)
        if _has_field(up_i, "channels") and getattr(up_i, "conv", True):
            up_i = up_i.with_(channels=widths[i])
        h = b.add(f"up{i}", up_i, Role.UP, i, [h])
        h = b.add(f"merge{i}", _part(merge, i, Merge, "merge"), Role.MERGE, i, [In(skips[i], EdgeKind.SKIP), h])
        h = b.add(f"dec{i}", _block(decoder_block or block, i, widths[i], "decoder_block"), Role.DECODER, i, [h])
    head = head if head is not None else Head()
    if not isinstance(head, BlockSpec):
        raise SpecError(f"head: expected a block spec such as ug.Head(), got {head!r}")
    if _has_field(head, "channels"):
        head = head.with_(channels=out_channels)
    b.add("head", head, Role.HEAD, 0, [h])
    return b.build(outputs=["head"])


def _positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SpecError(f"{name}: expected a positive integer, got {value!r}")


def _has_field(spec: BlockSpec, name: str) -> bool:
    return any(f.name == name for f in fields(spec))


def _part(value: Part, level: int, cls: type[BlockSpec], arg: str) -> BlockSpec:
    """Resolve a part for ``level``: a spec, a mode string, a per-level list, or a function."""
    if callable(value) and not isinstance(value, BlockSpec):
        value = value(level)
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if level >= len(value):
            raise SpecError(f"{arg}: {len(value)} entries given, level {level} needs one")
        value = value[level]
    if isinstance(value, str):
        return cls(mode=value)  # type: ignore[call-arg]
    if not isinstance(value, BlockSpec):
        raise SpecError(f"{arg}: expected a block spec or a mode name, got {value!r} for level {level}")
    return value


def _block(value: Part, level: int, width: int, arg: str) -> BlockSpec:
    spec = create_block(value) if isinstance(value, str) else _part(value, level, ConvBlock, arg)
    return spec.with_(channels=width) if _has_field(spec, "channels") else spec
