"""Property test: random edit sequences on random graphs either keep the graph valid (lint, check,
an exact save → load, lowering that predicts real shapes) or raise a typed error and change nothing."""

import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from random_graphs import unet_arguments
from torch.fx.passes.shape_prop import ShapeProp

import unetgraph as ug
from unetgraph import EdgeKind, Role


@st.composite
def graphs(draw):
    kwargs = draw(unet_arguments(dims=(1, 2), max_depth=4, width=st.sampled_from([2, 4, 6])))
    try:
        return ug.unet(2, draw(st.integers(1, 3)), **kwargs)
    except ug.UNetGraphError:  # refused with a typed error: not a graph to edit
        assume(False)


BLOCKS = [
    ug.ConvBlock(convs=1, groups=1),
    ug.ConvBlock(channels=4, norm="none"),
    ug.ConvBlock(kernel=1, norm="layer"),
    ug.ConvBlock(padding="valid", norm="none"),
    ug.ConvBlock(stride=2, padding=1, norm="none"),
    ug.Sequence(ug.ConvBlock(convs=1, norm="none"), ug.ConvBlock(channels=6, kernel=1, norm="none")),
    ug.Sequence(),
    ug.Down(),
    ug.Up("nearest", conv=False),
    ug.Head(channels=3),
    ug.Merge(),
]


def edits(data, g):
    """One random edit (a function of the graph) and its description."""
    names = list(g)
    inner = [n for n in names if g[n].role is not Role.INPUT]
    node = data.draw(st.sampled_from(inner))
    other = data.draw(st.sampled_from(names))
    block = data.draw(st.sampled_from(BLOCKS))
    skips = g.skips
    skip = data.draw(st.sampled_from(skips)) if skips else None
    # pairs an extra skip could join: an earlier node of the same level into a merge
    pos = {n: i for i, n in enumerate(names)}
    pairs = [
        (s, d.name)
        for d in g.nodes(role="merge")
        for s in names
        if pos[s] < pos[d.name] and g[s].level == d.level and s not in {e.src for e in g.in_edges(d.name)}
    ] or [(other, node)]
    pair = data.draw(st.sampled_from(pairs))
    options = {
        "replace": lambda g: g.replace(node, block),
        "set": lambda g: g.set(
            node,
            **data.draw(
                st.sampled_from(
                    [
                        {"convs": 1},
                        {"channels": 4},
                        {"norm": "none"},
                        {"kernel": 1},
                        {"mode": "add"},
                        {"padding": "valid"},
                    ]
                )
            ),
        ),
        "insert_after": lambda g: g.insert_after(other, block),
        "insert_before": lambda g: g.insert_before(node, block),
        "remove": lambda g: g.remove(node),
        "add_skip": lambda g: g.add_skip(*pair, merge=data.draw(st.sampled_from([None, "concat", "add"]))),
        "remove_skip": lambda g: g.remove_skip(skip.src if skip else other),
        "set_skip": lambda g: (
            g.set_skip(skip.src, skip.dst, merge=data.draw(st.sampled_from(["concat", "add"])))
            if skip
            else g.set_skip(other, node, merge="add")
        ),
        "add_edge": lambda g: g.add_edge(*pair, data.draw(st.sampled_from(list(EdgeKind)))),
        "remove_edge": lambda g: g.remove_edge(*data.draw(st.sampled_from([(e.src, e.dst) for e in g.edges()]))),
        "tap": lambda g: g.tap(other),
        "map_blocks": lambda g: g.map_blocks(
            lambda b: b.with_(norm="instance") if isinstance(b, ug.ConvBlock) else b, level=g[node].level
        ),
    }
    what = data.draw(st.sampled_from(sorted(options)))
    return what, options[what]


def size_for(g):
    rules = ug.valid_sizes(g, exact=False)
    return (2, 2, *(r.sizes(3)[-1] for r in rules.axes))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(graphs(), st.data())
def test_random_edit_sequences(g, data):
    history = []
    for _ in range(data.draw(st.integers(1, 6))):
        if len(g) == len(g.inputs):
            break  # edited down to the identity: nothing left to edit
        what, edit = edits(data, g)
        snapshot, doc = g.to_dict(), ug.dumps(g, "json")
        try:
            new = edit(g)
        except ug.UNetGraphError as e:
            assert e.node is not None or e.edge is not None or str(e).startswith(what), what  # it says where
            assert g.to_dict() == snapshot and ug.dumps(g, "json") == doc, what  # the graph is unchanged
            continue
        history.append(what)
        new.lint()
        shape = size_for(new)
        report = new.check(shape)
        assert set(report.outputs) == set(new.outputs)
        for fmt in ("json", "yaml"):
            assert ug.loads(ug.dumps(new, fmt), fmt) == new, (history, fmt)
        g = new
    gm = g.lower().eval()
    shape = size_for(g)
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.randn(*shape))
    by = {n.name: n for n in gm.graph.nodes}
    report = g.check(shape)
    for node, fx_name in ug.fx_node_names(gm).items():
        assert tuple(by[fx_name].meta["tensor_meta"].shape) == report[node].output, (node, history)
