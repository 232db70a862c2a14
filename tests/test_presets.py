"""Presets reproduce their sources exactly."""

import torch
from torch import nn

import unetgraph as ug
from benchmarks.handwritten import HandWrittenUNet, copy_weights


def test_classic_unet_matches_ronneberger_2015():
    g = ug.presets.classic_unet(1, 2)
    assert g.params == 31_030_658
    assert g.check((1, 1, 572, 572)).outputs["head"] == (1, 2, 388, 388)  # Fig. 1
    gm = g.lower(device="meta")
    convs = [m for m in gm.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 23  # "In total the network has 23 convolutional layers."
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())


def test_padded_variant_equals_the_common_pytorch_unet():
    g = ug.presets.classic_unet(3, 2, padded=True)
    hand = HandWrittenUNet(3, 2)
    assert g.params == sum(p.numel() for p in hand.parameters()) == 31_037_698
    gm = g.lower().eval()
    copy_weights(gm, hand)
    hand.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(gm(x), hand(x))
