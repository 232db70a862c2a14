"""MONAI models imported with ``ug.interop.from_monai`` against the originals, same weights, one process.

    .venv/bin/python -m benchmarks.interop_monai                         # BasicUNet, UNet, DynUNet at 128², batch 1
    .venv/bin/python -m benchmarks.interop_monai --models unet --size 96
    .venv/bin/python -m benchmarks.interop_monai --tiny --no-compile     # a smoke run (seconds)

For each model: MONAI eager, the imported module eager and ``optimize()``d, then (unless
``--no-compile``) MONAI compiled (``fullgraph=False``: MONAI's BasicUNet breaks the graph) and the
optimize()d import compiled with ``fullgraph=True``, both with inductor and frozen weights;
median milliseconds over interleaved rounds, speed-up against MONAI eager, first-call (compile)
seconds, graphs and breaks. Outputs are compared before anything is timed. Inductor's caches
are disabled unless ``--cache``, so compile times are cold.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable

MODELS = ("basic", "unet", "dynunet")


def build(name: str, tiny: bool, in_channels: int = 1, out_channels: int = 2) -> Any:
    """The MONAI model ``name``, 2D (``tiny``: a few channels, for a smoke run)."""
    from monai.networks import nets

    if name == "basic":
        features = (4, 4, 8, 8, 16, 4) if tiny else (32, 32, 64, 128, 256, 32)
        return nets.BasicUNet(2, in_channels, out_channels, features=features)
    if name == "unet":
        channels = (4, 8, 16) if tiny else (32, 64, 128, 256, 512)
        return nets.UNet(2, in_channels, out_channels, channels, (2,) * (len(channels) - 1), num_res_units=2)
    kernels, strides = [3] * (3 if tiny else 5), [1] + [2] * (2 if tiny else 4)
    filters = [4, 8, 16] if tiny else [32, 64, 128, 256, 320]
    return nets.DynUNet(2, in_channels, out_channels, kernels, strides, strides[1:], filters=filters, res_block=True)


def median_ms(models: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    from unetgraph.util import interleaved_ms

    return interleaved_ms(models, repeat)


def section(name: str, args: argparse.Namespace) -> None:
    import torch

    import unetgraph as ug
    from benchmarks.deploy import compile_model, graph_breaks, params
    from benchmarks.layers import randomize

    model = randomize(build(name, args.tiny)).eval()
    _, gm = ug.interop.from_monai(model)
    gm.eval()
    x = torch.randn(args.batch, 1, args.size, args.size)
    fast, _ = ug.optimize(gm, example_inputs=[x])
    want = model(x)
    for label, m in (("imported", gm), ("optimize()d", fast)):
        diff = (m(x) - want).abs().max().item()
        if diff > 1e-3 * max(1.0, want.abs().max().item()):
            raise SystemExit(f"{name}: the {label} module differs from MONAI's by {diff:.3g}")
    rows: dict[str, tuple[Callable[[Any], Any], dict[str, Any]]] = {
        "MONAI eager": (model, {}),
        "imported eager": (gm, {}),
        "imported optimize()d eager": (fast, {}),
    }
    if not args.no_compile:
        for label, m, fullgraph in (("MONAI compiled", model, False), ("imported optimize()d compiled", fast, True)):
            breaks = graph_breaks(m, (x,))
            torch._dynamo.reset()
            compiled, seconds, graphs = compile_model(m, (x,), fullgraph)
            rows[label] = (compiled, {"compile": seconds, "graphs": graphs, "breaks": breaks})
    ms = median_ms({label: (lambda fn=fn: fn(x)) for label, (fn, _) in rows.items()}, args.repeat)
    base = ms["MONAI eager"]
    print(f"== MONAI {type(model).__name__} ({params(model):,} parameters), input {tuple(x.shape)}")
    print(f"{'model':<32} {'ms':>9} {'speed-up':>9} {'compile s':>10} {'graphs':>7} {'breaks':>7}")
    for label, (_, info) in rows.items():
        compile_s = "" if "compile" not in info else f"{info['compile']:.1f}"
        print(
            f"{label:<32} {ms[label]:>9.2f} {base / ms[label]:>8.2f}× {compile_s:>10} "
            f"{info.get('graphs', ''):>7} {info.get('breaks', ''):>7}"
        )
    print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="a few channels per level: a smoke run")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--cache", action="store_true", help="keep inductor's caches (warm compile times)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.cache:
        os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"
    import torch
    import torch._inductor.config

    torch._inductor.config.freezing = True  # every compiled row, MONAI's included
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    with torch.no_grad():
        for name in args.models:
            section(name, args)


if __name__ == "__main__":
    main()
