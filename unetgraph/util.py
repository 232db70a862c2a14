"""Small helpers with no place of their own."""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator

__all__ = ["paused_gc"]


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
