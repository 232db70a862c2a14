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


# -- the block-library presets ----------------------------------------------------------------

import pytest  # noqa: E402
import torch._dynamo  # noqa: E402
from preset_cases import COVERED, PRESET_CASES  # noqa: E402
from torch.fx.passes.shape_prop import ShapeProp  # noqa: E402


def ddpm_config(widths, down_types, up_types, **extra):
    return dict(
        in_channels=3,
        out_channels=3,
        layers_per_block=2,
        block_out_channels=widths,
        down_block_types=down_types,
        up_block_types=up_types,
        downsample_padding=0,
        norm_eps=1e-6,
        flip_sin_to_cos=False,
        freq_shift=1,
        **extra,
    )


# google/ddpm-cifar10-32 and google/ddpm-church-256 (the paper's CIFAR-10 and 256×256 models)
CIFAR = ddpm_config(
    (128, 256, 256, 256),
    ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    dropout=0.1,
)
LSUN = ddpm_config(
    (128, 128, 256, 256, 512, 512),
    ("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
    ("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
)


def copy_from_diffusers(gm, ref):
    theirs = ref.state_dict()
    ours = gm.state_dict()
    mapped = ug.interop.diffusers_keys(ug.lowered_record(gm).graph, ours)  # the one key map
    assert sorted(mapped.values()) == sorted(theirs), "every weight maps one to one"
    for k, v in ours.items():
        assert v.shape == theirs[mapped[k]].shape, k
    gm.load_state_dict({k: theirs[mapped[k]] for k in ours})


class TestDDPM:
    @pytest.mark.parametrize("resolution, config, published", [(32, CIFAR, 35.7e6), (256, LSUN, 114e6)])
    def test_parameter_count_and_layer_shapes_equal_diffusers(self, resolution, config, published):
        from diffusers import UNet2DModel

        with torch.device("meta"):
            ref = UNet2DModel(sample_size=resolution, **config)
        g = ug.presets.ddpm_unet(resolution)
        count = sum(p.numel() for p in ref.parameters())
        assert g.params == count == {32: 35_746_307, 256: 113_673_219}[resolution]
        assert round(count / 1e5) == round(published / 1e5) or round(count / 1e6) == round(published / 1e6)
        gm = g.lower(device="meta")
        copy_from_diffusers(gm, ref)  # asserts a 1:1 map with equal shapes
        # the layers in forward order have the shapes of diffusers' layers, in order
        ours = [tuple(p.shape) for p in gm.parameters()]
        theirs = ref.state_dict()
        keys = ug.interop.diffusers_keys(g, gm.state_dict())
        assert ours == [tuple(theirs[keys[k]].shape) for k, _ in gm.named_parameters()]

    @pytest.mark.parametrize("head_dim", [None, 8], ids=["one-head", "diffusers-default-head-dim-8"])
    def test_outputs_equal_diffusers_with_copied_weights(self, head_dim):
        from diffusers import UNet2DModel

        ref = UNet2DModel(sample_size=32, **CIFAR, attention_head_dim=head_dim).eval()
        gm = ug.presets.ddpm_unet(32, head_dim=head_dim).lower().eval()
        copy_from_diffusers(gm, ref)
        x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 900])
        with torch.no_grad():
            assert torch.allclose(gm(x, t), ref(x, t).sample, atol=1e-5)

    def test_class_conditional_and_scale_shift_equal_diffusers(self):
        from diffusers import UNet2DModel

        config = ddpm_config(
            (32, 64),
            ("DownBlock2D", "AttnDownBlock2D"),
            ("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
            attention_head_dim=None,
            add_attention=False,  # diffusers drops the middle attention's norm under scale_shift
        )
        ref = UNet2DModel(sample_size=16, num_class_embeds=5, resnet_time_scale_shift="scale_shift", **config).eval()
        g = ug.diffusion_unet(
            3,
            widths=(32, 64),
            attention_levels=(1,),
            mid_attention=False,
            num_classes=5,
            resblock=ug.ResBlock(groups=8, eps=1e-6, cond="scale_shift"),
            attention=ug.SelfAttention(groups=8, eps=1e-6),
            down=ug.Down("conv", kernel=3, pad_end=1),
        )
        gm = g.lower().eval()
        theirs = ref.state_dict()
        keys = ug.interop.diffusers_keys(g, gm.state_dict())
        assert sorted(keys.values()) == sorted(theirs)
        gm.load_state_dict({k: theirs[v] for k, v in keys.items()})
        x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 400]), torch.tensor([1, 4])
        with torch.no_grad():
            assert torch.allclose(gm(x, t, y), ref(x, t, class_labels=y).sample, atol=1e-5)

    def test_skips_from_every_encoder_block_consumed_in_reverse(self):
        g = ug.presets.ddpm_unet(32)
        level1 = [e.name for e in g.skips if g[e.dst].level == 1]
        assert level1 == ["enc1_1_attn→merge1_0", "enc1_0_attn→merge1_1", "down1→merge1_2"]
        assert len(g.skips) == 4 * 3 and all(e.kind is ug.EdgeKind.COND for e in g.in_edges("dec2_1")[1:])


class HandWrittenAttU(nn.Module):
    """LeeJunHyun/Image_Segmentation's AttU_Net, written out by hand for parity."""

    def __init__(self, cin=3, cout=1, w=(64, 128, 256, 512, 1024)):
        super().__init__()

        def block(a, b):
            return nn.Sequential(
                nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(), nn.Conv2d(b, b, 3, padding=1),
                nn.BatchNorm2d(b), nn.ReLU()
            )  # fmt: skip

        def unit(a, b, act):
            return nn.Sequential(nn.Conv2d(a, b, 1), nn.BatchNorm2d(b), act)

        self.enc = nn.ModuleList([block(cin, w[0])] + [block(w[i], w[i + 1]) for i in range(4)])
        self.levels = nn.ModuleList()  # Up5, Att5, Up_conv5, Up4, … as AttU_Net registers them
        for i in reversed(range(4)):
            up = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(w[i + 1], w[i], 3, padding=1),
                               nn.BatchNorm2d(w[i]), nn.ReLU())  # fmt: skip
            gate = nn.ModuleList([unit(w[i], w[i] // 2, nn.Identity()), unit(w[i], w[i] // 2, nn.Identity()),
                                  unit(w[i] // 2, 1, nn.Sigmoid())])  # fmt: skip
            self.levels.append(nn.ModuleList([up, gate, block(2 * w[i], w[i])]))
        self.out = nn.Conv2d(w[0], cout, 1)

    def forward(self, x):
        skips = []
        for i, enc in enumerate(self.enc):
            x = enc(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        for (up, (wg, wx, psi), dec), skip in zip(self.levels, reversed(skips[:-1])):
            d = up(x)
            gated = skip * psi(torch.relu(wg(d) + wx(skip)))
            x = dec(torch.cat([gated, d], 1))
        return self.out(x)


def test_attention_unet_equals_the_reference_attu_net():
    g = ug.presets.attention_unet(3, 1)
    hand = HandWrittenAttU()
    assert g.params == sum(p.numel() for p in hand.parameters()) == 34_878_573
    gm = g.lower()
    # registration orders agree (enc…, mid, then per level: up, gate, dec; head): copy in order
    ours, theirs = gm.state_dict(), hand.state_dict()
    assert [v.shape for v in ours.values()] == [v.shape for v in theirs.values()]
    gm.load_state_dict(dict(zip(ours, theirs.values())))
    x = torch.randn(2, 3, 32, 32)
    gm.eval(), hand.eval()
    with torch.no_grad():
        assert torch.allclose(gm(x), hand(x), atol=1e-5)
    assert [e.name for e in g.skips] == ["enc3→gate3", "enc2→gate2", "enc1→gate1", "enc0→gate0"]


def test_unet3d_matches_cicek_2016():
    g = ug.presets.unet3d(3, 3)
    assert g.params == 19_069_955  # "The architecture has 19069955 parameters in total."
    assert g.check((1, 3, 132, 132, 116)).outputs["head"] == (1, 3, 44, 44, 28)  # Fig. 1 tile sizes
    assert [g[f"enc{i}"].block.mid_channels for i in range(3)] == [32, 64, 128]
    assert [g[f"up{i}"].type.channels for i in range(3)] == [128, 256, 512]  # up-convolutions keep channels


@pytest.mark.parametrize("deep_supervision, count", [(False, 9_041_601), (True, 9_041_700)])
def test_unet_plus_plus_matches_zhou_2018(deep_supervision, count):
    g = ug.presets.unet_plus_plus(1, 1, deep_supervision=deep_supervision)
    assert g.params == count and round(count / 1e4) == 904  # Table 2: 9.04M with and without DS
    assert [e.src for e in g.in_edges("merge0_4")] == ["x0_0", "x0_1", "x0_2", "x0_3", "up0_4"]
    assert g.outputs == (("head1", "head2", "head3", "head4") if deep_supervision else ("head",))
    # its U-Net (same blocks, one skip per level) has Table 2's 7.76M
    unet = ug.unet(1, 1, (32, 64, 128, 256, 512), block=ug.ConvBlock(norm="none"))
    assert round(unet.params / 1e4) == 776


@pytest.mark.parametrize("deep_supervision", [False, True])
@pytest.mark.parametrize(
    "dims, kernels, strides",
    [
        (3, [3] * 6, [1, 2, 2, 2, 2, 2]),
        (3, [(1, 3, 3)] * 5, [1, (1, 2, 2), 2, 2, (1, 2, 2)]),
        (2, [3] * 5, [1, 2, 2, 2, 2]),
    ],
)
def test_nnunet_plain_equals_monai_dynunet(dims, kernels, strides, deep_supervision):
    from monai.networks.nets import DynUNet

    features = [32, 64, 128, 256, 320, 320][: len(kernels)]
    up = strides[1:]
    with torch.device("meta"):
        ref = DynUNet(dims, 2, 3, kernels, strides, up, filters=features, deep_supervision=deep_supervision,
                      deep_supr_num=len(kernels) - 2)  # fmt: skip
    g = ug.presets.nnunet_plain(2, 3, features, kernels, strides, dims=dims, conv_bias=False,
                                deep_supervision=deep_supervision)  # fmt: skip
    assert g.params == sum(p.numel() for p in ref.parameters())
    shapes = sorted(tuple(p.shape) for p in g.lower(device="meta").parameters())
    assert shapes == sorted(tuple(p.shape) for p in ref.parameters())
    assert g.edges(dst="merge0")[0].src == "up0"  # nnU-Net concatenates [up, skip]


def test_nnunet_plain_decoder_uses_the_skip_stage_kernel():
    # dynamic_network_architectures' UNetDecoder: stage s convolves with kernel_sizes[-(s + 1)], the
    # kernel of the skip's stage (MONAI's DynUNet takes the stage below's, so it differs here)
    g = ug.presets.nnunet_plain(1, 2, (8, 16, 32), [(1, 3, 3), 3, 3], [1, (1, 2, 2), 2])
    assert g["dec0"].block.kernel == (1, 3, 3) and g["dec1"].block.kernel == 3
    assert g["up0"].block.factor == (1, 2, 2) and g["up0"].block.kernel is None  # kernel = stride


def test_nnunet_plain_with_plan_bias_counts_the_reference_heads():
    # the reference always builds one segmentation layer per decoder stage (5 here)
    with_ds = ug.presets.nnunet_plain(1, 3, deep_supervision=True)
    plain = ug.presets.nnunet_plain(1, 3)
    assert with_ds.params - plain.params == sum(c * 3 + 3 for c in (64, 128, 256, 320))
    assert with_ds.outputs == ("head", "head1", "head2", "head3", "head4")


def test_residual_unet_matches_zhang_2018():
    g = ug.presets.residual_unet(3, 1)
    assert g.params == 8_220_993
    gm = g.lower(device="meta")
    projections = sum(p.numel() for name, p in gm.named_parameters() if ".shortcut." in name)
    assert g.params - projections == 7_789_313
    assert round((g.params - projections) / 1e5) == 78  # the paper's 7.8M: no projection shortcuts counted
    assert g["enc0"].block.pre_norm is False and g["enc1"].block.stride == 2 and "down1" not in g


@pytest.mark.parametrize("key", list(PRESET_CASES))
def test_every_preset_checks_lowers_runs_backprops_and_compiles_without_graph_breaks(key):
    make, shapes = PRESET_CASES[key]
    g = make()
    report = g.check(shapes)
    gm = g.lower()
    inputs = [torch.randn(s) if len(s) > 1 else torch.full(s, 7.0) for s in shapes.values()]
    ShapeProp(gm).propagate(*inputs)
    names, fx_nodes = ug.fx_node_names(gm), {n.name: n for n in gm.graph.nodes}
    for n in g:
        assert tuple(fx_nodes[names[n]].meta["tensor_meta"].shape) == report[n].output, n
    out = gm(*inputs)
    outs = out if isinstance(out, dict) else {g.outputs[0]: out}
    assert {k: tuple(v.shape) for k, v in outs.items()} == report.outputs
    sum(v.float().mean() for v in outs.values()).backward()
    assert all(p.grad is not None for p in gm.parameters())
    torch._dynamo.reset()
    gm.eval()
    with torch.no_grad():
        compiled = torch.compile(gm, fullgraph=True, backend="eager")(*inputs)  # raises on a graph break
        expected = gm(*inputs)
        for k, v in (compiled if isinstance(compiled, dict) else {"": compiled}).items():
            assert torch.allclose(v, expected[k] if k else expected, atol=1e-5)


def test_every_preset_function_has_a_case():
    assert set(ug.presets.__all__) <= COVERED
