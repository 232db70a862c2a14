"""An ejected file stands alone: imported in a fresh process it reproduces the outputs exactly."""

import pytest
import torch
from deploy_helpers import Containers, SinusoidalScale, randomize_norms, run_fresh, second_size_inputs, small_diffusion
from thread_helpers import run_together

import unetgraph as ug

CASES = {
    "classic_padded": lambda: ug.presets.classic_unet(3, 2, padded=True),
    "valid_crop_pad_auto": lambda: ug.unet(
        1, 2, widths=(8, 16, 32), block=ug.ConvBlock(padding="valid", norm="none"), merge=ug.Merge(crop=True)
    ).lower(pad="auto", pad_mode="reflect"),
    "layernorm_bilinear_add": lambda: ug.unet(
        1, 1, widths=(8, 16), block=ug.ConvBlock(norm="layer", act="gelu", dropout=0.1), up="bilinear", merge="add"
    ),
    "group_3d": lambda: ug.unet(1, 2, widths=(8, 16), dims=3, block=ug.ConvBlock(norm="group", groups=4)),
    "optimized": lambda: ug.optimize(randomize_norms(ug.unet(3, 2, widths=(8, 16, 32)).lower()))[0],
    "buffer_arithmetic": lambda: ug.unet(1, 1, widths=(4, 8), bottleneck_block=SinusoidalScale()),
    # torch containers inside a block: numbered Sequential, ModuleList, ModuleDict, ParameterList/Dict
    "containers": lambda: ug.unet(1, 1, widths=(4, 8), bottleneck_block=Containers(), encoder_block=Containers()),
    # diffusion: a timestep and class labels through embeddings and cond edges, attention
    "diffusion_class_conditional": lambda: small_diffusion(resblock=ug.ResBlock(groups=4, cond="scale_shift")),
    "diffusion_cross_attention": lambda: ug.diffusion_unet(
        1,
        widths=(8, 8),
        layers_per_block=1,
        resblock=ug.ResBlock(groups=4),
        attention=ug.LinearAttention(heads=2),
        time_embedding=ug.TimestepEmbedding(dim=8, channels=8),
        context_channels=6,
        cross_attention=ug.CrossAttention(heads=2, groups=4),
    ),
    "attention_gates_deep_supervision": lambda: ug.unet(
        1, 2, widths=(8, 16, 32), gate=ug.AttentionGate(), deep_supervision=1
    ),
    "nested": lambda: ug.presets.unet_plus_plus(deep_supervision=True),
    # optimize(dtype=...): weights in bfloat16, norms (ChannelLayerNorm, GroupNorm) in float32
    "bfloat16_layernorm": lambda: ug.optimize(CASES["layernorm_bilinear_add"]().lower().eval(), dtype=torch.bfloat16)[
        0
    ],
    "bfloat16_diffusion": lambda: ug.optimize(
        CASES["diffusion_class_conditional"]().lower().eval(), dtype=torch.bfloat16
    )[0],
}


@pytest.mark.parametrize("case", CASES)
def test_ejected_file_reproduces_outputs_in_a_fresh_process(case, tmp_path):
    model = CASES[case]()
    g, gm = ug.dynamic.graph_and_module(model)
    gm = randomize_norms(gm).eval()
    path = ug.eject(gm, tmp_path / "my_unet.py")
    text = path.read_text()
    assert "unetgraph" not in text
    assert text.count("(nn.Module):") == 1 + sum(
        f"class {c}(nn.Module)" in text for c in ("InputGuard", "PadToValid", "CropToInput", "CenterCrop")
    ) + ("class ChannelLayerNorm(nn.Module)" in text)
    compile(text, str(path), "exec")
    xs = second_size_inputs(g, batch=2)
    if ug.lowered_record(gm).pad == "auto":
        xs = (xs[0][..., 1:, :-3],)  # an invalid size: padded up and cropped back
    y, info = run_fresh(tmp_path, path, g.name, gm, xs)
    assert info["imported"] == []
    assert info["keys"] == list(gm.state_dict())
    with torch.no_grad():
        expected = gm(*xs)
    for key in expected if isinstance(expected, dict) else [None]:
        assert torch.equal(y[key] if key else y, expected[key] if key else expected), key


def test_ejected_forward_reads_like_hand_written_code(tmp_path):
    g = ug.presets.classic_unet(3, 2, padded=True)
    text = ug.eject(g, tmp_path / "unet.py", class_name="MyUNet").read_text()
    assert "class MyUNet(nn.Module):" in text
    main = text[text.index("class MyUNet") :]
    forward = main[main.index("    def forward") :]
    assert "        enc1 = self.enc1(down1)  # (B, 128, H/2, W/2)\n" in forward
    assert "        merge3 = torch.cat((enc3, up3), dim=1)  # (B, 1024, H/8, W/8)\n" in forward
    assert "        return head\n" in forward
    assert "= None" not in forward and "_tensor_constant" not in text
    init = main[main.index("    def __init__") : main.index("    def forward")]
    assert "conv0=nn.Conv2d(3, 64, 3, padding=1, bias=False)," in init
    assert "self.up3 = nn.ConvTranspose2d(1024, 512, 2, stride=2)" in init
    assert "H and W must be multiples of 16, at least 16" in text


def test_ejected_guard_refuses_with_the_checkers_words(tmp_path):
    g = ug.unet(3, 2, widths=(8, 16, 32))
    ug.eject(g, tmp_path / "small.py")
    namespace = {}
    exec((tmp_path / "small.py").read_text(), namespace)
    model = namespace["UNet"]()
    with pytest.raises(ValueError) as ejected_error:
        model(torch.randn(1, 3, 18, 16))
    with pytest.raises(ug.ShapeError) as lowered_error:
        g.lower()(torch.randn(1, 3, 18, 16))
    assert str(ejected_error.value) == str(lowered_error.value)


def test_eject_refuses_what_cannot_stand_alone(tmp_path):
    with pytest.raises(ug.LoweringError, match="class_name"):
        ug.eject(ug.unet(1, 1, widths=(4, 8)), tmp_path / "x.py", class_name="not valid")
    with pytest.raises(ug.LoweringError, match="UNetGraph or a GraphModule"):
        ug.eject(torch.nn.Conv2d(1, 1, 1), tmp_path / "x.py")
    assert not (tmp_path / "x.py").exists()


def test_ejecting_from_several_threads_while_others_lower_and_serve():
    """Ejecting reads class sources (``inspect.getsource`` parses their module); CPython 3.11's
    parser is not thread-safe ("SystemError: AST constructor recursion depth mismatch" when two
    threads parse at once), so ejects from several threads must take turns at it."""
    cases = [
        ug.unet(3, 2, widths=(8, 16, 32)),
        small_diffusion(),
        ug.unet(1, 2, widths=(8, 16), gate=ug.AttentionGate()),
    ]
    models = [g.lower().eval() for g in cases]
    sources = [ug.eject_source(m) for m in models]

    def eject(i: int) -> None:  # verify=True runs the ejected module too
        assert ug.eject_source(models[i % 3]) == sources[i % 3], "an ejected source differs"

    def lower(i: int) -> None:
        with torch.no_grad():
            ug.optimize(cases[i % 3].lower().eval())

    counts = run_together(6, {"ejected": (eject, 6), "lowered": (lower, 3)})
    assert counts["ejected"] >= 6 and counts["lowered"] >= 3


def _renamed(g: ug.UNetGraph, old: str, new: str) -> ug.UNetGraph:
    d = g.to_dict()
    d["nodes"] = {new if k == old else k: v for k, v in d["nodes"].items()}
    for edge in d["edges"]:
        edge.update({k: new for k in ("src", "dst") if edge[k] == old})
    return ug.UNetGraph.from_dict(d)


def _load_class(path, name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"ejected_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


@pytest.mark.parametrize("name", ["nn", "F", "math", "operator", "Any"])
def test_an_input_named_as_a_module_level_name_of_the_file(name, tmp_path):
    # forward's signature took the raw name while its body read the renamed one: UnboundLocalError
    g = _renamed(ug.unet(1, 2, widths=(4, 8)), "x", name)
    gm = g.lower(pad="auto").eval()
    path = ug.eject(gm, tmp_path / "m.py")  # verify=True runs it
    model = _load_class(path, "UNet")()
    model.load_state_dict(gm.state_dict())
    x = torch.randn(1, 1, 7, 9)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), gm(x))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_module_lowered_in_another_dtype_is_ejected_computing_in_it(dtype, tmp_path):
    # verify fed float32 inputs (ShapeError); the file kept norms in float32, as for optimize()'s mixed precision
    gm = ug.unet(1, 2, widths=(4, 8)).lower(dtype=dtype).eval()
    path = ug.eject(gm, tmp_path / "m.py")
    model = _load_class(path, "UNet")()
    model.load_state_dict(gm.state_dict())
    assert {p.dtype for p in model.parameters()} == {dtype}
    x = torch.randn(1, 1, 8, 8, dtype=dtype)
    with torch.no_grad():
        y = model.eval()(x)
        assert y.dtype == dtype and torch.equal(y, gm(x))


def test_a_module_that_fails_on_a_valid_input_gives_a_typed_error():
    # verify ran outside its try: a module that fails (one weight left in float64 here) raised torch's error
    gm = ug.unet(1, 2, widths=(4, 8)).lower().eval()
    conv = gm.get_submodule("enc0.conv0")
    conv.weight.data = conv.weight.data.double()
    with pytest.raises(ug.LoweringError, match="the module to eject fails on a valid input: RuntimeError"):
        ug.eject_source(gm)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_diffusion_unet_lowered_in_another_dtype_runs_and_ejects(dtype, tmp_path):
    """The timestep encoding is computed in float32 and was handed on in float32, so a diffusion
    U-Net lowered with lower(dtype=float64 or bfloat16) failed at its first Linear (mat1 and mat2
    must have the same dtype); it now hands it on in the module's dtype."""
    gm = small_diffusion().lower(dtype=dtype).eval()
    x, t, labels = torch.randn(2, 3, 16, 16, dtype=dtype), torch.tensor([3.0, 500.0]), torch.tensor([0, 1])
    with torch.no_grad():
        y = gm(x, t, labels)
    assert y.dtype == dtype and torch.isfinite(y).all()
    ug.eject(gm, tmp_path / "ddpm.py")  # verifies the file against gm, in that dtype


@pytest.mark.parametrize(
    "class_name, message",
    [
        (1, "class_name must be a string, got int 1"),
        ("class", "class_name 'class' is not a Python identifier"),
        ("None", "class_name 'None' is not a Python identifier"),
        ("", "class_name '' is not a Python identifier"),
        ("ｅnc", "class_name 'ｅnc' is not in Unicode NFKC normal form: Python reads it as 'enc'"),
        ("nn", "class_name 'nn' is a name the ejected file uses otherwise"),
        ("InputGuard", "class_name 'InputGuard' is a name the ejected file uses otherwise"),
        ("super", "class_name 'super' is a name the ejected file uses otherwise"),
    ],
)
def test_eject_refuses_a_class_name_the_file_cannot_hold(class_name, message, tmp_path):
    with pytest.raises(ug.LoweringError, match=message):
        ug.eject(ug.unet(1, 2, widths=(4, 8)), tmp_path / "m.py", class_name=class_name)
    assert not (tmp_path / "m.py").exists()


@pytest.mark.parametrize("name", ["nn", "torch", "InputGuard", "OrderedDict", "super"])
def test_a_graph_named_as_a_module_level_name_is_ejected_under_a_suffixed_class_name(name, tmp_path):
    g = ug.unet(1, 2, widths=(4, 8)).copy(name=name)
    path = ug.eject(g, tmp_path / "m.py")  # verify=True builds and runs it
    assert f"class {name}_1(nn.Module):" in path.read_text()
    assert issubclass(_load_class(path, f"{name}_1"), torch.nn.Module)
