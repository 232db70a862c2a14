"""Block specs: validation at the door, type inference, params without building, the registry."""

from dataclasses import dataclass
from fractions import Fraction

import pytest
import torch
from torch import nn

import unetgraph as ug
from unetgraph.types import TensorType

X2 = TensorType.spatial(8, 2)


def built_params(spec, inputs):
    out = spec.infer(inputs)
    return sum(p.numel() for p in spec.build(inputs, out).parameters()), spec.params(inputs, out)


class TestValidation:
    @pytest.mark.parametrize(
        "make, field",
        [
            (lambda: ug.ConvBlock(convs=-3), "ConvBlock.convs: expected a positive integer, got -3"),
            (lambda: ug.ConvBlock(channels=0), "ConvBlock.channels"),
            (lambda: ug.ConvBlock(kernel=(3, 0)), "ConvBlock.kernel"),
            (lambda: ug.ConvBlock(kernel=4), "padding='same' needs an odd kernel"),
            (lambda: ug.ConvBlock(dropout=1.5), "ConvBlock.dropout"),
            (lambda: ug.Down(mode="maxpol"), "did you mean 'maxpool'"),
            (lambda: ug.Down(channels=8), "maxpool keeps channels"),
            (lambda: ug.Up(mode="transpose", conv=False), "interpolation mode"),
            (lambda: ug.Merge(mode="sum"), "Merge.mode"),
            (lambda: ug.Head(kernel=2), "odd kernel"),
        ],
    )
    def test_bad_fields_raise_spec_error_naming_the_field(self, make, field):
        with pytest.raises(ug.SpecError, match=field.replace("(", r"\(").replace(")", r"\)")):
            make()

    def test_with_rejects_unknown_fields_and_revalidates(self):
        b = ug.ConvBlock()
        assert b.with_(convs=3).convs == 3
        with pytest.raises(ug.SpecError, match="no field 'conv'"):
            b.with_(conv=3)
        with pytest.raises(ug.SpecError, match="convs"):
            b.with_(convs=0)

    def test_specs_are_frozen_and_hashable(self):
        b = ug.ConvBlock(kernel=[3, 5])
        assert b.kernel == (3, 5)  # lists become tuples
        with pytest.raises(AttributeError):
            b.convs = 4  # type: ignore[misc]
        assert hash(b) == hash(ug.ConvBlock(kernel=(3, 5)))


class TestInference:
    def test_conv_block_channels_default_to_input(self):
        assert ug.ConvBlock().infer([X2]).channels == 8
        assert ug.ConvBlock(channels=16).infer([X2]).channels == 16

    def test_strides_rescale_per_axis(self):
        x3 = TensorType.spatial(4, 3)
        t = ug.Down(factor=(1, 2, 2)).infer([x3])
        assert t.scale == (Fraction(1), Fraction(1, 2), Fraction(1, 2))
        assert ug.Up(factor=(1, 2, 2)).infer([t]).scale == x3.scale

    def test_group_norm_groups_must_divide_channels(self):
        with pytest.raises(ug.SpecError, match="groups=32 does not divide 48 channels"):
            ug.ConvBlock(channels=48, norm="group").infer([X2])

    def test_per_axis_tuple_must_match_dims(self):
        with pytest.raises(ug.ShapeError, match=r"factor=\(1, 2, 2\) has 3 entries but the graph is 2D"):
            ug.Down(factor=(1, 2, 2)).infer([X2])

    def test_add_merge_needs_equal_channels(self):
        with pytest.raises(ug.ShapeError, match="skip a→m carries 4 channels, add needs 8 from up"):
            ug.Merge("add").infer([TensorType.spatial(4, 2), X2], ["skip a→m", "up"])

    def test_concat_sums_channels(self):
        assert ug.Merge().infer([X2, X2.with_(channels=3)]).channels == 11


class TestParams:
    @pytest.mark.parametrize("dims", [1, 2, 3])
    @pytest.mark.parametrize(
        "spec",
        [
            ug.ConvBlock(channels=16),
            ug.ConvBlock(channels=16, norm="group", groups=4, bias=True),
            ug.ConvBlock(channels=16, norm="instance", act="gelu", convs=3),
            ug.ConvBlock(channels=16, norm="layer", act="silu", kernel=5),
            ug.ConvBlock(channels=16, norm="none", act="leaky_relu", padding="valid", stride=2),
            ug.Down("conv", channels=16),
            ug.Down("maxpool"),
            ug.Down("avgpool", factor=3),
            ug.Up("transpose", channels=4),
            ug.Up("transpose", channels=4, kernel=3),
            ug.Up("nearest", channels=4),
            ug.Up("bilinear", channels=4, kernel=1),
            ug.Up("nearest", conv=False),
            ug.Head(channels=3),
        ],
        ids=lambda s: f"{s.type_name}:{s.label()}",
    )
    def test_static_params_equal_the_built_module(self, spec, dims):
        x = TensorType.spatial(8, dims)
        built, static = built_params(spec, [x])
        assert static == built

    def test_static_params_of_every_registered_block_match(self):
        # every image block in the registry (including user blocks registered by other tests);
        # blocks fed by other inputs are covered by tests/test_block_library.py
        x = TensorType.spatial(64, 2)
        for name in ug.block_names():
            cls = ug.get_block(name)
            if (
                name in ("Input", "TimestepEmbedding", "ClassEmbedding", "CrossAttention", "ScaleBy", "Backbone")
                or cls.min_inputs > 1
            ):
                continue
            spec = cls()
            built, static = built_params(spec, [x])
            assert static == built, name


class TestRegistry:
    def test_unknown_name_lists_the_known_ones(self):
        with pytest.raises(
            ug.RegistryError, match=r"unknown block 'ConvBlok' \(did you mean 'ConvBlock'\?\); known blocks:"
        ):
            ug.get_block("ConvBlok")

    def test_create_block_from_name_and_dict(self):
        assert ug.create_block("Down", mode="avgpool") == ug.Down("avgpool")
        spec = ug.ConvBlock(channels=4, kernel=(3, 5))
        assert ug.create_block(spec.to_dict()) == spec
        with pytest.raises(ug.SpecError, match="has no field 'foo'"):
            ug.create_block("Down", foo=1)
        with pytest.raises(ug.SpecError, match="needs a 'type' key"):
            ug.create_block({"mode": "maxpool"})

    def test_user_block_registers_lowers_and_refuses_duplicates(self):
        class Scale2(nn.Module):
            def forward(self, x):
                return x * 2 + 1

        @ug.register_block
        @dataclass(frozen=True)
        class DoublePlusOne(ug.BlockSpec):
            def infer(self, inputs, sources=()):
                return inputs[0]

            def build(self, inputs, output):
                return Scale2()

        try:
            assert ug.get_block("DoublePlusOne") is DoublePlusOne
            with pytest.raises(ug.RegistryError, match="already registered"):

                @ug.register_block(name="DoublePlusOne")
                @dataclass(frozen=True)
                class Other(ug.BlockSpec):
                    pass

            b = ug.GraphBuilder("Custom")
            b.input("x", channels=2, dims=1)
            b.add("aff", DoublePlusOne(), "encoder", 0, ["x"])
            g = b.build(["aff"])
            gm = g.lower()
            x = torch.randn(2, 2, 5)
            assert torch.equal(gm(x), x * 2 + 1)
            assert "aff_mul" in [n.name for n in gm.graph.nodes]
        finally:
            ug.unregister_block("DoublePlusOne")
        assert "DoublePlusOne" not in ug.block_names()


FLOP_SPECS = (
    ug.ConvBlock(channels=6),
    ug.ConvBlock(channels=6, padding="valid", stride=2, convs=3, kernel=(3, 5)),
    ug.Down("conv", channels=6, kernel=3, padding=1),
    ug.Down("maxpool"),
    ug.Up("transpose", channels=6, kernel=3),
    ug.Up("nearest", channels=6),
    ug.Head(channels=2, kernel=3),
)


class TestFlops:
    @pytest.mark.parametrize("spec", FLOP_SPECS, ids=lambda s: s.label())
    def test_formula_equals_flop_counter_and_default(self, spec):
        from torch.utils.flop_counter import FlopCounterMode

        x = TensorType.spatial(5, 2)
        out_t = spec.infer([x])
        shape_in = (2, 5, 18, 21)
        module = spec.build([x], out_t).eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            y = module(torch.randn(*shape_in))
        formula = spec.flops([shape_in], tuple(y.shape))
        assert formula == counter.get_total_flops()
        assert ug.BlockSpec.flops(spec, [shape_in], tuple(y.shape)) == formula  # the generic meta-tensor path


def test_readme_custom_block_example():
    @ug.register_block
    @dataclass(frozen=True)
    class Residual1x1(ug.BlockSpec):
        channels: int | None = None

        def infer(self, inputs, sources=()):
            return inputs[0].with_(channels=self.channels or inputs[0].channels)

        def build(self, inputs, output):
            return nn.Conv2d(inputs[0].channels, output.channels, 1)

    try:
        g = ug.unet(3, 2, widths=(16, 32), decoder_block=Residual1x1())
        assert g["dec0"].type.channels == 16 and g["dec0"].params == 32 * 16 + 16
        assert g.lower()(torch.randn(1, 3, 8, 8)).shape == (1, 2, 8, 8)
    finally:
        ug.unregister_block("Residual1x1")


def test_new_activation_by_table_entry():
    ug.ACTS["softsign"] = nn.Softsign
    try:
        gm = ug.unet(1, 1, widths=(4,), block=ug.ConvBlock(act="softsign")).lower()
        assert any(isinstance(m, nn.Softsign) for m in gm.modules())
    finally:
        del ug.ACTS["softsign"]


def test_a_merge_refuses_raw_timesteps_and_labels():
    # found by the edit fuzzer: a label input joined an embedding concat as a 1-channel vector,
    # and the lowered module failed in torch.cat ((N,) against (N, 16))
    g = ug.diffusion_unet(
        2, 2, widths=(4, 8), resblock=ug.ResBlock(groups=2), attention=ug.SelfAttention(groups=2), num_classes=3
    )
    with pytest.raises(ug.ShapeError, match=r"add_edge y→emb: emb \(add\): .* y→emb is labels \(N,\)"):
        g.add_edge("y", "emb", kind="skip")
