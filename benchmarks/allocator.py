"""What ``ug.keep_freed_memory()`` is worth: each preset's ``optimize()``d module with glibc's
default allocator settings and with freed memory kept, and the page faults of one forward.

    .venv/bin/python -m benchmarks.allocator                        # every preset, batch 1 and 8
    .venv/bin/python -m benchmarks.allocator --preset bn4 --batch 8
    .venv/bin/python -m benchmarks.allocator --preset sizes         # a U-Net served at seven sizes in turn

The setting is process-wide and cannot be undone (glibc's defaults adapt as the process runs),
so each measurement runs in a child process of its own: the two settings alternate, ``--rounds``
times each, and each cell is the median of the rounds' medians. ``sizes`` is a small U-Net
(widths 32, 64, 128) whose timed unit is one forward at each of seven sizes in turn (128² to 512²):
what a service with dynamic sizes asks of the heap. The machine line (CPU model, convolution peak)
is measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.layers import PRESETS

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("default", "kept")
CYCLE = tuple(range(128, 513, 64))  # the sizes the ``sizes`` case serves in turn


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cases = [*PRESETS, "sizes"]
    p.add_argument("--preset", nargs="+", choices=cases, default=cases)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeat", type=int, default=7, help="timed calls per child (median)")
    p.add_argument("--rounds", type=int, default=3, help="child processes per setting and cell (median)")
    p.add_argument("--child", nargs=3, metavar=("PRESET", "BATCH", "SETTING"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(preset: str, batch: int, setting: str, repeat: int) -> None:
    """One measurement: print ``{"ms": median, "faults": minor page faults per forward, "peak": the
    process's peak resident memory in MiB}`` as JSON."""
    import resource
    import time

    import torch

    import unetgraph as ug
    from benchmarks.layers import CASES, case_inputs, randomize, status_kb

    if setting == "kept" and not ug.keep_freed_memory():
        raise SystemExit("ug.keep_freed_memory() had no effect here (not glibc)")
    torch.manual_seed(0)
    if preset == "sizes":
        g = ug.unet(3, 2, widths=(32, 64, 128))
        calls = [(torch.randn(batch, 3, size, size),) for size in CYCLE]
    else:
        case = CASES[preset]
        g = case.build()
        calls = [case_inputs(case, g, batch)]
    fast = ug.optimize(randomize(g.lower()).eval()).module
    times = []
    with torch.no_grad():

        def unit() -> None:
            for xs in calls:
                fast(*xs)

        unit()  # the first forward faults its memory in under either setting
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(repeat):
            start = time.perf_counter()
            unit()
            times.append(time.perf_counter() - start)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    peak = status_kb("VmHWM") or 0
    print(json.dumps({"ms": 1e3 * statistics.median(times), "faults": faults / repeat, "peak": peak / 1024}))


def measure(preset: str, batch: int, setting: str, repeat: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "benchmarks.allocator", "--repeat", str(repeat)]
    cmd += ["--child", preset, str(batch), setting]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{preset} batch {batch} ({setting}) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.child:
        preset, batch, setting = args.child
        child(preset, int(batch), setting, args.repeat)
        return
    from benchmarks.layers import Machine

    print(f"machine: {Machine.measure('cpu', 2).describe()}")
    print(f"{args.rounds} child processes per setting and cell, {args.repeat} timed forwards each (medians)\n")
    print(
        f"{'preset':<10} {'batch':>5} {'default ms':>11} {'kept ms':>9} {'speed-up':>9} {'faults/forward':>21} "
        f"{'peak MiB':>15}"
    )
    for preset in args.preset:
        for batch in args.batch:
            runs: dict[str, list[dict[str, float]]] = {s: [] for s in SETTINGS}
            for _ in range(args.rounds):
                for setting in SETTINGS:
                    runs[setting].append(measure(preset, batch, setting, args.repeat))
            ms = {s: statistics.median(r["ms"] for r in runs[s]) for s in SETTINGS}
            faults = {s: statistics.median(r["faults"] for r in runs[s]) for s in SETTINGS}
            peak = {s: statistics.median(r["peak"] for r in runs[s]) for s in SETTINGS}
            print(
                f"{preset:<10} {batch:>5} {ms['default']:>11.1f} {ms['kept']:>9.1f} "
                f"{ms['default'] / ms['kept']:>8.2f}× {faults['default']:>10,.0f} → {faults['kept']:>7,.0f} "
                f"{peak['default']:>6,.0f} → {peak['kept']:>6,.0f}",
                flush=True,
            )
    print(
        "\n  faults/forward: minor page faults of one forward (the kernel zeroing fresh pages), default → kept"
        "\n  (sizes: of the seven forwards together);"
        "\n  peak MiB: the child process's peak resident memory (weights, Python and torch included), default → kept"
    )


if __name__ == "__main__":
    main()
