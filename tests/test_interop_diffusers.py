"""ug.interop with diffusers: real UNet2DModel / UNet2DConditionModel instances across a matrix of
configurations, every weight (norm affines and Fourier frequencies included) randomised, imported
from their configuration; equal parameter counts, equal outputs, round trips to equal state dicts
and configurations; refused configurations and edits name the field or the node."""

import pytest
import torch
from diffusers import UNet2DConditionModel, UNet2DModel

import unetgraph as ug
from unetgraph.interop import diffusers_keys, from_diffusers, graph_from_diffusers_config, to_diffusers

BASE = dict(
    sample_size=16,
    block_out_channels=(32, 64),
    norm_num_groups=8,
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=16,
)
ATTN_BOTH = dict(down_block_types=("AttnDownBlock2D",) * 2, up_block_types=("AttnUpBlock2D",) * 2)

# every option of UNet2DModel that maps onto plain blocks, spread over few small models
UNET2D = {
    "ddpm-cifar-style": dict(
        layers_per_block=2, downsample_padding=0, norm_eps=1e-6, flip_sin_to_cos=False, freq_shift=1, dropout=0.1
    ),
    "scale-shift-classes": dict(resnet_time_scale_shift="scale_shift", num_class_embeds=5, attention_head_dim=None),
    "scale-shift-mid-attn-norm": dict(resnet_time_scale_shift="scale_shift", attn_norm_num_groups=4),
    "fourier": dict(time_embedding_type="fourier"),
    "resnet-resampling": dict(downsample_type="resnet", upsample_type="resnet", act_fn="relu", **ATTN_BOTH),
    "centered-gelu-no-mid-attention": dict(
        center_input_sample=True, act_fn="gelu", add_attention=False, time_embedding_dim=96, norm_eps=1e-4
    ),
    "no-mid-three-levels": dict(
        block_out_channels=(16, 32, 32),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        mid_block_type=None,
        attention_head_dim=8,
    ),
    "mid-scale-and-label-timesteps": dict(mid_block_scale_factor=1.5, class_embed_type="timestep", freq_shift=2),
    "attention-only-encoder-level-0": dict(
        down_block_types=("AttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D")
    ),
}

COND_BASE = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    norm_num_groups=8,
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(2, 4),
    cross_attention_dim=24,
)
COND = {
    "sd-style": dict(),
    "only-cross-where-attention-is": dict(
        only_cross_attention=True, mid_block_type="UNetMidBlock2D", attention_head_dim=2
    ),
    "linear-two-layers-only-cross": dict(
        use_linear_projection=True,
        transformer_layers_per_block=2,
        only_cross_attention=True,
        down_block_types=("CrossAttnDownBlock2D",) * 2,
        up_block_types=("CrossAttnUpBlock2D",) * 2,
        attention_head_dim=4,
    ),
    "resnet-mid-classes-kernels": dict(
        mid_block_type="UNetMidBlock2D", num_class_embeds=3, conv_in_kernel=1, conv_out_kernel=5, attention_head_dim=2
    ),
    "no-mid-fourier-scale-shift-centered": dict(
        mid_block_type=None,
        time_embedding_type="fourier",
        resnet_time_scale_shift="scale_shift",
        center_input_sample=True,
        act_fn="gelu",
        flip_sin_to_cos=False,
        attention_head_dim=2,
    ),
    "per-level-layers-and-heads": dict(
        down_block_types=("CrossAttnDownBlock2D",) * 2,
        up_block_types=("CrossAttnUpBlock2D",) * 2,
        transformer_layers_per_block=(1, 2),
        only_cross_attention=(False, True),
        norm_eps=1e-6,
        freq_shift=1,
        mid_block_scale_factor=0.5,
    ),
}


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter (norm weights and biases, fixed Fourier frequencies) drawn at random: a
    wrong key map, a swapped norm or a dropped bias changes the output."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:  # norm scales and shifts, biases, frequencies: around 0.5, never 1 or 0
                p.copy_(torch.rand(p.shape, generator=g) + 0.1)
            else:  # weights at the scale of their fan-in, so activations stay near 1
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
    return model.eval()


def public(config) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def inputs_for(model, config, batch=2):
    g = torch.Generator().manual_seed(1)
    size = config["sample_size"]
    x = torch.rand(batch, model.config.in_channels, size, size, generator=g) * 2 - 1
    fourier = model.config.time_embedding_type == "fourier"
    t = torch.tensor([0.3, 17.0]) if fourier else torch.tensor([3, 640])
    ours, theirs = [x, t], {"sample": x, "timestep": t}
    if model.config.class_embed_type == "timestep":
        y = torch.tensor([5, 900])
        ours.append(y)
        theirs["class_labels"] = y
    elif model.config.num_class_embeds:
        y = torch.tensor([1, model.config.num_class_embeds - 1])
        ours.append(y)
        theirs["class_labels"] = y
    if isinstance(model, UNet2DConditionModel):
        ctx = torch.randn(batch, 7, model.config.cross_attention_dim, generator=g)
        ours.append(ctx)
        theirs["encoder_hidden_states"] = ctx
    return ours, theirs


def check_import_and_round_trip(model, config):
    g, gm = from_diffusers(model)
    assert g.params == sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in gm.parameters())
    ours, theirs = inputs_for(model, config)
    with torch.no_grad():
        expected = model(**theirs).sample
        got = gm(*ours)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    back = to_diffusers((g, gm), sample_size=config["sample_size"])
    assert type(back) is type(model)
    sd, sd_back = model.state_dict(), back.state_dict()
    assert list(sd) == list(sd_back) and all(torch.equal(sd[k], sd_back[k]) for k in sd)
    assert public(back.config) == public(model.config)
    return g, gm


@pytest.mark.parametrize("case", list(UNET2D))
def test_unet2d_imports_with_equal_outputs_and_round_trips(case):
    config = {**BASE, **UNET2D[case]}
    check_import_and_round_trip(randomised(UNet2DModel(**config)), config)


@pytest.mark.parametrize("case", list(COND))
def test_unet2d_condition_imports_with_equal_outputs_and_round_trips(case):
    config = {**COND_BASE, **COND[case]}
    check_import_and_round_trip(randomised(UNet2DConditionModel(**config)), config)


def test_imported_graph_is_an_ordinary_diffusion_unet():
    model = randomised(UNet2DModel(**{**BASE, **UNET2D["resnet-resampling"]}))
    g, gm = from_diffusers(model)
    assert g.inputs == ("x", "t") and g.outputs == ("head",)
    assert isinstance(g["down1"].block, ug.ResBlock) and g["down1"].block.resample == "avgpool"
    assert [e.src for e in g.in_edges("down1")] == ["enc0_0_attn", "time_embedding"]
    assert str(g.valid_sizes()) == "H and W must be multiples of 2, at least 2"
    # the module accepts the sizes the checker names, and refuses the others in its words
    with torch.no_grad():
        assert gm(torch.randn(1, 3, 10, 6), torch.tensor([4])).shape == (1, 3, 10, 6)
    with pytest.raises(ug.ShapeError, match="input height 9 is not a multiple of 2"):
        gm(torch.randn(1, 3, 9, 8), torch.tensor([4]))


def test_importing_unetgraph_does_not_import_diffusers():
    """diffusers is an optional dependency: only calling ug.interop imports it."""
    import subprocess
    import sys

    code = "import sys, unetgraph as ug; ug.interop.from_diffusers; print('diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_imported_graphs_are_plain_data():
    """An imported graph saves and loads like any graph (every new block serializes) and draws."""
    for kind, config in (("UNet2DModel", {**BASE, **UNET2D["fourier"]}), ("UNet2DConditionModel", COND_BASE)):
        g = graph_from_diffusers_config(config, kind)
        assert ug.loads(ug.dumps(g)) == g
        assert "time_embedding" in g.to_dot("blocks")
    g = graph_from_diffusers_config({**BASE, "mid_block_type": None})
    assert g["mid"].block == ug.Affine() and g["mid"].block.label() == "identity"
    assert [e.src for e in g.in_edges("merge1_0")] == ["mid", "enc1_0_attn"]


def test_optimized_module_goes_back_and_keys_map_one_to_one():
    model = randomised(UNet2DModel(**BASE))
    g, gm = from_diffusers(model)
    keys = diffusers_keys(g, gm.state_dict())
    assert sorted(keys.values()) == sorted(model.state_dict())
    fast, _ = ug.optimize(gm)
    for module in (fast, torch.compile(gm, backend="eager")):  # a lowered module carries its graph
        back = to_diffusers(module)
        assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())


U2, COND_KIND = "UNet2DModel", "UNet2DConditionModel"
REFUSED = [  # (model kind, configuration change, what the error says)
    (U2, dict(time_embedding_type="learned"), r"time_embedding_type='learned'"),
    (U2, dict(down_block_types=("SkipDownBlock2D", "AttnDownBlock2D")), r"down_block_types\[0\]='SkipDownBlock2D'"),
    (U2, dict(up_block_types=("AttnSkipUpBlock2D", "UpBlock2D")), r"up_block_types\[0\]='AttnSkipUpBlock2D'"),
    (U2, dict(class_embed_type="identity"), r"class_embed_type='identity'"),
    (U2, dict(act_fn="mish"), r"act_fn='mish'"),
    (U2, dict(attention_head_dim=12), r"attention_head_dim=12: does not divide the 64 channels"),
    (U2, dict(resnet_time_scale_shift="spatial"), r"resnet_time_scale_shift='spatial'"),
    (U2, dict(norm_num_groups=None), r"norm_num_groups=None"),
    (U2, dict(time_embedding_type="fourier", class_embed_type="timestep"), r"class_embed_type='timestep'"),
    (U2, dict(mystery=3), r"unknown field 'mystery'"),
    (COND_KIND, dict(addition_embed_type="text"), r"addition_embed_type='text'"),
    (COND_KIND, dict(encoder_hid_dim=16), r"encoder_hid_dim=16"),
    (COND_KIND, dict(cross_attention_dim=(24, 32)), r"cross_attention_dim=\(24, 32\)"),
    (
        COND_KIND,
        dict(mid_block_type="UNetMidBlock2DSimpleCrossAttn"),
        r"mid_block_type='UNetMidBlock2DSimpleCrossAttn'",
    ),
    (COND_KIND, dict(dual_cross_attention=True), r"dual_cross_attention=True"),
    (COND_KIND, dict(layers_per_block=(1, 2)), r"layers_per_block=\(1, 2\)"),
    (COND_KIND, dict(attention_head_dim=(3, 4)), r"attention_head_dim=\(3, 4\): 3 heads do not divide"),
    (COND_KIND, dict(transformer_layers_per_block=((1,), (1,))), r"transformer_layers_per_block"),
    (COND_KIND, dict(conv_in_kernel=4), r"conv_in_kernel=4"),
    (COND_KIND, dict(time_embedding_act_fn="silu"), r"time_embedding_act_fn='silu'"),
]


def test_imported_models_eject_to_plain_pytorch(tmp_path):
    """ug.eject writes the imported model as one standalone nn.Module with the same state-dict keys."""
    import importlib.util

    config = {**COND_BASE, **COND["linear-two-layers-only-cross"]}
    model = randomised(UNet2DConditionModel(**config))
    g, gm = from_diffusers(model)
    path = ug.eject(g, tmp_path / "sd_unet.py")
    spec = importlib.util.spec_from_file_location("sd_unet", path)
    source = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(source)
    assert "import unetgraph" not in path.read_text()
    net = source.UNet2DConditionModel()
    net.load_state_dict(gm.state_dict())  # the same keys
    ours, theirs = inputs_for(model, config)
    with torch.no_grad():
        assert torch.allclose(net.eval()(*ours), model(**theirs).sample, atol=1e-5)


class TestRefused:
    @pytest.mark.parametrize("kind, change, message", REFUSED)
    def test_configurations_that_do_not_map_name_the_field_and_value(self, kind, change, message):
        config = {**(BASE if kind == "UNet2DModel" else COND_BASE), **change}
        with pytest.raises(ug.SpecError, match=message):
            graph_from_diffusers_config(config, kind)

    def test_a_malformed_configuration_is_a_spec_error(self):
        with pytest.raises(ug.SpecError, match=r"block_out_channels=\('wide', 'wider'\): expected a sequence of pos"):
            graph_from_diffusers_config({**BASE, "block_out_channels": ("wide", "wider")})
        with pytest.raises(ug.SpecError, match="UNet2DModel config cannot be read: TypeError"):
            graph_from_diffusers_config({**BASE, "down_block_types": 5})
        with pytest.raises(ug.SpecError, match="diffusers model 'UNet3DModel' is not supported"):
            graph_from_diffusers_config(BASE, "UNet3DModel")

    def test_a_real_model_with_skip_blocks_is_refused_by_name(self):
        model = UNet2DModel(
            **{**BASE, "down_block_types": ("SkipDownBlock2D", "AttnSkipDownBlock2D")},
        )
        with pytest.raises(ug.SpecError, match=r"UNet2DModel config down_block_types\[0\]='SkipDownBlock2D'"):
            from_diffusers(model)

    def test_not_a_diffusers_unet(self):
        with pytest.raises(
            ug.SpecError, match="from_diffusers takes a UNet2DModel or UNet2DConditionModel, got a Conv2d"
        ):
            from_diffusers(torch.nn.Conv2d(1, 1, 1))
        with pytest.raises(ug.SpecError, match=r"to_diffusers takes a module made by unetgraph\.lower, got a Conv2d"):
            to_diffusers(torch.nn.Conv2d(1, 1, 1))

    def test_edits_that_break_the_layout_name_the_node(self):
        g, gm = from_diffusers(randomised(UNet2DModel(**BASE)))
        extra = g.insert_after("enc1_0", ug.ConvBlock(convs=1, norm="none", act="none"), name="extra")
        with pytest.raises(
            ug.SpecError,
            match=r"^extra: added \(encoder, level 1: .*\): the graph no longer fits diffusers' UNet2DModel layout",
        ) as e:
            to_diffusers(extra.lower(weights_from=gm))
        assert e.value.node == "extra"
        wider = g.set("dec1_1", dropout=0.5)
        with pytest.raises(ug.SpecError, match=r"^dec1_1: changed \(dropout: 0.0 → 0.5\)") as e:
            to_diffusers((wider, wider.lower(weights_from=gm)))
        attention = g.replace("mid_attn", ug.LinearAttention(groups=8))
        with pytest.raises(ug.SpecError, match=r"^mid_attn: a LinearAttention where diffusers' UNet2DModel has a Self"):
            to_diffusers((attention, attention.lower()))

    def test_an_edit_that_keeps_the_layout_goes_back(self):
        model = randomised(UNet2DModel(**BASE))
        g, gm = from_diffusers(model)
        dropped = g.map_blocks(lambda b: b.with_(dropout=0.2), where=lambda n: isinstance(n.block, ug.ResBlock))
        module = dropped.lower()
        module.load_state_dict(gm.state_dict())  # dropout has no weights: the same keys
        back = to_diffusers((dropped, module))
        assert back.config.dropout == 0.2 and model.config.dropout == 0.0
        assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())
