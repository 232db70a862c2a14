"""``ug.presets.smp_unet`` against segmentation_models_pytorch's ``Unet``, same weights, one process.

    .venv/bin/python -m benchmarks.backbones                       # resnet34, 256², batch 1, training batch 4
    .venv/bin/python -m benchmarks.backbones --size 64 --repeat 2 --train-batch 2 --no-compile   # a smoke run
    .venv/bin/python -m benchmarks.backbones --encoder tu-convnext_atto   # any encoder smp_unet matches

Rows (inference under ``torch.no_grad()``, interleaved rounds, medians): smp eager, ours eager,
ours ``optimize()``d eager (batch norms folded into the convolutions, the backbone's included,
channels-last); compiled (inductor, frozen weights, cold caches): smp, ours, ours ``optimize()``d,
with compile time, graphs and graph breaks. Then one training step (forward, backward, SGD step;
train mode) eager, and compiled with ``--compile-train``. Outputs are compared before timing, and
the speed-up column is against smp's row of the same kind (eager, compiled, training).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from benchmarks import deploy
from benchmarks.deploy import Table, check_same, compile_model, flops, graph_breaks, row
from benchmarks.layers import conv_peak, matmul_peak, randomize


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", default="resnet34", help="smp's encoder_name (resnet34, tu-<timm name>, …)")
    p.add_argument("--size", type=int, default=256, help="input height and width")
    p.add_argument("--batch", type=int, default=1, help="inference batch")
    p.add_argument("--train-batch", type=int, default=4, help="training-step batch")
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--repeat", type=int, default=10, help="timed rounds (medians)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-compile", action="store_true", help="eager rows only")
    p.add_argument("--compile-train", action="store_true", help="add compiled training-step rows (slow)")
    p.add_argument("--cache", action="store_true", help="allow inductor's caches (warm compile times)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    deploy.ARGS = args  # the shared helpers read repeat from it
    if not args.cache:
        os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"
    import segmentation_models_pytorch as smp
    import torch
    import torch._inductor.config

    import unetgraph as ug

    torch._inductor.config.freezing = True  # every compiled inference row, smp's included
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    deploy.SGEMM, peak = matmul_peak(), conv_peak()
    print(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"float32 peaks: matmul {deploy.SGEMM:.0f}, 3×3 convolution {peak:.0f} GFLOP/s"
    )
    print(f"encoder {args.encoder}; inference batch {args.batch}, training batch {args.train_batch}, {args.size}²\n")

    theirs = randomize(smp.Unet(args.encoder, encoder_weights=None, classes=args.classes)).eval()
    t = time.perf_counter()
    g = ug.presets.smp_unet(args.encoder, encoder_weights=None, classes=args.classes)
    gm = g.lower().eval()
    build = time.perf_counter() - t
    gm.load_state_dict(ug.presets.smp_state_dict(theirs.state_dict()), strict=True)
    print(f"graph + lower: {build:.2f} s; parameters: ours {g.params:,}, smp {deploy.params(theirs):,}\n")
    x = torch.randn(args.batch, 3, args.size, args.size)
    with torch.no_grad():
        fast, report = ug.optimize(gm, example_inputs=[x])
        print(report.summary(), "\n")
        check_same(theirs, gm, (x,), "smp vs ours", atol=1e-4)
        check_same(gm, fast, (x,), "optimize()", atol=1e-4)
        work = flops(theirs, x)
        rows = {
            "smp Unet eager": row(theirs, work),
            "unetgraph eager": row(gm, work),
            "unetgraph optimize()d eager": row(fast, work),
        }
        if not args.no_compile:
            for name, (model, fullgraph) in {
                "smp Unet compiled": (theirs, False),
                "unetgraph compiled": (gm, True),
                "unetgraph optimize()d compiled": (fast, True),
            }.items():
                breaks = graph_breaks(model, (x,))
                torch._dynamo.reset()
                compiled, seconds, graphs = compile_model(model, (x,), fullgraph)
                rows[name] = row(compiled, work, model, compile=seconds, graphs=graphs, breaks=breaks)
            check_same(rows["unetgraph optimize()d compiled"][0], theirs, (x,), "compiled", atol=1e-3)
        title = f"smp_unet({args.encoder!r}) vs smp Unet, inference (same weights)"
        deploy.run_section(Table(title, "smp Unet eager", peak, work), rows, (x,))
        ratios(rows, args)
    training(theirs, gm, args, peak)


def ratios(rows: dict[str, Any], args: argparse.Namespace) -> None:
    """Each of our rows against smp's row of the same kind (printed by run_section's table too)."""
    from unetgraph.util import interleaved_ms

    x_shape = (args.batch, 3, args.size, args.size)
    import torch

    x = torch.randn(*x_shape)
    pairs = [("unetgraph eager", "smp Unet eager"), ("unetgraph optimize()d eager", "smp Unet eager")]
    if "smp Unet compiled" in rows:
        pairs += [("unetgraph compiled", "smp Unet compiled"), ("unetgraph optimize()d compiled", "smp Unet compiled")]
    names = sorted({n for pair in pairs for n in pair})
    ms = interleaved_ms({n: (lambda fn=rows[n][0]: fn(x)) for n in names}, args.repeat)
    print("== ratios against smp (same kind; > 1 means faster than smp)")
    for ours, smps in pairs:
        print(f"{ours:<34} {ms[smps] / ms[ours]:6.2f}×   ({ms[ours]:.1f} ms vs {ms[smps]:.1f} ms)")
    print()


def training(theirs: Any, gm: Any, args: argparse.Namespace, peak: float) -> None:
    """One SGD step each, train mode, interleaved; compiled too with --compile-train."""
    import copy

    import torch

    from unetgraph.util import interleaved_ms

    x = torch.randn(args.train_batch, 3, args.size, args.size)
    target = torch.randn(args.train_batch, args.classes, args.size, args.size)
    models = {"smp Unet": copy.deepcopy(theirs).train(), "unetgraph": copy.deepcopy(gm).train()}
    if args.compile_train:
        torch._inductor.config.freezing = False  # training: weights change every step
        for name in list(models):
            torch._dynamo.reset()
            compiled = torch.compile(copy.deepcopy(models[name]), fullgraph=name == "unetgraph")
            t = time.perf_counter()
            step(compiled, torch.optim.SGD(compiled.parameters(), lr=1e-3), x, target)
            print(f"{name} compiled training: first step (compile) {time.perf_counter() - t:.1f} s")
            models[f"{name} compiled"] = compiled
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=1e-3) for name, m in models.items()}
    steps = {name: (lambda m=m, o=optimizers[name]: step(m, o, x, target)) for name, m in models.items()}
    ms = interleaved_ms(steps, args.repeat)
    print(f"== one training step, batch {args.train_batch}, {args.size}² (forward, backward, SGD)")
    for name, t in ms.items():
        base = ms["smp Unet compiled" if "compiled" in name else "smp Unet"]
        print(f"{name:<30} {t:9.1f} ms   {base / t:6.2f}× smp")
    print()


def step(model: Any, opt: Any, x: Any, target: Any) -> None:
    import torch

    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.mse_loss(model(x), target)
    loss.backward()
    opt.step()


if __name__ == "__main__":
    main()
