"""Bring models of other libraries in as graphs with their weights, and send graphs back.

Each peer has its own module (``interop/diffusers.py``, ``interop/monai.py``, ``interop/smp.py``).
The peer libraries are optional dependencies: ``import unetgraph`` imports none of them, and each
function imports its library when called (``pip install 'unetgraph[diffusers]'``,
``'unetgraph[monai]'``, ``'unetgraph[smp]'``). See ``docs/interop.md``.

>>> import unetgraph as ug
>>> callable(ug.interop.from_monai) and callable(ug.interop.from_diffusers)
True
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "from_diffusers",
    "to_diffusers",
    "graph_from_diffusers_config",
    "diffusers_keys",
    "from_monai",
    "to_monai",
    "from_smp",
    "to_smp",
]

# public name -> the submodule that defines it (imported on first use)
_LAZY = {
    "from_diffusers": "diffusers",
    "to_diffusers": "diffusers",
    "graph_from_diffusers_config": "diffusers",
    "diffusers_keys": "diffusers",
    "from_monai": "monai",
    "to_monai": "monai",
    "from_smp": "smp",
    "to_smp": "smp",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
