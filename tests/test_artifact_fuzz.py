"""Hostile artifacts: every malformed ``.pt2`` or ``.onnx`` gives one :class:`ug.ArtifactError`
naming the file, never another error type and never a slow load (issue 13).

The mutants are made from one real export of a tiny graph: truncations, bit flips, random bytes,
entries deleted, repeated or filled with garbage, and type changes at every level of every JSON
entry (the program, the weight and constant configs, unetgraph's document); for ONNX the same on
the protobuf file and its embedded document. A seeded generator makes the run repeatable.
"""

import io
import json
import random
import time
import warnings
import zipfile
from collections import Counter

import onnx
import pytest
import torch

import unetgraph as ug

pytestmark = pytest.mark.filterwarnings("ignore")

SLOW = 1.0  # seconds of CPU time: no case may take longer
HANG = 10.0  # seconds of wall time
JSON_ENTRIES = (
    "archive/models/model.json",
    "archive/data/weights/model_weights_config.json",
    "archive/data/constants/model_constants_config.json",
    "archive/extra/unetgraph.json",
)
OTHER_TYPES = [None, True, 0, -1, 2**70, 1.5, float("nan"), "", "x", [], [1, "a"], {}, {"as_int": 1}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The bytes of a tiny graph's .pt2 and .onnx exports."""
    torch.manual_seed(0)
    gm = ug.unet(1, 1, widths=(2, 4), block=ug.ConvBlock(convs=1, norm="none")).lower().eval()
    folder = tmp_path_factory.mktemp("tiny")
    pt2 = ug.export(gm, folder / "tiny.pt2", progress=False)
    onnx_path = ug.export(gm, folder / "tiny.onnx", progress=False)
    return pt2.read_bytes(), onnx_path.read_bytes()


def zip_entries(blob: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def to_zip(items) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as z:
        warnings.simplefilter("ignore")  # repeated names are wanted here
        for name, data in items:
            z.writestr(name, data)
    return buffer.getvalue()


def paths(value, prefix=()):
    """Every path into a JSON value (the root too)."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, (*prefix, i))


def retyped(value, path, rng: random.Random):
    """``value`` with the item at ``path`` replaced by one of another type (a deep copy)."""
    value = json.loads(json.dumps(value))
    old = value
    for key in path:
        old = old[key]
    new = rng.choice([t for t in OTHER_TYPES if type(t) is not type(old)])
    if not path:
        return new
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = new
    return value


def flip_bits(blob: bytes, rng: random.Random) -> bytes:
    data = bytearray(blob)
    for _ in range(rng.randint(1, 3)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


def raw_mutants(blob: bytes, rng: random.Random, n: int):
    """Truncations, bit flips and random bytes (a third each)."""
    for i in range(n):
        kind = i % 3
        if kind == 0:
            yield "truncated", blob[: rng.randrange(len(blob))]
        elif kind == 1:
            yield "bit flip", flip_bits(blob, rng)
        else:
            size = rng.choice([0, 1, 4, 100, 5000])
            head = rng.choice([b"", b"PK\x03\x04", b"PK\x05\x06", b"\x08\x07\x12"])
            yield "random bytes", head + rng.randbytes(size)


def pt2_mutants(blob: bytes, rng: random.Random):
    items = zip_entries(blob)
    names = [n for n, _ in items]
    yield from raw_mutants(blob, rng, 60)
    for _ in range(25):
        gone = rng.choice(names)
        yield "entry deleted", to_zip([(n, d) for n, d in items if n != gone])
    for _ in range(20):
        name, data = rng.choice(items)
        copy = (name if rng.random() < 0.7 else name.upper(), rng.choice([data, b"{}", rng.randbytes(8)]))
        yield "entry repeated", to_zip([copy, *items] if rng.random() < 0.5 else [*items, copy])
    for _ in range(25):
        name = rng.choice(names)
        garbage = rng.choice([b"", b"\xff\xfe", rng.randbytes(64), b"[" * 100_000, b'{"a": 1e999999}'])
        yield "entry garbage", to_zip([(n, garbage if n == name else d) for n, d in items])
    for name in JSON_ENTRIES:
        data = json.loads(dict(items)[name])
        every = list(paths(data))
        for path in rng.sample(every, min(len(every), 40 if name.endswith("model.json") else 25)):
            changed = json.dumps(retyped(data, path, rng)).encode()
            yield "json type change", to_zip([(n, changed if n == name else d) for n, d in items])


def onnx_mutants(blob: bytes, rng: random.Random):
    yield from raw_mutants(blob, rng, 45)
    model = onnx.load_model_from_string(blob)
    doc = json.loads(next(p.value for p in model.metadata_props if p.key == "unetgraph.json"))
    every = list(paths(doc))
    for path in rng.sample(every, min(len(every), 30)):
        changed = onnx.ModelProto()
        changed.CopyFrom(model)
        for prop in changed.metadata_props:
            if prop.key == "unetgraph.json":
                prop.value = json.dumps(retyped(doc, path, rng))
        yield "json type change", changed.SerializeToString()
    for _ in range(15):
        changed = onnx.ModelProto()
        changed.CopyFrom(model)
        kind = rng.randrange(3)
        if kind == 0:  # an initializer removed
            del changed.graph.initializer[rng.randrange(len(changed.graph.initializer))]
        elif kind == 1:  # a node removed
            del changed.graph.node[rng.randrange(len(changed.graph.node))]
        else:  # an initializer repeated
            changed.graph.initializer.append(changed.graph.initializer[rng.randrange(len(changed.graph.initializer))])
        yield "graph edit", changed.SerializeToString()


def run_cases(cases, path, fuzz_tally, label):
    """Load every mutant (and call the ones that load once, at a served size); collect what is not
    an ArtifactError, and what takes over SLOW seconds of this process's CPU time or HANG seconds
    of wall time. (CPU time, because the wall time of a 2-core machine shared with other test runs
    measures the neighbours; a case that spins still shows, and HANG catches one that waits.)"""
    outcomes: Counter = Counter()
    untyped, slow = [], []
    x = torch.randn(2, 1, 8, 8)
    cpu_total = 0.0
    for kind, data in cases:
        path.write_bytes(data)
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            loaded = ug.load_exported(path)
            with torch.no_grad():
                loaded(x)
            outcomes[f"{kind}: loaded and ran"] += 1
        except ug.ArtifactError as e:
            assert str(path) in str(e) and e.path == str(path), e
            outcomes[f"{kind}: refused"] += 1
        except Exception as e:  # what this test counts
            untyped.append(f"{kind}: {type(e).__name__}: {e}"[:300])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        cpu_total += cpu
        if cpu > SLOW or wall > HANG:
            slow.append(f"{kind}: {cpu:.2f} s CPU, {wall:.2f} s wall")
    total = sum(outcomes.values()) + len(untyped)
    for key, n in [(f"hostile artifacts ({label})", total), ("hostile artifacts: untyped errors", len(untyped))]:
        fuzz_tally[key] = fuzz_tally.get(key, 0) + n
    assert not untyped, "\n".join(untyped[:20])
    assert not slow, "\n".join(slow[:20])
    assert cpu_total < 30, cpu_total
    return outcomes, total


def test_hostile_pt2_archives(tiny, tmp_path, fuzz_tally):
    blob, _ = tiny
    path = tmp_path / "mutant.pt2"
    path.write_bytes(blob)
    ug.load_exported(path)  # warm: the first load imports torch's deserializer
    outcomes, total = run_cases(list(pt2_mutants(blob, random.Random(13))), path, fuzz_tally, ".pt2")
    assert total >= 200
    assert outcomes["bit flip: refused"] == 20  # every flipped bit is caught (CRC-32, zip structure)
    assert outcomes["entry repeated: refused"] == 20 and outcomes["entry deleted: refused"] == 25


def test_hostile_onnx_models(tiny, tmp_path, fuzz_tally):
    _, blob = tiny
    path = tmp_path / "mutant.onnx"
    path.write_bytes(blob)
    ug.load_exported(path)
    outcomes, total = run_cases(list(onnx_mutants(blob, random.Random(13))), path, fuzz_tally, ".onnx")
    assert total >= 90
    assert outcomes["random bytes: refused"] == 15
