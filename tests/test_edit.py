"""Edits: each returns a new, valid graph or raises a typed error naming why, leaving the graph as it was."""

import pytest
import torch

import unetgraph as ug
from unetgraph import EdgeKind, In, Role


@pytest.fixture
def g():
    return ug.unet(3, 2, widths=(8, 16, 32))


def refused(g, edit, error, match):
    """Run ``edit(g)``; it must raise ``error`` matching ``match`` and leave ``g`` exactly as it was."""
    before, data = ug.unet(3, 2, widths=(8, 16, 32)), g.to_dict()
    assert g == before
    with pytest.raises(error, match=match):
        edit(g)
    assert g == before and g.to_dict() == data
    g.lint()


def in_edges(g, node):
    return [(e.src, e.kind.value, e.port) for e in g.in_edges(node)]


class TestNodeEdits:
    def test_replace_keeps_name_and_edges_and_retypes_consumers(self, g):
        g2 = g.replace("mid", ug.Sequence(ug.ConvBlock(channels=48), ug.ConvBlock(convs=1)))
        assert list(g2) == list(g)
        assert g2["mid"].type.channels == 48 and g2["up1"].inputs[0].channels == 48
        assert in_edges(g2, "mid") == in_edges(g, "mid")
        assert g["mid"].block == ug.ConvBlock(channels=32)  # the original is untouched

    def test_replace_with_role_and_level(self, g):
        g2 = g.replace("mid", ug.ConvBlock(channels=32, convs=1), role="decoder", level=2)
        assert g2["mid"].role is Role.DECODER and g2["mid"].block.convs == 1

    def test_set_fields_and_widths_flow(self, g):
        g2 = g.set("enc1", channels=24, convs=3)
        assert g2["enc1"].block.convs == 3
        assert g2["merge1"].type.channels == 24 + 16
        assert g2["merge1"].inputs[0].channels == 24

    def test_set_unknown_or_invalid_field(self, g):
        refused(g, lambda g: g.set("enc1", conv=3), ug.SpecError, "set enc1\\(conv=3\\): ConvBlock has no field 'conv'")
        refused(
            g, lambda g: g.set("enc1", convs=-3), ug.SpecError, "ConvBlock.convs: expected a positive integer, got -3"
        )

    def test_map_blocks_over_a_role(self, g):
        g2 = g.map_blocks(lambda b: b.with_(norm="group", groups=4), role="encoder")
        assert [n.block.norm for n in g2.nodes(role="encoder")] == ["group", "group"]
        assert g2["dec0"].block.norm == "batch" and g2["mid"].block.norm == "batch"

    def test_map_blocks_with_a_predicate_and_level(self, g):
        g2 = g.map_blocks(
            lambda b: b.with_(act="silu") if isinstance(b, ug.ConvBlock) else b,
            level=[0, 1],
        )
        assert [n.name for n in g2.nodes(where=lambda n: getattr(n.block, "act", None) == "silu")] == [
            "enc0",
            "enc1",
            "dec1",
            "dec0",
        ]
        g3 = g.map_blocks(lambda b: b.with_(convs=1), names=["dec0"])
        assert g3["dec0"].block.convs == 1 and g3["dec1"].block.convs == 2

    def test_map_blocks_errors_name_the_node(self, g):
        refused(
            g,
            lambda g: g.map_blocks(lambda b: b.with_(norm="group")),
            ug.SpecError,
            "x \\(3ch 2D\\): Input has no field",
        )
        refused(g, lambda g: g.map_blocks(lambda b: 3, role="decoder"), ug.SpecError, "dec1: expected a block spec")
        refused(
            g,
            lambda g: g.map_blocks(lambda b: b.with_(norm="group"), role="encoder"),  # 32 groups, 8 channels
            ug.SpecError,
            "GroupNorm groups=32 does not divide 8 channels",
        )


class TestInsertAndRemove:
    def test_insert_after_takes_every_consumer(self, g):
        g2 = g.insert_after("enc1", ug.ConvBlock(convs=1), name="enc1b")
        assert in_edges(g2, "enc1b") == [("enc1", "data", 0)]
        assert in_edges(g2, "down2") == [("enc1b", "data", 0)]
        assert [e.name for e in g2.skips] == ["enc1b→merge1", "enc0→merge0"]
        assert list(g2).index("enc1b") == list(g2).index("enc1") + 1
        assert (g2["enc1b"].role, g2["enc1b"].level) == (Role.ENCODER, 1)

    def test_insert_after_default_name_and_output(self, g):
        g2 = g.insert_after("head", ug.ConvBlock(convs=1, kernel=1, norm="none", act="none"))
        assert g2.outputs == ("head_convblock",) and g2["head_convblock"].role is Role.HEAD
        g3 = g2.insert_after("head", ug.ConvBlock(convs=1, kernel=1, norm="none", act="none"))
        assert "head_convblock2" in g3

    def test_insert_before_on_a_skip_then_merge_by_add(self, g):
        # a 1×1 projection on the skip lets an add merge join 8 channels to up0's 16
        g2 = g.set("up0", channels=16).insert_before(
            "merge0", ug.ConvBlock(channels=16, convs=1, kernel=1), src="enc0", name="proj0"
        )
        assert in_edges(g2, "merge0") == [("proj0", "skip", 0), ("up0", "data", 1)]
        assert g2["proj0"].role is Role.ENCODER
        g3 = g2.set_skip("proj0", "merge0", merge="add")
        assert g3["merge0"].type.channels == 16

    def test_insert_before_needs_src_at_a_merge(self, g):
        refused(g, lambda g: g.insert_before("merge0", ug.ConvBlock()), ug.GraphError, "merge0 has 2 inputs")
        refused(
            g, lambda g: g.insert_before("merge0", ug.ConvBlock(), src="enc1"), ug.GraphError, "'enc1' is not an input"
        )

    def test_remove_bypasses(self, g):
        g2 = g.remove("enc1")
        assert in_edges(g2, "down2") == [("down1", "data", 0)]
        assert in_edges(g2, "merge1") == [("down1", "skip", 0), ("up1", "data", 1)]
        assert g2["merge1"].type.channels == 8 + 16

    def test_remove_merge_keeps_main_path_and_drops_skip(self, g):
        g2 = g.remove("merge0")
        assert "merge0" not in g2 and in_edges(g2, "dec0") == [("up0", "data", 0)]
        assert [e.name for e in g2.skips] == ["enc1→merge1"]
        # keeping the skip instead would cut the whole lower U off the output
        refused(g, lambda g: g.remove("merge0", keep="enc0"), ug.GraphError, "down1, enc1, .*up0 feed no output")

    def test_remove_output_moves_the_output(self, g):
        assert g.remove("head").outputs == ("dec0",)

    def test_remove_failures(self, g):
        refused(g, lambda g: g.remove("x"), ug.GraphError, "x is a graph input")
        refused(
            g,
            lambda g: g.remove("down1"),
            ug.ShapeError,
            "remove down1: merge0 \\(concat\\): concat needs inputs at one scale",
        )
        refused(g, lambda g: g.remove("nope"), ug.NodeNotFoundError, "no node 'nope'")
        refused(g, lambda g: g.remove("merge0", keep="mid"), ug.GraphError, "keep='mid' is not an input of merge0")

    def test_an_edit_after_which_no_input_size_fits(self, g):
        # a valid convolution on the skip alone: the merge's two inputs never have equal sizes
        refused(
            g,
            lambda g: g.insert_before("merge0", ug.ConvBlock(padding="valid"), src="enc0"),
            ug.ShapeError,
            "insert_before merge0: the edited graph accepts no input size: no input height up to 16384 fits",
        )
        # on the main path instead, with a cropping merge, it fits: the skip is cropped to the smaller size
        cropped = g.set_skip("enc0", "merge0", crop=True).insert_after("up0", ug.ConvBlock(padding="valid"))
        assert cropped.check((1, 3, 32, 32)).outputs["head"] == (1, 2, 28, 28)

    def test_add_a_deep_supervision_head(self, g):
        g2 = g.add("aux1", ug.Head(channels=2), ["dec1"])
        assert g2.outputs == ("head", "aux1") and g2["aux1"].level == 1
        out = g2.lower()(torch.randn(1, 3, 16, 16))
        assert out["aux1"].shape == (1, 2, 8, 8) and out["head"].shape == (1, 2, 16, 16)

    def test_add_refuses_a_taken_name(self, g):
        refused(g, lambda g: g.add("dec1", ug.Head(channels=2), ["dec1"]), ug.GraphError, "'dec1' exists already")


class TestEdgesAndSkips:
    def test_set_skip_merge_mode(self, g):
        g2 = g.set("up1", channels=16).set_skip("enc1", "merge1", merge="add")
        assert g2["merge1"].block == ug.Merge("add") and g2["merge1"].type.channels == 16
        assert g.set_skip("enc1", "merge1", crop=True)["merge1"].block.crop is True

    def test_set_skip_add_with_unequal_channels(self, g):
        g = g.set("up1", channels=24)
        data = g.to_dict()
        with pytest.raises(
            ug.ShapeError,
            match=r"set_skip enc1→merge1 \(merge1: add\): merge1 \(add\): skip enc1→merge1 carries 16 channels, "
            r"add needs 24 from up1",
        ):
            g.set_skip("enc1", "merge1", merge="add")
        assert g.to_dict() == data

    def test_width_edit_that_breaks_an_add_merge(self, g):
        g_add = g.set_skip("enc1", "merge1", merge="add")
        with pytest.raises(
            ug.ShapeError, match="set enc1\\(channels=12\\): merge1 \\(add\\): skip enc1→merge1 carries 12"
        ):
            g_add.set("enc1", channels=12)
        assert g_add["enc1"].block.channels == 16

    def test_set_skip_failures(self, g):
        refused(g, lambda g: g.set_skip("enc0", "merge1", merge="add"), ug.GraphError, "no skip enc0→merge1")
        refused(g, lambda g: g.set_skip("enc1", "merge1"), ug.SpecError, "nothing to set")
        refused(g, lambda g: g.set_skip("enc1", "merge1", merge="sum"), ug.SpecError, "Merge.mode")

    def test_remove_skip_bypasses_the_merge(self, g):
        g2 = g.remove_skip("enc0")
        assert "merge0" not in g2 and [e.name for e in g2.skips] == ["enc1→merge1"]
        assert g2["dec0"].inputs[0].channels == 8  # up0's channels, no longer the concat's 16
        assert g2.remove_skip("enc1").skips == []

    def test_remove_one_of_several_skips_keeps_the_merge(self, g):
        g2 = g.add_skip("down1", "merge1")
        assert in_edges(g2, "merge1") == [("enc1", "skip", 0), ("down1", "skip", 1), ("up1", "data", 2)]
        g3 = g2.remove_skip("enc1", "merge1")
        assert in_edges(g3, "merge1") == [("down1", "skip", 0), ("up1", "data", 1)]

    def test_add_skip_into_a_decoder_block_inserts_a_merge(self, g):
        g2 = g.add_skip("enc1", "dec1", merge="concat")
        assert in_edges(g2, "dec1_merge") == [("enc1", "skip", 0), ("merge1", "data", 1)]
        assert in_edges(g2, "dec1") == [("dec1_merge", "data", 0)]
        assert g2["dec1"].inputs[0].channels == 16 + 32

    def test_add_skip_failures(self, g):
        refused(g, lambda g: g.add_skip("dec0", "merge0"), ug.GraphError, "add_skip dec0→merge0: .*cycle")
        refused(g, lambda g: g.add_skip("enc0", "merge1"), ug.GraphError, "joins level 0 to level 1")
        refused(g, lambda g: g.add_skip("enc1", "dec1"), ug.GraphError, "pass merge='concat'")
        refused(g, lambda g: g.add_skip("enc1", "merge1"), ug.GraphError, "enc1 feeds merge1 already")

    def test_add_and_remove_edge(self, g):
        g2 = g.add_edge("down1", "merge1", "skip")
        assert in_edges(g2, "merge1") == [("enc1", "skip", 0), ("down1", "skip", 1), ("up1", "data", 2)]
        assert g2.remove_edge("down1", "merge1") == g

    def test_removing_the_only_path_to_the_head(self, g):
        refused(g, lambda g: g.remove_edge("dec0", "head"), ug.GraphError, "head would have no input left")
        refused(g, lambda g: g.remove_edge("enc1", "down2"), ug.GraphError, "down2 would have no input left")
        refused(
            g,
            lambda g: g.tap("enc0").remove_skip("enc0").untap("enc0").remove_edge("enc0", "down1"),
            ug.GraphError,
            "down1",
        )

    def test_an_orphaned_source_is_named(self):
        b = ug.GraphBuilder()
        b.input("x", channels=1, dims=1)
        b.add("a", ug.ConvBlock(channels=2), "encoder", 0, ["x"])
        b.add("m", ug.Merge(), "merge", 0, [In("a", EdgeKind.SKIP), "x"])
        g = b.build(["m"])
        with pytest.raises(ug.GraphError, match="a would feed nothing: a→m is its only way to an output"):
            g.remove_skip("a")


class TestOutputs:
    def test_tap_and_untap(self, g):
        g2 = g.tap("enc1", "dec0")
        assert g2.outputs == ("head", "enc1", "dec0")
        assert g2.tap("enc1") == g2
        assert g2.untap("enc1", "dec0") == g
        refused(g, lambda g: g.untap("enc1"), ug.GraphError, "'enc1' is not an output")
        refused(g, lambda g: g.untap("head"), ug.GraphError, "no outputs")

    def test_taps_are_checked_lowered_and_compiled(self, g):
        g2 = g.tap("enc1", "mid")
        assert g2.check((2, 3, 32, 32)).outputs == {
            "head": (2, 2, 32, 32),
            "enc1": (2, 16, 16, 16),
            "mid": (2, 32, 8, 8),
        }
        gm = g2.lower().eval()
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            out = gm(x)
            assert {k: tuple(v.shape) for k, v in out.items()} == g2.check(tuple(x.shape)).outputs
            compiled = torch.compile(gm, fullgraph=True, backend="eager")(x)
        assert all(torch.equal(compiled[k], out[k]) for k in out)

    def test_taps_with_pad_auto(self, g):
        out = g.tap("dec0").lower(pad="auto").eval()(torch.randn(1, 3, 30, 29))
        assert out["dec0"].shape == (1, 8, 30, 29) and out["head"].shape == (1, 2, 30, 29)
        with pytest.raises(ug.LoweringError, match="output enc1 is 2×2 for a 4×4 input, not aligned with head"):
            g.tap("enc1").lower(pad="auto")
        valid = ug.unet(1, 1, widths=(4, 8), block=ug.ConvBlock(padding="valid"), merge=ug.Merge(crop=True))
        with pytest.raises(ug.LoweringError, match="output enc0 is"):
            valid.tap("enc0").lower(pad="auto")

    def test_copy_renames_the_model(self, g):
        assert g.copy() == g and g.copy() is not g
        g2 = g.copy(name="Other")
        assert g2.name == "Other" and type(g2.lower()).__name__ == "Other"
        refused(g, lambda g: g.copy(name="no way"), ug.GraphError, "copy: graph name 'no way' is not a Python")


class TestStability:
    def test_state_dict_keys_of_untouched_nodes_are_stable(self, g):
        before = set(g.lower().state_dict())
        g2 = g.insert_after("enc1", ug.ConvBlock(convs=1), name="enc1b").remove_skip("enc0")
        after = set(g2.lower().state_dict())
        assert {k for k in after if not k.startswith("enc1b.")} <= before
        assert {k.split(".")[0] for k in before - after} == set()  # merge0 had no weights

    def test_issue_user_flow(self, g):
        g = ug.unet(3, 2, widths=(16, 32, 64, 128))
        g2 = (
            g.replace("mid", ug.Sequence(ug.ConvBlock(), ug.ConvBlock(convs=1, kernel=1), ug.ConvBlock()))
            .set_skip("enc1", "merge1", merge="add")
            .remove_skip("enc0")
            .map_blocks(lambda b: b.with_(norm="group", groups=8), role="encoder")
            .insert_after("enc2", ug.ConvBlock(convs=1), name="enc2b")
        )
        assert g2.check((1, 3, 64, 64)).outputs["head"] == (1, 2, 64, 64)
        assert ug.loads(ug.dumps(g2)) == g2
        d = ug.diff(g, g2)
        assert d.added == ["enc2b"] and d.removed == ["merge0"]
        assert set(d.changed) == {"enc0", "enc1", "enc2", "mid", "merge1"}


ILL_TYPED = [
    (lambda g: g.add("aux", ug.Head(), [In("dec0", "sideways")]), ug.GraphError, "unknown edge kind 'sideways'"),
    (lambda g: g.add("aux", ug.Head(), [("dec0", None)]), ug.GraphError, "unknown edge kind None"),
    (lambda g: g.add("aux", ug.Head(), 5), ug.SpecError, "add aux: inputs: expected a list of node names"),
    (lambda g: g.add("aux", ug.Head(), "dec0"), ug.SpecError, "inputs: expected a list of node names"),
    (lambda g: g.add("aux", ug.Head(), [3]), ug.SpecError, r"inputs\[0\]: expected a node name or In"),
    (lambda g: g.add("aux", ug.Head(), []), ug.GraphError, "Head needs inputs; give them as a list"),
    (
        lambda g: g.insert_after("enc0", ug.ConvBlock(), name=""),
        ug.GraphError,
        "node name '' is not a Python identifier",
    ),
    (lambda g: g.add(["aux"], ug.Head(), ["dec0"]), ug.GraphError, "node name must be a string, got list"),
    (lambda g: g.add("aux", ug.Head(), ["dec0"], role=3), ug.SpecError, "add aux: node 'aux': unknown role 3"),
    (lambda g: g.add_skip("enc0", "x", merge="add"), ug.GraphError, "x is a graph input"),
    (lambda g: g.add_skip("enc0", "dec0", merge=3), ug.SpecError, "merge: expected a mode"),
    (lambda g: g.add_skip("enc0", "dec0", merge="add", name=7), ug.GraphError, "node name must be a string, got int"),
    (lambda g: g.add_edge("enc0", "dec0", ["skip"]), ug.GraphError, r"unknown edge kind \['skip'\]"),
    (lambda g: g.add_edge("enc0", "merge0", "skip", port="0"), ug.GraphError, "port must be an integer"),
    (lambda g: g.add_edge("enc0", "merge0", "skip", port=True), ug.GraphError, "port must be an integer"),
    (lambda g: g.remove("dec0", keep=["merge0"]), ug.GraphError, r"keep=\['merge0'\] is not an input of dec0"),
    (lambda g: g.remove(["dec0"]), ug.NodeNotFoundError, "remove \\['dec0'\\]: node names are strings"),
    (lambda g: g.replace({"a": 1}, ug.ConvBlock()), ug.NodeNotFoundError, "node names are strings; got dict"),
    (lambda g: g.replace("dec0", ug.ConvBlock(), level=-1), ug.SpecError, "level must be a non-negative integer"),
    (lambda g: g.replace("dec0", ug.ConvBlock(), role="middle"), ug.SpecError, "unknown role 'middle'"),
    (lambda g: g.insert_after("enc0", ug.ConvBlock(), name=b"x"), ug.GraphError, "node name must be a string"),
    (lambda g: g.insert_before("merge0", ug.ConvBlock(), src=["enc0"]), ug.GraphError, "is not an input of merge0"),
    (lambda g: g.set_skip("enc0", "merge0", merge=ug.Merge, crop=None), ug.SpecError, "merge: expected a mode"),
    (lambda g: g.map_blocks(3), ug.SpecError, "map_blocks: fn: expected a function"),
    (lambda g: g.map_blocks(lambda b: b, level=2.5), ug.SpecError, "level: expected an integer"),
    (lambda g: g.map_blocks(lambda b: b, role=3), ug.SpecError, "unknown role in 3"),
    (lambda g: g.map_blocks(lambda b: b, names="dec0"), ug.SpecError, "names: expected a list of node names"),
    (lambda g: g.map_blocks(lambda b: b, where=3), ug.SpecError, "where: expected a function"),
    (lambda g: g.map_blocks(lambda b: b.nope), ug.SpecError, "map_blocks: x .*: fn raised AttributeError"),
    (lambda g: g.untap(None), ug.GraphError, "untap None: None is not an output"),
    (lambda g: g.tap(["enc0"]), ug.NodeNotFoundError, r"tap \['enc0'\]: node names are strings"),
    (lambda g: g.copy(name=3), ug.GraphError, "graph name must be a string, got int 3"),
    (lambda g: g.copy(name="def"), ug.GraphError, "graph name 'def' is not a Python identifier"),
    (lambda g: g.set("dec0", dropout=float("nan")), ug.SpecError, "ConvBlock.dropout: expected a finite number"),
    (lambda g: g.set("dec0", convs=10**40), ug.SpecError, r"ConvBlock.convs: expected an integer within ±2\*\*63"),
    (lambda g: ug.edit.replace(None, "dec0", ug.ConvBlock()), ug.SpecError, "expected a UNetGraph to edit"),
]


class TestIllTypedArguments:
    """Arguments of the wrong type or value get a typed error naming the edit (each of these was
    a raw ValueError, IndexError, TypeError or AttributeError), and the graph stays as it was."""

    @pytest.mark.parametrize("edit, error, match", ILL_TYPED)
    def test_typed_error_and_nothing_changes(self, g, edit, error, match):
        refused(g, edit, error, match)

    def test_a_map_function_that_fails_is_the_cause(self, g):
        def boom(b):
            raise KeyError("inner")

        with pytest.raises(ug.SpecError, match="fn raised KeyError") as e:
            g.map_blocks(boom)
        causes = [e.value]
        while causes[-1].__cause__ is not None:
            causes.append(causes[-1].__cause__)
        assert isinstance(causes[-1], KeyError)
