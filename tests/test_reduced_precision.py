"""optimize(dtype=...): bfloat16/float16 inference with explicit casts, on every preset and every way out."""

from dataclasses import dataclass

import pytest
import torch
from deploy_helpers import KeepsType, randomize_norms, small_diffusion
from preset_cases import PRESET_CASES, inputs_for
from torch import nn

import unetgraph as ug
from unetgraph.blocks.layers import NORM_TYPES
from unetgraph.passes import reduced_precision


def _relative_error(want, got) -> float:
    pairs = [(want[k], got[k]) for k in want] if isinstance(want, dict) else [(want, got)]
    return max((a - b).abs().max().item() / max(1.0, a.abs().max().item()) for a, b in pairs)


@pytest.mark.parametrize("case", list(PRESET_CASES))
def test_bfloat16_on_every_preset_stays_close_and_returns_float32(case):
    torch.manual_seed(0)
    make, shapes = PRESET_CASES[case]
    g = make()
    gm = randomize_norms(g.lower()).eval()
    xs = inputs_for(g, shapes)
    fast, report = ug.optimize(gm, dtype=torch.bfloat16, example_inputs=xs)
    with torch.no_grad():
        want, got = gm(*xs), fast(*xs)
    outs = got.values() if isinstance(got, dict) else [got]
    assert all(y.dtype == torch.float32 for y in outs)  # callers see the usual dtype
    assert _relative_error(want, got) < 5e-2  # bfloat16 keeps ~3 digits; a missing cast would raise
    assert report.max_abs_diff > 0  # it did change the arithmetic
    for m in fast.modules():
        own = [p for p in m.parameters(recurse=False) if p.is_floating_point()]
        expected = torch.float32 if isinstance(m, NORM_TYPES) else torch.bfloat16
        assert all(p.dtype == expected for p in own), type(m).__name__
    n = len(got) if isinstance(got, dict) else 1
    assert report["reduced_precision"].changes[-1] == f"{n} output{'s' if n > 1 else ''} → torch.float32"


def test_casts_sit_where_dtypes_meet_and_the_timestep_encoding_stays_float32():
    torch.manual_seed(0)
    g = small_diffusion()
    gm = g.lower().eval()
    x, t, y = ug.example_inputs(g, batch=2, size=8).values()
    t = torch.tensor([999.0, 3.0])  # large angles: bfloat16 frequencies would be off by radians
    fast, report = ug.optimize(gm, dtype=torch.bfloat16, example_inputs=(x, t, y))
    casts = report["reduced_precision"].changes
    assert any(c.startswith("x_guard → torch.bfloat16 before") for c in casts)
    assert any("time_embedding" in c and "→ torch.bfloat16 before" in c for c in casts)
    # the folded frequencies stay float32: only weights change dtype
    folded = [b for name, b in fast.named_buffers() if name.endswith("_folded")]
    assert folded and all(b.dtype == torch.float32 for b in folded)
    with torch.no_grad():
        assert _relative_error(gm(x, t, y), fast(x, t, y)) < 5e-2


def test_float16_runs_on_the_cpu_too():
    g = ug.unet(1, 2, widths=(8, 16))
    gm = g.lower().eval()
    x = torch.randn(2, 1, 16, 16)
    fast, report = ug.optimize(gm, dtype=torch.float16, example_inputs=[x])
    assert report.max_abs_diff < 1e-2
    assert fast.enc0.conv0.weight.dtype == torch.float16


def test_refusals_and_repeats():
    gm = ug.unet(1, 1, widths=(4, 8)).lower().eval()
    with pytest.raises(ug.LoweringError, match=r"dtype must be None, torch\.bfloat16 or torch\.float16"):
        ug.optimize(gm, dtype=torch.float64)
    with pytest.raises(ug.LoweringError, match=r"wrap the step in torch\.autocast"):
        ug.optimize(gm, dtype=torch.bfloat16, for_inference=False)
    fast, _ = ug.optimize(gm, dtype=torch.bfloat16)  # no example inputs: the graph makes some
    again = reduced_precision(fast, [torch.randn(2, 1, 8, 8)], torch.bfloat16)
    assert not again.changed and again.notes == ("already in torch.bfloat16",)
    # a tolerance too tight for bfloat16 is reported in the optimize error's words
    with pytest.raises(ug.LoweringError, match=r"optimize changed the outputs by up to .* \(> atol 1e-06"):
        ug.optimize(gm, dtype=torch.bfloat16, example_inputs=[torch.randn(2, 1, 8, 8)], atol=1e-6)


def test_bfloat16_module_exports_and_refuses_onnx(tmp_path):
    torch.manual_seed(0)
    g = ug.unet(3, 2, widths=(8, 16))
    fast, _ = ug.optimize(g.lower().eval(), dtype=torch.bfloat16)
    x = torch.randn(2, 3, 16, 24)
    with torch.no_grad():
        want = fast(x)
        loaded = ug.load_exported(ug.export(fast, tmp_path / "u.pt2", progress=False))
        assert torch.equal(loaded(x), want)  # the same casts, the same arithmetic
    with pytest.raises(ug.LoweringError, match="ONNX's Conv takes no bfloat16"):
        ug.export(fast, tmp_path / "u.onnx", progress=False)
    assert not (tmp_path / "u.onnx").exists()
    # ejecting (and running the file in a fresh process): tests/test_eject.py's bfloat16 cases


def test_norm_types_cover_every_norm_a_block_makes():
    from unetgraph.blocks.layers import NORMS, make_norm

    for kind in NORMS:
        assert isinstance(make_norm(kind, 8, 2, 4), NORM_TYPES), kind
    assert not isinstance(nn.Conv2d(1, 1, 1), NORM_TYPES)


def test_bfloat16_module_compiles_with_freezing_for_several_sizes():
    torch._dynamo.reset()
    g = ug.unet(3, 2, widths=(8, 16))
    fast, _ = ug.optimize(g.lower().eval(), dtype=torch.bfloat16)
    compiled = ug.compile(fast)
    with torch.no_grad():
        for shape in [(2, 3, 8, 12), (2, 3, 16, 20)]:
            x = torch.randn(shape)
            y = compiled(x)
            assert y.dtype == torch.float32
            assert _relative_error(fast(x), y) < 2e-2  # inductor may fuse in another order
    assert compiled.compilations == 1


def test_float16_module_round_trips_through_onnx(tmp_path):
    torch.manual_seed(0)
    g = ug.unet(3, 2, widths=(8, 16))
    fast, _ = ug.optimize(g.lower().eval(), dtype=torch.float16)
    x = torch.randn(2, 3, 16, 24)
    loaded = ug.load_exported(ug.export(fast, tmp_path / "u16.onnx", progress=False))
    with torch.no_grad():
        want = fast(x)
    got = torch.as_tensor(loaded(x))
    assert got.dtype == torch.float32 and _relative_error(want, got) < 1e-2


class _Doubled(nn.Module):
    """A weight reparametrised from a parameter: fold_constants turns it into a float32 buffer."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(channels, channels, 3, 3) * 0.1)

    def forward(self, x):
        return torch.nn.functional.conv2d(x, self.w * 2.0, padding=1)


@dataclass(frozen=True)
class DoubledConv(KeepsType):
    def build(self, inputs, output):
        return _Doubled(inputs[0].channels)


class _Spectral(nn.Module):
    """A scaled FFT round trip: torch's FFT takes no bfloat16."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x):
        return torch.fft.ifft2(torch.fft.fft2(x * self.w)).real


@dataclass(frozen=True)
class SpectralBlock(KeepsType):
    def build(self, inputs, output):
        return _Spectral(inputs[0].channels)


def test_a_functional_convolution_with_folded_float32_weights_gets_its_input_cast():
    torch.manual_seed(0)
    g = ug.unet(3, 2, widths=(8, 16), bottleneck_block=DoubledConv())
    gm = g.lower().eval()
    x = torch.randn(2, 3, 8, 8)
    fast, report = ug.optimize(gm, dtype=torch.bfloat16, example_inputs=[x])
    assert any("folded" in c for c in report["fold_constants"].changes)
    casts = report["reduced_precision"].changes
    # the conv runs in float32 with its folded weights, the next layer in bfloat16 again: the
    # decoder's first convolution, which computes the upsampling up0 too (fold_upsampling)
    assert report["fold_upsampling"].changes[0].startswith("dec0.conv0: ConvTranspose2d up0")
    assert "down1 → torch.float32 before mid" in casts and "mid → torch.bfloat16 before dec0_conv0" in casts, casts
    with torch.no_grad():
        assert _relative_error(gm(x), fast(x)) < 5e-2


def test_a_layer_that_cannot_run_in_bfloat16_is_named():
    g = ug.unet(1, 1, widths=(4, 8), bottleneck_block=SpectralBlock())
    with pytest.raises(
        ug.LoweringError, match=r"reduced_precision: mid_\w+ failed with reduced-precision weights"
    ) as e:
        ug.optimize(g.lower().eval(), dtype=torch.bfloat16)
    assert e.value.node == "mid"
