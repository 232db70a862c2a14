"""Constant folding: compute once what depends only on parameters, buffers and literals."""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from .base import PassResult, copy_meta, free_target, replace_node, target_of

__all__ = ["fold_constants"]

# ops whose result changes from call to call although their inputs do not
_RANDOM = frozenset(
    {
        torch.rand,
        torch.randn,
        torch.randint,
        torch.rand_like,
        torch.randn_like,
        torch.randint_like,
        torch.randperm,
        torch.bernoulli,
        torch.normal,
        torch.multinomial,
        torch.poisson,
        torch.nn.functional.dropout,
        torch.nn.functional.dropout1d,
        torch.nn.functional.dropout2d,
        torch.nn.functional.dropout3d,
        torch.nn.functional.alpha_dropout,
        torch.nn.functional.feature_alpha_dropout,
        torch.dropout,
    }
)
_RANDOM_METHODS = frozenset({"bernoulli", "bernoulli_", "normal_", "uniform_", "random_", "exponential_", "geometric_"})


def fold_constants(gm: fx.GraphModule) -> PassResult:
    """Replace every computation that depends only on parameters, buffers and literals by its value.

    Diffusion U-Nets compute the sinusoidal frequencies of their time embedding on every
    call (``exp(-log(10000) * arange(half, device=t.device) / half)``); weight
    reparametrisations compute a weight from parameters. For inference those values never
    change, so each maximal such subgraph is evaluated once here; where it meets the rest
    of the graph its value becomes a buffer (``<node>_folded``, read by a ``get_attr``) or,
    for plain Python values such as sizes, a literal argument. An input's ``.device`` counts
    as the module's device (inputs must be there anyway, and a folded buffer follows
    ``module.to(...)``); a Python value made from it is kept, so no device is written into
    the graph. Random ops and modules in training mode are never folded. Run it on a model
    in eval mode whose weights are final: the folded values do not follow later changes to
    the parameters they came from.

    Returns:
        A :class:`PassResult` listing each folded node.
    """
    device = _device(gm)
    const: set[fx.Node] = set()
    devices: set[fx.Node] = set()  # `x.device` reads: the module's device (see above)
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            const.add(node)
        elif device is not None and _reads_device(node):
            const.add(node)
            devices.add(node)
        elif node.op in ("call_function", "call_method", "call_module") and _foldable(gm, node):
            if all(i in const for i in node.all_input_nodes):
                const.add(node)
    frontier = [
        n
        for n in gm.graph.nodes
        if n in const and n.op != "get_attr" and n not in devices and any(u not in const for u in n.users)
    ]
    if not frontier:
        return PassResult("fold_constants", (), ("nothing depends only on parameters, buffers and literals",))
    interpreter = fx.Interpreter(gm)
    needed = _ancestors(frontier, devices)
    with torch.no_grad():
        for node in gm.graph.nodes:
            if node in needed:
                interpreter.env[node] = device if node in devices else interpreter.run_node(node)
    changes, notes = [], []
    for node in frontier:
        value = interpreter.env[node]
        if not isinstance(value, torch.Tensor) and _ancestors([node], devices) & devices:
            notes.append(f"{node.name} kept: a {type(value).__name__} from a device would pin the module to {device}")
        elif isinstance(value, torch.Tensor):
            name = free_target(gm, f"{node.name}_folded")
            gm.register_buffer(name, value.detach().clone())
            with gm.graph.inserting_before(node):
                new = copy_meta(node, gm.graph.get_attr(name))
            replace_node(gm, node, new)
            changes.append(f"{node.name} → buffer {name} {tuple(value.shape)}")
        elif _is_literal(value):
            replace_node(gm, node, value)
            changes.append(f"{node.name} → {value!r}")
        else:
            notes.append(f"{node.name} kept: its value, a {type(value).__name__}, cannot be stored in the graph")
    for node in reversed(list(gm.graph.nodes)):  # what only fed the folded values is dead now
        if node in needed and not node.users:
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return PassResult("fold_constants", tuple(changes), tuple(notes))


def _is_literal(value: object) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_is_literal(v) for v in value)
    return isinstance(value, (int, float, bool, str, type(None), torch.dtype, torch.device))


def _foldable(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.is_impure():
        return False
    if node.op == "call_function":
        return node.target not in _RANDOM
    if node.op == "call_method":
        return node.target not in _RANDOM_METHODS
    module = gm.get_submodule(target_of(node))
    return not any(m.training for m in module.modules()) and not isinstance(module, nn.modules.dropout._DropoutNd)


def _ancestors(nodes: list[fx.Node], stops: set[fx.Node]) -> set[fx.Node]:
    """``nodes`` and what they are computed from, not looking past ``stops``."""
    seen: set[fx.Node] = set()
    stack = list(nodes)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            if n not in stops:
                stack.extend(n.all_input_nodes)
    return seen


def _device(gm: fx.GraphModule) -> torch.device | None:
    """The one device of every parameter and buffer (None when there are none or several)."""
    found = {t.device for t in (*gm.parameters(), *gm.buffers())}
    return found.pop() if len(found) == 1 else None


def _reads_device(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is getattr and node.args[1:] == ("device",)
