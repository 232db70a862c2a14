"""DDPM CIFAR-10 U-Net: unetgraph's lowered module vs diffusers' UNet2DModel, same weights, one process.

    .venv/bin/python -m benchmarks.ddpm_vs_diffusers [--batch 8] [--repeat 5]

Prints build times, the median eager forward time of each, their ratio and the largest output
difference (the two compute the same function with copied weights).
"""

from __future__ import annotations

import argparse
import time

import torch

import unetgraph as ug
from unetgraph.util import interleaved_ms

CONFIG = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    downsample_padding=0,
    norm_eps=1e-6,
    flip_sin_to_cos=False,
    freq_shift=1,
    attention_head_dim=None,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from diffusers import UNet2DModel

    start = time.perf_counter()
    ref = UNet2DModel(**CONFIG).eval()
    t_ref = time.perf_counter() - start
    start = time.perf_counter()
    gm = ug.presets.ddpm_unet(32).lower().eval()
    t_ours = time.perf_counter() - start
    theirs = ref.state_dict()
    keys = ug.interop.diffusers_keys(ug.lowered_record(gm).graph, gm.state_dict())  # the one key map
    gm.load_state_dict({k: theirs[v] for k, v in keys.items()})
    x, t = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 1000, (args.batch,))
    with torch.no_grad():
        diff = (gm(x, t) - ref(x, t).sample).abs().max().item()
        ms = interleaved_ms({"ours": lambda: gm(x, t), "diffusers": lambda: ref(x, t).sample}, args.repeat)
        a, b = ms["ours"] / 1e3, ms["diffusers"] / 1e3
    print(f"build: diffusers {t_ref:.2f} s, unetgraph graph+lower {t_ours:.2f} s")
    print(f"forward batch {args.batch}: unetgraph {a * 1e3:.1f} ms, diffusers {b * 1e3:.1f} ms, ratio {a / b:.2f}")
    print(f"max |difference| {diff:.2e}")


if __name__ == "__main__":
    main()
