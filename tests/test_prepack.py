"""The prepack pass: outputs equal on every preset, plain weights back for export and eject, and a
PackedConv and PackedLinear that follow their weights (in-place changes, moves, casts, autograd, copies)."""

import copy
import io

import pytest
import torch
import torch.fx as fx
from deploy_helpers import assert_close, randomize_norms
from preset_cases import PRESET_CASES, inputs_for
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import unetgraph as ug
from unetgraph.passes import PackedConv, PackedLinear, has_packed, plain, prepack, unpack
from unetgraph.passes.fold_upsampling import UpsampledConv


def _packed(m: nn.Module) -> list[PackedConv]:
    return [x for x in m.modules() if isinstance(x, PackedConv)]


def _linears(m: nn.Module) -> list[PackedLinear]:
    return [x for x in m.modules() if isinstance(x, PackedLinear)]


def _convs(m: nn.Module) -> list[nn.Module]:
    return [x for x in m.modules() if isinstance(x, nn.modules.conv._ConvNd)]


@pytest.fixture(scope="module", params=list(PRESET_CASES))
def optimized(request):
    torch.manual_seed(0)
    make, shapes = PRESET_CASES[request.param]
    g = make()
    gm = randomize_norms(g.lower()).eval()
    xs = inputs_for(g, shapes)
    fast, report = ug.optimize(gm, example_inputs=xs)
    return g, gm, fast, report, xs


def test_optimize_packs_every_2d_and_3d_convolution_of_every_preset(optimized):
    _, gm, fast, report, xs = optimized
    result = report["prepack"]
    packed = [line for line in result.changes if " packed" in line]
    merges = [line for line in result.changes if "without concatenating" in line]
    assert len(packed) + len(merges) == len(result.changes)
    # every convolution is packed, or folded with the upsampling it reads (a transposed
    # convolution stays registered, uncalled, for its state_dict keys)
    folded = [m for m in fast.modules() if isinstance(m, UpsampledConv)]
    ups = [m.up for m in folded if m.transposed_up is not None]
    linears = [line for line in packed if ": Linear " in line]
    assert len(_packed(fast)) == len(packed) - len(linears) == len(_convs(gm)) - len(folded) - len(ups)
    assert {id(m) for m in _convs(fast)} == {id(m) for m in ups}
    # every Linear is packed (merged ones included)
    assert len(_linears(fast)) == len(linears) and not any(type(m) is nn.Linear for m in fast.modules())
    assert len(merges) == sum(p.concat is not None for p in _packed(fast))
    fused = [line for line in result.changes if "fused" in line]
    assert len(fused) == sum(p.activation != "none" for p in [*_packed(fast), *_linears(fast)])
    with torch.no_grad():
        assert_close(fast(*xs), gm(*xs))


def test_export_and_eject_of_an_optimized_preset_get_plain_weights(optimized, tmp_path):
    g, _, fast, _, xs = optimized
    with torch.no_grad():
        expected = fast(*xs)
    flat = plain(fast)
    assert not has_packed(flat) and has_packed(fast)  # a copy: fast keeps its packed layers
    assert all(a is b for a, b in zip(flat.parameters(), fast.parameters()))  # sharing the weights
    with torch.no_grad():
        assert_close(flat(*xs), expected)
    assert set(ug.fx_node_names(flat).values()) <= {n.name for n in flat.graph.nodes}
    source = ug.dynamic.graph_and_module(fast)[1]
    assert not has_packed(source)
    # eject's verify=True runs the generated class, with fast's weights, against the module
    text = ug.eject(fast, tmp_path / "ejected.py").read_text()
    assert "PackedConv" not in text and "PackedLinear" not in text and "mkldnn" not in text
    path = ug.export(fast, tmp_path / "unet.pt2", progress=False)
    loaded = ug.load_exported(path)
    state = loaded.program.state_dict
    assert not any(t.is_mkldnn for t in state.values())
    assert {k for k in fast.state_dict() if k in state} == set(state)
    smallest = [axis.low for axis in ug.served_axes(g)]  # the program serves it at any batch
    served = tuple(ug.example_inputs(g, size=smallest).values())
    with torch.no_grad():
        assert_close(loaded(*served), fast(*served))


def test_unpack_restores_the_convolutions_and_activations_in_place():
    torch.manual_seed(0)
    g = ug.unet(3, 2, widths=(8, 16), block=ug.ConvBlock(act="leaky_relu", norm="batch"), up="transpose")
    gm = randomize_norms(g.lower()).eval()
    x = torch.randn(2, 3, 16, 16)
    fast, report = ug.optimize(gm)
    assert (
        "enc0.conv0: 3×3 3→8" in report["prepack"].changes[0] and "(leaky_relu) fused" in report["prepack"].changes[0]
    )
    assert "act0" not in dict(fast.enc0.named_children())  # fused away
    result = unpack(fast)
    assert result.name == "unpack" and len(result.changes) == len(_convs(gm))
    assert not has_packed(fast) and isinstance(fast.enc0.conv0, nn.Conv2d) and isinstance(fast.up0, nn.ConvTranspose2d)
    assert isinstance(fast.enc0.act0, nn.LeakyReLU)  # back under its own name
    with torch.no_grad():
        assert_close(fast(x), gm(x))
    assert "self.enc0.act0(" in fast.code
    names = ug.fx_node_names(fast)
    assert {n.name for n in fast.graph.nodes} >= set(names.values())
    fast.graph.lint()


def test_packed_conv_follows_in_place_changes_moves_casts_and_autograd():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding="same", bias=True)
    gm = fx.symbolic_trace(nn.Sequential(conv, nn.SiLU()))
    reference = copy.deepcopy(gm)
    result = prepack(gm)
    assert result.changes == ("0: 3×3 4→6 (0.00082 MB) packed, _1 (swish) fused",)
    layer = gm.get_submodule("0")
    x = torch.randn(2, 4, 9, 7).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert_close(gm(x), reference(x))
        state = {k: v * 2 for k, v in reference.state_dict().items()}
        gm.load_state_dict(state)  # copies in place: the packed weight must follow
        reference.load_state_dict(state)
        assert_close(gm(x), reference(x))
        layer.weight.mul_(-1)
        reference.get_submodule("0").weight.mul_(-1)
        assert_close(gm(x), reference(x))
    _casts_and_copies_compute_alike(gm, reference, x)
    # with autograd recording, gradients reach the weights
    y = gm(x).sum()
    y.backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def _casts_and_copies_compute_alike(gm: fx.GraphModule, reference: fx.GraphModule, x: torch.Tensor) -> None:
    """A float64 copy computes the plain way (not packable); copies and pickles (oneDNN's tensors
    do neither) pack again when first called."""
    with torch.no_grad():
        double = copy.deepcopy(gm).double()
        assert torch.allclose(double(x.double()), copy.deepcopy(reference).double()(x.double()))
    buffer = io.BytesIO()
    torch.save(gm, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(gm), torch.load(buffer, weights_only=False)):
        with torch.no_grad():
            assert_close(other(x), reference(x))


def test_packed_linear_runs_onednn_and_follows_its_weights():
    """oneDNN's inner product (AVX-512 on AMD CPUs, where MKL's GEMM takes its AVX2 path), fused
    with the activation; in-place changes, copies and casts followed; autograd and inputs it
    cannot take computed the plain way; unpack gives the Linear and activation back."""
    torch.manual_seed(0)
    gm = fx.symbolic_trace(nn.Sequential(nn.Linear(16, 24), nn.SiLU(), nn.Linear(24, 8, bias=False)))
    reference = copy.deepcopy(gm)
    result = prepack(gm)
    assert result.changes == (
        "0: Linear 16→24 (0.0015 MB) packed, _1 (swish) fused",
        "2: Linear 24→8 (0.00073 MB) packed",
    )
    first = gm.get_submodule("0")
    x = torch.randn(3, 16, 5).transpose(1, 2)  # (3, 5, 16), not contiguous
    ops = _Ops()
    with torch.no_grad(), ops:
        y = gm(x)
    assert ops.names.count("_linear_pointwise.default") == 2 and not {"addmm.default", "mm.default"} & {*ops.names}
    assert y.shape == (3, 5, 8)
    with torch.no_grad():
        assert_close(y, reference(x))
        first.weight.mul_(-1)  # in place: the packed weight must follow
        reference.get_submodule("0").weight.mul_(-1)
        assert_close(gm(x), reference(x))
        assert_close(gm(x[0, 0]), reference(x[0, 0]))  # one vector (1-D): the plain way
        assert gm(x[:0]).shape == (0, 5, 8)  # no rows: the plain way
    _casts_and_copies_compute_alike(gm, reference, x)
    ops = _Ops()
    with ops:  # while autograd records: F.linear, and gradients reach the weights
        gm(x).sum().backward()
    assert "_linear_pointwise.default" not in ops.names and first.weight.grad.abs().sum() > 0
    with pytest.raises(ug.ShapeError, match=r"^0: expected an input of shape \(\*, 16\), got \(2, 15\)"):
        gm(torch.randn(2, 15))
    assert unpack(gm).changes == ("0: plain Linear + _1_1", "2: plain Linear")  # fx keeps _1 reserved
    assert type(gm.get_submodule("0")) is nn.Linear and isinstance(gm.get_submodule("1"), nn.SiLU)
    with torch.no_grad():
        assert_close(gm(x), reference(x))


def test_prepack_leaves_alone_what_it_cannot_pack_with_notes():
    model = nn.Sequential(
        nn.Conv1d(2, 4, 3),
        nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(2, 4, 4, padding="same"),
        nn.Conv2d(2, 4, 3).double(),
    )
    graph = fx.Graph()  # each layer called once on its own input
    xs = [graph.placeholder(f"x{i}") for i in range(4)]
    graph.output(tuple(graph.call_module(str(i), (x,)) for i, x in enumerate(xs)))
    gm = fx.GraphModule(model, graph)
    result = prepack(gm)
    assert result.changes == ()
    notes = "\n".join(result.notes)
    assert "0 left alone: 1D" in notes
    assert "1 left alone: pads in 'reflect' mode" in notes
    assert "2 left alone: 'same' padding with an even kernel is asymmetric" in notes
    assert "3 left alone: torch.float64 weights" in notes
    assert "no convolutions or Linear layers" in prepack(fx.symbolic_trace(nn.Sequential(nn.ReLU()))).notes


def test_shared_convolution_and_activation_are_packed_but_not_fused():
    conv, act = nn.Conv2d(3, 3, 3, padding=1), nn.ReLU()

    class Twice(nn.Module):
        def forward(self, x):
            return act(conv(act(conv(x))))

    twice = Twice()
    twice.conv, twice.act = conv, act
    gm = fx.symbolic_trace(twice)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        want = gm(x)
        result = prepack(gm)
        assert result.changes == ("conv: 3×3 3→3 (0.00031 MB) packed",)  # one module, called twice
        assert [n.op for n in gm.graph.nodes].count("call_module") == 4 and isinstance(gm.conv, PackedConv)
        assert_close(gm(x), want)


def test_flop_counter_counts_packed_convolutions_like_plain_ones():
    g = ug.unet(3, 2, widths=(8, 16), up="transpose", dims=3)
    gm = g.lower().eval()
    fast, _ = ug.optimize(gm)
    x = torch.randn(1, 3, 8, 8, 8)
    counts = []
    for model in (gm, fast):
        counter = ug.cost.flop_counter()
        with counter, torch.no_grad():
            model(x)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0


def test_torch_compile_of_a_packed_module_traces_plain_convolutions():
    torch.manual_seed(0)
    gm = ug.unet(3, 2, widths=(8, 16)).lower().eval()
    fast, _ = ug.optimize(gm)
    graphs = []

    def backend(graph_module, example):
        graphs.append(graph_module)
        return graph_module.forward

    compiled = torch.compile(fast, backend=backend, fullgraph=True)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert_close(compiled(x), gm(x))
    code = graphs[0].code
    assert "conv2d" in code and "mkldnn" not in code


def test_compile_traces_packed_linears_as_f_linear_and_inductor_matches():
    """Under torch.compile a PackedLinear is F.linear (+ activation): inductor packs it itself."""
    torch.manual_seed(0)
    g = ug.diffusion_unet(
        3, widths=(16, 32), layers_per_block=1, resblock=ug.ResBlock(groups=8), attention=ug.SelfAttention(groups=8)
    )
    gm = randomize_norms(g.lower()).eval()
    fast, _ = ug.optimize(gm)
    linears = _linears(fast)
    assert linears and any(p.activation == "swish" for p in linears)  # the time MLP's SiLU, fused
    xs = tuple(ug.example_inputs(g, size=(16, 16), batch=2).values())
    traced: list[fx.GraphModule] = []

    def recording(graph: fx.GraphModule, example: list) -> object:
        traced.append(graph)
        return graph.forward

    with torch.no_grad():
        assert_close(ug.compile(fast, backend=recording)(*xs), gm(*xs))  # dynamic sizes
        calls = [getattr(n.target, "__name__", str(n.target)) for n in traced[0].graph.nodes]
        assert "mkldnn" not in str(calls)
        assert calls.count("linear") == sum(isinstance(_module(fast, n), PackedLinear) for n in fast.graph.nodes)
        assert_close(ug.compile(fast, sizes=[(16, 16)])(*xs), gm(*xs))  # inductor, static and frozen


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(str(node.target)) if node.op == "call_module" else None


def test_onnx_export_of_a_packed_module_runs_plain_convolutions_in_onnxruntime(tmp_path):
    import onnx

    torch.manual_seed(0)
    gm = randomize_norms(ug.unet(3, 2, widths=(4, 8), block=ug.ConvBlock(act="silu")).lower()).eval()
    fast, _ = ug.optimize(gm)
    assert has_packed(fast)
    path = ug.export(fast, tmp_path / "unet.onnx", progress=False)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Conv" in ops and not any("mkldnn" in op.lower() for op in ops)
    loaded = ug.load_exported(path)
    x = torch.randn(2, 3, 12, 8)
    with torch.no_grad():
        assert_close(loaded(x), fast(x))


def test_packed_conv_refuses_what_it_cannot_pack():
    with pytest.raises(ug.LoweringError, match="cannot pack this Conv2d: pads in 'circular' mode"):
        PackedConv(nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular"))


def test_packed_layers_refuse_inputs_they_cannot_take_naming_the_layer():
    """Wrong channels or rank, or merged inputs of different sizes, get a ShapeError that names
    the layer (oneDNN's own messages would not); an unbatched input is convolved as
    ``nn.Conv2d`` convolves it."""
    torch.manual_seed(0)
    fast, _ = ug.optimize(ug.unet(3, 2, widths=(8, 16)).lower())
    conv, merged = fast.get_submodule("enc0.conv0"), fast.get_submodule("dec0.conv0")
    assert isinstance(conv, PackedConv) and merged.concat is not None
    expected = {
        (conv, (torch.randn(1, 5, 8, 8),)): r"^enc0\.conv0: expected an input of shape \(N, 3, H, W\) or \(3, H, W\), "
        r"got \(1, 5, 8, 8\)",
        (conv, (torch.randn(3, 8),)): r"^enc0\.conv0: .* got \(3, 8\)",
        (merged, (torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4))): r"^dec0\.conv0: expected an input of shape "
        r"\(1, 8, 8, 8\) but for the channels, as the first input, got \(1, 8, 4, 4\)",
    }
    with torch.no_grad():
        for (layer, xs), message in expected.items():
            with pytest.raises(ug.ShapeError, match=message) as caught:
                layer(*xs)
            assert caught.value.node == layer.name
        x = torch.randn(3, 8, 8)
        plain_conv, act = conv.to_plain()
        assert_close(conv(x), act(plain_conv(x)))


def test_bfloat16_models_are_packed_where_onednn_has_bfloat16_kernels():
    torch.manual_seed(0)
    gm = randomize_norms(ug.unet(3, 2, widths=(8, 16)).lower()).eval()
    x = torch.randn(2, 3, 16, 16)
    low, report = ug.optimize(gm, dtype=torch.bfloat16, example_inputs=[x])  # checks outputs at 5e-2
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():  # AVX512-BF16 or AMX
        assert len(_packed(low)) == len(_convs(gm)) and all(p.weight.dtype == torch.bfloat16 for p in _packed(low))
    else:
        assert not _packed(low) and "bfloat16 weights" in report["prepack"].notes[0]
    with torch.no_grad():
        assert torch.allclose(low(x), plain(low)(x), atol=1e-2)


class _Ops(TorchDispatchMode):
    """The ops a call dispatches, by name (what runs, not how torch counts it)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket.__name__) + "." + func._overloadname)
        return func(*args, **(kwargs or {}))


def test_a_large_concatenation_is_read_without_being_made(tmp_path):
    """A packed convolution that alone reads a merge takes the merged tensors; above SPLIT_BYTES it
    convolves them one by one (oneDNN's sum post-op) instead of concatenating; plain copies,
    eject and export get the concatenation back under its name."""
    torch.manual_seed(0)
    g = ug.unet(3, 2, widths=(8, 16), block=ug.ConvBlock(norm="batch"), up="transpose")
    gm = randomize_norms(g.lower()).eval()
    fast, report = ug.optimize(gm)
    assert "dec0.conv0: reads merge0's 2 inputs without concatenating them (above 32 MiB)" in report["prepack"].changes
    assert "torch.cat" not in fast.code and "self.dec0.conv0(enc0_conv1, up0)" in fast.code
    big = torch.randn(4, 3, 384, 384)  # merge0: 4 × 16 × 384² float32 = 36 MiB
    small = torch.randn(2, 3, 32, 32)
    for x, split in ((big, True), (small, False)):
        ops = _Ops()
        with torch.no_grad(), ops:
            out = fast(x)
        with torch.no_grad():
            assert_close(out, gm(x))
        assert ("_convolution_pointwise.binary" in ops.names) is split
        assert ("cat.default" in ops.names) is not split
    ops = _Ops()
    with ops:  # while autograd records, the plain convolution of the concatenation runs
        fast(small).sum().backward()
    assert "cat.default" in ops.names and "_convolution_pointwise.binary" not in ops.names
    flat = plain(fast)
    assert "merge0 = torch.cat((enc0" in flat.code and ug.fx_node_names(flat)["merge0"] == "merge0"
    assert "torch.cat" in ug.eject(fast, tmp_path / "ejected.py").read_text()
    with torch.no_grad():
        assert_close(flat(small), gm(small))
