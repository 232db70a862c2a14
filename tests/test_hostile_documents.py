"""Hostile documents: every bad input gets a typed error naming its place, in bounded time and memory.

Each case was a raw exception, a silent misreading or a hang before the document limits
(unetgraph.serialize: MAX_DOCUMENT_BYTES, MAX_DEPTH, MAX_VALUES, MAX_NODES, MAX_EDGES,
MAX_INT_DIGITS) and the block contract's number checks.
"""

import dataclasses
import json
import math
import os
import time
from fractions import Fraction

import pytest
import yaml
from torch import nn

import unetgraph as ug
from unetgraph import serialize

SMALL = ug.unet(1, 1, widths=(4, 8))


def small_doc():
    return json.loads(json.dumps(SMALL.to_dict()))


def refuses(read, error, match, *, within_s=2.0):
    """``read()`` raises ``error`` matching ``match``, within ``within_s`` seconds of CPU time
    (the work done: wall time on a shared machine also counts the other processes)."""
    start = time.thread_time()
    with pytest.raises(error, match=match):
        read()
    assert time.thread_time() - start < within_s


class TestText:
    def test_bytes_that_are_not_utf8(self, tmp_path):
        path = tmp_path / "net.yaml"
        path.write_bytes(SMALL and ug.dumps(SMALL).encode()[:40] + b"\xff\xfe" + b"rest")
        refuses(lambda: ug.load(path), ug.SpecError, r"^net\.yaml: not UTF-8 text: byte 0xff at offset 40")
        refuses(lambda: ug.loads(b"\xc3\x28", "json"), ug.SpecError, "not UTF-8 text: byte 0xc3 at offset 0")
        assert ug.loads(ug.dumps(SMALL).encode()) == SMALL  # UTF-8 bytes are read

    @pytest.mark.parametrize("fmt", ["json", "yaml"])
    def test_deep_nesting(self, fmt):
        for depth in (serialize.MAX_DEPTH + 1, 100_000):
            text = "[" * depth + "]" * depth
            # past 1000 levels libyaml's own limit speaks first ("exceeded maximum nesting depth")
            refuses(lambda text=text: ug.loads(text, fmt), ug.SpecError, "nests deeper than 32 levels|nesting depth")
        doc = small_doc()
        doc["nodes"]["enc0"]["block"]["kernel"] = json.loads("[" * 40 + "3" + "]" * 40)
        text = json.dumps(doc)
        refuses(lambda: ug.loads(text, fmt), ug.SpecError, "nests deeper than 32 levels")

    def test_yaml_alias_bomb_is_refused_at_once(self):
        """A 1 KB document whose aliases expand to 10**9 values (it took 42 s and 3 GB)."""
        bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)
        )
        text = ug.dumps(SMALL).replace("convs: 2", "convs: *a8", 1)
        assert len(bomb + text) < 3000
        refuses(lambda: ug.loads(bomb + text), ug.SpecError, r"line 2, column \d+: YAML aliases \(\*a0\) are not read")
        refuses(lambda: ug.loads("a: &a [*a]\n"), ug.SpecError, r"YAML aliases \(\*a\) are not read")
        refuses(lambda: ug.loads("a: {<<: {b: 1}}\n"), ug.SpecError, r"YAML merge keys \(<<\) are not read")

    @pytest.mark.parametrize("fmt", ["json", "yaml"])
    def test_integers_over_the_digit_limit(self, fmt):
        doc = small_doc()
        doc["nodes"]["enc0"]["block"]["convs"] = 7
        text = (json.dumps(doc) if fmt == "json" else ug.dumps(SMALL)).replace(
            "7" if fmt == "json" else "convs: 2", "9" * 5000 if fmt == "json" else "convs: " + "9" * 5000, 1
        )
        refuses(
            lambda: ug.loads(text, fmt),
            ug.SpecError,
            "nodes.enc0.block.convs: an integer of 5,000 digits; documents hold integers of at most 40 digits",
        )

    @pytest.mark.parametrize("fmt", ["json", "yaml"])
    def test_repeated_keys_are_refused_not_overwritten(self, fmt):
        """JSON and YAML readers keep the last of repeated keys: a document could say one thing
        to a reviewer and another to the loader."""
        text = json.dumps(SMALL.to_dict()).replace('"name": "UNet"', '"name": "UNet", "name": "Evil"')
        refuses(lambda: ug.loads(text, fmt), ug.SpecError, "^document: the key 'name' appears more than once")
        text = json.dumps(SMALL.to_dict()).replace('"convs": 2', '"convs": 2, "convs": 3', 1)
        refuses(lambda: ug.loads(text, fmt), ug.SpecError, "^nodes.enc0.block: the key 'convs' appears more than once")
        block = "    block: {type: ConvBlock, channels: 4, convs: 2, convs: 3}\n" if fmt == "yaml" else None
        if block:
            text = ug.dumps(SMALL).replace("  enc0:\n", "  enc0:\n    role: encoder\n    role: decoder\n", 1)
            refuses(lambda: ug.loads(text), ug.SpecError, "^nodes.enc0: the key 'role' appears more than once")

    def test_size_limit_is_checked_before_parsing(self, monkeypatch):
        text = ug.dumps(SMALL, "json")
        monkeypatch.setattr(serialize, "MAX_DOCUMENT_BYTES", len(text) - 1)
        refuses(lambda: ug.loads(text, "json"), ug.SpecError, f"the document is {len(text):,} characters")
        refuses(lambda: ug.loads(" " * (16 * 2**20 + 1)), ug.SpecError, "documents are at most")

    def test_not_text(self):
        refuses(lambda: ug.loads(3), ug.SpecError, "expected the document as text")


class TestFiles:
    def test_missing_file_folder_and_fifo(self, tmp_path):
        refuses(lambda: ug.load(tmp_path / "nope.yaml"), ug.FileError, "nope.yaml: cannot read: No such file")
        (tmp_path / "dir.yaml").mkdir()
        refuses(lambda: ug.load(tmp_path / "dir.yaml"), ug.FileError, "dir.yaml: cannot read: it is a folder")
        os.mkfifo(tmp_path / "fifo.yaml")  # opening a FIFO would block until a writer comes
        refuses(lambda: ug.load(tmp_path / "fifo.yaml"), ug.FileError, "fifo.yaml: cannot read: not a regular file")
        refuses(lambda: ug.load(3), ug.SpecError, "path: expected a file path")
        refuses(lambda: ug.load(tmp_path / "a\x00.yaml"), ug.FileError, "cannot read: embedded null byte")
        refuses(lambda: SMALL.save(tmp_path / "a\x00.yaml"), ug.FileError, "cannot write: embedded null byte")

    def test_file_errors_are_oserrors_too(self, tmp_path):
        with pytest.raises(OSError):
            ug.load(tmp_path / "nope.json")


class TestWork:
    """Documents that asked for unbounded work now get an error naming the limit."""

    def test_port_less_edges_are_linear(self):
        """40,000 edges without ports into one merge took 46 s: a quadratic search for the free
        port (and a list lookup per edge end). Four times the edges must take about four times
        as long (best of two, against 16 times before)."""

        def wide(n):
            nodes = {"x": {"role": "input", "block": {"type": "Input", "channels": 1, "dims": 1}}}
            for i in range(n):
                nodes[f"n{i}"] = {"role": "encoder", "block": {"type": "ConvBlock", "channels": 1, "norm": "none"}}
            nodes["m"] = {"role": "merge", "block": {"type": "Merge"}}
            edges = [{"src": "x", "dst": f"n{i}"} for i in range(n)]
            edges += [{"src": f"n{i}", "dst": "m"} for i in range(n)]
            return {"schema_version": 1, "name": "Wide", "nodes": nodes, "edges": edges, "outputs": ["m"]}

        def seconds(doc):
            best = math.inf
            for _ in range(2):
                start = time.thread_time()
                g = ug.UNetGraph.from_dict(doc)
                best = min(best, time.thread_time() - start)
            return best, g

        (small, _), (large, g) = seconds(wide(800)), seconds(wide(3200))
        assert [e.port for e in g.in_edges("m")] == list(range(3200))
        assert large / small < 8, (small, large)

    def test_a_fraction_with_a_huge_exponent(self):
        """Fraction("1e999999999") computes 10**999999999: it never finished."""
        doc = small_doc()
        doc["nodes"]["enc0"]["block"]["dropout"] = {"fraction": "1e999999999"}
        refuses(
            lambda: ug.UNetGraph.from_dict(doc),
            ug.SpecError,
            r"nodes.enc0.block.dropout.fraction: expected a fraction like '1/2' or '0.25' \(at most 40 digits",
        )
        assert serialize.block_from_dict({"type": "Merge", "crop": False}) == ug.Merge()
        assert ug.create_block("Down").with_(factor=2) == ug.Down()

    @pytest.mark.parametrize(
        "field, value, match",
        [
            ("convs", 10**6, "nodes.enc0.block.convs: expected at most 256, got 1000000"),
            ("channels", 2**40, "nodes.enc0.block.channels: expected at most 1,048,576, got 1099511627776"),
            (
                "kernel",
                [3, 3, 3, 3],
                "nodes.enc0.block.kernel: expected a positive integer or a tuple of them, one per",
            ),
            ("kernel", 2**21 + 1, "nodes.enc0.block.kernel: expected values of at most 1,048,576"),
            ("groups", 10**30, r"nodes.enc0.block.groups: expected an integer within ±2\*\*63"),
        ],
    )
    def test_fields_that_drive_work_are_bounded(self, field, value, match):
        doc = small_doc()
        doc["nodes"]["enc0"]["block"][field] = value
        refuses(lambda: ug.UNetGraph.from_dict(doc), ug.SpecError, match)

    def test_shape_notes_of_many_convolutions_are_linear(self):
        g = ug.unet(1, 1, widths=(2, 2), block=ug.ConvBlock(convs=256, groups=1, norm="group"))
        start = time.thread_time()
        report = g.check((1, 1, 8, 8))
        assert time.thread_time() - start < 5 and report["enc0"].output == (1, 2, 8, 8)

    def test_a_shared_python_structure_cannot_expand_without_bound(self):
        """A Python document can share one list many times (10**9 values here): bounded by MAX_VALUES."""
        bomb: list = [1] * 10
        for _ in range(8):
            bomb = [bomb] * 10
        doc = small_doc()
        doc["nodes"]["enc0"]["block"]["kernel"] = bomb
        refuses(lambda: ug.UNetGraph.from_dict(doc), ug.SpecError, "the document holds more than 4,000,000 values")
        looped: list = []
        looped.append(looped)
        doc["nodes"]["enc0"]["block"]["kernel"] = looped
        refuses(lambda: ug.UNetGraph.from_dict(doc), ug.SpecError, "nests deeper than 32 levels")

    def test_node_and_edge_counts(self, monkeypatch):
        monkeypatch.setattr(serialize, "MAX_NODES", len(SMALL) - 1)
        refuses(
            lambda: ug.UNetGraph.from_dict(small_doc()), ug.SpecError, "^nodes: 8 nodes; a document holds at most 7"
        )
        monkeypatch.setattr(serialize, "MAX_NODES", 50_000)
        monkeypatch.setattr(serialize, "MAX_EDGES", 3)
        refuses(
            lambda: ug.UNetGraph.from_dict(small_doc()), ug.SpecError, "^edges: 8 edges; a document holds at most 3"
        )


# -- NaN and infinities: refused in every float field of every block, by the block contract -------


def _float_fields():
    cases = []
    for name in ug.block_names():
        cls = ug.get_block(name)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            if "float" in str(f.type) or isinstance(default, float):
                cases.append((name, f.name))
    return cases


FLOAT_FIELDS = _float_fields()


def test_every_builtin_float_field_is_covered():
    assert {("ConvBlock", "dropout"), ("ResBlock", "output_scale"), ("TimestepEmbedding", "max_period")} <= set(
        FLOAT_FIELDS
    )
    assert len(FLOAT_FIELDS) >= 12


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("block, field", FLOAT_FIELDS)
def test_nan_and_infinities_are_refused_in_every_float_field(block, field, value):
    with pytest.raises(ug.SpecError, match=f"^{block}.{field}: expected a finite number, got {value}"):
        ug.create_block(block, **{field: value})


def test_the_rule_holds_for_user_blocks_and_documents():
    @dataclasses.dataclass(frozen=True)
    class Scale(ug.BlockSpec):
        factor: float = 1.0
        per_axis: tuple = (1.0, 1.0)

        def infer(self, inputs, sources=()):
            return inputs[0]

        def build(self, inputs, output):
            return nn.Identity()

    with pytest.raises(ug.SpecError, match=r"Scale\.factor: expected a finite number, got nan"):
        Scale(factor=math.nan)
    with pytest.raises(ug.SpecError, match=r"Scale\.per_axis: expected a finite number, got inf"):
        Scale(per_axis=(1.0, math.inf))
    assert Scale(factor=Fraction(1, 3)).factor == Fraction(1, 3)
    doc = small_doc()
    doc["nodes"]["enc0"]["block"]["dropout"] = math.nan
    text = json.dumps(doc)  # NaN, as JSON writers spell it
    assert "NaN" in text
    refuses(lambda: ug.loads(text, "json"), ug.SpecError, "nodes.enc0.block.dropout: expected a finite number, got nan")
    text = ug.dumps(SMALL).replace("eps: null", "eps: .inf", 1)
    refuses(lambda: ug.loads(text), ug.SpecError, "nodes.head.block.eps: expected a finite number, got inf")


def test_documents_we_write_hold_no_aliases():
    g = SMALL.replace("dec0", SMALL["enc0"].block)  # one spec object in two nodes
    text = ug.dumps(g)
    assert "&" not in text and "*" not in text and ug.loads(text) == g
    assert yaml.safe_load(text) == g.to_dict()
