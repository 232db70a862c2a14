"""Per-layer accounting: where each preset spends its time, against what this machine can do.

    .venv/bin/python -m benchmarks.layers                                  # every preset, batch 1 and 8
    .venv/bin/python -m benchmarks.layers --preset classic --batch 1 --top 12
    .venv/bin/python -m benchmarks.layers --preset unet3d --mode plain optimized --repeat 5
    .venv/bin/python -m benchmarks.layers --device cuda                    # a GPU, where one is present

Each model is run through a ``torch.fx`` Interpreter that times every call node (interleaved
rounds, medians), and its FLOPs per node are counted (``ug.cost.flop_counter``). A layer's
**limit** is the larger of its FLOPs at the measured float32 3×3 convolution peak and the
bytes it must move (inputs, output, weights) at the measured memory bandwidth: the time no
implementation can beat on this machine. The table lists the layers that lose the most time
against that limit, with their GFLOP/s, % of the convolution peak, % of their own limit and
share of the forward time; ``!`` marks a layer above 5% of the time below 50% of the peak.

Modes: ``plain`` is the lowered module (eval), ``channels-last`` is ``ug.optimize`` without the
prepack pass, ``optimized`` is ``ug.optimize`` with its defaults (prepacked convolutions).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch
import torch.fx as fx

PRESETS = ("classic", "bn4", "ddpm32", "attention", "unet3d")
MODES = ("plain", "channels-last", "optimized")


class Case(NamedTuple):
    """A benchmark preset: how to build it and the spatial size it is measured at."""

    name: str
    title: str
    build: Callable[[], Any]
    size: tuple[int, ...]


def _classic() -> Any:
    import unetgraph as ug

    return ug.presets.classic_unet(3, 2, padded=True)


def _bn4() -> Any:
    import unetgraph as ug

    return ug.unet(3, 2, widths=(64, 128, 256, 512), block=ug.ConvBlock(norm="batch"), name="UNet4BN")


def _ddpm32() -> Any:
    import unetgraph as ug

    return ug.presets.ddpm_unet(32)


def _attention() -> Any:
    import unetgraph as ug

    return ug.presets.attention_unet()


def _unet3d() -> Any:
    import unetgraph as ug

    # the preset's valid convolutions need 92³ at least; padded, the same layers run at 64³
    g = ug.presets.unet3d(1, 3)
    return g.map_blocks(lambda b: b.with_(padding="same") if isinstance(b, ug.ConvBlock) else b)


CASES = {
    "classic": Case("classic", "classic U-Net, padded (64…1024, BN)", _classic, (128, 128)),
    "bn4": Case("bn4", "4-level BN U-Net (64…512)", _bn4, (128, 128)),
    "ddpm32": Case("ddpm32", "DDPM CIFAR-10 (ddpm_unet(32))", _ddpm32, (32, 32)),
    "attention": Case("attention", "attention U-Net (Oktay et al.)", _attention, (128, 128)),
    "unet3d": Case("unet3d", "3D U-Net (Çiçek et al.), padded convolutions", _unet3d, (64, 64, 64)),
}


def case_inputs(case: Case, g: Any, batch: int, device: str = "cpu") -> tuple[torch.Tensor, ...]:
    """Random inputs of the case's size, in forward's order, on ``device``."""
    import unetgraph as ug

    torch.manual_seed(0)
    return tuple(x.to(device) for x in ug.example_inputs(g, batch=batch, size=case.size).values())


def randomize(model: Any) -> Any:
    """Non-trivial batch-norm statistics (as after training), so folding is exercised."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def build_modes(g: Any, modes: Sequence[str], device: str = "cpu") -> dict[str, fx.GraphModule]:
    """The lowered module (eval, random BN statistics) in each requested mode."""
    import unetgraph as ug

    torch.manual_seed(0)
    gm = randomize(g.lower()).eval().to(device)
    out: dict[str, fx.GraphModule] = {}
    for mode in modes:
        if mode == "plain":
            out[mode] = gm
        elif mode == "channels-last":
            out[mode] = ug.optimize(gm, prepack=False).module
        elif mode == "optimized":
            out[mode] = ug.optimize(gm).module
        else:
            raise SystemExit(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    return out


# -- the machine's limits ------------------------------------------------------------------------


def sync(device: str) -> None:
    """Wait for queued GPU work, so a timer measures it (no-op on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_ms(
    fns: dict[str, Callable[[], object]], repeat: int, device: str = "cpu", warmup: int = 1
) -> dict[str, float]:
    """Interleaved medians (``unetgraph.util.interleaved_ms``), synchronizing a GPU around each call."""
    from unetgraph.util import interleaved_ms

    if not device.startswith("cuda"):
        return interleaved_ms(fns, repeat, warmup)

    def synced(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            out = fn()
            sync(device)
            return out

        return run

    sync(device)
    return interleaved_ms({k: synced(f) for k, f in fns.items()}, repeat, warmup)


def conv_peak(device: str = "cpu", dims: int = 2) -> float:
    """The best float32 3×3 convolution rate (GFLOP/s, channels-last, batch 1) over the layer
    shapes of a 64…512 U-Net (at 128² in 2D, 32³ in 3D), plain or prepacked weights (oneDNN,
    CPU): the ceiling of a convolution-bound float32 network on this machine."""
    shapes = ((64, 128), (128, 64), (256, 32), (512, 16)) if dims == 2 else ((64, 32), (128, 16), (256, 8))
    fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
    conv = torch.nn.functional.conv2d if dims == 2 else torch.nn.functional.conv3d
    best = 0.0
    with torch.no_grad():
        for c, s in shapes:
            x = torch.randn(1, c, *(s,) * dims, device=device).contiguous(memory_format=fmt)
            w = torch.randn(c, c, *(3,) * dims, device=device).contiguous(memory_format=fmt)
            fns: dict[str, Callable[[], object]] = {"plain": lambda x=x, w=w: conv(x, w, padding=1)}
            if device == "cpu" and torch.backends.mkldnn.is_available():
                ones = [1] * dims
                packed = torch.ops.mkldnn._reorder_convolution_weight(w, ones, ones, ones, 1, list(x.shape))
                fns["packed"] = lambda x=x, p=packed, o=ones: torch.ops.mkldnn._convolution_pointwise(
                    x, p, None, o, o, o, 1, "none", [], ""
                )
            ms = timed_ms(fns, 7, device)
            best = max(best, 2 * c * c * 3**dims * s**dims / (min(ms.values()) / 1e3) / 1e9)
    return best


def matmul_peak(device: str = "cpu") -> float:
    """The best float32 matmul rate (GFLOP/s) over 1024² and 2048²."""
    best = 0.0
    for n in (1024, 2048):
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        ms = timed_ms({"mm": lambda a=a, b=b: a @ b}, 5, device, warmup=2)["mm"]
        best = max(best, 2 * n**3 / (ms / 1e3) / 1e9)
    return best


def bandwidth(device: str = "cpu") -> float:
    """Memory bandwidth (GB/s) as a copy of 256 MB counts it (read + write)."""
    a = torch.empty(64 * 2**20, device=device).normal_()
    b = torch.empty_like(a)
    ms = timed_ms({"copy": lambda: b.copy_(a)}, 7, device, warmup=2)["copy"]
    return 2 * a.numel() * 4 / (ms / 1e3) / 1e9


def cpu_model() -> str:
    """The CPU's model name, as ``lscpu`` shows it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def add_allocator_option(p: argparse.ArgumentParser) -> None:
    """``--default-allocator``: measure with glibc's defaults instead of ``ug.keep_freed_memory()``."""
    p.add_argument(
        "--default-allocator", action="store_true", help="keep glibc's defaults (default: ug.keep_freed_memory())"
    )


def status_kb(field: str) -> int | None:
    """A ``/proc/self/status`` field in kB (``VmRSS``, ``VmHWM``), or ``None`` off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def allocator_setting(default: bool) -> str:
    """Apply the allocator setting a benchmark measures under and say which it is: glibc's
    defaults, or ``ug.keep_freed_memory()`` (docs/deploy.md recommends it for inference)."""
    import unetgraph as ug

    if default:
        return "allocator: glibc's defaults (--default-allocator)"
    kept = ug.keep_freed_memory()
    return "allocator: ug.keep_freed_memory()" + ("" if kept else " had no effect (not glibc)")


@dataclass(frozen=True)
class Machine:
    """The limits a layer is measured against."""

    device: str
    conv: float  # GFLOP/s, float32 3×3 convolution peak
    sgemm: float  # GFLOP/s, float32 matmul peak
    bandwidth: float  # GB/s

    @classmethod
    def measure(cls, device: str = "cpu", dims: int = 2) -> Machine:
        return cls(device, conv_peak(device, dims), matmul_peak(device), bandwidth(device))

    def describe(self) -> str:
        where = (
            f"{cpu_model()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads"
            if self.device == "cpu"
            else self.device
        )
        return (
            f"{where}, torch {torch.__version__}: float32 3×3 convolution peak {self.conv:.0f} GFLOP/s, "
            f"matmul {self.sgemm:.0f} GFLOP/s, memory {self.bandwidth:.0f} GB/s"
        )


# -- per-layer timing -----------------------------------------------------------------------------


class Layer(NamedTuple):
    """One fx call node of a forward: what it is, its median time and its work."""

    name: str
    what: str
    ms: float
    flops: int
    bytes: int

    def limit_ms(self, machine: Machine) -> float:
        """The time this layer needs at the convolution peak or the memory bandwidth, whichever is longer."""
        return max(self.flops / (machine.conv * 1e6), self.bytes / (machine.bandwidth * 1e6))


class _Timer(fx.Interpreter):
    """Runs a GraphModule node by node, timing every call node (synchronizing a GPU)."""

    def __init__(self, gm: fx.GraphModule, device: str) -> None:
        super().__init__(gm)
        self.device = device
        self.times: dict[str, list[float]] = {}
        self.info: dict[str, tuple[str, int]] = {}

    def run_node(self, n: fx.Node) -> Any:
        if not n.op.startswith("call"):
            return super().run_node(n)
        args = [self.env[a] for a in n.all_input_nodes]
        sync(self.device)
        start = time.perf_counter()
        result = super().run_node(n)
        sync(self.device)
        self.times.setdefault(n.name, []).append(time.perf_counter() - start)
        if n.name not in self.info:
            self.info[n.name] = (_describe(self.module, n, args, result), _bytes(self.module, n, args, result))
        return result


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return 0 if value.is_mkldnn else value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


def _bytes(gm: fx.GraphModule, n: fx.Node, args: list, result: Any) -> int:
    """Bytes a node must move at least: its tensor inputs, its output and its module's weights."""
    total = sum(_nbytes(a) for a in args) + _nbytes(result)
    if n.op == "call_module":
        module = gm.get_submodule(str(n.target))
        total += sum(p.numel() * p.element_size() for p in module.parameters())
    return total


def _shape(value: Any) -> str:
    if isinstance(value, torch.Tensor) and value.dim() > 2:
        return "×".join(map(str, value.shape[2:]))
    return ""


def _describe(gm: fx.GraphModule, n: fx.Node, args: list, result: Any) -> str:
    """A short description: the layer type, channels and kernel for convolutions, the input's spatial size."""
    x = args[0] if args else None
    where = f" @{_shape(x)}" if _shape(x) else ""
    if n.op == "call_module":
        module = gm.get_submodule(str(n.target))
        weight = getattr(module, "weight", None)
        kind = type(module).__name__
        extra = f"+{module.activation}" if getattr(module, "activation", "none") != "none" else ""
        if isinstance(weight, torch.Tensor) and weight.dim() > 2:
            transposed = getattr(module, "transposed", False)
            cin, cout = (weight.shape[0], weight.shape[1]) if transposed else (weight.shape[1], weight.shape[0])
            kernel = "×".join(map(str, weight.shape[2:]))
            return f"{kind}{extra} {kernel} {cin}→{cout}{where}"
        if isinstance(weight, torch.Tensor) and weight.dim() == 2:
            return f"{kind}{extra} {weight.shape[1]}→{weight.shape[0]}{where}"
        return f"{kind}{extra}{where}"
    target = getattr(n.target, "__name__", str(n.target))
    return f"{target}{where}"


def profile(
    gm: fx.GraphModule, inputs: Sequence[torch.Tensor], *, repeat: int = 5, device: str = "cpu"
) -> tuple[list[Layer], float]:
    """Per call node of ``gm``: median time over ``repeat`` runs and FLOPs; and the whole forward's median ms.

    The forward itself is timed in the same interleaved rounds as the node-by-node run, so the
    overhead of the Interpreter shows as the difference between the two.
    """
    import unetgraph as ug

    timer = _Timer(gm, device)
    with torch.no_grad():
        flops = {k: f for k, (_, f) in ug.cost.measure(gm, *inputs).items()}
        ms = timed_ms({"layers": lambda: timer.run(*inputs), "forward": lambda: gm(*inputs)}, repeat, device)
    layers = [
        Layer(name, timer.info[name][0], statistics.median(t) * 1e3, flops.get(name, 0), timer.info[name][1])
        for name, t in timer.times.items()
    ]
    return layers, ms["forward"]


def table(
    title: str,
    layers: list[Layer],
    forward_ms: float,
    machine: Machine,
    *,
    top: int = 10,
    out: Callable = print,
    nominal: int | None = None,
) -> dict[str, float]:
    """Print the ``top`` layers that lose the most time against their limit, then the totals.

    A layer's rate counts the FLOPs it does. ``nominal``: the model's own FLOPs where passes made
    the layers do fewer (``fold_upsampling`` computes an upsampled convolution at the coarse
    size); the forward's rate then counts those, as every other row of the benchmarks does.

    Returns the totals: ``ms`` (sum of the layers), ``forward_ms``, ``gflops``, ``conv_pct`` (the
    whole forward's FLOP-weighted rate as % of the convolution peak), ``limit_pct`` (the sum of
    the layers' limits as % of the forward), and ``flagged`` (layers above 5% of the time below
    50% of peak).
    """
    total = sum(layer.ms for layer in layers)
    work = sum(layer.flops for layer in layers)
    limit = sum(layer.limit_ms(machine) for layer in layers)
    lost = sorted(layers, key=lambda layer: layer.limit_ms(machine) - layer.ms)
    out(f"== {title}")
    out(
        f"{'layer':<22} {'what':<38} {'ms':>8} {'GFLOP/s':>8} {'% conv':>7} {'limit ms':>9} {'% limit':>8}"
        f" {'% time':>7} {'lost ms':>8}"
    )
    flagged = 0
    for layer in layers:
        rate = layer.flops / (layer.ms * 1e6) if layer.ms else 0.0
        flagged += layer.ms > 0.05 * total and rate < 0.5 * machine.conv
    for layer in lost[:top]:
        rate = layer.flops / (layer.ms * 1e6) if layer.ms else 0.0
        share = layer.ms / total
        mark = "!" if share > 0.05 and rate < 0.5 * machine.conv else " "
        lim = layer.limit_ms(machine)
        out(
            f"{layer.name[:22]:<22} {layer.what[:38]:<38} {layer.ms:>8.2f} {rate:>8.1f} "
            f"{100 * rate / machine.conv:>6.1f}% {lim:>9.2f} {100 * lim / layer.ms if layer.ms else 0:>7.1f}% "
            f"{100 * share:>6.1f}%{mark}{layer.ms - lim:>8.2f}"
        )
    fewer = nominal is not None and nominal > 1.001 * work
    counted = nominal if nominal is not None and fewer else work
    rate = counted / (forward_ms * 1e6)
    what = f"{work / 1e9:.2f} GFLOP"
    if fewer:
        what = f"the layers do {work / 1e9:.2f} of the model's {counted / 1e9:.2f} GFLOP (folded upsamplings)"
    bound_pct = 100 * counted / (limit * 1e6) / machine.conv if limit else 0.0
    out(
        f"  {len(layers)} nodes: {total:.1f} ms node by node, forward {forward_ms:.1f} ms; {what} → "
        f"{rate:.0f} GFLOP/s = {100 * rate / machine.conv:.0f}% of the convolution peak (FLOP-weighted); "
        f"the layers' limits sum to {limit:.1f} ms ({100 * limit / forward_ms:.0f}% of the forward), so with every "
        f"layer at its limit the model would reach {bound_pct:.0f}% of the peak on this machine; "
        f"{flagged} layer(s) above 5% of the time below 50% of peak"
    )
    out("")
    return {
        "ms": total,
        "forward_ms": forward_ms,
        "gflops": counted / 1e9,
        "conv_pct": 100 * rate / machine.conv,
        "limit_pct": 100 * limit / forward_ms,
        "bound_pct": bound_pct,
        "flagged": flagged,
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", nargs="+", choices=PRESETS, default=list(PRESETS))
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--mode", nargs="+", choices=MODES, default=["channels-last", "optimized"])
    p.add_argument("--repeat", type=int, default=5, help="timed rounds (medians)")
    p.add_argument("--top", type=int, default=8, help="layers listed per table")
    p.add_argument("--size", type=int, default=None, help="override every preset's spatial size")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu, or cuda where a GPU and a CUDA torch are present")
    add_allocator_option(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(allocator_setting(args.default_allocator))
    machines: dict[int, Machine] = {}
    for name in args.preset:
        case = CASES[name]
        if args.size:
            case = case._replace(size=(args.size,) * len(case.size))
        dims = len(case.size)
        if dims not in machines:
            machines[dims] = Machine.measure(args.device, dims)
            print(f"machine ({dims}D peak): {machines[dims].describe()}\n")
        g = case.build()
        models = build_modes(g, args.mode, args.device)
        for batch in args.batch:
            xs = case_inputs(case, g, batch, args.device)
            nominal = nominal_flops(g, xs, args.device)
            for mode, gm in models.items():
                layers, forward = profile(gm, xs, repeat=args.repeat, device=args.device)
                size = "×".join(map(str, case.size))
                title = f"{case.title}, {mode}, batch {batch} at {size}"
                table(title, layers, forward, machines[dims], top=args.top, nominal=nominal)


def nominal_flops(g: Any, xs: Sequence[torch.Tensor], device: str = "cpu") -> int:
    """The FLOPs of the lowered model as the graph specifies it (before any pass)."""
    import unetgraph as ug

    gm = g.lower().eval().to(device)
    counter = ug.cost.flop_counter()
    with counter, torch.no_grad():
        gm(*xs)
    return int(counter.get_total_flops())


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
