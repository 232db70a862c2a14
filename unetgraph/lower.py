"""Lowering: a :class:`~unetgraph.graph.UNetGraph` becomes a ``torch.fx.GraphModule``.

The fx graph is built directly from the DAG, node by node in topological order. Each
block's layers become their own fx nodes (``enc1_conv0``, ``enc1_norm0``, …, the last one
named after the block, ``enc1``) so that passes see convolutions and norms; submodules sit
under the node's name (``enc1.conv0``), so ``state_dict`` keys follow the graph. Every fx
node carries ``meta["custom"] = {"unet_node", "role", "level", "block"}``, which survives
``torch.export``.

How a block's module becomes fx nodes:

* a leaf module (a ``torch.nn`` layer, or a class marked with
  :func:`~unetgraph.blocks.leaf_module`) is one ``call_module``;
* an ``nn.Sequential`` is flattened into a chain of its children;
* anything else is traced with ``torch.fx`` and its graph inlined.
"""

from __future__ import annotations

import contextlib
import operator
from typing import Any, Iterable, Literal, Mapping, Sequence

import torch
import torch.fx as fx
from torch import nn

from .blocks.backbone_sources import keep_unused_state
from .blocks.base import is_leaf_module
from .blocks.tracing import ModuleTracer
from .check import SizeRules, check, pad_rules, valid_sizes
from .errors import LoweringError, ShapeError, UNetGraphError
from .graph import Node, UNetGraph
from .inputs import input_shapes, label_classes
from .record import LoweredRecord, attach_record, lowered_record
from .runtime import CropToInput, InputGuard, PadToValid
from .transfer import transfer_weights
from .types import Role

__all__ = ["lower", "fx_node_names", "output_fx_names"]


def lower(
    g: UNetGraph,
    *,
    pad: str | None = None,
    pad_mode: str = "constant",
    guard: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    weights_from: nn.Module | Mapping[str, torch.Tensor] | None = None,
    match: Literal["spec", "shape"] = "spec",
    checkpoint: str | int | Iterable[str | int] | None = None,
) -> fx.GraphModule:
    """Lower ``g`` to a ``torch.fx.GraphModule`` with freshly initialised weights.

    Args:
        g: the graph.
        pad: ``"auto"`` pads every input up to the next valid size and crops the output
            back, so any size works (a 255×255 image gives a 255×255 output); for valid
            convolutions the margin the network consumes is padded too (overlap-tile).
            ``None`` refuses sizes that do not fit.
        pad_mode: ``F.pad`` mode for ``pad="auto"``: ``"constant"`` (zeros), ``"reflect"``,
            ``"replicate"`` or ``"circular"``; an input too small for the mode (reflect needs more
            rows than it pads) is refused in words.
        guard: check each input before any layer runs (its type, rank, channels, dtype,
            device, batch and size), raising :class:`~unetgraph.errors.ShapeError` with the
            checker's message; timesteps and labels given as one number or one value are
            broadcast to the batch (:class:`unetgraph.contract.InputGuard`). ``False`` drops
            the guards: inputs then go to the layers as given.
        device: where parameters are created; ``"meta"`` builds the structure without
            allocating or initialising any weight (fast; load weights later with
            ``gm.to_empty(device=...)`` and ``load_state_dict``).
        dtype: parameter dtype (default: torch's default dtype).
        weights_from: an earlier lowered GraphModule (or a ``state_dict``): every node that
            kept its block and input types gets its tensors, the rest stay freshly
            initialised; see :func:`unetgraph.transfer.transfer_weights`.
        match: how ``weights_from`` matches tensors: ``"spec"`` (a node's tensors when it kept
            its block and input types) or ``"shape"`` (every tensor whose key and shape agree,
            even in changed nodes).
        checkpoint: nodes to run under activation checkpointing (their activations are
            recomputed in the backward pass): ``"all"`` (every block), node names, roles
            (``"decoder"``) or levels (ints), or a list of these; see
            :func:`unetgraph.grouping.group_nodes`, which this calls (each graph node then runs as
            one submodule; ``state_dict`` keys do not change).

    Returns:
        A GraphModule whose ``forward`` takes the graph's inputs in order and returns the
        output tensor (a dict of tensors by node name when there are several outputs).
        ``ug.lowered_record(gm)`` holds the graph, the fx name of each graph node, the options and,
        with ``weights_from``, the transfer report (``ug.transfer_report(gm)``).

    Raises:
        LoweringError: a block cannot be lowered, ``pad="auto"`` cannot align the output (or
            the graph has no spatial input to pad), or ``match`` is unknown.
    """
    if pad not in (None, "auto"):
        raise LoweringError(f"pad: expected None or 'auto', got {pad!r}")
    if match not in ("spec", "shape"):
        raise LoweringError(f"match: expected 'spec' or 'shape', got {match!r}")
    if pad_mode not in ("constant", "reflect", "replicate", "circular"):
        raise LoweringError(f"pad_mode: expected 'constant', 'reflect', 'replicate' or 'circular', got {pad_mode!r}")
    # pad="auto" pads to the exact sizes; otherwise the guard refuses what check() refuses
    rules = _rules(g, pad)
    root = nn.Module()
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    spatial_inputs = [n for n in g.inputs if g[n].type.dims > 0]
    for i, name in enumerate(g.inputs):
        # with a guard, a missing conditioning argument (t, y, context) reaches it as None
        # and gets a ShapeError naming it; the first input stays required
        default = {"default_value": None} if guard and i > 0 else {}
        env[name] = graph.placeholder(name, **default)
        env[name].meta["custom"] = _custom(g[name])
    placeholders = dict(env)
    main = spatial_inputs[0] if spatial_inputs else None
    for i, name in enumerate(g.inputs):
        node = g[name]
        if guard:
            hint = " (lower with pad='auto' to accept any size)" if pad is None else ""
            size_rules = rules if pad is None and name == main else None
            with torch.device(device) if device is not None else contextlib.nullcontext():
                classes = label_classes(g, name) if node.type.form == "index" else 0  # labels: their range
                check = InputGuard(name, node.type, size_rules, hint=hint, signature=g.inputs, classes=classes)
            # every other input is checked against the first (its batch, device): numbers and
            # single timesteps or labels are broadcast to that batch
            guarded = (env[name],) if i == 0 else (env[name], env[g.inputs[0]])
            env[name] = _call(graph, root, f"{name}_guard", check if dtype is None else check.to(dtype), guarded, node)
    if pad == "auto" and main is not None and rules is not None:  # _rules refused pad="auto" without them
        env[main] = _call(graph, root, f"{main}_pad", PadToValid(rules, pad_mode, main), (env[main],), g[main])
    ports: dict[tuple[str, int], fx.Node] = {}  # the outputs of nodes with several
    for name in g:
        node = g[name]
        if node.role is Role.INPUT:
            continue
        args = tuple(ports.get((e.src, e.out), env[e.src]) for e in g.in_edges(name))
        try:
            with torch.device(device) if device is not None else contextlib.nullcontext():
                module = node.block.build(node.inputs, node.type)
            if dtype is not None:
                module = module.to(dtype)
        except UNetGraphError as e:
            raise e.at(name, node.block.label()) from e
        except Exception as e:
            raise LoweringError(
                f"{node.describe()}: building the module failed: {type(e).__name__}: {e}", node=name
            ) from e
        if len(node.outputs) > 1:
            outs = _emit_outputs(graph, root, node, module, args)
            ports.update(((name, k), o) for k, o in enumerate(outs))
            env[name] = outs[-1]
        else:
            env[name] = _emit(graph, root, node, module, args)
    outputs = {o: env[o] for o in g.outputs}
    if pad == "auto" and main is not None and rules is not None:
        outputs = {
            o: _call(graph, root, f"{o}_crop", CropToInput(rules), (v, placeholders[main]), g[o])
            for o, v in outputs.items()
        }
    graph.output(next(iter(outputs.values())) if len(outputs) == 1 else outputs)
    graph.lint()
    gm = fx.GraphModule(root, graph, class_name=g.name)
    for name in dict.fromkeys(n for n, _ in ports):  # an inlined backbone keeps its unused weights
        keep_unused_state(gm, root.get_submodule(name), name)
    attach_record(gm, LoweredRecord(g, {n: env[n].name for n in g}, pad, pad_mode=pad_mode, guard=guard))
    if weights_from is not None:
        transfer_weights(gm, weights_from, match=match)
    if checkpoint is not None:
        from .grouping import group_nodes

        gm = group_nodes(gm, checkpoint=checkpoint)
    return gm


def fx_node_names(gm: fx.GraphModule) -> dict[str, str]:
    """Graph node name → name of the fx node holding its output, for a lowered module."""
    return dict(lowered_record(gm, "this GraphModule").nodes)


def _rules(g: UNetGraph, pad: str | None) -> SizeRules | None:
    if pad == "auto":
        try:
            rules = pad_rules(g)
        except ShapeError as e:
            raise LoweringError(f"{e}: lower it with pad=None") from None
        _check_taps(g, rules)
        return rules
    if not any(g[n].type.dims > 0 for n in g.inputs):
        return None
    try:
        return valid_sizes(g, exact=False)
    except ShapeError:
        return None


def _check_taps(g: UNetGraph, rules: SizeRules) -> None:
    """pad='auto' crops every output like the first: refuse extra outputs (taps) it would crop wrongly."""
    for o in g.outputs[1:]:
        for k in range(2):
            sizes = tuple(r.sizes(2)[k] for r in rules.axes)
            got = check(g, input_shapes(g, size=sizes))[o].output[2:]
            margin = rules.margin or ()
            if len(got) != len(sizes) or any(n - m != 2 * mg for n, m, mg in zip(sizes, got, margin)):
                raise LoweringError(
                    f"pad='auto' crops every output back to the input's size; output {o} is "
                    f"{'×'.join(map(str, got))} for a {'×'.join(map(str, sizes))} input, not aligned with "
                    f"{g.outputs[0]}: lower without pad='auto' to return it",
                    node=o,
                )


def _custom(node: Node) -> dict[str, Any]:
    return {"unet_node": node.name, "role": node.role.value, "level": node.level, "block": node.block.type_name}


def _call(graph: fx.Graph, root: nn.Module, name: str, module: nn.Module, args: tuple, node: Node) -> fx.Node:
    root.add_module(name, module)
    out = graph.create_node("call_module", name, args, {}, name=name)
    out.meta["custom"] = _custom(node)
    return out


def _emit(graph: fx.Graph, root: nn.Module, node: Node, module: nn.Module, args: tuple[fx.Node, ...]) -> fx.Node:
    """Add ``module`` under ``node.name`` and emit its layers; returns the output fx node."""
    name = node.name
    meta = _custom(node)
    if is_leaf_module(module):
        root.add_module(name, module)
        out = graph.create_node("call_module", name, args, {}, name=name)
        out.meta["custom"] = meta
        return out
    if isinstance(module, nn.Sequential):
        layers = _flatten(module)
        if all(is_leaf_module(m) for _, m in layers) and len(args) == 1 and layers:
            container = nn.Module()
            root.add_module(name, container)
            h = args[0]
            for i, (sub, layer) in enumerate(layers):
                container.add_module(sub, layer)
                last = i == len(layers) - 1
                h = graph.create_node("call_module", f"{name}.{sub}", (h,), {}, name=name if last else f"{name}_{sub}")
                h.meta["custom"] = meta
            return h
    root.add_module(name, module)
    return _inline(graph, name, module, args, meta)


def _emit_outputs(
    graph: fx.Graph, root: nn.Module, node: Node, module: nn.Module, args: tuple[fx.Node, ...]
) -> tuple[fx.Node, ...]:
    """Add a block with several outputs (a backbone) under ``node.name``; returns one fx node per output.

    A ``GraphModule`` returning a tuple with one tensor per output has its graph copied in (no
    tracing: its layers become fx nodes under the node's name, ``encoder.layer1.0.conv1``); any
    other module is one ``call_module`` whose outputs are picked by ``block.output_keys``. Each
    output's fx node is named after the node and the output (``encoder_layer2``)."""
    name, meta, count = node.name, _custom(node), len(node.outputs)
    names = output_fx_names(node)
    root.add_module(name, module)
    if isinstance(module, fx.GraphModule):
        result = next(n for n in module.graph.nodes if n.op == "output").args[0]
        if isinstance(result, tuple) and len(result) == count and all(isinstance(r, fx.Node) for r in result):
            return _copy_graph(graph, name, module.graph, args, result, names, meta)
    call = graph.create_node("call_module", name, args, {}, name=f"{name}_features")
    call.meta["custom"] = meta
    outs = []
    for key, out_name in zip(node.block.output_keys(node.inputs), names):
        out = graph.create_node("call_function", operator.getitem, (call, key), {}, name=out_name)
        out.meta["custom"] = meta
        outs.append(out)
    return tuple(outs)


def _copy_graph(
    graph: fx.Graph,
    name: str,
    source: fx.Graph,
    args: Sequence[fx.Node],
    result: tuple[fx.Node, ...],
    names: Sequence[str],
    meta: dict,
) -> tuple[fx.Node, ...]:
    """Copy ``source``'s nodes into ``graph`` with targets under ``name.``; returns the nodes of ``result``."""
    placeholders = [n for n in source.nodes if n.op == "placeholder"]
    env: dict[fx.Node, Any] = dict(zip(placeholders, args))
    own = {r: out_name for r, out_name in zip(result, names)}
    for n in source.nodes:
        if n.op in ("placeholder", "output"):
            continue
        target = f"{name}.{n.target}" if n.op in ("call_module", "get_attr") else n.target
        new = graph.create_node(
            n.op,
            target,
            fx.map_arg(n.args, env.__getitem__),
            fx.map_arg(n.kwargs, env.__getitem__),
            name=own.get(n, f"{name}_{n.name}"),
        )
        new.meta["custom"] = meta
        env[n] = new
    return tuple(env[r] for r in result)


def output_fx_names(node: Node) -> tuple[str, ...]:
    """The fx node names lowering gives the outputs of a node with several: ``encoder_layer2``."""
    return tuple(f"{node.name}_{_name_part(n)}" for n in node.block.output_names(node.inputs))


def _name_part(text: str) -> str:
    """``"stages.0"`` → ``"stages_0"``: what follows ``<node>_`` in an fx node name."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in str(text))


def _flatten(seq: nn.Sequential, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """Children of (nested) Sequentials with identifier names (``conv0``, not ``0``)."""
    out = []
    for key, child in seq.named_children():
        sub = key if key.isidentifier() else f"{type(child).__name__.lower()}{key}"
        sub = f"{prefix}_{sub}" if prefix else sub
        if isinstance(child, nn.Sequential):
            out += _flatten(child, sub)
        else:
            out.append((sub, child))
    return out


def _inline(graph: fx.Graph, name: str, module: nn.Module, args: Sequence[fx.Node], meta: dict) -> fx.Node:
    try:
        traced, _ = ModuleTracer().trace_module(module, len(args))
    except Exception as e:
        raise LoweringError(
            f"{name}: torch.fx cannot trace {type(module).__name__}.forward ({type(e).__name__}: {e}); "
            "mark the module with @ug.leaf_module to keep it whole",
            node=name,
        ) from e
    placeholders = [n for n in traced.nodes if n.op == "placeholder"]
    env: dict[fx.Node, Any] = dict(zip(placeholders, args))
    result = next(n for n in traced.nodes if n.op == "output").args[0]
    if not isinstance(result, fx.Node):
        raise LoweringError(f"{name}: {type(module).__name__}.forward must return one tensor", node=name)
    if result.op == "placeholder":  # an identity block: no node of its own
        return env[result]
    for n in traced.nodes:
        if n.op in ("placeholder", "output"):
            continue
        target = n.target
        if n.op in ("call_module", "get_attr"):
            target = f"{name}.{target}" if target else name
        new = graph.create_node(
            n.op,
            target,
            fx.map_arg(n.args, env.__getitem__),
            fx.map_arg(n.kwargs, env.__getitem__),
            name=name if n is result else f"{name}_{n.name}",
        )
        new.meta["custom"] = meta
        env[n] = new
    return env[result]
