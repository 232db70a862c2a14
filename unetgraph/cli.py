"""The ``unetgraph`` command.

``unetgraph demo`` runs the whole flow on a default U-Net and prints a short report:
build the graph, check it statically, lower it to a GraphModule, verify the real shapes
against the checker's, compile it with ``torch.compile(fullgraph=True)`` and compare.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from .check import check
from .errors import UNetGraphError
from .files import write_atomic

__all__ = ["main"]


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def demo(args: argparse.Namespace) -> int:
    from .build import unet
    from .lower import fx_node_names

    torch.manual_seed(0)
    out = Path(args.out)
    size = args.size
    shape = (args.batch, 3, size, size)
    say = print
    say(f"unetgraph demo: a default U-Net, widths {tuple(args.widths)}, input {shape}\n")

    g, t = _timed(lambda: unet(3, 2, widths=tuple(args.widths)))
    say(f"1. built     {g!r}  [{t * 1e3:.1f} ms]")

    report, t = _timed(lambda: check(g, shape))
    say(f"2. checked   {shape} → {report.outputs['head']}; valid sizes: {g.valid_sizes()}  [{t * 1e3:.1f} ms]")

    gm, t = _timed(lambda: g.lower().eval())
    fx_nodes = len(list(gm.graph.nodes))
    say(f"3. lowered   GraphModule {type(gm).__name__}: {fx_nodes} fx nodes, graph.lint() clean  [{t * 1e3:.1f} ms]")

    from torch.fx.passes.shape_prop import ShapeProp

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
    say(f"4. ran       eager forward: real shapes equal the checker's at all {len(g)} nodes (ShapeProp)")

    if args.no_compile:
        say("5. compiled  skipped (--no-compile)")
    else:
        compiled = torch.compile(gm, fullgraph=True, backend=args.backend)
        with torch.no_grad():
            y, t = _timed(lambda: compiled(x))
        diff = (y - eager).abs().max().item()
        say(
            f"5. compiled  torch.compile(fullgraph=True, backend={args.backend!r}) in {t:.1f} s; "
            f"max |compiled − eager| = {diff:.1e}"
        )
        with torch.no_grad():
            e_ms = _median_ms(lambda: gm(x), args.repeat)
            c_ms = _median_ms(lambda: compiled(x), args.repeat)
        say(f"6. timed     eager {e_ms:.1f} ms, compiled {c_ms:.1f} ms (median of {args.repeat}) → {e_ms / c_ms:.2f}×")

    write_atomic(out / "report.txt", str(report) + "\n")
    write_atomic(out / "forward.py", gm.code)
    say(f"\nwrote {out / 'report.txt'} (the checker's table) and {out / 'forward.py'} (the lowered forward)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unetgraph", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="build, check, lower, compile and run a default U-Net, with a short report")
    d.add_argument("--size", type=int, default=128, help="input height and width (default 128)")
    d.add_argument("--batch", type=int, default=1)
    d.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    d.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    d.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    d.add_argument("--repeat", type=int, default=5, help="timing repeats")
    d.add_argument("--out", default="demo-out", help="folder for the report files (default demo-out)")
    args = parser.parse_args(argv)
    try:
        return demo(args)
    except UNetGraphError as e:
        print(f"unetgraph: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
