"""Run a model in bfloat16 or float16: speed the caller trades for accuracy, with explicit casts."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.fx as fx
from torch import nn

from ..blocks.layers import NORM_TYPES
from ..errors import LoweringError
from .base import PassResult, copy_meta, target_of

__all__ = ["reduced_precision", "DTYPES"]

DTYPES = (torch.bfloat16, torch.float16)


def reduced_precision(
    gm: fx.GraphModule, example_inputs: Sequence[Any], dtype: torch.dtype = torch.bfloat16
) -> PassResult:
    """Store ``gm``'s weights in ``dtype`` and compute in it, in place.

    Unlike the other passes this one changes values (bfloat16 keeps about 3 significant
    digits), so it runs only when asked for. A cast is placed wherever a tensor of another
    floating dtype reaches a layer's weights (a submodule's, or those a functional
    convolution or linear layer is given), found by running ``gm`` once on
    ``example_inputs``: the image input before the first layer, the float32 sinusoidal
    timestep encoding before its MLP, a float32 context before cross-attention. Floating
    outputs are cast back to the original dtype, so callers see the usual dtype. The casts
    are plain ``Tensor.to`` nodes, so the module still exports, compiles and ejects.
    Normalization layers keep float32 weights and statistics (torch's norms take
    low-precision inputs with float32 parameters and compute their statistics in float32),
    and buffers keep their dtype: folded constants such as the timestep frequencies would
    lose the angle's precision in bfloat16 (``t * f`` for ``t`` near 1000).

    Raises:
        LoweringError: a layer does not run in ``dtype`` (named, with torch's reason); ``gm`` is
            then half converted, so run the pass on a copy (:func:`optimize` does).

    Where it pays off: CPUs with AVX512-BF16 or AMX (oneDNN runs bfloat16 convolutions at
    about twice the float32 rate; measured about 2.4× on the 4-level U-Net, see
    ``benchmarks/``) and CUDA tensor cores (float16 or bfloat16). Elsewhere it can be slower.
    """
    name = "reduced_precision"
    if dtype not in DTYPES:
        raise LoweringError(f"reduced_precision: dtype must be torch.bfloat16 or torch.float16, got {dtype}")
    floats = [p for p in gm.parameters() if p.is_floating_point()]
    if not floats:
        return PassResult(name, (), ("no floating-point parameters",))
    original = floats[0].dtype
    if original == dtype:
        return PassResult(name, (), (f"already in {dtype}",))
    low = [
        p
        for m in gm.modules()
        if not isinstance(m, NORM_TYPES)
        for p in m.parameters(recurse=False)
        if p.is_floating_point()
    ]
    for p in low:  # in place: each keeps its memory format
        p.data = p.data.to(dtype)
    casts = _Casts(gm)
    with torch.no_grad():
        casts.run(*example_inputs)
    graph = gm.graph
    output = next(n for n in graph.nodes if n.op == "output")
    back: dict[fx.Node, fx.Node] = {}

    def restore(arg: fx.Node) -> fx.Node:
        if arg.meta.get("_ug_dtype") not in DTYPES:
            return arg
        if arg not in back:
            with graph.inserting_before(output):
                back[arg] = copy_meta(arg, graph.call_method("to", (arg, original)))
        return back[arg]

    output.args = fx.node.map_arg(output.args, restore)
    for node in graph.nodes:
        node.meta.pop("_ug_dtype", None)
    graph.lint()
    gm.recompile()
    changes = (
        f"{len(low)} weights → {dtype}"
        + (f" ({len(floats) - len(low)} of normalization layers keep {original})" if len(low) < len(floats) else ""),
        *(
            f"{value.name} → {to} before {', '.join(u.name for u in cast.users)}"
            for (value, to), cast in casts.casts.items()
        ),
        f"{len(back)} output{'s' if len(back) != 1 else ''} → {original}",
    )
    return PassResult(name, changes)


# functional layers: a floating input meeting weights (args[1]) of another dtype is cast to theirs
_WEIGHTED = frozenset(
    {
        torch.nn.functional.linear,
        torch.nn.functional.conv1d,
        torch.nn.functional.conv2d,
        torch.nn.functional.conv3d,
        torch.nn.functional.conv_transpose1d,
        torch.nn.functional.conv_transpose2d,
        torch.nn.functional.conv_transpose3d,
    }
)


def _weights_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of a module's first floating weight outside its normalization layers."""
    for m in module.modules():
        if not isinstance(m, NORM_TYPES):
            for p in m.parameters(recurse=False):
                if p.is_floating_point():
                    return p.dtype
    return None


class _Casts(fx.Interpreter):
    """Runs the module once and inserts a cast wherever a floating tensor of another dtype
    reaches weights (a submodule's, or a functional layer's ``args[1]``), recording each
    value's dtype in node.meta."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.gm = gm
        self.casts: dict[tuple[fx.Node, torch.dtype], fx.Node] = {}  # (value, dtype) → its cast

    def run_node(self, n: fx.Node) -> Any:
        want: torch.dtype | None = None
        inputs: list[fx.Node] = []
        if n.op == "call_module":
            want, inputs = _weights_dtype(self.module.get_submodule(target_of(n))), list(n.all_input_nodes)
        elif n.op == "call_function" and n.target in _WEIGHTED and len(n.args) > 1:
            weight = self.env.get(n.args[1]) if isinstance(n.args[1], fx.Node) else None
            if isinstance(weight, torch.Tensor) and isinstance(n.args[0], fx.Node):
                want, inputs = weight.dtype, [n.args[0]]
        for arg in inputs:
            value = self.env[arg]
            floating = isinstance(value, torch.Tensor) and value.is_floating_point()
            if want is not None and floating and value.dtype != want:
                n.replace_input_with(arg, self._cast(arg, want))
        try:
            result = super().run_node(n)
        except Exception as e:  # a layer that does not run in the reduced dtype
            where = n.meta.get("custom", {}).get("unet_node")
            raise LoweringError(
                f"reduced_precision: {n.name} failed with reduced-precision weights "
                f"({type(e).__name__}: {e}); keep this model in float32 or replace the layer",
                node=where,
            ) from e
        if isinstance(result, torch.Tensor):
            n.meta["_ug_dtype"] = result.dtype
        return result

    def _cast(self, arg: fx.Node, dtype: torch.dtype) -> fx.Node:
        key = (arg, dtype)
        if key not in self.casts:
            with self.gm.graph.inserting_after(arg):
                cast = copy_meta(arg, self.gm.graph.call_method("to", (arg, dtype)))
            self.env[cast] = self.env[arg].to(dtype)
            self.casts[key] = cast
        return self.casts[key]
