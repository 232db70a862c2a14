"""Draw the figures in docs/figures/ from the graphs themselves.

    .venv/bin/python scripts/figures.py          # PNG (needs graphviz's `dot`)
    .venv/bin/python scripts/figures.py --svg    # SVG instead

The classic U-Net (at the paper's 572×572 tile) and the DDPM diffusion U-Net at each level of
detail, the classic one coloured by its share of the FLOPs, UNet++ and the attention U-Net as
blocks, and a diff of two architectures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import unetgraph as ug  # noqa: E402

OUT = ROOT / "docs" / "figures"
DETAILS = ("levels", "blocks", "layers")


def figures() -> dict[str, tuple[object, dict]]:
    """Figure name → (a graph or a diff, drawing options)."""
    classic = ug.presets.classic_unet()
    tile = (1, 1, 572, 572)  # Ronneberger et al. 2015, Fig. 1
    ddpm = ug.presets.ddpm_unet(32)
    ddpm_in = ug.input_shapes(ddpm, size=32)
    out: dict[str, tuple[object, dict]] = {}
    for detail in DETAILS:
        out[f"classic_unet_{detail}"] = (classic, dict(detail=detail, input_shape=tile))
        out[f"ddpm_unet_{detail}"] = (ddpm, dict(detail=detail, input_shape=ddpm_in))
    out["ddpm_unet_layers"][1]["suffix"] = ".svg"  # ~900 boxes: a PNG of it would weigh 4 MB
    out["classic_unet_heat_flops"] = (
        classic,
        dict(detail="blocks", input_shape=tile, heat="flops", annotate=("shape", "flops")),
    )
    out["unet_plus_plus_blocks"] = (ug.presets.unet_plus_plus(), dict(detail="blocks"))
    out["attention_unet_blocks"] = (ug.presets.attention_unet(), dict(detail="blocks"))
    g = ug.unet(3, 2, widths=(16, 32, 64, 128))
    g2 = (
        g.set_skip("enc1", "merge1", merge="add")
        .remove_skip("enc0")
        .map_blocks(lambda b: b.with_(norm="group", groups=8), role="encoder")
        .insert_after("enc2", ug.ConvBlock(convs=1), name="enc2b")
    )
    out["diff_blocks"] = (ug.diff(g, g2), dict(detail="blocks", input_shape=(1, 3, 64, 64)))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--svg", action="store_true", help="write SVG instead of PNG")
    p.add_argument("--dpi", type=int, default=100)
    args = p.parse_args(argv)
    suffix = ".svg" if args.svg else ".png"
    for name, (source, options) in figures().items():
        detail = options.pop("detail")
        path = source.save_figure(OUT / f"{name}{options.pop('suffix', suffix)}", detail, dpi=args.dpi, **options)
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
