"""Peers at the same architecture and weights as a unetgraph graph, for side-by-side benchmarks.

* :func:`monai_basic_unet_graph` builds, with ``ug.GraphBuilder``, exactly the network MONAI's
  ``BasicUNet(features=..., act="relu", norm="batch", bias=False, upsample="deconv")``
  computes (its last up-convolution keeps the channels instead of halving them), with
  parameters registered in MONAI's order, so :func:`copy_weights` maps them by position.
* :func:`monai_basic_unet` builds that MONAI model.
* The hand-written classic U-Net lives in :mod:`benchmarks.handwritten`.
"""

from __future__ import annotations

from typing import Sequence

import unetgraph as ug
from benchmarks.handwritten import copy_weights

__all__ = ["monai_basic_unet_graph", "monai_basic_unet", "copy_weights"]


def monai_basic_unet_graph(in_channels: int, out_channels: int, features: Sequence[int]) -> ug.UNetGraph:
    """MONAI's ``BasicUNet`` (5 levels, ``features`` = 5 encoder widths + the last decoder's) as a graph."""
    if len(features) != 6:
        raise ValueError(f"BasicUNet takes 6 features (5 levels + the last decoder), got {len(features)}")
    f = list(features)
    block = ug.ConvBlock(norm="batch", act="relu", bias=False)
    b = ug.GraphBuilder("MonaiBasicUNet")
    h = b.input("x", channels=in_channels)
    skips = []
    for i in range(4):
        h = b.add(f"enc{i}", block.with_(channels=f[i]), "encoder", i, [h])
        skips.append(h)
        h = b.add(f"down{i + 1}", ug.Down("maxpool"), "down", i + 1, [h])
    h = b.add("mid", block.with_(channels=f[4]), "bottleneck", 4, [h])
    for i in reversed(range(4)):
        up_channels = f[i + 1] // 2 if i > 0 else f[1]  # MONAI's last UpCat does not halve
        h = b.add(f"up{i}", ug.Up("transpose", channels=up_channels), "up", i, [h])
        h = b.add(f"merge{i}", ug.Merge("concat"), "merge", i, [ug.In(skips[i], ug.EdgeKind.SKIP), h])
        h = b.add(f"dec{i}", block.with_(channels=f[i] if i > 0 else f[5]), "decoder", i, [h])
    b.add("head", ug.Head(channels=out_channels), "head", 0, [h])
    return b.build(outputs=["head"])


def monai_basic_unet(in_channels: int, out_channels: int, features: Sequence[int]):
    """``monai.networks.nets.BasicUNet`` configured as :func:`monai_basic_unet_graph` describes."""
    from monai.networks.nets import BasicUNet

    return BasicUNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        features=tuple(features),
        act="relu",
        norm="batch",
        bias=False,
        upsample="deconv",
    )
