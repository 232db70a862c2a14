"""segmentation_models_pytorch's Unet in and out: real smp models, every tensor randomised, equal outputs.

Small sizes keep this quick: 64×64 inputs, narrow decoders, resnet18/34 and two small timm encoders
of families the backbone tests do not use (GhostNet; EfficientViT, whose features start at 1/4).
"""

import subprocess
import sys
import warnings

import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn

import unetgraph as ug

# (encoder, smp's Unet arguments, prefixes of the weights smp keeps but never runs)
CASES = {
    "resnet18-d3-in1-c4": (
        "resnet18",
        dict(encoder_depth=3, decoder_channels=(32, 16, 8), in_channels=1, classes=4),
        ("encoder.layer3.", "encoder.layer4."),
    ),
    "resnet34-d5-nobn": (
        "resnet34",
        dict(decoder_channels=(32, 32, 16, 16, 8), decoder_use_batchnorm=False),
        (),
    ),
    "resnet18-d4-scse-bilinear": (
        "resnet18",
        dict(
            encoder_depth=4,
            decoder_channels=(64, 32, 32, 16),
            decoder_attention_type="scse",
            decoder_interpolation="bilinear",
            classes=4,
        ),
        ("encoder.layer4.", "decoder.blocks.3.attention1."),
    ),
    "ghostnet-d4-in1": (
        "tu-ghostnet_050",
        dict(encoder_depth=4, decoder_channels=(32, 16, 16, 8), in_channels=1, decoder_use_norm=False),
        (),
    ),
    "efficientvit-d5-scse": (
        "tu-efficientvit_b0",
        dict(decoder_channels=(32, 32, 16, 16, 16), decoder_attention_type="scse", classes=4),
        ("decoder.blocks.4.attention1.",),  # level 0 has no skip; level 1's is empty (from 1/4), still attended
    ),
}


def _smp_unet(encoder: str, **kwargs) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # decoder_use_batchnorm: smp's old spelling
        return smp.Unet(encoder, encoder_weights=None, **kwargs)


def _randomized(model: nn.Module) -> nn.Module:
    """Every parameter scaled and shifted at random, every batch norm's statistics random: a wrong
    map, a transposed matrix or a missed running mean changes the outputs."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(torch.empty(p.shape).uniform_(0.5, 1.5, generator=gen))
            p.add_(torch.empty(p.shape).uniform_(-0.05, 0.05, generator=gen))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.num_batches_tracked.fill_(int(torch.randint(1, 100, (), generator=gen)))
    return model


def _count(model: nn.Module, skip: tuple[str, ...] = ()) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(skip))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float32 rounding: ``atol=1e-5`` relative to the output's largest magnitude (outputs
    of these random weights reach ~100; in float64 the two agree to 1e-11)."""
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, a.abs().max().item()))


@pytest.fixture(scope="module", params=list(CASES))
def imported(request):
    encoder, kwargs, unused = CASES[request.param]
    model = _randomized(_smp_unet(encoder, **kwargs)).eval()
    graph, module = ug.interop.from_smp(model)
    return model, graph, module.eval(), unused, kwargs.get("in_channels", 3)


def test_imported_model_has_smps_parameters_and_outputs(imported):
    model, graph, module, unused, channels = imported
    assert graph.params == _count(model, unused)  # all of smp's parameters but those it never runs
    assert sum(p.numel() for p in module.parameters()) == graph.params
    assert (graph.params == _count(model)) == (unused == ())
    x = torch.randn(2, channels, 64, 64)
    with torch.no_grad():
        want, got = model(x), module(x)
    assert _close(want, got), (want - got).abs().max().item()
    assert want.std() > 0.01  # outputs that carry the weights, not a constant


def test_round_trip_gives_smps_state_dict_back(imported):
    model, graph, module, unused, channels = imported
    back = ug.interop.to_smp(module)
    assert type(back) is smp.Unet and not back.training
    want, got = model.state_dict(), back.state_dict()
    assert list(got) == list(want)
    differ = [k for k in want if not torch.equal(want[k], got[k])]
    assert all(k.startswith(unused) for k in differ)  # only the weights smp never runs: fresh there
    assert ug.interop.to_smp((graph, module), state_dict=True).keys() == want.keys()
    x = torch.randn(1, channels, 64, 64)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


def test_the_graph_is_smp_unets_preset_with_named_attention():
    model = _smp_unet("resnet18", **CASES["resnet18-d4-scse-bilinear"][1])
    graph, _ = ug.interop.from_smp(model)
    assert graph == ug.presets.smp_unet("resnet18", encoder_weights=None, **CASES["resnet18-d4-scse-bilinear"][1])
    names = [n.name for n in graph.nodes()]
    assert [n for n in names if "_att" in n] == [
        "dec3_att1",
        "dec3_att2",
        "dec2_att1",
        "dec2_att2",
        "dec1_att1",
        "dec1_att2",
        "dec0_att2",  # level 0 has no skip: smp's attention1 there never runs
    ]
    assert names[names.index("merge2") : names.index("dec2_att2") + 1] == ["merge2", "dec2_att1", "dec2", "dec2_att2"]
    assert str(graph.valid_sizes()) == "H and W must be multiples of 16, at least 16"


def test_training_mode_device_and_dtype_follow_the_model():
    model = _randomized(_smp_unet("resnet18", encoder_depth=3, decoder_channels=(16, 16, 8))).double()
    _, module = ug.interop.from_smp(model)
    assert module.training and next(module.parameters()).dtype == torch.float64
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    assert torch.allclose(module(x), model(x), atol=1e-10)  # training mode: batch statistics on both sides
    back = ug.interop.to_smp(module)
    assert back.training and next(back.parameters()).dtype == torch.float64


# -- refusals -----------------------------------------------------------------------------------

SMALL = dict(encoder_depth=3, decoder_channels=(16, 16, 16))


class MyUnet(smp.Unet):
    pass


def _with_gelu():
    model = _smp_unet("resnet18", **SMALL)
    model.decoder.blocks[1].conv2[2] = nn.GELU()
    return model


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # smp's own scSE of 0 channels
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: smp.UnetPlusPlus("resnet18", encoder_weights=None, **SMALL), r"UnetPlusPlus is not supported"),
        (lambda: smp.FPN("resnet18", encoder_weights=None, encoder_depth=3), r"FPN is not supported"),
        (lambda: MyUnet("resnet18", encoder_weights=None, **SMALL), r"MyUnet is not supported.*not .* subclasses"),
        (lambda: _smp_unet("resnet18", activation="sigmoid", **SMALL), r"activation='sigmoid'"),
        (lambda: _smp_unet("resnet18", aux_params={"classes": 2}, **SMALL), r"aux_params=\{'classes': 2\}"),
        (lambda: _smp_unet("resnet18", decoder_use_norm="layernorm", **SMALL), r"decoder_use_norm='layernorm'"),
        (
            lambda: _smp_unet("resnet18", decoder_use_norm={"type": "batchnorm", "eps": 1e-3}, **SMALL),
            r"decoder_use_norm=\{'type': 'batchnorm', 'eps': 0.001\}",
        ),
        (lambda: _smp_unet("resnet18", decoder_interpolation="bicubic", **SMALL), r"decoder_interpolation='bicubic'"),
        (lambda: _smp_unet("mobilenet_v2", **SMALL), r"encoder_name: 'mobilenet_v2' is one of smp's own"),
        (lambda: _smp_unet("resnet18", output_stride=16, **SMALL), r"output_stride=16: an encoder keyword argument"),
        (
            lambda: _smp_unet("resnet18", encoder_depth=3, decoder_channels=(32, 16, 8), decoder_attention_type="scse"),
            r"decoder_attention_type='scse': dec0_att2 would take 8 channels",
        ),
        (_with_gelu, r"'decoder.blocks.1.conv2.2' is GELU where smp's Unet of its configuration has ReLU"),
    ],
)
def test_what_is_not_matched_is_a_spec_error_naming_the_field_and_value(make, message):
    model = make()
    with pytest.raises(ug.SpecError, match=message):
        ug.interop.from_smp(model)


# -- the way back --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    model = _randomized(_smp_unet("resnet18", **SMALL)).eval()
    return ug.interop.from_smp(model)


def test_an_edit_that_keeps_the_layout_goes_back_with_its_weights(small):
    graph, module = small
    wider = graph.set("dec1", channels=24)  # decoder_channels (16, 24, 16)
    edited = wider.lower(weights_from=module).eval()
    back = ug.interop.to_smp(edited)
    assert back.config["decoder_channels"] == (16, 24, 16)
    assert torch.equal(back.decoder.blocks[0].conv1[0].weight, module.dec2.conv0.weight)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert _close(back.eval()(x), edited(x))


@pytest.mark.parametrize(
    "edit, error, message",
    [
        (lambda g: g.insert_after("dec1", ug.ConvBlock(convs=1), name="extra"), ug.GraphError, r"^extra: added"),
        (lambda g: g.set("dec1", act="gelu"), ug.GraphError, r"^dec1: changed \(act: 'relu' → 'gelu'\)"),
        (lambda g: g.set("head", kernel=1), ug.GraphError, r"^head: changed \(kernel: 3 → 1\)"),
        (lambda g: g.remove_skip("encoder", "merge1"), ug.GraphError, r"^merge1: .*smp's Unet layout"),
        (
            lambda g: g.replace_backbone(ug.Backbone("resnet18", depth=3, kwargs={"drop_path_rate": 0.1})),
            ug.GraphError,
            r"^encoder: changed .*drop_path_rate",
        ),
    ],
)
def test_an_edit_that_leaves_smps_layout_names_the_node(small, edit, error, message):
    graph, _ = small
    edited = edit(graph)
    with pytest.raises(error, match=message):
        ug.interop.to_smp(edited.lower())


def test_graphs_and_modules_smp_has_no_place_for_are_refused(small):
    _, module = small
    with pytest.raises(ug.GraphError, match=r"^encoder: smp's Unet layout needs a node 'encoder'"):
        ug.interop.to_smp(ug.unet(3, 1, (8, 16)).lower())
    folded, _ = ug.optimize(module, example_inputs=[torch.randn(1, 3, 32, 32)])
    with pytest.raises(ug.LoweringError, match=r"the module has no tensor encoder.bn1.weight"):
        ug.interop.to_smp(folded)
    with pytest.raises(ug.SpecError, match=r"to_smp: expected a module made by unetgraph.lower"):
        ug.interop.to_smp(nn.Conv2d(3, 3, 1))


def test_smp_is_imported_only_when_a_function_runs():
    code = (
        "import sys, unetgraph as ug; ug.interop.from_smp, ug.interop.to_smp; "
        "print('segmentation_models_pytorch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
