"""What a lowered module knows about itself: one typed record in ``gm.meta["unetgraph"]``.

Every module downstream of lowering (transfer, passes, dynamic shapes, export, eject, saved
models) reads the graph a module was lowered from, how it was lowered and the fx name of each
graph node through :func:`lowered_record`, never through ad-hoc dictionary keys.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Mapping

from .errors import LoweringError
from .graph import UNetGraph

if TYPE_CHECKING:
    from torch import nn

__all__ = ["LoweredRecord", "lowered_record", "find_record", "attach_record"]

_KEY = "unetgraph"


@dataclass(frozen=True)
class LoweredRecord:
    """How a GraphModule was made by :func:`unetgraph.lower`.

    Attributes:
        graph: the graph it was lowered from.
        nodes: graph node name → name of the fx node that holds its output.
        pad: the ``pad`` option it was lowered with (``None`` or ``"auto"``).
        transfer: the report of ``weights_from`` (a :class:`~unetgraph.transfer.TransferReport`), if any.
        pad_mode: the ``pad_mode`` option (how ``pad="auto"`` fills the margin).
        guard: whether the module checks its inputs (the ``guard`` option).
        grouped: each graph node's layers run as one submodule of their own
            (:func:`unetgraph.grouping.group_nodes`), not as separate calls of the root module.
        checkpoint: the graph nodes that run under activation checkpointing (grouped modules only).
        checkpoint_policy: ``"full"`` (recompute everything inside a checkpointed node) or
            ``"selective"`` (keep the outputs of convolutions and matrix products, recompute the rest).
    """

    graph: UNetGraph
    nodes: Mapping[str, str]
    pad: str | None = None
    transfer: Any = None
    pad_mode: str = "constant"
    guard: bool = True
    grouped: bool = False
    checkpoint: tuple[str, ...] = ()
    checkpoint_policy: str = "full"

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", dict(self.nodes))  # a private copy: records are never changed in place
        object.__setattr__(self, "checkpoint", tuple(self.checkpoint))

    def with_(self, **changes: Any) -> LoweredRecord:
        """A copy with ``changes`` applied."""
        return replace(self, **changes)


def find_record(module: Any) -> LoweredRecord | None:
    """The record of a module made by :func:`unetgraph.lower` (or ``torch.compile`` of one), else ``None``."""
    module = getattr(module, "_orig_mod", module)  # torch.compile's wrapper
    meta = getattr(module, "meta", None)
    record = meta.get(_KEY) if isinstance(meta, dict) else None
    return record if isinstance(record, LoweredRecord) else None


def lowered_record(module: Any, what: str = "this module") -> LoweredRecord:
    """The record of a module made by :func:`unetgraph.lower`; :class:`LoweringError` for any other module."""
    record = find_record(module)
    if record is None:
        raise LoweringError(f"{what} was not made by unetgraph.lower (a {type(module).__name__})")
    return record


def attach_record(module: nn.Module, record: LoweredRecord) -> None:
    """Store ``record`` on ``module`` (a GraphModule: its ``meta`` travels with deepcopy and passes)."""
    meta = getattr(module, "meta", None)
    if not isinstance(meta, dict):
        raise LoweringError(f"cannot attach a lowering record to a {type(module).__name__}: it has no meta dict")
    meta[_KEY] = record
