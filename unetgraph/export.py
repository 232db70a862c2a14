"""Export a U-Net for deployment: a ``torch.export`` program, ONNX, or an AOTInductor package.

Every artifact is dynamic in batch and spatial size (the checker's rules, see
:mod:`unetgraph.dynamic`), written atomically, and carries the graph it was lowered from as
a document (the same JSON as ``g.save``), so that :func:`load_exported` checks every input
(rank, channels, dtype, size) with the checker's message before the artifact's own guards
see it, and ``loaded.graph`` gives the architecture back.

Loading runs no code from the file: an artifact is read once and checked entry by entry by
:mod:`unetgraph.artifact` (no repeated entries, matching CRC-32s, nothing pickled, no code in
the program's symbolic sizes, guards or tree specs), and torch gets only the checked bytes. An
AOTInductor package is compiled native code by nature: it loads only with ``native=True``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.fx as fx
from torch import nn

from .artifact import MAX_BYTES, checked_native, checked_program, loaded_by, read_archive, read_onnx
from .check import valid_sizes
from .dynamic import Buckets, bind_inputs, check_served, export_shapes, graph_and_module, served_axes, trace_inputs
from .errors import ArtifactError, LoweringError, ShapeError, UNetGraphError
from .files import atomic_path, write_atomic
from .graph import UNetGraph
from .grouping import ungroup
from .inputs import example_inputs as _example_inputs
from .inputs import label_classes
from .record import lowered_record
from .runtime import InputGuard, check_input_size, guard_inputs
from .serialize import from_dict, to_dict
from .util import TORCH_LOCK, TURNS

if TYPE_CHECKING:
    from torch.export.pt2_archive._package_weights import Weights

__all__ = ["export", "load_exported", "ExportedUNet", "OnnxUNet", "FORMATS"]

FORMATS = ("program", "aoti", "onnx")
_DOC = "unetgraph.json"
_DOC_FORMAT = "unetgraph-export"
_DOC_VERSION = 1

Progress = bool | Callable[[str], None]


class _Progress:
    """Say what a slow step is doing and how long it took (stderr by default)."""

    def __init__(self, progress: Progress, path: Path) -> None:
        if progress is True:
            self.say: Callable[[str], None] | None = lambda m: print(m, file=sys.stderr, flush=True)
        else:
            self.say = progress or None
        self.path = path

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        start = time.perf_counter()
        if self.say:
            self.say(f"unetgraph.export {self.path.name}: {what} …")
        yield
        if self.say:
            self.say(f"unetgraph.export {self.path.name}: {what} done in {time.perf_counter() - start:.1f} s")


def export(
    model: UNetGraph | fx.GraphModule,
    path: str | Path,
    *,
    format: str | None = None,
    example_inputs: Sequence[torch.Tensor] | None = None,
    batch: bool = True,
    max_size: int | None = None,
    progress: Progress = True,
    inductor_configs: dict[str, Any] | None = None,
    sizes: Any = None,
    batches: Sequence[int] = (1,),
) -> Path:
    """Export ``model`` to ``path``, dynamic in batch and every valid spatial size (or, for an
    AOTInductor package with ``sizes``, static per size bucket).

    Args:
        model: a graph (lowered, eval mode) or a lowered GraphModule, e.g. the module of
            :func:`ug.optimize` (lowered with ``pad=None``).
        path: the file to write (atomically).
        format: ``"program"`` (a ``torch.export`` program, ``.pt2``), ``"onnx"`` (``.onnx``,
            via ``torch.onnx.export(dynamo=True)``) or ``"aoti"`` (an AOTInductor package,
            ``.pt2``: compiled once, serves every size). ``None`` picks ``"onnx"`` for
            ``.onnx`` and ``"program"`` otherwise.
        example_inputs: tracing inputs; by default random ones of a served size with batch 2.
        batch: make the batch axis dynamic.
        max_size: the largest spatial size to serve (``None``: unbounded).
        progress: ``True`` prints each slow step and its time to stderr; a callable gets the
            lines instead; ``False`` is silent.
        inductor_configs: inductor options for ``"aoti"``; default ``{"freezing": True}`` (the
            weights are constants of the package, so inductor may pre-pack them).
        sizes: ``"aoti"`` only: spatial sizes (an int for every axis, or a tuple per size) to
            compile one static model each for, at every batch size in ``batches``, all in one
            package. Inductor packs convolution weights and fuses activations only for static
            shapes, so this is the fast mode; the loaded package pads a smaller valid size up to
            the smallest bucket where that is exact (:class:`~unetgraph.dynamic.Buckets`) and a
            batch up to the smallest batch compiled (samples are independent in inference).
            ``batch`` and ``max_size`` do not apply.
        batches: the batch sizes compiled for ``sizes``.

    Safe to call from several threads: exports, compiles and loads take turns (``TORCH_LOCK``).

    Returns:
        ``path``. Load it with :func:`load_exported`.

    Raises:
        LoweringError: an unknown format, a module lowered with ``pad="auto"``, or ``sizes``
            with a format other than ``"aoti"``.
        ShapeError: a size in ``sizes`` does not fit the graph.
    """
    # one export or compile at a time in this process: torch's tracing is not thread-safe (two exports
    # at once failed inside torch.export), and the warning filters below are process-wide
    with TURNS.alone(), TORCH_LOCK, warnings.catch_warnings():
        # torch's own deprecation inside its exporters, not actionable here
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        if sizes is not None:
            return _export_buckets(model, Path(path), format, sizes, batches, progress, inductor_configs)
        return _export(model, Path(path), format, example_inputs, batch, max_size, progress, inductor_configs)


def _export(
    model: UNetGraph | fx.GraphModule,
    path: Path,
    format: str | None,
    example_inputs: Sequence[torch.Tensor] | None,
    batch: bool,
    max_size: int | None,
    progress: Progress,
    inductor_configs: dict[str, Any] | None,
) -> Path:
    fmt = format or ("onnx" if path.suffix == ".onnx" else "program")
    if fmt not in FORMATS:
        raise LoweringError(f"format: expected one of {', '.join(map(repr, FORMATS))}, got {fmt!r}")
    if fmt in ("program", "aoti") and path.suffix != ".pt2":
        raise LoweringError(f"a {fmt!r} export is a .pt2 archive; got {path.name}")
    g, gm = graph_and_module(model)
    gm = ungroup(gm)  # a checkpointed module exports as the flat one
    if lowered_record(gm).pad == "auto":
        raise LoweringError("export needs a module lowered with pad=None: pad='auto' computes sizes in Python")
    gm = gm.eval()
    steps = _Progress(progress, path)
    args = _example(g, example_inputs, batch, max_size)
    shapes = export_shapes(g, batch=batch, max_size=max_size)
    doc = json.dumps(_document(g, fmt, batch, max_size, dict(zip(g.inputs, args))), indent=1)
    if fmt == "onnx":
        if any(p.dtype == torch.bfloat16 for p in gm.parameters()):
            raise LoweringError(
                "ONNX's Conv takes no bfloat16 (onnxruntime refuses the model): export the float32 module, "
                "or one optimized with dtype=torch.float16"
            )
        _export_onnx(gm, args, shapes, doc, path, steps)
        return path
    with steps.step("torch.export"), torch.no_grad():
        program = torch.export.export(gm, args, dynamic_shapes=shapes, strict=False)
    buffer = io.BytesIO()  # the archive's root folder is named after a buffer, not a temporary file
    if fmt == "program":
        with steps.step("saving"), warnings.catch_warnings():
            # channels-last weights share no "complete" storage; harmless for CPU tensors
            warnings.filterwarnings("ignore", message="No complete tensor found in the group")
            torch.export.save(program, buffer, extra_files={_DOC: doc})
            write_atomic(path, buffer.getvalue())
        return path
    from torch.export.pt2_archive._package import package_pt2

    with steps.step("AOTInductor compile (minutes for large models)"), torch.no_grad():
        files = _aot_compile(program, args, inductor_configs)
    with steps.step("packaging"):
        package_pt2(buffer, aoti_files={"model": files}, extra_files={_DOC: doc})
        write_atomic(path, buffer.getvalue())
    return path


def _aoti_configs(inductor_configs: dict[str, Any] | None) -> dict[str, Any]:
    return {**({"freezing": True} if inductor_configs is None else inductor_configs), "aot_inductor.package": True}


def _aot_compile(
    program: torch.export.ExportedProgram, args: tuple[torch.Tensor, ...], inductor_configs: dict[str, Any] | None
) -> list[str | Weights]:
    """AOTInductor's files for one model of a package (``aot_inductor.package`` makes it return their list)."""
    files = torch._inductor.aot_compile(program.module(), args, options=_aoti_configs(inductor_configs))
    if not isinstance(files, list):
        raise LoweringError(f"AOTInductor compiled to a {type(files).__name__}, not the file list of a package")
    return files


def _bucket_model(batch: int, size: tuple[int, ...]) -> str:
    """The name of one static model in a bucketed AOTInductor package."""
    return f"batch{batch}_" + "x".join(map(str, size))


def _export_buckets(
    model: UNetGraph | fx.GraphModule,
    path: Path,
    format: str | None,
    sizes: Any,
    batches: Sequence[int],
    progress: Progress,
    inductor_configs: dict[str, Any] | None,
) -> Path:
    """One AOTInductor package holding a static model per (batch, size bucket)."""
    if format != "aoti":
        raise LoweringError(
            "sizes= compiles static AOTInductor models per size (format='aoti'); "
            f"a {format or 'program'!r} export serves every valid size already"
        )
    if path.suffix != ".pt2":
        raise LoweringError(f"an 'aoti' export is a .pt2 archive; got {path.name}")
    batch_sizes = sorted({int(b) for b in batches})
    if not batch_sizes or batch_sizes[0] < 1:
        raise LoweringError(f"batches: positive batch sizes, got {list(batches)}")
    g, gm = graph_and_module(model)
    if lowered_record(gm).pad == "auto":
        raise LoweringError("export needs a module lowered with pad=None: pad='auto' computes sizes in Python")
    gm = gm.eval()
    buckets = Buckets.of(g, sizes)
    steps = _Progress(progress, path)
    device = next((p.device for p in gm.parameters()), torch.device("cpu"))
    models, args = {}, {}
    for b in batch_sizes:
        for size in buckets.sizes:
            args = {k: v.to(device) for k, v in _example_inputs(g, batch=b, size=size).items()}
            name = _bucket_model(b, size)
            with steps.step(f"{name}: torch.export + AOTInductor compile"), torch.no_grad():
                program = torch.export.export(gm, tuple(args.values()), strict=False)
                models[name] = _aot_compile(program, tuple(args.values()), inductor_configs)
    doc = _document(g, "aoti", False, None, args)
    doc["buckets"] = {"sizes": [list(s) for s in buckets.sizes], "batches": batch_sizes}
    from torch.export.pt2_archive._package import package_pt2

    buffer = io.BytesIO()
    with steps.step("packaging"):
        package_pt2(buffer, aoti_files=models, extra_files={_DOC: json.dumps(doc, indent=1)})
        write_atomic(path, buffer.getvalue())
    return path


def _example(
    g: UNetGraph, given: Sequence[torch.Tensor] | None, batch: bool, max_size: int | None
) -> tuple[torch.Tensor, ...]:
    if given is None:
        return trace_inputs(g, batch=2, max_size=max_size)
    args = tuple(given)
    if len(args) != len(g.inputs):
        raise ShapeError(f"example_inputs: graph {g.name} takes {len(g.inputs)} inputs ({', '.join(g.inputs)})")
    if batch and args[0].shape[0] < 2:  # export specialises a batch of 1
        args = tuple(torch.cat([a, a]) for a in args)
    return args


def _document(
    g: UNetGraph, kind: str, batch: bool, max_size: int | None, args: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """What an artifact carries: the graph (everything else is derived from it on loading), the
    dtype each input was traced with (an artifact is specialised to it) and, with a static batch,
    the batch it was traced with."""
    doc = {
        "format": _DOC_FORMAT,
        "version": _DOC_VERSION,
        "kind": kind,
        "batch": batch,
        "max_size": max_size,
        "dtypes": {name: str(x.dtype).removeprefix("torch.") for name, x in args.items()},
        "graph": to_dict(g),
    }
    if not batch and args:
        doc["batch_size"] = int(next(iter(args.values())).shape[0])
    return doc


def _export_onnx(
    gm: fx.GraphModule, args: tuple[torch.Tensor, ...], shapes: dict, doc: str, path: Path, steps: _Progress
) -> None:
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry.level
    registry.setLevel(logging.ERROR)  # it warns about every missing torchvision op
    try:
        with steps.step("torch.onnx.export (dynamo)"), torch.no_grad(), warnings.catch_warnings():
            # every input shares one batch Dim; the exporter notes that it names it once
            warnings.filterwarnings("ignore", message="# The axis name")
            program = torch.onnx.export(gm, args, dynamic_shapes=shapes, dynamo=True, verbose=False)
    finally:
        registry.setLevel(level)
    if program is None:  # only the legacy (dynamo=False) exporter returns no program
        raise LoweringError("torch.onnx.export returned no ONNX program")
    program.model.metadata_props[_DOC] = doc
    with steps.step("saving"), atomic_path(path) as tmp:
        program.save(str(tmp), external_data=False)


# -- loading ----------------------------------------------------------------------------


def _dtype(name: Any) -> torch.dtype:
    """A dtype from its name in a document (only a ``torch.dtype`` attribute is accepted)."""
    value = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return value


class _Spec:
    """The document an artifact carries, validated: the graph, and the guards and sizes it implies."""

    def __init__(self, text: str, source: str) -> None:
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            if data.get("format") != _DOC_FORMAT or data.get("version") != _DOC_VERSION:
                raise ValueError(f"format {data.get('format')!r} version {data.get('version')!r}")
            self.kind: str = data["kind"]
            if self.kind not in FORMATS:
                raise ValueError(f"kind {self.kind!r} is not one of {', '.join(FORMATS)}")
            self.batch = data["batch"]
            max_size = data["max_size"]
            if not isinstance(self.batch, bool):
                raise ValueError(f"batch must be true or false, got {self.batch!r}")
            if max_size is not None and (type(max_size) is not int or max_size < 1):
                raise ValueError(f"max_size must be a positive integer or null, got {max_size!r}")
            dtypes = data.get("dtypes", {})
            if not isinstance(dtypes, dict):
                raise ValueError(f"dtypes must be an object, got {type(dtypes).__name__}")
            self.dtypes = {name: _dtype(text) for name, text in dtypes.items()}
            self.graph = from_dict(data["graph"])  # plain data: nothing in it runs
            g = self.graph
            if not set(self.dtypes) <= set(g.inputs):
                raise ValueError(f"dtypes names {sorted(set(self.dtypes) - set(g.inputs))}, not inputs of the graph")
            self.rules = valid_sizes(g)
            self.served = served_axes(g, max_size=max_size)
            bucketed = data.get("buckets")
            if bucketed is not None and not (isinstance(bucketed, dict) and set(bucketed) == {"sizes", "batches"}):
                raise ValueError(f"buckets must be an object of sizes and batches, got {bucketed!r}")
            if bucketed is not None and not all(type(b) is int and b > 0 for b in bucketed["batches"]):
                raise ValueError(f"buckets.batches must be positive integers, got {bucketed['batches']!r}")
            self.buckets = None if bucketed is None else Buckets.of(g, [tuple(s) for s in bucketed["sizes"]])
            self.batches = () if bucketed is None else tuple(sorted(bucketed["batches"]))
            self.batch_size = data.get("batch_size") if bucketed is None else None  # static: the traced batch
            if self.batch_size is not None and (type(self.batch_size) is not int or self.batch_size < 0):
                raise ValueError(f"batch_size must be a non-negative integer, got {self.batch_size!r}")
        except Exception as e:  # a document from a file: whatever is wrong with it, it is refused
            raise ArtifactError(
                f"{source}: not a unetgraph export ({type(e).__name__}: {e})", path=source, entry=_DOC
            ) from e
        self.name = g.name
        self.source = source
        self.outputs = g.outputs
        self.spatial = self.rules.input
        self.guards = [
            InputGuard(n, g[n].type, signature=g.inputs, match_module=False, classes=label_classes(g, n))
            for n in g.inputs
        ]

    def prepare(self, inputs: Sequence[Any], named: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, ...]:
        """Check ``inputs`` (by position, or by name in ``named``) in the checker's words, as the lowered
        module's guards do (timesteps and labels given as one number or one value are broadcast to the
        batch; labels outside the embedding's classes are refused); timesteps of another dtype (``int64``
        from a scheduler) are cast to the traced one, any other dtype mismatch is refused, and so is
        another batch than a static one."""
        bound = bind_inputs(self.graph.inputs, inputs, named or {}, self.name)
        ready = list(guard_inputs(self.guards, bound, self.name))
        if self.batch_size is not None and ready[0].shape[0] != self.batch_size:
            first = self.guards[0].name
            raise ShapeError(
                f"input {first} has batch {ready[0].shape[0]}; this artifact was exported with a static batch of "
                f"{self.batch_size} (batch=False): pass {self.batch_size} samples, or export with batch=True",
                node=first,
            )
        for i, (guard, x) in enumerate(zip(self.guards, ready)):
            if guard.name == self.spatial and self.buckets is not None:
                check_input_size(self.spatial, self.rules, tuple(x.shape[2:]))
                self.buckets.choose(tuple(x.shape[2:]))
            elif guard.name == self.spatial:
                check_served(self.spatial, self.rules, self.served, tuple(x.shape[2:]))
            want = self.dtypes.get(guard.name, x.dtype)
            if x.dtype != want:
                if not guard.per_sample:
                    raise ShapeError(
                        f"input {guard.name} is {x.dtype}; this artifact was exported for {want}: "
                        f"pass {guard.name}.to({want})",
                        node=guard.name,
                    )
                ready[i] = x.to(want)
        return tuple(ready)

    def describe(self) -> str:
        ins = ", ".join(f"{g.name} {g.expect()}" for g in self.guards)
        if self.buckets is not None:
            batches = ", ".join(map(str, self.batches))
            return f"{self.name} [{self.kind}]: {ins}; {self.buckets.describe()}; batches {batches}"
        return f"{self.name} [{self.kind}]: {ins}; serves {', '.join(a.describe() for a in self.served)}"


def _run_artifact(spec: _Spec, step: Callable[[], Any]) -> Any:
    """Run a loaded artifact on inputs its document accepts: a failure there (other than running
    out of memory) is the artifact's, e.g. a program whose operators get arguments of the wrong
    type, and becomes an :class:`ArtifactError` naming the file."""
    try:
        return step()
    except (torch.OutOfMemoryError, UNetGraphError):  # ours: a bucket runner refusing a batch in words
        raise
    except Exception as e:  # the runtime's own error types: the inputs were checked, the artifact is at fault
        if _out_of_memory(e):
            raise
        raise ArtifactError(
            f"{spec.source}: the {spec.kind} artifact failed on inputs it accepts ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:300]})",
            path=spec.source,
        ) from e


def _out_of_memory(e: Exception) -> bool:
    """Whether ``e`` is an allocation failure: torch's CPU allocator raises a plain ``RuntimeError``,
    onnxruntime its own error type, neither a ``torch.OutOfMemoryError``."""
    text = str(e)
    return isinstance(e, MemoryError) or any(
        words in text for words in ("can't allocate memory", "Failed to allocate memory", "bad allocation")
    )


class _BucketRunner:
    """Runs a bucketed AOTInductor package: pads the image input up to its size bucket and the
    batch up to the smallest batch compiled, runs that static model, cuts the outputs back."""

    def __init__(self, spec: _Spec, buckets: Buckets, path: Path, data: bytes) -> None:
        self.spec, self.buckets = spec, buckets
        self.position = spec.graph.inputs.index(self.buckets.input)
        from torch.export.pt2_archive._package import load_pt2

        # every model of the package, loaded once, from the checked bytes
        runners = loaded_by("torch", path, lambda: load_pt2(io.BytesIO(data)).aoti_runners)
        try:
            self.models = {(b, size): runners[_bucket_model(b, size)] for b in spec.batches for size in buckets.sizes}
        except KeyError as e:
            raise ArtifactError(f"{path}: the package lacks the model {e} its document lists", path=str(path)) from None

    def __call__(self, *inputs: torch.Tensor) -> Any:
        x = inputs[self.position]
        n, spatial = x.shape[0], tuple(x.shape[2:])
        batch = next((b for b in self.spec.batches if b >= n), None)
        if batch is None:
            raise ShapeError(
                f"batch {n} is larger than every batch this package was compiled for "
                f"({', '.join(map(str, self.spec.batches))}): split it",
                node=self.buckets.input,
            )
        bucket = self.buckets.choose(spatial)
        ready = [self.buckets.pad(t, bucket) if i == self.position else t for i, t in enumerate(inputs)]
        if batch > n:  # samples are independent at inference: pad with zeros, drop them after
            ready = [torch.cat([t, t.new_zeros((batch - n, *t.shape[1:]))]) for t in ready]
        out = self.models[(batch, bucket)](*ready)
        if batch > n:
            out = {k: v[:n] for k, v in out.items()} if isinstance(out, dict) else out[:n]
        return out if bucket == spatial else self.buckets.crop(out, spatial)


class ExportedUNet(nn.Module):
    """A loaded ``.pt2`` (a ``torch.export`` program or an AOTInductor package) that checks sizes first.

    ``forward`` checks its inputs as the lowered module's guards do (a
    :class:`~unetgraph.errors.ShapeError` in the checker's words for a wrong type, rank,
    channels, batch or size; timesteps and labels given as one number or one value broadcast to
    the batch), then runs the artifact.
    ``program`` is the ``ExportedProgram`` (``"program"`` kind only).
    """

    def __init__(self, spec: _Spec, run: Callable[..., Any], program: Any = None) -> None:
        super().__init__()
        self.spec = spec
        self.program = program
        if isinstance(run, nn.Module):
            self.module = run
        else:
            self._run = run

    @property
    def graph(self) -> UNetGraph:
        """The architecture the artifact was exported from."""
        return self.spec.graph

    def forward(self, *inputs: Any, **named: Any) -> Any:
        """The exported model's outputs; inputs by position or by name, as the lowered module takes them."""
        with TURNS.running():  # not while another thread exports
            inputs = self.spec.prepare(inputs, named)
            run = self.module if hasattr(self, "module") else self._run
            return _run_artifact(self.spec, lambda: run(*inputs))

    def extra_repr(self) -> str:
        return self.spec.describe()


class OnnxUNet:
    """A loaded ``.onnx`` export run by onnxruntime, checking sizes first; call it with tensors.

    The file is read once (see :func:`unetgraph.artifact.read_onnx`: no external data), and
    onnxruntime gets the bytes that were checked.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (default: ``torch.get_num_threads()``).
        spinning: let onnxruntime's idle threads spin (fast alone, but they steal CPU from
            anything else in the process, which distorts side-by-side timings).
        max_bytes: the largest file loaded.

    Raises:
        ArtifactError: the file is not a unetgraph ONNX export, or onnxruntime refuses it.
    """

    def __init__(
        self, path: str | Path, *, threads: int | None = None, spinning: bool = False, max_bytes: int = MAX_BYTES
    ) -> None:
        import onnxruntime as ort

        path = Path(path)
        model, data = read_onnx(path, max_bytes=max_bytes)
        props = {p.key: p.value for p in model.metadata_props}
        if _DOC not in props:
            raise ArtifactError(f"{path}: not a unetgraph export (no {_DOC} metadata)", path=str(path))
        self.spec = _Spec(props[_DOC], str(path))
        if self.spec.kind != "onnx":
            raise ArtifactError(f"{path}: its document says {self.spec.kind!r}, not 'onnx'", path=str(path), entry=_DOC)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        flag = "1" if spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", flag)
        options.add_session_config_entry("session.inter_op.allow_spinning", flag)
        self.session = loaded_by(
            "onnxruntime", path, lambda: ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        outputs = self.session.get_outputs()
        if len(self.input_names) != len(self.spec.graph.inputs) or len(outputs) != len(self.spec.outputs):
            raise ArtifactError(
                f"{path}: the model takes {len(self.input_names)} inputs and gives {len(outputs)} outputs; its "
                f"graph {self.spec.name} has {len(self.spec.graph.inputs)} and {len(self.spec.outputs)}",
                path=str(path),
            )

    @property
    def graph(self) -> UNetGraph:
        """The architecture the artifact was exported from."""
        return self.spec.graph

    def __call__(self, *inputs: Any, **named: Any) -> torch.Tensor | dict[str, torch.Tensor]:
        """The exported model's outputs; inputs by position or by name, as the lowered module takes them."""
        inputs = self.spec.prepare(inputs, named)
        empty = inputs[0].shape[0] == 0  # onnxruntime cannot reshape an empty batch: run one zero sample
        if empty:
            inputs = tuple(x.new_zeros((1, *x.shape[1:])) for x in inputs)
        feeds = {n: x.detach().cpu().numpy() for n, x in zip(self.input_names, inputs)}
        outs = [torch.from_numpy(o) for o in _run_artifact(self.spec, lambda: self.session.run(None, feeds))]
        if empty:
            outs = [o[:0] for o in outs]
        return outs[0] if len(outs) == 1 else dict(zip(self.spec.outputs, outs))

    def __repr__(self) -> str:
        return f"OnnxUNet({self.spec.describe()})"


def load_exported(
    path: str | Path,
    *,
    native: bool = False,
    max_bytes: int = MAX_BYTES,
    threads: int | None = None,
    spinning: bool = False,
) -> ExportedUNet | OnnxUNet:
    """Load an export made by :func:`export`; nothing in the file runs unless ``native=True``.

    ``.onnx`` gives an :class:`OnnxUNet`; ``.pt2`` an :class:`ExportedUNet` around the
    ``torch.export`` program or the AOTInductor package. The file is read once, checked entry by
    entry (no repeated entries, CRC-32s that match, nothing pickled, no code in the program's
    symbolic sizes, guards or tree specs: :mod:`unetgraph.artifact`), and torch is handed only
    the checked bytes.

    Args:
        path: the ``.pt2`` or ``.onnx`` file.
        native: allow an AOTInductor package (``format="aoti"``): compiled machine code that runs
            as soon as it is loaded, so the artifact's own document cannot choose it. Pass
            ``True`` only for packages you built or trust.
        max_bytes: the largest artifact loaded (the file and its entries uncompressed); default
            :data:`unetgraph.artifact.MAX_BYTES` (8 GiB).
        threads: ONNX only: onnxruntime's intra-op threads.
        spinning: ONNX only: let onnxruntime's idle threads spin.

    Raises:
        ArtifactError: (a :class:`LoweringError`) the file is not a unetgraph export, is
            corrupted or malformed, is over a size limit, holds pickled data or code, or is an
            AOTInductor package and ``native`` is false; the message names the file and entry.
    """
    path = Path(path)
    if path.suffix == ".onnx":
        return OnnxUNet(path, threads=threads, spinning=spinning, max_bytes=max_bytes)
    archive = read_archive(path, max_bytes=max_bytes)
    doc = f"extra/{_DOC}"
    if doc not in archive.entries:
        raise ArtifactError(f"{path}: not a unetgraph export (no {doc})", path=str(path))
    spec = _Spec(archive.text(doc), str(path))
    if spec.kind == "aoti":
        if not native:
            raise ArtifactError(
                f"{path} is an AOTInductor package: compiled native code that runs when it is loaded. "
                "Load it with ug.load_exported(path, native=True) if you built it or trust its source",
                path=str(path),
            )
        data = checked_native(archive, document=_DOC)
        del archive
        if spec.buckets is not None:
            return ExportedUNet(spec, _BucketRunner(spec, spec.buckets, path, data))
        runner = loaded_by("torch", path, lambda: torch._inductor.aoti_load_package(io.BytesIO(data)))
        return ExportedUNet(spec, runner)
    if spec.kind != "program":
        raise ArtifactError(
            f"{path}: its document says {spec.kind!r}; a .pt2 holds 'program' or 'aoti'", path=str(path)
        )
    data = checked_program(archive, inputs=spec.graph.inputs, document=_DOC)
    del archive
    from torch.export.pt2_archive._package import load_pt2

    # load_pt2 rather than torch.export.load, which retries a failed archive in a legacy layout
    program = loaded_by("torch", path, lambda: load_pt2(io.BytesIO(data)).exported_programs["model"])
    signature = program.graph_signature
    if len(signature.user_inputs) != len(spec.graph.inputs) or len(signature.user_outputs) != len(spec.outputs):
        raise ArtifactError(
            f"{path}: the program takes {len(signature.user_inputs)} inputs and gives "
            f"{len(signature.user_outputs)} outputs; its graph {spec.name} has {len(spec.graph.inputs)} and "
            f"{len(spec.outputs)}",
            path=str(path),
        )
    return ExportedUNet(spec, loaded_by("torch", path, program.module), program)
