"""How long editing, saving, diffing and weight transfer take, side by side (medians, one process).

    .venv/bin/python -m benchmarks.editing [--widths 64 128 256 512 1024] [--repeat 15]

Each edit rebuilds the graph through ``UNetGraph(...)`` (lint + type inference) and checks
that some input size still fits (``valid_sizes``), so an edit costs about one build. Loading a
document costs a build plus reading the text. ``lower(weights_from=gm)`` is compared with a plain
``lower()`` (both build and initialise every module).
"""

from __future__ import annotations

import argparse

import unetgraph as ug
from unetgraph.util import median_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    widths, r = tuple(args.widths), args.repeat

    g = ug.unet(3, 2, widths=widths, block=ug.ConvBlock(norm="group", groups=8))
    deepest = len(widths) - 2

    def flow() -> ug.UNetGraph:
        return (
            g.replace("mid", ug.Sequence(ug.ConvBlock(), ug.ConvBlock(convs=1, kernel=1), ug.ConvBlock()))
            .set_skip("enc1", "merge1", merge="add")
            .remove_skip("enc0")
            .map_blocks(lambda b: b.with_(act="silu"), role="encoder")
            .insert_after(f"enc{deepest}", ug.ConvBlock(convs=1, norm="group", groups=8), name="extra")
        )

    g2 = flow()
    yaml_text, json_text = ug.dumps(g2, "yaml"), ug.dumps(g2, "json")
    gm = g.lower()
    rows = [
        ("ug.unet(...) build", median_ms(lambda: ug.unet(3, 2, widths=widths), r)),
        ("one edit: g.set('enc1', convs=3)", median_ms(lambda: g.set("enc1", convs=3), r)),
        ("the issue's 5-edit flow", median_ms(flow, r)),
        ("g.to_dict()", median_ms(g2.to_dict, r)),
        ("UNetGraph.from_dict(doc)", median_ms(lambda: ug.UNetGraph.from_dict(g2.to_dict()), r)),
        ("ug.dumps(g, 'yaml')", median_ms(lambda: ug.dumps(g2, "yaml"), r)),
        ("ug.loads(yaml)", median_ms(lambda: ug.loads(yaml_text, "yaml"), r)),
        ("ug.dumps(g, 'json')", median_ms(lambda: ug.dumps(g2, "json"), r)),
        ("ug.loads(json)", median_ms(lambda: ug.loads(json_text, "json"), r)),
        ("ug.diff(g, g2) + str", median_ms(lambda: str(ug.diff(g, g2)), r)),
        ("g2.lower()", median_ms(g2.lower, max(3, r // 3))),
        ("g2.lower(weights_from=gm)", median_ms(lambda: g2.lower(weights_from=gm), max(3, r // 3))),
    ]
    build = rows[0][1]
    print(f"graph: {len(g)} nodes, widths {widths}, {g.params:,} params; edited: {len(g2)} nodes, {g2.params:,} params")
    print(f"{'operation':<36}{'median ms':>11}{'× build':>10}")
    for name, ms in rows:
        print(f"{name:<36}{ms:>11.2f}{ms / build:>10.1f}")
    print(
        f"YAML document: {len(yaml_text.splitlines())} lines, {len(yaml_text):,} bytes; JSON {len(json_text):,} bytes"
    )


if __name__ == "__main__":
    main()
