"""Inference speed side by side, in one process: unetgraph eager / optimize()d / compiled against peers.

    .venv/bin/python -m benchmarks.deploy                          # 4-level BN U-Net (64..512), 128², batch 1
    .venv/bin/python -m benchmarks.deploy --size 64 --repeat 5     # quicker
    .venv/bin/python -m benchmarks.deploy --no-compile             # eager only (seconds)
    .venv/bin/python -m benchmarks.deploy --aoti --onnx            # add AOTInductor and onnxruntime rows
    .venv/bin/python -m benchmarks.deploy --bf16                   # add optimize(dtype=torch.bfloat16) rows
    .venv/bin/python -m benchmarks.deploy --widths 64 128 256 512 1024   # the classic preset (padded)

Sections (each model is built at the same architecture and weights as ours; outputs are
compared before timing):

1. the classic padded U-Net (``--widths``) against the hand-written one (benchmarks/handwritten.py);
2. MONAI ``BasicUNet`` against the same network built as a graph (benchmarks/peers.py);
3. MONAI ``UNet`` (``--monai-unet``; its own architecture: compare GFLOP/s, not ms);
4. DDPM against diffusers ``UNet2DModel``, when ``ug.presets.ddpm_unet`` exists (timing only);
5. recompiles over several valid sizes: ``ug.compile`` against ``torch.compile`` of the peer.

Columns: median milliseconds over interleaved rounds, speed-up against the hand-written
(or peer) eager model, achieved GFLOP/s and its share of this machine's measured float32
convolution peak and float32 matmul peak (oneDNN's convolutions beat MKL's sgemm on AMD CPUs:
over 100% of sgemm happens), with the float32 floor (the network's FLOPs at the convolution peak),
peak memory growth of one forward (Linux VmHWM after ``malloc_trim``), and for compiled rows
the first-call (compile) time. Inductor's caches are disabled unless ``--cache``,
so compile times are cold. Every compiled model uses ``freezing=True`` (weights are constants).
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
SGEMM = 0.0  # the measured float32 matmul peak (GFLOP/s), set in main


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512], help="classic U-Net widths")
    p.add_argument("--size", type=int, default=128, help="input height and width")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeat", type=int, default=10, help="timed rounds (medians)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-compile", action="store_true", help="eager rows only")
    p.add_argument("--aoti", action="store_true", help="add an AOTInductor package row (slow to build)")
    p.add_argument("--onnx", action="store_true", help="add an onnxruntime row")
    p.add_argument("--monai-features", type=int, nargs=6, default=[32, 64, 128, 256, 512, 32])
    p.add_argument("--no-monai", action="store_true", help="skip the MONAI BasicUNet section")
    p.add_argument("--monai-unet", action="store_true", help="add MONAI UNet (own architecture)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="sizes for the recompile check")
    p.add_argument("--only", nargs="+", choices=["classic", "monai", "ddpm", "recompiles"], help="sections to run")
    p.add_argument("--cache", action="store_true", help="allow inductor's caches (warm compile times)")
    p.add_argument("--bf16", action="store_true", help="add optimize(dtype=torch.bfloat16) rows")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    global ARGS
    ARGS = parse(argv)
    if not ARGS.cache:
        os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"
    import torch
    import torch._inductor.config

    torch._inductor.config.freezing = True  # every compiled row, peers included (calls run under no_grad)
    if ARGS.threads:
        torch.set_num_threads(ARGS.threads)
    torch.manual_seed(0)
    global SGEMM
    SGEMM, peak = matmul_peak(), conv_peak()
    print(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"float32 peaks: matmul {SGEMM:.0f} GFLOP/s (best sgemm, 1024² and 2048²: '% sgemm'), "
        f"3×3 convolution {peak:.0f} GFLOP/s (oneDNN, channels-last: '% conv')"
    )
    print(f"input: batch {ARGS.batch}, {ARGS.size}×{ARGS.size}; {ARGS.repeat} interleaved rounds\n")
    only = set(ARGS.only or ["classic", "monai", "ddpm", "recompiles"])
    with torch.no_grad():
        if "classic" in only:
            section_classic(peak)
        if "monai" in only and not ARGS.no_monai:
            section_monai_basic(peak)
        if ARGS.monai_unet:
            section_monai_unet(peak)
        if "ddpm" in only:
            section_ddpm(peak)
        if "recompiles" in only and not ARGS.no_compile:
            section_recompiles()


# -- measuring ------------------------------------------------------------------------------


def matmul_peak() -> float:
    """The best float32 matmul rate (GFLOP/s) over a few sizes: the machine's practical peak."""
    import torch

    best = 0.0
    for n in (1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(2):
            a @ b
        for _ in range(5):
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def conv_peak() -> float:
    """The best float32 3×3 convolution rate (GFLOP/s, oneDNN, channels-last, batch 1) over the
    layer shapes of a 64…512 U-Net at 128²: the ceiling of a convolution-bound float32 network
    here (it can beat sgemm: on AMD CPUs MKL's sgemm does not use every vector unit)."""
    import torch

    from unetgraph.util import median_ms

    best = 0.0
    with torch.no_grad():
        for c, s in ((64, 128), (128, 64), (256, 32), (512, 16)):
            x = torch.randn(1, c, s, s).contiguous(memory_format=torch.channels_last)
            w = torch.randn(c, c, 3, 3).contiguous(memory_format=torch.channels_last)
            ms = median_ms(lambda x=x, w=w: torch.nn.functional.conv2d(x, w, padding=1), 9)
            best = max(best, 2 * c * c * 9 * s * s / (ms / 1e3) / 1e9)
    return best


def flops(model: Callable, *inputs: Any) -> int:
    import unetgraph as ug

    counter = ug.cost.flop_counter()  # FlopCounterMode, counting attention on the CPU too
    with counter:
        model(*inputs)
    return counter.get_total_flops()


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_memory_mb(fn: Callable[[], Any]) -> float | None:
    """Peak resident-memory growth during one call (Linux: VmHWM reset through clear_refs)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    before = _status_kb("VmRSS")
    fn()
    after = _status_kb("VmHWM")
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


def compile_model(model: Any, x: Any, fullgraph: bool) -> tuple[Any, float, int]:
    """``torch.compile`` with inductor + freezing; returns (compiled, first-call seconds, graphs)."""
    import torch

    backend = CountingInductor()
    compiled = torch.compile(model, backend=backend, fullgraph=fullgraph)
    t = time.perf_counter()
    compiled(x)
    return compiled, time.perf_counter() - t, backend.count


def graph_breaks(model: Any, x: Any) -> int:
    import torch

    torch._dynamo.reset()
    return torch._dynamo.explain(model)(x).graph_break_count


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
        head = f"{'model':<40} {'params':>10} {'GFLOP':>7} {'ms':>9} {'speed-up':>9} {'GFLOP/s':>8} {'% conv':>7}"
        head += f" {'% sgemm':>8}"
        print(head + f" {'peak MB':>8} {'compile s':>10} {'graphs':>7} {'breaks':>7}")
        for r in self.rows:
            t = ms[r["name"]]
            gflop = r.get("flops", 0) / 1e9
            rate = gflop / (t / 1e3) if gflop else 0.0
            mem = "" if r.get("memory") is None else f"{r['memory']:.0f}"
            comp = "" if r.get("compile") is None else f"{r['compile']:.1f}"
            print(
                f"{r['name']:<40} {r.get('params', 0):>10,} {gflop:>7.2f} {t:>9.1f} {base / t:>8.2f}× "
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


def eager_rows(peer_name: str, peer: Any, gm: Any, fast: Any, work: int) -> dict[str, tuple[Any, dict[str, Any]]]:
    """The rows every section starts with: the peer, our lowered module, and it optimize()d."""
    return {
        peer_name: row(peer, work),
        "unetgraph eager": row(gm, work),
        "unetgraph optimize()d eager": row(fast, work),
    }


def run_section(table: Table, models: dict[str, tuple[Any, dict[str, Any]]], x: Any) -> None:
    """Time every model on x (interleaved), measure memory, then print the table."""
    from unetgraph.util import interleaved_ms

    for name, (fn, info) in models.items():
        table.add(name, memory=peak_memory_mb(lambda fn=fn: fn(x)), **info)
    ms = interleaved_ms({name: (lambda fn=fn: fn(x)) for name, (fn, _) in models.items()}, ARGS.repeat)
    table.print(ms)


def check_same(a: Any, b: Any, x: Any, what: str, atol: float = 1e-3) -> None:

    ya, yb = a(x), b(x)
    diff = (ya - yb).abs().max().item()
    scale = max(1.0, ya.abs().max().item())
    if not diff <= atol * scale:
        raise SystemExit(f"{what}: outputs differ by {diff:.3g}; the comparison would be meaningless")


# -- sections ---------------------------------------------------------------------------------


def _ours(g: Any) -> tuple[Any, Any]:
    import unetgraph as ug

    gm = randomize(g.lower()).eval()
    fast, _ = ug.optimize(gm)
    return gm, fast


def randomize(model: Any) -> Any:
    """Non-trivial batch-norm statistics (as after training), so folding is exercised."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _compiled_rows(rows: dict, models: dict[str, tuple[Any, bool]], x: Any) -> None:
    import torch

    for name, (model, fullgraph) in models.items():
        breaks = graph_breaks(model, x)
        torch._dynamo.reset()
        compiled, seconds, graphs = compile_model(model, x, fullgraph)
        rows[name] = (compiled, {"params": params(model), "compile": seconds, "graphs": graphs, "breaks": breaks})


def section_classic(peak: float) -> None:
    import torch

    import unetgraph as ug
    from benchmarks.handwritten import HandWrittenUNet, copy_weights

    widths = tuple(ARGS.widths)
    g = ug.unet(3, 2, widths=widths, block=ug.ConvBlock(norm="batch"), name="ClassicUNetPadded")
    gm, fast = _ours(g)
    hand = HandWrittenUNet(3, 2, widths).eval()
    copy_weights(gm, hand)
    x = torch.randn(ARGS.batch, 3, ARGS.size, ARGS.size)
    check_same(gm, hand, x, "hand-written vs ours")
    check_same(gm, fast, x, "optimize()")
    work = flops(hand, x)
    rows = eager_rows("hand-written eager", hand, gm, fast, work)
    low = _bfloat16(gm, x, rows, work) if ARGS.bf16 else None
    if not ARGS.no_compile:
        compiled = {"hand-written compiled": (hand, False), "unetgraph optimize()d compiled": (fast, True)}
        if low is not None:
            compiled["unetgraph optimize(dtype=bf16) compiled"] = (low, True)
        _compiled_rows(rows, compiled, x)
        torch._dynamo.reset()
        dynamic = ug.compile(fast)  # eval mode: freezing by default
        t = time.perf_counter()
        dynamic(x)
        seconds = time.perf_counter() - t
        rows["unetgraph ug.compile (dynamic sizes)"] = row(
            dynamic, work, fast, compile=seconds, graphs=dynamic.compilations, breaks=0
        )
        for name in list(rows):
            rows[name][1].setdefault("flops", work)
        check_same(rows["unetgraph optimize()d compiled"][0], gm, x, "compiled")
    tmp = Path(tempfile.mkdtemp())
    if ARGS.aoti:
        t = time.perf_counter()
        path = ug.export(fast, tmp / "unet.pt2", format="aoti", inductor_configs={"freezing": True}, progress=False)
        seconds = time.perf_counter() - t
        aoti = ug.load_exported(path)
        note = "one artifact for every served size; compile = export + AOTInductor build"
        rows["unetgraph AOTInductor package"] = row(aoti, work, fast, compile=seconds, graphs=1, note=note)
    if ARGS.onnx:
        path = ug.export(fast, tmp / "unet.onnx", progress=False)
        rows["unetgraph ONNX (onnxruntime)"] = row(ug.load_exported(path), work, fast)
    title = f"{len(widths)}-level BN U-Net {widths} vs hand-written (same weights)"
    run_section(Table(title, "hand-written eager", peak, work), rows, x)


def _bfloat16(gm: Any, x: Any, rows: dict, work: float) -> Any:
    """Add an ``optimize(dtype=torch.bfloat16)`` row (its error against float32 in the note)."""
    import torch

    import unetgraph as ug

    low, _ = ug.optimize(gm, dtype=torch.bfloat16)
    want = gm(*x) if isinstance(x, tuple) else gm(x)
    got = low(*x) if isinstance(x, tuple) else low(x)
    error = (want - got).abs().max().item() / want.abs().max().item()
    note = f"bfloat16 weights and activations, float32 norms and outputs; max error {error:.1e} of the output's range"
    rows["unetgraph optimize(dtype=bf16) eager"] = row(low, work, note=note)
    return low


def section_monai_basic(peak: float) -> None:
    import torch

    from benchmarks.peers import copy_weights, monai_basic_unet, monai_basic_unet_graph

    f = tuple(ARGS.monai_features)
    g = monai_basic_unet_graph(3, 2, f)
    gm, fast = _ours(g)
    monai = monai_basic_unet(3, 2, f).eval()
    copy_weights(gm, monai)
    x = torch.randn(ARGS.batch, 3, ARGS.size, ARGS.size)
    check_same(gm, monai, x, "MONAI BasicUNet vs ours")
    work = flops(monai, x)
    rows = eager_rows("MONAI BasicUNet eager", monai, gm, fast, work)
    if not ARGS.no_compile:
        _compiled_rows(
            rows, {"MONAI BasicUNet compiled": (monai, False), "unetgraph optimize()d compiled": (fast, True)}, x
        )
        for name in list(rows):
            rows[name][1].setdefault("flops", work)
    table = Table(f"MONAI BasicUNet features={f} vs the same graph (same weights)", "MONAI BasicUNet eager", peak, work)
    run_section(table, rows, x)


def section_monai_unet(peak: float) -> None:
    import torch
    from monai.networks.nets import UNet

    widths = tuple(ARGS.widths)
    model = UNet(2, 3, 2, channels=widths, strides=(2,) * (len(widths) - 1), num_res_units=2, norm="batch").eval()
    x = torch.randn(ARGS.batch, 3, ARGS.size, ARGS.size)
    work = flops(model, x)
    rows: dict[str, tuple[Any, dict[str, Any]]] = {"MONAI UNet eager": row(model, work)}
    if not ARGS.no_compile:
        _compiled_rows(rows, {"MONAI UNet compiled": (model, False)}, x)
        rows["MONAI UNet compiled"][1]["flops"] = work
    note = "its own architecture (residual units, strided convolutions): compare GFLOP/s with the tables above"
    rows["MONAI UNet eager"][1]["note"] = note
    run_section(Table(f"MONAI UNet channels={widths}", "MONAI UNet eager", peak), rows, x)


def section_ddpm(peak: float) -> None:
    """The DDPM CIFAR-10 preset against diffusers' UNet2DModel: same architecture, same weights."""
    import torch
    from diffusers import UNet2DModel

    import unetgraph as ug
    from benchmarks.ddpm_vs_diffusers import CONFIG

    class Call(torch.nn.Module):
        """One argument ``(x, t)`` for every model; diffusers' output unwrapped."""

        def __init__(self, model: torch.nn.Module, sample: bool = False) -> None:
            super().__init__()
            self.model, self.sample = model, sample

        def forward(self, xt: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            y = self.model(*xt)
            return y.sample if self.sample else y

    peer = UNet2DModel(**CONFIG).eval()
    g = ug.presets.ddpm_unet(32)  # CONFIG gives attention_head_dim=None: one head, as the paper
    gm = g.lower().eval()
    theirs = peer.state_dict()
    gm.load_state_dict({k: theirs[v] for k, v in ug.interop.diffusers_keys(g, gm.state_dict()).items()})
    fast, _ = ug.optimize(gm)
    batch = max(2, ARGS.batch)
    xt = (torch.randn(batch, 3, 32, 32), torch.randint(0, 1000, (batch,)))
    with torch.no_grad():
        check_same(Call(peer, True), Call(fast), xt, "optimize()d vs diffusers")
        work = flops(Call(gm), xt)
    rows = eager_rows("diffusers UNet2DModel eager", Call(peer, True), Call(gm), Call(fast), work)
    low = _bfloat16(gm, xt, rows, work) if ARGS.bf16 else None
    if low is not None:
        name = "unetgraph optimize(dtype=bf16) eager"
        rows[name] = (Call(low), rows[name][1])
    if not ARGS.no_compile:
        compiled = {
            "diffusers UNet2DModel compiled": (Call(peer, True), False),
            "unetgraph compiled": (Call(fast), True),
        }
        if low is not None:
            compiled["unetgraph optimize(dtype=bf16) compiled"] = (Call(low), True)
        _compiled_rows(rows, compiled, xt)
        for name in compiled:
            rows[name][1]["flops"] = work
    run_section(
        Table(
            f"DDPM CIFAR-10 ({g.name}), batch {batch} at 32×32, vs diffusers UNet2DModel (same weights)",
            "diffusers UNet2DModel eager",
            peak,
        ),
        rows,
        xt,
    )


def section_recompiles() -> None:
    """Graphs compiled over several valid sizes: ug.compile (dynamic, checked) vs torch.compile of the peer."""
    import torch

    import unetgraph as ug
    from benchmarks.handwritten import HandWrittenUNet

    widths = tuple(ARGS.widths)
    step = 2 ** (len(widths) - 1)
    sizes = ARGS.sizes or [ARGS.size, ARGS.size + 2 * step, 2 * ARGS.size]
    g = ug.unet(3, 2, widths=widths)
    _, fast = _ours(g)
    hand = HandWrittenUNet(3, 2, widths).eval()
    print(f"== recompiles over sizes {sizes} (batch {ARGS.batch}, then batch 2)")
    for batch in sorted({ARGS.batch, 2}):
        torch._dynamo.reset()
        ours = ug.compile(fast)
        backend = CountingInductor()
        peer = torch.compile(hand, backend=backend, dynamic=True)
        for s in sizes:
            x = torch.randn(batch, 3, s, s)
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
