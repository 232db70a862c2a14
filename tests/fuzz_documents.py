"""A document fuzzer: mutations of real preset documents (type changes, deletions, huge numbers,
NaN, deep nesting, repeated keys, YAML tags and aliases, random bytes) read by ``ug.loads`` and
``UNetGraph.from_dict``. Shared by tests/test_fuzz.py; ``python tests/fuzz_documents.py N SEED``
runs it alone and prints what it found."""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Callable

import yaml

import unetgraph as ug
from unetgraph.util import paused_gc

_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

P = ug.presets


@cache
def sources() -> tuple[dict[str, Any], ...]:
    """The documents that get mutated: small versions of the presets and builders, covering every
    block type the library registers."""
    graphs = [
        P.classic_unet(),
        P.attention_unet(),
        P.residual_unet(),
        P.unet3d(1, 2),
        P.unet_plus_plus(deep_supervision=True),
        P.nnunet_plain(1, 2, (4, 8, 16), [(1, 3, 3), 3, 3], [1, (1, 2, 2), 2], deep_supervision=True),
        P.ddpm_unet(32),
        ug.unet(2, 3, widths=(4, 8, 8), dims=1, up="pixel_shuffle", down="pixel_unshuffle", merge="add"),
        ug.diffusion_unet(
            3,
            3,
            widths=(8, 16),
            layers_per_block=1,
            resblock=ug.ResBlock(groups=4, cond="scale_shift"),
            attention=ug.LinearAttention(heads=2, head_dim=4),
            num_classes=5,
        ),
        ug.diffusion_unet(
            3,
            3,
            widths=(8, 16),
            layers_per_block=1,
            resblock=ug.ResBlock(groups=4),
            attention=ug.SelfAttention(groups=4),
            cross_attention=ug.CrossAttention(groups=4),
            context_channels=6,
        ),
        ug.unet(1, 1, widths=(4, 8, 16))
        .insert_after("enc1", ug.SqueezeExcitation(reduction=2))
        .replace("mid", ug.Sequence(ug.ConvBlock(channels=8), ug.Sequence(ug.ConvBlock(convs=1)))),
    ]
    return tuple(g.to_dict() for g in graphs)


@cache
def _json_text(i: int) -> str:
    return json.dumps(sources()[i])


def _fresh(i: int) -> dict[str, Any]:
    """A private copy of source ``i`` (parsing its JSON is faster than ``copy.deepcopy``)."""
    return json.loads(_json_text(i))


# -- values ----------------------------------------------------------------------------------------

HUGE = [10**3, 10**9, 2**31, 2**63 - 1, 2**63, 2**64, 10**30, 10**40, -(10**20), 1e308, 1e-308, -1e308, 10**39 + 7]
ODD = [
    float("nan"),
    float("inf"),
    -float("inf"),
    None,
    True,
    False,
    0,
    -1,
    0.5,
    "",
    "x",
    "ｅnc0",
    "class",
    "training",
    "enc0 ",
    "a.b",
    "\x00",
    [],
    {},
    [1, 2],
    [[1]],
    {"type": "ConvBlock"},
    {"type": "Nope"},
    {"type": ["ConvBlock"]},
    {"fraction": "1/3"},
    {"fraction": "1e999999999"},
    {"fraction": "1/0"},
    {"fraction": 10**50},
    {"a": 1, "b": 2},
    "x" * 10_000,
    list(range(1000)),
]


def _random_value(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.35:
        return copy.deepcopy(rng.choice(ODD))
    if r < 0.6:
        return rng.choice(HUGE)
    if r < 0.8:
        return _deep(rng, rng.choice([20, 33, 100, 1500]))
    return rng.choice([rng.randint(-5, 300), rng.uniform(-1, 10), rng.choice(ug.block_names())])


def _deep(rng: random.Random, depth: int) -> Any:
    value: Any = rng.choice([1, "x", None])
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else {"k": value}
    return value


# -- structured mutations --------------------------------------------------------------------------


def _places(doc: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) in the document."""
    out = []
    stack = [doc]
    while stack:
        c = stack.pop()
        items = c.items() if isinstance(c, dict) else enumerate(c) if isinstance(c, list) else ()
        for k, v in items:
            out.append((c, k))
            if isinstance(v, (dict, list)):
                stack.append(v)
    return out


def _mutate_tree(rng: random.Random, i: int) -> dict[str, Any]:
    doc = _fresh(i)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        places = _places(doc)
        container, key = rng.choice(places)
        op = rng.random()
        if op < 0.45:  # a value of another type (or a huge number, a NaN, a deep nest)
            container[key] = _random_value(rng)
        elif op < 0.6:  # a deletion
            del container[key]
        elif op < 0.7 and isinstance(container, dict):  # a new key
            container[rng.choice(["extra", "tpye", "Type", "level", "port", "kind", "blocks", 3])] = _random_value(rng)
        elif op < 0.8:  # a block swapped for another registered type, fields kept
            blocks = [c for c, k in places if isinstance(c, dict) and k == "type"]
            if blocks:
                rng.choice(blocks)["type"] = rng.choice(ug.block_names())
        elif op < 0.9:  # an edge pointing elsewhere
            edges = doc.get("edges") if isinstance(doc.get("edges"), list) else []
            if edges and isinstance(edges[0], dict):
                e = rng.choice(edges)
                if isinstance(e, dict):
                    nodes = doc.get("nodes")  # an earlier mutation may have made it anything
                    names = list(nodes)[:40] if isinstance(nodes, dict) and nodes else ["x"]
                    e[rng.choice(["src", "dst", "port", "kind"])] = rng.choice([*names, 0, 7, -1, "skip", "cond", None])
        elif isinstance(container, dict) and isinstance(doc.get("nodes"), dict):  # a node renamed
            nodes = doc["nodes"]
            if nodes:
                old = rng.choice(list(nodes))
                nodes[rng.choice(["ｅnc0", "class", "training", "meta", "_x", "x y", "self", "enc0", "forward"])] = (
                    nodes.pop(old)
                )
    return doc


# -- text mutations --------------------------------------------------------------------------------


def _json_with_repeats(rng: random.Random, doc: Any) -> str:
    """JSON text of ``doc`` in which one mapping repeats a key (json.dumps cannot write that)."""
    mappings = [c for c, _ in _places(doc) if isinstance(c, dict)] + [doc]
    target = rng.choice(mappings)

    def enc(v: Any) -> str:
        if isinstance(v, dict):
            pairs = list(v.items())
            if v is target and pairs:
                pairs.insert(rng.randrange(len(pairs) + 1), rng.choice(pairs))
            return "{" + ", ".join(f"{json.dumps(str(k))}: {enc(x)}" for k, x in pairs) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(enc(x) for x in v) + "]"
        return json.dumps(v)

    return enc(doc)


_TAGS = [
    "!!python/object/apply:os.system ['touch /tmp/unetgraph-fuzz-ran']",
    "!!python/name:os.system",
    "!!binary aGVsbG8=",
    "!!timestamp 2001-12-14",
    "!!set {a, b}",
    "!!omap [a: 1, b: 2]",
    "!!pairs [a: 1]",
    "!!float nan",
    "!!int 0x7fffffffffffffffffffffffffffffffffffffffff",
    "!!str 3",
    "!custom x",
    "&a [1, 2]",
    "*a",
    "*undefined",
    "&r [*r]",
    "{<<: {a: 1}, b: 2}",
    "2001-12-14",
    "0b1010",
    "0o17",
    "190:20:30",
    ".nan",
    "-.inf",
    "~",
    "1_000",
    "'unclosed",
    "[1, 2",
]


def _yaml_mutation(rng: random.Random, text: str) -> str:
    lines = text.split("\n")
    spots = [i for i, line in enumerate(lines) if ": " in line]
    for _ in range(rng.choice([1, 1, 2])):
        i = rng.choice(spots)
        key = lines[i].split(": ", 1)[0]
        lines[i] = f"{key}: {rng.choice(_TAGS)}"
    if rng.random() < 0.2:  # an alias bomb: every level doubles
        bomb = ["bomb0: &b0 [x, x, x, x, x, x, x, x, x, x]"]
        bomb += [f"bomb{k}: &b{k} [*b{k - 1}, *b{k - 1}, *b{k - 1}, *b{k - 1}, *b{k - 1}]" for k in range(1, 12)]
        lines = bomb + lines
    return "\n".join(lines)


def _bytes_mutation(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    op = rng.random()
    if op < 0.3:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif op < 0.5:
        return bytes(b[: rng.randrange(len(b))])
    elif op < 0.7:
        at = rng.randrange(len(b))
        b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
    elif op < 0.85:
        at = rng.randrange(len(b))
        del b[at : at + rng.randint(1, 50)]
    else:
        b[:0] = rng.choice([b"\xef\xbb\xbf", b"\xff\xfe", b"\x00", b"---\n", b"%YAML 1.1\n---\n"])
    return bytes(b)


_BLOCKED_S = 30.0  # wall time that means a case blocked (CPU time misses a wait)

# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Findings:
    documents: int = 0
    accepted: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    slow: list[tuple[str, float]] = field(default_factory=list)
    untyped: list[str] = field(default_factory=list)


def mutated(rng: random.Random) -> tuple[str, Callable[[], ug.UNetGraph]]:
    """One mutated document and how it is read."""
    i = rng.randrange(len(sources()))
    r = rng.random()
    if r < 0.45:
        m = _mutate_tree(rng, i)
        return "tree", lambda: ug.UNetGraph.from_dict(m)
    if r < 0.55:
        m = _mutate_tree(rng, i)
        fmt = rng.choice(["json", "yaml"])
        try:
            text = json.dumps(m) if fmt == "json" else yaml.dump(m, Dumper=_DUMPER)
        except (ValueError, RecursionError, yaml.YAMLError):  # too deep to write: read the original
            text = _json_text(i)
        return f"tree-{fmt}", lambda: ug.loads(text, fmt)
    if r < 0.65:
        text = _json_with_repeats(rng, _fresh(i))
        fmt = rng.choice(["json", "yaml"])  # flow-style YAML reads JSON text
        return "repeated-keys", lambda: ug.loads(text, fmt)
    if r < 0.8:
        text = _yaml_mutation(rng, _yaml_text(i))
        return "yaml-tags", lambda: ug.loads(text, "yaml")
    fmt = rng.choice(["json", "json", "yaml"])
    data = _bytes_mutation(rng, (_json_text(i) if fmt == "json" else _yaml_text(i)).encode())
    return "bytes", lambda: ug.loads(data, fmt)


@cache
def _yaml_text(i: int) -> str:
    return yaml.dump(sources()[i], Dumper=_DUMPER, sort_keys=False, default_flow_style=None)


def run(n: int, seed: int, *, slow_s: float = 1.0) -> Findings:
    """Read ``n`` mutated documents from ``seed``; count what was accepted, slow or untyped."""
    rng = random.Random(seed)
    out = Findings()
    for _ in range(n):
        kind, read = mutated(rng)
        out.kinds[kind] = out.kinds.get(kind, 0) + 1
        # the cyclic collector's pauses grow with the whole test session's heap, not with the
        # case: it runs between cases, outside the timed window
        with paused_gc():
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                g = read()
                out.accepted += 1
                assert ug.loads(ug.dumps(g, "json"), "json") == g  # what is accepted saves and reads back
            except ug.UNetGraphError:
                pass
            except Exception as e:  # what the fuzzer looks for
                out.untyped.append(f"{kind}: {type(e).__name__}: {str(e)[:300]}")
            took, wall = time.thread_time() - cpu, time.perf_counter() - start
        if took > slow_s or wall > _BLOCKED_S:
            out.slow.append((kind, took))
        out.documents += 1
    return out


if __name__ == "__main__":
    import sys
    from collections import Counter

    count, seed = int(sys.argv[1]), int(sys.argv[2])
    t = time.perf_counter()
    f = run(count, seed)
    print(f"{f.documents} documents, {f.accepted} accepted in {time.perf_counter() - t:.1f} s; {f.kinds}")
    print("slow:", f.slow[:10])
    for k, v in Counter(u.split(": ")[0] + ": " + u.split(": ")[1] for u in f.untyped).most_common():
        print(v, k)
    for u in sorted(set(f.untyped))[:40]:
        print("  ", u)
