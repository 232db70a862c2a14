"""Keep freed memory for reuse: the C allocator setting that large CPU activations need.

torch allocates CPU tensors with the C library's ``malloc``. glibc serves blocks above its
``mmap`` threshold (32 MiB at most) straight from the kernel and returns them when freed,
and gives the top of its heap back when more than the trim threshold is free. A U-Net whose
activations exceed that (a 4-level U-Net at 128², batch 8: 33.5 MB per 64-channel map; a 3D
U-Net at 64³ even at batch 1) then gets fresh pages for every large tensor of every forward,
and the kernel faults each page in and zeroes it: 8–19% of those forwards on the machine
measured (``benchmarks/allocator.py``; docs/deploy.md has the table). :func:`keep_freed_memory`
makes glibc serve every block from its heap and keep what is freed, so the next forward reuses
the same memory.

Training steps pay the same (a 4-level U-Net at batch 4, 128²: 1.17–1.19× per step). The
setting is process-wide, like ``torch.set_num_threads``: call it once when an inference or a CPU
training process starts. The price is memory: the heap keeps what the largest forward needed,
and blocks of changing sizes leave holes it cannot hand to larger requests, so the peak grows
(up to 20% on the presets at one size; 2.2× for a model served at seven sizes in turn). With a
C library other than glibc the call changes nothing and returns ``False``; jemalloc or tcmalloc
loaded with ``LD_PRELOAD`` keep freed memory by themselves, and the call does not disturb them.
"""

from __future__ import annotations

import ctypes
import threading

__all__ = ["keep_freed_memory"]

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP = 2**31 - 1  # the largest trim threshold mallopt takes: the heap's top goes back only past 2 GiB free

_lock = threading.Lock()
_kept = False


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel (see the
    module's description): large tensors then cost no page faults after the first forwards, for
    a higher peak of resident memory.

    Process-wide and lasting; safe to call again and from several threads. Returns whether
    glibc took the setting: ``False`` where the C library is not glibc.
    """
    global _kept
    with _lock:
        if not _kept:
            _kept = _mallopt(_M_MMAP_MAX, 0) and _mallopt(_M_TRIM_THRESHOLD, _KEEP)
        return _kept


def _mallopt(param: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc's own symbol: musl's mallopt is a stub
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(param, value) == 1)
