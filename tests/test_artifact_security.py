"""Loading an artifact never runs code from it (issue 13).

Each hostile archive is built from a real export of a tiny graph. Where it is safe to show, the
test first proves that plain ``torch.export.load`` does run the planted code (it creates a marker
file), then that ``ug.load_exported`` refuses the same file with an :class:`ug.ArtifactError`
naming the file and the entry, and that the marker was not created.
"""

import contextlib
import io
import json
import pickle
import struct
import sys
import warnings
import zipfile
from pathlib import Path

import onnx
import pytest
import torch

import unetgraph as ug
from unetgraph import artifact

pytestmark = pytest.mark.filterwarnings("ignore")  # torch warns about the doctored files it reads

MODEL = "archive/models/model.json"
WEIGHTS = "archive/data/weights/model_weights_config.json"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One tiny export, its bytes and the module it came from."""
    torch.manual_seed(0)
    gm = ug.unet(3, 2, widths=(4, 8)).lower().eval()
    path = ug.export(gm, tmp_path_factory.mktemp("export") / "unet.pt2", progress=False)
    return gm, path.read_bytes()


class _Touch:
    """A pickle that creates a file when unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def entries(blob: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def write_zip(path: Path, items) -> Path:
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as z:
        warnings.simplefilter("ignore")  # "Duplicate name": the point of some tests
        for name, data in items:
            z.writestr(name, data)
    return path


def with_model(blob: bytes, change) -> list[tuple[str, bytes]]:
    """The archive's entries with models/model.json changed by ``change(program_dict)``."""
    out = []
    for name, data in entries(blob):
        if name == MODEL:
            program = json.loads(data)
            change(program)
            data = json.dumps(program).encode()
        out.append((name, data))
    return out


def runs_code_in_torch(path: Path, marker: Path) -> bool:
    """Whether plain torch.export.load (then building and calling the module) creates ``marker``."""
    marker.unlink(missing_ok=True)
    with contextlib.suppress(Exception):
        program = torch.export.load(str(path))
        program.module()(torch.randn(2, 3, 8, 8))
    ran = marker.exists()
    marker.unlink(missing_ok=True)
    return ran


def refused(path: Path, marker: Path, match: str) -> ug.ArtifactError:
    with pytest.raises(ug.ArtifactError, match=match) as caught:
        ug.load_exported(path)
    assert not marker.exists()
    assert str(path) in str(caught.value) and caught.value.path == str(path)
    return caught.value


def test_a_repeated_entry_is_refused(exported, tmp_path):
    """Route 1: torch reads the first copy of a repeated entry (a config asking for a pickled weight),
    a check reading the last copy sees the honest one. Also when the copies differ only in case:
    torch's zip reader finds names case-insensitively."""
    _, blob = exported
    marker = tmp_path / "ran"
    items = entries(blob)
    config = json.loads(dict(items)[WEIGHTS])
    first = next(iter(config["config"]))
    config["config"][first].update(use_pickle=True, path_name="weight_99")
    evil = [("archive/data/weights/weight_99", pickle.dumps(_Touch(marker)))]
    for name in (WEIGHTS, WEIGHTS.replace("model_weights", "MODEL_weights")):
        path = write_zip(tmp_path / "dup.pt2", [(name, json.dumps(config).encode()), *evil, *items])
        assert runs_code_in_torch(path, marker)
        error = refused(path, marker, "repeat")
        assert "model_weights_config.json" in str(error).lower()


def test_code_in_a_symbolic_size_is_refused(exported, tmp_path):
    """Route 2: torch gives every expr_str to sympy.sympify, which evaluates Python."""
    _, blob = exported
    marker = tmp_path / "ran"
    symbol = "Symbol('s77', positive=True, integer=True)"

    def plant(program):
        text = json.dumps(program)
        assert json.dumps(symbol) in text
        program.clear()
        code = f"__import__('pathlib').Path({str(marker)!r}).touch() or {symbol}"
        program.update(json.loads(text.replace(json.dumps(symbol), json.dumps(code), 1)))

    path = write_zip(tmp_path / "expr.pt2", with_model(blob, plant))
    assert runs_code_in_torch(path, marker)
    error = refused(path, marker, r"models/model\.json: expr_str .* is not a symbolic size")
    assert error.entry == "models/model.json"


def test_code_in_a_guard_is_refused(exported, tmp_path):
    """Route 3: torch writes guards_code into Python source and executes it."""
    _, blob = exported
    marker = tmp_path / "ran"

    def plant(program):
        program["guards_code"].append(f"__import__('pathlib').Path({str(marker)!r}).touch() is None")

    path = write_zip(tmp_path / "guard.pt2", with_model(blob, plant))
    assert runs_code_in_torch(path, marker)
    refused(path, marker, "guards_code .* is not a guard over the inputs' sizes")

    def other_input(program):  # the grammar also pins the names a guard may read
        program["guards_code"].append("L['y'].size()[0] == 2")

    path = write_zip(tmp_path / "guard2.pt2", with_model(blob, other_input))
    refused(path, marker, "'y' is not an input of the graph")


def test_the_legacy_layout_is_refused(exported, tmp_path):
    """Route 4: when its reader fails (here: an entry outside the root folder), torch.export.load
    retries the file in the torch 2.7 layout, whose state dict is a pickle."""
    _, blob = exported
    marker = tmp_path / "ran"
    from torch._export.serde.schema import SCHEMA_VERSION

    model = dict(entries(blob))[MODEL]
    legacy = [
        ("version", ".".join(map(str, SCHEMA_VERSION)).encode()),
        ("serialized_exported_program.json", model),
        ("serialized_state_dict.pt", pickle.dumps(_Touch(marker))),
        ("serialized_constants.pt", b""),
        ("serialized_example_inputs.pt", b""),
    ]
    path = write_zip(tmp_path / "legacy.pt2", [*entries(blob), *legacy])
    assert runs_code_in_torch(path, marker)
    refused(path, marker, "outside the archive's root folder")
    path = write_zip(tmp_path / "legacy2.pt2", [*entries(blob), *((f"archive/{n}", d) for n, d in legacy)])
    refused(path, marker, "an entry unetgraph does not write")


def test_a_tree_spec_naming_a_module_is_refused(exported, tmp_path, monkeypatch):
    """A fifth route: torch imports the module a defaultdict's tree spec names (its top level runs)."""
    _, blob = exported
    marker = tmp_path / "ran"
    (tmp_path / "planted_module_xyz.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    context = {"default_factory_module": "planted_module_xyz", "default_factory_name": "f", "dict_context": []}

    def plant(program):
        signature = program["graph_module"]["module_call_graph"][0]["signature"]
        spec = {"type": "collections.defaultdict", "context": context, "children_spec": []}
        signature["out_spec"] = json.dumps([1, spec])

    path = write_zip(tmp_path / "spec.pt2", with_model(blob, plant))
    assert runs_code_in_torch(path, marker)
    sys.modules.pop("planted_module_xyz", None)
    refused(path, marker, "out_spec: container type 'collections.defaultdict' is not a plain tuple, list or dict")


def test_operators_must_be_aten(exported, tmp_path):
    """A node's target is resolved by attribute lookup on torch (torch.os.system exists); only
    ATen operators (and torch's symbolic-size arithmetic) pass."""
    _, blob = exported

    def plant(program):
        node = program["graph_module"]["graph"]["nodes"][0]
        node["target"] = "torch.os.system"

    path = write_zip(tmp_path / "op.pt2", with_model(blob, plant))
    refused(path, tmp_path / "none", "operator 'torch.os.system' is not an ATen operator")


def test_a_corrupted_weight_is_refused_by_its_crc(exported, tmp_path):
    """A flipped bit in a tensor entry: torch loads it and computes garbage; the CRC-32 says no."""
    gm, blob = exported
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        info = z.getinfo("archive/data/weights/weight_0")  # enc0.conv0.weight, float32
    name_len, extra_len = struct.unpack("<HH", blob[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    bad = bytearray(blob)
    bad[start + 3] ^= 0x40  # the exponent of the first weight
    path = tmp_path / "flipped.pt2"
    path.write_bytes(bytes(bad))

    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        off = (torch.export.load(str(path)).module()(x) - gm(x)).abs().max().item()
    assert off > 1e6  # plain torch: silently wrong
    error = refused(path, tmp_path / "none", r"data/weights/weight_0: CRC-32 does not match")
    assert error.entry == "data/weights/weight_0"


def test_odd_names_sizes_and_bombs(exported, tmp_path):
    _, blob = exported
    items = entries(blob)
    for name, why in [
        ("/archive/extra/x", "odd entry name"),
        ("archive/../x", "odd entry name"),
        ("archive\\extra\\x", "odd entry name"),
        ("archive/extra/", "odd entry name"),
        ("other/extra/x", "outside the archive's root folder"),
        ("archive/extra/notes.txt", "an entry unetgraph does not write"),
        ("archive/data/weights/model.pt", "an entry unetgraph does not write"),  # torch's legacy weights (pickle)
    ]:
        path = write_zip(tmp_path / "odd.pt2", [*items, (name, b"x")])
        refused(path, tmp_path / "none", why)

    path = tmp_path / "unet.pt2"
    path.write_bytes(blob)
    with pytest.raises(ug.ArtifactError, match=f"{len(blob):,} bytes is over the limit of 1,000 .*max_bytes="):
        ug.load_exported(path, max_bytes=1000)
    assert ug.load_exported(path, max_bytes=len(blob)).graph.name == ug.unet(3, 2, widths=(4, 8)).name

    with zipfile.ZipFile(bomb := tmp_path / "bomb.pt2", "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in items:
            z.writestr(name, data)
        z.writestr("archive/data/weights/weight_77", bytes(64 * 2**20))  # 64 MiB of zeros in ~64 KiB
    assert bomb.stat().st_size < 2**20
    refused(bomb, tmp_path / "none", r"weight_77: compression ratio [0-9,]+ is over the limit of 100")
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:  # many entries, each under the per-entry check
        for name, data in items:
            z.writestr(name, data)
        for i in range(64):
            z.writestr(f"archive/data/weights/weight_{100 + i}", bytes(2**20))
    refused(bomb, tmp_path / "none", "entries expand to over 100 times the file's size")


def test_an_embedded_document_cannot_choose_native_code(exported, tmp_path):
    """A document saying "aoti" does not make the loader run native code: that takes native=True."""
    _, blob = exported
    items = []
    for name, data in entries(blob):
        if name.endswith("unetgraph.json"):
            doc = json.loads(data)
            doc["kind"] = "aoti"
            data = json.dumps(doc).encode()
        items.append((name, data))
    path = write_zip(tmp_path / "claims_aoti.pt2", items)
    with pytest.raises(ug.ArtifactError, match=r"an AOTInductor package: .*load_exported\(path, native=True\)"):
        ug.load_exported(path)
    with pytest.raises(ug.ArtifactError, match="an entry unetgraph does not write"):  # models/model.json
        ug.load_exported(path, native=True)


def test_onnx_with_several_outputs(tmp_path):
    """g.tap(...) gives a dict of outputs; the ONNX artifact returns the same dict."""
    torch.manual_seed(0)
    g = ug.unet(3, 2, widths=(4, 8)).tap("enc0")
    gm = g.lower().eval()
    loaded = ug.load_exported(ug.export(gm, tmp_path / "tap.onnx", progress=False))
    x = torch.randn(2, 3, 12, 8)
    with torch.no_grad():
        want, got = gm(x), loaded(x)
    assert list(got) == ["head", "enc0"] == list(want)
    for key in want:
        assert torch.allclose(got[key], want[key], atol=1e-5), key


def test_onnx_external_data_and_bad_files_are_refused(tmp_path):
    torch.manual_seed(0)
    gm = ug.unet(3, 2, widths=(4, 8)).lower().eval()
    path = ug.export(gm, tmp_path / "unet.onnx", progress=False)
    model = onnx.load(str(path))
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../../etc/passwd")
    evil = tmp_path / "external.onnx"
    evil.write_bytes(model.SerializeToString())
    with pytest.raises(ug.ArtifactError, match="points to external data"):
        ug.load_exported(evil)
    (junk := tmp_path / "junk.onnx").write_bytes(b"\xff" * 64)
    with pytest.raises(ug.ArtifactError, match=r"junk\.onnx: not an ONNX model"):
        ug.load_exported(junk)
    with pytest.raises(ug.ArtifactError, match="not a file"):
        ug.load_exported(tmp_path)  # a folder
    with pytest.raises(ug.ArtifactError, match="cannot be read"):
        ug.load_exported(tmp_path / "missing.pt2")


@pytest.mark.parametrize(
    "text",
    [
        "Mul(Integer(2), Symbol('s57', positive=True, integer=True))",
        "Add(Max(Integer(1), s0), FloorDiv(s1, 2), Integer(-3))",
        "2*s0 + (s1 // 4) % 3 - 1",
    ],
)
def test_the_size_grammar_accepts_what_torch_writes(text):
    artifact._Expr.check(text, None, Path("f.pt2"), "expr_str")


@pytest.mark.parametrize(
    "text, why",
    [
        ("__import__('os')", r"__import__\(…\) is not a size function"),
        ("Symbol('s0').__class__", "unexpected '.'"),
        ("Function('f')(s0)", r"Function\(…\) is not a size function"),
        ("Symbol('os', positive=True)", "'os' is not a size symbol"),
        ("Symbol('s0', evaluate=True)", "not a symbol assumption"),
        ("s0 ** 2", "unexpected '\\*'"),
        ("lambda: 0", "unexpected ': 0'"),
        ("E", "'E' is not a size symbol"),
        ("1" * 31, "over 30 digits"),
        ("(" * 70 + "s0" + ")" * 70, "nested over 64 deep"),
        ("s0 +", "ends too early"),
        ('"s0"', "unexpected"),
    ],
)
def test_the_size_grammar_refuses_anything_else(text, why):
    with pytest.raises(ug.ArtifactError, match=why):
        artifact._Expr.check(text, None, Path("f.pt2"), "expr_str")


@pytest.mark.parametrize(
    "text, ok",
    [
        ("(2*(L['x'].size()[2] // 2)) == L['x'].size()[2]", True),
        ("torch.sym_max(1, (-4) + L['x'].size()[3]) != ((-12) + 2*(L['x'].size()[3] // 2))", True),
        ("4 <= 8 + L['x'].size()[2] + (-2)*(L['x'].size()[2] // 2)", True),
        ("L['x'].size()[0] == L['t'].size()[0]", True),
        ("L['x'].size()[2] >= 4 and not (L['x'].size()[3] < 4 or L['t'].size()[0] == 1)", True),
        ("L['x'].size()[0] == L['t'].size()[0] or True", False),
        ("L['x'].size()[0] and", False),
        ("L['x'].stride()[0] == 1", False),
        ("torch.ones(1)", False),
        ("L['x'].size()[0] == ''", False),
        ("L['x'].size()[0] == 2\"", False),
    ],
)
def test_the_guard_grammar(text, ok):
    check = lambda: artifact._Expr.check(text, frozenset({"x", "t"}), Path("f.pt2"), "guards_code")  # noqa: E731
    if ok:
        check()
    else:
        with pytest.raises(ug.ArtifactError, match="is not a guard"):
            check()


READ_UNDER_A_MEMORY_LIMIT = """
import resource, sys
from unetgraph import artifact
resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))
for path in sys.argv[1:]:
    try:
        artifact.read_archive(path) if path.endswith(".pt2") else artifact.read_onnx(path)
    except artifact.ArtifactError as e:
        print("ArtifactError", e.path)
"""


def test_a_small_artifact_is_read_without_reserving_the_size_limit(tmp_path):
    """A file was read with read(max_bytes + 1): CPython reserves that buffer first, 8 GiB by
    default, so a 1 KB artifact failed with MemoryError in a process limited to 6 GiB."""
    import os
    import subprocess

    paths = [tmp_path / "x.pt2", tmp_path / "x.onnx"]
    for p in paths:
        p.write_bytes(b"not an artifact" * 64)
    out = subprocess.run(
        [sys.executable, "-c", READ_UNDER_A_MEMORY_LIMIT, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.split() == ["ArtifactError", str(paths[0]), "ArtifactError", str(paths[1])]
