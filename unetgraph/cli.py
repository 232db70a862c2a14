"""The ``unetgraph`` command.

``unetgraph demo`` runs the whole flow on a default U-Net and prints a short report: build the
graph, check it statically, draw it, lower it to a GraphModule and verify the real shapes
against the checker's, optimize it for inference, compile it with
``torch.compile(fullgraph=True)``, time it, export it and eject it as plain PyTorch.

``unetgraph check|draw|eject SPEC`` work on a saved graph (``.yaml``/``.json``, see
``g.save``) or a preset (``preset:ddpm_unet``).
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable, Sequence, TextIO, TypeVar

import torch

from .check import check
from .errors import FileError, RenderError, ShapeError, SpecError, UNetGraphError
from .files import write_atomic
from .graph import UNetGraph
from .util import median_ms

__all__ = ["main"]


T = TypeVar("T")


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def demo(args: argparse.Namespace) -> int:
    from torch.fx.passes.shape_prop import ShapeProp

    from .build import unet
    from .dynamic import compile as compile_unet
    from .eject import eject
    from .export import export, load_exported
    from .lower import fx_node_names
    from .passes import optimize
    from .render import find_dot

    torch.manual_seed(0)
    _check_demo_sizes(args.batch, args.size, args.widths)
    if not args.no_compile:
        _check_backend(args.backend)
    out = Path(args.out)
    shape = (args.batch, 3, args.size, args.size)
    say = print
    say(f"unetgraph demo: a default U-Net, widths {tuple(args.widths)}, input {shape}\n")

    g, t = _timed(lambda: unet(3, 2, widths=tuple(args.widths)))
    say(f"1. built      {g!r}  [{t * 1e3:.1f} ms]")

    report, t = _timed(lambda: check(g, shape))
    cost = g.summary(shape)
    say(
        f"2. checked    {shape} → {report.outputs['head']}, {(cost.flops or 0) / 1e9:.1f} GFLOPs; "
        f"valid sizes: {g.valid_sizes()}  [{t * 1e3:.1f} ms]"
    )

    try:
        find_dot()
        figure = g.save_figure(out / "unet.svg", "blocks", input_shape=shape)
    except RenderError as e:  # no graphviz: DOT text still works
        figure = g.save_figure(out / "unet.dot", "blocks", input_shape=shape)
        say(f"   ({e})")
    say(f"3. drawn      {figure} (encoder left, decoder right, skips across)")

    gm, t = _timed(lambda: g.lower().eval())
    say(
        f"4. lowered    GraphModule {type(gm).__name__}: {len(gm.graph.nodes)} fx nodes, lint-clean  [{t * 1e3:.1f} ms]"
    )

    x = torch.randn(*shape)
    with torch.no_grad():
        ShapeProp(gm).propagate(x)
        eager = gm(x)
    names = fx_node_names(gm)
    fx_by_name = {n.name: n for n in gm.graph.nodes}
    mismatch = [n for n in g if tuple(fx_by_name[names[n]].meta["tensor_meta"].shape) != report[n].output]
    if mismatch:
        say(f"   MISMATCH between checker and real shapes at {', '.join(mismatch)}")
        return 1
    say(f"5. ran        eager forward: real shapes equal the checker's at all {len(g)} nodes (ShapeProp)")

    fast, opt = optimize(gm, example_inputs=[x])
    changed = ", ".join(f"{p.name} {len(p.changes)}" for p in opt.passes if p.changes)
    fast16, opt16 = optimize(gm, dtype=torch.bfloat16, example_inputs=[x])
    say(
        f"6. optimized  {changed}; max |optimized − eager| = {opt.max_abs_diff:.1e}; "
        f"bfloat16 variant: max |bf16 − eager| = {opt16.max_abs_diff:.1e}"
    )

    timings = {"eager": lambda: gm(x), "optimized": lambda: fast(x), "optimized bf16": lambda: fast16(x)}
    if args.no_compile:
        say("7. compiled   skipped (--no-compile)")
    else:
        compiled = compile_unet(fast, backend=args.backend)
        with torch.no_grad():
            y, t = _timed(lambda: compiled(x))
        frozen = " with frozen weights" if compiled.options.get("freezing") else ""
        say(
            f"7. compiled   ug.compile(optimized, backend={args.backend!r}){frozen} in {t:.1f} s: "
            f"{compiled.compilations} graph, dynamic H and W; max |compiled − eager| = "
            f"{(y - eager).abs().max().item():.1e}"
        )
        timings["compiled"] = lambda: compiled(x)
    with torch.no_grad():
        ms = {k: median_ms(fn, args.repeat) for k, fn in timings.items()}
    say(
        "8. timed      "
        + ", ".join(f"{k} {v:.1f} ms ({ms['eager'] / v:.2f}×)" for k, v in ms.items())
        + f"  (median of {args.repeat})"
    )

    artifact = export(fast, out / "unet.pt2", progress=False)
    loaded = load_exported(artifact)
    with torch.no_grad():
        same = (loaded(x) - eager).abs().max().item()
    ejected = eject(fast, out / "unet_ejected.py")
    say(
        f"9. exported   {artifact} (torch.export, dynamic sizes; reloaded: max diff {same:.1e}); "
        f"ejected {ejected} (plain PyTorch)"
    )

    write_atomic(out / "report.txt", f"{report}\n\n{cost}\n")
    write_atomic(out / "forward.py", gm.code)
    g.save(out / "unet.yaml")
    say(
        f"\nalso wrote {out / 'report.txt'} (checker and cost tables), {out / 'forward.py'} (the lowered "
        f"forward), {out / 'unet.yaml'} (the graph as data)"
    )
    return 0


# the demo's bounds: an input of at most this many elements (1×3×2048×2048 fits), widths up to this
DEMO_MAX_INPUT_ELEMENTS = 3 * 2048 * 2048
DEMO_MAX_WIDTH = 4096


def _check_demo_sizes(batch: int, size: int, widths: Sequence[int]) -> None:
    """Refuse a demo input or width too large to run, before the demo writes anything.

    Raises:
        SpecError: naming the argument and the bound.
    """
    elements = batch * 3 * size * size
    if elements > DEMO_MAX_INPUT_ELEMENTS:
        raise SpecError(
            f"--size {size} --batch {batch}: the demo's input ({batch}, 3, {size}, {size}) has {elements:,} "
            f"elements, over the demo's limit of {DEMO_MAX_INPUT_ELEMENTS:,} (e.g. --batch 1 --size 2048)"
        )
    if max(widths) > DEMO_MAX_WIDTH:
        raise SpecError(f"--widths: {max(widths)} is over the demo's limit of {DEMO_MAX_WIDTH} channels")


def _check_backend(name: str) -> None:
    """Refuse an unknown ``torch.compile`` backend before the demo's first step, not at step 7."""
    from torch._dynamo import list_backends, lookup_backend

    try:
        lookup_backend(name)
    except Exception:
        raise SpecError(
            f"--backend: unknown torch.compile backend {name!r}; backends: {', '.join(list_backends())}"
        ) from None


def _builds_graph(fn: Callable[..., object]) -> bool:
    """Whether a :mod:`unetgraph.presets` function returns a graph (``smp_state_dict`` does not)."""
    return inspect.signature(fn).return_annotation in (UNetGraph, "UNetGraph")


def _presets() -> dict[str, Callable[[], UNetGraph]]:
    """The presets ``preset:NAME`` can name: the graph builders of :mod:`unetgraph.presets` callable
    without arguments, by name."""
    from . import presets

    out: dict[str, Callable[[], UNetGraph]] = {}
    for name in presets.__all__:
        fn = getattr(presets, name)
        params = inspect.signature(fn).parameters.values()
        if _builds_graph(fn) and all(
            p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params
        ):
            out[name] = fn
    return out


def _load(spec: str) -> UNetGraph:
    """A graph from a ``.yaml``/``.json`` document or ``preset:NAME``.

    Raises:
        SpecError: an unknown preset, one that needs arguments (use it from Python), or a name of
            :mod:`unetgraph.presets` that is not a graph builder.
    """
    from . import presets
    from .serialize import load

    if not spec.startswith("preset:"):
        return load(spec)
    name = spec.removeprefix("preset:")
    available = _presets()
    listed = f"presets: {', '.join(available)}"
    if name in available:
        return available[name]()
    if name not in presets.__all__:
        raise SpecError(f"unknown preset {name!r}; {listed}")
    if not _builds_graph(getattr(presets, name)):
        raise SpecError(f"{name!r} is a helper of unetgraph.presets, not a graph preset; {listed}")
    raise SpecError(
        f"preset {name!r} needs arguments, so it cannot be named on the command line: build it in Python "
        f"(ug.presets.{name}(...)) and save it; {listed}"
    )


def _refuse_overwrite(spec: str, output: str) -> None:
    """Refuse an ``-o`` output that is the input document itself (the same file, by any path).

    Raises:
        FileError: naming the file.
    """
    if spec.startswith("preset:"):
        return
    try:
        same = os.path.samefile(spec, output)
    except OSError:  # either one missing: not the same file
        same = False
    if same:
        raise FileError(f"{output}: the output is the input document {spec}; give another -o path")


def _shape(text: str | None) -> tuple[int, ...] | None:
    """``--shape 1,3,256,256`` (or ``1x3x256x256``) as a tuple of positive integers."""
    if text is None:
        return None
    parts = re.split(r"\s*[,x×]\s*", text.strip())
    if not all(re.fullmatch("[0-9]{1,9}", v) and int(v) > 0 for v in parts):
        raise SpecError(f"--shape: expected positive integers separated by commas, like 1,3,256,256; got {text!r}")
    return tuple(int(v) for v in parts)


def _inputs(g: UNetGraph, shape: tuple[int, ...] | None) -> dict[str, Sequence[int]]:
    from .inputs import input_shapes

    if shape is None:
        return dict(input_shapes(g))
    if len(g.inputs) == 1:
        return {g.inputs[0]: shape}
    x = next((n for n in g.inputs if g[n].type.dims), None)
    if x is not None and len(shape) != 2 + g[x].type.dims:
        raise SpecError(f"--shape: {g.name}'s input {x} takes {g[x].type.pattern()}, got {','.join(map(str, shape))}")
    if x is not None and shape[1] != g[x].type.channels:
        raise ShapeError(
            f"--shape: input {x} expects {g[x].type.channels} channels {g[x].type.pattern()}, got {shape[1]} "
            f"in shape {shape}",
            node=x,
        )
    return dict(input_shapes(g, batch=shape[0], size=shape[2:]))


def check_command(args: argparse.Namespace) -> int:
    g = _load(args.spec)
    shapes = _inputs(g, _shape(args.shape))
    print(check(g, shapes))
    print(f"valid sizes: {g.valid_sizes()}")
    if args.cost:
        print()
        print(g.summary(shapes))
    return 0


def draw_command(args: argparse.Namespace) -> int:
    _refuse_overwrite(args.spec, args.output)
    g = _load(args.spec)
    shapes = _inputs(g, _shape(args.shape)) if args.shape else None
    path = g.save_figure(args.output, args.detail, input_shape=shapes)
    print(f"wrote {path}")
    return 0


def eject_command(args: argparse.Namespace) -> int:
    from .eject import eject

    _refuse_overwrite(args.spec, args.output)
    path = eject(_load(args.spec), args.output)
    print(f"wrote {path}")
    return 0


def _positive(text: str) -> int:
    """An argparse type: a positive integer (argparse reports anything else in one line, exit 2)."""
    if not (text.strip().isdigit() and len(text.strip()) <= 9 and int(text) > 0):
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``unetgraph`` command; returns the exit status (0, or 2 for any error, which is
    printed as one line: ``unetgraph: SpecError: ...``; 1, quietly, when the reader of its output
    goes away, as ``unetgraph check ... | head`` does)."""
    parser = argparse.ArgumentParser(prog="unetgraph", description=__doc__.split("\n\n")[1].replace("\n", " "))
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="the whole flow on a default U-Net, with a short report")
    d.add_argument("--size", type=_positive, default=128, help="input height and width (default 128)")
    d.add_argument("--batch", type=_positive, default=1)
    d.add_argument("--widths", type=_positive, nargs="+", default=[64, 128, 256, 512, 1024])
    d.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    d.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    d.add_argument("--repeat", type=_positive, default=5, help="timing repeats")
    d.add_argument("--out", default="demo-out", help="folder for the files it writes (default demo-out)")
    d.set_defaults(run=demo)
    spec_help = "a saved graph (.yaml/.json) or preset:NAME"
    c = sub.add_parser("check", help="the checker's table (and the cost model's) for a graph")
    c.add_argument("spec", help=spec_help)
    c.add_argument("--shape", help="input shape N,C,H,W (default: the smallest valid size)")
    c.add_argument("--cost", action="store_true", help="also print params, FLOPs and memory per node")
    c.set_defaults(run=check_command)
    r = sub.add_parser("draw", help="draw a graph as a U (.svg, .png, .pdf, .dot)")
    r.add_argument("spec", help=spec_help)
    r.add_argument("-o", "--output", default="unet.svg")
    r.add_argument("--detail", choices=["levels", "blocks", "layers"], default="blocks")
    r.add_argument("--shape", help="input shape N,C,H,W, to label every output shape")
    r.set_defaults(run=draw_command)
    e = sub.add_parser("eject", help="write a graph as a standalone PyTorch file")
    e.add_argument("spec", help=spec_help)
    e.add_argument("-o", "--output", default="my_unet.py")
    e.set_defaults(run=eject_command)
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args)
        sys.stdout.flush()  # inside the try: a reader gone before the last write is caught below
        return status
    except UNetGraphError as e:
        print(f"unetgraph: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        _close_quietly(sys.stdout)  # so the flush at exit does not fail again
        return 1


def _close_quietly(stream: TextIO) -> None:
    """Close a stream whose reader has gone, dropping what it still buffers."""
    try:
        stream.close()
    except BrokenPipeError:
        pass  # closed all the same: the interpreter's exit will not flush it again


if __name__ == "__main__":
    sys.exit(main())
