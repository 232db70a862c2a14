"""A graph as data: ``to_dict``/``from_dict`` and JSON or YAML files (schema: ``docs/schema.md``).

A document holds the model's name, its nodes (by name, in order: role, level and the block
as :meth:`~unetgraph.blocks.BlockSpec.to_dict` data, every field written out), its edges and
its outputs, under ``schema_version`` 1. Blocks are stored by their registry name, so a
user's registered blocks save and load like the built-in ones. Loading never runs code from
the document (``json``, ``yaml.safe_load``; blocks are created only from registered classes)
and checks the document on the way in: an error names the place in it and what was expected,
e.g. ``nodes.enc2.block.convs: expected a positive integer, got -3``.

>>> import unetgraph as ug
>>> g = ug.unet(3, 2, widths=(8, 16))
>>> doc = g.to_dict()
>>> doc["schema_version"], doc["nodes"]["merge0"]["block"], doc["edges"][0]
(1, {'type': 'Merge', 'mode': 'concat', 'crop': False}, {'src': 'x', 'dst': 'enc0', 'kind': 'data', 'port': 0})
>>> ug.UNetGraph.from_dict(doc) == g
True
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from .blocks.base import block_from_dict
from .errors import SpecError, UNetGraphError
from .files import write_atomic
from .graph import UNetGraph
from .types import EdgeKind, Role

__all__ = ["SCHEMA_VERSION", "to_dict", "from_dict", "dumps", "loads", "save", "load"]

SCHEMA_VERSION = 1
"""The version of the document layout this release writes and reads."""

_FORMATS = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}
# libyaml's C versions of the *safe* loader and dumper when PyYAML was built with it (same results, faster)
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_TOP = ("schema_version", "name", "nodes", "edges", "outputs")
_NODE = ("role", "level", "block")
_EDGE = ("src", "dst", "kind", "port", "out")


def to_dict(g: UNetGraph) -> dict[str, Any]:
    """``g`` as plain data (dicts, lists, strings, numbers): the documented schema, version 1.

    Raises:
        SpecError: a block holds a field value that is not plain data.
    """
    nodes = {}
    for name, block, role, level in g.node_records():
        try:
            data = block.to_dict()
        except UNetGraphError as e:
            raise type(e)(f"nodes.{name}.block: {e.message}", node=name) from None
        nodes[name] = {"role": role.value, "level": level, "block": data}
    edges = [_edge_data(*r) for r in g.edge_records()]
    return {
        "schema_version": SCHEMA_VERSION,
        "name": g.name,
        "nodes": nodes,
        "edges": edges,
        "outputs": list(g.outputs),
    }


def _edge_data(src: str, dst: str, kind: EdgeKind, port: int, out: int = 0) -> dict[str, Any]:
    """An edge as data; ``out`` (which output of a node with several) only when it is not 0."""
    data: dict[str, Any] = {"src": src, "dst": dst, "kind": kind.value, "port": port}
    if out:
        data["out"] = out
    return data


def from_dict(data: Any) -> UNetGraph:
    """The graph a :func:`to_dict` document describes, checked field by field.

    ``edges[i].port`` may be left out (the next free input of its ``dst``, in document order),
    ``edges[i].out`` too (output 0 of its ``src``); block fields left out take their defaults.

    Raises:
        SpecError: the document is malformed; the message starts with the path in the
            document (``nodes.enc2.level``, ``edges[3].kind``) and says what was expected.
        RegistryError: a block type is not registered (``nodes.mid.block.type: unknown block ...``).
        GraphError, ShapeError: the document is well formed but the graph it describes is
            not valid; the message starts with the node's path.
    """
    doc = _mapping(data, "document")
    _keys(doc, "document", _TOP, required=_TOP)
    version = doc["schema_version"]
    if not _is_int(version) or version < 1:
        raise SpecError(f"schema_version: expected a positive integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise SpecError(
            f"schema_version: the document is version {version}, written by a newer unetgraph; "
            f"this one reads version {SCHEMA_VERSION}"
        )
    name = doc["name"]
    if not isinstance(name, str):
        raise SpecError(f"name: expected a string, got {name!r}")
    nodes = _mapping(doc["nodes"], "nodes")
    records = [_node(key, value) for key, value in nodes.items()]
    known = [r[0] for r in records]
    edges = _edges(doc["edges"], known)
    outputs = doc["outputs"]
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        raise SpecError(f"outputs: expected a list of node names, got {outputs!r}")
    for i, o in enumerate(outputs):
        _known(o, known, f"outputs[{i}]")
    try:
        return UNetGraph(records, edges, outputs, name=name)
    except UNetGraphError as e:
        where = f"nodes.{e.node}" if e.node in nodes else _edge_path(e.edge, edges) or "graph"
        raise type(e)(f"{where}: {e.message}", node=e.node, edge=e.edge) from None


def dumps(g: UNetGraph, format: str = "yaml") -> str:
    """``g`` as JSON or YAML text (``format="json"`` or ``"yaml"``)."""
    doc = to_dict(g)
    if _format(format) == "json":
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    return yaml.dump(doc, Dumper=_YAML_DUMPER, sort_keys=False, default_flow_style=None, allow_unicode=True, width=200)


def loads(text: str, format: str = "yaml") -> UNetGraph:
    """The graph in JSON or YAML ``text``; see :func:`from_dict` for the errors."""
    if _format(format) == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"not valid JSON: line {e.lineno}, column {e.colno}: {e.msg}") from None
    else:
        try:
            data = yaml.load(text, Loader=_YAML_LOADER)  # a safe loader: plain data only, never objects
        except yaml.YAMLError as e:
            raise SpecError(f"not valid YAML: {e}".replace("\n", " ")) from None
    return from_dict(data)


def save(g: UNetGraph, path: str | os.PathLike[str], *, format: str | None = None) -> Path:
    """Write ``g`` to ``path`` atomically (the file appears whole or not at all).

    Args:
        format: ``"json"`` or ``"yaml"``; default from the suffix (``.json``, ``.yaml``, ``.yml``).

    Returns:
        The path written.
    """
    return write_atomic(path, dumps(g, format or _suffix(path)))


def load(path: str | os.PathLike[str], *, format: str | None = None) -> UNetGraph:
    """The graph in the JSON or YAML file ``path``; errors start with the file's name.

    >>> import tempfile, unetgraph as ug
    >>> g = ug.unet(1, 1, widths=(4, 8)).set("enc0", convs=1)
    >>> path = g.save(tempfile.mkdtemp() + "/net.yaml")
    >>> ug.load(path) == g
    True
    """
    fmt = format or _suffix(path)
    text = Path(path).read_text(encoding="utf-8")
    try:
        return loads(text, fmt)
    except UNetGraphError as e:
        raise type(e)(f"{Path(path).name}: {e.message}", node=e.node, edge=e.edge) from None


# -- checking a document on the way in -----------------------------------------------------


def _format(format: str) -> str:
    if format not in ("json", "yaml"):
        raise SpecError(f"format: expected 'json' or 'yaml', got {format!r}")
    return format


def _suffix(path: str | os.PathLike[str]) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMATS:
        raise SpecError(
            f"{Path(path).name}: cannot tell the format from {suffix or 'no suffix'!r}; use .json, .yaml or .yml"
        )
    return _FORMATS[suffix]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}"[:300])
    return value


def _keys(value: Mapping[str, Any], path: str, allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    for key in value:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise SpecError(f"{path}: unknown key {key!r}{extra}; expected {', '.join(allowed)}")
    missing = [k for k in required if k not in value]
    if missing:
        raise SpecError(f"{path}: missing {', '.join(map(repr, missing))}")


def _known(name: Any, known: list[str], path: str) -> None:
    if name not in known:
        hint = difflib.get_close_matches(str(name), known, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise SpecError(f"{path}: no node {name!r}{extra}")


def _choice(value: Any, choices: list[str], path: str) -> str:
    if value not in choices:
        raise SpecError(f"{path}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _node(name: Any, value: Any, /) -> tuple[str, Any, Role, int | None]:
    if not isinstance(name, str):
        raise SpecError(f"nodes: node names are strings, got {name!r}")
    path = f"nodes.{name}"
    node = _mapping(value, path)
    _keys(node, path, _NODE, required=("role", "block"))
    role = Role(_choice(node["role"], [r.value for r in Role], f"{path}.role"))
    level = node.get("level")
    if level is not None and (not _is_int(level) or level < 0):
        raise SpecError(f"{path}.level: expected a non-negative integer or null, got {level!r}")
    return name, block_from_dict(_mapping(node["block"], f"{path}.block"), path=f"{path}.block"), role, level


def _edges(value: Any, known: list[str]) -> list[tuple[Any, ...]]:
    if not isinstance(value, list):
        raise SpecError(f"edges: expected a list, got {type(value).__name__}")
    out: list[tuple[Any, ...]] = []
    taken: dict[str, set[int]] = {}
    for i, item in enumerate(value):
        path = f"edges[{i}]"
        e = _mapping(item, path)
        _keys(e, path, _EDGE, required=("src", "dst"))
        for end in ("src", "dst"):
            _known(e[end], known, f"{path}.{end}")
        kind = EdgeKind(_choice(e.get("kind", "data"), [k.value for k in EdgeKind], f"{path}.kind"))
        ports = taken.setdefault(e["dst"], set())
        port = e.get("port", min(set(range(len(ports) + 1)) - ports))
        if not _is_int(port) or port < 0:
            raise SpecError(f"{path}.port: expected a non-negative integer, got {port!r}")
        if port in ports:
            raise SpecError(f"{path}.port: {e['dst']} has an input at port {port} already")
        ports.add(port)
        src_out = e.get("out", 0)
        if not _is_int(src_out) or src_out < 0:
            raise SpecError(f"{path}.out: expected a non-negative integer (an output of {e['src']}), got {src_out!r}")
        out.append((e["src"], e["dst"], kind, port, src_out) if src_out else (e["src"], e["dst"], kind, port))
    return out


def _edge_path(edge: str | None, edges: list[tuple[Any, ...]]) -> str | None:
    for i, (s, d, *_) in enumerate(edges):
        if edge == f"{s}→{d}":
            return f"edges[{i}]"
    return None
