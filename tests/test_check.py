"""The static checker: exact shapes, valid sizes, typed errors with names and numbers."""

import pytest
import torch

import unetgraph as ug


@pytest.fixture(scope="module")
def g():
    return ug.unet(3, 2)


class TestShapes:
    def test_report_rows_and_totals(self, g):
        r = g.check((2, 3, 256, 256))
        assert len(r) == len(g)
        assert r["enc2"].output == (2, 256, 64, 64)
        assert r["merge1"].inputs == ((2, 128, 128, 128), (2, 128, 128, 128))
        assert r.outputs == {"head": (2, 2, 256, 256)}
        assert r.params == g.params == 31_037_698
        text = str(r)
        assert "merge1" in text and "31,037,698 params" in text
        assert "<table>" in r._repr_html_()

    def test_valid_convolutions_and_crop(self):
        g = ug.presets.classic_unet()
        r = g.check((1, 1, 572, 572))
        assert r["enc0"].output == (1, 64, 568, 568)
        assert r["down1"].output == (1, 64, 284, 284)
        assert r["mid"].output == (1, 1024, 28, 28)
        assert r["up3"].output == (1, 512, 56, 56)
        assert r.outputs["head"] == (1, 2, 388, 388)

    def test_odd_sizes_floor_and_note(self):
        g = ug.presets.classic_unet()
        r = g.check((1, 1, 573, 573))  # crop merges absorb the floor
        assert r["down1"].output == (1, 64, 284, 284)
        assert r.notes == [
            "down1: drops trailing positions of H=569, W=569 (floor); the next layers see a shifted grid"
        ]

    def test_1d_and_3d(self):
        assert ug.unet(1, 1, widths=(4, 8), dims=1).check((3, 1, 10)).outputs["head"] == (3, 1, 10)
        g3 = ug.unet(1, 1, widths=(4, 8, 16), dims=3, block=ug.ConvBlock(padding="valid"), merge=ug.Merge(crop=True))
        assert g3.check((1, 1, 44, 44, 44)).outputs["head"] == (1, 1, 4, 4, 4)


class TestValidSizes:
    def test_padded_rule(self, g):
        rules = g.valid_sizes()
        assert str(rules) == "H and W must be multiples of 16, at least 16"
        assert rules.contains((256, 48)) and not rules.contains((255, 256))
        assert rules.next_valid((255, 1)) == (256, 16)
        assert rules.margin == (0, 0)

    def test_classic_rule(self):
        rules = ug.presets.classic_unet().valid_sizes()
        assert str(rules) == "H and W must be 16k + 12 with k ≥ 11 (188, 204, 220, …)"
        assert rules.contains((572, 572)) and rules.margin == (92, 92)

    def test_rule_matches_brute_force(self):
        g = ug.unet(1, 1, widths=(2, 4, 8), down=ug.Down("conv", kernel=3, padding=1))
        rules = g.valid_sizes()
        for n in range(1, 40):
            try:
                g.check((1, 1, n, 8))
                ok = not g.check((1, 1, n, 8)).notes
            except ug.ShapeError:
                ok = False
            assert ok == (n in rules.axes[0]), n

    def test_any_size(self):
        assert str(ug.unet(1, 1, widths=(4,)).valid_sizes()) == "H and W may be any size"


class TestErrors:
    def test_merge_mismatch_names_node_edges_sizes_and_rule(self, g):
        with pytest.raises(ug.ShapeError) as e:
            g.check((1, 3, 70, 70))
        assert str(e.value) == (
            "merge2 (concat) receives 16×16 from up2 but 17×17 from skip enc2→merge2: "
            "input height 70 is not a multiple of 16; H and W must be multiples of 16, at least 16"
        )
        assert e.value.node == "merge2"

    def test_depth_too_deep_for_the_input(self, g):
        with pytest.raises(
            ug.ShapeError,
            match=r"down4 \(maxpool /2\) receives 1×1 from enc3: .* "
            r"the input 8×8 is too small for 5 levels",
        ):
            g.check((1, 3, 8, 8))

    @pytest.mark.parametrize(
        "shape, message",
        [
            ((1, 4, 64, 64), r"input x expects 3 channels \(N, 3, H, W\), got 4"),
            ((3, 64, 64), r"input x expects rank 4 .* got rank 3"),
            ((1, 3, 64, 64, 64), "got rank 5"),
            ((1, 3, 0, 64), "positive integers"),
            ("big", "positive integers"),
        ],
    )
    def test_bad_inputs(self, g, shape, message):
        with pytest.raises(ug.ShapeError, match=message):
            g.check(shape)

    def test_valid_convolutions_without_crop_suggest_it(self):
        g = ug.unet(1, 2, widths=(4, 8), block=ug.ConvBlock(padding="valid"))
        with pytest.raises(
            ug.ShapeError,
            match=r"merge0 \(concat\) receives 16×16 from up0 but 24×24 .* "
            r"use Merge\(crop=True\)",
        ):
            g.check((1, 1, 28, 28))

    def test_report_unknown_row(self, g):
        with pytest.raises(ug.ShapeError, match="no node 'zz'"):
            g.check((1, 3, 32, 32))["zz"]


class TestNormsWithTooFewValues:
    """The checker refuses exactly what torch's norms refuse in every mode, and notes the rest."""

    @pytest.mark.parametrize(
        "norm, shape",
        [
            ("group", (1, 1, 1, 1)),
            ("group", (2, 1, 1, 1)),
            ("instance", (2, 4, 1, 1)),
            ("batch", (1, 4, 1, 1)),
            ("batch", (2, 4, 1, 1)),
            ("group", (1, 4, 2, 2)),
        ],
    )
    def test_refusal_matches_torch(self, norm, shape):
        block = ug.ConvBlock(convs=1, kernel=1, norm=norm, groups=1 if shape[1] == 1 else 2)
        g = ug.unet(shape[1], 1, widths=(shape[1],), block=block)
        gm = g.lower(guard=False).eval()  # the guard's size rules hold at every batch (stricter)
        try:
            with torch.no_grad():
                gm(torch.randn(*shape))
            torch_ok = True
        except (RuntimeError, ValueError):
            torch_ok = False
        try:
            report = g.check(shape)
            checker_ok = True
        except ug.ShapeError as e:
            assert "mid (1×conv1" in str(e)
            checker_ok = False
        assert checker_ok == torch_ok
        if checker_ok and norm == "batch" and shape[0] * shape[2] * shape[3] == 1:
            assert any("raises in training mode" in n for n in report.notes)
            with pytest.raises(ValueError):
                gm.train()(torch.randn(*shape))

    def test_resblock_group_norm_at_one_position_is_refused_before_running(self):
        g = ug.unet(32, 1, widths=(32,), block=ug.ResBlock(groups=32))
        with pytest.raises(ug.ShapeError, match=r"mid \(.*\): GroupNorm sees one value per group \(32 channels in 32"):
            g.check((1, 32, 1, 1))
        with pytest.raises(ValueError):  # what torch would have raised, from deep inside forward
            g.lower(guard=False).eval()(torch.randn(1, 32, 1, 1))
        assert g.check((2, 32, 1, 1)).notes  # runs, but each group is constant: noted


def test_valid_sizes_respect_norm_limits_that_count_every_axis():
    # valid 1D convolutions with factor-3 pooling: the per-axis minimum leaves the bottleneck's
    # InstanceNorm a single position, which check (and torch) refuse
    block = ug.ConvBlock(padding="valid", convs=1, norm="instance")
    g = ug.unet(
        2,
        1,
        widths=(2, 2),
        dims=1,
        block=block,
        down=ug.Down("maxpool", factor=3),
        merge=ug.Merge(crop=True),
        up=ug.Up("nearest", factor=3),
    )
    rules = ug.valid_sizes(g, exact=False)
    assert rules.axes[0].minimum == 14
    for n in rules.axes[0].sizes(6):
        g.check((1, 2, n))  # every listed size passes
    with pytest.raises(ug.ShapeError, match="InstanceNorm needs more than one position"):
        g.check((1, 2, 11))  # the old minimum
