"""torch.compile(fullgraph=True): no graph break, eager outputs. Kept few and small (inductor is slow here)."""

import torch
import torch._dynamo

import unetgraph as ug


def test_fullgraph_eager_backend_no_graph_break():
    gm = ug.unet(3, 2, widths=(4, 8, 16)).lower().eval()
    x = torch.randn(2, 3, 32, 32)
    explanation = torch._dynamo.explain(gm)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    with torch.no_grad():
        assert torch.equal(torch.compile(gm, fullgraph=True, backend="eager")(x), gm(x))


def test_fullgraph_pad_auto_and_valid_crop_eager_backend():
    for g in (
        ug.unet(1, 1, widths=(4, 8)),
        ug.unet(1, 1, widths=(4, 8), block=ug.ConvBlock(padding="valid"), merge=ug.Merge(crop=True)),
    ):
        torch._dynamo.reset()
        gm = g.lower(pad="auto").eval()
        x = torch.randn(1, 1, 21, 30)
        with torch.no_grad():
            y = torch.compile(gm, fullgraph=True, backend="eager")(x)
            assert torch.equal(y, gm(x)) and y.shape[2:] == (21, 30)


def test_fullgraph_inductor_matches_eager():
    torch._dynamo.reset()
    gm = ug.unet(3, 2, widths=(4, 8)).lower().eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        y = torch.compile(gm, fullgraph=True)(x)
        assert torch.allclose(y, gm(x), atol=1e-5)
