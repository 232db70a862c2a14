"""Training on several processes with torch's own engines: FSDP2 sharding by graph node or level,
and SyncBatchNorm.

A lowered module is an ordinary ``nn.Module``: ``DistributedDataParallel(gm)`` needs nothing from
this module. FSDP2 (``torch.distributed.fsdp.fully_shard``) shards per submodule and gathers a
submodule's weights in a hook that runs when the submodule is *called*; the flat module
:func:`unetgraph.lower` makes calls each layer from the root, so :func:`shard` first groups
each graph node's layers into one called submodule (:func:`unetgraph.grouping.group_nodes`),
then shards those, per node or per level.

``torch.nn.SyncBatchNorm.convert_sync_batchnorm(gm)`` works on lowered modules as they are: it
swaps each batch norm in place, and the generated code looks layers up by path at every call.
:func:`sync_batchnorm` does the same and checks the result.
"""

from __future__ import annotations

from typing import Any

import torch.fx as fx
from torch import nn

from .errors import LoweringError
from .grouping import group_nodes, node_modules
from .record import lowered_record

__all__ = ["shard", "sync_batchnorm", "SHARD_UNITS"]

SHARD_UNITS = ("node", "level")


def shard(
    gm: fx.GraphModule,
    *,
    per: str = "node",
    mesh: Any = None,
    reshard_after_forward: bool | int | None = None,
    mp_policy: Any = None,
    offload_policy: Any = None,
) -> fx.GraphModule:
    """Shard a lowered module with FSDP2, one unit per graph node or per level, then the root.

    Call it on every process after ``torch.distributed.init_process_group``, then build the
    optimizer from the returned module's parameters.

    Args:
        gm: a module made by :func:`unetgraph.lower` (checkpointed ones too). A flat module is
            grouped first (a new module sharing its tensors): use the returned one.
        per: ``"node"``: every graph node with parameters is its own unit (``enc1``, ``down1``,
            …); ``"level"``: the nodes of one U-Net level share a unit, so fewer, larger
            all-gathers; nodes outside the levels (embeddings) go with the root.
        mesh, reshard_after_forward, mp_policy, offload_policy: as in
            ``torch.distributed.fsdp.fully_shard`` (``None`` keeps its defaults).

    Returns:
        The sharded module (an FSDP2 module: parameters are ``DTensor`` shards).

    Raises:
        LoweringError: ``per`` is unknown, or ``gm`` was not lowered by unetgraph.
    """
    from torch.distributed.fsdp import fully_shard

    if per not in SHARD_UNITS:
        raise LoweringError(f"per: expected one of {', '.join(map(repr, SHARD_UNITS))}, got {per!r}")
    record = lowered_record(gm, "shard: the module")
    if not record.grouped:
        gm = group_nodes(gm)
        record = lowered_record(gm)
    options: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if mp_policy is not None:
        options["mp_policy"] = mp_policy
    if offload_policy is not None:
        options["offload_policy"] = offload_policy
    for unit in shard_units(gm, per=per):
        fully_shard(unit if len(unit) > 1 else unit[0], **options)
    fully_shard(gm, **options)
    return gm


def shard_units(gm: fx.GraphModule, *, per: str = "node") -> list[list[nn.Module]]:
    """The groups of node modules :func:`shard` gives FSDP2, in graph order (modules with parameters)."""
    record = lowered_record(gm, "shard_units: the module")
    g = record.graph
    units: dict[Any, list[nn.Module]] = {}
    for name, module in node_modules(gm).items():
        if not any(True for _ in module.parameters()):
            continue
        key = name if per == "node" else g[name].level
        if key is None:
            continue  # outside the levels: the root's unit
        units.setdefault(key, []).append(module)
    return list(units.values())


def sync_batchnorm(gm: fx.GraphModule, process_group: Any = None) -> fx.GraphModule:
    """Every batch norm of ``gm`` as a ``torch.nn.SyncBatchNorm`` (in place; returns ``gm``).

    Statistics are then computed over the whole global batch in training. torch syncs only
    on accelerators: on CPU, ``SyncBatchNorm`` raises in a multi-process training forward, so
    CPU runs use GroupNorm models (or plain batch norms with per-process statistics).

    Raises:
        LoweringError: ``gm`` was not lowered by unetgraph.
    """
    lowered_record(gm, "sync_batchnorm: the module")
    out = nn.SyncBatchNorm.convert_sync_batchnorm(gm, process_group)
    for n in out.graph.nodes:
        if n.op == "call_module":
            out.get_submodule(n.target)  # every layer the code calls is still there
    return out
