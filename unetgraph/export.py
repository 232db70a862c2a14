"""Export a U-Net for deployment: a ``torch.export`` program, ONNX, or an AOTInductor package.

Every artifact is dynamic in batch and spatial size (the checker's rules, see
:mod:`unetgraph.dynamic`), written atomically, and carries the graph it was lowered from as
a document (the same JSON as ``g.save``), so that :func:`load_exported` checks every input
(rank, channels, dtype, size) with the checker's message before the artifact's own guards
see it, and ``loaded.graph`` gives the architecture back.

Loading never executes pickled code: a ``.pt2`` is inspected first and refused if any
tensor in it is stored as a pickle or its example inputs do not load with
``torch.load(weights_only=True)``. (An AOTInductor package is compiled native code by
nature: load only packages you made.)
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import sys
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.fx as fx
from torch import nn

from .check import valid_sizes
from .dynamic import Buckets, check_served, export_shapes, graph_and_module, served_axes, trace_inputs
from .errors import LoweringError, ShapeError, UNetGraphError
from .files import atomic_path, write_atomic
from .graph import UNetGraph
from .inputs import example_inputs as _example_inputs
from .record import lowered_record
from .runtime import InputGuard, check_input_size
from .serialize import from_dict, to_dict

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

    Returns:
        ``path``. Load it with :func:`load_exported`.

    Raises:
        LoweringError: an unknown format, a module lowered with ``pad="auto"``, or ``sizes``
            with a format other than ``"aoti"``.
        ShapeError: a size in ``sizes`` does not fit the graph.
    """
    with warnings.catch_warnings():
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
        files = torch._inductor.aot_compile(program.module(), args, options=_aoti_configs(inductor_configs))
    with steps.step("packaging"):
        package_pt2(buffer, aoti_files={"model": files}, extra_files={_DOC: doc})
        write_atomic(path, buffer.getvalue())
    return path


def _aoti_configs(inductor_configs: dict[str, Any] | None) -> dict[str, Any]:
    return {**({"freezing": True} if inductor_configs is None else inductor_configs), "aot_inductor.package": True}


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
                models[name] = torch._inductor.aot_compile(
                    program.module(), tuple(args.values()), options=_aoti_configs(inductor_configs)
                )
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
    """What an artifact carries: the graph (everything else is derived from it on loading) and
    the dtype each input was traced with (an artifact is specialised to it)."""
    return {
        "format": _DOC_FORMAT,
        "version": _DOC_VERSION,
        "kind": kind,
        "batch": batch,
        "max_size": max_size,
        "dtypes": {name: str(x.dtype).removeprefix("torch.") for name, x in args.items()},
        "graph": to_dict(g),
    }


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
            if data.get("format") != _DOC_FORMAT or data.get("version") != _DOC_VERSION:
                raise ValueError(f"format {data.get('format')!r} version {data.get('version')!r}")
            self.kind: str = data["kind"]
            self.batch = bool(data["batch"])
            max_size = data["max_size"]
            self.dtypes = {name: _dtype(text) for name, text in data.get("dtypes", {}).items()}
            self.graph = from_dict(data["graph"])  # plain data: nothing in it runs
            bucketed = data.get("buckets")
            self.buckets = None if bucketed is None else Buckets.of(self.graph, [tuple(s) for s in bucketed["sizes"]])
            self.batches = () if bucketed is None else tuple(sorted(int(b) for b in bucketed["batches"]))
        except (ValueError, KeyError, TypeError, UNetGraphError) as e:
            raise LoweringError(f"{source}: not a unetgraph export ({type(e).__name__}: {e})") from None
        g = self.graph
        self.name = g.name
        self.rules = valid_sizes(g)
        self.served = served_axes(g, max_size=max_size)
        self.spatial = self.rules.input
        self.guards = [
            InputGuard(
                n, g[n].type.channels, g[n].type.dims, None, form=g[n].type.form, signature=g.inputs, match_module=False
            )
            for n in g.inputs
        ]

    def prepare(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Check ``inputs`` in the checker's words; timesteps of another dtype (``int64`` from a
        scheduler) are cast to the traced one, any other dtype mismatch is refused."""
        if len(inputs) > len(self.guards):
            raise ShapeError(f"{self.name} takes {len(self.guards)} inputs ({', '.join(self.graph.inputs)})")
        ready = []
        for guard, x in itertools.zip_longest(self.guards, inputs):
            guard(x)  # rank, channels, dtype; names a missing input
            if guard.name == self.spatial and self.buckets is not None:
                check_input_size(self.spatial, self.rules, tuple(x.shape[2:]))
                self.buckets.choose(tuple(x.shape[2:]))
            elif guard.name == self.spatial:
                check_served(self.spatial, self.rules, self.served, tuple(x.shape[2:]))
            want = self.dtypes.get(guard.name, x.dtype)
            if x.dtype != want:
                if guard.form not in ("scalar", "index"):
                    raise ShapeError(
                        f"input {guard.name} is {x.dtype}; this artifact was exported for {want}: "
                        f"pass {guard.name}.to({want})",
                        node=guard.name,
                    )
                x = x.to(want)
            ready.append(x)
        return tuple(ready)

    def describe(self) -> str:
        ins = ", ".join(f"{g.name} {g._expect()}" for g in self.guards)
        if self.buckets is not None:
            batches = ", ".join(map(str, self.batches))
            return f"{self.name} [{self.kind}]: {ins}; {self.buckets.describe()}; batches {batches}"
        return f"{self.name} [{self.kind}]: {ins}; serves {', '.join(a.describe() for a in self.served)}"


class _BucketRunner:
    """Runs a bucketed AOTInductor package: pads the image input up to its size bucket and the
    batch up to the smallest batch compiled, runs that static model, cuts the outputs back."""

    def __init__(self, spec: _Spec, buckets: Buckets, path: Path) -> None:
        self.spec, self.buckets = spec, buckets
        self.position = spec.graph.inputs.index(self.buckets.input)
        from torch.export.pt2_archive._package import load_pt2

        runners = load_pt2(str(path)).aoti_runners  # every model of the package, loaded once
        try:
            self.models = {(b, size): runners[_bucket_model(b, size)] for b in spec.batches for size in buckets.sizes}
        except KeyError as e:
            raise LoweringError(f"{path}: the package lacks the model {e} its document lists") from None

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

    ``forward`` refuses an input of the wrong rank, channels or size with a
    :class:`~unetgraph.errors.ShapeError` in the checker's words, then runs the artifact.
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

    def forward(self, *inputs: torch.Tensor) -> Any:
        inputs = self.spec.prepare(inputs)
        run = self.module if hasattr(self, "module") else self._run
        return run(*inputs)

    def extra_repr(self) -> str:
        return self.spec.describe()


class OnnxUNet:
    """A loaded ``.onnx`` export run by onnxruntime, checking sizes first; call it with tensors.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (default: ``torch.get_num_threads()``).
        spinning: let onnxruntime's idle threads spin (fast alone, but they steal CPU from
            anything else in the process, which distorts side-by-side timings).
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, spinning: bool = False) -> None:
        import onnx
        import onnxruntime as ort

        path = Path(path)
        model = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
        if _DOC not in props:
            raise LoweringError(f"{path}: not a unetgraph export (no {_DOC} metadata)")
        self.spec = _Spec(props[_DOC], str(path))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        flag = "1" if spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", flag)
        options.add_session_config_entry("session.inter_op.allow_spinning", flag)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    @property
    def graph(self) -> UNetGraph:
        """The architecture the artifact was exported from."""
        return self.spec.graph

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        inputs = self.spec.prepare(inputs)
        feeds = {n: x.detach().cpu().numpy() for n, x in zip(self.input_names, inputs)}
        outs = [torch.from_numpy(o) for o in self.session.run(None, feeds)]
        return outs[0] if len(outs) == 1 else dict(zip(self.spec.outputs, outs))

    def __repr__(self) -> str:
        return f"OnnxUNet({self.spec.describe()})"


def load_exported(path: str | Path, **options: Any) -> ExportedUNet | OnnxUNet:
    """Load an export made by :func:`export`, without executing pickled code.

    ``.onnx`` gives an :class:`OnnxUNet` (``options`` go to it); ``.pt2`` an
    :class:`ExportedUNet` around the ``torch.export`` program or the AOTInductor package.

    Raises:
        LoweringError: the file is not a unetgraph export, or a ``.pt2`` holds pickled data.
    """
    path = Path(path)
    if path.suffix == ".onnx":
        return OnnxUNet(path, **options)
    doc = _inspect_pt2(path)
    spec = _Spec(doc, str(path))
    if spec.kind == "aoti" and spec.buckets is not None:
        return ExportedUNet(spec, _BucketRunner(spec, spec.buckets, path))
    if spec.kind == "aoti":
        runner = torch._inductor.aoti_load_package(str(path))
        return ExportedUNet(spec, runner)
    program = torch.export.load(str(path))
    return ExportedUNet(spec, program.module(), program)


def _inspect_pt2(path: Path) -> str:
    """Refuse a ``.pt2`` whose loading would unpickle anything; return our document."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise LoweringError(f"{path}: not a .pt2 archive ({e})") from None
    with archive:
        full = archive.namelist()
        root = full[0].split("/", 1)[0] + "/" if full else ""
        names = [n.removeprefix(root) for n in full]

        def read(name: str) -> bytes:
            return archive.read(root + name)

        doc_name = f"extra/{_DOC}"
        if doc_name not in names:
            raise LoweringError(f"{path}: not a unetgraph export (no {doc_name})")
        for name in names:
            where = f"{path}: {name}"
            if name.startswith(("data/weights/", "data/constants/")) and name.endswith("_config.json"):
                config = json.loads(read(name)).get("config", {})
                for key, meta in config.items():
                    if meta.get("use_pickle") or not str(meta.get("path_name", "")).startswith(("weight_", "tensor_")):
                        raise LoweringError(f"{where} stores {key} as a pickled object; refusing to load it")
            elif name.startswith(("data/weights/", "data/constants/")) and name.endswith(".pt"):
                raise LoweringError(f"{where}: a pickled (legacy) tensor file; refusing to load it")
            elif name.startswith("data/sample_inputs/"):
                try:
                    torch.load(io.BytesIO(read(name)), weights_only=True)
                except Exception as e:
                    raise LoweringError(f"{where}: example inputs are not plain tensors ({e}); refusing") from None
        return read(doc_name).decode("utf-8")
