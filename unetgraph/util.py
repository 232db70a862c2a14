"""Small helpers with no place of their own."""

from __future__ import annotations

import contextlib
import gc
import reprlib
import statistics
import threading
import time
from typing import Callable, Iterator, Mapping

__all__ = ["paused_gc", "median_ms", "interleaved_ms", "short_repr", "path_key", "TORCH_LOCK", "TURNS"]

# Torch's tracing, compiling and program loading are not thread-safe (pytorch#118260). Measured here
# (torch 2.14.1): a GraphModule made or compiled while another thread compiled lost fullgraph (its
# submodules compiled one by one up to the recompile limit); two torch.export calls at once failed
# ("ProxyTorchDispatchMode slot already occupied"); two program loads at once failed
# ("_CURRENT_DESERIALIZER is already set"). Every compile, export and torch load in this library
# holds this lock; compiled and loaded code runs outside it.
TORCH_LOCK = threading.RLock()


class _Turns:
    """Compiled and loaded models run side by side; an export runs alone.

    While torch.export traces it replaces ``nn.Module.__call__`` and dynamo's settings for every
    thread, so a model running in another thread meanwhile lands in the export's trace or finds its
    compiled code's guards changed. Measured (torch 2.14.1), serving a size-bucketed model in two
    threads while a third exported: every run failed in one thread or the other ("Unexpected key
    _export_root.x_guard@1", "Trying to pop empty mode stack", a recompile in fake mode). Calls of
    ``ug.compile``'d and loaded models hold :meth:`running`; exports hold :meth:`alone`, which waits
    for the calls in flight and holds new ones back. A thread that already holds a turn or
    :data:`TORCH_LOCK` is never held back (an export may run what it exported)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running = 0
        self._alone: int | None = None  # the exporting thread
        self._mine = threading.local()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Hold a turn to run compiled or loaded code (many threads at once)."""
        me = threading.get_ident()
        with self._cond:
            owned = TORCH_LOCK._is_owned()  # type: ignore[attr-defined]
            while self._alone not in (None, me) and not owned and not getattr(self._mine, "depth", 0):
                self._cond.wait()
            self._running += 1
            self._mine.depth = getattr(self._mine, "depth", 0) + 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._mine.depth -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        """Hold the process to oneself: wait for every call in flight (other threads'), hold new ones back."""
        me = threading.get_ident()
        with self._cond:
            if self._alone == me:  # nested
                outer = True
            else:
                outer = False
                while self._alone is not None:
                    self._cond.wait()
                self._alone = me
                while self._running - getattr(self._mine, "depth", 0) > 0:
                    self._cond.wait()
        try:
            yield
        finally:
            if not outer:
                with self._cond:
                    self._alone = None
                    self._cond.notify_all()


TURNS = _Turns()
"""Calls of compiled and loaded models run side by side, exports alone (see :class:`_Turns`)."""


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


class _Short(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        # repr() of an int over 4300 digits raises ValueError; long ones are cut anyway
        if x.bit_length() > 200:
            return f"<an integer of {int(x.bit_length() * 0.30103) + 1} digits>"
        return super().repr_int(x, level)


_SHORT = _Short()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 80, 80
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = _SHORT.maxfrozenset = 6


def short_repr(value: object) -> str:
    """``repr(value)`` cut to a line: error messages quote what they got without pasting a
    megabyte of it (a million-entry list, a deeply nested document, an integer of 5000 digits,
    whose plain ``repr`` raises) into the message."""
    return _SHORT.repr(value)


def path_key(key: object) -> str:
    """A mapping key as a step of a document path (``nodes.enc2.block``): a short string as it
    is, anything else (a number, a long or odd string) as its short ``repr``."""
    if isinstance(key, str) and len(key) <= 80 and key.isprintable() and "." not in key:
        return key
    return short_repr(key)
