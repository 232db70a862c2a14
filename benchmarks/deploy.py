"""Inference speed side by side, in one process: every preset eager / optimize()d / compiled, against peers.

    .venv/bin/python -m benchmarks.deploy                                  # every preset, batch 1 and 8
    .venv/bin/python -m benchmarks.deploy --preset classic bn4 --batch 1   # some presets, one batch
    .venv/bin/python -m benchmarks.deploy --size 64 --repeat 5 --no-compile   # quicker
    .venv/bin/python -m benchmarks.deploy --aoti --onnx                    # + AOTInductor and onnxruntime rows
    .venv/bin/python -m benchmarks.deploy --bf16                           # + optimize(dtype=torch.bfloat16) rows
    .venv/bin/python -m benchmarks.deploy --widths 64 128 256 512 1024     # + a U-Net of these widths
    .venv/bin/python -m benchmarks.deploy --only monai ddpm recompiles     # the peer sections
    .venv/bin/python -m benchmarks.deploy --device cuda                    # a GPU, where one is present

Sections (outputs are compared before timing):

1. ``presets``: each preset of ``--preset`` (classic 5-level U-Net, 4-level BN U-Net, DDPM 32, attention
   U-Net, 3D U-Net at 64³; see benchmarks/layers.py) at each ``--batch``: the lowered module eager,
   ``optimize(prepack=False)`` (channels-last), ``optimize()`` (prepacked convolutions, the default),
   ``ug.compile`` with one dynamic graph and with a static size bucket (``sizes=[size]``), and for the
   classic and 4-level U-Nets the hand-written model (benchmarks/handwritten.py) eager and compiled
   with freezing at the same static size; then the per-layer accounting of the ``optimize()``d module
   (benchmarks/layers.py) and, at the end, a summary of the best float32 mode per preset and batch;
2. ``monai``: MONAI ``BasicUNet`` against the same network built as a graph (benchmarks/peers.py);
   ``--monai-unet`` adds MONAI ``UNet`` (its own architecture: compare GFLOP/s, not ms);
3. ``ddpm``: DDPM against diffusers ``UNet2DModel``, same weights;
4. ``recompiles``: graphs compiled over several valid sizes: ``ug.compile`` against ``torch.compile``.

Columns: median milliseconds over interleaved rounds, speed-up against the section's baseline,
achieved GFLOP/s and its share of this machine's measured float32 convolution peak (plain or
prepacked oneDNN weights, channels-last) and float32 matmul peak (over 100% of sgemm happens: on
AMD CPUs oneDNN's convolutions beat MKL's sgemm), with the float32 floor (the network's FLOPs at the
convolution peak); peak memory growth of one forward (Linux VmHWM after ``malloc_trim``; CUDA: the
allocator's peak); for compiled rows the first-call (compile) time. Inductor's caches are disabled
unless ``--cache``, so compile times are cold. Every compiled model uses ``freezing=True``. The
process calls ``ug.keep_freed_memory()`` first, as docs/deploy.md recommends for inference (every
row, peers included, runs under it); ``--default-allocator`` keeps glibc's defaults
(benchmarks/allocator.py measures the difference).

``--device cuda`` moves every model and input to the GPU and synchronizes before each timer stops;
CPU-only rows (oneDNN prepacking, onnxruntime) are left out there.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ARGS: argparse.Namespace
DEVICE = "cpu"
SGEMM = 0.0  # the measured float32 matmul peak (GFLOP/s), set in main
SUMMARY: list[dict[str, Any]] = []


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    from benchmarks.layers import PRESETS, add_allocator_option

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", nargs="+", choices=PRESETS, default=list(PRESETS), help="presets to measure")
    p.add_argument("--widths", type=int, nargs="+", default=None, help="add a BN U-Net of these widths")
    p.add_argument("--size", type=int, default=None, help="spatial size for every preset (default: each its own)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes")
    p.add_argument("--repeat", type=int, default=10, help="timed rounds (medians)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda where a GPU and a CUDA torch are present")
    p.add_argument("--no-compile", action="store_true", help="eager rows only")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer tables")
    p.add_argument("--top", type=int, default=8, help="layers per per-layer table")
    p.add_argument("--aoti", action="store_true", help="add AOTInductor package rows (slow to build)")
    p.add_argument("--onnx", action="store_true", help="add an onnxruntime row")
    p.add_argument("--bf16", action="store_true", help="add optimize(dtype=torch.bfloat16) rows")
    p.add_argument("--monai-features", type=int, nargs=6, default=[32, 64, 128, 256, 512, 32])
    p.add_argument("--monai-unet", action="store_true", help="add MONAI UNet (own architecture)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="sizes for the recompile check")
    p.add_argument(
        "--only", nargs="+", choices=["presets", "monai", "ddpm", "recompiles"], help="sections (default: all)"
    )
    p.add_argument("--cache", action="store_true", help="allow inductor's caches (warm compile times)")
    add_allocator_option(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    global ARGS, DEVICE, SGEMM
    ARGS = parse(argv)
    DEVICE = ARGS.device
    if not ARGS.cache:
        os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"
    import torch
    import torch._inductor.config

    from benchmarks.layers import CASES, Case, Machine, allocator_setting

    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {DEVICE}: torch {torch.__version__} sees no CUDA device here")
    torch._inductor.config.freezing = True  # every compiled row, peers included (calls run under no_grad)
    if ARGS.threads:
        torch.set_num_threads(ARGS.threads)
    torch.manual_seed(0)
    cases = [CASES[name] for name in ARGS.preset]
    if ARGS.widths:
        widths = tuple(ARGS.widths)
        cases.append(Case("widths", f"{len(widths)}-level BN U-Net {widths}", lambda: _bn_unet(widths), (128, 128)))
    if ARGS.size:
        cases = [c._replace(size=(ARGS.size,) * len(c.size)) for c in cases]
    only = set(ARGS.only or ["presets", "monai", "ddpm", "recompiles"])
    machines = {d: Machine.measure(DEVICE, d) for d in sorted({len(c.size) for c in cases} | {2})}
    SGEMM = machines[2].sgemm
    for d, m in machines.items():
        print(f"machine ({d}D convolution peak): {m.describe()}")
    print(f"batches {ARGS.batch}; {ARGS.repeat} interleaved rounds; every compiled row with freezing=True")
    print(allocator_setting(ARGS.default_allocator) + "\n")
    with torch.no_grad():
        if "presets" in only:
            for case in cases:
                for batch in ARGS.batch:
                    section_preset(case, batch, machines[len(case.size)])
            # a peak measured while something else ran would flatter every ratio: measure it again
            # and rate the summary against the higher of the two
            peaks = {}
            for d, m in machines.items():
                again = Machine.measure(DEVICE, d)
                peaks[d] = max(m.conv, again.conv)
                print(f"machine ({d}D convolution peak) again, after the presets: {again.describe()}")
            print_summary(peaks)
        for batch in ARGS.batch:
            if "monai" in only:
                section_monai_basic(machines[2].conv, batch)
            if ARGS.monai_unet:
                section_monai_unet(machines[2].conv, batch)
            if "ddpm" in only:
                section_ddpm(machines[2].conv, batch)
        if "recompiles" in only and not ARGS.no_compile:
            section_recompiles()


def _bn_unet(widths: tuple[int, ...]) -> Any:
    import unetgraph as ug

    return ug.unet(3, 2, widths=widths, block=ug.ConvBlock(norm="batch"), name="UNetBN")


# -- measuring ------------------------------------------------------------------------------


def flops(model: Callable, *inputs: Any) -> int:
    import unetgraph as ug

    counter = ug.cost.flop_counter()  # FlopCounterMode, counting attention and packed convolutions too
    with counter:
        model(*inputs)
    return counter.get_total_flops()


def peak_memory_mb(fn: Callable[[], Any]) -> float | None:
    """Peak memory growth during one call: the CUDA allocator's peak on a GPU, else resident memory
    (Linux: VmHWM reset through clear_refs)."""
    import torch

    from benchmarks.layers import status_kb

    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    before = status_kb("VmRSS")
    fn()
    after = status_kb("VmHWM")
    return None if before is None or after is None else max(0, after - before) / 1024


class CountingInductor:
    """An inductor backend that counts the graphs it compiles (freezing is set globally in main:
    dynamo reads it while tracing, so a backend's own config patch would not freeze)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, gm: Any, example: list) -> Any:
        from torch._inductor.compile_fx import compile_fx

        out = compile_fx(gm, example)
        self.count += 1
        return out


def compile_model(model: Any, args: tuple, fullgraph: bool) -> tuple[Any, float, int]:
    """``torch.compile`` with inductor + freezing, static shapes (the first call's); returns
    (compiled, first-call seconds, graphs)."""
    import torch

    backend = CountingInductor()
    compiled = torch.compile(model, backend=backend, fullgraph=fullgraph, dynamic=False)
    t = time.perf_counter()
    compiled(*args)
    return compiled, time.perf_counter() - t, backend.count


def graph_breaks(model: Any, args: tuple) -> int:
    import torch

    torch._dynamo.reset()
    return torch._dynamo.explain(model)(*args).graph_break_count


# -- reporting -------------------------------------------------------------------------------


class Table:
    def __init__(self, title: str, baseline: str, peak: float, work: float | None = None) -> None:
        """``work``: the network's FLOPs, to print the float32 floor (work at the convolution peak)."""
        self.title, self.baseline, self.peak, self.work = title, baseline, peak, work
        self.rows: list[dict[str, Any]] = []

    def add(self, name: str, **values: Any) -> None:
        self.rows.append({"name": name, **values})

    def print(self, ms: dict[str, float]) -> None:
        base = ms[self.baseline]
        print(f"== {self.title}")
        head = f"{'model':<46} {'params':>11} {'GFLOP':>7} {'ms':>9} {'speed-up':>9} {'GFLOP/s':>8} {'% conv':>7}"
        head += f" {'% sgemm':>8}"
        print(head + f" {'peak MB':>8} {'compile s':>10} {'graphs':>7} {'breaks':>7}")
        for r in self.rows:
            t = ms[r["name"]]
            gflop = (r.get("flops") or 0) / 1e9
            rate = gflop / (t / 1e3) if gflop else 0.0
            mem = "" if r.get("memory") is None else f"{r['memory']:.0f}"
            comp = "" if r.get("compile") is None else f"{r['compile']:.1f}"
            print(
                f"{r['name'][:46]:<46} {r.get('params', 0):>11,} {gflop:>7.2f} {t:>9.1f} {base / t:>8.2f}× "
                f"{rate:>8.1f} {100 * rate / self.peak:>6.1f}% {100 * rate / SGEMM if SGEMM else 0:>7.1f}% "
                f"{mem:>8} {comp:>10} "
                f"{r.get('graphs', ''):>7} {r.get('breaks', ''):>7}"
            )
        for r in self.rows:
            if r.get("note"):
                print(f"  note: {r['name']}: {r['note']}")
        if self.work:
            floor = self.work / (self.peak * 1e9) * 1e3
            print(
                f"  float32 floor: {self.work / 1e9:.2f} GFLOP at the convolution peak = {floor:.1f} ms, "
                f"so no float32 model can be more than {base / floor:.2f}× faster than {self.baseline}"
            )
        print()


def params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def row(model: Any, work: int | None = None, of: Any = None, **info: Any) -> tuple[Any, dict[str, Any]]:
    """A table row: the callable and what the table prints beside its time (parameters counted
    on ``of`` for an artifact that holds none as a module)."""
    return model, {"params": params(model if of is None else of), "flops": work, **info}


def run_section(table: Table, models: dict[str, tuple[Any, dict[str, Any]]], args: tuple) -> dict[str, float]:
    """Time every model on ``args`` (interleaved), measure memory, print the table; returns the medians."""
    from benchmarks.layers import timed_ms

    for name, (fn, info) in models.items():
        table.add(name, memory=peak_memory_mb(lambda fn=fn: fn(*args)), **info)
    ms = timed_ms({name: (lambda fn=fn: fn(*args)) for name, (fn, _) in models.items()}, ARGS.repeat, DEVICE)
    table.print(ms)
    return ms


def check_same(a: Any, b: Any, args: tuple, what: str, atol: float = 1e-3) -> None:
    ya, yb = a(*args), b(*args)
    pairs = [(ya[k], yb[k]) for k in ya] if isinstance(ya, dict) else [(ya, yb)]
    diff = max((p - q).abs().max().item() for p, q in pairs)
    scale = max([1.0] + [p.abs().max().item() for p, _ in pairs])
    if not diff <= atol * scale:
        raise SystemExit(f"{what}: outputs differ by {diff:.3g}; the comparison would be meaningless")


def _timed_first_call(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# -- the presets ------------------------------------------------------------------------------


def section_preset(case: Any, batch: int, machine: Any) -> None:
    """Every float32 mode of one preset at one batch size, then its per-layer accounting."""
    import torch

    import unetgraph as ug
    from benchmarks.layers import case_inputs, profile, randomize, table

    torch.manual_seed(0)
    g = case.build()
    gm = randomize(g.lower()).eval().to(DEVICE)
    xs = case_inputs(case, g, batch, DEVICE)
    cpu = DEVICE == "cpu"
    layout = ug.optimize(gm, prepack=False, channels_last=None if cpu else True).module
    fast, report = ug.optimize(gm, channels_last=None if cpu else True)
    check_same(gm, fast, xs, f"{case.name}: optimize()")
    work = flops(gm, *xs)
    rows: dict[str, tuple[Any, dict[str, Any]]] = {
        "eager (lowered)": row(gm, work),
        "optimize(prepack=False) (channels-last)": row(layout, work),
    }
    packs = [line for line in report["prepack"].changes if " packed" in line]
    linears = sum(": Linear " in line for line in packs)
    packed = f"{len(packs) - linears} convolutions" + (f" and {linears} Linears" if linears else "")
    note = f"{packed} prepacked" if packs else "; ".join(report["prepack"].notes)[:120]
    rows["optimize() (prepacked, default)" if cpu else "optimize()"] = row(fast, work, note=note)
    hand = _hand_written(g, gm, case)
    if hand is not None:
        check_same(gm, hand, xs, f"{case.name}: hand-written vs ours")
        rows["hand-written eager"] = row(hand, work)
    low = None
    if ARGS.bf16:
        low = ug.optimize(gm, dtype=torch.bfloat16).module
        want, got = gm(*xs), low(*xs)
        error = (want - got).abs().max().item() / want.abs().max().item() if isinstance(want, torch.Tensor) else 0
        rows["optimize(dtype=bf16)"] = row(low, work, note=f"bfloat16; max error {error:.1e} of the output's range")
    size = tuple(xs[0].shape[2:])
    if not ARGS.no_compile:
        torch._dynamo.reset()
        dynamic = ug.compile(fast)
        seconds = _timed_first_call(lambda: dynamic(*xs))
        rows["ug.compile (one dynamic graph)"] = row(dynamic, work, fast, compile=seconds, graphs=dynamic.compilations)
        static = ug.compile(fast, sizes=[size])
        seconds = _timed_first_call(lambda: static(*xs))
        rows[f"ug.compile(sizes=[{'×'.join(map(str, size))}]) (static)"] = row(
            static, work, fast, compile=seconds, graphs=static.compilations
        )
        check_same(static, gm, xs, f"{case.name}: bucketed compile")
        if hand is not None:
            torch._dynamo.reset()
            compiled, seconds, graphs = compile_model(hand, xs, fullgraph=False)
            breaks = graph_breaks(hand, xs)
            rows["hand-written torch.compile (static, freezing)"] = row(
                compiled, work, hand, compile=seconds, graphs=graphs, breaks=breaks
            )
        if low is not None:
            low_static = ug.compile(low, sizes=[size])
            seconds = _timed_first_call(lambda: low_static(*xs))
            rows["ug.compile(sizes) bf16"] = row(low_static, work, low, compile=seconds, graphs=1)
    tmp = Path(tempfile.mkdtemp())
    if ARGS.aoti:
        t = time.perf_counter()
        path = ug.export(fast, tmp / "dynamic.pt2", format="aoti", progress=False)
        rows["AOTInductor package (dynamic sizes)"] = row(
            ug.load_exported(path, native=True), work, fast, compile=time.perf_counter() - t, graphs=1
        )
        t = time.perf_counter()
        path = ug.export(fast, tmp / "bucket.pt2", format="aoti", sizes=[size], batches=[batch], progress=False)
        rows["AOTInductor package (sizes=[size])"] = row(
            ug.load_exported(path, native=True), work, fast, compile=time.perf_counter() - t, graphs=1
        )
    if ARGS.onnx and cpu:
        path = ug.export(fast, tmp / "unet.onnx", progress=False)
        rows["ONNX (onnxruntime)"] = row(ug.load_exported(path), work, fast)
    where = "×".join(map(str, size))
    title = f"{case.title}, batch {batch} at {where}, {DEVICE}"
    ms = run_section(Table(title, "eager (lowered)", machine.conv, work), rows, xs)
    float32 = {k: v for k, v in ms.items() if "bf16" not in k and not k.startswith("hand-written")}
    best = min(float32, key=float32.__getitem__)
    hand_static = ms.get("hand-written torch.compile (static, freezing)")
    summary = {"case": case.name, "batch": batch, "size": where, "gflop": work / 1e9, "best": best}
    summary |= {"ms": ms[best], "dims": len(size), "hand": hand_static}
    summary["static"] = next((v for k, v in ms.items() if k.startswith("ug.compile(sizes=[")), None)
    if not ARGS.no_layers:
        layers, forward = profile(fast, xs, repeat=max(3, ARGS.repeat // 2), device=DEVICE)
        totals = table(f"per layer: {title}, optimize()", layers, forward, machine, top=ARGS.top, nominal=work)
        summary["flagged"] = totals["flagged"]
        summary["eager_rate"] = totals["conv_pct"] / 100 * machine.conv  # GFLOP/s
        summary["bound_rate"] = totals["bound_pct"] / 100 * machine.conv
    SUMMARY.append(summary)


def _hand_written(g: Any, gm: Any, case: Any) -> Any:
    """The hand-written U-Net with ``gm``'s weights, for the graphs it reproduces (else ``None``)."""
    from benchmarks.handwritten import HandWrittenUNet, copy_weights

    if case.name not in ("classic", "bn4", "widths"):
        return None
    levels = sum(1 for n in g if n.startswith("enc") and n[3:].isdigit())
    widths = (*tuple(g[f"enc{i}"].type.channels for i in range(levels)), g["mid"].type.channels)
    hand = HandWrittenUNet(3, 2, widths).eval()
    copy_weights(gm, hand)
    return hand.to(DEVICE)


def print_summary(peaks: dict[int, float]) -> None:
    """The best float32 mode of each preset, rated against ``peaks`` (GFLOP/s by dimensions)."""
    if not SUMMARY:
        return
    print("== summary: the best float32 mode of each preset (FLOP-weighted share of the convolution peak; target 85%)")
    rated = ", ".join(f"{d}D {p:.0f} GFLOP/s" for d, p in sorted(peaks.items()))
    print(f"  peaks: {rated} (the higher of the two measurements)")
    print(
        f"{'preset':<10} {'batch':>5} {'size':>9} {'GFLOP':>7} {'best float32 mode':<46} {'ms':>9} {'% conv':>7} "
        f"{'eager %':>8} {'bound %':>8} {'flagged':>8} {'static/hand':>12}"
    )
    for s in SUMMARY:
        ratio = "" if not (s.get("hand") and s.get("static")) else f"{s['hand'] / s['static']:.2f}×"
        peak = peaks[s["dims"]]
        pct = 100 * s["gflop"] / (s["ms"] / 1e3) / peak
        eager, bound = ("" if s.get(k) is None else f"{100 * s[k] / peak:.0f}%" for k in ("eager_rate", "bound_rate"))
        print(
            f"{s['case']:<10} {s['batch']:>5} {s['size']:>9} {s['gflop']:>7.2f} {s['best'][:46]:<46} {s['ms']:>9.1f} "
            f"{pct:>6.0f}% {eager:>8} {bound:>8} {s.get('flagged', '')!s:>8} {ratio:>12}"
        )
    print(
        "  GFLOP: the model's own (fold_upsampling makes optimize()d and compiled modules do fewer; every rate\n"
        "  counts the model's); eager %: the optimize()d module's FLOP-weighted share of the peak (per-layer run);\n"
        "  bound %: the share it would reach with every layer at its limit (the convolution peak, or memory\n"
        "  bandwidth for what must stream: below 85% the target is out of this machine's reach for that row);\n"
        "  flagged: layers above 5% of the time below 50% of the peak; static/hand: the hand-written model compiled\n"
        "  with freezing at the same static size over ug.compile(sizes=...) (≥ 1.00× means ours is at least as fast)\n"
    )


# -- peers --------------------------------------------------------------------------------------


def _eager_rows(peer_name: str, peer: Any, gm: Any, fast: Any, work: int) -> dict[str, tuple[Any, dict[str, Any]]]:
    """The rows a peer section starts with: the peer, our lowered module, and it optimize()d."""
    return {
        peer_name: row(peer, work),
        "unetgraph eager": row(gm, work),
        "unetgraph optimize()d eager": row(fast, work),
    }


def _compiled_rows(rows: dict, models: dict[str, tuple[Any, bool]], args: tuple, work: int) -> None:
    import torch

    for name, (model, fullgraph) in models.items():
        breaks = graph_breaks(model, args)
        torch._dynamo.reset()
        compiled, seconds, graphs = compile_model(model, args, fullgraph)
        rows[name] = (compiled, {"params": params(model), "flops": work, "compile": seconds, "graphs": graphs})
        rows[name][1]["breaks"] = breaks


def _ours(g: Any) -> tuple[Any, Any]:
    import unetgraph as ug
    from benchmarks.layers import randomize

    gm = randomize(g.lower()).eval().to(DEVICE)
    fast, _ = ug.optimize(gm)
    return gm, fast


def section_monai_basic(peak: float, batch: int) -> None:
    import torch

    from benchmarks.peers import copy_weights, monai_basic_unet, monai_basic_unet_graph

    f = tuple(ARGS.monai_features)
    g = monai_basic_unet_graph(3, 2, f)
    gm, fast = _ours(g)
    monai = monai_basic_unet(3, 2, f).eval()
    copy_weights(gm, monai)
    monai = monai.to(DEVICE)
    size = ARGS.size or 128
    x = (torch.randn(batch, 3, size, size, device=DEVICE),)
    check_same(gm, monai, x, "MONAI BasicUNet vs ours")
    work = flops(monai, *x)
    rows = _eager_rows("MONAI BasicUNet eager", monai, gm, fast, work)
    if not ARGS.no_compile:
        compiled = {"MONAI BasicUNet compiled": (monai, False), "unetgraph optimize()d compiled": (fast, True)}
        _compiled_rows(rows, compiled, x, work)
    title = f"MONAI BasicUNet features={f} vs the same graph (same weights), batch {batch} at {size}²"
    run_section(Table(title, "MONAI BasicUNet eager", peak, work), rows, x)


def section_monai_unet(peak: float, batch: int) -> None:
    import torch
    from monai.networks.nets import UNet

    widths = tuple(ARGS.widths or (64, 128, 256, 512))
    model = UNet(2, 3, 2, channels=widths, strides=(2,) * (len(widths) - 1), num_res_units=2, norm="batch").eval()
    model = model.to(DEVICE)
    size = ARGS.size or 128
    x = (torch.randn(batch, 3, size, size, device=DEVICE),)
    work = flops(model, *x)
    rows: dict[str, tuple[Any, dict[str, Any]]] = {"MONAI UNet eager": row(model, work)}
    if not ARGS.no_compile:
        _compiled_rows(rows, {"MONAI UNet compiled": (model, False)}, x, work)
    note = "its own architecture (residual units, strided convolutions): compare GFLOP/s with the tables above"
    rows["MONAI UNet eager"][1]["note"] = note
    run_section(Table(f"MONAI UNet channels={widths}, batch {batch}", "MONAI UNet eager", peak), rows, x)


def section_ddpm(peak: float, batch: int) -> None:
    """The DDPM CIFAR-10 preset against diffusers' UNet2DModel: same architecture, same weights."""
    import torch
    from diffusers import UNet2DModel

    import unetgraph as ug
    from benchmarks.ddpm_vs_diffusers import CONFIG

    class Sample(torch.nn.Module):
        """diffusers' output unwrapped."""

        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.model(x, t).sample

    peer = UNet2DModel(**CONFIG).eval()
    g = ug.presets.ddpm_unet(32)  # CONFIG gives attention_head_dim=None: one head, as the paper
    gm = g.lower().eval()
    theirs = peer.state_dict()
    gm.load_state_dict({k: theirs[v] for k, v in ug.interop.diffusers_keys(g, gm.state_dict()).items()})
    peer, gm = Sample(peer).to(DEVICE), gm.to(DEVICE)
    fast, _ = ug.optimize(gm)
    xt = (torch.randn(batch, 3, 32, 32, device=DEVICE), torch.randint(0, 1000, (batch,), device=DEVICE))
    check_same(peer, fast, xt, "optimize()d vs diffusers")
    work = flops(gm, *xt)
    rows = _eager_rows("diffusers UNet2DModel eager", peer, gm, fast, work)
    if not ARGS.no_compile:
        compiled = {"diffusers UNet2DModel compiled": (peer, False), "unetgraph compiled": (fast, True)}
        _compiled_rows(rows, compiled, xt, work)
    title = f"DDPM CIFAR-10 ({g.name}), batch {batch} at 32×32, vs diffusers UNet2DModel (same weights)"
    run_section(Table(title, "diffusers UNet2DModel eager", peak, work), rows, xt)


def section_recompiles() -> None:
    """Graphs compiled over several valid sizes: ug.compile (dynamic, checked) vs torch.compile of the peer."""
    import torch

    import unetgraph as ug
    from benchmarks.handwritten import HandWrittenUNet

    widths = tuple(ARGS.widths or (64, 128, 256, 512))
    step = 2 ** (len(widths) - 1)
    size = ARGS.size or 128
    sizes = ARGS.sizes or [size, size + 2 * step, 2 * size]
    _, fast = _ours(_bn_unet(widths))
    hand = HandWrittenUNet(3, 2, widths).eval().to(DEVICE)
    print(f"== recompiles over sizes {sizes} (batch {ARGS.batch[0]}, then batch 2)")
    for batch in sorted({ARGS.batch[0], 2}):
        torch._dynamo.reset()
        ours = ug.compile(fast)
        backend = CountingInductor()
        peer = torch.compile(hand, backend=backend, dynamic=True)
        for s in sizes:
            x = torch.randn(batch, 3, s, s, device=DEVICE)
            ours(x)
            peer(x)
        print(
            f"  batch {batch}: ug.compile {ours.compilations} graph(s); "
            f"torch.compile(hand-written, dynamic=True) {backend.count} graph(s)"
        )
    print(
        "  (at batch 1 torch's CPU convolution backend choice guards on C·H·W per layer, so sizes across a\n"
        "   threshold recompile; an AOTInductor package from ug.export(..., format='aoti') is one artifact)\n"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
