"""fold_upsampling: a 2× upsampling and the 3×3 convolution after it, computed as 2^D phase
convolutions of the coarse input: the same outputs, less arithmetic, the state_dict kept, and
the pair back for export, eject and compile."""

import copy
import threading

import pytest
import torch
from deploy_helpers import assert_close
from torch import nn

import unetgraph as ug
from unetgraph.cost import flop_counter
from unetgraph.passes import (
    UpsampledConv,
    fold_upsampling,
    plain,
    remove_dead_nodes,
    unfold_upsampling,
)

GRAPHS = {
    # a transposed convolution (with bias) into a merge, crops where valid convolutions shrank the skip
    "3d transposed, cropped": (
        lambda: ug.unet(
            1,
            2,
            widths=(8, 16),
            dims=3,
            encoder_block=ug.ConvBlock(padding="valid"),
            up=ug.Up("transpose", channels=16),
            merge=ug.Merge("concat", crop=True),
        ),
        (2, 1, 20, 20, 20),
    ),
    # nearest upsampling into a merge (its channels known only when it runs)
    "2d nearest, merged": (
        lambda: ug.unet(3, 2, widths=(8, 16, 32), up=ug.Up(mode="nearest", conv=False)),
        (2, 3, 32, 24),
    ),
    # a diffusion U-Net's upsampling block: nearest, then its own convolution
    "2d diffusion": (
        lambda: ug.diffusion_unet(
            3, widths=(16, 32), layers_per_block=1, resblock=ug.ResBlock(groups=8), attention=ug.SelfAttention(groups=8)
        ),
        (2, 3, 16, 16),
    ),
}


def _randomized(gm: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in gm.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        for name, b in gm.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                b.normal_()
    return gm.eval()


def _inputs(g: ug.UNetGraph, shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(1)
    xs = list(ug.example_inputs(g, size=shape[2:], batch=shape[0]).values())
    xs[0] = torch.randn(shape)
    return tuple(xs)


@pytest.fixture(params=list(GRAPHS))
def case(request):
    make, shape = GRAPHS[request.param]
    g = make()
    gm = _randomized(g.lower())
    folded = copy.deepcopy(gm)
    result = fold_upsampling(folded)
    return g, gm, folded, result, _inputs(g, shape)


def _flops(model: nn.Module, xs: tuple[torch.Tensor, ...]) -> int:
    counter = flop_counter()
    with counter, torch.no_grad():
        model(*xs)
    return counter.get_total_flops()


def test_the_folded_pair_gives_the_same_outputs_with_less_arithmetic(case):
    _, gm, folded, result, xs = case
    assert result.changes and all("phases at the coarse size" in line for line in result.changes)
    assert sum(isinstance(m, UpsampledConv) for m in folded.modules()) == len(result.changes)
    with torch.no_grad():
        assert_close(folded(*xs), gm(*xs))
        # channels-last, as optimize() runs it
        fast, report = ug.optimize(gm)
        assert report["fold_upsampling"].changes == result.changes
        assert_close(fast(*xs), gm(*xs))
    assert _flops(folded, xs) < _flops(gm, xs)


def test_the_state_dict_keeps_its_keys_and_tensors_through_dead_node_removal(case):
    _, gm, folded, _, _ = case
    before = gm.state_dict()
    remove_dead_nodes(folded)  # the upsampling module is not called any more, but read
    after = folded.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_weights_changed_in_place_are_followed(case):
    _, gm, folded, _, xs = case
    with torch.no_grad():
        folded(*xs)  # the phase kernel is made
        for p in gm.parameters():
            p.mul_(-1.5)
    folded.load_state_dict(gm.state_dict())
    with torch.no_grad():
        assert_close(folded(*xs), gm(*xs))


def test_autograd_takes_the_plain_way_and_gets_the_same_gradients(case):
    _, gm, folded, _, xs = case
    folded(*xs).square().sum().backward()
    gm(*xs).square().sum().backward()
    for (name, a), b in zip(folded.named_parameters(), gm.parameters()):
        assert a.grad is not None and b.grad is not None, name
        assert_close(a.grad, b.grad)


def test_unfold_gives_the_pair_back_under_the_graph_nodes_names(case):
    _, gm, folded, _, xs = case
    flat = plain(folded)
    assert flat is not folded and not any(isinstance(m, UpsampledConv) for m in flat.modules())
    assert any(isinstance(m, UpsampledConv) for m in folded.modules())  # untouched
    assert all(a is b for a, b in zip(flat.parameters(), folded.parameters()))
    names = {n.name for n in flat.graph.nodes}
    assert set(ug.fx_node_names(flat).values()) <= names
    assert set(ug.fx_node_names(folded).values()) <= {n.name for n in folded.graph.nodes}
    assert [n.target for n in flat.graph.nodes if n.op == "call_module"] == [
        n.target for n in gm.graph.nodes if n.op == "call_module"
    ]
    with torch.no_grad():
        assert_close(flat(*xs), gm(*xs))
    assert unfold_upsampling(flat).changes == ()


def test_copies_and_threads(case):
    _, gm, folded, _, xs = case
    twin = copy.deepcopy(folded)
    for m in twin.modules():
        if isinstance(m, UpsampledConv):
            assert m.up is twin.get_submodule(m.reads[0])  # the copy's own upsampling module
    with torch.no_grad():
        expected = gm(*xs)
        results: list[torch.Tensor] = []
        threads = [threading.Thread(target=lambda: results.append(twin(*xs))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(results) == 4
    for r in results:
        assert_close(r, expected)


def test_where_the_phases_do_not_pay_it_computes_the_plain_way():
    """At a 2×2 coarse map the extra padded row makes nearest phases cost 0.56 × 9/4 of the pair…
    more than PAYS: the module computes the pair, with the same FLOPs."""
    g = ug.unet(3, 2, widths=(8, 16), up=ug.Up(mode="nearest", conv=False))
    gm = _randomized(g.lower())
    folded = copy.deepcopy(gm)
    assert fold_upsampling(folded).changes
    small, large = _inputs(g, (1, 3, 4, 4)), _inputs(g, (1, 3, 64, 64))
    assert _flops(folded, small) == _flops(gm, small)
    assert _flops(folded, large) < _flops(gm, large)
    with torch.no_grad():
        assert_close(folded(*small), gm(*small))


def test_what_it_leaves_alone():
    # a 2D transposed convolution that halves the channels: its phases never save enough
    gm = ug.unet(3, 2, widths=(8, 16)).lower().eval()
    result = fold_upsampling(gm)
    assert not result.changes and "over 60%" in result.notes[0] and "dec0.conv0" in result.notes[0]

    # a subclass may compute something else; an upsampling another node reads must exist
    class Mine(nn.Conv2d):
        pass

    for edit in ("subclass", "second reader"):
        gm = ug.unet(3, 2, widths=(8, 16), up=ug.Up(mode="nearest", conv=False)).lower().eval()
        if edit == "subclass":
            old = gm.get_submodule("dec0.conv0")
            gm.add_submodule("dec0.conv0", Mine(old.in_channels, old.out_channels, 3, padding=1))
        else:
            up = next(n for n in gm.graph.nodes if n.target == "up0")
            with gm.graph.inserting_after(up):
                extra = gm.graph.call_function(torch.relu, (up,))
            out = next(n for n in gm.graph.nodes if n.op == "output")
            out.args = ((out.args[0], extra),)
            gm.recompile()
        result = fold_upsampling(gm)
        assert not result.changes, edit
        assert result.notes == ("no 3×3 convolution reads a 2× upsampling alone",), edit


def test_compile_keeps_the_fold_and_export_gets_the_pair():
    make, shape = GRAPHS["2d diffusion"]
    g = make()
    gm = _randomized(g.lower())
    fast = ug.optimize(gm).module
    xs = _inputs(g, shape)
    graphs: list[torch.fx.GraphModule] = []

    def recording(graph: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(graph)
        return graph.forward

    compiled = ug.compile(fast, sizes=[shape[2:]], backend=recording)
    with torch.no_grad():
        assert_close(compiled(*xs), gm(*xs))
    calls = [str(n.target) for graph in graphs for n in graph.graph.nodes if n.op == "call_function"]
    assert any("einsum" in c for c in calls)  # the phase kernel, computed in the graph
    assert not any("interpolate" in c for c in calls)  # no upsampled tensor
    exported = ug.dynamic.graph_and_module(fast)[1]
    assert not any(isinstance(m, UpsampledConv) for m in exported.modules())
    assert any(isinstance(m, nn.Upsample) for m in exported.modules())


def test_a_folded_module_called_with_the_wrong_inputs_names_its_node(case):
    folded = case[2]
    node = next(n for n in folded.graph.nodes if n.op == "call_module" and n.target in _folded_targets(folded))
    module = folded.get_submodule(str(node.target))
    x = torch.randn(1, module.weight.shape[1], *(4,) * module.dims)
    with pytest.raises(ug.LoweringError, match=rf"^{node.name}: the folded convolution takes") as e:
        module(x, *([x] * len(module.slots)))  # one input too many
    assert e.value.node == node.name
    node.args = (*node.args, node.args[0])  # a hand edit the undo cannot map back
    with pytest.raises(ug.LoweringError, match=rf"^{node.name}: calls the folded convolution with") as e:
        unfold_upsampling(folded)
    assert e.value.node == node.name


def test_inputs_the_pair_could_not_take_get_a_shape_error_naming_the_node(case):
    folded, xs = case[2], case[4]
    node = next(n for n in folded.graph.nodes if n.op == "call_module" and n.target in _folded_targets(folded))
    module = folded.get_submodule(str(node.target))
    seen: dict[str, tuple[torch.Tensor, ...]] = {}
    hook = module.register_forward_pre_hook(lambda m, args: seen.setdefault("args", args))
    with torch.no_grad():
        folded(*xs)
        hook.remove()
        x, *others = seen["args"]
        module(x, *others)  # as the graph calls it
        fine = 2 * x.shape[-1]
        bad = {"fewer channels": (x[:, :-1], *others), "unbatched": (x[0], *others)}
        for k, o in enumerate(others):
            bad[f"input {k + 2} smaller"] = (x, *others[:k], o[..., : fine - 1], *others[k + 1 :])
            bad[f"input {k + 2} another batch"] = (x, *others[:k], torch.cat([o, o]), *others[k + 1 :])
            bad[f"input {k + 2} fewer channels"] = (x, *others[:k], o[:, :-1], *others[k + 1 :])
        for what, args in bad.items():
            with pytest.raises(ug.ShapeError, match=rf"^{node.name}: ") as e:
                module(*args)
            assert e.value.node == node.name, what


def _folded_targets(gm: nn.Module) -> set[str]:
    return {name for name, m in gm.named_modules() if isinstance(m, UpsampledConv)}
