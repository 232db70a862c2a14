"""ug.unet(...): options, per-level parts, bad arguments."""

import pytest
import torch
from deploy_helpers import small_diffusion

import unetgraph as ug


class TestOptions:
    def test_defaults_are_the_common_padded_unet(self):
        g = ug.unet(3, 2)
        assert len(g.levels) == 5 and g["mid"].type.channels == 1024
        assert g["enc0"].block == ug.ConvBlock(channels=64)
        assert g["up3"].block == ug.Up("transpose", channels=512)

    def test_every_part_is_swappable(self):
        g = ug.unet(
            1,
            4,
            widths=(8, 16, 32),
            dims=3,
            block=ug.ConvBlock(norm="group", groups=4, act="silu"),
            decoder_block=ug.ConvBlock(convs=1, norm="instance"),
            down="avgpool",
            up="trilinear",
            merge="add",
        )
        assert g["dec0"].block.convs == 1 and g["enc0"].block.act == "silu"
        assert g["up0"].block.mode == "linear" and g["merge0"].block.mode == "add"
        assert g["merge0"].type.channels == 8
        assert g.check((1, 1, 16, 16, 16)).outputs["head"] == (1, 4, 16, 16, 16)

    def test_per_level_parts_and_anisotropic_factors(self):
        downs = [ug.Down(factor=(1, 2, 2)), ug.Down(factor=2)]
        g = ug.unet(1, 2, widths=(4, 8, 16), dims=3, down=downs)
        assert g["up0"].block.factor == (1, 2, 2) and g["up1"].block.factor == 2
        assert (
            str(g.valid_sizes()) == "D must be a multiple of 2, at least 2; H and W must be multiples of 4, at least 4"
        )
        g2 = ug.unet(1, 2, widths=(4, 8, 16), block=lambda level: ug.ConvBlock(convs=level + 1))
        assert [g2[n].block.convs for n in ("enc0", "enc1", "mid")] == [1, 2, 3]

    def test_one_level(self):
        g = ug.unet(3, 1, widths=(8,))
        assert list(g) == ["x", "mid", "head"] and g.skips == []

    def test_conv_down_and_interp_up_without_conv(self):
        g = ug.unet(2, 2, widths=(4, 8), down=ug.Down("conv", kernel=3, padding=1), up=ug.Up("nearest", conv=False))
        assert g["up0"].type.channels == 8 and g["merge0"].type.channels == 12


class TestBadArguments:
    @pytest.mark.parametrize(
        "kwargs, message",
        [
            (dict(widths=(64, 0, 256)), r"widths\[1\]: expected a positive integer, got 0"),
            (dict(widths=(64, -8)), r"widths\[1\]: expected a positive integer, got -8"),
            (dict(widths=()), "widths: expected a non-empty sequence"),
            (dict(dims=4), "dims: expected 1, 2 or 3"),
            (dict(in_channels=0), "in_channels: expected a positive integer"),
            (dict(down=[ug.Down()]), "down: 1 entries given, level 1 needs one"),
            (
                dict(block=ug.ConvBlock(norm="group")),
                r"enc0 \(2×conv3 group relu\): GroupNorm groups=32 does not divide 16",
            ),
            (
                dict(merge="add", up=ug.Up("nearest", conv=False)),
                r"merge1 \(add\): skip enc1→merge1 carries 32 channels, add needs 64 from up1",
            ),
        ],
    )
    def test_typed_error_names_the_place(self, kwargs, message):
        args = dict(in_channels=3, out_channels=2, widths=(16, 32, 64))
        args.update(kwargs)
        with pytest.raises(
            ug.SpecError if "skip" not in message and "add" not in message else ug.ShapeError, match=message
        ):
            ug.unet(**args)

    def test_unknown_block_name(self):
        with pytest.raises(
            ug.RegistryError,
            match=r"unknown block 'ResidualBlok' \(did you mean 'ResBlock'\?\); known blocks: .*ConvBlock",
        ):
            ug.unet(3, 2, block="ResidualBlok")


def test_diffusion_unet_without_self_attention_keeps_cross_attention():
    g = small_diffusion(attention=None)
    assert not any(name.endswith("attn") for name in g)
    g = small_diffusion(
        attention=None, num_classes=None, context_channels=6, cross_attention=ug.CrossAttention(heads=2, groups=4)
    )
    assert not any(name.endswith("_attn") for name in g)
    assert {"enc1_0_xattn", "mid_xattn", "dec1_0_xattn"} <= set(g)
    x, t, context = ug.example_inputs(g, batch=2, size=8).values()
    with torch.no_grad():
        assert g.lower()(x, t, context).shape == x.shape
