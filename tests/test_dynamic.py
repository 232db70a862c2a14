"""Dynamic shapes from the checker's rules: served ranges, export Dims, and one compile for many sizes."""

import pytest
import torch
import torch._dynamo
from deploy_helpers import small_diffusion
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
        # another batch fails dynamo's guards (batch is static): a second graph, compiled frozen as the first
        x = torch.randn(3, 3, 8, 12)
        y, code = run_and_get_code(compiled, x)
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


def _layouts(b: torch.Tensor) -> dict[str, torch.Tensor]:
    """``b``'s values in ten memory layouts (each a recompile if handed to dynamo as is)."""
    return {
        "contiguous": b,
        "channels_last": b.to(memory_format=torch.channels_last),
        "H/W transposed": b.transpose(2, 3).contiguous().transpose(2, 3),
        "batch expanded": b[:1].expand(*b.shape),
        "every other column": torch.cat([b, b], 3)[..., ::2],
        "every other row": torch.cat([b, b], 2)[:, :, ::2],
        "C/N swapped": b.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3),
        "row expanded": b[:, :, :1].expand(*b.shape),
        "channel expanded": b[:, :1].expand(*b.shape),
        "every other sample": torch.cat([b, b], 0)[::2],
    }


def test_every_memory_layout_runs_on_one_compilation():
    """Inputs reach the compiled code in one layout: dynamo's recompile limit (8) is never hit."""
    torch.manual_seed(0)
    gm = ug.unet(3, 2, widths=(8, 16, 32)).lower().eval()
    layouts = _layouts(torch.randn(2, 3, 16, 16))
    tiles = [torch.randn(2, 3, 16, w)[..., :16] for w in range(20, 64, 4)]  # 11 strides of one size
    with torch.no_grad():
        for model, inputs in [
            (ug.compile(gm, backend="eager"), list(layouts.values())),
            (ug.compile(gm, sizes=[16], backend="eager"), tiles),
            (ug.compile(gm, backend="eager"), tiles),  # a fresh compile of the same module: its own count
        ]:
            for x in inputs:
                assert torch.allclose(model(x), gm(x), atol=1e-5)
            assert model.compilations == 1


def test_a_channels_last_model_takes_channels_last_inputs_without_a_copy():
    torch.manual_seed(0)
    fast, _ = ug.optimize(ug.unet(3, 2, widths=(8, 16)).lower().eval())  # converts x to channels_last
    model = ug.compile(fast, backend="eager")
    x = torch.randn(2, 3, 16, 16).to(memory_format=torch.channels_last)
    (handed,) = model._inputs((x,), {})
    assert handed.data_ptr() == x.data_ptr() and handed is not x  # an alias: the caller's tensor stays unmarked
    with torch.no_grad():
        for y in _layouts(x.contiguous()).values():
            assert torch.allclose(model(y), fast(y), atol=1e-5)
    assert model.compilations == 1


def test_compiled_modules_take_inputs_by_name():
    torch.manual_seed(0)
    gm = small_diffusion().lower().eval()
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([3.0, 9.0]), torch.tensor([0, 2])
    with torch.no_grad():
        want = gm(x, t, y)
        for model in (ug.compile(gm, backend="eager"), ug.compile(gm, sizes=[8], backend="eager")):
            assert torch.equal(model(x, t=t, y=y), want) and torch.equal(model(y=y, x=x, t=t), want)
            with pytest.raises(ug.ShapeError, match=r"takes inputs x, t, y, got an unknown input 'label'"):
                model(x, t, label=y)
            with pytest.raises(ug.ShapeError, match="input t given twice, by position and by name"):
                model(x, t, t=t, y=y)
            with pytest.raises(ug.ShapeError, match=r"input y is missing: the model is called as forward\(x, t, y\)"):
                model(x=x, t=t)
            with pytest.raises(ug.ShapeError, match=r"takes 3 inputs \(x, t, y\), got 4"):
                model(x, t, y, y)
