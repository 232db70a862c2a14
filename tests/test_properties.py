"""Property test: for random configurations the checker raises a typed error before anything
runs, or predicts exactly the shapes the lowered module produces at every node."""

import math

import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from random_graphs import unet_arguments
from torch.fx.passes.shape_prop import ShapeProp

import unetgraph as ug


@st.composite
def configs(draw):
    g_args = draw(unet_arguments(width=st.integers(1, 4)))
    max_side = {1: 200, 2: 40, 3: 14}[g_args["dims"]]
    size = tuple(draw(st.lists(st.integers(1, max_side), min_size=g_args["dims"], max_size=g_args["dims"])))
    return g_args, (draw(st.integers(1, 2)), draw(st.integers(1, 3)), *size)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_checker_predicts_or_refuses(config):
    g_args, shape = config
    try:
        g = ug.unet(shape[1], 2, **g_args)
    except ug.UNetGraphError:
        return  # refused at build time with a typed error: fine
    try:
        report = g.check(shape)
    except ug.ShapeError:
        if g_args["merge"].mode == "concat" and g_args["merge"].crop is False:
            gm = g.lower(guard=False).eval()
            try:
                with torch.no_grad():
                    gm(torch.randn(*shape))
            except (RuntimeError, ValueError):  # what torch raises deep inside forward
                return
            raise AssertionError(f"checker refused {shape} but the model ran") from None
        return
    assume(math.prod(report[n].output[0] * math.prod(report[n].output[1:]) for n in ["head"]) > 0)
    gm = g.lower(guard=False).eval()  # the guard's sizes hold at batch 1: stricter
    x = torch.randn(*shape)
    with torch.no_grad():
        ShapeProp(gm).propagate(x)
    by_name = {n.name: n for n in gm.graph.nodes}
    for node, fx_name in ug.fx_node_names(gm).items():
        assert tuple(by_name[fx_name].meta["tensor_meta"].shape) == report[node].output, (node, g_args, shape)
    # and valid_sizes agrees with check at this size
    rules = g.valid_sizes()
    if rules.contains(shape[2:]):
        assert not [n for n in report.notes if "drops trailing" in n]
