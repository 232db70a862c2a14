"""The block library: every registered block through params, FLOPs, check → lower → forward →
backward → torch.compile(fullgraph=True) in 1D/2D/3D, and the bad inputs each must refuse."""

from fractions import Fraction

import pytest
import torch
import torch._dynamo
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils.flop_counter import FlopCounterMode

import unetgraph as ug
from unetgraph.blocks.gates import SqueezeExcitationModule
from unetgraph.types import TensorType

# name -> (spec, extra inputs) examples: every registered block must appear here.
# Extra inputs: "emb" (a time embedding through a cond edge), "ctx" (a context sequence),
# "gate" (the block is a two-input merge fed by a skip and the decoder path).
EXAMPLES = {
    "ConvBlock": [
        ug.ConvBlock(channels=8, mid_channels=4, norm="group", groups=2),
        # activations with parameters (counted by the formulas), norm options, MONAI's layer order
        ug.ConvBlock(
            channels=6, norm="instance(affine=False)", act="prelu(channelwise=True)", order="NDA", dropout=0.1
        ),
    ],
    "Down": [ug.Down("conv", channels=8, kernel=3, padding=0, pad_end=1), ug.Down("pixel_unshuffle", channels=6)],
    "Up": [
        ug.Up("pixel_shuffle", channels=4),
        ug.Up("nearest", channels=4, norm="batch", act="relu"),
        ug.Up("transpose", factor=3, kernel=3, padding=1, output_padding=2, norm="batch", act="prelu", order="ADN"),
        ug.Up("linear", channels=3, kernel=1, conv_first=True, align_corners=True, dropout=0.1),
    ],
    "Head": [
        ug.Head(channels=3, kernel=3, norm="group", groups=2, act="silu"),
        ug.Head(channels=2, act="prelu(channelwise=True)", dropout=0.2),
    ],
    "Merge": [ug.Merge("concat")],
    "ResBlock": [
        ug.ResBlock(channels=8, groups=2),
        ug.ResBlock(channels=8, groups=2, cond="scale_shift", dropout=0.1),
        ug.ResBlock(channels=4, norm="batch", act="relu", pre_norm=False, stride=2),
        ug.ResBlock(channels=8, groups=2, resample="avgpool", cond_act=False, output_scale=2.0),
        ug.ResBlock(groups=2, resample="nearest", cond="scale_shift"),
    ],
    "SelfAttention": [
        ug.SelfAttention(heads=2, groups=2),
        ug.SelfAttention(norm="none", out_bias=False, output_scale=2.0),
    ],
    "CrossAttention": [ug.CrossAttention(head_dim=2, groups=2)],
    "LinearAttention": [ug.LinearAttention(heads=2, head_dim=4)],
    "AttentionGate": [ug.AttentionGate(channels=3)],
    "SqueezeExcitation": [ug.SqueezeExcitation("scse", reduction=2), ug.SqueezeExcitation("cse", reduction=2)],
    "TimestepEmbedding": [
        ug.TimestepEmbedding(dim=6, channels=8),
        ug.TimestepEmbedding(dim=6, channels=8, encoding="fourier", scale=16.0, flip_sin_to_cos=True),
    ],
    "Transformer": [
        ug.Transformer(heads=2, groups=2),
        ug.Transformer(head_dim=2, groups=2, layers=2, linear_projection=True, only_cross_attention=True, ff="gelu"),
    ],
    "Affine": [ug.Affine(2.0, -1.0)],
    "ScaleBy": [ug.ScaleBy("divide"), ug.ScaleBy("multiply")],
    "ClassEmbedding": [ug.ClassEmbedding(5, 8)],
    "Input": [ug.Input(channels=4, dims=2)],
    "Sequence": [ug.Sequence(ug.ConvBlock(channels=8, convs=1, norm="group", groups=2), ug.ResBlock(groups=2))],
    "ResidualUnit": [
        ug.ResidualUnit(channels=8, stride=2, subunits=2, act="prelu(channelwise=True)", dropout=0.1),
        ug.ResidualUnit(channels=6, norm="group", groups=3, act="elu(alpha=0.5)", order="ADN", last_conv_only=True),
    ],
    "BasicResBlock": [
        ug.BasicResBlock(channels=8, stride=2, act="prelu", dropout=0.1),
        ug.BasicResBlock(norm="batch(eps=0.001)", act="relu", bias=True),
    ],
    "Backbone": [ug.Backbone("resnet18", depth=2)],  # 2D only; features at 1/2 and 1/4
}
ALL = [(name, spec) for name, specs in EXAMPLES.items() for spec in specs]
SIZES = {1: (12,), 2: (12, 8), 3: (4, 8, 4)}


def test_examples_cover_the_registry():
    assert set(EXAMPLES) == set(ug.block_names())


def wrap(spec: ug.BlockSpec, dims: int) -> ug.UNetGraph:
    """A small graph around ``spec``: x → stem → spec → head, with t, y or context inputs as it needs."""
    b = ug.GraphBuilder("Wrap")
    b.input("x", channels=4, dims=dims)
    name = spec.type_name
    if name == "Input":
        b.add("stem", ug.ConvBlock(channels=4, convs=1), "stem", 0, ["x"])
        return b.build(["stem"])
    if name == "TimestepEmbedding":
        b.input("t", kind="timestep")
        b.add("emb", spec, "embedding", None, ["t"])
        b.add("res", ug.ResBlock(channels=4, groups=2), "encoder", 0, ["x", ug.In("emb", "cond")])
        return b.build(["res"])
    if name == "ClassEmbedding":
        b.input("y", kind="label")
        b.add("emb", spec, "embedding", None, ["y"])
        b.add("res", ug.ResBlock(channels=4, groups=2, cond="scale_shift"), "encoder", 0, ["x", ug.In("emb", "cond")])
        return b.build(["res"])
    b.add("stem", ug.ConvBlock(channels=4, convs=1, norm="none"), "stem", 0, ["x"])
    ins: list = ["stem"]
    if name in ("ResBlock",):
        b.input("t", kind="timestep")
        b.add("temb", ug.TimestepEmbedding(dim=4, channels=6), "embedding", None, ["t"])
        ins.append(ug.In("temb", "cond"))
    if name == "ScaleBy":
        b.input("t", kind="timestep")
        ins.append(ug.In("t", "cond"))
    if name in ("CrossAttention", "Transformer"):
        b.input("context", channels=5, kind="context")
        ins.append(ug.In("context", "cond"))
    if name in ("Merge", "AttentionGate"):
        b.add("side", ug.ConvBlock(channels=6, convs=1), "decoder", 0, ["stem"])
        ins = [ug.In("stem", "skip"), "side"]
    node = b.add("block", spec, "encoder" if name not in ("Merge", "AttentionGate") else "merge", 0, ins)
    deepest = len(b.node(node).outputs) - 1  # a block with several outputs: the head takes the last
    b.add("head", ug.Head(channels=2), "head", 0, [ug.In(node, "data", out=deepest)])
    return b.build(["head"])


def example_inputs(g: ug.UNetGraph, dims: int) -> dict[str, torch.Tensor]:
    makers = {
        "dense": lambda t: torch.randn(2, t.channels, *SIZES[dims]),
        "scalar": lambda t: torch.tensor([3.0, 250.0]),
        "index": lambda t: torch.tensor([1, 4]),
        "sequence": lambda t: torch.randn(2, 7, t.channels),
    }
    return {n: makers[g[n].type.form](g[n].type) for n in g.inputs}


ONLY_2D = ("Backbone",)  # timm and torchvision models are 2D
CASES = [(n, s, d) for n, s in ALL for d in (1, 2, 3) if d == 2 or n not in ONLY_2D]


@pytest.mark.parametrize("name, spec, dims", CASES, ids=[f"{n}:{s.label()}-{d}" for n, s, d in CASES])
def test_block_check_lower_forward_backward_compile(name, spec, dims):
    g = wrap(spec, dims)
    inputs = example_inputs(g, dims)
    report = g.check({n: tuple(v.shape) for n, v in inputs.items()})
    gm = g.lower()
    assert sum(p.numel() for p in gm.parameters()) == g.params == report.params
    ShapeProp(gm).propagate(*inputs.values())
    names = ug.fx_node_names(gm)
    fx_nodes = {n.name: n for n in gm.graph.nodes}
    for n in g:
        assert tuple(fx_nodes[names[n]].meta["tensor_meta"].shape) == report[n].output, n
    out = gm(*inputs.values())
    out.square().mean().backward()
    assert all(p.grad is not None for p in gm.parameters() if p.requires_grad)
    torch._dynamo.reset()
    gm.eval()
    with torch.no_grad():  # fullgraph=True raises on any graph break
        compiled = torch.compile(gm, fullgraph=True, backend="eager")
        assert torch.allclose(compiled(*inputs.values()), gm(*inputs.values()), atol=1e-6)


def _types_and_shapes(spec, dims=2):
    """Input types and shapes of ``spec`` alone (as the wrapper graph feeds it)."""
    g = wrap(spec, dims)
    node = g["emb"] if spec.type_name in ("TimestepEmbedding", "ClassEmbedding") else g["block"]
    shapes = g.check({n: tuple(v.shape) for n, v in example_inputs(g, dims).items()})[node.name].inputs
    return node, shapes


FLOP_BLOCKS = [(n, s) for n, s in ALL if n not in ("Input", "Merge")]


@pytest.mark.parametrize("name, spec", FLOP_BLOCKS, ids=[f"{n}:{s.label()}" for n, s in FLOP_BLOCKS])
def test_params_and_flops_formulas_equal_the_module_and_flop_counter(name, spec):
    node, shapes = _types_and_shapes(spec)
    module = spec.build(node.inputs, node.type).eval()
    assert spec.params(node.inputs, node.type) == sum(p.numel() for p in module.parameters())
    args = [
        torch.randn(s) if node.inputs[i].form in ("dense", "sequence") else torch.tensor([1, 3])
        for i, s in enumerate(shapes)
    ]
    counter = ug.cost.flop_counter()  # FlopCounterMode + torch's SDPA formula for the CPU kernel
    with counter, torch.no_grad():
        y = module(*args)
    counted = counter.get_total_flops()
    y = y[-1] if isinstance(y, tuple) else y  # several outputs: flops() is given the last one
    if isinstance(spec, ug.SelfAttention | ug.CrossAttention):
        meta = FlopCounterMode(display=False)  # plain torch counts SDPA on meta tensors
        with meta, torch.no_grad(), torch.device("meta"):
            spec.build(node.inputs, node.type)(*[a.to("meta") for a in args])
        assert meta.get_total_flops() == counted
    assert spec.flops(shapes, tuple(y.shape)) == counted


def test_pixel_unshuffle_and_shuffle_match_torch_in_2d_and_invert_in_3d():
    x = torch.randn(2, 3, 8, 12)
    down = ug.Down("pixel_unshuffle")
    t = TensorType.spatial(3, 2)
    assert torch.equal(down.build([t], down.infer([t]))(x), torch.nn.PixelUnshuffle(2)(x))
    from unetgraph.blocks.sampling import DepthToSpace, SpaceToDepth

    assert torch.equal(DepthToSpace((2, 2))(torch.nn.PixelUnshuffle(2)(x)), x)
    v = torch.randn(1, 2, 4, 6, 8)
    assert torch.equal(DepthToSpace((1, 2, 2))(SpaceToDepth((1, 2, 2))(v)), v)
    assert down.infer([TensorType.spatial(3, 3)]).scale == (Fraction(1, 2),) * 3


class TestBadInput:
    def test_heads_that_do_not_divide_channels(self):
        b = ug.GraphBuilder()
        b.input("x", channels=6, dims=2)
        with pytest.raises(
            ug.ShapeError, match=r"attn \(SelfAttention \(4 heads\)\): heads=4 does not divide 6 channels"
        ):
            b.add("attn", ug.SelfAttention(heads=4, groups=3), "encoder", 0, ["x"])
        with pytest.raises(ug.ShapeError, match="head_dim=4 does not divide 6 channels"):
            b.add("attn", ug.SelfAttention(head_dim=4, groups=3), "encoder", 0, ["x"])

    def test_group_norm_groups_that_do_not_divide_channels(self):
        with pytest.raises(
            ug.SpecError, match=r"enc0_0 \(res conv3 group silu\): GroupNorm groups=32 does not divide 48"
        ):
            ug.diffusion_unet(3, widths=(48, 96), resblock=ug.ResBlock(groups=32))
        with pytest.raises(ug.SpecError, match="GroupNorm groups=4 does not divide 6 channels"):
            ug.unet(1, 1, widths=(6,), block=ug.ConvBlock(norm="group", groups=4))

    def test_cond_edge_to_a_block_that_takes_no_conditioning(self):
        b = ug.GraphBuilder()
        b.input("x", channels=4, dims=2)
        b.input("t", kind="timestep")
        b.add("temb", ug.TimestepEmbedding(dim=8), "embedding", None, ["t"])
        with pytest.raises(ug.GraphError, match="cond edge temb→enc: ConvBlock takes no conditioning input"):
            b.add("enc", ug.ConvBlock(channels=4), "encoder", 0, ["x", ug.In("temb", "cond")])

    def test_missing_t_at_call_time_is_a_shape_error_naming_it(self):
        g = ug.diffusion_unet(
            3, widths=(8, 16), layers_per_block=1, resblock=ug.ResBlock(groups=4), attention=ug.SelfAttention(groups=4)
        )
        gm = g.lower()
        x = torch.randn(1, 3, 8, 8)
        with pytest.raises(ug.ShapeError, match=r"input t is missing: the model is called as forward\(x, t\)"):
            gm(x)
        with pytest.raises(ug.ShapeError, match=r"input t expects rank 1 \(N,\), got rank 2: shape \(1, 1\)"):
            gm(x, torch.ones(1, 1))

    def test_labels_must_be_integers_and_context_must_have_its_width(self):
        g = ug.diffusion_unet(
            3,
            widths=(8, 16),
            layers_per_block=1,
            num_classes=3,
            context_channels=5,
            resblock=ug.ResBlock(groups=4),
            attention=ug.SelfAttention(groups=4),
            cross_attention=ug.CrossAttention(groups=4),
        )
        assert g.inputs == ("x", "t", "y", "context")
        gm = g.lower()
        x, t = torch.randn(2, 3, 8, 8), torch.tensor([1, 2])
        with pytest.raises(ug.ShapeError, match=r"input y expects \(N,\) integer class labels"):
            gm(x, t, torch.tensor([0.0, 1.0]), torch.randn(2, 4, 5))
        with pytest.raises(ug.ShapeError, match=r"input context expects 5 features \(N, L, 5\), got 6"):
            gm(x, t, torch.tensor([0, 1]), torch.randn(2, 4, 6))
        assert gm(x, t, torch.tensor([0, 2]), torch.randn(2, 4, 5)).shape == (2, 3, 8, 8)
        with pytest.raises(ug.ShapeError, match=r"input context expects rank 3 \(N, L, 5\)"):
            g.check({"x": (2, 3, 8, 8), "t": (2,), "y": (2,), "context": (2, 5)})

    def test_a_3d_stride_on_a_2d_graph(self):
        with pytest.raises(
            ug.ShapeError, match=r"mid \(.*\): ConvBlock.stride=\(1, 2, 2\) has 3 entries but the graph is 2D"
        ):
            ug.presets.nnunet_plain(1, 2, (8, 16), (3, 3), (1, (1, 2, 2)), dims=2)
        with pytest.raises(ug.ShapeError, match=r"ResBlock.stride=\(1, 2, 2\) has 3 entries but the graph is 2D"):
            ug.unet(1, 1, widths=(4, 8), block=ug.ResBlock(groups=2, stride=(1, 2, 2)), down=None)

    def test_cross_attention_needs_a_context_sequence(self):
        b = ug.GraphBuilder()
        b.input("x", channels=4, dims=2)
        with pytest.raises(ug.ShapeError, match="CrossAttention needs a context"):
            b.add("xattn", ug.CrossAttention(groups=2), "encoder", 0, ["x"])

    def test_embeddings_refuse_the_wrong_input(self):
        b = ug.GraphBuilder()
        b.input("x", channels=4, dims=2)
        with pytest.raises(ug.ShapeError, match="TimestepEmbedding needs a timestep input"):
            b.add("temb", ug.TimestepEmbedding(dim=8), "embedding", None, ["x"])
        b.input("t", kind="timestep")
        with pytest.raises(ug.ShapeError, match="ClassEmbedding needs integer class labels"):
            b.add("cemb", ug.ClassEmbedding(3, 8), "embedding", None, ["t"])

    @pytest.mark.parametrize(
        "make, message",
        [
            (lambda: ug.SelfAttention(heads=2, head_dim=4), "give heads or head_dim, not both"),
            (lambda: ug.ResBlock(cond="concat"), "ResBlock.cond"),
            (lambda: ug.ResBlock(kernel=2), "odd kernel"),
            (lambda: ug.Down("maxpool", pad_end=1), "pad_end is for mode='conv'"),
            (lambda: ug.Up("nearest", conv=False, norm="batch"), "with conv=False there is none"),
            (lambda: ug.Input(kind="text"), "Input.kind"),
            (lambda: ug.SqueezeExcitation("se"), "did you mean"),
        ],
    )
    def test_bad_fields(self, make, message):
        with pytest.raises(ug.SpecError, match=message):
            make()

    def test_timestep_embedding_without_a_width_is_a_shape_error_everywhere(self):
        spec, t, out = ug.TimestepEmbedding(), TensorType(1, (), "scalar"), TensorType(32, ())
        for call in (lambda: spec.build([t], out), lambda: spec.params([t], out), lambda: spec.flops([(2,)], (2, 32))):
            with pytest.raises(ug.ShapeError, match=r"TimestepEmbedding\.dim is not set"):
                call()

    def test_squeeze_excitation_module_needs_a_branch(self):
        with pytest.raises(ug.SpecError, match="needs a channel branch, a spatial branch or both"):
            SqueezeExcitationModule(None, None, 2)
        spatial = nn.Sequential(nn.Conv2d(4, 1, 1), nn.Sigmoid())
        x = torch.randn(1, 4, 3, 3)
        assert torch.equal(SqueezeExcitationModule(None, spatial, 2)(x), x * spatial(x))


class TestDiffusionBlocksRefuse:
    """The blocks diffusers' models need refuse what they cannot run, in words, before building."""

    def test_scale_by_needs_a_per_sample_scalar(self):
        b = ug.GraphBuilder()
        b.input("x", channels=4, dims=2)
        with pytest.raises(ug.ShapeError, match=r"ScaleBy needs a per-sample scalar \(N,\): add a cond edge"):
            b.add("s", ug.ScaleBy(), "head", 0, ["x"])
        b.input("context", channels=3, kind="context")
        with pytest.raises(ug.ShapeError, match=r"needs a per-sample scalar \(N,\) on its cond edge, got sequence"):
            b.add("s", ug.ScaleBy(), "head", 0, ["x", ug.In("context", "cond")])
        with pytest.raises(ug.SpecError, match=r"ScaleBy\.op: expected one of 'divide', 'multiply', got 'add'"):
            ug.ScaleBy("add")

    def test_transformer_context_rules(self):
        b = ug.GraphBuilder()
        b.input("x", channels=8, dims=2)
        b.input("t", kind="timestep")
        with pytest.raises(ug.ShapeError, match="only_cross_attention needs a cond edge from an Input"):
            b.add("tr", ug.Transformer(groups=2, only_cross_attention=True), "encoder", 0, ["x"])
        with pytest.raises(
            ug.ShapeError, match=r"Transformer needs a context, a sequence \(N, L, D\) on its cond edge"
        ):
            b.add("tr", ug.Transformer(groups=2), "encoder", 0, ["x", ug.In("t", "cond")])
        with pytest.raises(ug.ShapeError, match="heads=3 does not divide 8 channels"):
            b.add("tr", ug.Transformer(heads=3, groups=2), "encoder", 0, ["x"])
        with pytest.raises(ug.SpecError, match="give heads or head_dim, not both"):
            ug.Transformer(heads=2, head_dim=4)
        with pytest.raises(ug.SpecError, match=r"Transformer\.ff: expected one of 'geglu', 'gelu'"):
            ug.Transformer(ff="swiglu")

    def test_resampling_resblock_and_fourier_embedding_fields(self):
        with pytest.raises(ug.SpecError, match=r"resample='avgpool' and stride=2: give one of them"):
            ug.ResBlock(resample="avgpool", stride=2)
        with pytest.raises(ug.SpecError, match=r"ResBlock\.resample: expected one of 'none', 'avgpool', 'nearest'"):
            ug.ResBlock(resample="bilinear")
        with pytest.raises(ug.SpecError, match=r"TimestepEmbedding\.dim: expected an even width for fourier, got 7"):
            ug.TimestepEmbedding(dim=7, encoding="fourier")
        # the resampled block's sizes: pooled (floor) or doubled, shortcut included
        g = ug.GraphBuilder()
        g.input("x", channels=4, dims=2)
        g.add("down", ug.ResBlock(channels=8, groups=2, resample="avgpool"), "encoder", 0, ["x"])
        g.add("up", ug.ResBlock(groups=2, resample="nearest"), "decoder", 0, ["down"])
        report = g.build(["up"]).check((1, 4, 9, 6))
        assert report["down"].output == (1, 8, 4, 3) and report["up"].output == (1, 8, 8, 6)

    def test_fourier_frequencies_are_a_parameter_that_does_not_train(self):
        spec = ug.TimestepEmbedding(dim=8, encoding="fourier", scale=16.0, mlp=False)
        g = ug.GraphBuilder()
        g.input("t", kind="timestep")
        g.add("emb", spec, "embedding", None, ["t"])
        gm = g.build(["emb"]).lower()
        (name, frequencies), *_ = gm.named_parameters()
        assert name == "emb.weight" and frequencies.shape == (4,) and not frequencies.requires_grad
        assert frequencies.abs().max() > 1  # drawn with standard deviation 16
        t = torch.tensor([0.5, 2.0])
        angle = torch.log(t)[:, None] * frequencies[None] * 2 * torch.pi
        assert torch.allclose(gm(t), torch.cat([angle.sin(), angle.cos()], dim=-1))
