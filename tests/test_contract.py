"""The input contract: one implementation (unetgraph/contract.py) that the lowered module, compiled
modules, loaded artifacts and ejected files all run; inputs as callers pass them; tracers."""

import importlib.util
import re
import warnings

import numpy as np
import pytest
import torch
from deploy_helpers import small_diffusion
from thread_helpers import run_together
from torch import nn
from torch.fx.experimental.optimization import fuse

import unetgraph as ug
from unetgraph import contract

X = torch.randn(2, 3, 8, 8)
T = torch.tensor([3.0, 9.0])
Y = torch.tensor([0, 2])

# what callers pass to forward(x, t, y) of small_diffusion(): accepted ones give the same output
# as the plain tensors; refused ones a ShapeError (ValueError in the ejected file) in these words
GOOD = {
    "tensors": (X, T, Y),
    "int timestep": (X, 7, Y),
    "float timestep": (X, 7.5, Y),
    "0-dim timestep": (X, torch.tensor(7.0), Y),
    "one timestep (1,)": (X, torch.tensor([7]), Y),
    "int64 timesteps": (X, torch.tensor([3, 9]), Y),
    "int label": (X, T, 1),
    "0-dim label": (X, T, torch.tensor(1)),
    "one label (1,)": (X, T, torch.tensor([2])),
}
SAME_AS = {  # inputs that must give exactly the output of their broadcast tensors
    "int timestep": (X, torch.tensor([7, 7]), Y),
    "float timestep": (X, torch.tensor([7.5, 7.5]), Y),
    "0-dim timestep": (X, torch.tensor([7.0, 7.0]), Y),
    "one timestep (1,)": (X, torch.tensor([7, 7]), Y),
    "int label": (X, T, torch.tensor([1, 1])),
    "0-dim label": (X, T, torch.tensor([1, 1])),
    "one label (1,)": (X, T, torch.tensor([2, 2])),
}
BAD = {
    "missing t": ((X,), r"input t is missing: the model is called as forward\(x, t, y\)"),
    "image as a list": (([0.0] * 3, T, Y), r"input x must be a torch\.Tensor \(N, 3, H, W\), got a list"),
    "image as a tuple": (((1, 2), T, Y), r"input x must be a torch\.Tensor \(N, 3, H, W\), got a tuple"),
    "image as numpy": (
        (X.numpy(), T, Y),
        r"got a numpy\.ndarray of shape \(2, 3, 8, 8\): pass torch\.from_numpy\(x\)",
    ),
    "image as a float": ((1.0, T, Y), r"input x must be a torch\.Tensor \(N, 3, H, W\), got a float \(1\.0\)"),
    "image channels": ((torch.randn(2, 4, 8, 8), T, Y), r"input x expects 3 channels \(N, 3, H, W\), got 4"),
    "image rank": ((torch.randn(3, 8, 8), T, Y), r"input x expects rank 4 \(N, 3, H, W\), got rank 3"),
    "image size": (
        (torch.randn(2, 3, 7, 8), T, Y),
        r"input x of spatial size 7×8 does not fit: input height 7 is not a multiple of 2",
    ),
    "image dtype": ((X.double(), T, Y), r"input x is torch\.float64 but the model computes in torch\.float32"),
    "image device": ((X.to("meta"), T, Y), r"input x is on meta but the model is on cpu"),
    "bool timestep": ((X, True, Y), r"input t must be a torch\.Tensor \(N,\) .*got a bool \(True\)"),
    "bool timesteps": ((X, torch.tensor([True, False]), Y), r"input t expects \(N,\), got torch\.bool"),
    "string timestep": ((X, "7", Y), r"input t must be a torch\.Tensor \(N,\) .*got a str \('7'\)"),
    "timesteps for another batch": (
        (X, torch.tensor([1.0, 2.0, 3.0]), Y),
        r"input t has 3 values for a batch of 2 \(x\): pass one value for the whole batch, or 2",
    ),
    "list of strings": ((X, ["a", "b"], Y), r"input t must be a torch\.Tensor \(N,\) .*got a list"),
    "complex timesteps": ((X, torch.tensor([1j, 2j]), Y), r"input t expects \(N,\), got torch\.complex64"),
    "timesteps (N, 1)": ((X, torch.ones(2, 1), Y), r"input t expects rank 1 \(N,\), got rank 2"),
    "numpy timesteps": ((X, np.array([1.0, 2.0]), Y), r"input t must be a torch\.Tensor .*numpy\.ndarray"),
    "float label": ((X, T, 1.0), r"input y must be a torch\.Tensor \(N,\) integer class labels .*got a float"),
    "float labels": ((X, T, torch.tensor([0.0, 1.0])), r"input y expects \(N,\) integer class labels, got torch\."),
    "bool label": ((X, T, False), r"input y must be a torch\.Tensor .*got a bool"),
    "complex labels": ((X, T, torch.tensor([1j, 0j])), r"input y expects \(N,\) integer class labels, got torch\.c"),
    "timestep beyond int64": ((X, 2**70, Y), r"input t is 1\.18e\+21, outside the int64 range"),
}


@pytest.fixture(scope="module")
def diffusion():
    """small_diffusion lowered, and the class of its ejected file (same weights), imported from the file."""
    torch.manual_seed(0)
    g = small_diffusion()
    gm = g.lower().eval()
    return g, gm


def import_ejected(gm, path):
    ug.eject(gm, path)
    spec = importlib.util.spec_from_file_location("ejected_contract_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ejected = getattr(module, ug.lowered_record(gm).graph.name)()
    ejected.load_state_dict(gm.state_dict())
    return ejected.eval()


def outcome(model, args, error):
    with torch.no_grad():
        try:
            return model(*args)
        except error as e:
            return e


class TestOneContract:
    def test_lowered_and_ejected_guards_accept_and_refuse_the_same_inputs_in_the_same_words(self, diffusion, tmp_path):
        _, gm = diffusion
        ejected = import_ejected(gm, tmp_path / "ddpm.py")
        assert "class InputGuard(nn.Module)" in (tmp_path / "ddpm.py").read_text()
        for case, args in GOOD.items():
            ours, theirs = outcome(gm, args, ug.ShapeError), outcome(ejected, args, ValueError)
            assert isinstance(ours, torch.Tensor) and torch.equal(ours, theirs), case
            if case in SAME_AS:
                with torch.no_grad():
                    assert torch.equal(ours, gm(*SAME_AS[case])), case
        for case, (args, words) in BAD.items():
            ours, theirs = outcome(gm, args, ug.ShapeError), outcome(ejected, args, ValueError)
            assert isinstance(ours, ug.ShapeError), case
            assert type(theirs) is ValueError, case
            assert str(ours) == str(theirs), case
            assert ours.node in ("x", "t", "y") and str(ours).startswith(f"input {ours.node} "), case
            assert re.search(words, str(ours)), (case, str(ours))

    def test_a_context_of_another_batch_is_refused_naming_it(self):
        g = ug.diffusion_unet(
            1,
            widths=(8,),
            layers_per_block=1,
            attention_levels=(0,),
            mid_attention=False,
            attention=None,
            resblock=ug.ResBlock(groups=4),
            context_channels=5,
            cross_attention=ug.CrossAttention(groups=4),
            head=ug.Head(),
        )
        gm = g.lower().eval()
        x = torch.randn(2, 1, 4, 4)
        with pytest.raises(ug.ShapeError, match=r"input context has batch 3 but x has batch 2"):
            gm(x, 5, torch.randn(3, 4, 5))
        with torch.no_grad():
            assert gm(x, 5, torch.randn(2, 4, 5)).shape == (2, 1, 4, 4)

    def test_the_checker_the_guard_and_the_size_rules_share_their_words(self):
        g = ug.unet(3, 2, widths=(8, 16, 32))
        gm = g.lower()
        for shape in [(1, 4, 32, 32), (3, 32, 32)]:
            with pytest.raises(ug.ShapeError) as static:
                g.check(shape)
            with pytest.raises(ug.ShapeError) as runtime:
                gm(torch.randn(shape))
            assert str(static.value) == str(runtime.value)
        rules = g.valid_sizes()
        r = rules.axes[0]
        for n in range(1, 40):
            why = contract.axis_problem(r.axis, n, r.minimum, r.step, r.offsets)
            assert why == r.explain(n)
            assert (why is None) == (n in r)
            assert contract.next_valid(n, r.minimum, r.step, r.offsets) == r.next(n)

    def test_contract_imports_only_torch(self):
        source = open(contract.__file__).read()
        imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
        assert imports == [
            "from __future__ import annotations",
            "from typing import Any, NoReturn",
            "import torch",
            "import torch.nn.functional as F",
            "from torch import nn",
        ]


class TestInputsAsCallersPassThem:
    def test_torch_compile_fullgraph_takes_every_form_without_a_graph_break(self, diffusion):
        _, gm = diffusion
        graphs = []

        def backend(module, example):
            graphs.append(module)
            return module.forward

        torch._dynamo.reset()
        compiled = torch.compile(gm, backend=backend, fullgraph=True)  # a break would raise
        with torch.no_grad():
            for case in ["tensors", "int timestep", "0-dim timestep", "one label (1,)"]:
                assert torch.equal(compiled(*GOOD[case]), gm(*GOOD[case])), case
        assert 1 <= len(graphs) <= 4  # one graph per form at most: nothing split
        # a refusal is a Python raise: fullgraph reports it as dynamo's own error, a plain
        # torch.compile passes the ShapeError through
        torch._dynamo.reset()
        with pytest.raises(ug.ShapeError, match="input t has 3 values for a batch of 2"):
            torch.compile(gm, backend="eager")(*BAD["timesteps for another batch"][0])

    def test_ug_compile_checks_inputs_first_and_compiles_once_for_every_form(self, diffusion):
        _, gm = diffusion
        torch._dynamo.reset()
        compiled = ug.compile(gm, backend="eager")
        with torch.no_grad():
            for case in ["tensors", "int timestep", "float timestep", "0-dim timestep", "one timestep (1,)"]:
                assert torch.equal(compiled(*GOOD[case]), gm(*GOOD[case])), case
        # numbers become tensors before dynamo sees them: one graph for float32 t, one for int64 t
        assert compiled.compilations == 2
        for case in ["bool timestep", "image as a list", "timesteps for another batch", "missing t"]:
            args, words = BAD[case]
            with pytest.raises(ug.ShapeError, match=words):
                compiled(*args)


def test_labels_outside_the_embedding_are_refused_in_every_mode(diffusion, tmp_path):
    """small_diffusion has num_classes=5: labels 0 to 4. Other integer dtypes are cast to int64."""
    _, gm = diffusion
    torch._dynamo.reset()
    compiled = ug.compile(gm, backend="eager")
    ejected = import_ejected(gm, tmp_path / "ddpm.py")
    for labels, bad in [(torch.tensor([5, 1]), 5), (torch.tensor([-1, 1]), -1), (7, 7), (torch.tensor(-3), -3)]:
        for model in (gm, compiled):
            with pytest.raises(ug.ShapeError, match=rf"^input y expects class labels 0 to 4 \(5 classes\), got {bad}$"):
                model(X, T, labels)
        with pytest.raises(ValueError, match=rf"^input y expects class labels 0 to 4 \(5 classes\), got {bad}$"):
            ejected(X, T, labels)
    # on the meta device labels have no values: the range is not checked (a fuzz seed lowered and ran
    # an edited graph there: "Tensor.item() cannot be called on meta tensors")
    meta = small_diffusion().lower(device="meta")
    assert meta(X.to("meta"), T.to("meta"), Y.to("meta")).is_meta
    with torch.no_grad():
        want = gm(X, T, Y)
        for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32):
            assert torch.equal(gm(X, T, Y.to(dtype)), want), dtype
            assert torch.equal(compiled(X, T, Y.to(dtype)), want), dtype


@pytest.mark.parametrize("mode", ["reflect", "circular", "replicate"])
def test_pad_auto_refuses_inputs_too_small_for_its_mode_in_words(mode):
    gm = ug.unet(3, 2, widths=(8, 16, 32, 64)).lower(pad="auto", pad_mode=mode).eval()  # sizes: multiples of 8
    need = {"reflect": 4, "circular": 3, "replicate": 1}[mode]
    with torch.no_grad():
        assert gm(torch.randn(1, 3, 12, need)).shape == (1, 2, 12, need)
        with pytest.raises(ug.ShapeError) as refused:
            gm(torch.randn(1, 3, 12, need - 1))
    assert (
        refused.value.node == "x"
        and str(refused.value).startswith(f"pad='auto' with mode '{mode}' cannot pad input x width {need - 1} (by ")
        and f"{mode} padding needs an input width of at least {need}" in str(refused.value)
    )


class TestTracers:
    def test_fx_symbolic_trace_keeps_the_guard_as_one_call(self):
        g = ug.unet(3, 2, widths=(4, 8, 16))
        gm = g.lower().eval()
        traced = torch.fx.symbolic_trace(gm)
        calls = [n.target for n in traced.graph.nodes if n.op == "call_module"]
        assert calls[0] == "x_guard"
        x = torch.randn(2, 3, 16, 24)
        with torch.no_grad():
            assert torch.equal(traced(x), gm(x))
        with pytest.raises(ug.ShapeError, match="input height 18 is not a multiple of 4"):
            traced(torch.randn(1, 3, 18, 16))

    def test_fx_fuse_of_the_lowered_module(self):
        gm = ug.unet(3, 2, widths=(4, 8)).lower().eval()
        with torch.no_grad():
            for m in gm.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-1, 1)
                    m.running_var.uniform_(0.5, 2)
            fused = fuse(gm)
            x = torch.randn(1, 3, 16, 16)
            assert torch.allclose(fused(x), gm(x), atol=1e-5)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
        with pytest.raises(ug.ShapeError, match="input x expects 3 channels"):
            fused(torch.randn(1, 1, 16, 16))

    def test_fx_trace_of_pad_auto_and_conditioned_models(self, diffusion):
        g = ug.unet(3, 2, widths=(4, 8, 16))
        gm = g.lower(pad="auto").eval()
        traced = torch.fx.symbolic_trace(gm)
        calls = [n.target for n in traced.graph.nodes if n.op == "call_module"]
        assert calls[:2] == ["x_guard", "x_pad"] and calls[-1] == "head_crop"
        with torch.no_grad():
            for size in [(13, 17), (16, 16)]:
                x = torch.randn(1, 3, *size)
                assert torch.equal(traced(x), gm(x))
        _, dm = diffusion
        traced = torch.fx.symbolic_trace(dm)
        with torch.no_grad():
            assert torch.equal(traced(X, 7, Y), dm(X, 7, Y))

    def test_fx_trace_of_the_ejected_module(self, tmp_path):
        gm = ug.unet(3, 2, widths=(4, 8)).lower().eval()
        ejected = import_ejected(gm, tmp_path / "unet.py")
        traced = torch.fx.symbolic_trace(ejected)
        assert next(n.target for n in traced.graph.nodes if n.op == "call_module") == "x_guard"
        x = torch.randn(1, 3, 8, 8)
        with torch.no_grad():
            assert torch.equal(traced(x), gm(x))

    def test_jit_trace_takes_a_valid_size_and_refuses_pad_auto_in_words(self):
        g = ug.unet(3, 2, widths=(4, 8))
        gm = g.lower().eval()
        x = torch.randn(1, 3, 8, 8)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(gm, x)
            other = torch.randn(2, 3, 12, 16)
            assert torch.equal(traced(other), gm(other))
            with pytest.raises(ug.LoweringError, match=r"torch\.jit\.trace cannot capture pad='auto'"):
                torch.jit.trace(g.lower(pad="auto").eval(), torch.randn(1, 3, 7, 7))


def test_lowering_in_threads_while_others_serve():
    """Lowering traces blocks; it must never patch torch for the process: servers running a lowered
    model and plain layers meanwhile see torch's own nn.Module.__call__ and __getattr__ throughout."""
    g = ug.unet(3, 2, widths=(4, 8, 16), gate=ug.AttentionGate())  # merges and gates are traced blocks
    code = g.lower().code
    served = small_diffusion().lower().eval()
    conv = nn.Conv2d(3, 4, 3)
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([3.0, 9.0]), torch.tensor([0, 2])
    with torch.no_grad():
        want = served(x, t, y), conv(x)
    call, getattr_ = nn.Module.__call__, nn.Module.__getattr__

    def lower(i: int) -> None:
        assert g.lower().code == code, "a lowering differs"

    def serve(i: int) -> None:
        assert nn.Module.__call__ is call and nn.Module.__getattr__ is getattr_, "torch patched for the process"
        with torch.no_grad():
            got = served(x, t, y), conv(x)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), "a served output differs"

    counts = run_together(8, {"lowered": (lower, 6), "served": (serve, 4)})
    assert counts["lowered"] >= 6 and counts["served"] >= 4
    assert nn.Module.__call__ is call and nn.Module.__getattr__ is getattr_


class TestPadAutoAndWeights:
    def test_pad_auto_needs_a_spatial_input(self):
        b = ug.GraphBuilder()
        b.input("t", kind="timestep")
        b.add("temb", ug.TimestepEmbedding(dim=8), "embedding", None, ["t"])
        g = b.build(["temb"])
        with pytest.raises(ug.LoweringError, match=r"pad='auto' pads the spatial input .* has no spatial input \(t"):
            g.lower(pad="auto")
        assert g.lower()(torch.tensor([1.0, 2.0])).shape == (2, 32)

    def test_check_summary_and_drawing_at_the_size_pad_auto_runs(self):
        g = ug.presets.classic_unet()  # valid convolutions: the consumed margin is padded too
        gm = g.lower(pad="auto").eval()
        shape = (1, 1, 100, 120)
        with pytest.raises(ug.ShapeError):
            g.summary(shape)
        report = g.check(shape, pad="auto")
        assert report.padded_from == {"x": shape}
        assert report.inputs["x"] == (1, 1, 284, 316)
        assert "(pad='auto' of x (1, 1, 100, 120))" in report.summary()
        # the padded input is what the lowered module's pad layer hands to the network
        with torch.no_grad():
            assert tuple(gm.x_pad(torch.randn(shape)).shape) == report.inputs["x"]
            assert gm(torch.randn(shape)).shape == (1, 2, 100, 120)
        cost = g.summary(shape, pad="auto")
        assert cost.flops == ug.summary(g, (1, 1, 284, 316)).flops
        assert "input x 1×1×284×316 (pad='auto' of x 1×1×100×120)" in cost.headline()
        dot = g.to_dot("levels", input_shape=shape, pad="auto")
        assert "1×1×100×120 (pad=&#x27;auto&#x27;: 1×1×284×316)" in dot
        with pytest.raises(ug.ShapeError, match="pad: expected None or 'auto'"):
            g.check(shape, pad="yes")

    def test_lower_weights_from_by_shape(self):
        g = ug.unet(3, 2, widths=(4, 8))
        gm = g.lower()
        g2 = g.set("dec0", dropout=0.1)  # a changed spec, the same tensors
        by_spec = g2.lower(weights_from=gm)
        by_shape = g2.lower(weights_from=gm, match="shape")
        assert ug.transfer_report(by_spec).nodes["dec0"] == "reinitialised"
        assert ug.transfer_report(by_shape).nodes["dec0"] == "copied"
        assert torch.equal(by_shape.state_dict()["dec0.conv0.weight"], gm.state_dict()["dec0.conv0.weight"])
        assert not torch.equal(by_spec.state_dict()["dec0.conv0.weight"], gm.state_dict()["dec0.conv0.weight"])
        with pytest.raises(ug.LoweringError, match="match: expected 'spec' or 'shape'"):
            g2.lower(weights_from=gm, match="name")
