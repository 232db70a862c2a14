"""Passes keep outputs equal (float32 tolerance) on every preset and report what they changed."""

import copy

import pytest
import torch
import torch.fx as fx
from deploy_helpers import SinusoidalScale, assert_close, randomize_norms, small_diffusion
from preset_cases import PRESET_CASES, inputs_for
from torch import nn

import unetgraph as ug
from unetgraph.passes import (
    channels_last,
    drop_identities,
    fold_batchnorm,
    fold_constants,
    merge_siblings,
    prepack,
    remove_dead_nodes,
    separate,
    swap_instance_norms,
)
from unetgraph.passes.fold_batchnorm import fold_into_conv
from unetgraph.passes.pipeline import INFERENCE_STEPS

PASSES = [*INFERENCE_STEPS, channels_last, prepack]


@pytest.fixture(scope="module", params=list(PRESET_CASES))
def preset(request):
    torch.manual_seed(0)
    make, shapes = PRESET_CASES[request.param]
    g = make()
    gm = randomize_norms(g.lower()).eval()
    xs = inputs_for(g, shapes)
    with torch.no_grad():
        y = gm(*xs)
    return g, gm, xs, y


@pytest.mark.parametrize("pass_", PASSES, ids=lambda p: p.__name__)
def test_each_pass_keeps_outputs_on_every_preset(preset, pass_):
    _, gm, xs, y = preset
    work = copy.deepcopy(gm)
    result = pass_(work)
    assert result.name == pass_.__name__
    with torch.no_grad():
        assert_close(work(*xs), y)
    work.graph.lint()


def test_optimize_keeps_outputs_on_every_preset_and_reports(preset):
    _, gm, xs, y = preset
    fast, report = ug.optimize(gm, example_inputs=xs)
    biggest = max(v.abs().max().item() for v in (y.values() if isinstance(y, dict) else [y]))
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4 * max(1.0, biggest)
    assert [p.name for p in report.passes] == [p.__name__ for p in PASSES]

    def batch_norms(m: nn.Module) -> int:
        return sum(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())

    # every batch norm right after a convolution is folded; the others (pre-activation norms
    # after a merge or an input) stay, each with a note saying why
    folded, kept = report["fold_batchnorm"].changes, report["fold_batchnorm"].notes
    assert len(folded) + len(kept) == batch_norms(gm) and batch_norms(fast) == len(kept)
    assert all("not a convolution" in note for note in kept)
    assert report.nodes[1] == len(fast.graph.nodes) and report.params[1] <= report.params[0]
    assert fast is not gm and batch_norms(gm) == len(folded) + len(kept)
    with torch.no_grad():
        out = fast(*xs)
    assert all(o.is_contiguous() for o in (out.values() if isinstance(out, dict) else [out]))
    assert_close(out, y)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("transposed", [False, True])
def test_fold_batchnorm_conv_and_transposed_conv_with_groups(dims, transposed):
    conv_cls = [nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d]
    conv = conv_cls[dims - 1 + 3 * transposed](4, 6, 3, stride=2 if transposed else 1, groups=2, bias=transposed)
    bn = [nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d][dims - 1](6)
    gm = fx.symbolic_trace(randomize_norms(nn.Sequential(conv, bn)).eval())
    x = torch.randn(2, 4, *(5,) * dims)
    with torch.no_grad():
        y = gm(x)
        result = fold_batchnorm(gm)
        assert result.changes == ("1 folded into 0",)
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in gm.modules())
        assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_module", "output"]
        assert_close(gm(x), y)


def test_fold_batchnorm_leaves_what_it_cannot_fold_with_a_note():
    class TwoUsers(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            c = self.conv(x)
            return self.bn(c) + c

    gm = fx.symbolic_trace(TwoUsers().eval())
    result = fold_batchnorm(gm)
    assert not result.changed and "also feeds add" in result.notes[0]
    trained = fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))  # training mode
    result = fold_batchnorm(trained)
    assert not result.changed and "training mode" in result.notes[0]
    assert any(isinstance(m, nn.BatchNorm2d) for m in trained.modules())


def test_fold_into_conv_refuses_a_norm_without_running_statistics():
    conv, bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False).eval()
    weight = conv.weight.detach().clone()
    with pytest.raises(ug.LoweringError, match="BatchNorm2d keeps no running statistics"):
        fold_into_conv(conv, bn)
    assert torch.equal(conv.weight, weight)  # untouched


def test_drop_identities_eval_only():
    g = ug.unet(1, 1, widths=(4, 8), block=ug.ConvBlock(dropout=0.5))
    train = g.lower()
    result = drop_identities(train)
    assert not result.changed and len(result.notes) == 3 and "training mode" in result.notes[0]
    gm = g.lower().eval()
    result = drop_identities(gm)
    assert result.changes == ("enc0.dropout", "mid.dropout", "dec0.dropout")
    assert not any(isinstance(m, nn.Dropout) for m in gm.modules())
    # the block's output moved to the node before the dropout
    assert ug.fx_node_names(gm)["enc0"] == "enc0_act1"


def test_drop_identities_functional_dropout():
    class F(nn.Module):
        def forward(self, x):
            return torch.nn.functional.dropout(x, 0.5, training=False) + nn.functional.dropout(x, 0.5, True)

    gm = fx.symbolic_trace(F())
    result = drop_identities(gm)
    assert len(result.changes) == 1 and "training=True" in result.notes[0]


def test_fold_constants_computes_buffer_arithmetic_once():
    g = ug.unet(1, 1, widths=(4, 8), bottleneck_block=SinusoidalScale())
    gm = g.lower().eval()
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        y = gm(x)
    ops_before = sum(n.op == "call_function" for n in gm.graph.nodes)
    result = fold_constants(gm)
    assert len(result.changes) == 1 and "buffer mid_reshape_folded (1, 4, 1, 1)" in result.changes[0]
    assert sum(n.op == "call_function" for n in gm.graph.nodes) == ops_before - 7  # exp, mul, div, sin, cos, cat, mul
    folded = next(n for n in gm.graph.nodes if n.op == "get_attr" and n.target == "mid_reshape_folded")
    assert folded.meta["custom"]["unet_node"] == "mid"
    with torch.no_grad():
        assert_close(gm(x), y)
    cleanup = remove_dead_nodes(gm)
    assert cleanup.changes == ("submodule mid",)  # it held only the index buffer and the scale
    assert "mid.index" not in gm.state_dict() and "mid_reshape_folded" in gm.state_dict()
    with torch.no_grad():
        assert_close(gm(x), y)


def test_fold_constants_folds_frequencies_made_on_the_inputs_device():
    # diffusers and our Sinusoidal build the frequencies with arange(..., device=t.device)
    g = small_diffusion(attention=None, num_classes=None)
    gm = g.lower().eval()
    xs = tuple(ug.example_inputs(g, batch=2, size=8).values())
    with torch.no_grad():
        y = gm(*xs)
    assert "torch.arange" in gm.code
    result = fold_constants(gm)
    # the frequencies become a buffer; the dtype the encoding is handed on in becomes a constant
    assert len(result.changes) == 2 and "→ buffer time_embedding_" in result.changes[0]
    assert result.changes[1].endswith("→ torch.float32")
    assert "torch.arange" not in gm.code and "device(type=" not in gm.code  # no device written in
    with torch.no_grad():
        assert_close(gm(*xs), y)


def test_fold_constants_never_folds_random_ops():
    root = nn.Module()
    root.w = nn.Parameter(torch.ones(3))
    graph = fx.Graph()
    x, w = graph.placeholder("x"), graph.get_attr("w")
    noise = graph.call_function(torch.mul, (graph.call_function(torch.randn, (3,)), w))
    twice = graph.call_function(torch.mul, (w, 2))
    graph.output(graph.call_function(torch.add, (graph.call_function(torch.add, (x, noise)), twice)))
    gm = fx.GraphModule(root, graph)
    result = fold_constants(gm)
    assert result.changes == ("mul_1 → buffer mul_1_folded (3,)",)  # w * 2 folded, the noise kept
    assert any(n.target is torch.randn for n in gm.graph.nodes)
    assert not torch.equal(gm(torch.zeros(3)), gm(torch.zeros(3)))


def test_remove_dead_nodes_and_unused_state():
    gm = ug.unet(1, 1, widths=(4, 8)).lower()
    gm.register_buffer("leftover", torch.zeros(3))
    x = next(iter(gm.graph.nodes))
    with gm.graph.inserting_after(x):
        gm.graph.call_function(torch.relu, (x,))
    result = remove_dead_nodes(gm)
    assert result.changes == ("node relu", "buffer leftover")
    assert "leftover" not in gm.state_dict()
    assert not remove_dead_nodes(gm).changed  # nothing left to do; the input guard stays
    assert any(n.target == "x_guard" for n in gm.graph.nodes)


def test_channels_last_layout_and_notes():
    g = ug.unet(3, 2, widths=(8, 16))
    gm = g.lower().eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        y = gm(x)
    result = channels_last(gm)
    assert result.changes[0] == "input x → torch.channels_last"
    conv = gm.get_submodule("enc0.conv0")
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    new = [n for n in gm.graph.nodes if n.op == "call_method"]
    assert [n.target for n in new] == ["contiguous", "contiguous"]
    assert all(n.meta["custom"]["unet_node"] in ("x", "head") for n in new)
    with torch.no_grad():
        out = gm(x)
    assert out.is_contiguous() and torch.allclose(out, y, atol=1e-5)
    assert channels_last(gm).notes == ("already converted",)
    one_d = ug.unet(1, 1, widths=(4, 8), dims=1).lower()
    assert "needs 2D or 3D" in channels_last(one_d).notes[0]
    assert "not a module made by unetgraph" in channels_last(fx.symbolic_trace(nn.Conv2d(1, 1, 1))).notes[0]


def test_optimize_for_training_keeps_norms_and_dropout():
    g = ug.unet(1, 1, widths=(4, 8), block=ug.ConvBlock(dropout=0.5))
    gm = g.lower()
    trained, report = ug.optimize(gm, for_inference=False)
    assert trained.training
    assert [p.name for p in report.passes] == ["drop_identities", "remove_dead_nodes", "channels_last"]
    assert any(isinstance(m, nn.Dropout) for m in trained.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in trained.modules())


def test_optimize_inplace_and_refusals():
    gm = ug.unet(1, 1, widths=(4, 8)).lower()
    same, report = ug.optimize(gm, inplace=True, channels_last=False, prepack=False)
    assert same is gm and {"channels_last", "prepack"}.isdisjoint(p.name for p in report.passes)
    assert "fold_batchnorm 6" in report.summary()
    with pytest.raises(ug.LoweringError, match="GraphModule"):
        ug.optimize(nn.Conv2d(1, 1, 1))
    with pytest.raises(KeyError, match="no pass 'fuse'"):
        report["fuse"]


def test_merge_siblings_runs_a_diffusion_unets_sibling_linears_as_one():
    g = small_diffusion(widths=(8, 16, 16), layers_per_block=2)
    torch.manual_seed(0)
    gm = randomize_norms(g.lower()).eval()
    xs = tuple(ug.example_inputs(g, batch=3, size=(16, 16)).values())
    with torch.no_grad():
        want = gm(*xs)
    names_before = {n.name for n in gm.graph.nodes}
    before = {k: v.clone() for k, v in gm.state_dict().items()}
    recorded = ug.fx_node_names(gm)
    linears = sum(isinstance(m, nn.Linear) for m in gm.modules())
    attentions = sum(isinstance(m, nn.Module) and hasattr(m, "to_q") for m in gm.modules())
    blocks = sum(n.target.endswith("cond_proj.act") for n in gm.graph.nodes if n.op == "call_module")
    assert attentions >= 2 and blocks >= 8

    result = merge_siblings(gm)
    with torch.no_grad():
        assert_close(gm(*xs), want)
    # one SiLU of the time embedding and one Linear for every block's projection of it; one
    # Linear for each attention's query, key and value
    assert len(result.changes) == 2 + attentions
    assert f"instead of {blocks}" in result.changes[0]
    silus = [n for n in gm.graph.nodes if n.op == "call_module" and n.target.endswith("cond_proj.act")]
    assert len(silus) == 1
    merged = [n for n in gm.graph.nodes if n.op == "call_module" and "_to_k_" in f"_{n.target.rpartition('.')[2]}_"]
    assert len(merged) == attentions
    assert sum(isinstance(m, nn.Linear) for m in gm.modules()) == linears - 3 * attentions - blocks + attentions + 1
    # the former Linears' nodes keep their names, now views of the merged output
    narrows = [n for n in gm.graph.nodes if n.op == "call_method" and n.target == "narrow"]
    assert len(narrows) == 3 * attentions + blocks and {n.name for n in narrows} <= names_before
    assert ug.fx_node_names(gm) == recorded
    again = merge_siblings(gm)
    assert not again.changed and again.notes
    # separate(): the Linears back under their names with their weights (what a peer's layout maps)
    merged_state = {k: v.clone() for k, v in gm.state_dict().items()}
    back = separate(gm)
    assert back is not gm and back.state_dict().keys() == before.keys()
    assert all(torch.equal(back.state_dict()[k], v) for k, v in before.items())
    assert gm.state_dict().keys() == merged_state.keys()  # the merged module is untouched
    with torch.no_grad():
        assert_close(back(*xs), want)
    assert separate(back) is back


class _Siblings(nn.Module):
    """Linears and activations reading one tensor, some of which must not be merged."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 4), nn.Linear(6, 5, bias=False)
        self.shared = nn.Linear(6, 6)
        self.wide = nn.Linear(6, 3).double()
        self.act0, self.act1 = nn.LeakyReLU(0.1), nn.LeakyReLU(0.1)
        self.act2, self.act3 = nn.LeakyReLU(0.2), nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        linear = torch.cat([self.a(y), self.b(y), self.shared(y), self.shared(self.shared(y))], -1)
        acts = self.act0(y) + self.act1(y) + self.act2(y) + torch.relu(y) + nn.functional.relu(y)
        return linear.sum(-1) + acts.sum(-1) + self.wide(y.double()).float().sum(-1) + self.act3(y * 1).sum(-1)


def test_merge_siblings_merges_only_what_computes_the_same():
    torch.manual_seed(0)
    gm = fx.symbolic_trace(_Siblings()).eval()
    x = torch.randn(2, 6)
    want = gm(x)
    result = merge_siblings(gm)
    assert_close(gm(x), want)
    # a and b (one with a bias, one without) merge; the Linear called twice and the float64 one stay
    assert any("2 Linears reading mul run as a_b (6→9)" in line for line in result.changes)
    assert {name for name, m in gm.named_modules() if isinstance(m, nn.Linear)} == {"a_b", "shared", "wide"}
    assert gm.a_b.bias is not None and torch.equal(gm.a_b.bias[4:], torch.zeros(5))
    # equal LeakyReLUs become one, a different slope stays; torch.relu and F.relu become one; an
    # in-place activation never merges
    assert hasattr(gm, "act0") and not hasattr(gm, "act1") and hasattr(gm, "act2") and hasattr(gm, "act3")
    relus = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in (torch.relu, nn.functional.relu)]
    assert len(relus) == 1


class _OwnNorm(nn.InstanceNorm2d):
    pass


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_swap_instance_norms_runs_them_as_group_norms_with_the_same_outputs_and_names(dims):
    g = ug.unet(2, 3, widths=(6, 12), dims=dims, block=ug.ConvBlock(norm="instance"))
    g = g.replace("mid", g["mid"].block.with_(norm="instance(affine=False)"))
    torch.manual_seed(0)
    gm = g.lower().eval()
    with torch.no_grad():
        for m in gm.modules():
            if isinstance(m, nn.InstanceNorm2d | nn.InstanceNorm1d | nn.InstanceNorm3d) and m.affine:
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-1, 1)
    x = torch.randn(2, 2, *(16,) * dims) * 3 + 1
    with torch.no_grad():
        want = gm(x)
    keys = {k: v for k, v in gm.state_dict().items()}
    norms = [n for n, m in gm.named_modules() if isinstance(m, nn.modules.instancenorm._InstanceNorm)]
    result = swap_instance_norms(gm)
    assert len(result.changes) == len(norms) >= 4 and not result.notes
    assert not any(isinstance(m, nn.modules.instancenorm._InstanceNorm) for m in gm.modules())
    assert all(isinstance(gm.get_submodule(n), nn.GroupNorm) for n in norms)
    assert not gm.get_submodule("mid.norm0").affine and gm.get_submodule("enc0.norm0").affine
    state = gm.state_dict()
    assert state.keys() == keys.keys() and all(torch.equal(state[k], keys[k]) for k in keys)
    with torch.no_grad():
        assert_close(gm(x), want)


def test_swap_instance_norms_leaves_alone_what_means_something_else():
    gm = ug.unet(1, 1, widths=(4, 8), block=ug.ConvBlock(norm="instance")).lower().eval()
    gm.enc0.norm0 = nn.InstanceNorm2d(4, track_running_stats=True).eval()
    gm.enc0.norm1 = _OwnNorm(4)
    result = swap_instance_norms(gm)
    assert set(result.notes) == {
        "enc0.norm0 left alone: it keeps running statistics",
        "enc0.norm1 left alone: a subclass of InstanceNorm2d",
    }
    assert type(gm.enc0.norm0) is nn.InstanceNorm2d and type(gm.enc0.norm1) is _OwnNorm
    assert isinstance(gm.dec0.norm0, nn.GroupNorm)
    # a module of unknown origin may be called on unbatched inputs: left alone
    plain = fx.symbolic_trace(nn.Sequential(nn.Conv2d(1, 4, 3), nn.InstanceNorm2d(4)))
    result = swap_instance_norms(plain)
    assert not result.changes and "not a module made by unetgraph.lower" in result.notes[0]
    assert isinstance(plain.get_submodule("1"), nn.InstanceNorm2d)
