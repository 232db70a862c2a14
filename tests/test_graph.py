"""UNetGraph: queries, levels, invariants, immutability."""

import networkx as nx
import pytest

import unetgraph as ug
from unetgraph import EdgeKind, In, Role


@pytest.fixture
def g():
    return ug.unet(3, 2, widths=(8, 16, 32))


class TestQueries:
    def test_node_names_and_roles(self, g):
        assert list(g) == [
            "x",
            "enc0",
            "down1",
            "enc1",
            "down2",
            "mid",
            "up1",
            "merge1",
            "dec1",
            "up0",
            "merge0",
            "dec0",
            "head",
        ]
        assert [n.name for n in g.nodes(role="encoder")] == ["enc0", "enc1"]
        assert [n.name for n in g.nodes(role=["up", "merge"], level=1)] == ["up1", "merge1"]
        assert [n.name for n in g.nodes(where=lambda n: n.type.channels == 32)] == ["mid", "merge1"]

    def test_skips_are_named_edges(self, g):
        assert [e.name for e in g.skips] == ["enc1→merge1", "enc0→merge0"]
        e = g.in_edges("merge1")[0]
        assert (e.kind, e.port, e.type.channels) == (EdgeKind.SKIP, 0, 16)
        assert e.describe() == "skip enc1→merge1"

    def test_levels_are_views(self, g):
        lvl = g.level(1)
        assert [n.name for n in lvl] == ["down1", "enc1", "up1", "merge1", "dec1"]
        assert [n.name for n in lvl.encoder] == ["enc1"] and [n.name for n in lvl.decoder] == ["dec1"]
        assert [e.name for e in lvl.skips] == ["enc1→merge1"]
        assert g.levels == [0, 1, 2]
        with pytest.raises(ug.NodeNotFoundError, match="no level 7"):
            g.level(7)

    def test_width_change_propagates_to_consumers(self):
        g = ug.unet(3, 2, widths=(8, 24, 32))
        assert g["merge1"].inputs[0].channels == 24 and g["merge1"].type.channels == 48
        assert g["dec1"].inputs[0].channels == 48

    def test_unknown_node_suggests(self, g):
        with pytest.raises(ug.NodeNotFoundError, match="did you mean enc1"):
            g["enc_1"]
        with pytest.raises(KeyError):  # also a KeyError, for dict-like use
            g["nope"]

    def test_raw_graph_is_never_handed_out(self, g):
        nxg = g.to_networkx()
        nxg.remove_node("mid")
        assert "mid" in g and len(g) == 13
        assert not hasattr(g, "graph")

    def test_equality_and_repr(self, g):
        assert g == ug.unet(3, 2, widths=(8, 16, 32))
        assert g != ug.unet(3, 2, widths=(8, 16, 64))
        assert "13 nodes, 2 skips" in repr(g)

    def test_records_rebuild_an_equal_graph(self, g):
        again = ug.UNetGraph(g.node_records(), g.edge_records(), g.outputs, name=g.name)
        assert again == g


def tiny():
    b = ug.GraphBuilder()
    b.input("x", channels=2, dims=2)
    b.add("enc0", ug.ConvBlock(channels=4), "encoder", 0, ["x"])
    b.add("down1", ug.Down(), "down", 1, ["enc0"])
    b.add("mid", ug.ConvBlock(channels=4), "bottleneck", 1, ["down1"])
    b.add("up0", ug.Up(channels=4), "up", 0, ["mid"])
    return b


class TestInvariants:
    def test_builder_step_errors_leave_the_builder_unchanged(self):
        b = tiny()
        with pytest.raises(ug.GraphError, match="merge merge0 \\(concat\\) takes 2\\+ inputs, is fed 1"):
            b.add("merge0", ug.Merge(), "merge", 0, ["up0"])
        assert "merge0" not in b
        with pytest.raises(ug.GraphError, match="used twice"):
            b.add("mid", ug.ConvBlock(), "decoder", 0, ["up0"])
        with pytest.raises(ug.GraphError, match="no node 'enc9'"):
            b.add("merge0", ug.Merge(), "merge", 0, [In("enc9", EdgeKind.SKIP), "up0"])
        assert "merge0" not in b
        b.add("merge0", ug.Merge(), "merge", 0, [In("enc0", EdgeKind.SKIP), "up0"])
        b.add("head", ug.Head(channels=1), "head", 0, ["merge0"])
        assert len(b.build(["head"])) == 7

    def test_skip_across_levels_is_refused(self):
        b = tiny()
        with pytest.raises(ug.GraphError, match="skip down1→merge0 joins level 1 to level 0"):
            b.add("merge0", ug.Merge(), "merge", 0, [In("down1", EdgeKind.SKIP), "up0"])

    def test_skip_into_single_input_block_is_refused(self):
        b = tiny()
        with pytest.raises(ug.GraphError, match="skips must end at a merge"):
            b.add("dec0", ug.ConvBlock(), "decoder", 0, [In("enc0", EdgeKind.SKIP)])

    def test_cond_edge_to_block_without_conditioning(self):
        b = tiny()
        with pytest.raises(ug.GraphError, match="cond edge enc0→dec0: ConvBlock takes no conditioning"):
            b.add("dec0", ug.ConvBlock(), "decoder", 0, ["up0", In("enc0", EdgeKind.COND)])

    def test_dangling_node_is_refused_at_build(self):
        b = tiny()
        with pytest.raises(ug.GraphError, match="up0 feeds no output"):
            b.build(["mid"])

    @pytest.mark.parametrize("name", ["0enc", "enc-1", "class", "graph", "forward", "_private"])
    def test_names_must_be_safe_identifiers(self, name):
        b = ug.GraphBuilder()
        with pytest.raises(ug.GraphError, match=r"identifier|reserved"):
            b.input(name, channels=1)

    @pytest.mark.parametrize("name", ["training", "meta", "shape_env"])
    def test_instance_attributes_of_the_lowered_module_are_reserved(self, name):
        # nn.Module and GraphModule set these on every instance: a submodule of that name breaks lowering
        with pytest.raises(ug.GraphError, match=f"node name '{name}' is reserved"):
            ug.unet(1, 1, widths=(4, 8)).insert_after("enc0", ug.ConvBlock(), name=name)

    @pytest.mark.parametrize("name", ["torch", "slice", "inf", "device"])
    def test_names_the_generated_code_reads_are_reserved(self, name):
        # an input named torch became forward's parameter `torch`, and torch.cat(...) ran on a tensor
        b = ug.GraphBuilder()
        with pytest.raises(ug.GraphError, match=f"node name '{name}' is reserved \\(the lowered module's generated"):
            b.input(name, channels=1)
        with pytest.raises(ug.GraphError, match=f"node name '{name}' is reserved"):
            ug.unet(1, 1, widths=(4, 8)).insert_after("enc0", ug.ConvBlock(), name=name)

    @pytest.mark.parametrize(
        "name, what",
        [("x_guard", "guard of input x"), ("x_pad", "pad of input x"), ("head_crop", "crop of output head")],
    )
    def test_names_of_the_submodules_lowering_adds_are_reserved(self, name, what):
        # a node x_guard replaced the input guard lowering adds under that name: the module failed to run
        message = f"node name '{name}' is reserved: lowering names the {what} so"
        with pytest.raises(ug.GraphError, match=message) as e:
            ug.unet(1, 1, widths=(4, 8)).insert_after("enc0", ug.ConvBlock(), name=name)
        assert e.value.node == name
        d = ug.unet(1, 1, widths=(4, 8)).to_dict()
        d["nodes"][name] = d["nodes"].pop("enc0")
        for edge in d["edges"]:
            edge.update({k: name for k in ("src", "dst") if edge[k] == "enc0"})
        with pytest.raises(ug.GraphError, match=message):
            ug.UNetGraph.from_dict(d)

    def test_node_names_are_bounded_in_length(self):
        # a 20,000-character name passed, and then `dot` failed without naming the node
        name = "e" * 20_000
        with pytest.raises(ug.GraphError, match=r"node name 'e+\.\.\.e+' has 20,000 characters, over the limit") as e:
            ug.unet(1, 1, widths=(4, 8)).insert_after("enc0", ug.ConvBlock(), name=name)
        assert e.value.node == name
        assert "e" * 1000 in ug.unet(1, 1, widths=(4, 8)).insert_after("enc0", ug.ConvBlock(), name="e" * 1000)

    def test_names_python_would_normalise_are_refused_everywhere_they_enter(self):
        """Python reads identifiers NFKC-normalised: 'ｅnc0' (a full-width e) and 'enc0' are one
        name in generated code. Refused at every door, with the normal form in the message."""
        message = "node name 'ｅnc0' is not in Unicode NFKC normal form: Python reads it as 'enc0'"
        b = ug.GraphBuilder()
        b.input("x", channels=1)
        with pytest.raises(ug.GraphError, match=message):
            b.add("ｅnc0", ug.ConvBlock(channels=4), "encoder", 0, ["x"])
        assert "ｅnc0" not in b
        g = ug.unet(1, 1, widths=(4, 8))
        with pytest.raises(ug.GraphError, match=message):
            g.insert_after("enc0", ug.ConvBlock(), name="ｅnc0")
        with pytest.raises(ug.GraphError, match=message):
            ug.UNetGraph(
                [*g.node_records(), ("ｅnc0", ug.Head(), "head", 0)],
                [*g.edge_records(), ("enc0", "ｅnc0", "data", 0)],
                [*g.outputs, "ｅnc0"],
            )
        doc = g.to_dict()
        doc["nodes"]["ｅnc0"] = doc["nodes"].pop("head")
        doc["edges"][-1]["dst"] = doc["outputs"][0] = "ｅnc0"
        with pytest.raises(ug.GraphError, match="nodes.ｅnc0: " + message):
            ug.UNetGraph.from_dict(doc)
        with pytest.raises(ug.GraphError, match="graph name 'ＵNet' is not in Unicode NFKC normal form"):
            ug.unet(1, 1, widths=(4, 8), name="ＵNet")

    @pytest.mark.parametrize("name", ["class", "None", "lambda", "3D", "U-Net", "ｕnet", 7, None])
    def test_graph_names_follow_the_same_rule_at_every_door(self, name):
        g = ug.unet(1, 1, widths=(4, 8))
        with pytest.raises(ug.GraphError, match="graph name"):
            ug.unet(1, 1, widths=(4, 8), name=name)
        with pytest.raises(ug.GraphError, match="graph name"):
            ug.GraphBuilder(name=name)
        with pytest.raises(ug.GraphError, match="graph name"):
            g.copy(name=name) if name is not None else ug.UNetGraph(
                g.node_records(), g.edge_records(), g.outputs, name=name
            )
        with pytest.raises(ug.SpecError, match=r"^name: graph name"):
            ug.UNetGraph.from_dict({**g.to_dict(), "name": name})

    def test_constructor_refuses_cycles_and_bad_ports(self):
        g = ug.unet(1, 1, widths=(4, 8))
        nodes, edges = g.node_records(), g.edge_records()
        with pytest.raises(ug.GraphError, match="cycle"):
            ug.UNetGraph(nodes, [*edges, ("dec0", "enc0", "data", 1)], g.outputs)
        bad = [(s, d, k, 5 if d == "head" else p) for s, d, k, p in edges]
        with pytest.raises(ug.GraphError, match=r"head: input ports must be 0\.\.0, got \[5\]"):
            ug.UNetGraph(nodes, bad, g.outputs)

    def test_constructor_refuses_unreachable_nodes(self):
        g = ug.unet(1, 1, widths=(4, 8))
        nodes = [*g.node_records(), ("orphan", ug.Merge(), Role.MERGE, 0)]
        with pytest.raises(ug.GraphError, match="orphan"):
            ug.UNetGraph(nodes, g.edge_records(), g.outputs)

    def test_lint_is_clean_on_built_graphs(self):
        ug.unet(3, 2).lint()
        assert nx.is_directed_acyclic_graph(ug.unet(3, 2).to_networkx())
