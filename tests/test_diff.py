"""ug.diff: per-node and per-edge statuses, field changes, parameter deltas, readable text."""

import pytest

import unetgraph as ug
from unetgraph.diff import FieldChange


def base():
    return ug.unet(3, 2, widths=(8, 16, 32))


def test_no_difference():
    d = ug.diff(base(), base())
    assert not d and set(d.status.values()) == {"same"} and d.params_delta == 0
    assert str(d) == "UNet → UNet: no differences"


def test_statuses_of_nodes_and_edges():
    a = base()
    b = a.insert_after("enc1", ug.ConvBlock(convs=1), name="enc1b").remove_skip("enc0").set("dec1", dropout=0.1)
    d = ug.diff(a, b)
    assert d
    assert d.added == ["enc1b"] and d.removed == ["merge0"] and d.changed == ["dec1"] and d.retyped == ["dec0"]
    assert d.status["enc0"] == "same" and d.status["merge0"] == "removed"
    # removed nodes sit where they were, so a drawing can place them
    assert list(d.nodes)[list(d.nodes).index("merge0") - 1] == "up0"
    es = d.edge_status
    assert es[("enc1", "enc1b")] == "added" and es[("enc1b", "merge1")] == "added"
    assert es[("enc1", "merge1")] == "removed" and es[("enc0", "merge0")] == "removed"
    assert es[("x", "enc0")] == "same"
    assert d.nodes["dec1"].fields == (FieldChange("dropout", 0.0, 0.1),)
    assert d.nodes["enc1b"].params_delta == b["enc1b"].params
    assert d.params_delta == b.params - a.params == sum(n.params_delta for n in d.nodes.values())


def test_retyped_edges_and_changed_ports():
    a = base()
    b = a.set("enc1", channels=24)
    d = ug.diff(a, b)
    assert d.changed == ["enc1"] and set(d.retyped) == {"down2", "mid", "merge1", "dec1"}
    assert d.edge_status[("enc1", "merge1")] == "retyped"
    assert "channels: 16 → 24" in str(d)
    c = a.add_edge("down1", "merge1", "skip")
    d2 = ug.diff(a, c)
    assert d2.edge_status[("up1", "merge1")] == "changed"  # port 1 → 2
    assert "port 1 → 2" in d2.edges[("up1", "merge1")].describe()


def test_nested_field_paths_and_block_type_changes():
    a = base().replace("mid", ug.Sequence(ug.ConvBlock(), ug.ConvBlock(convs=1)))
    b = a.replace("mid", ug.Sequence(ug.ConvBlock(), ug.ConvBlock(convs=3)))
    (change,) = ug.diff(a, b).nodes["mid"].fields
    assert (change.path, change.old, change.new) == ("blocks[1].convs", 1, 3)
    c = a.replace("mid", ug.ConvBlock())
    (change,) = ug.diff(a, c).nodes["mid"].fields
    assert (
        change.path == "block" and str(change).startswith("block: Sequence (2×conv3") and "→ ConvBlock (" in str(change)
    )
    e = base().set("enc0", kernel=(3, 5))
    assert ug.diff(base(), e).nodes["enc0"].fields[0].new == (3, 5)


def test_role_level_outputs_and_name():
    a = base()
    b = a.replace("mid", a["mid"].block, role="decoder").tap("enc1").copy(name="Other")
    d = ug.diff(a, b)
    assert [str(f) for f in d.nodes["mid"].fields] == ["role: 'bottleneck' → 'decoder'"]
    assert d.outputs == (("head",), ("head", "enc1"))
    text = str(d)
    assert "~ outputs" in text and "head → head, enc1" in text and "UNet → Other" in text


def test_text_form():
    a = ug.unet(3, 2, widths=(16, 32, 64))
    b = (
        a.set_skip("enc1", "merge1", merge="add")
        .remove_skip("enc0")
        .insert_after("enc1", ug.ConvBlock(convs=1), name="enc1b")
    )
    text = str(ug.diff(a, b))
    first, *rows = text.splitlines()
    assert first.startswith("UNet → UNet: 1 added, 1 removed, 1 changed, 2 retyped; params ")
    assert f"({b.params - a.params:+,})" in first
    assert any(r.startswith("+ enc1b") and "encoder, level 1" in r for r in rows)
    assert any(r.startswith("- merge0") for r in rows)
    assert any(r.startswith("~ merge1") and "mode: 'concat' → 'add'" in r for r in rows)
    assert any(r.startswith("≈ dec1") and "input 64ch@1/2 (2D) → 32ch@1/2 (2D)" in r for r in rows)
    assert any(r.startswith("- edge enc0→merge0") and "skip" in r for r in rows)
    assert "<table>" in ug.diff(a, b)._repr_html_()


def test_diff_of_something_not_a_graph_is_a_typed_error():
    # '', [] and {} gave a raw AttributeError
    for other in ("", [], {}, "zz", None):
        with pytest.raises(ug.SpecError, match="diff: b must be a UNetGraph, got "):
            ug.diff(base(), other)
    with pytest.raises(ug.SpecError, match=r"diff: a must be a UNetGraph, got list \[\]"):
        ug.diff([], base())
