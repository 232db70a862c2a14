"""Example inputs for a graph: the shapes and random tensors every input of it expects.

Useful to try a model, to trace or export it, and in tests: images come at the smallest
valid size (or the size asked, checked), timesteps as floats in ``[0, 1000)``, labels as
integers below the consuming embedding's ``num_classes``, contexts as ``(N, L, D)``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .check import input_shapes_at, valid_sizes
from .errors import ShapeError
from .graph import UNetGraph

__all__ = ["input_shapes", "example_inputs", "label_classes"]


def input_shapes(
    g: UNetGraph, *, batch: int = 1, size: int | Sequence[int] | None = None, context_length: int = 8
) -> dict[str, tuple[int, ...]]:
    """The shape of every input of ``g``, by name.

    Args:
        batch: the batch size ``N``.
        size: spatial size of the image inputs (an int for every axis, or one per axis);
            ``None`` takes the smallest valid size.
        context_length: ``L`` of context sequences.

    Raises:
        ShapeError: ``size`` does not fit the graph (the message says which sizes do).
    """
    spatial: tuple[int, ...] = ()
    if any(g[name].type.dims for name in g.inputs):
        rules = valid_sizes(g, exact=False)
        if size is None:
            spatial = tuple(r.minimum for r in rules.axes)
        else:
            spatial = (size,) * len(rules.axes) if isinstance(size, int) else tuple(size)
            if not rules.contains(spatial):
                raise ShapeError(f"size {spatial} does not fit {g.name}: {rules.explain(spatial)}; {rules}")
    return input_shapes_at(g, spatial, batch=batch, context_length=context_length)


def example_inputs(
    g: UNetGraph,
    *,
    batch: int = 1,
    size: int | Sequence[int] | None = None,
    context_length: int = 8,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Random tensors for every input of ``g``, by name, in the order ``forward`` takes them.

    >>> import unetgraph as ug
    >>> g = ug.unet(3, 2, widths=(8, 16))
    >>> {k: tuple(v.shape) for k, v in ug.example_inputs(g, batch=2).items()}
    {'x': (2, 3, 2, 2)}
    """
    out = {}
    for name, shape in input_shapes(g, batch=batch, size=size, context_length=context_length).items():
        form = g[name].type.form
        if form == "scalar":
            out[name] = torch.rand(shape, generator=generator) * 1000
        elif form == "index":
            out[name] = torch.randint(0, label_classes(g, name) or 1, shape, generator=generator)
        else:
            out[name] = torch.randn(shape, generator=generator)
    return out


def label_classes(g: UNetGraph, name: str) -> int:
    """How many classes the labels of input ``name`` may name: the smallest ``num_classes`` of the
    blocks that consume it (0 when none says)."""
    classes = [getattr(g[e.dst].block, "num_classes", None) for e in g.out_edges(name)]
    return min((c for c in classes if isinstance(c, int) and not isinstance(c, bool)), default=0)
