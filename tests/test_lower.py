"""Lowering: fx graph built from the DAG, names, meta, shapes equal the checker's, parity with hand-written code."""

import pytest
import torch
from torch.fx.passes.shape_prop import ShapeProp

import unetgraph as ug
from benchmarks.handwritten import HandWrittenUNet, copy_weights
from unetgraph.record import attach_record, lowered_record


def real_shapes(gm, *inputs):
    ShapeProp(gm).propagate(*inputs)
    return {n.name: tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes if "tensor_meta" in n.meta}


def assert_shapes_match(g, gm, shape):
    report = g.check(shape)
    with torch.no_grad():
        real = real_shapes(gm, torch.randn(*shape))
    names = ug.fx_node_names(gm)
    for n in g:
        assert real[names[n]] == report[n].output, n


class TestStructure:
    def test_layers_are_nodes_named_after_graph_nodes(self):
        gm = ug.unet(3, 2, widths=(8, 16)).lower()
        names = [n.name for n in gm.graph.nodes]
        assert names[:4] == ["x", "x_guard", "enc0_conv0", "enc0_norm0"]
        for n in ["enc0", "down1", "mid", "up0", "merge0", "dec0", "head"]:
            assert n in names
        code = gm.code
        assert "enc0_conv0 = self.enc0.conv0(x_guard)" in code
        assert "merge0 = torch.cat((enc0, up0), dim = 1)" in code
        assert "head = self.head(dec0)" in code
        assert type(gm).__name__ == "UNet"

    def test_state_dict_keys_follow_the_graph(self):
        gm = ug.unet(3, 2, widths=(8, 16)).lower()
        keys = list(gm.state_dict())
        assert keys[:3] == ["enc0.conv0.weight", "enc0.norm0.weight", "enc0.norm0.bias"]
        assert "up0.weight" in keys and "head.bias" in keys
        assert not any(part.isdigit() for k in keys for part in k.split("."))

    def test_meta_custom_carries_role_and_level(self):
        gm = ug.unet(3, 2, widths=(8, 16)).lower()
        meta = {n.name: n.meta["custom"] for n in gm.graph.nodes if n.op != "output"}
        assert meta["enc0_norm0"] == {"unet_node": "enc0", "role": "encoder", "level": 0, "block": "ConvBlock"}
        assert meta["merge0"]["role"] == "merge"

    def test_the_record_goes_only_on_a_module_with_meta(self):
        gm = ug.unet(1, 1, widths=(4, 8)).lower()
        record = lowered_record(gm)
        with pytest.raises(ug.LoweringError, match="cannot attach a lowering record to a Linear: it has no meta"):
            attach_record(torch.nn.Linear(2, 2), record)
        attach_record(gm, record.with_(guard=False))
        assert lowered_record(gm).guard is False and lowered_record(gm).graph is record.graph

    def test_graph_lint_clean_and_not_traced_from_python(self):
        gm = ug.unet(3, 2, widths=(8, 16, 32)).lower()
        gm.graph.lint()
        # one call_module per layer: every leaf submodule is called by exactly the node named after it
        called = [n.target for n in gm.graph.nodes if n.op == "call_module"]
        leaves = [name for name, m in gm.named_modules() if name and not list(m.children())]
        assert sorted(called) == sorted(leaves)

    def test_meta_device_builds_structure_only(self):
        gm = ug.unet(3, 2).lower(device="meta")
        assert all(p.is_meta for p in gm.parameters())
        assert sum(p.numel() for p in gm.parameters()) == 31_037_698

    def test_dtype(self):
        gm = ug.unet(3, 2, widths=(4, 8)).lower(dtype=torch.float64)
        assert gm(torch.randn(1, 3, 8, 8, dtype=torch.float64)).dtype == torch.float64


class TestShapesEqualTheChecker:
    @pytest.mark.parametrize(
        "g, shape",
        [
            (ug.unet(3, 2, widths=(8, 16, 32)), (2, 3, 32, 48)),
            (ug.presets.classic_unet(), (1, 1, 188, 204)),
            (ug.unet(1, 3, widths=(4, 8, 16), dims=1, down="conv", up="linear", merge="add"), (2, 1, 40)),
            (
                ug.unet(
                    2,
                    1,
                    widths=(4, 8),
                    dims=3,
                    down=ug.Down(factor=(1, 2, 2)),
                    up="nearest",
                    block=ug.ConvBlock(norm="instance", act="gelu"),
                ),
                (1, 2, 3, 8, 12),
            ),
            (
                ug.unet(
                    1, 1, widths=(4, 8), block=ug.ConvBlock(padding="valid", norm="layer"), merge=ug.Merge(crop=True)
                ),
                (1, 1, 37, 41),
            ),
        ],
        ids=["2d", "classic-valid", "1d-conv-linear-add", "3d-anisotropic", "valid-odd-crop"],
    )
    def test_shape_prop(self, g, shape):
        assert_shapes_match(g, g.lower().eval(), shape)


class TestParity:
    def test_equals_hand_written_module_with_same_weights(self):
        widths = (8, 16, 32, 64)
        g = ug.unet(3, 2, widths=widths)
        gm = g.lower()
        hand = HandWrittenUNet(3, 2, widths)
        copy_weights(gm, hand)
        x = torch.randn(2, 3, 64, 64)
        gm.eval(), hand.eval()
        with torch.no_grad():
            assert torch.equal(gm(x), hand(x))
        gm.train(), hand.train()
        assert torch.allclose(gm(x), hand(x), atol=1e-6)  # batch statistics too

    def test_backward(self):
        gm = ug.unet(3, 2, widths=(4, 8)).lower()
        gm(torch.randn(2, 3, 16, 16)).sum().backward()
        assert all(p.grad is not None for p in gm.parameters())


class TestGuardAndPad:
    def test_guard_refuses_bad_inputs_with_the_checkers_words(self):
        gm = ug.unet(3, 2, widths=(8, 16, 32)).lower()
        with pytest.raises(
            ug.ShapeError,
            match="input x of spatial size 30×32 does not fit: input height 30 is not "
            "a multiple of 4; H and W must be multiples of 4, at least 4",
        ):
            gm(torch.randn(1, 3, 30, 32))
        with pytest.raises(
            ug.ShapeError, match=r"input x expects 3 channels \(N, 3, H, W\), got 4 in shape \(1, 4, 32, 32\)"
        ):
            gm(torch.randn(1, 4, 32, 32))
        with pytest.raises(ug.ShapeError, match=r"input x expects rank 4 \(N, 3, H, W\), got rank 3: shape \(3, 32"):
            gm(torch.randn(3, 32, 32))

    def test_guard_refuses_another_dtype_or_device_in_words(self):
        gm = ug.unet(3, 2, widths=(8, 16)).lower()
        with pytest.raises(
            ug.ShapeError,
            match=r"input x is torch\.float64 but the model computes in torch\.float32: pass x\.to\(torch\.float32\)",
        ):
            gm(torch.randn(1, 3, 8, 8, dtype=torch.float64))
        with pytest.raises(ug.ShapeError, match=r"input x is on meta but the model is on cpu: move the input \(x\.to"):
            gm(torch.randn(1, 3, 8, 8, device="meta"))
        assert not any("like" in k for k in gm.state_dict())  # not part of the weights
        gm.double()  # the guard follows the module
        assert gm(torch.randn(1, 3, 8, 8, dtype=torch.float64)).dtype == torch.float64

    def test_no_guard_gives_torch_error(self):
        gm = ug.unet(3, 2, widths=(8, 16, 32)).lower(guard=False)
        assert "x_guard" not in [n.name for n in gm.graph.nodes]
        with pytest.raises(RuntimeError):
            gm(torch.randn(1, 3, 30, 32))

    @pytest.mark.parametrize("size", [(255, 255), (17, 33), (1, 2)])
    def test_pad_auto_returns_the_input_size(self, size):
        g = ug.unet(3, 2, widths=(8, 16, 32))
        gm = g.lower(pad="auto").eval()
        y = gm(torch.randn(1, 3, *size))
        assert y.shape == (1, 2, *size)

    def test_pad_auto_matches_explicit_padding(self):
        g = ug.unet(3, 2, widths=(8, 16, 32))
        plain, padded = g.lower().eval(), g.lower(pad="auto").eval()
        padded.load_state_dict(plain.state_dict())
        x = torch.randn(1, 3, 30, 29)
        ref = plain(torch.nn.functional.pad(x, (1, 2, 1, 1)))[..., 1:31, 1:30]  # centred padding to 32×32
        assert torch.equal(padded(x), ref)

    def test_pad_auto_valid_convolutions_overlap_tile(self):
        g = ug.presets.classic_unet()
        gm = g.lower(pad="auto", pad_mode="reflect").eval()
        with torch.no_grad():
            assert gm(torch.randn(1, 1, 100, 120)).shape == (1, 2, 100, 120)

    def test_pad_arguments_are_checked(self):
        g = ug.unet(1, 1, widths=(4,))
        with pytest.raises(ug.LoweringError, match="pad: expected None or 'auto'"):
            g.lower(pad="yes")
        with pytest.raises(ug.LoweringError, match="pad_mode"):
            g.lower(pad="auto", pad_mode="mirror")
