"""What unetgraph costs over hand-written PyTorch.

1. Forward: the lowered GraphModule against a hand-written module of the same architecture
   and weights (eager, inference), timed alternately in one process. Target: within 2%.
2. Graph machinery: build + check + lower a 6-level U-Net (structure only, on the meta
   device; and with weight initialisation, next to constructing the hand-written model).
   Target: under 50 ms for the structure.
3. The checker on synthetic graphs of 2,500 to 20,000 nodes. Target: 10,000 nodes under 1 s,
   growth linear.

    .venv/bin/python benchmarks/overhead.py [--size 128] [--repeat 30] [--quick]

Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import unetgraph as ug
from benchmarks.handwritten import HandWrittenUNet, copy_weights
from unetgraph.util import interleaved_ms, median_ms


def forward_overhead(size: int, repeat: int, widths: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    g = ug.unet(3, 2, widths=widths)
    gm = g.lower().eval()
    hand = HandWrittenUNet(3, 2, widths).eval()
    copy_weights(gm, hand)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        assert torch.equal(gm(x), hand(x))
        t = interleaved_ms({"lowered": lambda: gm(x), "hand-written": lambda: hand(x)}, repeat, warmup=3)
    ratio = t["lowered"] / t["hand-written"]
    print(f"forward, eager, {len(widths)}-level U-Net {widths}, input {tuple(x.shape)}, median of {repeat}:")
    print(f"  hand-written {t['hand-written']:8.2f} ms")
    print(f"  lowered      {t['lowered']:8.2f} ms   ratio {ratio:.3f} (target ≤ 1.02)")


def machinery(repeat: int) -> None:
    widths = (32, 64, 128, 256, 512, 1024)

    def structure() -> None:
        g = ug.unet(3, 2, widths=widths)
        g.check((1, 3, 256, 256))
        g.lower(device="meta")

    def with_init() -> None:
        g = ug.unet(3, 2, widths=widths)
        g.check((1, 3, 256, 256))
        g.lower()

    s = median_ms(structure, repeat, warmup=2)
    both = interleaved_ms(
        {"lower": with_init, "hand": lambda: HandWrittenUNet(3, 2, widths)}, max(7, repeat // 3), warmup=3
    )
    w, h = both["lower"], both["hand"]
    print(f"\nbuild + check + lower, 6-level U-Net {widths}, median:")
    print(f"  structure only (device='meta')   {s:8.1f} ms   (target < 50 ms)")
    print(f"  with weight initialisation       {w:8.1f} ms")
    print(f"  hand-written model construction  {h:8.1f} ms   (weight init dominates both: ratio {w / h:.2f})")


def synthetic(nodes: int) -> ug.UNetGraph:
    """A 4-level 1D U-Net whose levels are long chains of small ConvBlocks: about ``nodes`` nodes."""
    levels = 4
    chain = max(1, (nodes - 4 * levels) // (2 * levels - 1))
    b = ug.GraphBuilder("Synthetic")
    h = b.input("x", channels=2, dims=1)
    block = ug.ConvBlock(channels=2, convs=1, norm="none", kernel=1)
    skips = []
    for lvl in range(levels):
        for i in range(chain):
            h = b.add(f"enc{lvl}_{i}", block, "encoder" if lvl < levels - 1 else "bottleneck", lvl, [h])
        if lvl < levels - 1:
            skips.append(h)
            h = b.add(f"down{lvl + 1}", ug.Down(), "down", lvl + 1, [h])
    for lvl in reversed(range(levels - 1)):
        h = b.add(f"up{lvl}", ug.Up(channels=2), "up", lvl, [h])
        h = b.add(f"merge{lvl}", ug.Merge("add"), "merge", lvl, [ug.In(skips[lvl], ug.EdgeKind.SKIP), h])
        for i in range(chain):
            h = b.add(f"dec{lvl}_{i}", block, "decoder", lvl, [h])
    b.add("head", ug.Head(channels=1), "head", 0, [h])
    return b.build(["head"])


def checker_scaling(quick: bool) -> None:
    print("\nchecker on synthetic graphs (check only; graph construction shown apart), median:")
    sizes = (2_500, 5_000, 10_000) if quick else (2_500, 5_000, 10_000, 20_000)
    per_node = []
    for n in sizes:
        t = time.perf_counter()
        g = synthetic(n)
        built = time.perf_counter() - t
        ms = median_ms(lambda g=g: g.check((1, 2, 64)), 3 if quick else 5, warmup=1)
        per_node.append(ms / len(g))
        target = "   (target < 1000 ms)" if n == 10_000 else ""
        print(
            f"  {len(g):6d} nodes: check {ms:7.1f} ms, {ms / len(g) * 1e3:5.1f} µs/node; "
            f"built in {built * 1e3:6.0f} ms{target}"
        )
    print(f"  growth: µs/node from smallest to largest ×{per_node[-1] / per_node[0]:.2f} (1.0 = linear)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    args = parser.parse_args()
    repeat = 8 if args.quick else args.repeat
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}\n"
    )
    forward_overhead(args.size, repeat, (64, 128, 256, 512, 1024))
    machinery(repeat)
    checker_scaling(args.quick)


if __name__ == "__main__":
    main()
