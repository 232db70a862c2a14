"""The measured table behind the ``prepack`` pass's rule: oneDNN convolutions with plain (channels-last)
weights against weights kept in oneDNN's blocked layout, layer shape by layer shape; and ``F.linear``
(MKL's GEMM) against oneDNN's inner product with a packed weight.

    .venv/bin/python -m benchmarks.prepack              # 2D and 3D, 3×3 / 2×2 transposed / 1×1, batch 1 and 8
    .venv/bin/python -m benchmarks.prepack --quick      # a few shapes
    .venv/bin/python -m benchmarks.prepack --verbose    # also show oneDNN's own log for one layer

With plain weights, every call of ``F.conv2d`` on the CPU hands oneDNN a weight in torch's
layout and oneDNN reorders it into its blocked layout first (``ONEDNN_VERBOSE=1`` shows a
``reorder`` of the whole weight before each ``brg_conv_fwd``): time proportional to the
weight, not to the work. A prepacked weight skips it. The table prints, per layer shape, the
time of each and the speed-up; the pass applies wherever the table says it does not lose.
For ``linear`` rows, "size" is the tokens per side (``size²`` rows per image; 1: one vector, a
time embedding's projection) and "plain" is ``F.linear``, which runs on MKL's GEMM: on AMD CPUs
MKL takes its AVX2 code path.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from benchmarks.layers import timed_ms

Shape = tuple[str, int, int, int, int, int]  # kind, dims, cin, cout, spatial, batch


def grid(quick: bool) -> list[Shape]:
    """The layer shapes of U-Nets from 16 to 1024 channels, at the sizes their levels see."""
    shapes: list[Shape] = []
    pairs = ((64, 128), (256, 32), (1024, 8)) if quick else ((16, 128), (64, 128), (128, 64), (256, 32), (512, 16))
    pairs += () if quick else ((512, 8), (1024, 8), (1024, 4), (128, 4), (32, 8))
    for batch in (1, 8):
        for c, s in pairs:
            shapes.append(("3x3", 2, c, c, s, batch))
            shapes.append(("2x2 transposed", 2, c, c // 2, s, batch))
            if not quick:
                shapes.append(("1x1", 2, c, c, s, batch))
        for c, s in ((32, 64), (128, 16), (512, 4)) if not quick else ((64, 32), (512, 4)):
            shapes.append(("3x3", 3, c, c, s, batch))
            shapes.append(("2x2 transposed", 3, c, c // 2, s, batch))
        # attention (query/key/value, output) and time-embedding layers of diffusion U-Nets
        linears = ((256, 768, 16), (256, 256, 16), (512, 1536, 8), (128, 512, 1), (512, 4096, 1))
        for cin, cout, s in linears[::2] if quick else linears:
            shapes.append(("linear", 0, cin, cout, s, batch))
    return shapes


def _linear(cin: int, cout: int, s: int, batch: int) -> tuple[dict[str, Callable], int]:
    x = torch.randn(batch, s * s, cin)
    w = torch.randn(cout, cin)
    packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
    return {
        "plain": lambda: F.linear(x, w),
        "packed": lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""),
    }, 2 * cin * cout * s * s * batch


def _layer(kind: str, dims: int, cin: int, cout: int, s: int, batch: int) -> tuple[dict[str, Callable], int]:
    if kind == "linear":
        return _linear(cin, cout, s, batch)
    fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
    x = torch.randn(batch, cin, *(s,) * dims).contiguous(memory_format=fmt)
    ones, zeros = [1] * dims, [0] * dims
    if kind == "2x2 transposed":
        w = torch.randn(cin, cout, *(2,) * dims).contiguous(memory_format=fmt)
        twos = [2] * dims
        conv = F.conv_transpose2d if dims == 2 else F.conv_transpose3d
        packed = torch.ops.mkldnn._reorder_convolution_transpose_weight(w, zeros, zeros, twos, ones, 1, list(x.shape))
        flops = 2 * cin * cout * 2**dims * s**dims * batch
        return {
            "plain": lambda: conv(x, w, stride=2),
            "packed": lambda: torch.ops.mkldnn._convolution_transpose_pointwise(
                x, packed, None, zeros, zeros, twos, ones, 1, "none", [], ""
            ),
        }, flops
    k = 3 if kind == "3x3" else 1
    pad = [k // 2] * dims
    w = torch.randn(cout, cin, *(k,) * dims).contiguous(memory_format=fmt)
    conv = F.conv2d if dims == 2 else F.conv3d
    packed = torch.ops.mkldnn._reorder_convolution_weight(w, pad, ones, ones, 1, list(x.shape))
    flops = 2 * cin * cout * k**dims * s**dims * batch
    return {
        "plain": lambda: conv(x, w, padding=k // 2),
        "packed": lambda: torch.ops.mkldnn._convolution_pointwise(x, packed, None, pad, ones, ones, 1, "none", [], ""),
    }, flops


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few shapes")
    p.add_argument("--repeat", type=int, default=7, help="timed rounds (medians)")
    p.add_argument("--verbose", action="store_true", help="show oneDNN's log for a 1024→1024 3×3 layer at 8×8")
    args = p.parse_args(argv)
    if not torch.backends.mkldnn.is_available():
        raise SystemExit(f"torch {torch.__version__} was built without oneDNN: nothing to prepack")
    print(f"{os.cpu_count()} CPUs, {torch.get_num_threads()} threads, torch {torch.__version__}; {args.repeat} rounds")
    print(
        f"{'layer':<16} {'dims':>4} {'cin':>5} {'cout':>5} {'size':>5} {'batch':>5} {'weight MB':>9} "
        f"{'plain ms':>9} {'packed ms':>9} {'speed-up':>8} {'GFLOP/s packed':>14}"
    )
    worst = float("inf")
    with torch.no_grad():
        for kind, dims, cin, cout, s, batch in grid(args.quick):
            fns, flops = _layer(kind, dims, cin, cout, s, batch)
            ms = timed_ms(fns, args.repeat, warmup=2)
            k = 3 if kind == "3x3" else (2 if "transposed" in kind else 1)
            weight_mb = cin * cout * k**dims * 4 / 2**20  # a Linear's: dims 0
            ratio = ms["plain"] / ms["packed"]
            worst = min(worst, ratio)
            print(
                f"{kind:<16} {dims:>4} {cin:>5} {cout:>5} {s:>5} {batch:>5} {weight_mb:>9.2f} {ms['plain']:>9.3f} "
                f"{ms['packed']:>9.3f} {ratio:>7.2f}× {flops / (ms['packed'] * 1e6):>14.1f}"
            )
    print(f"\nworst speed-up of prepacking over the table: {worst:.2f}×")
    if args.verbose:
        code = (
            "import torch, torch.nn.functional as F\n"
            "x = torch.randn(1, 1024, 8, 8).contiguous(memory_format=torch.channels_last)\n"
            "w = torch.randn(1024, 1024, 3, 3).contiguous(memory_format=torch.channels_last)\n"
            "p = torch.ops.mkldnn._reorder_convolution_weight(w, [1, 1], [1, 1], [1, 1], 1, list(x.shape))\n"
            "def packed():\n"
            "    torch.ops.mkldnn._convolution_pointwise(x, p, None, [1, 1], [1, 1], [1, 1], 1, 'none', [], '')\n"
            "with torch.no_grad():\n"
            "    F.conv2d(x, w, padding=1), packed()  # first calls create the primitives\n"
            "    print('-- plain weights', flush=True); F.conv2d(x, w, padding=1)\n"
            "    print('-- packed weights', flush=True); packed()\n"
        )
        env = {**os.environ, "ONEDNN_VERBOSE": "1"}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
        print("\noneDNN's log (ONEDNN_VERBOSE=1; primitive, implementation, memory formats, ms):")
        lines = [ln for ln in out.splitlines() if ln.startswith("--") or ",exec," in ln]
        start = next(i for i, ln in enumerate(lines) if ln.startswith("--"))
        for line in lines[start:]:
            fields = line.split(",")
            print("  " + (line if line.startswith("--") else "  ".join(fields[5:7] + fields[8:9] + fields[-1:])))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
