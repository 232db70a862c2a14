"""Backbones: timm, torchvision and user modules as one typed encoder node, and smp's Unet matched.

Small models keep this quick (resnet18 at depth 2–3, mobilenetv3_small_050, regnetx_002,
convnext_atto); the parity tests run smp's models themselves.
"""

import threading
from functools import partial

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torchvision
from deploy_helpers import randomize_norms, run_fresh
from thread_helpers import error_within, run_together
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

import unetgraph as ug


def _randomize(model: nn.Module) -> nn.Module:
    """Random norm statistics and affine parameters (defaults of 1 and 0 would hide a wrong map)."""
    randomize_norms(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                m.weight.uniform_(0.5, 1.5)
    return model


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, a.abs().max().item()))


# -- smp parity ------------------------------------------------------------------------------------------

SMP_ENCODERS = [
    "resnet34",  # smp's own ResNet: torchvision's model and keys
    "tu-resnet18",
    "tu-mobilenetv3_small_050",  # timm's BatchNormAct2d, squeeze-excitation, hard-swish
    "tu-regnetx_002",
    "tu-convnext_atto",  # features from 1/4: no skip at 1/2
]


@pytest.mark.parametrize("name", SMP_ENCODERS)
def test_smp_unet_equals_smp(name):
    ref = _randomize(smp.Unet(name, encoder_weights=None, classes=3)).eval()
    g = ug.presets.smp_unet(name, encoder_weights=None, classes=3)
    assert g.params == sum(p.numel() for p in ref.parameters())
    gm = g.lower().eval()
    assert sum(p.numel() for p in gm.parameters()) == g.params
    gm.load_state_dict(ug.presets.smp_state_dict(ref.state_dict()), strict=True)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        want, got = ref(x), gm(x)
    assert _close(want, got), (want - got).abs().max().item()


def test_smp_unet_options_in_channels_depth_and_bilinear():
    kwargs = dict(encoder_depth=3, decoder_channels=(32, 16, 8), in_channels=1, classes=2)
    ref = _randomize(smp.Unet("tu-resnet18", encoder_weights=None, decoder_interpolation="bilinear", **kwargs)).eval()
    g = ug.presets.smp_unet("tu-resnet18", encoder_weights=None, decoder_interpolation="bilinear", **kwargs)
    assert g.params == sum(p.numel() for p in ref.parameters())
    gm = g.lower().eval()
    gm.load_state_dict(ug.presets.smp_state_dict(ref.state_dict()), strict=True)
    x = torch.randn(1, 1, 32, 48)
    with torch.no_grad():
        assert _close(ref(x), gm(x))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"encoder_name": "efficientnet-b0"}, "one of smp's own encoder implementations"),
        ({"encoder_name": "tu-vit_tiny_patch16_224"}, "features start at 1/2 or 1/4"),
        ({"decoder_attention_type": "cbam"}, "decoder_attention_type='cbam': not matched; choose from None, 'scse'"),
        ({"activation": "sigmoid"}, "activation='sigmoid': only None"),
        ({"aux_params": {"classes": 2}}, "auxiliary classification head"),
        ({"decoder_use_norm": "inplace"}, "decoder_use_norm='inplace': not matched"),
        ({"encoder_weights": "ssl"}, "only 'imagenet'"),
        ({"encoder_depth": 6}, "encoder_depth=6: smp's Unet takes 1 … 5"),
    ],
)
def test_smp_unet_refuses_what_it_cannot_match(kwargs, message):
    with pytest.raises(ug.SpecError, match=message):
        ug.presets.smp_unet(**{"encoder_weights": None, **kwargs})


def test_smp_state_dict_names_a_key_it_cannot_map():
    with pytest.raises(ug.SpecError, match=r"decoder.center.0.weight"):
        ug.presets.smp_state_dict({"decoder.center.0.weight": torch.zeros(1)})


# -- the backbone node --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_unet() -> ug.UNetGraph:
    return ug.unet(3, 2, encoder=ug.Backbone("resnet18", depth=3), decoder_channels=(32, 16, 8), skip_first=False)


def test_types_levels_and_skips(resnet_unet):
    g = resnet_unet
    enc = g["encoder"]
    assert [(t.channels, t.scale[0]) for t in enc.outputs] == [(64, 0.5), (64, 0.25), (128, 0.125)]
    assert enc.levels == (1, 2, 3)
    assert [e.describe() for e in g.skips] == ["skip encoder[1]→merge2", "skip encoder→merge1"]
    assert g.in_edges("up2")[0].out == 2 and "merge0" not in g  # level 0 has no feature: no merge
    assert g.params == g.lower(device="meta").encoder.state_dict().__len__() * 0 + g.params  # meta lowering works


def test_state_dict_keys_are_the_backbones_own(resnet_unet):
    gm = resnet_unet.lower()
    feats = timm.create_model("resnet18", features_only=True, out_indices=(0, 1, 2))
    _randomize(feats)
    gm.encoder.load_state_dict(feats.state_dict(), strict=True)  # the node's module: the same keys
    whole = {f"encoder.{k}": v for k, v in feats.state_dict().items()}
    assert {k for k in gm.state_dict() if k.startswith("encoder.")} == set(whole)
    gm.load_state_dict({**gm.state_dict(), **whole}, strict=True)
    leaf = resnet_unet.replace("encoder", resnet_unet["encoder"].block.with_(inline=False)).lower().eval()
    leaf.load_state_dict(gm.state_dict(), strict=True)  # kept one call, the node's module is timm's own
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(leaf.encoder(x)[0], feats.eval()(x)[0])


def test_torchvision_keys_and_stages():
    g = ug.unet(3, 1, encoder=ug.Backbone("resnet18", source="torchvision", depth=3), decoder_channels=(8, 8, 8))
    assert g["encoder"].block.output_names(g["encoder"].inputs) == ("relu", "layer1", "layer2")
    gm = g.lower()
    extractor = create_feature_extractor(torchvision.models.resnet18(), ["relu", "layer1", "layer2"])
    gm.encoder.load_state_dict(extractor.state_dict(), strict=True)
    convnext = ug.Backbone("convnext_tiny", source="torchvision").found(3)  # stages found on the meta device
    assert convnext.reductions == (4, 8, 16, 32) and convnext.channels == (96, 192, 384, 768)


def test_valid_sizes_and_typed_errors(resnet_unet):
    g = resnet_unet
    assert str(g.valid_sizes()) == "H and W must be multiples of 8, at least 8"
    with pytest.raises(ug.ShapeError, match=r"input height 36 is not a multiple of 8"):
        g.check((1, 3, 36, 32))
    gm = g.lower()
    with pytest.raises(ug.ShapeError, match=r"does not fit: input width 20 is not a multiple of 8"):
        gm(torch.randn(1, 3, 16, 20))
    padded = g.lower(pad="auto").eval()
    assert padded(torch.randn(1, 3, 30, 21)).shape == (1, 2, 30, 21)
    with pytest.raises(ug.ShapeError, match=r"takes a 2D image"):
        ug.unet(3, 2, dims=3, encoder=ug.Backbone("resnet18"))


def test_convnext_starts_at_one_quarter():
    g = ug.presets.smp_unet("tu-convnext_atto", encoder_weights=None)
    assert g["encoder"].levels == (2, 3, 4, 5)
    assert str(g.valid_sizes()) == "H and W must be multiples of 32, at least 32"
    assert g.check((1, 3, 64, 64))["encoder"].outputs[0] == (1, 40, 16, 16)


def test_summary_counts_the_backbone(resnet_unet):
    r = resnet_unet.summary((1, 3, 32, 32))["encoder"]
    model = timm.create_model("resnet18", features_only=True, out_indices=(0, 1, 2))
    counter = ug.cost.flop_counter()
    with counter, torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert r.flops == counter.get_total_flops() and r.params == sum(p.numel() for p in model.parameters())
    assert r.activation_bytes == 4 * (64 * 16 * 16 + 64 * 8 * 8 + 128 * 4 * 4)


# -- documents ---------------------------------------------------------------------------------------


def test_document_round_trip(tmp_path):
    g = ug.unet(1, 2, encoder=ug.Backbone("resnet18", depth=2, kwargs={"drop_path_rate": 0.0}), decoder_channels=(8, 8))
    doc = g.to_dict()
    assert doc["nodes"]["encoder"]["block"]["kwargs"] == [["drop_path_rate", 0.0]]
    assert [e["out"] for e in doc["edges"] if e.get("out")] == [1]
    for suffix in ("yaml", "json"):
        assert ug.load(g.save(tmp_path / f"g.{suffix}")) == g


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ug.Backbone("resnet18", kwargs={"features_only": False}), "kwargs.features_only: set by the Backbone"),
        (lambda: ug.Backbone("resnet18", kwargs={"norm_layer": nn.BatchNorm2d}), "is not plain data"),
        (lambda: ug.Backbone("resnet18", source="keras"), "source: expected one of"),
        (lambda: ug.Backbone("mynet", source="module"), "'package.module:Class'"),
        (lambda: ug.Backbone("resnet18", pretrained="IMAGENET1K_V1"), "with source='torchvision'"),
        (lambda: ug.Backbone("resnet18", depth=0), "depth: expected a positive integer"),
    ],
)
def test_bad_specs(make, message):
    with pytest.raises(ug.SpecError, match=message):
        make()


def test_unknown_models_and_depths_are_named():
    with pytest.raises(ug.SpecError, match=r"timm has no such model.*did you mean"):
        ug.unet(3, 1, encoder=ug.Backbone("resnet19"))
    with pytest.raises(ug.SpecError, match=r"torchvision has no classification model"):
        ug.unet(3, 1, encoder=ug.Backbone("resnet19", source="torchvision"))
    with pytest.raises(ug.SpecError, match=r"depth=6 needs a feature at 1/64; its features are at 1/2, "):
        ug.unet(3, 1, encoder=ug.Backbone("resnet18", depth=6))
    with pytest.raises(ug.SpecError, match=r"decoder_channels: .* 3 levels; got 2 channel counts"):
        ug.unet(3, 1, encoder=ug.Backbone("resnet18", depth=3), decoder_channels=(8, 8))


# -- a user's module ---------------------------------------------------------------------------------


class TinyNet(nn.Module):
    """Three feature maps at 1/2, 1/4, 1/8, returned as a dict."""

    def __init__(self, width: int = 4, in_chans: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_chans, width, 3, stride=2, padding=1)
        self.stage1 = nn.Sequential(nn.BatchNorm2d(width), nn.Conv2d(width, 2 * width, 3, stride=2, padding=1))
        self.stage2 = nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1)

    def forward(self, x):
        a = torch.relu(self.stem(x))
        b = torch.relu(self.stage1(a))
        return {"s1": a, "s2": b, "s3": self.stage2(b)}


class Untraceable(TinyNet):
    """The same, with control flow on a size: torch.fx cannot trace it, so it stays one call."""

    def forward(self, x):
        if x.shape[-1] > 4096:
            x = x[..., ::2]
        return super().forward(x)


class ReadsValues(TinyNet):
    """Control flow on a tensor's value: it cannot run on the meta device, so it declares its features."""

    def forward(self, x):
        if x.sum() > 1e30:
            x = x * 0
        return super().forward(x)


def test_a_module_instance_backbone(tmp_path):
    net = TinyNet()
    _randomize(net)
    spec = ug.Backbone.from_module(net, stages=("s1", "s3"))
    assert spec.features == ((4, 2), (16, 8)) and spec.stages == ("s1", "s3")
    assert net.stem.weight.device.type == "cpu" and net.training  # the probe left it as it was
    g = ug.unet(3, 2, encoder=spec, decoder_channels=(8, 8, 8))
    assert [e.describe() for e in g.skips] == ["skip encoder→merge1"]
    gm = g.lower().eval()
    assert torch.equal(gm.encoder.stem.weight, net.stem.weight)  # a copy with the instance's weights
    assert gm.encoder.stem.weight is not net.stem.weight
    with pytest.raises(ug.SpecError, match=r"made from a module instance .* cannot be saved; register the class"):
        g.save(tmp_path / "g.yaml")
    with pytest.raises(ug.LoweringError, match=r"cannot be written as code"):
        ug.eject(g, tmp_path / "g.py")


def test_an_untraceable_module_stays_one_call():
    spec = ug.Backbone.from_module(Untraceable())
    gm = ug.unet(3, 2, encoder=spec, decoder_channels=(8, 8, 8)).lower().eval()
    assert "encoder_features = self.encoder(x_guard)" in gm.code
    assert gm(torch.randn(1, 3, 16, 16)).shape == (1, 2, 16, 16)
    with pytest.raises(ug.SpecError, match=r"item\(\) cannot be called on meta .* declare its features"):
        ug.Backbone.from_module(ReadsValues())
    declared = ug.Backbone.from_module(ReadsValues(), stages=("s1", "s2", "s3"), features=((4, 2), (8, 4), (16, 8)))
    gm = ug.unet(3, 2, encoder=declared, decoder_channels=(8, 8, 8)).lower().eval()
    assert gm(torch.randn(1, 3, 16, 16)).shape == (1, 2, 16, 16)


def test_a_registered_class_is_data_and_loading_never_imports(tmp_path):
    name = f"{__name__}:TinyNet"
    ug.register_backbone(TinyNet)
    spec = ug.Backbone(name, source="module", kwargs={"width": 2})
    g = ug.unet(3, 2, encoder=spec, decoder_channels=(8, 8, 8))
    path = g.save(tmp_path / "g.yaml")
    assert ug.load(path) == g
    text = path.read_text().replace(name, "os:system")
    (tmp_path / "evil.yaml").write_text(text)
    with pytest.raises(ug.RegistryError, match=r"'os:system' is not registered.*never imports a module named in data"):
        ug.load(tmp_path / "evil.yaml")
    with pytest.raises(ug.SpecError, match=r"not a list, tuple or dict of feature maps"):
        ug.Backbone.from_module(nn.Conv2d(3, 4, 3))


# -- lowering, passes, compile, export, eject -------------------------------------------------------


def test_layers_inline_and_keys_stay_the_same():
    spec = ug.Backbone("mobilenetv3_small_050", depth=3)
    inline = ug.unet(3, 2, encoder=spec, decoder_channels=(8, 8, 8)).lower().eval()
    leaf = ug.unet(3, 2, encoder=spec.with_(inline=False), decoder_channels=(8, 8, 8)).lower().eval()
    assert sorted(inline.state_dict()) == sorted(leaf.state_dict())
    assert "self.encoder.conv_stem" in inline.code and "self.encoder(" in leaf.code
    leaf.load_state_dict(_randomize(inline).state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(inline(x), leaf(x))
    _, report = ug.optimize(inline, example_inputs=[x])  # folds timm's BatchNormAct2d, keeps its act
    assert any("(act kept)" in c for c in report["fold_batchnorm"].changes)
    assert report.params[1] < report.params[0]


def test_two_threads_lower_the_same_backbone():
    g = ug.unet(3, 2, encoder=ug.Backbone("resnet18", depth=2), decoder_channels=(8, 8))
    results, errors = [], []

    def work():
        try:
            results.append(g.lower().code)
        except Exception as e:  # collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2 and results[0] == results[1]


def test_lowering_torchvision_backbones_while_other_threads_run_models():
    """A torchvision backbone's stages are traced without torchvision's tracer, which replaces
    ``nn.Module.__call__`` for every thread while it runs: a model called meanwhile in another
    thread failed with ``NameError: module is not installed as a submodule``."""
    graphs = [
        ug.unet(3, 1, encoder=ug.Backbone(name, source="torchvision", depth=2), decoder_channels=(8, 8))
        for name in ("resnet18", "mobilenet_v3_small")
    ]
    served = ug.unet(1, 2, widths=(4, 8)).lower().eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        want = served(x)

    def serve(i: int) -> None:
        with torch.no_grad():
            assert torch.equal(served(x), want), "a served output differs"

    counts = run_together(4, {"lowered": (lambda i: graphs[i % 2].lower(), 2), "served": (serve, 1)})
    assert counts["lowered"] >= 2 and counts["served"] >= 1


@pytest.fixture(scope="module")
def small_gm():
    g = ug.presets.smp_unet("resnet18", encoder_weights=None, encoder_depth=2, decoder_channels=(8, 4), classes=2)
    return _randomize(g.lower()).eval()


def test_compile_fullgraph_has_no_break(small_gm):
    torch._dynamo.reset()
    x = torch.randn(1, 3, 32, 32)
    explanation = torch._dynamo.explain(small_gm)(x)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0
    with torch.no_grad():
        assert torch.equal(torch.compile(small_gm, fullgraph=True, backend="eager")(x), small_gm(x))


def test_pt2_serves_two_sizes_and_onnx(small_gm, tmp_path):
    model = ug.load_exported(ug.export(small_gm, tmp_path / "m.pt2"))
    for size in ((32, 32), (64, 96)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            assert _close(model(x), small_gm(x))
    with pytest.raises(ug.ShapeError, match=r"not a multiple of 4"):
        model(torch.randn(1, 3, 30, 32))
    onnx = ug.load_exported(ug.export(small_gm, tmp_path / "m.onnx"))
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        assert _close(torch.as_tensor(onnx(x)), small_gm(x))


def test_eject_reproduces_outputs_in_a_fresh_process(tmp_path):
    g = ug.unet(1, 2, encoder=ug.Backbone("resnet18", depth=2), decoder_channels=(8, 4))
    gm = _randomize(g.lower()).eval()
    path = ug.eject(gm, tmp_path / "net.py")
    text = path.read_text()
    assert "import timm" in text and "self.encoder = timm.create_model(" in text
    assert "'resnet18', features_only=True, out_indices=(0, 1), in_chans=1" in text
    assert "encoder_layer1 = encoder_features[1]  # (B, 64, H/4, W/4)" in text
    x = torch.randn(2, 1, 32, 32)
    y, info = run_fresh(tmp_path, path, g.name, gm, [x])  # a new interpreter, no unetgraph imported
    assert info["imported"] == [] and info["keys"] == list(gm.state_dict())
    with torch.no_grad():
        assert torch.equal(y, gm(x))


def test_eject_torchvision_with_one_input_channel():
    g = ug.unet(1, 2, encoder=ug.Backbone("resnet18", source="torchvision", depth=2), decoder_channels=(8, 4))
    gm = _randomize(g.lower()).eval()
    source = ug.eject_source(gm)  # verify=True: the source runs and gives the module's outputs exactly
    assert "replace_first_conv(encoder_classifier, 1)" in source and "def replace_first_conv(" in source
    assert (
        "create_feature_extractor(\n            encoder_classifier, return_nodes=['relu', 'layer1']\n        )"
        in source
    )


# -- edits ----------------------------------------------------------------------------------------------


def test_replace_backbone_keeps_skips_by_level_and_weights_follow():
    g = ug.presets.smp_unet("tu-resnet18", encoder_weights=None, decoder_channels=(16, 16, 8, 8, 4))
    g2 = g.replace_backbone(ug.Backbone("convnext_atto", depth=5))
    assert [e.describe() for e in g2.skips] == [
        "skip encoder[2]→merge4",
        "skip encoder[1]→merge3",
        "skip encoder→merge2",
    ]
    assert "merge1" not in g2 and g2.in_edges("dec1")[0].src == "up1"
    gm = g.lower()
    gm2 = g2.lower(weights_from=gm)
    assert torch.equal(gm2.head.weight, gm.head.weight) and torch.equal(gm2.dec0.conv0.weight, gm.dec0.conv0.weight)
    g3 = g.replace_backbone(ug.Backbone("resnet18", depth=5), decoder_channels=(8, 8, 8, 8, 8))
    assert {g3[f"dec{i}"].type.channels for i in range(5)} == {8}
    with pytest.raises(ug.SpecError, match=r"decoder_channels has 2 entries; the decoder has 5 levels"):
        g.replace_backbone(ug.Backbone("resnet18", depth=5), decoder_channels=(8, 8))
    with pytest.raises(ug.GraphError, match=r"up4 takes encoder's output at level 5, and resnet18 \(timm\) has none"):
        g.replace_backbone(ug.Backbone("resnet18", depth=2))


# -- training controls -------------------------------------------------------------------------------


def test_freeze_the_encoder_for_fine_tuning():
    g = ug.unet(3, 2, encoder=ug.Backbone("resnet18", depth=2), decoder_channels=(8, 8))
    gm = g.lower()
    frozen = ug.freeze(gm, role="encoder")
    assert frozen.nodes == ("encoder",) and frozen.norms == 5  # bn1 and two per block of layer1
    assert frozen.parameters == sum(p.numel() for p in gm.encoder.parameters())
    before = {k: v.clone() for k, v in gm.state_dict().items()}
    opt = torch.optim.SGD([p for p in gm.parameters() if p.requires_grad], lr=0.1)
    gm.train()
    assert not gm.encoder.bn1.training and gm.dec0.norm0.training
    loss = gm(torch.randn(4, 3, 32, 32)).square().mean()
    loss.backward()
    opt.step()
    after = gm.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith("encoder."))  # stats too
    assert not torch.equal(after["dec0.conv0.weight"], before["dec0.conv0.weight"])
    assert set(gm.state_dict()) == set(before)  # frozen norms keep their keys
    back = ug.unfreeze(gm, node="encoder")
    assert back.norms == 5 and gm.encoder.bn1.training and type(gm.encoder.bn1) is nn.BatchNorm2d
    assert all(p.requires_grad for p in gm.parameters())
    ug.freeze(gm, node="encoder", norms="train")
    gm(torch.randn(2, 3, 32, 32))
    assert not torch.equal(gm.encoder.bn1.running_mean, before["encoder.bn1.running_mean"])
    with pytest.raises(ug.SpecError, match=r"choose what to freeze"):
        ug.freeze(gm)
    with pytest.raises(ug.NodeNotFoundError):
        ug.freeze(gm, node="encoderx")


# -- pretrained weights from local files, through timm's and torchvision's own loading ----------------


def test_timm_pretrained_from_a_local_file(tmp_path):
    full = _randomize(timm.create_model("resnet18"))
    torch.save(full.state_dict(), tmp_path / "resnet18.pth")
    spec = ug.Backbone("resnet18", depth=2, pretrained=True, weights=str(tmp_path / "resnet18.pth"))
    g = ug.unet(3, 1, encoder=spec, decoder_channels=(8, 8))
    assert g.params == ug.unet(3, 1, encoder=spec.with_(weights=None), decoder_channels=(8, 8)).params
    gm = g.lower()
    assert torch.equal(gm.encoder.get_submodule("layer1.0.conv1").weight, full.layer1[0].conv1.weight)
    assert torch.equal(gm.encoder.bn1.running_var, full.bn1.running_var)
    assert not torch.equal(
        ug.unet(3, 1, encoder=spec.with_(weights=None, pretrained=False), decoder_channels=(8, 8))
        .lower()
        .encoder.conv1.weight,
        full.conv1.weight,
    )


def test_torchvision_pretrained_from_its_cache_and_a_file(tmp_path, monkeypatch):
    full = _randomize(torchvision.models.resnet18())
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(full.state_dict(), cache / weights.url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    spec = ug.Backbone("resnet18", source="torchvision", depth=2, pretrained="IMAGENET1K_V1")
    gm = ug.unet(3, 1, encoder=spec, decoder_channels=(8, 8)).lower()
    assert torch.equal(gm.encoder.get_submodule("layer1.1.conv2").weight, full.layer1[1].conv2.weight)
    torch.save({k: v for k, v in full.state_dict().items() if not k.startswith("fc.")}, tmp_path / "no_fc.pt")
    spec = ug.Backbone("resnet18", source="torchvision", depth=2, weights=str(tmp_path / "no_fc.pt"))
    gm = ug.unet(3, 1, encoder=spec, decoder_channels=(8, 8)).lower()
    assert torch.equal(gm.encoder.conv1.weight, full.conv1.weight)
    torch.save({"stem.weight": full.conv1.weight}, tmp_path / "wrong.pt")
    with pytest.raises(ug.SpecError, match=r"wrong.pt does not fit: keys the model does not have: stem.weight"):
        ug.unet(3, 1, encoder=spec.with_(weights=str(tmp_path / "wrong.pt")), decoder_channels=(8, 8)).lower()


def test_an_extractor_whose_modes_trace_differently_is_not_inlined():
    """torchvision's extractor holds a graph per mode (its class renamed after the model): one whose
    training and evaluation graphs differ stays a called module, one whose graphs agree inlines."""
    from torchvision.models.feature_extraction import create_feature_extractor

    from unetgraph.blocks.backbone_sources import inline_graph

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.stem(x * 2 if self.training else x)

    same = create_feature_extractor(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), return_nodes=["1"])
    differ = create_feature_extractor(Branchy(), return_nodes=["stem"])
    assert type(differ).__name__ == "Branchy"  # why the check cannot go by the class name
    assert inline_graph(same, ["1"]) is not None
    assert inline_graph(differ, ["stem"]) is None


def test_a_weights_file_that_is_a_fifo_or_code_is_refused_in_words(tmp_path):
    """A FIFO named as a backbone's weights blocked lowering (and eject) forever in torch.load's
    open(); a file torch refuses passed on torch's advice to load with weights_only=False."""
    import os

    os.mkfifo(tmp_path / "fifo.pt")
    torch.save({"model": nn.Linear(2, 2)}, tmp_path / "module.pt")  # a pickled module, not tensors
    for source in ("torchvision", "timm"):
        spec = ug.Backbone("resnet18", source=source, depth=2, weights=str(tmp_path / "fifo.pt"))
        lower = partial(ug.unet(3, 1, encoder=spec, decoder_channels=(8, 8)).lower)
        error = error_within(60, lower, f"lowering with a FIFO as {source} weights")
        assert isinstance(error, ug.SpecError) and "fifo.pt: not a regular file" in str(error), error
    spec = ug.Backbone("resnet18", source="torchvision", depth=2, weights=str(tmp_path / "module.pt"))
    with pytest.raises(ug.SpecError, match=r"module\.pt is not a weights file that loads without running code") as e:
        ug.unet(3, 1, encoder=spec, decoder_channels=(8, 8)).lower()
    assert "weights_only=False" not in str(e.value)
