"""Bring models of other libraries in as graphs with their weights, and send graphs back.

Each peer library is an optional dependency: ``import unetgraph`` imports none of them,
and the functions import theirs when called. See ``docs/interop.md``.

>>> import unetgraph as ug
>>> callable(ug.interop.from_monai)
True
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["from_monai", "to_monai"]

# public name -> the submodule that defines it (imported on first use)
_LAZY = {
    "from_monai": "monai",
    "to_monai": "monai",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
