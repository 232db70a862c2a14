"""``optimize``: the right sequence of passes for inference (or training), with one report."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
import torch.fx as fx

from ..errors import LoweringError
from ..grouping import ungroup
from ..inputs import example_inputs as _example_inputs
from ..record import find_record
from .base import PassResult, undone_copy
from .channels_last import channels_last as _channels_last
from .drop_identities import drop_identities
from .fold_batchnorm import fold_batchnorm
from .fold_constants import fold_constants
from .fold_upsampling import fold_upsampling, has_folds, unfold_upsampling
from .merge_siblings import merge_siblings
from .prepack import has_packed, unpack
from .prepack import prepack as _prepack
from .reduced_precision import DTYPES, reduced_precision
from .remove_dead_nodes import remove_dead_nodes
from .swap_instance_norms import swap_instance_norms

__all__ = ["optimize", "plain", "Optimized", "OptimizeReport", "INFERENCE_STEPS", "TRAINING_STEPS"]

# the graph passes optimize() runs first, in this order (channels_last and prepack follow)
INFERENCE_STEPS = (
    drop_identities,
    fold_batchnorm,
    fold_constants,
    merge_siblings,
    swap_instance_norms,
    remove_dead_nodes,
    fold_upsampling,
)
TRAINING_STEPS = (drop_identities, remove_dead_nodes)  # the ones that keep training semantics


@dataclass(frozen=True)
class OptimizeReport:
    """What :func:`optimize` did: one :class:`PassResult` per pass, and the totals.

    ``report["fold_batchnorm"]`` is one pass's result; ``print(report)`` lists every change.
    ``max_abs_diff`` is the largest output difference on the example inputs, when given.
    """

    passes: tuple[PassResult, ...]
    nodes: tuple[int, int]
    params: tuple[int, int]
    max_abs_diff: float | None = None

    def __getitem__(self, name: str) -> PassResult:
        for p in self.passes:
            if p.name == name:
                return p
        raise KeyError(f"no pass {name!r} ran; passes: {', '.join(p.name for p in self.passes)}")

    @property
    def changed(self) -> bool:
        return any(p.changed for p in self.passes)

    def summary(self) -> str:
        counts = ", ".join(f"{p.name} {len(p.changes)}" for p in self.passes)
        diff = "" if self.max_abs_diff is None else f"; max |Δ| on the example {self.max_abs_diff:.1e}"
        return (
            f"fx nodes {self.nodes[0]} → {self.nodes[1]}, parameters {self.params[0]:,} → {self.params[1]:,}"
            f" ({counts}){diff}"
        )

    def __str__(self) -> str:
        return "\n".join([self.summary(), *map(str, self.passes)])


class Optimized(NamedTuple):
    """The result of :func:`optimize`: ``module, report = ug.optimize(gm)``."""

    module: fx.GraphModule
    report: OptimizeReport


def optimize(
    gm: fx.GraphModule,
    *,
    for_inference: bool = True,
    channels_last: bool | None = None,
    prepack: bool = True,
    dtype: torch.dtype | None = None,
    inplace: bool = False,
    example_inputs: Sequence[torch.Tensor] | None = None,
    atol: float | None = None,
) -> Optimized:
    """Run the passes that suit ``gm``'s use and report what each changed.

    For inference (``for_inference=True``; the module is put in eval mode): drop identities
    and dropout, fold batch norms into convolutions, fold constant subgraphs, compute sibling
    activations once and run sibling ``Linear`` layers as one, run instance norms as group
    norms, remove dead nodes and state, convert to channels-last where it pays off, then keep
    2D/3D float32 CPU convolution weights in oneDNN's packed layout, fused with their activations
    (:func:`~unetgraph.passes.prepack`; export, ONNX, eject and compile get plain modules back
    by themselves). For training only the passes that keep training semantics run: identity
    removal (dropout stays), dead node removal and channels-last.

    Args:
        gm: a module made by :func:`unetgraph.lower` (passes that need the graph, such as
            channels-last, skip other GraphModules and say so). A grouped or checkpointed
            module (``lower(checkpoint=...)``) is optimized in its flat form
            (:func:`~unetgraph.grouping.ungroup`), never in place.
        for_inference: see above.
        channels_last: ``None`` lets the pass decide (wide enough convolutions), ``True``
            forces it, ``False`` skips it.
        prepack: run :func:`~unetgraph.passes.prepack` (inference only; it leaves alone, with a
            note, what it does not apply to: other devices, other dtypes, 1D models).
        dtype: ``torch.bfloat16`` or ``torch.float16`` runs the model in that precision
            (:func:`~unetgraph.passes.reduced_precision`; inference only): about 2× faster
            convolutions where the hardware has the units, about 3 significant digits.
        inplace: rewrite ``gm`` itself instead of a deep copy.
        example_inputs: when given, the optimized module is run against the original on
            them and :class:`~unetgraph.errors.LoweringError` is raised if any output
            differs by more than ``atol`` (times the output's largest magnitude when that
            exceeds 1); the report records the largest difference.
        atol: default ``1e-4``, or ``5e-2`` with a reduced-precision ``dtype``.

    Returns:
        ``Optimized(module, report)``.

    Example:
        >>> import torch, unetgraph as ug
        >>> gm = ug.unet(3, 2, widths=(8, 16)).lower()
        >>> fast, report = ug.optimize(gm, example_inputs=[torch.randn(1, 3, 32, 32)])
        >>> len(report["fold_batchnorm"].changes), report.max_abs_diff < 1e-4
        (6, True)
    """
    if not isinstance(gm, fx.GraphModule):
        raise LoweringError(f"optimize expects a torch.fx.GraphModule (from g.lower()), got {type(gm).__name__}")
    if dtype is not None and dtype not in DTYPES:
        raise LoweringError(f"optimize: dtype must be None, torch.bfloat16 or torch.float16, got {dtype}")
    if dtype is not None and not for_inference:
        raise LoweringError(
            "optimize: dtype is for inference; for training keep float32 weights and wrap the step in torch.autocast"
        )
    record = find_record(gm)
    if record is not None and record.grouped:
        if inplace:
            raise LoweringError(
                "optimize(inplace=True): this module runs each node as a submodule (lower(checkpoint=...)); "
                "optimize its flat form instead: ug.optimize(ug.ungroup(gm), inplace=True)"
            )
        gm = ungroup(gm)
    if atol is None:
        atol = 1e-4 if dtype is None else 5e-2
    reference = None
    if example_inputs is not None:
        reference = copy.deepcopy(gm).train(gm.training if not for_inference else False)
    out = gm if inplace else copy.deepcopy(gm)
    nodes_before, params_before = _count(out)
    if for_inference:
        out.eval()
    results: list[PassResult] = [step(out) for step in (INFERENCE_STEPS if for_inference else TRAINING_STEPS)]
    if dtype is not None:
        results.append(reduced_precision(out, _run_inputs(out, example_inputs), dtype))
    if channels_last is not False:
        results.append(_channels_last(out, force=bool(channels_last)))
    if for_inference and prepack:
        results.append(_prepack(out))
    diff = None
    if reference is not None and example_inputs is not None:
        diff = _compare(reference, out, example_inputs, atol)
    report = OptimizeReport(tuple(results), (nodes_before, _count(out)[0]), (params_before, _count(out)[1]), diff)
    return Optimized(out, report)


def _run_inputs(gm: fx.GraphModule, given: Sequence[torch.Tensor] | None) -> Sequence[torch.Tensor]:
    """Inputs to run ``gm`` once on: the caller's, else small ones the graph describes."""
    if given is not None:
        return given
    info = find_record(gm)
    if info is None:
        raise LoweringError("optimize(dtype=...) needs example_inputs for a module not made by unetgraph.lower")
    device = next((p.device for p in gm.parameters()), torch.device("cpu"))
    return [x.to(device) for x in _example_inputs(info.graph, batch=2).values()]


def _count(gm: fx.GraphModule) -> tuple[int, int]:
    return len(gm.graph.nodes), sum(p.numel() for p in gm.parameters())


def _compare(
    reference: fx.GraphModule, out: fx.GraphModule, example_inputs: Sequence[torch.Tensor], atol: float
) -> float:
    with torch.no_grad():
        want, got = reference(*example_inputs), out(*example_inputs)
    pairs = list(zip(want.values(), got.values())) if isinstance(want, dict) else [(want, got)]
    diff = max((a - b).abs().max().item() for a, b in pairs)
    scale = max([1.0] + [a.abs().max().item() for a, _ in pairs])
    if not diff <= atol * scale:
        raise LoweringError(
            f"optimize changed the outputs by up to {diff:.3g} (> atol {atol:g}"
            + (f" × output scale {scale:.3g}" if scale > 1 else "")
            + ") on the example inputs"
        )
    return diff


def plain(gm: fx.GraphModule, *, unfold: bool = True) -> fx.GraphModule:
    """``gm`` itself when no eager-only pass changed it, else a copy sharing ``gm``'s parameters
    and buffers with :func:`~unetgraph.passes.prepack.unpack` and (with ``unfold``)
    :func:`~unetgraph.passes.fold_upsampling.unfold_upsampling` applied; ``gm`` is untouched.
    Export and eject take the standard modules; compile keeps the folds (``unfold=False``:
    they trace to plain convolutions of the coarse input)."""
    packed, folded = has_packed(gm), unfold and has_folds(gm)
    if not (packed or folded):
        return gm

    def undo(m: fx.GraphModule) -> None:
        if packed:
            unpack(m)
        if folded:
            unfold_upsampling(m)

    return undone_copy(gm, undo)
