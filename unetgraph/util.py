"""Small helpers with no place of their own."""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from typing import Callable, Iterator, Mapping

__all__ = ["paused_gc", "median_ms", "interleaved_ms"]


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a burst of allocations.

    Analyses of large graphs allocate many small, acyclic objects; each full collection
    they trigger walks the whole heap, graph included, which made the checker's time per
    node grow with the graph (28 µs/node at 10,000 nodes against 13 µs with collection
    paused). Reference counting still frees everything at once.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def median_ms(fn: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in milliseconds, after ``warmup`` untimed calls."""
    return interleaved_ms({"fn": fn}, repeat, warmup)["fn"]


def interleaved_ms(fns: Mapping[str, Callable[[], object]], repeat: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each function in milliseconds, timed in interleaved rounds so that
    a change in the machine's load hits every function alike (how benchmarks compare peers)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}
