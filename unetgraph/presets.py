"""Famous U-Nets as ordinary graphs: each is editable, checkable and lowerable like any other."""

from __future__ import annotations

from .blocks import ConvBlock, Merge
from .build import unet
from .graph import UNetGraph

__all__ = ["classic_unet"]


def classic_unet(in_channels: int = 1, num_classes: int = 2, *, padded: bool = False) -> UNetGraph:
    """The U-Net of Ronneberger, Fischer & Brox, MICCAI 2015 (arXiv:1505.04597).

    ``padded=False`` is the paper's network (Fig. 1): five levels of 64–1024 channels, two
    valid (unpadded) 3×3 convolutions + ReLU per level, 2×2 max pooling, 2×2 up-convolutions
    that halve the channels, concatenation with the centre-cropped encoder features, and a
    1×1 output convolution: 23 convolutional layers in total. A 572×572 tile gives a
    388×388 map; valid tile sizes are 188 + 16k. With 1 input channel and 2 classes it has
    31,030,658 parameters (the paper states none; this is that architecture's exact count).

    ``padded=True`` is the variant most PyTorch code uses (milesial/Pytorch-UNet's
    ``UNet(n_channels, n_classes, bilinear=False)``): padded convolutions without bias,
    each followed by batch norm, so the output has the input's size; 31,037,698 parameters
    for 3 input channels and 2 classes, equal to that implementation.

    Shape:
        ``(N, in_channels, H, W) → (N, num_classes, H - 184, W - 184)`` (valid), or
        ``(N, num_classes, H, W)`` (padded); see ``valid_sizes()``.
    """
    if padded:
        return unet(in_channels, num_classes, block=ConvBlock(norm="batch"), name="ClassicUNetPadded")
    return unet(
        in_channels,
        num_classes,
        block=ConvBlock(padding="valid", norm="none"),
        merge=Merge("concat", crop=True),
        name="ClassicUNet",
    )
