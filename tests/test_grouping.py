"""Activation checkpointing and node modules (unetgraph/grouping.py): the same gradients, state_dict
keys, running statistics and compiled graph as the flat module; less saved memory; hooks that run."""

import copy

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
from deploy_helpers import small_diffusion
from torch import nn

import unetgraph as ug


def gn_unet(**changes):
    args = dict(widths=(8, 16, 32), block=ug.ConvBlock(norm="group", groups=4))
    return ug.unet(1, 2, **{**args, **changes})


def grads(module, *inputs, seed=0):
    module.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = module(*inputs)
    out.square().mean().backward()
    return {k.removeprefix("_orig_mod."): p.grad.clone() for k, p in module.named_parameters()}


def diffusion_inputs(g, batch=2):
    return tuple(ug.example_inputs(g, batch=batch, size=(16, 16)).values())


@pytest.mark.parametrize("policy", ["full", "selective"])
@pytest.mark.parametrize("which", ["segmentation", "diffusion"])
def test_checkpointed_gradients_equal_the_flat_module(which, policy):
    g = gn_unet() if which == "segmentation" else small_diffusion()
    inputs = (torch.randn(2, 1, 30, 30),) if which == "segmentation" else diffusion_inputs(g)
    flat = g.lower(pad="auto" if which == "segmentation" else None)
    ckpt = ug.group_nodes(flat, checkpoint="all", policy=policy)
    assert ug.lowered_record(ckpt).checkpoint and ug.lowered_record(ckpt).checkpoint_policy == policy
    want, got = grads(flat, *inputs), grads(ckpt, *inputs)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k


GRAPHS = {
    "attention_gates_deep_supervision": lambda: ug.unet(
        1,
        2,
        widths=(8, 16, 32),
        gate=ug.AttentionGate(),
        deep_supervision=1,
        block=ug.ConvBlock(norm="group", groups=4),
    ),
    "nested_deep_supervision": lambda: ug.nested_unet(1, 2, widths=(4, 8, 16), deep_supervision=True),
    "valid_convolutions_3d": lambda: ug.unet(
        1,
        2,
        widths=(4, 8),
        dims=3,
        block=ug.ConvBlock(padding="valid", norm="group", groups=2),
        merge=ug.Merge(crop=True),
    ),
    "tapped": lambda: gn_unet().tap("enc1"),
    "cross_attention": lambda: small_diffusion(
        num_classes=None, context_channels=6, cross_attention=ug.CrossAttention(heads=2, groups=4)
    ),
}


@pytest.mark.parametrize("case", GRAPHS)
def test_every_topology_groups_and_checkpoints_with_equal_outputs_and_gradients(case):
    g = GRAPHS[case]()
    flat = g.lower()
    size = [r.sizes(2)[1] for r in g.valid_sizes().axes]
    inputs = tuple(ug.example_inputs(g, batch=2, size=size).values())
    ckpt = ug.group_nodes(copy.deepcopy(flat), checkpoint="all")  # its own tensors: gradients apart
    assert ug.lowered_record(ckpt).checkpoint
    want, got = flat(*inputs), ckpt(*inputs)
    outs = (want, got) if isinstance(want, dict) else ({"y": want}, {"y": got})
    assert outs[0].keys() == outs[1].keys()
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])
    total = [sum(v.square().mean() for v in o.values()) for o in outs]
    total[0].backward()
    total[1].backward()
    for (k, a), (_, b) in zip(flat.named_parameters(), ckpt.named_parameters()):
        assert a is not b and torch.equal(a.grad, b.grad), k


def test_grouping_keeps_state_dict_keys_and_shares_tensors():
    flat = small_diffusion().lower()
    ckpt = ug.group_nodes(flat, checkpoint="all")
    assert list(ckpt.state_dict()) == list(flat.state_dict())
    for (k, a), (_, b) in zip(flat.state_dict().items(), ckpt.state_dict().items()):
        assert a.data_ptr() == b.data_ptr(), k
    assert ckpt.get_submodule("enc0_0.conv1") is flat.get_submodule("enc0_0.conv1")
    back = ug.ungroup(ckpt)
    assert back.code == flat.code and list(back.state_dict()) == list(flat.state_dict())
    assert not ug.lowered_record(back).grouped and ug.ungroup(flat) is flat


def test_lower_checkpoint_option_and_what_all_means():
    g = gn_unet()
    gm = g.lower(checkpoint="all")
    assert ug.lowered_record(gm).checkpoint == ("enc0", "enc1", "mid", "dec1", "dec0")
    assert "checkpointed_call(enc0_module, x_guard)" in gm.code
    # feeders that only a checkpointed block reads run in its checkpoint: the pooling before enc1,
    # the up-sampling and merge before dec0 (whose inputs are dec1's output and the skip)
    assert "checkpointed_chain((down1_module, enc1_module), ((0,), (1,)), enc0)" in gm.code
    assert "((up0_module, merge0_module, dec0_module), ((0,), (1, 2), (3,)), dec1, enc0)" in gm.code
    assert "torch.cat" not in gm.code  # merges run as node modules
    only_dec0 = g.lower(checkpoint="dec0")
    assert "checkpointed_chain((up0_module, merge0_module, dec0_module)" in only_dec0.code
    assert "down1 = self.down1(enc0)" in only_dec0.code and "checkpointed_call" not in only_dec0.code
    # a feeder chosen on its own is its own checkpoint (taking in its own feeder), not part of its reader's
    own = g.lower(checkpoint=["merge0", "dec0"])
    assert "checkpointed_chain((up0_module, merge0_module), ((0,), (1, 2)), dec1, enc0)" in own.code
    assert "checkpointed_call(dec0_module, merge0)" in own.code
    assert ug.checkpoint_nodes(g, "decoder") == ("dec1", "dec0")
    assert ug.checkpoint_nodes(g, ug.Role.ENCODER) == ("enc0", "enc1")
    assert ug.checkpoint_nodes(g, [1, "head"]) == ("enc1", "dec1", "head")
    assert ug.checkpoint_nodes(g, None) == () and ug.checkpoint_nodes(g, []) == ()
    src = g.lower()
    moved = g.lower(checkpoint=["mid"], weights_from=src)
    assert ug.lowered_record(moved).checkpoint == ("mid",) and ug.transfer_report(moved).copied
    assert all(torch.equal(a, b) for a, b in zip(moved.state_dict().values(), src.state_dict().values()))


@pytest.mark.parametrize(
    ("selection", "words"),
    [
        ("encc1", "did you mean 'enc1'"),
        (9, "level 9 is not in"),
        ("x", "x is an input"),
        ("input", "inputs have no layers"),
        (True, "got True"),
        ([1.5], "neither 'all'"),
    ],
)
def test_bad_checkpoint_selections_are_typed_errors(selection, words):
    with pytest.raises(ug.LoweringError, match=words):
        gn_unet().lower(checkpoint=selection)


def test_bad_policy_is_a_typed_error():
    with pytest.raises(ug.LoweringError, match="policy"):
        ug.group_nodes(gn_unet().lower(), checkpoint="all", policy="some")


def test_checkpointing_saves_less_for_the_backward_pass():
    """What autograd keeps between forward and backward (the peak-memory driver), measured by its hooks."""
    g = ug.unet(1, 2, widths=(8, 16, 32), block=ug.ConvBlock(norm="batch"))
    x = torch.randn(2, 1, 64, 64)

    def saved_bytes(module):
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x).sum()
        return total[0]

    flat, ckpt = g.lower(), g.lower(checkpoint="all")
    ckpt.load_state_dict(flat.state_dict())
    full = saved_bytes(flat)
    assert saved_bytes(ckpt) <= 0.6 * full
    selective = ug.group_nodes(flat, checkpoint="all", policy="selective")
    assert saved_bytes(ckpt) < saved_bytes(selective) < full


def test_checkpoint_all_keeps_neither_concatenations_nor_pooling_indices():
    """With feeders in the checkpoints, what a level keeps is its skip and the deeper level's
    output: no merge's concatenation (2C channels) and no max-pool indices (int64)."""
    g = ug.unet(1, 2, widths=(8, 16, 32), block=ug.ConvBlock(norm="batch"))
    x = torch.randn(2, 1, 32, 32)
    kept = []

    def pack(t):
        kept.append((tuple(t.shape), t.dtype))
        return t

    for gm in (g.lower(), g.lower(checkpoint="all")):
        kept.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            gm(x)
        shapes = {shape for shape, _ in kept}
        concatenated = {(2, 16, 32, 32), (2, 32, 16, 16)} & shapes
        indices = [shape for shape, dtype in kept if dtype == torch.int64]
        if ug.lowered_record(gm).grouped:
            assert not concatenated and not indices
        else:  # the flat module keeps both: the test would see them
            assert len(concatenated) == 2 and len(indices) == 2


def test_batchnorm_statistics_and_dropout_follow_one_step_as_without_checkpointing():
    g = ug.unet(1, 2, widths=(8, 16), block=ug.ConvBlock(norm="batch", dropout=0.3))
    x = torch.randn(4, 1, 32, 32)
    for policy in ("full", "selective"):
        flat = g.lower()
        ckpt = ug.group_nodes(copy.deepcopy(flat), checkpoint="all", policy=policy)
        want, got = grads(flat, x, seed=3), grads(ckpt, x, seed=3)
        for k in want:
            assert torch.equal(want[k], got[k]), k
        for k, v in flat.state_dict().items():  # running mean, var and num_batches_tracked: updated once
            assert torch.equal(v, ckpt.state_dict()[k]), k
        assert ckpt.state_dict()["enc0.norm0.num_batches_tracked"].item() == 1


def test_without_gradients_a_checkpointed_module_is_a_plain_call():
    g = small_diffusion()
    flat = g.lower().eval()
    ckpt = ug.group_nodes(flat, checkpoint="all")
    inputs = diffusion_inputs(g)
    with torch.no_grad():
        assert torch.equal(ckpt(*inputs), flat(*inputs))
    with torch.inference_mode():
        assert torch.equal(ckpt(*inputs), flat(*inputs))


def test_node_modules_run_their_hooks_once_per_call():
    """FSDP2's fully_shard works through forward hooks; the flat module never calls its node containers."""
    g = small_diffusion()
    flat = g.lower()
    calls: dict[str, int] = {}

    def hook(name):
        return lambda module, args: calls.__setitem__(name, calls.get(name, 0) + 1)

    inputs = diffusion_inputs(g)
    flat.get_submodule("enc0_0").register_forward_pre_hook(hook("flat"))
    flat(*inputs)
    assert "flat" not in calls
    grouped = ug.group_nodes(flat, checkpoint=["enc0_0"])
    modules = ug.node_modules(grouped)
    assert {"enc0_0", "time_embedding", "down1", "head"} <= modules.keys() and "x" not in modules
    for name, m in modules.items():
        m.register_forward_pre_hook(hook(name))
    grouped(*inputs).sum().backward()
    assert calls == {name: 2 if name == "enc0_0" else 1 for name in modules}  # recomputed once in backward
    with pytest.raises(ug.LoweringError, match="group it first"):
        ug.node_modules(flat)


def test_compiled_checkpointed_module_is_one_graph_with_the_same_gradients():
    g = small_diffusion()
    flat = g.lower()
    ckpt = ug.group_nodes(flat, checkpoint="all")
    inputs = diffusion_inputs(g)
    want = grads(flat, *inputs)
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    got = grads(torch.compile(ckpt, fullgraph=True, backend=counter), *inputs)
    assert counter.frame_count == 1
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_export_eject_and_optimize_see_the_flat_module(tmp_path):
    g = gn_unet()
    flat = g.lower().eval()
    ckpt = ug.group_nodes(flat, checkpoint="all", policy="selective")
    assert ug.eject_source(ckpt) == ug.eject_source(flat)
    x = torch.randn(2, 1, 32, 32)
    loaded = ug.load_exported(ug.export(ckpt, tmp_path / "ckpt.pt2", progress=False))
    onnx = ug.load_exported(ug.export(ckpt, tmp_path / "ckpt.onnx", progress=False))
    with torch.no_grad():
        assert torch.allclose(loaded(x), flat(x), atol=1e-5)
        assert torch.allclose(torch.as_tensor(onnx(x)), flat(x), atol=1e-4)
    fast, report = ug.optimize(ckpt, example_inputs=[x])
    assert report.max_abs_diff < 1e-4 and not ug.lowered_record(fast).grouped
    with pytest.raises(ug.LoweringError, match="inplace"):
        ug.optimize(ckpt, inplace=True)


def test_a_node_whose_inner_op_feeds_another_node_is_refused_with_the_node():
    bad = gn_unet().lower()
    nodes = {n.name: n for n in bad.graph.nodes}
    with bad.graph.inserting_before(nodes["head"]):
        extra = bad.graph.call_function(torch.mean, (nodes["enc1_conv0"],))  # head's op reads inside enc1
    extra.meta["custom"] = dict(nodes["head"].meta["custom"])
    bad.recompile()
    with pytest.raises(ug.LoweringError, match="enc1_conv0 is read by mean") as err:
        ug.group_nodes(bad)
    assert err.value.node == "enc1"


def test_sync_batchnorm_keeps_the_lowered_module_valid():
    g = ug.unet(1, 2, widths=(8, 16), block=ug.ConvBlock(norm="batch"))
    x = torch.randn(4, 1, 32, 32)
    plain = g.lower()
    for make in (lambda m: m, lambda m: ug.group_nodes(m, checkpoint="all")):
        synced = ug.sync_batchnorm(make(copy.deepcopy(plain)))
        assert isinstance(synced.get_submodule("enc0.norm0"), nn.SyncBatchNorm)
        assert list(synced.state_dict()) == list(plain.state_dict())
        assert ug.lowered_record(synced).graph == g
        want, got = grads(plain, x), grads(synced, x)  # one process: SyncBatchNorm normalizes like BatchNorm
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)
    # compiled and checkpointed: one graph, and the running statistics move once per step, as in eager
    eager = copy.deepcopy(plain)
    synced = ug.sync_batchnorm(ug.group_nodes(copy.deepcopy(plain), checkpoint="all"))
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    want, got = grads(eager, x), grads(torch.compile(synced, fullgraph=True, backend=counter), x)
    assert counter.frame_count == 1
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)
    for k, v in eager.state_dict().items():
        torch.testing.assert_close(synced.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    with pytest.raises(ug.LoweringError, match=r"not made by unetgraph\.lower"):
        ug.sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)))


def test_shard_refuses_an_unknown_unit():
    with pytest.raises(ug.LoweringError, match="per: expected"):
        ug.shard(gn_unet().lower(), per="block")
