"""Norms and activations with options: stored as plain text, built with their options, counted by
the static cost model (PReLU's slopes), and checked by what the norm's statistics reduce over —
so a custom ``ug.NORMS`` entry gets the size limits of what it does, not of its name."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import unetgraph as ug


def module_params(gm: nn.Module) -> int:
    return sum(p.numel() for p in gm.parameters())


class TestStoredForm:
    def test_options_are_text_without_the_defaults_in_a_fixed_order(self):
        block = ug.ConvBlock(act=("leaky_relu", {"negative_slope": 0.1}), norm="instance(eps=0.001, affine=False)")
        assert block.act == "leaky_relu(negative_slope=0.1)"
        assert block.norm == "instance(affine=False, eps=0.001)"
        assert ug.ConvBlock(act="leaky_relu(negative_slope=0.01)").act == "leaky_relu"  # the default
        same = ug.ConvBlock(act="leaky_relu( negative_slope = 0.1 )", norm=("instance", {"affine": False, "eps": 1e-3}))
        assert same == block and hash(same) == hash(block)
        assert "leaky_relu(negative_slope=0.1)" in block.label()

    def test_options_round_trip_through_documents(self):
        g = ug.unet(
            1,
            2,
            widths=(4, 8),
            block=ug.ConvBlock(norm="batch(momentum=0.3, track_running_stats=False)", act="prelu(init=0.1)"),
            decoder_block=ug.ResidualUnit(norm="group(eps=1e-06)", groups=2, act="elu(alpha=0.5)"),
        )
        text = ug.dumps(g, format="json")
        assert json.loads(text)["nodes"]["enc0"]["block"]["act"] == "prelu(init=0.1)"
        assert ug.loads(text, format="json") == g
        assert ug.loads(ug.dumps(g)) == g

    @pytest.mark.parametrize(
        "make, message",
        [
            (lambda: ug.ConvBlock(act="leaky_relu(slope=0.1)"), "leaky_relu takes no option 'slope'; its options: "),
            (lambda: ug.ConvBlock(norm="instance(affine=1)"), "option affine expects True or False, got 1"),
            (lambda: ug.ConvBlock(act="prelu(channelwise=2.5)"), "option channelwise expects True or False"),
            (lambda: ug.ConvBlock(norm="batch(eps=nan)"), "expected option=value with True, False or a number"),
            (lambda: ug.ConvBlock(act="relu(x=__import__('os'))"), "expected option=value"),
            (lambda: ug.ConvBlock(act="leaky_relu(negative_slope=0.1, negative_slope=0.2)"), "given twice"),
            (lambda: ug.ConvBlock(act="leakyrelu"), "did you mean 'leaky_relu'"),
            (lambda: ug.ConvBlock(act="relu("), "expected a name or 'name"),
            (lambda: ug.ConvBlock(act=("prelu", {"init": "0.1"})), "is not True, False or a number"),
            (lambda: ug.Head(norm="group(eps=0.1)", eps=0.2), "Head.eps: the norm 'group(eps=0.1)' sets eps already"),
            (lambda: ug.ConvBlock(order="NAN"), "ConvBlock.order: expected the letters N"),
        ],
    )
    def test_bad_options_are_spec_errors_naming_the_field(self, make, message):
        with pytest.raises(ug.SpecError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
            make()
        assert any(field in str(e.value) for field in (".act", ".norm", ".eps", ".order"))


class TestLayers:
    def test_options_reach_the_layers_and_the_order_places_them(self):
        block = ug.ConvBlock(
            channels=6,
            convs=1,
            norm="instance(affine=False, eps=0.001, momentum=0.2)",
            act="leaky_relu(negative_slope=0.2)",
            order="ADN",
            dropout=0.3,
        )
        gm = ug.unet(2, 2, widths=(6,), block=block).lower()
        layers = dict(gm.mid.named_children())
        assert list(layers) == ["conv0", "act0", "drop0", "norm0"]
        norm, act = layers["norm0"], layers["act0"]
        assert isinstance(norm, nn.InstanceNorm2d) and not norm.affine and norm.eps == 1e-3 and norm.momentum == 0.2
        assert act.negative_slope == 0.2 and layers["drop0"].p == 0.3

    def test_prelu_slopes_are_counted_by_the_static_cost_model(self):
        x = torch.randn(2, 3, 16, 16)
        for act, per_layer in [("prelu", lambda c: 1), ("prelu(channelwise=True)", lambda c: c)]:
            g = ug.unet(3, 2, widths=(4, 8), block=ug.ConvBlock(act=act), up=ug.Up("transpose", act=act))
            gm = g.lower()
            assert g.params == module_params(gm) == g.check(tuple(x.shape)).params == g.summary(x.shape).params
            # 3 ConvBlocks × 2 activations, and one up-sampling activation
            slopes = sum(p.numel() for n, p in gm.named_parameters() if ".act" in n)
            assert slopes == 2 * (per_layer(4) + per_layer(8) + per_layer(4)) + per_layer(4)
            assert gm(x).shape == (2, 2, 16, 16)

    def test_resblock_refuses_a_channelwise_activation_it_would_apply_to_two_widths(self):
        with pytest.raises(ug.ShapeError, match="uses one activation layer after both norms"):
            ug.unet(4, 1, widths=(8,), block=ug.ResBlock(groups=4, act="prelu(channelwise=True)"))
        g = ug.unet(8, 1, widths=(8,), block=ug.ResBlock(groups=4, act="prelu(channelwise=True)"))
        assert g.params == module_params(g.lower())

    def test_a_plain_callable_activation_with_parameters_is_counted(self):
        ug.ACTS["prelu3"] = lambda: nn.PReLU(3)
        try:
            g = ug.unet(1, 1, widths=(3,), block=ug.ConvBlock(convs=1, act="prelu3"))
            assert g.params == module_params(g.lower()) == 1 * 3 * 9 + 2 * 3 + 3 + (3 + 1)
        finally:
            del ug.ACTS["prelu3"]


@ug.leaf_module
class MeanOnlyInstanceNorm(nn.Module):
    """A user's norm: normalises each sample and channel over positions with torch's instance norm
    (which refuses a single position), plus a learned shift."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x) + self.shift.view(1, -1, *[1] * (x.dim() - 2))


CUSTOM_NORMS = {
    # a plain pair, read from the layer it builds: per-sample statistics
    "in_plain": ((lambda c, d, g: (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)[d - 1](c)), 0),
    # a class unetgraph cannot read, declared by what it reduces over
    "mean_only": ug.NormKind(lambda c, d, g: MeanOnlyInstanceNorm(c), 1, "instance"),
    # per-group statistics under another name
    "gn": ug.NormKind(lambda c, d, g: nn.GroupNorm(g, c), 2, "group"),
    # batch statistics in every mode
    "bn_live": ((lambda c, d, g: nn.BatchNorm2d(c, track_running_stats=False)), 2),
}


@pytest.fixture
def custom_norms():
    ug.NORMS.update(CUSTOM_NORMS)
    try:
        yield
    finally:
        for name in CUSTOM_NORMS:
            del ug.NORMS[name]


def runs(gm: nn.Module, shape: tuple[int, ...], training: bool) -> bool:
    try:
        with torch.no_grad():
            gm.train(training)(torch.randn(shape))
        return True
    except (RuntimeError, ValueError):
        return False


@pytest.mark.parametrize("norm", list(CUSTOM_NORMS))
@pytest.mark.parametrize("widths", [(4, 4, 4), (4, 8)])
def test_valid_sizes_of_a_custom_norm_never_list_a_size_the_module_refuses(custom_norms, norm, widths):
    g = ug.unet(2, 1, widths=widths, block=ug.ConvBlock(norm=norm, groups=4))
    rules = g.valid_sizes()
    gm = g.lower(guard=False)
    for n in rules.axes[0].sizes(3):  # every listed size runs, at batch 1, in eval and in training
        shape = (1, 2, n, n)
        assert runs(gm, shape, training=False), (norm, n)
        g.check(shape)
        assert runs(gm, shape, training=True), (norm, n)
    below = rules.axes[0].minimum - rules.axes[0].step  # the size the per-axis scan alone would list first
    if below >= 1:
        with pytest.raises(ug.ShapeError):
            g.check((1, 2, below, below))
        assert not runs(gm, (1, 2, below, below), training=False)


def test_the_checker_agrees_with_torch_for_a_custom_norm_at_every_small_size(custom_norms):
    for norm in CUSTOM_NORMS:
        g = ug.unet(2, 1, widths=(4, 4), block=ug.ConvBlock(norm=norm, convs=1, groups=4), up="nearest")
        gm = g.lower(guard=False)
        for n in range(1, 7):
            shape = (1, 2, n, n)
            try:
                g.check(shape)
                accepted = True
            except ug.ShapeError:
                accepted = False
            assert accepted == runs(gm, shape, training=False), (norm, n)


def test_a_norm_layer_nobody_can_read_asks_for_its_statistics():
    ug.NORMS["mystery"] = (lambda c, d, g: MeanOnlyInstanceNorm(c), 1)
    ug.NORMS["pixel"] = ug.NormKind(lambda c, d, g: MeanOnlyInstanceNorm(c), 1, "pixel")
    try:
        with pytest.raises(
            ug.SpecError, match=r"builds a MeanOnlyInstanceNorm.*ug.NormKind\(make, per_channel, stats="
        ):
            ug.ConvBlock(norm="mystery")
        with pytest.raises(ug.SpecError, match=r"ConvBlock\.norm: a NormKind's stats must be one of batch, instance"):
            ug.ConvBlock(norm="pixel")
    finally:
        del ug.NORMS["mystery"], ug.NORMS["pixel"]


def test_batch_norm_without_running_statistics_is_refused_where_it_raises_in_eval():
    g = ug.unet(1, 1, widths=(4, 4), block=ug.ConvBlock(convs=1, norm="batch(track_running_stats=False)"))
    with pytest.raises(ug.ShapeError, match="without running statistics needs more than one value per channel"):
        g.check((1, 1, 2, 2))  # the bottleneck sees 1×1 at batch 1
    assert not runs(g.lower(guard=False), (1, 1, 2, 2), training=False)
    assert g.check((2, 1, 2, 2)).outputs["head"] == (2, 1, 2, 2)  # two samples: fine
    plain = ug.unet(1, 1, widths=(4, 4), block=ug.ConvBlock(convs=1, norm="batch"))
    assert any("raises in training mode" in note for note in plain.check((1, 1, 2, 2)).notes)
    assert g.valid_sizes().axes[0].minimum == 4 and plain.valid_sizes().axes[0].minimum == 2
