"""The static cost model equals what torch measures: FLOPs as FlopCounterMode counts them on the
lowered module's real forward, parameters as the module holds them, memory as the outputs are."""

from __future__ import annotations

import math

import pytest
import torch
from drawing_graphs import cond_blocks, cond_unet, unet_pp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from preset_cases import PRESET_CASES, inputs_for
from random_graphs import unet_arguments

import unetgraph as ug


def measured(g: ug.UNetGraph, shapes: dict[str, tuple[int, ...]]) -> tuple[int, int, dict[str, int], dict]:
    """Run the lowered module for real: total FLOPs, parameters, FLOPs per graph node, fx measurements."""
    gm = g.lower().eval()
    xs = inputs_for(g, shapes)
    counter = ug.cost.flop_counter()
    with counter, torch.no_grad():
        gm(*xs)
    per_fx = ug.cost.measure(gm, *xs)
    per_node: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.name in per_fx:
            owner = n.meta["custom"]["unet_node"]
            per_node[owner] = per_node.get(owner, 0) + per_fx[n.name][1]
    return counter.get_total_flops(), sum(p.numel() for p in gm.parameters()), per_node, per_fx


@pytest.mark.parametrize("key", list(PRESET_CASES))
def test_every_preset_flops_and_params_equal_torch(key):
    make, shapes = PRESET_CASES[key]
    g = make()
    r = g.summary(shapes if len(shapes) > 1 else shapes[g.inputs[0]])
    total, params, per_node, _ = measured(g, shapes)
    assert abs(r.flops - total) <= 0.01 * total, (r.flops, total)
    assert r.params == params == g.params
    for row in r:
        assert abs(row.flops - per_node.get(row.name, 0)) <= 0.01 * max(total, 1) / len(r), row.name


def test_padded_classic_unet_exact():
    g = ug.presets.classic_unet(3, 2, padded=True)
    r = g.summary((2, 3, 32, 32))
    total, params, per_node, _ = measured(g, {"x": (2, 3, 32, 32)})
    assert r.flops == total and r.params == params == 31_037_698
    assert {row.name: row.flops for row in r if row.flops} == {k: v for k, v in per_node.items() if v}


def test_classic_unet_at_the_paper_tile():
    r = ug.presets.classic_unet().summary((1, 1, 572, 572))
    gm = ug.presets.classic_unet().lower(device="meta")
    counter = ug.cost.flop_counter()
    with counter:
        gm(torch.empty(1, 1, 572, 572, device="meta"))
    assert r.flops == counter.get_total_flops() == 300_856_848_896
    assert r.macs == r.flops // 2


@st.composite
def graphs(draw):
    try:
        g = ug.unet(draw(st.integers(1, 3)), 2, **draw(unet_arguments()))
        rules = g.valid_sizes()
    except ug.UNetGraphError:  # refused with a typed error: not a graph to count
        assume(False)
    extra = draw(st.integers(0, 2))
    spatial = tuple(r.minimum + extra * r.step for r in rules.axes)
    return g, (draw(st.integers(1, 2)), g[g.inputs[0]].type.channels, *spatial)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(graphs())
def test_random_graphs_flops_params_memory_equal_torch(case):
    g, shape = case
    assume(math.prod(shape) <= 40_000)
    try:
        r = g.summary(shape)
    except ug.ShapeError:  # e.g. a GroupNorm that would see one value per group: refused, typed
        assume(False)
    total, params, per_node, per_fx = measured(g, {"x": shape})
    assert r.flops == total
    assert r.params == params
    assert {row.name: row.flops for row in r if row.flops} == {k: v for k, v in per_node.items() if v}
    gm_names = ug.fx_node_names(g.lower(device="meta"))
    for row in r:
        real = per_fx[gm_names[row.name]][0] if gm_names[row.name] in per_fx else shape
        assert row.output == real
        assert row.activation_bytes == 4 * math.prod(real)


def test_blocks_without_formulas_use_the_meta_default():
    with cond_blocks():
        g = cond_unet(3)
        shapes = {"x": (2, 3, 16, 16), "t": (2, 1)}
        r = g.summary(shapes)
        total, params, per_node, _ = measured(g, shapes)
    assert r.flops == total and r.params == params
    assert r["temb"].flops == per_node["temb"] == 2 * 2 * 1 * 16  # a Linear 1→16 on a batch of 2
    assert r["enc0"].flops == per_node["enc0"] > 0


def test_unet_plus_plus():
    g = unet_pp(4)
    r = g.summary((1, 1, 32, 32))
    total, params, _, _ = measured(g, {"x": (1, 1, 32, 32)})
    assert r.flops == total and r.params == params


class TestMemory:
    def test_peak_by_hand(self):
        # x 16, enc0 32, down1 8, mid 16, up0 32, merge0 64, dec0 32, head 16 floats; enc0 lives until merge0
        g = ug.unet(1, 1, widths=(2, 4))
        r = g.summary((1, 1, 4, 4))
        assert [row.activation_bytes // 4 for row in r] == [16, 32, 8, 16, 32, 64, 32, 16]
        assert r.peak_bytes == 4 * (32 + 32 + 64)  # enc0, up0 and the merge they make
        assert r.activation_bytes == 4 * (32 + 8 + 16 + 32 + 64 + 32 + 16)
        assert r.input_bytes == 64

    def test_dtype_scales_bytes(self):
        g = ug.unet(1, 1, widths=(2, 4))
        half = g.summary((1, 1, 4, 4), dtype=torch.float16)
        assert half.peak_bytes == g.summary((1, 1, 4, 4)).peak_bytes // 2
        assert half.param_bytes == 2 * g.params
        with pytest.raises(ug.SpecError, match=r"torch\.dtype"):
            g.summary((1, 1, 4, 4), dtype="half")


class TestReport:
    def test_table_and_totals(self):
        g = ug.unet(3, 2, widths=(8, 16))
        r = g.summary((1, 3, 32, 32))
        assert len(r) == len(g) and r.params == g.params
        text = str(r)
        assert "enc0" in text and "FLOPs %" in text and "16×16×16" in text
        assert ug.cost.fmt_count(r.flops, "FLOPs") in text.splitlines()[0]
        assert abs(sum(r.share(n) for n in g) - 1) < 1e-9
        assert r.value("mid", "params") == g["mid"].params
        html = r._repr_html_()
        assert html.count("<tr>") == len(g) + 1

    def test_without_a_shape(self):
        g = ug.unet(3, 2, widths=(8, 16))
        r = g.summary()
        assert r.flops is None and r["enc0"].output is None and r.params == g.params
        assert "need an input shape" in str(r) and "16ch@1/2 (2D)" in str(r) and "FLOPs %" not in str(r)
        with pytest.raises(ug.SpecError, match="needs an input shape"):
            r.share("enc0")

    def test_a_failing_user_block_is_named(self):
        from dataclasses import dataclass

        from torch import nn

        @dataclass(frozen=True)
        class Broken(ug.BlockSpec):
            def infer(self, inputs, sources=()):
                return inputs[0]

            def build(self, inputs, output):
                return nn.Conv2d(output.channels + 1, output.channels, 1)  # wrong input channels

        b = ug.GraphBuilder()
        b.input("x", channels=2)
        b.add("odd", Broken(), "encoder", 0, ["x"])
        g = b.build(["odd"])
        assert g.summary()["odd"].params == 3 * 2 + 2  # built and counted: the default
        with pytest.raises(ug.SpecError, match=r"odd \(Broken\): flops failed: RuntimeError"):
            g.summary((1, 2, 4, 4))

    def test_errors(self):
        g = ug.unet(3, 2, widths=(8, 16))
        with pytest.raises(ug.ShapeError, match="multiple of 2"):
            g.summary((1, 3, 33, 33))
        with pytest.raises(ug.UNetGraphError, match="no node 'enc7'"):
            g.summary()["enc7"]
        with pytest.raises(ug.SpecError, match="'flops', 'params' or 'memory'"):
            g.summary().value("enc0", "time")
