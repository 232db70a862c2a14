"""Node modules: each graph node's layers run as one submodule, for activation checkpointing and
per-node sharding.

A module from :func:`unetgraph.lower` is flat: its code calls ``self.enc1.conv0``,
``self.enc1.norm0``, … one by one, so ``enc1`` is only a container whose own hooks never run
(FSDP2's ``fully_shard(gm.enc1)`` would never gather its weights) and that cannot be handed to
``torch.utils.checkpoint``. :func:`group_nodes` regroups the same fx nodes, by the graph node
they carry in ``meta["custom"]["unet_node"]``, into one small GraphModule per graph node, so the
code reads ``enc1 = self.enc1(down1)``. Parameters stay where they were (``enc1.conv0.weight``),
so ``state_dict`` keys do not change, and the regrouped module shares its tensors with the flat
one. Chosen nodes run under ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``
instead (``lower(checkpoint=...)``): their activations are recomputed in the backward pass.

Inference tools see the flat graph: :func:`ungroup` gives it back (sharing tensors), and
``ug.optimize``, ``ug.export`` and ``ug.eject`` call it first. Without gradients (``torch.no_grad``,
inference) a checkpointed node runs as a plain call.

>>> import torch, unetgraph as ug
>>> gm = ug.unet(1, 2, widths=(8, 16), block=ug.ConvBlock(norm="group", groups=4)).lower(checkpoint="all")
>>> ug.lowered_record(gm).checkpoint
('enc0', 'mid', 'dec0')
>>> print(gm.code.strip().splitlines()[3])
    enc0 = unetgraph_grouping_checkpointed_call(enc0_module, x_guard);  enc0_module = x_guard = None
>>> sorted(gm.state_dict()) == sorted(ug.ungroup(gm).state_dict())
True
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import inspect
from typing import Any, Callable, ContextManager, Iterable, Iterator

import torch
import torch.fx as fx
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from .errors import LoweringError
from .graph import UNetGraph
from .record import LoweredRecord, attach_record, lowered_record
from .types import Role

__all__ = [
    "CHECKPOINT_ROLES",
    "POLICIES",
    "checkpoint_nodes",
    "group_nodes",
    "ungroup",
    "node_modules",
    "checkpointed_call",
    "selective_checkpointed_call",
    "checkpointed_chain",
    "selective_checkpointed_chain",
]

CHECKPOINT_ROLES = (Role.STEM, Role.ENCODER, Role.BOTTLENECK, Role.DECODER)
"""What ``checkpoint="all"`` checkpoints: the blocks, where most activations live. Embeddings and
the head are cheap to keep and would cost a recompute for little memory."""

FEEDER_ROLES = (Role.DOWN, Role.UP, Role.MERGE)
"""Nodes a checkpointed node takes into its checkpoint when they feed only it (a sampling before
an encoder block; an up-sampling and a merge before a decoder block): kept, their outputs (a
merge's concatenation, a max-pool's indices) would cost more memory than their recomputation
costs time."""

POLICIES = ("full", "selective")

Selection = str | int | Role | Iterable[str | int | Role] | None


# -- what the generated code calls -------------------------------------------------------------


def checkpointed_call(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``module(*args)`` under non-reentrant activation checkpointing; a plain call without gradients.

    In eager mode, batch norms inside ``module`` update their running statistics once per step,
    as without checkpointing (the recomputation in the backward pass restores them).
    """
    if not torch.is_grad_enabled():
        return module(*args, **kwargs)
    if torch.compiler.is_compiling():  # AOTAutograd recomputes from the traced graph; mutations run once
        return checkpoint(module, *args, use_reentrant=False, **kwargs)
    return checkpoint(module, *args, use_reentrant=False, context_fn=_KeepStats(module, None), **kwargs)


def selective_checkpointed_call(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """Like :func:`checkpointed_call`, but convolutions, matrix products and attention keep their
    outputs (torch's selective activation checkpointing); norms and activations are recomputed."""
    if not torch.is_grad_enabled():
        return module(*args, **kwargs)
    if torch.compiler.is_compiling():
        return checkpoint(module, *args, use_reentrant=False, context_fn=_selective_contexts, **kwargs)
    return checkpoint(
        module, *args, use_reentrant=False, context_fn=_KeepStats(module, _selective_contexts), **_HOOKS, **kwargs
    )


def checkpointed_chain(modules: tuple[nn.Module, ...], wiring: tuple[tuple[int, ...], ...], *args: Any) -> Any:
    """Several node modules under one non-reentrant checkpoint (a plain run without gradients).

    Step ``k`` calls ``modules[k]`` on the values ``wiring[k]`` indexes: ``args`` first, then the
    outputs of the earlier steps; the last step's output is returned. Only ``args`` are kept for
    the backward pass.
    """
    run = functools.partial(_run_chain, modules, wiring)
    if not torch.is_grad_enabled():
        return run(*args)
    if torch.compiler.is_compiling():
        return checkpoint(run, *args, use_reentrant=False)
    return checkpoint(run, *args, use_reentrant=False, context_fn=_KeepStats(modules, None))


def selective_checkpointed_chain(
    modules: tuple[nn.Module, ...], wiring: tuple[tuple[int, ...], ...], *args: Any
) -> Any:
    """:func:`checkpointed_chain` with the policy of :func:`selective_checkpointed_call`."""
    run = functools.partial(_run_chain, modules, wiring)
    if not torch.is_grad_enabled():
        return run(*args)
    if torch.compiler.is_compiling():
        return checkpoint(run, *args, use_reentrant=False, context_fn=_selective_contexts)
    return checkpoint(run, *args, use_reentrant=False, context_fn=_KeepStats(modules, _selective_contexts), **_HOOKS)


def _run_chain(modules: tuple[nn.Module, ...], wiring: tuple[tuple[int, ...], ...], *args: Any) -> Any:
    values = list(args)
    for module, picks in zip(modules, wiring):
        values.append(module(*(values[i] for i in picks)))
    return values[-1]


_CALLS: dict[str, Callable[..., Any]] = {"full": checkpointed_call, "selective": selective_checkpointed_call}
_CHAINS: dict[str, Callable[..., Any]] = {"full": checkpointed_chain, "selective": selective_checkpointed_chain}


def _compute_ops() -> frozenset[Any]:
    aten = torch.ops.aten
    names = [
        "convolution",
        "mm",
        "addmm",
        "bmm",
        "baddbmm",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
    ]
    return frozenset(getattr(aten, n).default for n in names if hasattr(aten, n))


_SAVED_OPS = _compute_ops()


def _save_compute(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


_selective_contexts = functools.partial(create_selective_checkpoint_contexts, _save_compute)
# what selective checkpointing keeps goes through the caller's saved-tensor hooks (save_on_cpu), as
# every other saved tensor does (torch's future default; older releases lack the option)
_HOOKS: dict[str, Any] = (
    {"respect_saved_tensors_hooks": True}
    if "respect_saved_tensors_hooks" in inspect.signature(checkpoint).parameters
    else {}
)


class _KeepStats:
    """``context_fn`` for eager checkpointing: the recomputation leaves batch-norm running statistics
    as the forward pass left them (torch's checkpoint would update them a second time)."""

    def __init__(
        self,
        module: nn.Module | tuple[nn.Module, ...],
        inner: Callable[[], tuple[ContextManager, ContextManager]] | None,
    ) -> None:
        self.stats = [
            t
            for held in (module if isinstance(module, tuple) else (module,))
            for m in held.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
            for t in (m.running_mean, m.running_var, m.num_batches_tracked)
            if t is not None
        ]
        self.inner = inner

    def __call__(self) -> tuple[ContextManager, ContextManager]:
        forward, recompute = self.inner() if self.inner is not None else (contextlib.nullcontext(),) * 2
        return forward, self._recompute(recompute)

    @contextlib.contextmanager
    def _recompute(self, inner: ContextManager) -> Iterator[None]:
        saved = [t.clone() for t in self.stats]
        try:
            with inner:
                yield
        finally:
            with torch.no_grad():
                for t, s in zip(self.stats, saved):
                    t.copy_(s)


# -- choosing nodes ------------------------------------------------------------------------------


def checkpoint_nodes(g: UNetGraph, selection: Selection) -> tuple[str, ...]:
    """The graph nodes ``selection`` names, in topological order.

    Args:
        g: the graph.
        selection: ``None``/``False``/``()`` (none); ``"all"`` (every block: the roles in
            :data:`CHECKPOINT_ROLES`); a node name (``"enc1"``); a role (``"decoder"``,
            ``ug.Role.ENCODER``; a string that names a node, such as ``"head"``, means the node);
            a level (an ``int``: that level's blocks); or a list of these.

    Raises:
        LoweringError: an unknown name, a level the graph does not have, or an input.
    """
    if selection is None or selection is False:
        return ()
    items = [selection] if isinstance(selection, (str, int, Role)) else list(selection)
    roles = {r.value for r in Role}
    chosen: set[str] = set()
    for item in items:
        if isinstance(item, bool):
            raise LoweringError(f"checkpoint: expected 'all', node names, roles or levels, got {item!r}")
        if item == "all":
            chosen |= {n.name for n in g.nodes(role=CHECKPOINT_ROLES)}
        elif isinstance(item, Role) or (isinstance(item, str) and item in roles and item not in g):
            role = Role(item)
            if role is Role.INPUT:
                raise LoweringError("checkpoint: inputs have no layers to checkpoint")
            chosen |= {n.name for n in g.nodes(role=role)}
        elif isinstance(item, str) and item in g:
            if g[item].role is Role.INPUT:
                raise LoweringError(f"checkpoint: {item} is an input; it has no layers to checkpoint", node=item)
            chosen.add(item)
        elif isinstance(item, int):
            if item not in g.levels:
                raise LoweringError(
                    f"checkpoint: level {item} is not in {g.name} (levels {g.levels[0]}–{g.levels[-1]})"
                )
            chosen |= {n.name for n in g.nodes(role=CHECKPOINT_ROLES, level=item)}
        else:
            hint = difflib.get_close_matches(str(item), [*g, *roles, "all"], n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise LoweringError(f"checkpoint: {item!r} is neither 'all', a node of {g.name}, a role nor a level{extra}")
    return tuple(n for n in g if n in chosen)


# -- grouping and ungrouping ---------------------------------------------------------------------


def group_nodes(gm: fx.GraphModule, *, checkpoint: Selection = None, policy: str = "full") -> fx.GraphModule:
    """``gm`` with each graph node's layers as one called submodule (see the module's docstring).

    The result shares its parameters and buffers with ``gm`` and has the same ``state_dict``
    keys; ``ug.lowered_record(result)`` says ``grouped=True`` and which nodes are checkpointed.
    A grouped module is regrouped from its flat form.

    Args:
        gm: a module made by :func:`unetgraph.lower` (not optimized: passes rewrite the graph).
        checkpoint: the nodes to run under activation checkpointing, as in :func:`checkpoint_nodes`.
        policy: ``"full"`` (a checkpointed node keeps only its inputs) or ``"selective"``
            (it also keeps the outputs of convolutions, matrix products and attention).

    Raises:
        LoweringError: ``gm`` was not lowered by unetgraph, an unknown selection or policy, or a
            graph node whose ops feed another node other than through its output (a module
            rewritten by passes).
    """
    if policy not in POLICIES:
        raise LoweringError(f"policy: expected one of {', '.join(map(repr, POLICIES))}, got {policy!r}")
    gm = ungroup(gm)
    record = lowered_record(gm, "group_nodes: the module")
    chosen = checkpoint_nodes(record.graph, checkpoint)
    groups = _partition(gm, record)
    chosen = tuple(n for n in chosen if n in groups)  # identity nodes have nothing to recompute
    root = _adopted(nn.Module(), gm)
    modules = {name: _node_module(gm, record, name, ops) for name, ops in groups.items()}
    for name, (module, _) in modules.items():
        root._modules[name] = module
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    member = {op: name for name, ops in groups.items() for op in ops}
    chains = _chains(gm, record, groups, modules, chosen)
    absorbed = {step for steps in chains.values() for step in steps[:-1]}
    for n in gm.graph.nodes:
        owner = member.get(n)
        if owner is None:
            env[n] = graph.node_copy(n, env.__getitem__)
        elif n.name == record.nodes[owner] and owner not in absorbed:
            name = owner
            module, inputs = modules[name]
            if name in chains:
                env[n] = _emit_chain(graph, gm, record, chains[name], modules, env, policy)
                continue
            missing = [x.name for x in inputs if x not in env]
            if missing:
                raise LoweringError(f"{name}: cannot group its layers: they read {', '.join(missing)} after its output")
            env[n] = _emit_call(graph, name, module, n, [env[x] for x in inputs], name in chosen, policy)
    graph.lint()
    out = _adopted(fx.GraphModule(root, graph, class_name=type(gm).__name__), root)
    _finish(out, gm, record.with_(grouped=True, checkpoint=chosen, checkpoint_policy=policy))
    return out


def ungroup(gm: fx.GraphModule) -> fx.GraphModule:
    """The flat form of a grouped module (every layer called from the root, as :func:`unetgraph.lower`
    makes it), sharing its tensors; any other lowered module is returned as it is."""
    record = lowered_record(gm, "ungroup: the module")
    if not record.grouped:
        return gm
    graph = fx.Graph()
    env: dict[fx.Node, Any] = {}
    root = _adopted(nn.Module(), gm)
    for n in gm.graph.nodes:
        chain = _chain_call(n)
        if chain is not None:
            names, wiring, args = chain
            values = list(fx.map_arg(args, env.__getitem__))
            metas = n.meta.get(_STEPS_META) or [n.meta] * len(names)
            for k, (name, picks) in enumerate(zip(names, wiring)):
                as_name = n.name if k == len(names) - 1 else record.nodes[name]
                step = tuple(values[i] for i in picks)
                values.append(_inline(graph, gm, root, name, step, {}, as_name, metas[k]))
            env[n] = values[-1]
            continue
        called = _called(gm, record, n)
        if called is None:
            if not (n.op == "get_attr" and n.users and all(_held(gm, record, u) for u in n.users)):
                env[n] = graph.node_copy(n, env.__getitem__)
            continue
        name, args, kwargs = called
        args, kwargs = fx.map_arg(args, env.__getitem__), fx.map_arg(kwargs, env.__getitem__)
        env[n] = _inline(graph, gm, root, name, args, kwargs, n.name, n.meta)
    graph.lint()
    out = _adopted(fx.GraphModule(root, graph, class_name=type(gm).__name__), root)
    _finish(out, gm, record.with_(grouped=False, checkpoint=(), checkpoint_policy="full"))
    return out


def node_modules(gm: fx.GraphModule) -> dict[str, nn.Module]:
    """Graph node → the submodule a grouped module calls for it (nodes with layers of their own).

    Hooks on these modules run once per call of the node: what FSDP2's ``fully_shard`` and
    other per-module tools need (:func:`unetgraph.distributed.shard` uses it).

    Raises:
        LoweringError: ``gm`` is not grouped (use :func:`group_nodes` or ``lower(checkpoint=...)``).
    """
    record = lowered_record(gm, "node_modules: the module")
    if not record.grouped:
        raise LoweringError(
            "node_modules: the module is flat (its code calls each layer from the root); "
            "group it first: ug.group_nodes(gm)"
        )
    out: dict[str, nn.Module] = {}
    for n in gm.graph.nodes:
        held = _held(gm, record, n)
        for name in held:
            out[name] = gm.get_submodule(name)
        if not held and n.op == "call_module" and n.target in record.graph:
            out[n.target] = gm.get_submodule(n.target)
    return out


# -- internals -----------------------------------------------------------------------------------


def _partition(gm: fx.GraphModule, record: LoweredRecord) -> dict[str, list[fx.Node]]:
    """Graph node → its fx nodes, in order. Inputs' guards and padding and the output crop stay at the root."""
    g = record.graph
    groups: dict[str, list[fx.Node]] = {}
    for n in gm.graph.nodes:
        if n.op in ("placeholder", "output"):
            continue
        name = n.meta.get("custom", {}).get("unet_node")
        if name not in g or g[name].role is Role.INPUT:
            continue
        if n.op in ("call_module", "get_attr") and not (n.target == name or n.target.startswith(f"{name}.")):
            continue  # a runtime module of the root (the output's crop)
        groups.setdefault(name, []).append(n)
    for name, ops in groups.items():
        inside = set(ops)
        output = record.nodes[name]
        if output not in {op.name for op in ops}:
            raise LoweringError(f"{name}: its output {output} is not one of its own layers; cannot group it", node=name)
        for op in ops:
            outside = [u.name for u in op.users if u not in inside]
            if outside and op.name != output:
                raise LoweringError(
                    f"{name}: its op {op.name} is read by {', '.join(outside)} outside the node; cannot group it "
                    "(group the module lower() made, before any pass)",
                    node=name,
                )
    return groups


def _node_module(
    gm: fx.GraphModule, record: LoweredRecord, name: str, ops: list[fx.Node]
) -> tuple[nn.Module, list[fx.Node]]:
    """The module called for graph node ``name`` and the fx nodes it takes, in order."""
    inputs: list[fx.Node] = []
    inside = set(ops)
    for op in ops:
        for a in op.all_input_nodes:
            if a not in inside and a not in inputs:
                inputs.append(a)
    if len(ops) == 1 and ops[0].op == "call_module" and ops[0].target == name:
        return gm.get_submodule(name), inputs  # a leaf layer: already called as a whole
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {a: graph.placeholder(a.name) for a in inputs}
    for op in ops:
        target = op.target
        if op.op in ("call_module", "get_attr"):
            assert isinstance(target, str)  # fx's module and attribute targets are paths
            if target == name:
                raise LoweringError(f"{name}: its module is called as a whole and in parts; cannot group it", node=name)
            target = target[len(name) + 1 :]
        new = graph.create_node(
            op.op, target, fx.map_arg(op.args, env.__getitem__), fx.map_arg(op.kwargs, env.__getitem__), name=op.name
        )
        new.meta = copy.copy(op.meta)
        env[op] = new
    graph.output(env[next(op for op in ops if op.name == record.nodes[name])])
    graph.lint()
    holder = getattr(gm, name, None)
    holder = holder if isinstance(holder, nn.Module) else nn.Module()
    module = fx.GraphModule(holder, graph, class_name=record.graph[name].block.type_name)
    return _adopted(module, holder, training=holder.training), inputs


def _emit_call(
    graph: fx.Graph, name: str, module: nn.Module, output: fx.Node, args: list[fx.Node], ckpt: bool, policy: str
) -> fx.Node:
    kwargs: dict[str, Any] = {}
    call_args: tuple = tuple(args)
    if not isinstance(module, fx.GraphModule):  # a leaf layer: keep its call's own arguments
        new_of = dict(zip(output.all_input_nodes, args))
        call_args = fx.map_arg(output.args, new_of.__getitem__)
        kwargs = fx.map_arg(output.kwargs, new_of.__getitem__)
    if ckpt:
        held = graph.create_node("get_attr", name, name=f"{name}_module")
        call = graph.create_node("call_function", _CALLS[policy], (held, *call_args), kwargs, name=output.name)
    else:
        call = graph.create_node("call_module", name, call_args, kwargs, name=output.name)
    if call.name != output.name:
        raise LoweringError(f"{name}: the name {output.name} is taken in the grouped graph", node=name)
    call.meta = copy.copy(output.meta)
    return call


def _chains(
    gm: fx.GraphModule,
    record: LoweredRecord,
    groups: dict[str, list[fx.Node]],
    modules: dict[str, tuple[nn.Module, list[fx.Node]]],
    chosen: tuple[str, ...],
) -> dict[str, list[str]]:
    """Checkpointed node → the nodes its checkpoint runs, in order, when it takes in feeders
    (:data:`FEEDER_ROLES` nodes, not chosen themselves, whose output only it reads)."""
    g = record.graph
    owner = {op: name for name, ops in groups.items() for op in ops}
    place = {n: i for i, n in enumerate(gm.graph.nodes)}
    taken = set(chosen)
    chains: dict[str, list[str]] = {}
    for head in chosen:
        steps = [head]
        grew = True
        while grew:
            grew = False
            inside = {op for step in steps for op in groups[step]}
            for step in list(steps):
                for a in modules[step][1]:
                    feeder = owner.get(a)
                    if (
                        feeder is None
                        or feeder in taken
                        or a.name != record.nodes[feeder]
                        or g[feeder].role not in FEEDER_ROLES
                        or any(u not in inside for u in a.users)
                        or not _chainable(modules[feeder][0], a)
                    ):
                        continue
                    steps.append(feeder)
                    taken.add(feeder)
                    grew = True
        if len(steps) > 1:
            chains[head] = sorted(
                steps, key=lambda step: place[next(op for op in groups[step] if op.name == record.nodes[step])]
            )
    return chains


def _chainable(module: nn.Module, output: fx.Node) -> bool:
    """A node module a chain can call with positional values: a node GraphModule, or a leaf layer
    called on fx nodes only."""
    if isinstance(module, fx.GraphModule):
        return True
    return not output.kwargs and all(isinstance(a, fx.Node) for a in output.args)


def _emit_chain(
    graph: fx.Graph,
    gm: fx.GraphModule,
    record: LoweredRecord,
    steps: list[str],
    modules: dict[str, tuple[nn.Module, list[fx.Node]]],
    env: dict[fx.Node, fx.Node],
    policy: str,
) -> fx.Node:
    outputs = {name: next(op for op in gm.graph.nodes if op.name == record.nodes[name]) for name in steps}
    reads = {
        name: modules[name][1] if isinstance(modules[name][0], fx.GraphModule) else list(outputs[name].args)
        for name in steps
    }
    made = {outputs[name]: k for k, name in enumerate(steps)}
    taken: list[fx.Node] = []
    for name in steps:
        taken += [a for a in reads[name] if a not in made and a not in taken]
    missing = [a.name for a in taken if a not in env]
    if missing:
        raise LoweringError(f"{steps[-1]}: cannot group its layers: they read {', '.join(missing)} after its output")
    index = {a: i for i, a in enumerate(taken)}
    index.update({op: len(taken) + k for op, k in made.items()})
    wiring = tuple(tuple(index[a] for a in reads[name]) for name in steps)
    held = tuple(graph.create_node("get_attr", name, name=f"{name}_module") for name in steps)
    head = outputs[steps[-1]]
    call = graph.create_node("call_function", _CHAINS[policy], (held, wiring, *(env[a] for a in taken)), name=head.name)
    if call.name != head.name:
        raise LoweringError(f"{steps[-1]}: the name {head.name} is taken in the grouped graph", node=steps[-1])
    call.meta = copy.copy(head.meta)
    call.meta[_STEPS_META] = [copy.copy(outputs[name].meta) for name in steps]
    return call


_STEPS_META = "unetgraph_chain"
"""``meta`` key of a chain call: the metadata of each step's output in the flat graph."""


def _chain_call(n: fx.Node) -> tuple[list[str], tuple[tuple[int, ...], ...], tuple] | None:
    """``(node names, wiring, args)`` when ``n`` calls a checkpoint chain."""
    if n.op != "call_function" or n.target not in _CHAINS.values():
        return None
    held, wiring, *args = n.args
    assert isinstance(held, tuple) and isinstance(wiring, tuple)  # as _emit_chain writes them
    picks = tuple(tuple(int(i) for i in step) for step in wiring if isinstance(step, tuple))
    return [str(h.target) for h in held if isinstance(h, fx.Node)], picks, tuple(args)


def _held(gm: fx.GraphModule, record: LoweredRecord, n: fx.Node) -> list[str]:
    """The node modules ``n`` calls (none when it calls no node module)."""
    chain = _chain_call(n)
    if chain is not None:
        return chain[0]
    called = _called(gm, record, n)
    return [] if called is None else [called[0]]


def _inline(
    graph: fx.Graph,
    gm: fx.GraphModule,
    root: nn.Module,
    name: str,
    args: tuple,
    kwargs: dict,
    as_name: str,
    meta: dict,
) -> Any:
    """Node module ``name``'s layers, called from the root of ``graph`` on ``args``; its output."""
    module = gm.get_submodule(name)
    if not isinstance(module, fx.GraphModule):  # a leaf layer: one call
        new = graph.create_node("call_module", name, args, kwargs, name=as_name)
        new.meta = copy.copy(meta)
        return new
    root._modules[name] = _adopted(nn.Module(), module, training=module.training)
    inner: dict[fx.Node, Any] = {}
    placeholders = iter(args)
    out: Any = None
    for s in module.graph.nodes:
        if s.op == "placeholder":
            inner[s] = next(placeholders)
        elif s.op == "output":
            out = fx.map_arg(s.args[0], inner.__getitem__)
        else:
            target = f"{name}.{s.target}" if s.op in ("call_module", "get_attr") else s.target
            new = graph.create_node(
                s.op,
                target,
                fx.map_arg(s.args, inner.__getitem__),
                fx.map_arg(s.kwargs, inner.__getitem__),
                name=s.name,
            )
            new.meta = copy.copy(s.meta)
            inner[s] = new
    return out


def _called(gm: fx.GraphModule, record: LoweredRecord, n: fx.Node) -> tuple[str, tuple, dict] | None:
    """``(node name, args, kwargs)`` when ``n`` calls a node module of a grouped module."""
    if n.op == "call_function" and n.target in _CALLS.values() and n.args and isinstance(n.args[0], fx.Node):
        return n.args[0].target, tuple(n.args[1:]), dict(n.kwargs)  # type: ignore[return-value]
    if n.op == "call_module" and isinstance(n.target, str) and n.target in record.graph:
        if isinstance(gm.get_submodule(n.target), fx.GraphModule):
            return n.target, tuple(n.args), dict(n.kwargs)
    return None


def _adopted(module: nn.Module, like: nn.Module, training: bool | None = None) -> Any:
    """``module`` holding exactly ``like``'s children, parameters and buffers (the same objects, in
    order, persistence kept), so paths and ``state_dict`` keys stay as they were."""
    module._modules.clear()
    module._modules.update(like._modules)
    module._parameters.clear()
    module._parameters.update(like._parameters)
    module._buffers.clear()
    module._buffers.update(like._buffers)
    module._non_persistent_buffers_set = set(like._non_persistent_buffers_set)
    module.training = like.training if training is None else training
    return module


def _finish(out: fx.GraphModule, gm: fx.GraphModule, record: LoweredRecord) -> None:
    out.training = gm.training
    for key, value in gm.meta.items():
        out.meta[key] = value
    attach_record(out, record)
