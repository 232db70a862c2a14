"""A hand-written U-Net, in the style most PyTorch code uses (e.g. milesial/Pytorch-UNet).

Padded 3×3 convolutions without bias, batch norm and ReLU, twice per level; 2×2 max
pooling; 2×2 transposed convolutions that halve the channels; concatenation of the skip
then the upsampled map; a 1×1 output convolution. Parameters are registered in the same
order as the lowered ``ug.unet(...)`` graph's, so weights map over by position
(:func:`copy_weights`). The reference for parity tests and for the overhead benchmark.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Sequence

import torch
from torch import nn


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        )


class Down(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(cin, cout))


class Up(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.conv = DoubleConv(2 * cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class HandWrittenUNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 2, widths: Sequence[int] = (64, 128, 256, 512, 1024)):
        super().__init__()
        self.inc = DoubleConv(in_channels, widths[0])
        self.downs = nn.ModuleList(Down(a, b) for a, b in pairwise(widths))
        self.ups = nn.ModuleList(Up(b, a) for a, b in reversed(list(pairwise(widths))))
        self.outc = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inc(x)
        skips = []
        for down in self.downs:
            skips.append(x)
            x = down(x)
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        return self.outc(x)


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy ``src``'s state into ``dst`` by position, checking every shape."""
    src_state, dst_keys = list(src.state_dict().items()), list(dst.state_dict().keys())
    if len(src_state) != len(dst_keys):
        raise ValueError(f"{len(src_state)} tensors in the source, {len(dst_keys)} in the destination")
    new = {}
    for (sk, sv), dk in zip(src_state, dst_keys):
        if sv.shape != dst.state_dict()[dk].shape:
            raise ValueError(f"{sk} {tuple(sv.shape)} does not fit {dk} {tuple(dst.state_dict()[dk].shape)}")
        new[dk] = sv
    dst.load_state_dict(new)
