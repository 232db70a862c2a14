"""Output ports: a block with several outputs, whose skips name the output they take (Edge.out).

A small test block (two strided convolutions, an output after each) exercises the graph, the
checker, the cost model, lowering, edits and the drawing without timm or torchvision.
"""

from dataclasses import dataclass
from fractions import Fraction

import pytest
import torch
from torch import nn

import unetgraph as ug
from unetgraph.sizes import Window
from unetgraph.types import EdgeKind, TensorType


class _TwoScales(nn.Module):
    def __init__(self, cin: int, c1: int, c2: int) -> None:
        super().__init__()
        self.down1 = nn.Conv2d(cin, c1, 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)

    def forward(self, x):
        a = self.down1(x)
        return a, self.down2(torch.relu(a))


@dataclass(frozen=True)
class TwoScales(ug.BlockSpec):
    """Outputs at 1/2 and 1/4 of its input (left unregistered: tests must not grow the registry)."""

    c1: int = 6
    c2: int = 10

    def infer_outputs(self, inputs, sources=()):
        (x,) = inputs
        return (
            TensorType(self.c1, x.scale).rescaled((Fraction(1, 2),) * 2),
            TensorType(self.c2, x.scale).rescaled((Fraction(1, 4),) * 2),
        )

    def infer(self, inputs, sources=()):
        return self.infer_outputs(inputs, sources)[-1]

    def output_size_ops(self, inputs, dims, axis):
        return ((Window(3, 2, 1),), (Window(3, 2, 1), Window(3, 2, 1)))

    def build(self, inputs, output):
        return _TwoScales(inputs[0].channels, self.c1, self.c2)


def pyramid_unet(**changes) -> ug.UNetGraph:
    """x → enc (two outputs) → up1 → merge1 (skip enc[0]) → dec1 → up0 → dec0 → head."""
    b = ug.GraphBuilder("Pyramid")
    b.input("x", channels=3)
    b.add("enc", changes.get("enc", TwoScales()), "encoder", 0, ["x"])
    b.add("up1", ug.Up("nearest", conv=False), "up", 1, [ug.In("enc", EdgeKind.DATA, out=1)])
    b.add("merge1", ug.Merge(), "merge", 1, [ug.In("enc", EdgeKind.SKIP, out=0), "up1"])
    b.add("dec1", ug.ConvBlock(channels=8), "decoder", 1, ["merge1"])
    b.add("up0", ug.Up("nearest", conv=False), "up", 0, ["dec1"])
    b.add("dec0", ug.ConvBlock(channels=4), "decoder", 0, ["up0"])
    b.add("head", ug.Head(channels=2), "head", 0, ["dec0"])
    return b.build(["head"])


class TestGraph:
    def test_outputs_types_and_levels(self):
        g = pyramid_unet()
        enc = g["enc"]
        assert [t.channels for t in enc.outputs] == [6, 10] and enc.type == enc.outputs[-1]
        assert enc.levels == (1, 2)
        skip = g.in_edges("merge1")[0]
        assert (skip.out, skip.type.channels, skip.describe()) == (0, 6, "skip enc→merge1")
        data = g.in_edges("up1")[0]
        assert (data.out, data.type.channels, data.describe()) == (1, 10, "enc[1]")
        assert g.level(1).skips == (skip,) and g.level(0).skips == ()
        assert ("enc", "up1", EdgeKind.DATA, 0, 1) in g.edge_records()
        assert ("enc", "merge1", EdgeKind.SKIP, 0) in g.edge_records()

    def test_an_output_the_node_lacks_names_it(self):
        g = pyramid_unet()
        records = [r if r[:2] != ("enc", "up1") else (*r[:4], 2) for r in g.edge_records()]
        with pytest.raises(ug.GraphError, match=r"takes output 2 of enc, which has 2 outputs \(0–1\)"):
            ug.UNetGraph(g.node_records(), records, g.outputs)

    def test_a_skip_from_an_output_of_another_level(self):
        g = pyramid_unet()
        records = [r if r[:2] != ("enc", "merge1") else (*r[:4], 1) for r in g.edge_records()]
        records = [r if r[:2] != ("enc", "up1") else r[:4] for r in records]
        with pytest.raises(ug.GraphError, match=r"skip enc\[1\]→merge1 joins level 2 to level 1"):
            ug.UNetGraph(g.node_records(), records, g.outputs)

    def test_a_node_with_several_outputs_is_not_a_graph_output(self):
        g = pyramid_unet()
        with pytest.raises(ug.GraphError, match=r"has 2 outputs"):
            g.tap("enc")


class TestCheckCostLower:
    def test_check_reports_every_output_and_the_size_rule(self):
        g = pyramid_unet()
        row = g.check((2, 3, 16, 24))["enc"]
        assert row.outputs == ((2, 6, 8, 12), (2, 10, 4, 6)) and row.output == (2, 10, 4, 6)
        assert "6×8×12 … 10×4×6 (2)" in str(g.check((2, 3, 16, 24)))
        # padded stride-2 convolutions round up: 3 → 2 → 1 meets the upsampled 1 → 2 at merge1
        assert str(g.valid_sizes()) == "H and W must be one of 3, 4, 7, … (every 4 from 3)"
        with pytest.raises(ug.ShapeError, match=r"merge1 .* receives"):
            g.check((1, 3, 18, 18))

    def test_memory_counts_every_output(self):
        g = pyramid_unet()
        row = g.summary((1, 3, 16, 16))["enc"]
        assert row.activation_bytes == (6 * 8 * 8 + 10 * 4 * 4) * 4
        assert row.outputs == ((1, 6, 8, 8), (1, 10, 4, 4))

    def test_lowered_forward_equals_the_module_by_hand(self):
        g = pyramid_unet()
        gm = g.lower().eval()
        x = torch.randn(2, 3, 16, 16)
        a = gm.enc.down1(x)
        b = gm.enc.down2(torch.relu(a))
        up = torch.nn.functional.interpolate(b, scale_factor=2.0)
        dec1 = nn.Sequential(*gm.dec1.children())(torch.cat([a, up], 1))
        dec0 = nn.Sequential(*gm.dec0.children())(torch.nn.functional.interpolate(dec1, scale_factor=2.0))
        want = gm.head(dec0)
        with torch.no_grad():
            assert torch.allclose(gm(x), want, atol=1e-6)
        assert "enc.down1.weight" in gm.state_dict()
        # a module that is not a tuple-returning GraphModule is one call; its outputs picked by index
        assert [n.name for n in gm.graph.nodes if n.name.startswith("enc")] == ["enc_features", "enc_0", "enc_1"]


class TestDocumentsAndEdits:
    def test_edges_write_out_only_when_not_zero(self):
        g = pyramid_unet()
        edges = [e for e in g.to_dict()["edges"] if e["src"] == "enc"]
        assert edges[0] == {"src": "enc", "dst": "up1", "kind": "data", "port": 0, "out": 1}
        assert "out" not in edges[1]
        plain = ug.unet(1, 1, widths=(4, 8)).to_dict()
        assert not any("out" in e for e in plain["edges"])

    def test_a_document_with_a_bad_out(self):
        doc = ug.unet(1, 1, widths=(4, 8)).to_dict()
        doc["edges"][0]["out"] = -1
        with pytest.raises(ug.SpecError, match=r"edges\[0\]\.out: expected a non-negative integer"):
            ug.UNetGraph.from_dict(doc)

    def test_insert_before_a_skip_keeps_its_output_and_level(self):
        g = pyramid_unet().insert_before("merge1", ug.ConvBlock(convs=1), src="enc", name="proj")
        assert g["proj"].level == 1 and g.in_edges("proj")[0].out == 0
        assert g.check((1, 3, 16, 16))["proj"].output == (1, 6, 8, 8)

    def test_bypassing_keeps_the_output_taken(self):
        g = pyramid_unet().insert_before("up1", ug.ConvBlock(convs=1), name="mid").remove("mid")
        assert g.in_edges("up1")[0].out == 1

    @pytest.mark.parametrize("edit", ["remove", "insert_after"])
    def test_edits_that_need_one_output_are_refused(self, edit):
        g = pyramid_unet()
        with pytest.raises(ug.GraphError, match=r"enc .* has 2 outputs; edit the nodes that use them"):
            g.remove("enc") if edit == "remove" else g.insert_after("enc", ug.ConvBlock())

    def test_add_skip_and_add_edge_take_out(self):
        g = pyramid_unet().remove_skip("enc", "merge1")
        assert "merge1" not in g
        g2 = g.add_skip("enc", "dec1", merge="concat", out=0)
        assert g2.in_edges("dec1_merge")[0].out == 0 and g2["dec1"].inputs[0].channels == 6 + 10


class TestDrawing:
    def test_stages_are_boxes_at_their_levels_in_a_frame(self):
        g = pyramid_unet()
        s = ug.render.scene(g, "blocks", input_shape=(1, 3, 16, 16))
        stages = [it for it in s.items if it.port is not None]
        assert [(it.id, it.level, it.cluster, it.notes) for it in stages] == [
            ("enc.0", 1, "enc", ("6×8×8",)),
            ("enc.1", 2, "enc", ("10×4×4",)),
        ]
        assert {(ln.src, ln.dst) for ln in s.links} >= {("x", "enc.0"), ("enc.0", "enc.1"), ("enc.1", "up1")}
        assert s.clusters["enc"].startswith("enc · TwoScales")
        dot = g.to_dot("levels")
        assert '"enc.0"' in dot and "cluster_enc" in dot
