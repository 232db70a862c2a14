"""Data flows one way: each module imports only modules upstream of it (no cycles)."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "unetgraph"

# upstream first; a module may import (at module level) only modules listed before it
ORDER = [
    "errors",
    "util",
    "allocator",
    "files",
    "artifact",
    "contract",
    "types",
    "sizes",
    "blocks",
    "graph",
    "record",
    "serialize",
    "diff",
    "build",
    "check",
    "inputs",
    "cost",
    "edit",
    "runtime",
    "transfer",
    "lower",
    "grouping",
    "freezing",
    "passes",
    "dynamic",
    "export",
    "eject",
    "distributed",
    "saved",
    "render",
    "presets",
    "interop",
    "cli",
]


def layer(module: str) -> str:
    return module.split(".")[0]


def test_module_level_imports_flow_downstream():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        me = layer(".".join(rel.parts))
        if me == "__init__":
            continue
        assert me in ORDER, f"{rel}: add it to ORDER"
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: methods may delegate downstream lazily
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                depth = len(rel.parts) - 1
                if node.level > depth and node.module:
                    target = layer(node.module)
                elif node.level > depth:
                    target = node.names[0].name
                else:
                    target = me
                if target == me:
                    continue
                assert ORDER.index(target) < ORDER.index(me), f"{rel} imports {target} (downstream of it)"
