"""Run convolutions in the channels-last memory layout where that pays off."""

from __future__ import annotations

import torch
import torch.fx as fx
from torch.nn.modules.conv import _ConvNd

from ..record import find_record
from ..runtime import InputGuard
from .base import PassResult, called_module, copy_meta

__all__ = ["channels_last"]

_FORMATS = {2: torch.channels_last, 3: torch.channels_last_3d}


def channels_last(gm: fx.GraphModule, *, force: bool = False) -> PassResult:
    """Convert the inputs and convolution weights of a 2D/3D model to channels-last, in place.

    oneDNN (CPU) and tensor-core (CUDA, half precision) convolutions run faster on NHWC
    data, and every later layer (norms, pooling, concatenation, transposed convolutions)
    keeps the layout, so one conversion after the input guard serves the whole network;
    outputs are made contiguous (NCHW) again so callers see the usual layout. Values are
    unchanged.

    Where it pays off: on CPU always (measured 1.2–2.9× on 2D U-Nets of widths 4 to 1024
    at 128², see ``benchmarks/``); on CUDA for float16/bfloat16 weights. Elsewhere (CUDA
    float32) it is skipped with a note unless ``force=True``. 1D models are left alone
    (there is no channels-last layout for them).

    Needs a module made by :func:`unetgraph.lower` (it reads the inputs' ranks from the graph).
    """
    name = "channels_last"
    info = find_record(gm)
    if info is None:
        return PassResult(name, (), ("not a module made by unetgraph.lower: the inputs' ranks are unknown",))
    g = info.graph
    if any(
        n.op == "call_method" and n.target == "contiguous" and n.kwargs.get("memory_format") for n in gm.graph.nodes
    ):
        return PassResult(name, (), ("already converted",))
    convs = [m for m in gm.modules() if isinstance(m, _ConvNd)]
    dims = {m.weight.dim() - 2 for m in convs}
    if not convs or not dims <= set(_FORMATS) or len(dims) != 1:
        return PassResult(name, (), (f"needs 2D or 3D convolutions; found {sorted(dims) or 'none'}",))
    (d,) = dims
    weight = convs[0].weight
    pays = weight.device.type == "cpu" or weight.dtype in (torch.float16, torch.bfloat16)
    if not pays and not force:
        return PassResult(
            name,
            (),
            (f"skipped: no gain expected on {weight.device.type} with {weight.dtype} (force=True applies it)",),
        )
    fmt = _FORMATS[d]
    changes = []
    for input_name in g.inputs:
        if g[input_name].type.dims != d:
            continue
        node = _after_guard(gm, next(n for n in gm.graph.nodes if n.op == "placeholder" and n.name == input_name))
        with gm.graph.inserting_after(node):
            converted = copy_meta(node, gm.graph.call_method("contiguous", (node,), {"memory_format": fmt}))

        def others(user: fx.Node, new: fx.Node = converted) -> bool:
            return user is not new

        node.replace_all_uses_with(converted, delete_user_cb=others)
        changes.append(f"input {input_name} → {fmt}")
    # one input channel per group: both layouts are the same memory, and the converted strides
    # make inductor (freezing with dynamic sizes) assume the wrong output layout: leave those
    wide = [m for m in convs if m.weight.shape[1] > 1]
    for module in wide:
        module.to(memory_format=fmt)
    changes.append(f"{len(wide)} convolution weights → {fmt}")
    if len(wide) < len(convs):
        changes.append(f"{len(convs) - len(wide)} with one input channel per group left as is (the same memory)")
    output = next(n for n in gm.graph.nodes if n.op == "output")
    done: dict[fx.Node, fx.Node] = {}

    def contiguous(arg: fx.Node) -> fx.Node:
        if arg not in done:
            with gm.graph.inserting_before(output):
                done[arg] = copy_meta(arg, gm.graph.call_method("contiguous", (arg,)))
        return done[arg]

    output.args = fx.node.map_arg(output.args, contiguous)
    changes.append(f"{len(done)} output{'s' if len(done) != 1 else ''} → contiguous")
    gm.graph.lint()
    gm.recompile()
    return PassResult(name, tuple(changes))


def _after_guard(gm: fx.GraphModule, placeholder: fx.Node) -> fx.Node:
    """The input guard's output when the input has one (convert after checking), else the input."""
    for user in placeholder.users:
        if called_module(gm, user, InputGuard) is not None:
            return user
    return placeholder
