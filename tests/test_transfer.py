"""Weight transfer: untouched nodes keep their trained tensors, the rest are re-initialised, and the report says so."""

import pytest
import torch

import unetgraph as ug


def train(gm, steps=3):
    gm.train()
    opt = torch.optim.SGD(gm.parameters(), lr=0.1)
    for _ in range(steps):
        x = torch.randn(4, 3, 16, 16)
        loss = (gm(x) - x[:, :2]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return gm


def tensors_of(gm, node):
    return {k: v for k, v in gm.state_dict().items() if k.split(".")[0] == node}


def test_train_edit_one_level_transfer():
    g = ug.unet(3, 2, widths=(8, 16, 32))
    gm = g.lower()
    initial = {k: v.clone() for k, v in gm.state_dict().items()}
    train(gm)
    assert all(not torch.equal(initial[k], v) for k, v in gm.state_dict().items() if k.endswith("conv0.weight"))
    g2 = g.set("dec1", convs=3, act="silu")  # edit level 1's decoder
    gm2 = g2.lower(weights_from=gm)
    report = ug.transfer_report(gm2)
    untouched = [n for n in g if n != "dec1" and tensors_of(gm, n)]
    assert untouched == ["enc0", "enc1", "mid", "up1", "up0", "dec0", "head"]
    for n in untouched:
        old, new = tensors_of(gm, n), tensors_of(gm2, n)
        assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old), n
        assert report.nodes[n] == "copied"
    # BatchNorm running statistics (buffers) travel too
    assert gm.state_dict()["enc0.norm0.num_batches_tracked"] == 3
    assert torch.equal(gm2.state_dict()["enc0.norm0.running_var"], gm.state_dict()["enc0.norm0.running_var"])
    # the edited node was re-initialised, not copied
    assert report.nodes["dec1"] == "reinitialised"
    assert not torch.equal(gm2.state_dict()["dec1.conv0.weight"], gm.state_dict()["dec1.conv0.weight"])
    reasons = {e.reason for e in report.entries if e.node == "dec1" and e.status != "dropped"}
    assert reasons == {"block changed: 2×conv3 batch relu → 3×conv3 batch silu"}
    assert report.dropped == [] and report.mismatched == []
    # and the untouched encoder computes exactly what it did
    x = torch.randn(2, 3, 16, 16)
    gm.eval(), gm2.eval()
    with torch.no_grad():
        assert torch.equal(gm.enc1.conv0(gm.enc0.conv0(x).relu()), gm2.enc1.conv0(gm2.enc0.conv0(x).relu()))


def test_retyped_nodes_are_reinitialised_with_their_shapes_in_the_report():
    g = ug.unet(3, 2, widths=(8, 16, 32))
    gm = g.lower()
    gm2 = g.remove_skip("enc0").lower(weights_from=gm)
    report = ug.transfer_report(gm2)
    assert report.nodes["dec0"] == "reinitialised"
    (w,) = [e for e in report.entries if e.key == "dec0.conv0.weight"]
    assert (w.old_shape, w.new_shape) == ((8, 16, 3, 3), (8, 8, 3, 3))
    assert w.reason == "input types changed: 16ch@1 (2D) → 8ch@1 (2D)"
    text = str(report)
    assert "reinitialised dec0: input types changed" in text and "enc0" not in text.split("\n", 1)[1]


def test_removed_and_new_nodes():
    g = ug.unet(3, 2, widths=(8, 16))
    gm = g.lower()
    g2 = g.remove("dec0").insert_after("enc0", ug.ConvBlock(convs=1), name="enc0b")
    report = ug.transfer_weights(g2.lower(), gm)
    assert report.nodes["dec0"] == "dropped" and report.nodes["enc0b"] == "reinitialised"
    assert all(e.reason == "node removed" for e in report.entries if e.node == "dec0")
    assert all(e.reason == "new node" for e in report.entries if e.node == "enc0b")
    assert report.summary().startswith("copied ")


def test_a_shape_mismatch_is_never_silent():
    g = ug.unet(3, 2, widths=(8, 16))
    gm = g.lower()
    sd = dict(gm.state_dict())
    sd["enc0.conv0.weight"] = torch.zeros(8, 3, 5, 5)  # the node kept its spec, but the tensor does not fit
    target = g.lower()
    before = target.state_dict()["enc0.conv0.weight"].clone()
    report = ug.transfer_weights(target, sd, source_graph=g)
    (m,) = report.mismatched
    assert (m.key, m.old_shape, m.new_shape) == ("enc0.conv0.weight", (8, 3, 5, 5), (8, 3, 3, 3))
    assert "SHAPE MISMATCHES" in report.summary() and "mismatch enc0.conv0.weight" in str(report)
    assert torch.equal(target.state_dict()["enc0.conv0.weight"], before)
    assert torch.equal(target.state_dict()["enc0.norm0.weight"], sd["enc0.norm0.weight"])


def test_state_dict_sources():
    g = ug.unet(3, 2, widths=(8, 16))
    gm = g.lower()
    sd = {k: v.clone() for k, v in gm.state_dict().items()}
    g2 = g.set("dec0", dropout=0.2)
    # without the source graph, nodes are matched by name and shape: dec0 has the same shapes, so it is copied
    r1 = ug.transfer_weights(g2.lower(), sd)
    assert r1.nodes["dec0"] == "copied" and "no source graph" in r1.entries[0].reason
    # with it, dec0's changed spec is seen
    r2 = ug.transfer_weights(g2.lower(), sd, source_graph=g)
    assert r2.nodes["dec0"] == "reinitialised"
    # match="shape" copies every tensor whose key and shape agree
    r3 = ug.transfer_weights(g2.lower(), gm, match="shape")
    assert r3.nodes["dec0"] == "copied" and r3.reinitialised == []


def test_compiled_source_and_bad_targets():
    g = ug.unet(3, 2, widths=(4, 8))
    gm = g.lower()
    compiled = torch.compile(gm, backend="eager")
    report = ug.transfer_report(g.lower(weights_from=compiled))
    assert report.reinitialised == [] and len(report.copied) == len(gm.state_dict())
    with pytest.raises(ug.LoweringError, match="meta device"):
        g.lower(device="meta", weights_from=gm)
    with pytest.raises(ug.LoweringError, match="not lowered by unetgraph"):
        ug.transfer_weights(torch.nn.Conv2d(1, 1, 1), gm)
    with pytest.raises(ug.LoweringError, match="expected a GraphModule or a state_dict"):
        g.lower(weights_from=3)
    with pytest.raises(ug.LoweringError, match="match: expected 'spec' or 'shape'"):
        ug.transfer_weights(g.lower(), gm, match="name")
    assert ug.transfer_report(gm) is None


def test_a_source_that_is_not_a_state_dict_of_tensors_is_named():
    """Values, keys and the source graph were used unchecked: a list or a meta tensor as a value, an
    int key or a node name as source_graph gave raw AttributeError, RuntimeError or TypeError."""
    g = ug.unet(3, 2, widths=(4, 8))
    state = g.lower().state_dict()
    meta = g.lower(device="meta").state_dict()
    for source, words in [
        ({**state, "enc0.conv0.weight": [1.0]}, "enc0.conv0.weight is a list, not a tensor"),
        ({**state, 3: torch.zeros(1)}, "the key 3 is a int, not a name"),
        (meta, "is on the meta device"),
    ]:
        with pytest.raises(ug.LoweringError, match=words):
            g.lower(weights_from=source)
    with pytest.raises(ug.LoweringError, match=r"source_graph: expected the UNetGraph .* got 'enc0'"):
        ug.transfer_weights(g.lower(), state, source_graph="enc0")
    with pytest.raises(ug.SpecError, match=r"node: expected a node name or names, got 3"):
        ug.freeze(g.lower(), node=3)
