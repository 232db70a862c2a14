"""How long drawing takes: DOT text for graphs of 1,000 and 10,000 nodes (the target: 10,000 in
under 2 s), at each detail level, with and without annotations from the cost model.

    .venv/bin/python -m benchmarks.render [--repeat 5]

Two shapes of large graph: *deep* (``ug.unet`` with 2,000 levels of one resolution: many rows)
and *long* (four levels whose arms are chains of hundreds of blocks, checked at an input shape
so labels carry shapes and FLOPs). Medians of ``--repeat`` runs; the time per node at 1k and
10k nodes shows the cost is linear (it stays about flat; the machine's noise aside). ``dot`` itself is
not timed: laying out 10,000 boxes is graphviz's work and takes it minutes.
"""

from __future__ import annotations

import argparse
import functools
from typing import Callable

import unetgraph as ug
from unetgraph.util import median_ms


def deep(nodes: int) -> ug.UNetGraph:
    """``ug.unet`` with as many levels as gives about ``nodes`` nodes (5 per level). The levels
    keep the resolution (factor 1), so any input fits and labels stay short."""
    return ug.unet(
        1,
        1,
        widths=(2,) * max(1, (nodes - 3) // 5 + 1),
        block=ug.ConvBlock(norm="none", convs=1),
        down=ug.Down(factor=1),
        up=ug.Up(factor=1, kernel=1),
    )


def long(nodes: int, levels: int = 4) -> ug.UNetGraph:
    """A U-Net whose every level is a chain of blocks on each arm (about ``nodes`` nodes)."""
    per_arm = max(1, nodes // (2 * levels - 1))
    b = ug.GraphBuilder("Long")
    h = b.input("x", channels=1, dims=2)
    block = ug.ConvBlock(channels=2, convs=1, norm="none")
    skips = []
    for lv in range(levels):
        if lv:
            h = b.add(f"down{lv}", ug.Down(), "down", lv, [h])
        role = "bottleneck" if lv == levels - 1 else "encoder"
        for k in range(per_arm):
            h = b.add(f"enc{lv}_{k}", block, role, lv, [h])
        skips.append(h)
    for lv in reversed(range(levels - 1)):
        h = b.add(f"up{lv}", ug.Up(channels=2), "up", lv, [h])
        h = b.add(f"merge{lv}", ug.Merge(), "merge", lv, [ug.In(skips[lv], "skip"), h])
        for k in range(per_arm):
            h = b.add(f"dec{lv}_{k}", block, "decoder", lv, [h])
    b.add("head", ug.Head(channels=1), "head", 0, [h])
    return b.build(["head"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)

    cases: list[tuple[str, Callable[[ug.UNetGraph], object]]] = [
        ("to_dot blocks", lambda g: g.to_dot("blocks")),
        ("to_dot levels", lambda g: g.to_dot("levels")),
        ("render() Digraph", lambda g: g.render("blocks")),
        ("to_dot blocks + shapes, FLOPs", lambda g: g.to_dot("blocks", input_shape=(1, 1, 64, 64))),
        ("summary (cost model)", lambda g: g.summary((1, 1, 64, 64))),
    ]
    print(f"median of {args.repeat} runs; µs/node: linear cost keeps it flat from 1k to 10k nodes\n")
    print(f"{'graph':<6} {'what':<32} {'1k nodes':>9} {'10k nodes':>10} {'µs/node 1k':>11} {'10k':>6}")
    worst = 0.0
    for name, make in (("deep", deep), ("long", long)):
        small, big = make(1_000), make(10_000)
        for what, fn in cases:
            a, b = (median_ms(functools.partial(fn, graph), args.repeat, warmup=0) / 1e3 for graph in (small, big))
            if what.startswith("to_dot"):
                worst = max(worst, b)
            per = (1e6 * a / len(small), 1e6 * b / len(big))
            print(f"{name:<6} {what:<32} {a:>8.3f}s {b:>9.3f}s {per[0]:>11.0f} {per[1]:>6.0f}")
    print(f"\nslowest 10k-node DOT: {worst:.2f} s (target < 2 s): {'OK' if worst < 2 else 'TOO SLOW'}")


if __name__ == "__main__":
    main()
