"""Drawing: the real `dot` lays the graph out as a U (asserted on its coordinates), labels,
annotations, heat, marks, detail levels, notebook display, files, and life without `dot`."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace

import graphviz
import pytest
import torch
from drawing_graphs import cond_blocks, cond_unet, unet_pp, without_skip

import unetgraph as ug
from unetgraph.render.engine import run_dot


class Drawn:
    """A drawing laid out by the real `dot -Tjson`: node centres and edges in their own direction."""

    def __init__(self, source: str) -> None:
        self.source = source
        data = json.loads(run_dot(source, "json"))
        self.pos: dict[str, tuple[float, float]] = {}
        self.attrs: dict[str, dict] = {}
        names = {}
        for o in data["objects"]:
            if "pos" in o and "nodes" not in o:
                x, y = map(float, o["pos"].split(","))
                self.pos[o["name"]] = (x, y)
                self.attrs[o["name"]] = o
            names[o["_gvid"]] = o["name"]
        self.edges = []
        for e in data.get("edges", []):
            if "id" in e:  # drawn edges carry their direction in the graph as "src:dst"
                src, dst = e["id"].split(":")
                self.edges.append((src, dst, e["class"], e))

    def x(self, n: str) -> float:
        return self.pos[n][0]

    def y(self, n: str) -> float:  # graphviz: larger y is higher up
        return self.pos[n][1]

    def kind(self, kind: str) -> set[tuple[str, str]]:
        return {(s, d) for s, d, c, _ in self.edges if c.split()[0] == kind}


def assert_u(g: ug.UNetGraph, d: Drawn) -> None:
    """The U, at node level: skips run straight across from left to right, every encoder is
    above the deeper ones, every decoder above the deeper ones, the bottleneck is lowest."""
    assert d.kind("skip") == {(e.src, e.dst) for e in g.skips}
    for e in g.skips:
        assert d.y(e.src) == d.y(e.dst), e.name
        assert d.x(e.src) < d.x(e.dst), e.name
    for role in ("encoder", "decoder", "merge"):
        nodes = g.nodes(role=role)
        for a in nodes:
            for b in nodes:
                if a.level < b.level:
                    assert d.y(a.name) > d.y(b.name), (a.name, b.name)
    for mid in g.nodes(role="bottleneck"):
        assert all(d.y(mid.name) < d.y(n) for n in g if n != mid.name), mid.name
    for enc in g.nodes(role="encoder"):  # the arms: encoders left of the decoders of their level
        for dec in g.nodes(role="decoder", level=enc.level):
            assert d.x(enc.name) < d.x(dec.name), (enc.name, dec.name)


class TestGeometry:
    @pytest.mark.parametrize("depth", range(1, 9))
    def test_blocks_form_a_u_for_1_to_8_levels(self, depth):
        g = ug.unet(3, 2, widths=tuple(4 * 2**i for i in range(depth)))
        d = Drawn(g.to_dot("blocks"))
        assert_u(g, d)
        # input top-left, output top-right
        assert d.x("x") < d.x("head")
        assert d.y("head") >= max(d.y(n) for n in g if n != "head")

    @pytest.mark.parametrize("depth", range(1, 9))
    def test_levels_one_row_per_level(self, depth):
        g = ug.unet(3, 2, widths=tuple(4 * 2**i for i in range(depth)))
        d = Drawn(g.to_dot("levels"))
        bottom = f"bottleneck@{depth - 1}"
        for i in range(depth - 1):
            enc, dec = f"encoder@{i}", f"decoder@{i}"
            assert d.y(enc) == d.y(dec), i  # side by side
            assert d.x(enc) < d.x(dec), i
            assert d.y(enc) > d.y(bottom)
            if i:
                assert d.y(f"encoder@{i - 1}") > d.y(enc)  # deeper is lower
        assert d.kind("skip") == {(f"encoder@{i}", f"decoder@{i}") for i in range(depth - 1)}
        assert d.y(bottom) == min(y for _, y in d.pos.values())
        assert len(d.pos) == 2 * (depth - 1) + 3  # x, head, the level boxes and the bottleneck

    @pytest.mark.parametrize("depth", [2, 4])
    def test_3d(self, depth):
        g = ug.unet(1, 2, widths=tuple(4 * 2**i for i in range(depth)), dims=3)
        assert_u(g, Drawn(g.to_dot("blocks", input_shape=(1, 1, 16, 16, 16))))
        d = Drawn(g.to_dot("levels"))
        assert d.y("encoder@0") == d.y("decoder@0")

    def test_a_level_without_a_skip_still_reads_across(self):
        g = without_skip(ug.unet(3, 2, widths=(4, 8, 16, 32)), level=1)
        assert len(g.skips) == 2
        d = Drawn(g.to_dot("blocks"))
        assert_u(g, d)
        assert d.y("enc1") == d.y("merge1") and d.x("enc1") < d.x("merge1")
        assert d.y("enc0") > d.y("enc1") > d.y("enc2")

    def test_unet_plus_plus_rows(self):
        depth = 4
        g = unet_pp(depth)
        d = Drawn(g.to_dot("blocks"))
        assert d.kind("skip") == {(e.src, e.dst) for e in g.skips}
        for i in range(depth):
            row = [f"x{i}_{j}" for j in range(depth - i)]
            # every node of a level that feeds a skip sits on the level's row, left to right
            feeding = [n for n in row if any(e.src == n for e in g.skips)]
            assert {d.y(n) for n in feeding} <= {d.y(f"x{i}_0")}
            assert [d.x(n) for n in feeding] == sorted(d.x(n) for n in feeding)
            if i:
                assert d.y(f"x{i - 1}_0") > d.y(f"x{i}_0")
        assert d.y(f"x{depth - 1}_0") == min(y for _, y in d.pos.values())
        for e in g.skips:
            assert d.y(e.src) == d.y(e.dst) and d.x(e.src) < d.x(e.dst)

    def test_conditioning_does_not_bend_the_layout(self):
        with cond_blocks():
            g = cond_unet(4)
            s = ug.render.scene(g, "blocks")
            with_cond = Drawn(ug.render.to_dot(s))
            plain = Drawn(ug.render.to_dot(replace(s, links=tuple(ln for ln in s.links if ln.kind.value != "cond"))))
        assert_u(g, with_cond)
        cond = [e for e in with_cond.edges if e[2] == "cond"]
        assert {(s_, d_) for s_, d_, _, _ in cond} == {(e.src, e.dst) for e in g.edges("cond")}
        assert all(e[3]["constraint"] == "false" for e in cond) and all(e[3]["style"] == "dotted" for e in cond)
        u_nodes = [n for n in g if g[n].role.value not in ("embedding",) and n != "t"]

        def rows(d: Drawn) -> dict[str, int]:
            ys = sorted({d.y(n) for n in u_nodes}, reverse=True)
            return {n: ys.index(d.y(n)) for n in u_nodes}

        assert rows(with_cond) == rows(plain)

    def test_lr_direction_turns_the_u_on_its_side(self):
        g = ug.unet(3, 2, widths=(4, 8, 16))
        d = Drawn(g.to_dot("blocks", direction="LR"))
        for e in g.skips:
            assert d.x(e.src) == d.x(e.dst) and d.y(e.src) > d.y(e.dst)
        assert d.x("mid") == max(x for x, _ in d.pos.values())


class TestLabels:
    def test_block_label_with_shape_params_flops(self):
        g = ug.unet(3, 2, widths=(64, 128, 256))
        a = Drawn(g.to_dot(input_shape=(1, 3, 256, 256))).attrs["enc1"]["label"]
        assert "<b>enc1</b> · 2×conv3 batch relu" in a
        report = g.summary((1, 3, 256, 256))
        assert "128×128×128" in a
        assert f"{ug.cost.fmt_count(report['enc1'].params)} params" in a
        assert ug.cost.fmt_count(report["enc1"].flops, "FLOPs") in a
        title = json.loads(run_dot(g.to_dot(input_shape=(1, 3, 256, 256)), "json"))["label"]
        assert "1×3×256×256 → 1×2×256×256" in title and "params" in title

    def test_without_a_shape_labels_show_the_type(self):
        g = ug.unet(3, 2, widths=(8, 16, 32))
        src = g.to_dot()
        assert "16ch@1/2" in src and "FLOPs" not in src.split("label=")[2]

    def test_annotate_chooses_what_labels_say(self):
        g = ug.unet(3, 2, widths=(8, 16))
        only_mem = g.to_dot(input_shape=(2, 3, 32, 32), annotate=("memory",))
        assert "64.0 KiB" in only_mem  # enc0: 2·8·32·32 floats
        assert "params" not in only_mem.split("\n", 4)[4]
        with pytest.raises(ug.RenderError, match="needs an input shape"):
            g.to_dot(annotate=("flops",))
        with pytest.raises(ug.RenderError, match="unknown 'speed'"):
            g.to_dot(annotate=("speed",))

    @pytest.mark.parametrize(
        ("options", "match"),
        [
            ({"detail": "modules"}, "detail: expected one of"),
            ({"direction": "up"}, "direction: expected one of"),
            ({"heat": "time"}, "heat: expected one of"),
            ({"heat": "flops"}, "needs an input shape"),
        ],
    )
    def test_bad_options_are_typed_errors(self, options, match):
        with pytest.raises(ug.RenderError, match=match):
            ug.unet(3, 2, widths=(8, 16)).to_dot(**options)

    def test_skips_are_styled_by_merge_kind(self):
        concat = Drawn(ug.unet(3, 2, widths=(8, 16), merge="concat").to_dot())
        add = Drawn(ug.unet(3, 2, widths=(8, 16), merge="add").to_dot())
        (c,) = [e[3] for e in concat.edges if e[2].startswith("skip")]
        (a,) = [e[3] for e in add.edges if e[2].startswith("skip")]
        assert c["class"] == "skip concat" and a["class"] == "skip add"
        assert (c["color"], c["style"]) != (a["color"], a["style"])

    def test_colours_by_role_and_a_legend(self):
        d = Drawn(ug.unet(3, 2, widths=(8, 16)).to_dot())
        fills = {n: d.attrs[n]["fillcolor"] for n in d.pos}
        assert fills["enc0"] != fills["dec0"] != fills["mid"]
        legend = json.loads(run_dot(d.source, "json"))["label"]
        for word in ("encoder", "decoder", "bottleneck", "skip (concat)", "data"):
            assert word in legend
        no_legend = json.loads(run_dot(ug.unet(3, 2, widths=(8, 16)).to_dot(legend=False), "json"))["label"]
        assert "encoder" not in no_legend


class TestHeatAndMarks:
    def test_heat_colours_by_share(self):
        g = ug.unet(3, 2, widths=(8, 16, 32))
        r = g.summary((1, 3, 64, 64))
        d = Drawn(g.to_dot(input_shape=(1, 3, 64, 64), heat="flops"))
        hottest = max(r, key=lambda row: row.flops).name
        assert d.attrs[hottest]["fillcolor"] == "#b30000"
        assert d.attrs["merge0"]["fillcolor"] == "#fff7ec"  # no FLOPs
        assert f"{100 * r.share(hottest):.1f}% of FLOPs" in d.attrs[hottest]["label"]
        p = Drawn(g.to_dot(heat="params"))
        assert p.attrs["mid"]["fillcolor"] == "#b30000"  # the bottleneck holds the most weights

    def test_marks_for_a_diff(self):
        g = ug.unet(3, 2, widths=(8, 16, 32))
        marks = {"enc1": "changed", "dec0": "added", ("enc0", "merge0"): "removed"}
        d = Drawn(g.to_dot(marks=marks))
        assert d.attrs["enc1"]["color"] == "#ef6c00" and "~ " in d.attrs["enc1"]["label"]
        assert d.attrs["dec0"]["color"] == "#2e7d32" and "+ " in d.attrs["dec0"]["label"]
        (skip,) = [e[3] for e in d.edges if e[0] == "enc0" and e[1] == "merge0"]
        assert skip["color"] == "#c62828" and skip["style"] == "dashed"
        assert d.attrs["enc0"]["color"] != "#ef6c00"
        legend = json.loads(run_dot(d.source, "json"))["label"]
        assert "added" in legend and "removed" in legend and "changed" in legend
        levels = Drawn(g.to_dot("levels", marks={"dec0": "added"}))
        assert levels.attrs["decoder@0"]["color"] == "#ef6c00"  # a level with an added block changed

    def test_bad_marks(self):
        g = ug.unet(3, 2, widths=(8, 16))
        with pytest.raises(ug.NodeNotFoundError, match="no node 'enc9'"):
            g.to_dot(marks={"enc9": "added"})
        with pytest.raises(ug.NodeNotFoundError, match="no edge mid→head"):
            g.to_dot(marks={("mid", "head"): "added"})
        with pytest.raises(ug.RenderError, match="expected one of 'added'"):
            g.to_dot(marks={"enc0": "new"})

    def test_union_draws_removed_parts_in_place(self):
        old = ug.unet(3, 2, widths=(8, 16, 32))
        new = ug.unet(3, 2, widths=(8, 16))
        s = ug.render.scene(new).union(ug.render.scene(old), mark="removed")
        gone = {it.id for it in s.items if it.mark == "removed"}
        assert gone == set(old) - set(new)
        d = Drawn(ug.render.to_dot(s))
        assert d.y("enc1") == d.y("merge1") < d.y("enc0")  # the removed level still sits in the U
        assert d.attrs["enc1"]["style"] == "rounded,filled,dashed"


class TestDetail:
    def test_layers_frame_each_block(self):
        g = ug.unet(3, 2, widths=(8, 16))
        src = g.to_dot("layers", input_shape=(1, 3, 32, 32))
        data = json.loads(run_dot(src, "json"))
        clusters = {o["name"]: o for o in data["objects"] if o["name"].startswith("cluster_")}
        assert set(clusters) == {"cluster_enc0", "cluster_mid", "cluster_dec0"}
        names = {o["_gvid"]: o["name"] for o in data["objects"]}
        enc0 = {names[i] for i in clusters["cluster_enc0"]["nodes"]}
        assert enc0 == {"enc0_conv0", "enc0_norm0", "enc0_act0", "enc0_conv1", "enc0_norm1", "enc0"}
        gm = g.lower(device="meta")
        layers = [n.name for n in gm.graph.nodes if n.op.startswith("call") and not n.name.endswith("_guard")]
        d = Drawn(src)
        assert set(layers) | {"x"} == set(d.pos)
        assert "Conv2d 3×3 3→8" in d.attrs["enc0_conv0"]["label"] and "8×32×32" in d.attrs["enc0_conv0"]["label"]
        assert d.kind("skip") == {("enc0", "merge0")}  # from the block's last layer into the cat
        assert d.y("enc0") == d.y("merge0")
        assert d.y("enc0_conv0") > d.y("enc0")  # the encoder's layers run down
        assert d.y("dec0_conv0") < d.y("dec0")  # the decoder's run up

    def test_layers_heat(self):
        g = ug.unet(3, 2, widths=(8, 16))
        shape = (1, 3, 32, 32)
        d = Drawn(g.to_dot("layers", input_shape=shape, heat="flops"))
        measured = ug.cost.measure(g.lower(device="meta", guard=False), torch.empty(shape, device="meta"))
        hottest = max(measured, key=lambda n: measured[n][1])
        assert d.attrs[hottest]["fillcolor"] == "#b30000"
        assert d.attrs["enc0_act0"]["fillcolor"] == "#fff7ec"

    def test_layers_of_a_conditioned_graph(self):
        with cond_blocks():
            g = cond_unet(3)
            d = Drawn(g.to_dot("layers", input_shape={"x": (1, 3, 16, 16), "t": (1, 1)}))
        assert ("temb", "enc0_proj") in d.kind("cond")
        assert d.y("x") > d.y("mid_conv")

    def test_levels_collapse_and_sum(self):
        g = ug.unet(3, 2, widths=(8, 16, 32))
        r = g.summary((1, 3, 32, 32))
        s = ug.render.scene(g, "levels", input_shape=(1, 3, 32, 32))
        by_id = {it.id: it for it in s.items}
        assert by_id["decoder@1"].members == ("up1", "merge1", "dec1")
        assert by_id["bottleneck@2"].members == ("down2", "mid")
        assert by_id["decoder@1"].text == "transpose ×2 → concat → 2×conv3 batch relu"
        flops = sum(r[m].flops for m in ("up1", "merge1", "dec1"))
        assert ug.cost.fmt_count(flops, "FLOPs") in by_id["decoder@1"].notes
        assert "16×16×16" in by_id["decoder@1"].notes

    def test_a_lone_node_named_like_a_collapsed_box_keeps_its_own_box(self):
        # a second head named decoder_0 was merged into the collapsed box of decoder level 0
        g = ug.unet(3, 2, widths=(4, 8)).add("decoder_0", ug.Head(channels=5), ["dec0"])
        by_id = {it.id: it for it in ug.render.scene(g, "levels").items}
        assert by_id["decoder_0"].members == ("decoder_0",) and by_id["decoder_0"].role is ug.Role.HEAD
        assert by_id["decoder@0"].members == ("up0", "merge0", "dec0")
        assert Drawn(g.to_dot("levels")).attrs["decoder_0"]["label"].count("conv1 → 5") == 1


class TestOutput:
    def test_render_returns_a_digraph_with_the_same_source(self):
        g = ug.unet(3, 2, widths=(8, 16))
        dg = g.render("levels")
        assert isinstance(dg, graphviz.Digraph)
        assert dg.source == g.to_dot("levels")
        assert dg.pipe(format="svg").startswith(b"<?xml")

    @pytest.mark.parametrize(
        ("suffix", "magic"), [(".svg", b"<?xml"), (".png", b"\x89PNG"), (".pdf", b"%PDF"), (".dot", b"digraph")]
    )
    def test_save_figure_formats(self, tmp_path, suffix, magic):
        g = ug.unet(3, 2, widths=(8, 16))
        path = g.save_figure(tmp_path / f"unet{suffix}")
        assert path.read_bytes().startswith(magic)
        assert os.listdir(tmp_path) == [f"unet{suffix}"]  # no temporary left behind

    def test_a_large_graph_shows_its_levels_in_a_notebook(self):
        g = ug.unet(1, 1, widths=(2,) * 45, down=ug.Down(factor=1), up=ug.Up(factor=1, kernel=1))
        assert len(g) > ug.render.REPR_MAX_BLOCKS
        svg = g._repr_mimebundle_()["image/svg+xml"]
        assert 'id="encoder@3"' in svg and 'id="enc3"' not in svg

    def test_a_scene_is_drawn_as_given(self):
        s = ug.render.scene(ug.unet(3, 2, widths=(8, 16)), "levels")
        assert ug.render.to_dot(s) == ug.unet(3, 2, widths=(8, 16)).to_dot("levels")
        with pytest.raises(ug.RenderError, match="already annotated"):
            ug.render.to_dot(s, annotate=("params",))
        with pytest.raises(ug.RenderError, match="expected a UNetGraph or a Scene"):
            ug.render.to_dot("unet")

    def test_odd_names_are_quoted(self):
        s = ug.render.scene(ug.unet(3, 2, widths=(8,)))
        odd = replace(s, name='my "net"', items=tuple(replace(it, title=f"<{it.title}> & co") for it in s.items))
        d = Drawn(ug.render.to_dot(odd))
        assert "&lt;x&gt; &amp; co" in d.attrs["x"]["label"]

    @pytest.mark.parametrize("name", ["Node", "Edge", "Graph", "Subgraph", "Strict", "Digraph"])
    def test_a_graph_named_as_a_dot_keyword_is_drawn(self, name, tmp_path):
        # `digraph Node {` is a syntax error to dot
        path = ug.unet(3, 2, widths=(8,)).copy(name=name).save_figure(tmp_path / "u.svg")
        assert path.read_text().lstrip().startswith("<?xml")

    @pytest.mark.parametrize("dpi", ["zz", [], -1, 0, 1.5, True, float("nan"), 2**70, "300", 1201])
    def test_save_figure_refuses_a_bad_dpi(self, dpi, tmp_path):
        with pytest.raises(ug.RenderError, match="save_figure: dpi must be an int from 1 to 1200, got"):
            ug.unet(3, 2, widths=(8,)).save_figure(tmp_path / "unet.png", dpi=dpi)
        assert not list(tmp_path.iterdir())

    def test_save_figure_unknown_suffix(self, tmp_path):
        with pytest.raises(ug.RenderError, match="cannot tell the format"):
            ug.unet(3, 2, widths=(8,)).save_figure(tmp_path / "unet.bmp")
        assert not list(tmp_path.iterdir())

    def test_notebook_display(self):
        g = ug.unet(3, 2, widths=(8, 16))
        bundle = g._repr_mimebundle_()
        assert bundle["text/plain"] == repr(g)
        assert "<svg" in bundle["image/svg+xml"] and "enc0" in bundle["image/svg+xml"]
        assert g._repr_svg_() == bundle["image/svg+xml"]
        assert "<table>" in g.summary((1, 3, 16, 16))._repr_html_()
        assert "<table>" in g.check((1, 3, 16, 16))._repr_html_()


class TestWithoutGraphviz:
    @pytest.fixture
    def no_dot(self, tmp_path, monkeypatch):
        """A PATH on which `dot` cannot be found (python itself is called by absolute path)."""
        empty = tmp_path / "bin"
        empty.mkdir()
        monkeypatch.setenv("PATH", str(empty))
        return tmp_path

    def test_dot_text_needs_nothing_but_figures_say_how_to_install(self, no_dot):
        g = ug.unet(3, 2, widths=(8, 16))
        assert g.to_dot().startswith("digraph UNet {")
        assert g.save_figure(no_dot / "u.dot").read_text().startswith("digraph")
        (no_dot / "old.png").write_bytes(b"old")
        for suffix in (".svg", ".png", ".pdf"):
            name = "old.png" if suffix == ".png" else f"u{suffix}"
            with pytest.raises(ug.RenderError) as e:
                g.save_figure(no_dot / name)
            for how in ("apt-get install graphviz", "brew install graphviz", "conda install"):
                assert how in str(e.value)
        assert (no_dot / "old.png").read_bytes() == b"old"  # untouched
        assert sorted(p.name for p in no_dot.iterdir()) == ["bin", "old.png", "u.dot"]

    def test_repr_falls_back_to_text(self, no_dot):
        g = ug.unet(3, 2, widths=(8, 16))
        assert g._repr_mimebundle_() == {"text/plain": repr(g)}
        assert g._repr_svg_() is None
        assert isinstance(g.render(), graphviz.Digraph)  # the Digraph itself needs no binary

    def test_without_the_python_package(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "graphviz", None)  # what `import graphviz` meets when it is absent
        g = ug.unet(3, 2, widths=(8, 16))
        with pytest.raises(ug.RenderError, match=r"pip install 'unetgraph\[graphviz\]'"):
            g.render()
        assert g.to_dot().startswith("digraph")


def test_diff_drawing_marks_both_graphs_in_one_u(tmp_path):
    g = ug.unet(3, 2, widths=(8, 16, 32))
    g2 = g.remove_skip("enc0").insert_after("enc1", ug.ConvBlock(convs=1), name="enc1b").set("dec1", convs=1)
    d = ug.diff(g, g2)
    s = d.scene(input_shape=(1, 3, 16, 16))
    marks = {it.id: it.mark for it in s.items}
    assert marks["merge0"] == "removed" and marks["enc1b"] == "added" and marks["dec1"] == "changed"
    assert marks["dec0"] == "changed"  # retyped: same block, new inputs
    assert marks["enc0"] is None and marks["mid"] is None
    links = {(ln.src, ln.dst): ln.mark for ln in s.links}
    assert links[("enc0", "merge0")] == "removed" and links[("up0", "dec0")] == "added"
    assert links[("enc1b", "merge1")] == "added" and links[("enc1", "merge1")] == "removed"
    drawn = Drawn(d.to_dot())
    # the removed merge keeps its place in the U: on enc0's row, right of it
    assert drawn.y("merge0") == drawn.y("enc0") and drawn.x("merge0") > drawn.x("enc0")
    assert drawn.y("enc1b") == drawn.y("enc1")
    assert "− removed" in d.to_dot() and isinstance(d.render(), graphviz.Digraph)
    path = d.save_figure(tmp_path / "diff.svg", input_shape=(1, 3, 16, 16))
    assert "merge0" in path.read_text()


@pytest.mark.parametrize("detail", ["levels", "blocks", "layers"])
def test_diffusion_unet_draws_at_every_detail(detail):
    g = ug.presets.ddpm_unet(32)
    d = Drawn(g.to_dot(detail, input_shape=ug.input_shapes(g, size=32)))  # dot refuses malformed labels
    if detail != "layers":
        assert "t" in d.pos and "time_embedding" in d.pos
        assert d.kind("cond")  # the time embedding reaches the ResBlocks through cond edges
