"""Draw the figures in docs/figures/ from the graphs themselves.

    .venv/bin/python scripts/figures.py          # PNG (needs graphviz's `dot`)
    .venv/bin/python scripts/figures.py --svg    # SVG instead

Every preset in ``ug.presets`` at each level of detail (levels, blocks, layers) and coloured by
its share of the FLOPs, at a typical input (the classic U-Net at the paper's 572×572 tile,
others at their smallest valid size of at least 64 per axis).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import unetgraph as ug  # noqa: E402

OUT = ROOT / "docs" / "figures"
TILES = {"classic_unet": (1, 1, 572, 572)}  # Ronneberger et al. 2015, Fig. 1


def example_input(name: str, g: ug.UNetGraph) -> tuple[int, ...] | dict[str, tuple[int, ...]]:
    """The input a figure of preset ``name`` is drawn at."""
    if name in TILES:
        return TILES[name]
    rules = g.valid_sizes()
    shapes = {}
    for n in g.inputs:
        t = g[n].type
        shapes[n] = (1, t.channels, *(r.next(64) for r in rules.axes)) if t.dims else (1, t.channels)
    return shapes if len(shapes) > 1 else shapes[g.inputs[0]]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--svg", action="store_true", help="write SVG instead of PNG")
    p.add_argument("--dpi", type=int, default=100)
    args = p.parse_args(argv)
    suffix = ".svg" if args.svg else ".png"
    for name in ug.presets.__all__:
        g = getattr(ug.presets, name)()
        shape = example_input(name, g)
        figures = {
            f"{name}_levels": dict(detail="levels", input_shape=shape),
            f"{name}_blocks": dict(detail="blocks", input_shape=shape),
            f"{name}_layers": dict(detail="layers", input_shape=shape),
            f"{name}_heat_flops": dict(detail="blocks", input_shape=shape, heat="flops", annotate=("shape", "flops")),
        }
        for fig, options in figures.items():
            path = g.save_figure(OUT / f"{fig}{suffix}", dpi=args.dpi, **options)
            print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
