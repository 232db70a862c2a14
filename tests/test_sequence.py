"""ug.Sequence: types chain, sizes compose, params/FLOPs add up, lowering sees every part's layers."""

from dataclasses import dataclass

import pytest
import torch
from drawing_graphs import VecInput
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils.flop_counter import FlopCounterMode

import unetgraph as ug
from unetgraph.types import TensorType

X = TensorType.spatial(6, 2)


def test_types_chain_and_label():
    seq = ug.Sequence(ug.ConvBlock(channels=8), ug.Down(), ug.ConvBlock(convs=1, kernel=1))
    t = seq.infer([X])
    assert t.channels == 8 and t.scale == X.rescaled((ug.TensorType.spatial(1, 2).scale[0] / 2,) * 2).scale
    assert seq.label() == "2×conv3 batch relu → maxpool /2 → 1×conv1 batch relu"
    assert ug.Sequence().infer([X]) == X and ug.Sequence().label() == "identity"


def test_size_ops_concatenate():
    seq = ug.Sequence(ug.ConvBlock(padding="valid"), ug.Down(), ug.ConvBlock(convs=1, padding="valid"))
    assert seq.out_size(20, 2, 0) == (((20 - 4) // 2) - 2, True)
    assert len(seq.size_ops(2, 0)) == 2 + 1 + 1


@pytest.mark.parametrize(
    "seq",
    [
        ug.Sequence(ug.ConvBlock(channels=8), ug.ConvBlock(convs=1, norm="group", groups=4)),
        ug.Sequence(ug.Down("conv", channels=4), ug.Up("nearest", channels=5), ug.Head(channels=2)),
        ug.Sequence(ug.Sequence(ug.ConvBlock(channels=4)), ug.ConvBlock(stride=2, padding=1)),
        ug.Sequence(),
    ],
    ids=["convs", "down-up-head", "nested", "empty"],
)
def test_params_and_flops_equal_the_built_module(seq):
    out = seq.infer([X])
    module = seq.build([X], out).eval()
    assert seq.params([X], out) == sum(p.numel() for p in module.parameters())
    shape = (2, 6, 12, 10)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        y = module(torch.randn(*shape))
    assert seq.flops([shape], tuple(y.shape)) == counter.get_total_flops()
    assert seq.out_size(12, 2, 0)[0] == y.shape[2] and out.channels == y.shape[1]


def test_lowering_emits_each_part_layers_under_the_node():
    g = ug.unet(3, 2, widths=(8, 16)).replace("mid", ug.Sequence(ug.ConvBlock(), ug.ConvBlock(convs=1, kernel=1)))
    gm = g.lower().eval()
    names = [n.name for n in gm.graph.nodes]
    for n in ["mid_convblock0_conv0", "mid_convblock0_norm1", "mid_convblock1_conv0", "mid"]:
        assert n in names
    assert "mid.convblock1.conv0.weight" in gm.state_dict()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        ShapeProp(gm).propagate(x)
    by = {n.name: n for n in gm.graph.nodes}
    report = g.check((1, 3, 16, 16))
    for node, fx_name in ug.fx_node_names(gm).items():
        assert tuple(by[fx_name].meta["tensor_meta"].shape) == report[node].output
    explanation = torch._dynamo.explain(gm)(x)
    assert explanation.graph_break_count == 0


def test_a_merge_first_sequence_replaces_a_merge_and_the_decoder():
    g = ug.unet(3, 2, widths=(8, 16))
    fused = g.replace("merge0", ug.Sequence(ug.Merge(), ug.ConvBlock(channels=8))).remove("dec0")
    assert fused["merge0"].type.channels == 8 and [e.src for e in fused.in_edges("merge0")] == ["enc0", "up0"]
    assert fused.lower()(torch.randn(1, 3, 8, 8)).shape == (1, 2, 8, 8)


def test_valid_crop_merge_first():
    g = ug.presets.classic_unet().replace("merge0", ug.Sequence(ug.Merge(crop=True), ug.ConvBlock(padding="valid")))
    assert g["merge0"].block.size_policy == "crop"
    # two more valid convolutions at full resolution: the output shrinks by 4 more
    assert ug.presets.classic_unet().valid_sizes().margin == (92, 92) and g.valid_sizes().margin == (94, 94)
    n = g.valid_sizes().axes[0].minimum
    assert g.check((1, 1, n, n)).outputs["head"] == (1, 2, n - 188, n - 188)


class _Shift(nn.Module):
    def __init__(self, c_vec, c):
        super().__init__()
        self.proj = nn.Linear(c_vec, c)

    def forward(self, x, v):
        return x + self.proj(v)[:, :, None, None]


@dataclass(frozen=True)
class Shift(ug.BlockSpec):
    """Adds a projection of a conditioning vector: a block with ``max_cond = 1``."""

    max_cond = 1

    def infer(self, inputs, sources=()):
        return inputs[0]

    def build(self, inputs, output):
        return _Shift(inputs[1].channels, inputs[0].channels)


@pytest.fixture
def cond_blocks():
    """Registered for one test only: the registry test in test_blocks builds every registered block alone."""
    ug.register_block(VecInput)
    ug.register_block(Shift)
    yield
    ug.unregister_block("VecInput")
    ug.unregister_block("Shift")


def test_conditioning_reaches_every_part_that_takes_it(cond_blocks):
    seq = ug.Sequence(Shift(), ug.ConvBlock(convs=1), Shift())
    assert (seq.min_inputs, seq.max_inputs, seq.max_cond) == (1, 1, 1)
    b = ug.GraphBuilder("Cond")
    b.input("x", channels=3, dims=2)
    b.add("t", VecInput(channels=4), "input", None, [])
    b.add("body", seq, "encoder", 0, ["x", ug.In("t", ug.EdgeKind.COND)])
    g = b.build(["body"])
    assert g["body"].params == 2 * (4 * 3 + 3) + 3 * 3 * 9 + 2 * 3
    gm = g.lower().eval()
    x, t = torch.randn(2, 3, 8, 8), torch.randn(2, 4)
    ref = seq.build(g["body"].inputs, g["body"].type).eval()
    ref.load_state_dict(gm.body.state_dict())
    with torch.no_grad():
        assert torch.equal(gm(x, t), ref.shift2(ref.convblock1(ref.shift0(x, t)), t))
    assert g.check({"x": (2, 3, 8, 8), "t": (2, 4)}).outputs["body"] == (2, 3, 8, 8)
    assert ug.loads(ug.dumps(g)) == g


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ug.Sequence(ug.ConvBlock(), "conv"), "Sequence.blocks\\[1\\]: expected a block spec"),
        (lambda: ug.Sequence(ug.Input()), "Input takes no input"),
        (lambda: ug.Sequence(ug.ConvBlock(), ug.Merge()), "Merge takes 2\\+ inputs; only the first block"),
        (lambda: ug.Sequence(ug.ConvBlock(), blocks=[ug.ConvBlock()]), "not both"),
        (lambda: ug.Sequence(ug.Merge(), Shift()), "varying number of inputs"),
        (lambda: ug.Sequence(blocks=3), "Sequence.blocks: expected a list of block specs"),
    ],
)
def test_validation(make, match):
    with pytest.raises(ug.SpecError, match=match):
        make()


def test_part_errors_name_the_part_and_node():
    g = ug.unet(3, 2, widths=(8, 16))
    with pytest.raises(
        ug.SpecError,
        match=r"replace mid: mid \(.*\): part 1 \(1×conv3 group relu\): GroupNorm groups=32 does not divide 8 chan",
    ):
        g.replace("mid", ug.Sequence(ug.ConvBlock(), ug.ConvBlock(convs=1, norm="group")))


def test_spec_is_data():
    seq = ug.Sequence(ug.ConvBlock(channels=4), ug.Sequence(ug.Down(factor=(1, 2))))
    assert seq == ug.Sequence(blocks=[ug.ConvBlock(channels=4), ug.Sequence(ug.Down(factor=(1, 2)))])
    assert hash(seq) == hash(ug.create_block(seq.to_dict()))
    assert seq.with_(blocks=(ug.ConvBlock(),)).blocks == (ug.ConvBlock(),)
    assert repr(ug.Sequence(ug.Down())).startswith("Sequence(Down(mode='maxpool'")


def test_shapes_of_every_rank_map_to_a_type():
    """Blocks given concrete shapes (shape notes, FLOP counts) rebuild types from them; a timestep's
    ``(N,)`` raised IndexError inside a Sequence's shape notes (fuzz seed 2025512682, an ``add`` edit)."""
    from fractions import Fraction

    from unetgraph.types import TensorType

    assert TensorType.of_shape((4,)) == TensorType(1, (), "scalar")
    assert TensorType.of_shape((4, 16)) == TensorType(16, ())
    assert TensorType.of_shape((4, 3, 8, 8)) == TensorType(3, (Fraction(1), Fraction(1)))


def test_a_sequence_with_cross_attention_on_a_context_checks_and_counts_as_its_parts():
    """A Sequence rebuilds its parts' types from concrete shapes; a context ``(N, L, D)`` on its
    cond edge was read as a dense 1D tensor, so ``check`` refused a graph that builds and runs
    ("CrossAttention needs a context ... got 7ch@1 (1D)")."""
    shapes = {"x": (2, 3, 16, 16), "context": (2, 7, 5)}
    conv, attn = ug.ConvBlock(channels=32, convs=1), ug.CrossAttention(heads=2)

    def graph(split: bool) -> ug.UNetGraph:
        b = ug.GraphBuilder()
        b.input("x", channels=3)
        b.input("context", channels=5, kind="context")
        b.add("stem", ug.ConvBlock(channels=32), "encoder", 0, ["x"])
        if split:
            b.add("c", conv, "encoder", 0, ["stem"])
            b.add("block", attn, "encoder", 0, ["c", ug.In("context", "cond")])
        else:
            b.add("block", ug.Sequence(conv, attn), "encoder", 0, ["stem", ug.In("context", "cond")])
        b.add("head", ug.Head(channels=2), "head", 0, ["block"])
        return b.build(["head"])

    whole, split = graph(False), graph(True)
    assert ug.check(whole, shapes)["block"].output == (2, 32, 16, 16)
    flops = ug.summary(whole, shapes).flops
    assert flops == ug.summary(split, shapes).flops
    measured = ug.cost.measure(whole.lower(device="meta"), *(torch.empty(s, device="meta") for s in shapes.values()))
    assert flops == sum(f for _, f in measured.values())
    # the rule, one place: three axes on a cond edge are a sequence, elsewhere a dense 1D tensor
    assert TensorType.of_shape((2, 7, 5), cond=True) == TensorType(5, (), "sequence")
    assert attn.shape_types([(2, 32, 4, 4), (2, 7, 5)])[1].form == "sequence"
    assert ug.ConvBlock().shape_types([(2, 7, 5)])[0] == TensorType.spatial(7, 1)
