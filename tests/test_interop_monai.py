"""ug.interop.from_monai / to_monai against real MONAI models: every weight and norm statistic
randomised, equal parameter counts, equal outputs, state dicts that survive the round trip, the
sizes MONAI runs at, and named errors for what the block library cannot express."""

import math

import pytest
import torch
from monai.networks import nets
from torch import nn

import unetgraph as ug


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every float tensor random (defaults of 1 and 0 would hide a wrong map): conv weights scaled
    by their fan-in, norm scales around 1, running variances positive, PReLU slopes in (0, 0.5)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                t.copy_(torch.randint(0, 100, t.shape, generator=gen))
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif t.dim() > 1:
                t.copy_(torch.randn(t.shape, generator=gen) / math.sqrt(t[0].numel()))
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
    for m in model.modules():
        if isinstance(m, nn.PReLU):
            with torch.no_grad():
                m.weight.uniform_(0.0, 0.5, generator=gen)
    return model


# id -> (MONAI model, input shape)
CASES = {
    "UNet-2d": (lambda: nets.UNet(2, 1, 2, (4, 8, 16), (2, 2)), (2, 1, 16, 16)),
    "UNet-2d-res2-batch-leaky-ADN-dropout": (
        lambda: nets.UNet(
            2,
            2,
            3,
            (4, 8, 8),
            (2, 2),
            num_res_units=2,
            norm="batch",
            act=("leakyrelu", {"negative_slope": 0.2}),
            dropout=0.1,
            adn_ordering="ADN",
            bias=False,
        ),
        (2, 2, 16, 12),
    ),
    "UNet-3d-res1-group-anisotropic": (
        lambda: nets.UNet(
            3,
            2,
            4,
            (4, 8, 8),
            ((1, 2, 2), 2),
            kernel_size=(3, 1, 3),
            up_kernel_size=(1, 3, 3),
            num_res_units=1,
            norm=("group", {"num_groups": 2, "eps": 1e-4}),
            act="relu",
        ),
        (1, 2, 4, 8, 8),
    ),
    "UNet-1d-stride3-upkernel1-elu": (
        lambda: nets.UNet(1, 1, 1, (4, 8), (3,), up_kernel_size=1, act=("elu", {"alpha": 0.5})),
        (2, 1, 27),
    ),
    "UNet-2d-channelwise-prelu-affine": (
        lambda: nets.UNet(
            2,
            1,
            4,
            (4, 4),
            (2,),
            act=("prelu", {"num_parameters": 4, "init": 0.1}),
            norm=("instance", {"affine": True}),
        ),
        (2, 1, 8, 8),
    ),
    "BasicUNet-2d": (lambda: nets.BasicUNet(2, 1, 2, features=(4, 4, 8, 8, 16, 4)), (2, 1, 32, 32)),
    "BasicUNet-1d-nontrainable-prelu-batch": (
        lambda: nets.BasicUNet(
            1,
            2,
            3,
            features=(4, 4, 8, 8, 8, 6),
            upsample="nontrainable",
            act="prelu",
            norm="batch",
            bias=False,
            dropout=0.1,
        ),
        (2, 2, 64),
    ),
    "BasicUNet-3d-group-swish": (
        lambda: nets.BasicUNet(3, 1, 2, features=(2, 4, 4, 4, 8, 2), norm=("group", {"num_groups": 2}), act="swish"),
        (1, 1, 16, 16, 16),
    ),
    "AttentionUnet-2d": (lambda: nets.AttentionUnet(2, 1, 2, (4, 8, 16), (2, 2), dropout=0.1), (2, 1, 16, 16)),
    "AttentionUnet-3d-anisotropic": (
        lambda: nets.AttentionUnet(3, 1, 2, (4, 8), ((1, 2, 2),), kernel_size=(1, 3, 3), up_kernel_size=3),
        (2, 1, 4, 8, 8),
    ),
    "AttentionUnet-1d-stride3": (lambda: nets.AttentionUnet(1, 2, 1, (4, 6, 8), (3, 2)), (2, 2, 36)),
    "DynUNet-2d": (lambda: nets.DynUNet(2, 1, 2, [3, 3, 3], [1, 2, 2], [2, 2], filters=[4, 8, 16]), (2, 1, 16, 16)),
    "DynUNet-3d-res-deep-supervision-batch": (
        lambda: nets.DynUNet(
            3,
            1,
            2,
            [3, (1, 3, 3), 3, 3],
            [1, (1, 2, 2), 2, 2],
            [(1, 2, 2), 2, 2],
            filters=[4, 8, 8, 16],
            res_block=True,
            deep_supervision=True,
            deep_supr_num=2,
            norm_name="batch",
            trans_bias=True,
        ),
        (2, 1, 4, 16, 16),
    ),
    "DynUNet-1d-res-group-dropout": (
        lambda: nets.DynUNet(
            1,
            2,
            3,
            [3, 3, 3, 3],
            [1, 2, 2, 2],
            [2, 2, 2],
            filters=[4, 8, 8, 8],
            res_block=True,
            norm_name=("group", {"num_groups": 2}),
            act_name="relu",
            dropout=0.1,
        ),
        (2, 2, 32),
    ),
}


def monai_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def first(out):
    return out["head"] if isinstance(out, dict) else out


@pytest.mark.parametrize("case", list(CASES))
def test_imported_model_has_monais_parameters_outputs_and_state_dict_back(case):
    make, shape = CASES[case]
    torch.manual_seed(0)
    model = randomise(make().eval())
    g, gm = ug.interop.from_monai(model)
    assert g.name == type(model).__name__ and not gm.training
    assert g.params == monai_params(model) == sum(p.numel() for p in gm.parameters())
    x = torch.randn(shape)
    with torch.no_grad():
        want, got = model(x), gm(x)
    assert g.check(shape).outputs[g.outputs[0]] == tuple(want.shape)
    torch.testing.assert_close(first(got), want, atol=1e-5, rtol=0)
    back = ug.interop.to_monai(gm)
    assert type(back) is type(model) and not back.training
    original, returned = model.state_dict(), back.state_dict()
    assert list(returned) == list(original)
    for key, value in original.items():
        assert torch.equal(returned[key], value), key
    with torch.no_grad():
        assert torch.equal(back(x), want)


def test_deep_supervision_heads_are_extra_outputs_matching_monais_training_stack():
    make, shape = CASES["DynUNet-3d-res-deep-supervision-batch"]
    model = randomise(make().train())
    g, gm = ug.interop.from_monai(model)
    assert g.outputs == ("head", "head1", "head2") and gm.training
    x = torch.randn(shape)
    with torch.no_grad():
        stacked = model(x)  # (N, 1 + heads, C, *S): each head interpolated (nearest) to the output's size
        outs = gm(x)
    assert stacked.shape[1] == 3
    torch.testing.assert_close(outs["head"], stacked[:, 0], atol=1e-5, rtol=0)
    for i in (1, 2):
        resized = nn.functional.interpolate(outs[f"head{i}"], stacked.shape[3:])
        torch.testing.assert_close(resized, stacked[:, i], atol=1e-5, rtol=0)


def monai_output_size(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    try:
        with torch.no_grad():
            return tuple(model(torch.randn(shape)).shape)
    except (RuntimeError, ValueError):
        return None


def checker_output_size(g: ug.UNetGraph, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    try:
        return g.check(shape).outputs[g.outputs[0]]
    except ug.ShapeError:
        return None


@pytest.mark.parametrize("channels", [(4, 8), (4, 8, 8)])
def test_unet_sizes_are_monais_own_including_the_odd_ones_it_rounds_up(channels):
    model = nets.UNet(2, 1, 1, channels, (2,) * (len(channels) - 1)).eval()
    g, gm = ug.interop.from_monai(model)
    rules = g.valid_sizes()
    for n in range(1, 20):
        shape = (1, 1, n, n)
        want = monai_output_size(model, shape)
        assert checker_output_size(g, shape) == want, n  # same output size, or both refuse
        assert rules.contains((n, n)) == (want is not None), n
    # a 35×35 input: a stride-2 convolution rounds 35 up to 18, the transposed one doubles it
    assert checker_output_size(g, (1, 1, 35, 35)) == monai_output_size(model, (1, 1, 35, 35)) == (1, 1, 36, 36)
    assert rules.axes[0].margin is None  # the output is not aligned with the input at every valid size
    with pytest.raises(ug.ShapeError, match="does not fit"):
        gm(torch.randn(1, 1, 2, 2))  # refused by the guard before any layer runs (MONAI: a raw error)


def test_basic_unet_refuses_the_sizes_monai_pads_silently():
    model = nets.BasicUNet(2, 1, 1, features=(2, 2, 2, 2, 4, 2)).eval()
    g, gm = ug.interop.from_monai(model)
    assert str(g.valid_sizes()) == "H and W must be multiples of 16, at least 32"
    assert monai_output_size(model, (1, 1, 40, 40)) == (1, 1, 40, 40)  # runs, padding its up-samples
    with pytest.raises(ug.ShapeError, match="40×40 does not fit: input height 40 is not a multiple of 16"):
        gm(torch.randn(1, 1, 40, 40))
    assert checker_output_size(g, (1, 1, 48, 48)) == monai_output_size(model, (1, 1, 48, 48))


def test_imported_basic_unet_compiles_as_one_graph_where_monais_does_not():
    model = randomise(nets.BasicUNet(2, 1, 2, features=(2, 2, 4, 4, 4, 2)).eval())
    _, gm = ug.interop.from_monai(model)
    x = torch.randn(1, 1, 32, 32)
    torch._dynamo.reset()
    with torch.no_grad():
        with pytest.raises(Exception, match="isinstance"):  # torch.jit.isinstance in UpCat.forward
            torch.compile(model, fullgraph=True, backend="eager")(x)
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(gm, fullgraph=True, backend="eager")(x), model(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: nets.UNet(2, 1, 1, (4, 8), (2,), act="softmax"), r"UNet\(act='softmax', norm='INSTANCE'\) \(act\): "),
        (
            lambda: nets.UNet(2, 1, 1, (4, 8), (2,), norm=("layer", {"normalized_shape": (4, 4, 4)})),
            r"UNet\(act='PRELU', norm=\('layer'.*\(norm\): LayerNorm is not supported",
        ),
        (
            lambda: nets.UNet(2, 1, 1, (4, 8), (2,), norm=("batch", {"momentum": None})),
            r"norm=\('batch', \{'momentum': None\}\).*momentum=None",
        ),
        (lambda: nets.BasicUNet(2, 1, 1, upsample="pixelshuffle"), "BasicUNet upsample: pixelshuffle is not supported"),
        (
            lambda: nets.BasicUNet(2, 1, 1, act=("gelu", {"approximate": "tanh"})),
            r"BasicUNet act.*GELU\(approximate='tanh'\) is not supported",
        ),
        (
            lambda: nets.DynUNet(2, 1, 1, [3, 3, 3], [1, 2, 2], [2, 2], act_name="prelu"),
            r"DynUNet.act_name='prelu': DynUNet's blocks apply one activation layer after both",
        ),
        (
            lambda: nets.DynUNet(2, 1, 1, [3, 3, 3], [1, 3, 3], [3, 3], filters=[2, 2, 2]),
            r"DynUNet.kernel_size\[1\]=3 with strides\[1\]=3: MONAI pads kernel 3 at stride 3 by 0",
        ),
        (
            lambda: nets.DynUNet(
                2, 1, 1, [3, 3, 3], [1, 2, 2], [2, 2], filters=[2, 2, 2], dropout=("alphadropout", {})
            ),
            r"DynUNet.dropout=\('alphadropout', \{\}\) is not supported",
        ),
        (
            lambda: nets.unet.CheckpointUNet(2, 1, 1, (4, 8), (2,)),
            r"monai.networks.nets.unet.CheckpointUNet is not supported; it imports monai.networks.nets.BasicUNet",
        ),
        (lambda: nn.Conv2d(1, 1, 1), "torch.nn.modules.conv.Conv2d is not supported"),
    ],
)
def test_what_the_block_library_cannot_express_is_a_spec_error_naming_the_field(make, message):
    with pytest.raises(ug.SpecError, match=message):
        ug.interop.from_monai(make())


@pytest.fixture(scope="module")
def imported():
    model = randomise(nets.UNet(2, 1, 2, (4, 8, 8), (2, 2)).eval())
    return ug.interop.from_monai(model)


class TestToMonai:
    def test_an_edit_that_keeps_the_layout_goes_back_with_its_weights(self, imported):
        g, gm = imported
        relu = g.map_blocks(lambda b: b.with_(act="relu"), where=lambda n: getattr(n.block, "act", "none") != "none")
        gm2 = relu.lower(weights_from=gm)
        peer = ug.interop.to_monai((relu, gm2))
        assert peer.act == ("relu", {}) and not any(isinstance(m, nn.PReLU) for m in peer.modules())
        x = torch.randn(2, 1, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(peer(x), gm2(x), atol=1e-5, rtol=0)
        state = ug.interop.to_monai(gm2, state_dict=True)
        assert state.keys() == peer.state_dict().keys()

    def test_an_edit_of_one_node_that_breaks_the_layout_names_the_node(self, imported):
        g, gm = imported
        one = g.set("enc1", act="relu")
        with pytest.raises(ug.GraphError, match=r"enc1: ConvBlock act='relu' \(MONAI's UNet: 'prelu'\)") as e:
            ug.interop.to_monai((one, one.lower(weights_from=gm)))
        assert e.value.node == "enc1"
        extra = g.insert_after("enc0", ug.ConvBlock(convs=1, norm="batch"), name="enc0b")
        with pytest.raises(ug.GraphError, match="enc0b: MONAI's UNet layout has no node 'enc0b'"):
            ug.interop.to_monai((extra, extra.lower()))
        other = g.replace("merge1", ug.Merge("add"))
        with pytest.raises(ug.GraphError, match=r"merge1: Merge mode='add' \(MONAI's UNet: 'concat'\)"):
            ug.interop.to_monai((other, other.lower()))

    def test_a_graph_from_elsewhere_or_a_folded_module_is_refused(self):
        with pytest.raises(ug.GraphError, match=r"graph 'Mine' is not named after a MONAI model \(BasicUNet, UNet"):
            ug.interop.to_monai(ug.unet(1, 1, widths=(4, 8), name="Mine").lower())
        model = nets.BasicUNet(2, 1, 1, features=(2, 2, 2, 2, 4, 2), norm="batch").eval()
        _, gm = ug.interop.from_monai(model)
        folded, _ = ug.optimize(gm, prepack=False)  # batch norms folded into the convolutions
        with pytest.raises(ug.LoweringError, match=r"enc0\.norm0 .* does not match MONAI's conv_0\.conv_0\.adn\.N"):
            ug.interop.to_monai(folded)
        fast, _ = ug.optimize(gm)  # and the convolutions prepacked for oneDNN
        with pytest.raises(
            ug.LoweringError, match=r"enc0\.conv0 \(PackedConv.* does not match MONAI's conv_0\.conv_0\.conv"
        ):
            ug.interop.to_monai(fast)


@pytest.mark.parametrize("case", ["UNet-2d-res2-batch-leaky-ADN-dropout", "DynUNet-1d-res-group-dropout"])
def test_an_imported_model_ejects_to_plain_pytorch_with_monais_outputs(case, tmp_path):
    import importlib.util

    make, shape = CASES[case]
    model = randomise(make().eval())
    g, gm = ug.interop.from_monai(model)
    path = ug.eject(gm, tmp_path / "ejected.py")
    assert "unetgraph" not in path.read_text().split('"""', 2)[2]  # residual units and blocks stand alone
    spec = importlib.util.spec_from_file_location(f"ejected_{case.replace('-', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ejected = getattr(module, g.name)().eval()
    ejected.load_state_dict(gm.state_dict())
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(ejected(x), model(x), atol=1e-5, rtol=0)


def test_monai_is_imported_only_when_a_function_runs():
    import subprocess
    import sys

    code = "import sys, unetgraph as ug; ug.interop.from_monai; ug.interop.to_monai; print('monai' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
