"""Training speed and memory side by side, in one process: a training step (forward, loss, backward,
Adam) of unetgraph's lowered module against peers at the same architecture and weights.

    .venv/bin/python -m benchmarks.train                    # every section (minutes)
    .venv/bin/python -m benchmarks.train --quick            # tiny models: a smoke run
    .venv/bin/python -m benchmarks.train --no-compile       # eager rows only
    .venv/bin/python -m benchmarks.train --only memory      # checkpointing: peak memory and time

Sections (outputs and gradients are compared before timing):

1. a padded BN U-Net (``--widths``, ``--size``, ``--batch``) against the hand-written one
   (benchmarks/handwritten.py): eager, channels-last, bfloat16 autocast, compiled;
2. MONAI ``BasicUNet`` against the same network built as a graph (benchmarks/peers.py): eager, compiled;
3. DDPM (CIFAR-10 preset) against diffusers ``UNet2DModel``: eager, bfloat16 autocast, compiled;
4. activation checkpointing: peak memory and time of one step with and without
   ``lower(checkpoint="all")`` (full and selective) for the classic preset at 256², batch 4, and
   DDPM at 32², batch 32.

Columns: median milliseconds per step over interleaved rounds (``unetgraph.util.interleaved_ms``),
our time over the peer's in the same mode (targets: eager ≤ 1.02, compiled ≤ 1.00), and for
compiled rows the first step's time (compile, forward and backward) and the graphs compiled.
Memory: peak resident-memory growth of one step after a warm-up step (Linux VmHWM) and what
autograd saved for the backward pass (its saved-tensor hooks). The process runs under
``ug.keep_freed_memory()`` (every row, peers included) unless ``--default-allocator``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

ARGS: argparse.Namespace


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    from benchmarks.layers import add_allocator_option  # imports torch, not inductor's config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512], help="section 1's U-Net widths")
    p.add_argument("--size", type=int, default=128, help="section 1 and 2 input height and width")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--ddpm-batch", type=int, default=8)
    p.add_argument("--repeat", type=int, default=7, help="timed rounds (medians)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-compile", action="store_true", help="eager rows only")
    p.add_argument("--only", nargs="+", choices=["classic", "monai", "ddpm", "memory"], help="sections to run")
    p.add_argument("--cache", action="store_true", help="allow inductor's caches (warm compile times)")
    p.add_argument("--quick", action="store_true", help="tiny models and sizes, 2 rounds: a smoke run")
    add_allocator_option(p)
    args = p.parse_args(argv)
    if args.quick:
        args.widths, args.size, args.batch, args.ddpm_batch, args.repeat = [8, 16, 32], 32, 2, 2, 2
    return args


def main(argv: list[str] | None = None) -> None:
    global ARGS
    ARGS = parse(argv)
    if not ARGS.cache:
        os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"
    import torch

    from benchmarks.layers import allocator_setting, cpu_model

    if ARGS.threads:
        torch.set_num_threads(ARGS.threads)
    torch.manual_seed(0)
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {ARGS.repeat} interleaved rounds{' (--quick)' if ARGS.quick else ''}"
    )
    print(allocator_setting(ARGS.default_allocator) + "\n")
    only = set(ARGS.only or ["classic", "monai", "ddpm", "memory"])
    if "classic" in only:
        section_classic()
    if "monai" in only:
        section_monai()
    if "ddpm" in only:
        section_ddpm()
    if "memory" in only:
        section_memory()


# -- a training step ------------------------------------------------------------------------------


class Call:
    """Call a model with a tuple of inputs; unwrap diffusers' output."""

    def __init__(self, model: Any, sample: bool = False) -> None:
        self.model, self.sample = model, sample

    def __call__(self, inputs: tuple) -> Any:
        out = self.model(*inputs)
        return out.sample if self.sample else out


def trainer(
    model: Any, inputs: tuple, target: Any, *, sample: bool = False, bf16: bool = False, channels_last: bool = False
) -> Callable[[], float]:
    """One training step of ``model`` (its own Adam), as a function of nothing that returns the loss."""
    import torch
    import torch.nn.functional as F

    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        inputs = (inputs[0].contiguous(memory_format=torch.channels_last), *inputs[1:])
    params = getattr(model, "_orig_mod", model).parameters()
    opt = torch.optim.Adam(params, lr=1e-4)
    call = Call(model, sample)
    loss_fn = F.cross_entropy if target.dtype == torch.int64 else F.mse_loss

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            out = call(inputs)
        loss = loss_fn(out.float(), target)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def check_same_step(ours: Any, peer: Any, inputs: tuple, target: Any, what: str, sample: bool = False) -> None:
    """Equal outputs and gradients (parameters by position) on copies, so the comparison means something."""
    import torch
    import torch.nn.functional as F

    a, b = copy.deepcopy(ours).train(), copy.deepcopy(peer).train()
    ya, yb = Call(a)(inputs), Call(b, sample)(inputs)
    loss = F.cross_entropy if target.dtype == torch.int64 else F.mse_loss
    loss(ya, target).backward()
    loss(yb, target).backward()
    worst = max((ya - yb).abs().max().item() / max(1.0, ya.abs().max().item()), 0.0)
    for pa, pb in zip(a.parameters(), b.parameters()):
        scale = max(1e-6, pa.grad.abs().max().item())
        worst = max(worst, (pa.grad - pb.grad).abs().max().item() / scale)
    if not worst <= 1e-3:
        raise SystemExit(f"{what}: outputs or gradients differ by {worst:.3g} (relative); the comparison is off")


def compiled(model: Any, fullgraph: bool) -> tuple[Any, Any]:
    """``torch.compile`` with inductor (training: no freezing) and a graph counter."""
    import torch

    from benchmarks.deploy import CountingInductor

    backend = CountingInductor()
    return torch.compile(model, backend=backend, fullgraph=fullgraph), backend


def first_step(step: Callable[[], Any]) -> float:
    t = time.perf_counter()
    step()
    return time.perf_counter() - t


def run_table(title: str, rows: dict[str, dict[str, Any]], pairs: dict[str, str]) -> None:
    """Time every step (interleaved) and print; ``pairs``: our row → the peer row of the same mode."""
    from unetgraph.util import interleaved_ms

    ms = interleaved_ms({name: r["step"] for name, r in rows.items()}, ARGS.repeat)
    print(f"== {title}")
    print(f"{'training step':<44} {'ms':>9} {'ours/peer':>10} {'first step s':>13} {'graphs':>7}")
    for name, r in rows.items():
        peer = pairs.get(name)
        ratio = f"{ms[name] / ms[peer]:.3f}" if peer in ms else ""
        first = "" if r.get("first") is None else f"{r['first']:.1f}"
        print(f"{name:<44} {ms[name]:>9.1f} {ratio:>10} {first:>13} {r.get('graphs', ''):>7}")
    print()


def compiled_rows(rows: dict[str, dict[str, Any]], models: dict[str, tuple[Any, bool, dict]], inputs, target) -> None:
    import torch

    for name, (model, fullgraph, options) in models.items():
        torch._dynamo.reset()
        fast, backend = compiled(model, fullgraph)
        step = trainer(fast, inputs, target, **options)
        try:
            first = first_step(step)
        except Exception as e:  # a compiler failure on a peer's model is a result, not the end of the run
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            print(f"  {name}: the compiled training step fails ({type(e).__name__}: {reason})")
            continue
        rows[name] = {"step": step, "first": first, "graphs": backend.count}


# -- sections -------------------------------------------------------------------------------------


def section_classic() -> None:
    import torch

    import unetgraph as ug
    from benchmarks.handwritten import HandWrittenUNet, copy_weights

    widths = tuple(ARGS.widths)
    gm = ug.unet(3, 2, widths=widths, block=ug.ConvBlock(norm="batch"), name="ClassicUNetPadded").lower()
    hand = HandWrittenUNet(3, 2, widths)
    copy_weights(gm, hand)
    x = (torch.randn(ARGS.batch, 3, ARGS.size, ARGS.size),)
    y = torch.randint(0, 2, (ARGS.batch, ARGS.size, ARGS.size))
    check_same_step(gm, hand, x, y, "hand-written vs ours")
    rows: dict[str, dict[str, Any]] = {}
    pairs: dict[str, str] = {}
    for mode, options in (("eager", {}), ("channels-last", {"channels_last": True}), ("bf16 autocast", {"bf16": True})):
        rows[f"hand-written {mode}"] = {"step": trainer(copy.deepcopy(hand), x, y, **options)}
        rows[f"unetgraph {mode}"] = {"step": trainer(copy.deepcopy(gm), x, y, **options)}
        pairs[f"unetgraph {mode}"] = f"hand-written {mode}"
    if not ARGS.no_compile:
        compiled_rows(
            rows,
            {
                "hand-written compiled": (copy.deepcopy(hand), False, {}),
                "unetgraph compiled": (copy.deepcopy(gm), True, {}),
            },
            x,
            y,
        )
        pairs["unetgraph compiled"] = "hand-written compiled"
    title = f"{len(widths)}-level BN U-Net {widths}, batch {ARGS.batch} at {ARGS.size}², vs hand-written (same weights)"
    run_table(title, rows, pairs)


def section_monai() -> None:
    import torch

    from benchmarks.peers import copy_weights, monai_basic_unet, monai_basic_unet_graph

    features = (8, 16, 32, 64, 128, 8) if ARGS.quick else (32, 64, 128, 256, 512, 32)
    gm = monai_basic_unet_graph(3, 2, features).lower()
    monai = monai_basic_unet(3, 2, features)
    copy_weights(gm, monai)
    x = (torch.randn(ARGS.batch, 3, ARGS.size, ARGS.size),)
    y = torch.randint(0, 2, (ARGS.batch, ARGS.size, ARGS.size))
    check_same_step(gm, monai, x, y, "MONAI BasicUNet vs ours")
    rows = {
        "MONAI BasicUNet eager": {"step": trainer(copy.deepcopy(monai), x, y)},
        "unetgraph eager": {"step": trainer(copy.deepcopy(gm), x, y)},
    }
    pairs = {"unetgraph eager": "MONAI BasicUNet eager"}
    if not ARGS.no_compile:  # BasicUNet breaks the graph (torch.jit.isinstance): fullgraph=False for it
        compiled_rows(
            rows,
            {
                "MONAI BasicUNet compiled": (copy.deepcopy(monai), False, {}),
                "unetgraph compiled": (copy.deepcopy(gm), True, {}),
            },
            x,
            y,
        )
        pairs["unetgraph compiled"] = "MONAI BasicUNet compiled"
    run_table(f"MONAI BasicUNet {features}, batch {ARGS.batch} at {ARGS.size}² (same weights)", rows, pairs)


def ddpm_pair() -> tuple[Any, Any, dict[str, str]]:
    """(our lowered DDPM, diffusers' UNet2DModel with its weights, our key → diffusers' key); tiny
    ones with --quick."""
    from diffusers import UNet2DModel

    import unetgraph as ug
    from benchmarks.ddpm_vs_diffusers import CONFIG

    if ARGS.quick:  # the preset's structure at widths 32, 64 and 8 groups
        config = {
            **CONFIG,
            "block_out_channels": (32, 64),
            "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
            "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
            "norm_num_groups": 8,
        }
        g = ug.diffusion_unet(
            3,
            3,
            (32, 64),
            layers_per_block=2,
            attention_levels=(1,),
            resblock=ug.ResBlock(groups=8, eps=1e-6, act="silu", dropout=0.0),
            attention=ug.SelfAttention(groups=8, eps=1e-6),
            time_embedding=ug.TimestepEmbedding(flip_sin_to_cos=False, freq_shift=1),
            down=ug.Down("conv", kernel=3, padding=0, pad_end=1),
            up=ug.Up("nearest"),
        )
    else:
        config, g = CONFIG, ug.presets.ddpm_unet(32)
    peer = UNet2DModel(**config)
    gm = g.lower()
    theirs = peer.state_dict()
    keys = ug.interop.diffusers_keys(g, gm.state_dict())  # the one key map
    gm.load_state_dict({k: theirs[v] for k, v in keys.items()})
    return gm, peer, keys


def section_ddpm() -> None:
    import torch

    gm, peer, keys = ddpm_pair()
    for m in (gm, peer):  # dropout off: the same function on both sides, step after step
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
    batch = ARGS.ddpm_batch
    xt = (torch.randn(batch, 3, 32, 32), torch.randint(0, 1000, (batch,)))
    noise = torch.randn(batch, 3, 32, 32)
    a, b = copy.deepcopy(gm), copy.deepcopy(peer)
    out_a, out_b = a(*xt), b(*xt).sample
    torch.nn.functional.mse_loss(out_a, noise).backward()
    torch.nn.functional.mse_loss(out_b, noise).backward()
    theirs = dict(b.named_parameters())
    worst = (out_a - out_b).abs().max().item()
    for k, p in a.named_parameters():
        q = theirs[keys[k]]
        worst = max(worst, (p.grad - q.grad).abs().max().item() / max(1e-6, q.grad.abs().max().item()))
    if not worst <= 1e-3:
        raise SystemExit(f"DDPM: outputs or gradients differ from diffusers' by {worst:.3g}")
    rows: dict[str, dict[str, Any]] = {}
    pairs: dict[str, str] = {}
    for mode, options in (("eager", {}), ("bf16 autocast", {"bf16": True})):
        rows[f"diffusers UNet2DModel {mode}"] = {
            "step": trainer(copy.deepcopy(peer), xt, noise, sample=True, **options)
        }
        rows[f"unetgraph {mode}"] = {"step": trainer(copy.deepcopy(gm), xt, noise, **options)}
        pairs[f"unetgraph {mode}"] = f"diffusers UNet2DModel {mode}"
    if not ARGS.no_compile:
        compiled_rows(
            rows,
            {
                "diffusers UNet2DModel compiled": (copy.deepcopy(peer), False, {"sample": True}),
                "unetgraph compiled": (copy.deepcopy(gm), True, {}),
            },
            xt,
            noise,
        )
        pairs["unetgraph compiled"] = "diffusers UNet2DModel compiled"
    run_table(f"DDPM, batch {batch} at 32², vs diffusers UNet2DModel (same weights)", rows, pairs)


def section_memory() -> None:
    """Peak memory and time of one step with and without activation checkpointing."""
    import torch

    import unetgraph as ug

    if ARGS.quick:
        cases = [
            ("U-Net (8..64)", ug.unet(3, 2, widths=(8, 16, 32, 64)), 64, 2),
            ("DDPM-like (32, 64)", None, 32, 4),
        ]
    else:
        cases = [
            ("classic U-Net (padded)", ug.presets.classic_unet(3, 2, padded=True), 256, 4),
            ("DDPM CIFAR-10", None, 32, 32),
        ]
    for title, g, size, batch in cases:
        if g is None:
            base, _, _ = ddpm_pair()
            inputs = (torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,)))
            target = torch.randn(batch, 3, size, size)
        else:
            base = g.lower()
            inputs = (torch.randn(batch, 3, size, size),)
            target = torch.randint(0, 2, (batch, size, size))
        variants = {
            "no checkpointing": base,
            "checkpoint='all'": ug.group_nodes(copy.deepcopy(base), checkpoint="all"),
            "checkpoint='all', selective": ug.group_nodes(copy.deepcopy(base), checkpoint="all", policy="selective"),
        }
        steps = {name: trainer(m, inputs, target) for name, m in variants.items()}
        memory = {}
        for name, step in steps.items():
            step()  # warm-up: Adam's state exists before the measured step
            memory[name] = (peak_memory(step), saved_for_backward(variants[name], inputs))
        from unetgraph.util import interleaved_ms

        ms = interleaved_ms(steps, ARGS.repeat, warmup=0)
        print(f"== activation checkpointing: {title}, batch {batch} at {size}²")
        print(f"{'':<30} {'ms/step':>9} {'time':>8} {'peak MB':>9} {'peak':>8} {'saved MB':>9} {'saved':>8}")
        ref_ms, (ref_peak, ref_saved) = ms["no checkpointing"], memory["no checkpointing"]
        for name in steps:
            peak, saved = memory[name]
            peak_text = "" if peak is None else f"{peak:>9.0f} {100 * (peak / ref_peak - 1) if ref_peak else 0:>+7.0f}%"
            print(
                f"{name:<30} {ms[name]:>9.1f} {100 * (ms[name] / ref_ms - 1):>+7.0f}% {peak_text:>18} "
                f"{saved:>9.0f} {100 * (saved / ref_saved - 1):>+7.0f}%"
            )
        print("  (targets: checkpoint='all' cuts peak memory by 40% or more for at most 35% more time)\n")


def peak_memory(fn: Callable[[], Any]) -> float | None:
    from benchmarks.deploy import peak_memory_mb

    return peak_memory_mb(fn)


def saved_for_backward(model: Any, inputs: tuple) -> float:
    """MB autograd keeps from a forward pass for the backward (saved-tensor hooks; selective
    checkpointing's saves included)."""
    import torch

    total = [0]

    def pack(t: Any) -> Any:
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(*inputs)
    return total[0] / 2**20


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
