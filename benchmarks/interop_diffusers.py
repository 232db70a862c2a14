"""diffusers models imported with ``ug.interop.from_diffusers`` against the originals, same weights, one process.

    .venv/bin/python -m benchmarks.interop_diffusers                 # DDPM CIFAR-10 and a small SD-style U-Net
    .venv/bin/python -m benchmarks.interop_diffusers --tiny --repeat 2 --no-compile   # a smoke run (seconds)

For each model: import time, then median forward times (interleaved rounds) of diffusers eager,
the imported module eager, ``optimize()``d, and, unless ``--no-compile``, diffusers and ours
compiled with inductor (frozen weights; ours with ``fullgraph=True``), each with its first-call
(compile) time and graph count; ratios against diffusers eager; the largest output difference.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import torch

import unetgraph as ug
from benchmarks.ddpm_vs_diffusers import CONFIG as DDPM_CIFAR10
from benchmarks.deploy import CountingInductor
from unetgraph.util import interleaved_ms

# a Stable-Diffusion-shaped U-Net (cross-attention transformers, GEGLU, linear projections), scaled down
SD_SMALL = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    block_out_channels=(64, 128, 256),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=128,
    attention_head_dim=4,
    use_linear_projection=True,
    norm_num_groups=32,
)
TINY = {
    "UNet2DModel": dict(
        DDPM_CIFAR10, block_out_channels=(32, 64), down_block_types=DDPM_CIFAR10["down_block_types"][:2],
        up_block_types=DDPM_CIFAR10["up_block_types"][2:], norm_num_groups=8, sample_size=16,
    ),
    "UNet2DConditionModel": dict(
        SD_SMALL, block_out_channels=(32, 64), down_block_types=SD_SMALL["down_block_types"][1:],
        up_block_types=SD_SMALL["up_block_types"][:2], norm_num_groups=8, cross_attention_dim=16, sample_size=16,
    ),
}  # fmt: skip


class Call(torch.nn.Module):
    """One tuple argument for every model; diffusers' output unwrapped."""

    def __init__(self, model: torch.nn.Module, keywords: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.model, self.keywords = model, keywords

    def forward(self, args: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if self.keywords is None:
            return self.model(*args)
        return self.model(**dict(zip(self.keywords, args))).sample


def compiled(model: torch.nn.Module, args: tuple, fullgraph: bool) -> tuple[Callable, float, int]:
    """Inductor with frozen weights; (compiled, first-call seconds, graphs compiled)."""
    torch._dynamo.reset()
    backend = CountingInductor()
    fn = torch.compile(model, backend=backend, fullgraph=fullgraph)
    start = time.perf_counter()
    fn(args)
    return fn, time.perf_counter() - start, backend.count


def bench(kind: str, config: dict[str, Any], batch: int, repeat: int, compile_: bool) -> None:
    import diffusers

    peer = getattr(diffusers, kind)(**config).eval()
    start = time.perf_counter()
    graph, gm = ug.interop.from_diffusers(peer)
    seconds = time.perf_counter() - start
    size = config["sample_size"]
    args: tuple[torch.Tensor, ...] = (
        torch.randn(batch, peer.config.in_channels, size, size),
        torch.randint(0, 1000, (batch,)),
    )
    keywords: tuple[str, ...] = ("sample", "timestep")
    if kind == "UNet2DConditionModel":
        args += (torch.randn(batch, 77, peer.config.cross_attention_dim),)
        keywords += ("encoder_hidden_states",)
    fast, _ = ug.optimize(gm)
    models: dict[str, Callable] = {
        "diffusers eager": Call(peer, keywords),
        "unetgraph eager": Call(gm),
        "unetgraph optimize()d": Call(fast),
    }
    info: dict[str, str] = {}
    with torch.no_grad():
        reference = models["diffusers eager"](args)
        diff = max((m(args) - reference).abs().max().item() for m in list(models.values())[1:])
        if compile_:
            for name, model, full in (
                ("diffusers compiled", Call(peer, keywords), False),
                ("unetgraph compiled", Call(fast), True),
            ):
                models[name], t, graphs = compiled(model, args, full)
                info[name] = f"compile {t:.1f} s, {graphs} graph{'s' * (graphs != 1)}"
                diff = max(diff, (models[name](args) - reference).abs().max().item())
        ms = interleaved_ms({k: (lambda m=m: m(args)) for k, m in models.items()}, repeat)
    print(f"\n{kind} {tuple(config['block_out_channels'])}, batch {batch} at {size}², {graph.params:,} parameters")
    print(f"import (graph + lower + weights): {seconds:.2f} s; max |output difference| {diff:.1e}")
    base = ms["diffusers eager"]
    for name, t in ms.items():
        print(f"  {name:<24} {t:9.1f} ms  {base / t:5.2f}×  {info.get(name, '')}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="eager and optimize()d rows only")
    parser.add_argument("--tiny", action="store_true", help="small models (a smoke run)")
    args = parser.parse_args(argv)
    torch._inductor.config.freezing = True  # every compiled row, diffusers included (calls run under no_grad)
    for kind, config in (("UNet2DModel", DDPM_CIFAR10), ("UNet2DConditionModel", SD_SMALL)):
        config = TINY[kind] if args.tiny else dict(config, sample_size=config.get("sample_size", 32))
        bench(kind, config, args.batch, args.repeat, not args.no_compile)


if __name__ == "__main__":
    main()
