"""A random edit fuzzer: every public edit, called with random and ill-typed arguments on random
graphs. Shared by tests/test_fuzz.py; ``python tests/fuzz_edits.py N SEED`` runs it alone and
prints what it found."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from random_graphs import DOWNS, UPS

import unetgraph as ug
from unetgraph import EdgeKind, In
from unetgraph.util import paused_gc

P = ug.presets

# -- random graphs ------------------------------------------------------------------------------


def random_graph(rng: random.Random) -> ug.UNetGraph:
    """A small random U-Net (1 to 3 levels, narrow; the parts of tests/random_graphs.py plus pixel
    shuffles), a small diffusion U-Net (timestep, optional class labels) or a UNet++."""
    kind = rng.random()
    if kind < 0.04:
        return rng.choice([P.classic_unet, P.attention_unet, P.residual_unet, P.unet_plus_plus])()
    if kind < 0.15:
        return ug.diffusion_unet(
            2,
            2,
            widths=rng.choice([(4, 8), (8, 8)]),
            layers_per_block=1,
            attention_levels=rng.choice([(), (1,)]),
            mid_attention=rng.random() < 0.5,
            resblock=ug.ResBlock(groups=2),
            attention=ug.SelfAttention(groups=2),
            num_classes=rng.choice([None, 3]),
        )
    if kind < 0.25:
        return ug.nested_unet(1, 2, widths=rng.choice([(4, 8), (4, 8, 8)]), deep_supervision=rng.random() < 0.5)
    depth = rng.choice([1, 2, 2, 3, 3])
    widths = tuple(rng.choice([2, 4, 6, 8]) for _ in range(depth))
    merge = rng.choice(["concat", "add"])
    down = rng.choice([*DOWNS, ug.Down("pixel_unshuffle")])
    up = rng.choice([*UPS, ug.Up("pixel_shuffle")])
    if merge == "add" and up.mode in ("nearest", "linear"):
        up = up.with_(conv=True)
    factor = down.factor
    up = (
        up.with_(factor=factor, kernel=max(factor, up.kernel or 0))
        if up.mode == "transpose"
        else up.with_(factor=factor)
    )
    block = ug.ConvBlock(
        convs=rng.randint(1, 2),
        kernel=rng.choice([1, 3]),
        padding=rng.choice(["same", "same", "valid"]),
        norm=rng.choice(["none", "batch", "group", "layer", "instance"]),
        groups=1,
        act=rng.choice(["relu", "silu"]),
    )
    try:
        return ug.unet(
            rng.randint(1, 3),
            rng.randint(1, 3),
            widths=widths,
            dims=rng.choice([1, 2, 2, 3]) if depth < 3 else rng.choice([1, 2]),
            block=block,
            down=down,
            up=up,
            merge=ug.Merge(merge, crop=block.padding == "valid"),
        )
    except ug.UNetGraphError:
        return ug.unet(1, 1, widths=widths)


# -- random arguments ---------------------------------------------------------------------------

BLOCKS: list[Any] = [
    ug.ConvBlock(convs=1, groups=1),
    ug.ConvBlock(channels=4, norm="none"),
    ug.ConvBlock(kernel=1, norm="layer"),
    ug.ConvBlock(padding="valid", norm="none"),
    ug.ConvBlock(stride=2, padding=1, norm="none"),
    ug.ConvBlock(norm="instance", groups=1),
    ug.Sequence(ug.ConvBlock(convs=1, norm="none"), ug.ConvBlock(channels=6, kernel=1, norm="none")),
    ug.Sequence(),
    ug.Down(),
    ug.Down("pixel_unshuffle"),
    ug.Up("nearest", conv=False),
    ug.Up("transpose", channels=4),
    ug.Head(channels=3),
    ug.Merge(),
    ug.Merge("add"),
    ug.ResBlock(groups=1),
    ug.SelfAttention(groups=1),
    ug.LinearAttention(heads=1, head_dim=4),
    ug.SqueezeExcitation(reduction=2),
    ug.AttentionGate(norm="none"),
    ug.Input(channels=2),
    ug.TimestepEmbedding(dim=4),
]
# ill-typed values a caller might pass anywhere
JUNK: list[Any] = [
    None,
    3,
    -1,
    2.5,
    float("nan"),
    True,
    "",
    "nope",
    "ｅnc0",
    "class",
    "training",
    ["enc0"],
    ("enc0", "dec0"),
    {"enc0": 1},
    b"enc0",
    object(),
    ug.ConvBlock,
    lambda b: b,
    10**30,
]
FIELDS: list[dict[str, Any]] = [
    {"convs": 1},
    {"channels": 4},
    {"channels": 5},
    {"norm": "none"},
    {"norm": "group", "groups": 2},
    {"kernel": 1},
    {"kernel": (1, 3)},
    {"mode": "add"},
    {"mode": "concat"},
    {"padding": "valid"},
    {"stride": 2},
    {"factor": 3},
    {"crop": True},
    {"dropout": 0.5},
    {"dropout": float("nan")},
    {"convs": 10**6},
    {"nope": 1},
    {},
]


def random_edit(rng: random.Random, g: ug.UNetGraph) -> tuple[str, Callable[[], ug.UNetGraph]]:
    """One random call of a public edit (a method of ``g``) and its description. A quarter of the
    calls are ill-typed: each of their arguments is then junk with probability 0.3."""
    ill = rng.random() < 0.25

    def pick(good: list[Any], junk: list[Any] = JUNK) -> Any:
        return rng.choice(junk) if ill and rng.random() < 0.3 else rng.choice(good)

    names = list(g)
    node, other = pick(names), pick(names)
    block = pick(BLOCKS)
    skips = [(e.src, e.dst) for e in g.skips] or [(rng.choice(names), rng.choice(names))]
    skip = (pick([s for s, _ in skips]), pick([d for _, d in skips]))
    kind = pick([*EdgeKind, "data", "skip", "cond"])
    merge = pick([None, "concat", "add", ug.Merge("add"), ug.Merge(crop=True), ug.AttentionGate(norm="none")])
    new_name = pick([None, None, f"n{rng.randint(0, 99)}", "ｅnc9", "training", "class"])
    role = pick([None, None, None, "decoder", "encoder", "head", ug.Role.MERGE, "bottleneck"])
    level = pick([None, None, None, 0, 1, 2])
    fields = pick(FIELDS, [{"convs": 10**6}, {"nope": 1}, {"dropout": float("nan")}, {"kernel": [3] * 5}])
    calls: dict[str, Callable[[], ug.UNetGraph]] = {
        "replace": lambda: g.replace(node, block, role=role, level=level),
        "set": lambda: g.set(node, **fields),
        "map_blocks": lambda: g.map_blocks(
            pick(
                [lambda b: b.with_(**fields) if hasattr(b, "norm") else b, lambda b: b],
                [lambda b: 3, lambda b: ug.ConvBlock(), lambda b: b.nope, 3],
            ),
            **pick(
                [
                    {},
                    {"role": rng.choice(["encoder", "decoder", ["encoder", "merge"]])},
                    {"level": rng.choice([0, 1, [0, 1]])},
                    {"names": rng.choice([[node], [other, node]])},
                    {"where": lambda n: n.level == 0},
                ],
                [{"role": "nope"}, {"level": "x"}, {"level": 2.5}, {"names": node}, {"names": 5}, {"where": 3}],
            ),
        ),
        "insert_after": lambda: g.insert_after(node, block, name=new_name, role=role, level=level),
        "insert_before": lambda: g.insert_before(
            node, block, src=rng.choice([None, other]), name=new_name, role=role, level=level
        ),
        "remove": lambda: g.remove(node, keep=rng.choice([None, None, other])),
        "add input": lambda: g.add(
            pick(["t", "y", "x2"]),
            pick([ug.Input(kind="timestep"), ug.Input(kind="label"), ug.Input(channels=2), ug.Input(kind="context")]),
            [],
            role=pick(["input"], ["head", None]),
        ),
        "add": lambda: g.add(
            pick([f"aux{rng.randint(0, 9)}"]),
            block,
            pick(
                [[node], [node, other], [In(other, EdgeKind.SKIP), node], [node, In(other, EdgeKind.COND)]],
                [[], node, 5, [In(node, "nope")], [(node, None)], [3]],
            ),
            role=pick(["head", "decoder"]),
            level=level,
        ),
        "add_edge": lambda: g.add_edge(other, node, kind, pick([None, None, 0, 1, 5], [-1, "0", 1.0, True])),
        "remove_edge": lambda: g.remove_edge(*rng.choice([(e.src, e.dst) for e in g.edges()] + [(other, node)])),
        "add_skip": lambda: g.add_skip(other, node, merge=merge, name=new_name),
        "remove_skip": lambda: g.remove_skip(skip[0], rng.choice([None, skip[1]])),
        "set_skip": lambda: g.set_skip(*skip, merge=merge, crop=pick([None, True, False], ["yes", 1])),
        "tap": lambda: g.tap(*pick([[other], [other, node]], [[], [rng.choice(JUNK)]])),
        "untap": lambda: g.untap(*pick([list(g.outputs[1:]), [g.outputs[-1]], [other]], [[rng.choice(JUNK)]])),
        "copy": lambda: g.copy(name=pick([None, "Other"])),
    }
    what = rng.choice(sorted(calls))
    return what, calls[what]


_BLOCKED_S = 30.0  # wall time that means a case blocked (CPU time misses a wait)

# -- the run ------------------------------------------------------------------------------------


@dataclass
class Findings:
    """What a run tried and found (``untyped``: errors that are not ``UNetGraphError``)."""

    edits: int = 0
    accepted: int = 0
    lowered: int = 0
    slow: list[tuple[str, float, dict[str, Any]]] = field(default_factory=list)
    untyped: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unlowerable: list[str] = field(default_factory=list)


def lowers_and_runs(g: ug.UNetGraph) -> None:
    """Lower ``g`` on the meta device and run it there at its smallest valid size: every
    layer's real shape rule applies, no memory is touched."""
    gm = g.lower(device="meta")
    spatial = [n for n in g.inputs if g[n].type.dims]
    if len(spatial) > 1:
        return  # valid sizes are defined for one spatial input: lowering is what can be checked
    size = None
    if len(spatial) == 1:
        rules = ug.valid_sizes(g, exact=False)  # what an edit promises: some size that check accepts
        size = tuple(r.minimum for r in rules.axes)
    inputs = ug.example_inputs(g, batch=2, size=size) if size is not None else ug.example_inputs(g, batch=2)
    with torch.no_grad():
        gm(*(t.to("meta") for t in inputs.values()))


def run(n: int, seed: int, *, lower_every: int = 10, chain: int = 12, slow_s: float = 1.0) -> Findings:
    """``n`` random edits from ``seed``: chains of ``chain`` edits on fresh random graphs, each
    accepted result replacing the graph; every ``lower_every``-th accepted result is lowered
    and run on the meta device."""
    rng = random.Random(seed)
    out = Findings()
    g = random_graph(rng)
    while out.edits < n:
        if out.edits % chain == 0:
            g = random_graph(rng)
        what, call = random_edit(rng, g)
        snapshot = g.to_dict()
        # the cyclic collector's pauses grow with the whole test session's heap, not with the
        # case: it runs between cases, outside the timed window
        with paused_gc():
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                new = call()
            except ug.UNetGraphError:
                new = None
            except Exception as e:  # what the fuzzer looks for
                out.untyped.append(f"{what}: {type(e).__name__}: {str(e)[:200]}")
                new = None
            took, wall = time.thread_time() - cpu, time.perf_counter() - start
        out.edits += 1
        if took > slow_s or wall > _BLOCKED_S:
            out.slow.append((what, took, snapshot))
        if g.to_dict() != snapshot:  # an edit never changes the graph it was called on
            out.changed.append(what)
        if new is None:
            continue
        out.accepted += 1
        if out.accepted % lower_every == 0:
            out.lowered += 1
            try:
                lowers_and_runs(new)
            except Exception as e:
                out.unlowerable.append(f"{what} -> {type(e).__name__}: {str(e)[:300]}\n{ug.dumps(new, 'json')}")
        g = new if len(new) < 60 else g
    return out


if __name__ == "__main__":
    import sys
    from collections import Counter

    count, seed = int(sys.argv[1]), int(sys.argv[2])
    t = time.perf_counter()
    f = run(count, seed, lower_every=int(sys.argv[3]) if len(sys.argv) > 3 else 10)
    print(f"{f.edits} edits, {f.accepted} accepted, {f.lowered} lowered in {time.perf_counter() - t:.1f} s")
    print("slow:", [(w, t) for w, t, _ in f.slow], "changed:", f.changed[:5])
    for w, t, doc in f.slow[:3]:
        print(w, t, doc)
    for k, v in Counter(u.split(":")[0] + ":" + u.split(":")[1] for u in f.untyped).most_common():
        print(v, k)
    for u in sorted(set(f.untyped))[:40]:
        print("  ", u)
    print("unlowerable", len(f.unlowerable))
    for u in f.unlowerable[:8]:
        print("  ", u.split("\n")[0])
