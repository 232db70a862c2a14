"""Weight transfer: a lowered edited graph takes the trained weights of every node that kept
its block and its input types, and says what it copied, re-initialised and dropped.

``state_dict`` keys of a lowered graph start with the node's name (``enc1.conv0.weight``),
and edits keep node names, so a node of the new graph finds its old tensors by name. A
node is *kept* when its block spec and the types reaching it are equal in both graphs;
then every tensor must have the same shape, and one that does not is reported as a
mismatch (never skipped silently). Everything else keeps its fresh initialisation.

>>> import unetgraph as ug
>>> g = ug.unet(3, 2, widths=(8, 16))
>>> gm = g.lower()
>>> gm2 = g.set("dec0", convs=1).lower(weights_from=gm)
>>> report = ug.transfer_report(gm2)
>>> report.nodes["enc0"], report.nodes["dec0"]
('copied', 'reinitialised')
>>> print(report.summary())
copied 28 tensors (4 nodes), re-initialised 6 (1 node), dropped 6
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch
from torch import nn

from .errors import LoweringError
from .graph import UNetGraph
from .record import attach_record, find_record
from .util import short_repr

__all__ = ["TensorTransfer", "TransferReport", "transfer_weights", "transfer_report"]

Outcome = Literal["copied", "reinitialised", "mismatch", "dropped"]
Source = nn.Module | Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class TensorTransfer:
    """What happened to one ``state_dict`` entry.

    ``status``: ``copied``; ``reinitialised`` (kept its fresh value: a new or changed node);
    ``mismatch`` (the node was kept but this tensor's shape or presence differs: it was
    re-initialised, and you should look); ``dropped`` (in the source only). ``reason`` says why.
    """

    key: str
    node: str
    status: Outcome
    reason: str
    old_shape: tuple[int, ...] | None
    new_shape: tuple[int, ...] | None


class TransferReport:
    """The outcome of :func:`transfer_weights`: one :class:`TensorTransfer` per tensor.

    ``report.copied`` / ``reinitialised`` / ``mismatched`` / ``dropped`` list keys;
    ``report.nodes`` maps each node with tensors to ``copied``, ``reinitialised``,
    ``partial`` or ``dropped``; ``print(report)`` gives a readable account.
    """

    def __init__(self, entries: list[TensorTransfer]) -> None:
        self.entries = tuple(entries)

    def _keys(self, status: Outcome) -> list[str]:
        return [e.key for e in self.entries if e.status == status]

    @property
    def copied(self) -> list[str]:
        return self._keys("copied")

    @property
    def reinitialised(self) -> list[str]:
        """Keys that kept their fresh values (mismatches included)."""
        return [e.key for e in self.entries if e.status in ("reinitialised", "mismatch")]

    @property
    def mismatched(self) -> list[TensorTransfer]:
        return [e for e in self.entries if e.status == "mismatch"]

    @property
    def dropped(self) -> list[str]:
        return self._keys("dropped")

    @property
    def nodes(self) -> dict[str, str]:
        """Node → ``copied``, ``reinitialised``, ``partial`` (some of each) or ``dropped``
        (a node of the source only), for every node with tensors in either model."""
        seen: dict[str, set[str]] = {}
        for e in self.entries:
            if e.status != "dropped":
                seen.setdefault(e.node, set()).add("reinitialised" if e.status == "mismatch" else e.status)
        for e in self.entries:
            if e.status == "dropped" and e.node not in seen:
                seen.setdefault(e.node, {"dropped"})
        return {n: s.pop() if len(s) == 1 else "partial" for n, s in seen.items()}

    def summary(self) -> str:
        nodes = self.nodes

        def count(what: str) -> int:
            return sum(1 for s in nodes.values() if s == what)

        c, r = count("copied"), count("reinitialised")
        parts = [
            f"copied {len(self.copied)} tensors ({c} node{'s' * (c != 1)})",
            f"re-initialised {len(self.reinitialised)} ({r} node{'s' * (r != 1)})",
            f"dropped {len(self.dropped)}",
        ]
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} SHAPE MISMATCHES")
        return ", ".join(parts)

    def __str__(self) -> str:
        lines = [self.summary()]
        by_node: dict[str, list[TensorTransfer]] = {}
        for e in self.entries:
            by_node.setdefault(e.node, []).append(e)
        for node, status in self.nodes.items():
            if status == "copied":
                continue
            entries = by_node[node]
            mine = [e for e in entries if e.status != "dropped"] or entries
            unused = len(entries) - len(mine)
            reasons = "; ".join(dict.fromkeys(e.reason for e in mine))
            extra = f" ({unused} source tensor{'s' * (unused != 1)} unused)" if unused else ""
            lines.append(f"  {status:<13} {node}: {reasons}{extra}")
            lines += [f"    mismatch {e.key}: {e.reason}" for e in mine if e.status == "mismatch"]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<TransferReport {self.summary()}>"


def transfer_weights(
    module: nn.Module,
    source: Source,
    *,
    source_graph: UNetGraph | None = None,
    match: Literal["spec", "shape"] = "spec",
) -> TransferReport:
    """Copy into ``module`` (lowered by unetgraph) the tensors of ``source`` that still fit.

    Args:
        module: the target, a GraphModule from :func:`unetgraph.lower`; changed in place.
        source: a GraphModule lowered by unetgraph (its graph is read from it; a
            ``torch.compile``\\ d one works too), any module, or a ``state_dict``.
        source_graph: the graph ``source`` was lowered from, when ``source`` does not carry
            it (a ``state_dict`` loaded from disk).
        match: ``"spec"`` copies a node's tensors when it kept its block spec and input
            types (without a source graph: when all its tensors are there with the same
            shapes); ``"shape"`` copies every tensor whose key and shape agree, even in
            changed nodes (e.g. after a dropout change), and leaves the rest.

    Returns:
        The :class:`TransferReport`, also kept in the module's record (``ug.transfer_report(module)``).

    Raises:
        LoweringError: ``module`` was not lowered by unetgraph, lives on the meta device,
            or ``match`` is unknown.
    """
    if match not in ("spec", "shape"):
        raise LoweringError(f"match: expected 'spec' or 'shape', got {match!r}")
    record = find_record(module)
    if record is None:
        raise LoweringError("transfer_weights: the target was not lowered by unetgraph")
    new_graph = record.graph
    source = getattr(source, "_orig_mod", source)  # torch.compile's wrapper
    if source_graph is not None and not isinstance(source_graph, UNetGraph):
        got = short_repr(source_graph)
        raise LoweringError(f"source_graph: expected the UNetGraph the source was lowered from, got {got}")
    if isinstance(source, nn.Module):
        source_graph = source_graph or _graph_of(source)
        old = source.state_dict()
    elif isinstance(source, Mapping):
        old = dict(source)
    else:
        raise LoweringError(f"weights_from: expected a GraphModule or a state_dict, got {type(source).__name__}")
    for key, value in old.items():
        if not isinstance(key, str):
            raise LoweringError(f"weights_from: the key {short_repr(key)} is a {type(key).__name__}, not a name")
        if not isinstance(value, torch.Tensor):
            raise LoweringError(f"weights_from: {key} is a {type(value).__name__}, not a tensor")
        if value.is_meta:
            raise LoweringError(f"weights_from: {key} is on the meta device (it has no values to copy)")
    target = module.state_dict()
    if any(t.is_meta for t in target.values()):
        raise LoweringError("cannot copy weights into a module on the meta device; lower it on a real device")
    entries = _plan(new_graph, source_graph, old, target, match)
    load = {e.key: old[e.key] for e in entries if e.status == "copied"}
    with torch.no_grad():
        module.load_state_dict(load, strict=False)
    report = TransferReport(entries)
    attach_record(module, record.with_(transfer=report))
    return report


def transfer_report(module: nn.Module) -> TransferReport | None:
    """The report of the weights ``module`` was lowered with (``lower(weights_from=...)``), or ``None``."""
    record = find_record(module)
    return None if record is None else record.transfer


def _graph_of(module: Any) -> UNetGraph | None:
    record = find_record(module)
    return None if record is None else record.graph


def _node_of(key: str) -> str:
    return key.split(".", 1)[0]


def _plan(
    new: UNetGraph,
    old_graph: UNetGraph | None,
    old: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    match: str,
) -> list[TensorTransfer]:
    """Decide per tensor, node by node (the nodes' tensors in the target's order)."""
    entries: list[TensorTransfer] = []
    by_node: dict[str, list[str]] = {}
    for key in target:
        by_node.setdefault(_node_of(key), []).append(key)
    for node, keys in by_node.items():
        shapes = [(k, _shape(old.get(k)), tuple(target[k].shape)) for k in keys]
        fits = all(o == t for _, o, t in shapes) and all(k in old for k in keys)
        reason, kept = _kept(node, new, old_graph, old, fits)
        for k, o, t in shapes:
            if match == "shape":
                status = "copied" if o == t else "reinitialised"
                why = "same key and shape" if o == t else reason if o is None else f"shape {o} → {t}"
            elif kept and o == t:
                status, why = "copied", reason
            elif kept:
                where = "missing from the source" if o is None else f"{o} in the source, {t} here"
                status, why = "mismatch", f"kept its block and input types but {k} is {where}"
            else:
                status, why = "reinitialised", reason
            entries.append(TensorTransfer(k, node, status, why, o, t))  # type: ignore[arg-type]
    entries += [
        TensorTransfer(k, _node_of(k), "dropped", _gone(_node_of(k), new, old_graph), _shape(v), None)
        for k, v in old.items()
        if k not in target
    ]
    return entries


def _kept(
    node: str, new: UNetGraph, old_graph: UNetGraph | None, old: Mapping[str, torch.Tensor], fits: bool
) -> tuple[str, bool]:
    """Whether ``node``'s weights carry over under ``match="spec"``, and why (not)."""
    if node not in new:
        return "not a graph node: matched by name and shape", fits
    if old_graph is None:
        if fits:
            return "no source graph: all its tensors matched by name and shape", True
        return "no source graph and its tensors differ by name or shape", False
    if node not in old_graph:
        return "new node", False
    a, b = old_graph[node], new[node]
    if a.block != b.block:
        return f"block changed: {a.block.label()} → {b.block.label()}", False
    if a.inputs != b.inputs:
        ins = " + ".join(map(str, a.inputs)), " + ".join(map(str, b.inputs))
        return f"input types changed: {ins[0]} → {ins[1]}", False
    return "kept its block and input types", True


def _gone(node: str, new: UNetGraph, old_graph: UNetGraph | None) -> str:
    if node not in new and (old_graph is None or node in old_graph):
        return "node removed"
    return "no such tensor here"


def _shape(t: torch.Tensor | None) -> tuple[int, ...] | None:
    return None if t is None else tuple(t.shape)
