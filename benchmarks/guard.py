"""What the input guard costs per forward: a tiny model called many times with and without it.

    .venv/bin/python -m benchmarks.guard [--calls 20000] [--repeat 7]

The guard runs on every call of a lowered module (``lower(guard=True)``, the default). On a
model this small the layers take microseconds, so the difference between the two rows is the
guard's own cost: a plain U-Net (one guarded image) and a class-conditional diffusion U-Net
(an image, a timestep tensor and labels; then a Python int timestep, which the guard turns into
a tensor for the batch).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

import unetgraph as ug


def per_call_us(fn: Callable[[], object], calls: int, repeat: int) -> float:
    """Median over ``repeat`` rounds of the mean time of one call, in microseconds."""
    for _ in range(min(calls, 200)):
        fn()
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(rounds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(1)
    plain = ug.unet(1, 1, widths=(1,), block=ug.ConvBlock(convs=1, norm="none", act="none"))
    diffusion = ug.diffusion_unet(
        1,
        widths=(4,),
        layers_per_block=1,
        attention_levels=(),
        attention=None,
        head=ug.Head(),
        resblock=ug.ResBlock(groups=1),
        time_embedding=ug.TimestepEmbedding(dim=4, channels=4),
        num_classes=3,
    )
    cases = {
        "plain U-Net: x": (plain, (torch.randn(1, 1, 4, 4),)),
        "diffusion: x, t, y tensors": (
            diffusion,
            (torch.randn(2, 1, 4, 4), torch.tensor([3.0, 5.0]), torch.tensor([0, 2])),
        ),
        "diffusion: x, t=7 (int), y": (diffusion, (torch.randn(2, 1, 4, 4), 7, torch.tensor([0, 2]))),
    }
    print(f"per call, median of {args.repeat} rounds of {args.calls} calls (torch {torch.__version__}, 1 thread):")
    with torch.no_grad():
        plain_guarded, plain_bare = plain.lower().eval(), plain.lower(guard=False).eval()
        plain_bare.load_state_dict(plain_guarded.state_dict())
        x = cases["plain U-Net: x"][1][0]
        whole = per_call_us(lambda: plain_guarded(x), args.calls, args.repeat)
        bare = per_call_us(lambda: plain_bare(x), args.calls, args.repeat)
        print(f"  plain U-Net, whole forward: guarded {whole:6.1f} µs, guard=False {bare:6.1f} µs")
        for label, (g, xs) in cases.items():
            run = _guards_only(g.lower().eval(), xs)
            try:
                run()
            except Exception as e:  # a form this version refuses
                print(f"  {label:28s} guards only: refused ({type(e).__name__})")
                continue
            print(f"  {label:28s} guards only: {per_call_us(run, args.calls, args.repeat):6.2f} µs")


def _guards_only(gm: torch.fx.GraphModule, xs: tuple) -> Callable[[], object]:
    """Run just the input guards of ``gm`` on ``xs``, as its forward calls them."""
    values = dict(zip([n.name for n in gm.graph.nodes if n.op == "placeholder"], xs))
    calls = [
        (gm.get_submodule(n.target), [a.name for a in n.args], n.name)
        for n in gm.graph.nodes
        if n.op == "call_module" and n.target.endswith("_guard")
    ]

    def run() -> None:
        env = dict(values)
        for module, names, out in calls:
            env[out] = module(*(env[a] for a in names))

    return run


if __name__ == "__main__":
    main()
