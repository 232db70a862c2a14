"""Static size buckets: ug.compile(model, sizes=...) and bucketed AOTInductor packages serve their
sizes, pad smaller valid sizes up where that is exact, and refuse in words where it is not."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from deploy_helpers import randomize_norms, small_diffusion

import unetgraph as ug
from unetgraph.dynamic import BucketedUNet, Buckets, padding_exactness
from unetgraph.passes import PackedConv


def _valid_net(widths=(4, 8, 16)):
    """A valid-convolution U-Net with cropped skips: padding its input up is exact."""
    return ug.unet(1, 2, widths=widths, block=ug.ConvBlock(padding="valid", norm="batch"), merge=ug.Merge(crop=True))


def test_padding_exactness_names_the_first_layer_that_breaks_it():
    assert padding_exactness(ug.presets.classic_unet()) == ""
    assert padding_exactness(_valid_net()) == ""
    padded = padding_exactness(ug.presets.classic_unet(padded=True))
    assert padded.startswith("enc0 (enc0_conv0): Conv2d pads its input")
    grouped = _valid_net().map_blocks(lambda b: b.with_(norm="group", groups=2) if isinstance(b, ug.ConvBlock) else b)
    assert padding_exactness(grouped) == "enc0 (enc0_norm0): GroupNorm is not known to keep positions apart"
    valid = ug.ConvBlock(padding="valid")
    bilinear = ug.unet(1, 2, widths=(4, 8), block=valid, up="bilinear", merge=ug.Merge(crop=True))
    assert padding_exactness(bilinear) == "up0 (up0_upsample): Upsample (bilinear) interpolates near the border"
    training = _valid_net().lower()  # batch norms in training mode use every position
    assert "training mode" in padding_exactness(training)


def test_bucketed_compile_pads_up_where_exact_and_counts_graphs():
    torch.manual_seed(0)
    g = _valid_net()
    gm = randomize_norms(g.lower()).eval()
    fast, _ = ug.optimize(gm)
    s = g.valid_sizes().axes[0].sizes(4)  # 44, 48, 52, 56
    model = ug.compile(fast, sizes=[s[2], (s[3], s[2])], backend="eager")
    assert isinstance(model, BucketedUNet) and model.buckets.sizes == ((s[2], s[2]), (s[3], s[2]))
    assert "other valid sizes padded up" in repr(model)
    with torch.no_grad():
        for batch, size in [(2, (s[0], s[0])), (2, (s[1], s[2])), (2, (s[2], s[2])), (1, (s[3], s[1]))]:
            x = torch.randn(batch, 1, *size)
            y = model(x)
            assert y.shape == gm(x).shape and torch.allclose(y, gm(x), atol=1e-5), size
    assert model.compilations == 2  # (2, 52×52) served three sizes; (1, 56×52) one
    assert set(model.compile_seconds) == {(2, (s[2], s[2])), (1, (s[3], s[2]))}
    with pytest.raises(ug.ShapeError, match=r"60×44 has no bucket \(52×52, 56×52\) that holds it"):
        model(torch.randn(1, 1, s[3] + 4, s[0]))
    with pytest.raises(ug.ShapeError, match="is not a multiple of 4"):
        model(torch.randn(1, 1, s[0] + 1, s[0]))


def test_bucketed_compile_refuses_padding_where_it_would_change_the_output():
    g = ug.unet(1, 2, widths=(4, 8))
    model = ug.compile(g, sizes=[16, 32], backend="eager")
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 2, 32, 32)
    with pytest.raises(ug.ShapeError) as refused:
        model(torch.randn(1, 1, 24, 24))
    assert str(refused.value) == (
        "input x of spatial size 24×24 has no bucket (16×16, 32×32), and padding it up would change the output: "
        "enc0 (enc0_conv0): Conv2d pads its input with (1, 1); add (24, 24) to sizes, or compile without sizes "
        "(one dynamic graph serves every size)"
    )
    with pytest.raises(ug.ShapeError, match=r"15×15 does not fit: input height 15 is not a multiple of 2"):
        ug.compile(g, sizes=[15])
    with pytest.raises(ug.ShapeError, match="has 3 axes; input x has 2 spatial axes"):
        Buckets.of(g, [(16, 16, 16)])
    with pytest.raises(ug.ShapeError, match="at least one spatial size"):
        Buckets.of(g, [])


def test_bucketed_inductor_compile_is_static_frozen_and_matches_eager():
    torch.manual_seed(0)
    g = ug.unet(3, 2, widths=(8, 16))
    gm = randomize_norms(g.lower()).eval()
    fast, _ = ug.optimize(gm)  # prepacked eager convolutions: they trace to plain ones
    model = ug.compile(fast, sizes=[16])
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = gm(x)
        seconds = model.prepare(batch=2)
        assert list(seconds) == [(16, 16)] and model.compilations == 1
        assert torch.allclose(model(x), want, atol=1e-4)
        # static and frozen: inductor packed the convolution weights into copies of its own (with
        # dynamic sizes it reads them at every call), so zeroing them changes eager outputs only
        for layer in fast.modules():
            if isinstance(layer, PackedConv):
                layer.weight.zero_()
        assert torch.allclose(model(x), want, atol=1e-4) and not torch.allclose(fast(x), want, atol=1e-4)
    assert model.compilations == 1


def test_buckets_compiled_from_several_threads_at_once_are_all_frozen():
    """Dynamo is not thread-safe: a bucket's GraphModule made while another thread compiled
    broke fullgraph there (its layers compiled one by one until the recompile limit). Compiles
    take turns, each with the options (inductor's config patches are per thread)."""
    torch.manual_seed(0)
    g = ug.unet(3, 2, widths=(8, 16))
    gm = randomize_norms(g.lower()).eval()
    fast, _ = ug.optimize(gm)
    xs = {(b, n): torch.randn(b, 3, n, n) for b in (1, 2) for n in (16, 32)}
    with torch.no_grad():
        want = {k: gm(x) for k, x in xs.items()}
    models = [ug.compile(fast, sizes=[16, 32]) for _ in range(2)]  # the second one failed
    for model in models:

        def infer(k, model=model):
            with torch.no_grad():  # grad mode is per thread
                return model(xs[k])

        with ThreadPoolExecutor(4) as pool:
            got = dict(zip(xs, pool.map(infer, xs)))
        assert model.compilations == 4
        for k in xs:
            assert torch.allclose(got[k], want[k], atol=1e-4), k
    with torch.no_grad():
        for layer in fast.modules():  # every bucket froze its own packed copy of the weights
            if isinstance(layer, PackedConv):
                layer.weight.zero_()
        for model in models:
            for k, x in xs.items():
                assert torch.allclose(model(x), want[k], atol=1e-4), k
    assert [m.compilations for m in models] == [4, 4]


def test_bucketed_aoti_package_pads_sizes_and_batches(tmp_path):
    torch.manual_seed(0)
    g = _valid_net(widths=(4, 8))
    gm = randomize_norms(g.lower()).eval()
    s = g.valid_sizes().axes[0].sizes(3)
    path = ug.export(gm, tmp_path / "buckets.pt2", format="aoti", sizes=[s[1]], batches=[2], progress=False)
    with pytest.raises(ug.ArtifactError, match="native=True"):
        ug.load_exported(path)  # compiled code: loaded only when asked
    loaded = ug.load_exported(path, native=True)
    assert f"buckets {s[1]}×{s[1]} for input x" in repr(loaded) and "batches 2" in repr(loaded)
    with torch.no_grad():
        for batch, size in [(2, s[1]), (1, s[0])]:  # as compiled; padded in batch and size
            x = torch.randn(batch, 1, size, size)
            assert torch.allclose(loaded(x), gm(x), atol=1e-4), (batch, size)
    with pytest.raises(ug.ShapeError, match="batch 3 is larger than every batch this package was compiled for"):
        loaded(torch.randn(3, 1, s[0], s[0]))
    with pytest.raises(ug.ShapeError, match="has no bucket"):
        loaded(torch.randn(1, 1, s[2], s[2]))
    with pytest.raises(ug.LoweringError, match="serves every valid size already"):
        ug.export(gm, tmp_path / "no.pt2", sizes=[s[1]])


def test_a_static_bucket_stays_static_after_its_input_went_through_a_dynamic_compile():
    """The dynamic compile marks a view of its input, never the caller's tensor: dynamo keeps
    marks on the tensor object, and a static bucket (or the caller's own static compile) that
    later sees a marked tensor compiles dynamic code, a quarter slower on the DDPM preset."""
    symbolic: list[bool] = []

    def recording(gm, example):
        values = [n.meta.get("example_value") for n in gm.graph.nodes if n.op == "placeholder"]
        symbolic.append(any(isinstance(d, torch.SymInt) for v in values for d in getattr(v, "shape", ())))
        return gm.forward

    g = ug.unet(3, 2, widths=(8, 16))
    gm = g.lower().eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        dynamic = ug.compile(gm, backend=recording)
        dynamic(x)
        ug.compile(gm, sizes=[32], backend=recording)(x)
        torch.compile(lambda t: t * 2, backend=recording, dynamic=False)(x)
    assert symbolic == [True, False, False]


def test_bucketed_compile_guards_inputs_like_the_lowered_module():
    """A sampler's loop passes a Python int timestep: it becomes a tensor before dynamo sees it, so
    the static graph is not specialised per value (it recompiled per step, and failed after 8)."""
    torch.manual_seed(0)
    gm = small_diffusion().lower().eval()
    model = ug.compile(gm, sizes=[8], backend="eager")
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 4])
    with torch.no_grad():
        for t in range(999, 987, -1):
            assert torch.allclose(model(x, t, y), gm(x, t, y), atol=1e-6), t
        assert model.compilations == 1
        assert torch.allclose(model(x, torch.tensor([5.0, 5.0]), y), gm(x, 5.0, y), atol=1e-6)
    bad = {
        "float64": (x.double(), 1, y),
        "4 channels": (torch.randn(2, 4, 8, 8), 1, y),
        "numpy": (x.numpy(), 1, y),
        "list": (x.tolist(), 1, y),
        "None": (None, 1, y),
        "meta device": (x.to("meta"), 1, y),
        "labels out of range": (x, 1, torch.tensor([0, 5])),
        "timesteps for another batch": (x, torch.ones(3), y),
    }
    for case, args in bad.items():
        with pytest.raises(ug.ShapeError) as lowered:
            gm(*args)
        with pytest.raises(ug.ShapeError) as bucketed:
            model(*args)
        assert str(bucketed.value) == str(lowered.value), case
    with pytest.raises(ug.ShapeError, match=r"input x is missing: the model is called as forward\(x, t, y\)"):
        model()
    with pytest.raises(ug.ShapeError, match=r"takes 3 inputs \(x, t, y\), got 4"):
        model(x, 1, y, y)
