"""Dynamic shapes from the checker's rules: served ranges, export Dims, and one compile for many sizes."""

import pytest
import torch
import torch._dynamo
from torch._inductor.utils import run_and_get_code

import unetgraph as ug
from unetgraph.dynamic import ServedAxis, trace_inputs


def test_served_axes_follow_the_checker():
    # padded classic: multiples of 16; at 16 the bottleneck is 1×1, which export specialises away
    padded = ug.served_axes(ug.presets.classic_unet(padded=True))
    assert padded == (ServedAxis("H", 2, 32, 16), ServedAxis("W", 3, 32, 16))
    # the original valid U-Net: 188 + 16k, already ≥ 2 everywhere at 188
    valid = ug.served_axes(ug.presets.classic_unet())
    assert [(a.low, a.step) for a in valid] == [(188, 16), (188, 16)]
    assert 204 in valid[0] and 200 not in valid[0] and 172 not in valid[0]
    bounded = ug.served_axes(ug.unet(1, 1, widths=(4, 8)), max_size=64)
    assert bounded[0].high == 64 and 66 not in bounded[0] and bounded[0].describe() == "H = 4 + 2k up to 64"
    assert ServedAxis.from_dict(bounded[0].to_dict()) == bounded[0]


def test_export_shapes_are_step_multiples_of_a_dim():
    shapes = ug.export_shapes(ug.presets.classic_unet())
    assert set(shapes) == {"x"} and set(shapes["x"]) == {0, 2, 3}
    assert str(shapes["x"][2]) == "16*x_H + 156"  # 188 + 16(k - 2), k ≥ 2
    (x,) = trace_inputs(ug.presets.classic_unet())
    assert x.shape[0] == 2 and x.shape[2] != x.shape[3] and x.shape[2] in ug.served_axes(ug.presets.classic_unet())[0]
    static_batch = ug.export_shapes(ug.unet(1, 1, widths=(4, 8)), batch=False)
    assert set(static_batch["x"]) == {2, 3}


def test_one_export_serves_every_size_and_refuses_others_before_its_guards():
    g = ug.unet(3, 2, widths=(4, 8, 16))
    gm = g.lower().eval()
    program = torch.export.export(gm, trace_inputs(g), dynamic_shapes=ug.export_shapes(g), strict=False)
    run = program.module()
    with torch.no_grad():
        for shape in [(1, 3, 8, 8), (3, 3, 16, 40), (2, 3, 64, 12)]:
            x = torch.randn(shape)
            assert torch.allclose(run(x), gm(x), atol=1e-6)


def test_compiled_unet_compiles_once_for_many_sizes_and_refuses_invalid_ones():
    torch._dynamo.reset()
    g = ug.unet(3, 2, widths=(4, 8, 16))
    gm = g.lower().eval()
    compiled = ug.compile(gm, backend="eager")
    assert compiled.compilations == 0
    with torch.no_grad():
        for shape in [(2, 3, 32, 24), (2, 3, 16, 16), (2, 3, 48, 80)]:
            x = torch.randn(shape)
            assert torch.equal(compiled(x), gm(x))
    assert compiled.compilations == 1
    with pytest.raises(ug.ShapeError) as refused:
        compiled(torch.randn(2, 3, 18, 16))
    with pytest.raises(ug.ShapeError) as checker:
        gm(torch.randn(2, 3, 18, 16))
    assert str(checker.value).startswith(str(refused.value))  # the guard adds a pad="auto" hint
    assert "input height 18 is not a multiple of 4" in str(refused.value)
    with pytest.raises(ug.ShapeError, match="valid but outside what this artifact serves"):
        compiled(torch.randn(2, 3, 4, 8))
    assert compiled.compilations == 1


def test_compiled_unet_with_inductor_matches_eager_and_freezes_weights():
    torch._dynamo.reset()
    g = ug.unet(1, 1, widths=(4, 8))
    fast, _ = ug.optimize(g.lower())
    compiled = ug.compile(fast)  # eval mode: freezing by default
    assert compiled.options == {"freezing": True}
    with torch.no_grad():
        x = torch.randn(2, 1, 8, 12)
        y, code = run_and_get_code(compiled, x)
        assert torch.allclose(y, fast(x), atol=1e-5)
        for shape in [(2, 1, 20, 8), (2, 1, 16, 16)]:
            x = torch.randn(shape)
            assert torch.allclose(compiled(x), fast(x), atol=1e-5)
    assert compiled.compilations == 1
    # freezing took effect: the generated code calls oneDNN's convolution with the ReLU fused in,
    # which inductor does only for frozen weights (an options patch seen only by the backend would
    # not freeze: dynamo reads `freezing` while tracing)
    assert any("_convolution_pointwise" in c and "'relu'" in c for c in code)


def test_a_recompile_after_the_first_call_still_compiles_with_the_options():
    """Calls after the first run without the options' config patch (it costs about 70 µs a call);
    a recompile that starts there is refused by the backend and retried under the patch."""
    torch._dynamo.reset()
    g = ug.unet(3, 1, widths=(4, 8))
    fast, _ = ug.optimize(g.lower())
    compiled = ug.compile(fast)
    with torch.no_grad():
        x = torch.randn(2, 3, 8, 12)
        compiled(x)
        # another memory layout fails dynamo's guards: a second graph, compiled frozen as the first
        y, code = run_and_get_code(compiled, x.contiguous(memory_format=torch.channels_last))
    assert compiled.compilations == 2
    assert torch.allclose(y, fast(x), atol=1e-5)
    assert any("_convolution_pointwise" in c and "'relu'" in c for c in code)


def test_mark_dynamic_and_refusals():
    g = ug.unet(1, 1, widths=(4, 8))
    x = ug.dynamic.mark_dynamic(torch.randn(1, 1, 8, 8), g, batch=True)
    assert x._dynamo_weak_dynamic_indices == {0, 2, 3}
    with pytest.raises(ug.LoweringError, match="pad=None"):
        ug.compile(g.lower(pad="auto"))
    with pytest.raises(ug.LoweringError, match="inductor"):
        ug.compile(g, backend="eager", options={"freezing": True})
    with pytest.raises(ug.LoweringError, match="UNetGraph or a GraphModule"):
        ug.compile(torch.nn.Conv2d(1, 1, 1))
