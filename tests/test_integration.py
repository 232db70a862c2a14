"""Every preset through every stage that reads a graph: the stages are built by different
modules, and a graph that works in one must work in all (conditioned inputs, several outputs,
3D, valid convolutions)."""

import pytest
import torch
from preset_cases import PRESET_CASES, inputs_for

import unetgraph as ug


@pytest.mark.parametrize("key", list(PRESET_CASES))
def test_preset_saves_draws_costs_optimizes_and_ejects(key, tmp_path):
    make, shapes = PRESET_CASES[key]
    g = make()
    assert ug.load(g.save(tmp_path / "g.yaml")) == g
    assert ug.diff(g, g.copy()).summary().endswith("(+0)") or not ug.diff(g, g.copy())
    assert g.to_dot("levels", input_shape=shapes).startswith("digraph")
    assert g.summary(shapes).params == g.params
    gm = g.lower().eval()
    xs = inputs_for(g, shapes)
    fast, _ = ug.optimize(gm)
    with torch.no_grad():
        want, got = gm(*xs), fast(*xs)
    for a, b in zip(*(v.values() if isinstance(v, dict) else [v] for v in (want, got))):
        assert torch.allclose(a, b, atol=1e-4 * max(1.0, a.abs().max().item()))
    source = ug.eject_source(fast)  # verifies the ejected module against the GraphModule
    assert "unetgraph" not in source


@pytest.mark.parametrize("key", ["classic", "ddpm32", "unet_pp_ds"])
def test_preset_exports_and_reloads(key, tmp_path):
    make, _ = PRESET_CASES[key]
    g = make()
    gm = g.lower().eval()
    loaded = ug.load_exported(ug.export(gm, tmp_path / "m.pt2", progress=False))
    assert loaded.graph == g
    xs = ug.dynamic.trace_inputs(g, batch=2)  # a size the dynamic artifact serves
    with torch.no_grad():
        want, got = gm(*xs), loaded(*xs)
    for k in want if isinstance(want, dict) else [None]:
        a, b = (want[k], got[k]) if k else (want, got)
        assert torch.allclose(a, b, atol=1e-4 * max(1.0, a.abs().max().item()))
