"""``keep_freed_memory``: large tensors reuse freed memory instead of faulting in fresh pages.

The setting is process-wide and lasting, so it is checked in a child process of its own.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource
from concurrent.futures import ThreadPoolExecutor
import torch
import unetgraph as ug

def faults():  # minor page faults of three 64 MiB tensors, each written and freed
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        x = torch.empty(16 << 20)
        x.fill_(1.0)
        del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

before = faults()
with ThreadPoolExecutor(4) as pool:
    kept = list(pool.map(lambda _: ug.keep_freed_memory(), range(4)))
faults()  # the heap grows to hold the block once
print(json.dumps({"before": before, "kept": kept, "after": faults()}))
"""


def test_keep_freed_memory_reuses_large_blocks_instead_of_faulting_in_fresh_pages():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=ROOT, check=True)
    got = json.loads(done.stdout.strip().splitlines()[-1])
    glibc = platform.libc_ver()[0] == "glibc"
    assert got["kept"] == [glibc] * 4
    pages = 3 * (64 << 20) // 4096
    assert got["before"] > 0.9 * pages  # glibc's default: each 64 MiB block comes fresh from the kernel
    if glibc:
        assert got["after"] < 0.01 * pages  # kept: the same memory serves every block
