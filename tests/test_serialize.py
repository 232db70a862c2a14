"""Graphs as data: exact JSON/YAML round trips, atomic files, and errors that name the place in the document."""

import json
import re
from dataclasses import dataclass
from fractions import Fraction

import pytest
import yaml
from torch import nn

import unetgraph as ug


@dataclass(frozen=True)
class Gain(ug.BlockSpec):
    """A user block with fields of every storable kind: a fraction, a tuple, a nested spec."""

    gain: Fraction = Fraction(1, 2)
    taps: tuple[int, ...] = (1, 2)
    inner: ug.BlockSpec | None = None

    def validate(self):
        self._require(isinstance(self.gain, Fraction), "gain", "a fraction")
        self._require(isinstance(self.taps, tuple), "taps", "a tuple")

    def infer(self, inputs, sources=()):
        return inputs[0]

    def build(self, inputs, output):
        return nn.Identity()


@pytest.fixture(scope="module", autouse=True)
def gain_block():
    """A user block, registered while this module's tests run."""
    ug.register_block(Gain)
    GRAPHS["user-block"] = ug.unet(1, 1, widths=(4, 8)).insert_after(
        "enc0", Gain(gain=Fraction(3, 7), taps=(4, 5, 6), inner=ug.ConvBlock(kernel=(3, 5))), name="gain"
    )
    yield
    ug.unregister_block("Gain")


GRAPHS = {
    "default": ug.unet(3, 2, widths=(8, 16, 32)),
    "classic": ug.presets.classic_unet(),
    "3d-anisotropic": ug.unet(
        2, 1, widths=(4, 8), dims=3, down=ug.Down(factor=(1, 2, 2)), up="nearest", block=ug.ConvBlock(kernel=(1, 3, 3))
    ),
    "edited": ug.unet(1, 4, widths=(8, 16, 32))
    .replace("mid", ug.Sequence(ug.ConvBlock(), ug.Sequence(ug.ConvBlock(convs=1)), ug.ConvBlock(dropout=0.1)))
    .tap("enc1")
    .add("aux", ug.Head(channels=4), ["dec1"]),
}


@pytest.mark.parametrize("fmt", ["json", "yaml"])
@pytest.mark.parametrize("name", [*GRAPHS, "user-block"])
def test_round_trip_is_exact(name, fmt, tmp_path):
    g = GRAPHS[name]
    assert ug.loads(ug.dumps(g, fmt), fmt) == g
    path = g.save(tmp_path / f"net.{'yml' if fmt == 'yaml' else fmt}")
    g2 = ug.load(path)
    assert g2 == g and g2.to_dict() == g.to_dict() and list(g2) == list(g)
    assert [n.block for n in g2.nodes()] == [n.block for n in g.nodes()]


def test_user_block_fields_come_back_typed():
    g = ug.loads(ug.dumps(GRAPHS["user-block"]))
    b = g["gain"].block
    assert b.gain == Fraction(3, 7) and isinstance(b.gain, Fraction)
    assert b.taps == (4, 5, 6) and b.inner == ug.ConvBlock(kernel=(3, 5))
    assert g.to_dict()["nodes"]["gain"]["block"]["gain"] == {"fraction": "3/7"}


def test_document_layout():
    doc = GRAPHS["default"].to_dict()
    assert list(doc) == ["schema_version", "name", "nodes", "edges", "outputs"]
    assert doc["schema_version"] == ug.SCHEMA_VERSION == 1
    assert doc["nodes"]["enc1"] == {
        "role": "encoder",
        "level": 1,
        "block": {
            "type": "ConvBlock",
            "channels": 16,
            "convs": 2,
            "kernel": 3,
            "padding": "same",
            "stride": 1,
            "norm": "batch",
            "groups": 32,
            "act": "relu",
            "dropout": 0.0,
            "bias": None,
            "mid_channels": None,
            "order": "NA",
        },
    }
    assert {"src": "enc1", "dst": "merge1", "kind": "skip", "port": 0} in doc["edges"]
    json.dumps(doc)  # plain data
    text = ug.dumps(GRAPHS["default"], "yaml")
    assert "!!" not in text and "block: {type: ConvBlock, channels: 16," in text


def test_a_hand_written_document_with_defaults_and_implicit_ports():
    text = """
schema_version: 1
name: Tiny
nodes:
  x: {role: input, level: 0, block: {type: Input, channels: 1, dims: 1}}
  enc0: {role: encoder, level: 0, block: {type: ConvBlock, channels: 4}}
  down1: {role: down, level: 1, block: {type: Down}}
  up0: {role: up, level: 0, block: {type: Up, channels: 4}}
  merge0: {role: merge, level: 0, block: {type: Merge, mode: add}}
  head: {role: head, level: 0, block: {type: Head, channels: 2}}
edges:
  - {src: x, dst: enc0}
  - {src: enc0, dst: down1}
  - {src: down1, dst: up0}
  - {src: enc0, dst: merge0, kind: skip}
  - {src: up0, dst: merge0}
  - {src: merge0, dst: head}
outputs: [head]
"""
    g = ug.loads(text)
    assert [(e.src, e.kind.value, e.port) for e in g.in_edges("merge0")] == [("enc0", "skip", 0), ("up0", "data", 1)]
    assert g["enc0"].block == ug.ConvBlock(channels=4)
    assert g.check((1, 1, 16)).outputs == {"head": (1, 2, 16)}


def doc_with(change):
    doc = json.loads(json.dumps(GRAPHS["default"].to_dict()))
    change(doc)
    return doc


BAD = [
    (
        lambda d: d["nodes"]["enc1"]["block"].update(convs=-3),
        ug.SpecError,
        "nodes.enc1.block.convs: expected a positive integer, got -3",
    ),
    (
        lambda d: d["nodes"]["enc1"]["block"].update(norm="grup"),
        ug.SpecError,
        "nodes.enc1.block.norm: expected one of .* \\(did you mean 'group'\\?\\)",
    ),
    (
        lambda d: d["nodes"]["enc1"]["block"].update(kernel=4),
        ug.SpecError,
        "nodes.enc1.block.padding: padding='same' needs an odd kernel",
    ),
    (
        lambda d: d["nodes"]["enc1"]["block"].update(type="ConvBlok"),
        ug.RegistryError,
        "nodes.enc1.block.type: unknown block 'ConvBlok' \\(did you mean 'ConvBlock'\\?\\)",
    ),
    (
        lambda d: d["nodes"]["enc1"]["block"].update(size=3),
        ug.SpecError,
        "nodes.enc1.block.size: ConvBlock has no field 'size'",
    ),
    (
        lambda d: d["nodes"]["enc1"]["block"].pop("type"),
        ug.SpecError,
        "nodes.enc1.block: block data needs a 'type' key",
    ),
    (
        lambda d: d["nodes"]["enc1"]["block"].update(kernel={"x": 1}),
        ug.SpecError,
        "nodes.enc1.block.kernel: expected a block .* or a fraction",
    ),
    (
        lambda d: d["nodes"]["enc1"].update(level=-1),
        ug.SpecError,
        "nodes.enc1.level: expected a non-negative integer or null, got -1",
    ),
    (lambda d: d["nodes"]["enc1"].update(role="encoderr"), ug.SpecError, "nodes.enc1.role: expected one of 'input', "),
    (
        lambda d: d["nodes"]["enc1"].update(blok={}),
        ug.SpecError,
        "nodes.enc1: unknown key 'blok' \\(did you mean 'block'\\?\\)",
    ),
    (lambda d: d["nodes"].update(enc1=[1]), ug.SpecError, "nodes.enc1: expected a mapping, got list"),
    (
        lambda d: d["edges"][3].update(kind="skp"),
        ug.SpecError,
        "edges\\[3\\].kind: expected one of 'data', 'skip', 'cond', got 'skp'",
    ),
    (
        lambda d: d["edges"][3].update(src="enc9"),
        ug.SpecError,
        "edges\\[3\\].src: no node 'enc9' \\(did you mean 'enc1'\\?\\)",
    ),
    (
        lambda d: d["edges"][3].update(port=-1),
        ug.SpecError,
        "edges\\[3\\].port: expected a non-negative integer, got -1",
    ),
    (
        lambda d: d["edges"].append({"src": "x", "dst": "enc0", "port": 0}),
        ug.SpecError,
        "edges\\[14\\].port: enc0 has an input at port 0",
    ),
    (lambda d: d.update(edges={}), ug.SpecError, "edges: expected a list"),
    (lambda d: d.update(outputs=["hed"]), ug.SpecError, "outputs\\[0\\]: no node 'hed' \\(did you mean 'head'\\?\\)"),
    (lambda d: d.pop("schema_version"), ug.SpecError, "document: missing 'schema_version'"),
    (
        lambda d: d.update(schema_version=2),
        ug.SpecError,
        "schema_version: the document is version 2, written by a newer",
    ),
    (lambda d: d.update(extra=1), ug.SpecError, "document: unknown key 'extra'"),
    (lambda d: d.update(name=3), ug.SpecError, "name: expected a string"),
    # well-formed documents whose graph is not valid name the node
    (
        lambda d: (d["nodes"]["merge1"]["block"].update(mode="add"), d["nodes"]["up1"]["block"].update(channels=24)),
        ug.ShapeError,
        "nodes.merge1: merge1 \\(add\\): skip enc1→merge1 carries 16 channels, add needs 24 from up1",
    ),
    (
        lambda d: d["edges"].append({"src": "dec0", "dst": "enc0", "kind": "data", "port": 1}),
        ug.GraphError,
        "graph: the graph has a cycle: enc0 → down1 → .* → dec0",
    ),
    (
        lambda d: d["nodes"]["enc1"].update(role="input"),
        ug.GraphError,
        "nodes.enc1: enc1 is an input node but is fed by down1",
    ),
]


@pytest.mark.parametrize("change, error, match", BAD, ids=[m.split(":")[0].replace("\\", "") for _, _, m in BAD])
def test_bad_documents_name_the_path(change, error, match):
    doc = doc_with(change)
    with pytest.raises(error, match=match):
        ug.UNetGraph.from_dict(doc)


def test_file_errors_start_with_the_file_name(tmp_path):
    doc = doc_with(lambda d: d["nodes"]["enc1"]["block"].update(convs=-3))
    path = tmp_path / "my_unet.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(
        ug.SpecError, match=r"^my_unet\.yaml: nodes\.enc1\.block\.convs: expected a positive integer, got -3$"
    ):
        ug.load(path)
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ug.SpecError, match=re.escape("bad.json: not valid JSON: line 1, column 2")):
        ug.load(tmp_path / "bad.json")
    with pytest.raises(ug.SpecError, match=re.escape("cannot tell the format from '.txt'")):
        ug.load(tmp_path / "net.txt")
    with pytest.raises(ug.SpecError, match="document: expected a mapping, got list"):
        ug.loads("[1, 2]")


def test_loading_never_runs_code(tmp_path):
    marker = tmp_path / "ran"
    evil = f"!!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(ug.SpecError, match="not valid YAML"):
        ug.loads(evil)
    assert not marker.exists()
    doc = doc_with(lambda d: d["nodes"]["enc1"].update(block={"type": "os.system", "command": "touch x"}))
    with pytest.raises(ug.RegistryError, match=re.escape("unknown block 'os.system'")):
        ug.UNetGraph.from_dict(doc)


def test_writes_are_atomic(tmp_path):
    g = GRAPHS["default"]
    path = g.save(tmp_path / "net.json")
    first = path.read_text()

    @dataclass(frozen=True)
    class Unstorable(ug.BlockSpec):
        fn: object = None

        def infer(self, inputs, sources=()):
            return inputs[0]

    ug.register_block(Unstorable)
    try:
        bad = g.insert_after("enc0", Unstorable(fn=print), name="u")
        with pytest.raises(
            ug.SpecError, match=re.escape("nodes.u.block: Unstorable.fn: a builtin_function_or_method cannot be stored")
        ):
            bad.save(path)
    finally:
        ug.unregister_block("Unstorable")
    assert path.read_text() == first  # the old file is whole
    assert [p.name for p in tmp_path.iterdir()] == ["net.json"]  # no temporary file left


def test_explicit_format_and_yml(tmp_path):
    g = GRAPHS["default"]
    p = g.save(tmp_path / "net.cfg", format="json")
    assert json.loads(p.read_text())["name"] == "UNet"
    assert ug.load(p, format="json") == g
    with pytest.raises(ug.SpecError, match="format: expected 'json' or 'yaml'"):
        ug.dumps(g, "toml")


def test_create_block_decodes_nested_data():
    seq = ug.Sequence(ug.ConvBlock(channels=4), ug.Down("avgpool", factor=(1, 2)))
    data = json.loads(json.dumps(seq.to_dict()))
    assert ug.create_block(data) == seq
    with pytest.raises(ug.SpecError, match=r"Sequence\.blocks\[1\]\.factor: expected a positive integer or a tuple"):
        ug.create_block({"type": "Sequence", "blocks": [{"type": "ConvBlock"}, {"type": "Down", "factor": [0]}]})
