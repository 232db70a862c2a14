"""A graph as data: ``to_dict``/``from_dict`` and JSON or YAML files (schema: ``docs/schema.md``).

A document holds the model's name, its nodes (by name, in order: role, level and the block
as :meth:`~unetgraph.blocks.BlockSpec.to_dict` data, every field written out), its edges and
its outputs, under ``schema_version`` 1. Blocks are stored by their registry name, so a
user's registered blocks save and load like the built-in ones. Loading never runs code from
the document (``json``, PyYAML's safe loader; blocks are created only from registered classes),
reads within stated limits (size, nesting, values, nodes, edges, integer digits; no YAML
aliases, no repeated keys: ``MAX_*`` below, ``docs/schema.md``), and checks the document on the
way in: an error names the place in it and what was expected, e.g.
``nodes.enc2.block.convs: expected a positive integer, got -3``.

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
from collections import abc
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Mapping

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.resolver import Resolver

from .blocks.base import block_from_dict
from .errors import FileError, SpecError, UNetGraphError
from .files import TooLarge, is_path, read_regular, write_atomic
from .graph import UNetGraph, check_identifier
from .types import EdgeKind, Role
from .util import path_key, short_repr

__all__ = [
    "SCHEMA_VERSION",
    "to_dict",
    "from_dict",
    "dumps",
    "loads",
    "save",
    "load",
    "MAX_DOCUMENT_BYTES",
    "MAX_DEPTH",
    "MAX_VALUES",
    "MAX_NODES",
    "MAX_EDGES",
    "MAX_INT_DIGITS",
]

SCHEMA_VERSION = 1
"""The version of the document layout this release writes and reads."""

# -- limits: what a document may hold, so that reading one takes bounded time and memory --------
MAX_DOCUMENT_BYTES = 16 * 2**20
"""A document's text: at most 16 MiB (about 30,000 nodes as JSON, more as YAML)."""
MAX_DEPTH = 32
"""Mappings and lists nest at most 32 deep (a document needs 7, plus 2 per nested ``Sequence``)."""
MAX_VALUES = 4_000_000
"""At most 4 million values in all (counted in the data as read, every list entry and mapping value)."""
MAX_NODES = 50_000
"""At most 50,000 nodes."""
MAX_EDGES = 200_000
"""At most 200,000 edges."""
MAX_INT_DIGITS = 40
"""Integers have at most 40 digits (block fields then hold ints within ±2**63, see the block contract)."""

_FORMATS = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}
# libyaml's C version of the *safe* dumper when PyYAML was built with it (same results, faster)
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_TOP = ("schema_version", "name", "nodes", "edges", "outputs")
_NODE = ("role", "level", "block")
_EDGE = ("src", "dst", "kind", "port", "out")


def to_dict(g: UNetGraph) -> dict[str, Any]:
    """``g`` as plain data (dicts, lists, strings, numbers): the documented schema, version 1.

    Raises:
        SpecError: a block holds a field value that is not plain data.
    """
    if not isinstance(g, UNetGraph):
        raise SpecError(f"expected a UNetGraph to write, got {type(g).__name__}")
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
        SpecError: the document is malformed or breaks a limit (nesting, values, nodes,
            edges); the message starts with the path in the document (``nodes.enc2.level``,
            ``edges[3].kind``) and says what was expected.
        RegistryError: a block type is not registered (``nodes.mid.block.type: unknown block ...``).
        GraphError, ShapeError: the document is well formed but the graph it describes is
            not valid; the message starts with the node's path.
    """
    _scan(data)
    doc = _mapping(data, "document")
    _keys(doc, "document", _TOP, required=_TOP)
    version = doc["schema_version"]
    if not _is_int(version) or version < 1:
        raise SpecError(f"schema_version: expected a positive integer, got {short_repr(version)}")
    if version > SCHEMA_VERSION:
        raise SpecError(
            f"schema_version: the document is version {version}, written by a newer unetgraph; "
            f"this one reads version {SCHEMA_VERSION}"
        )
    name = doc["name"]
    try:
        check_identifier(name, "graph name")
    except UNetGraphError as e:
        raise SpecError(f"name: {e.message}") from None
    nodes = _mapping(doc["nodes"], "nodes")
    if len(nodes) > MAX_NODES:
        raise SpecError(f"nodes: {len(nodes):,} nodes; a document holds at most {MAX_NODES:,}")
    records = [_node(key, value) for key, value in nodes.items()]
    known = {r[0]: None for r in records}
    edges = _edges(doc["edges"], known)
    outputs = doc["outputs"]
    if not isinstance(outputs, list):
        raise SpecError(f"outputs: expected a list of node names, got {short_repr(outputs)}")
    for i, o in enumerate(outputs):
        _known(o, known, f"outputs[{i}]")
    try:
        return UNetGraph(records, edges, outputs, name=name)
    except UNetGraphError as e:
        where = f"nodes.{path_key(e.node)}" if e.node in known else _edge_path(e.edge, edges) or "graph"
        raise type(e)(f"{where}: {e.message}", node=e.node, edge=e.edge) from None


def dumps(g: UNetGraph, format: str = "yaml") -> str:
    """``g`` as JSON or YAML text (``format="json"`` or ``"yaml"``)."""
    doc = to_dict(g)
    if _format(format) == "json":
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=None, allow_unicode=True, width=200)


def loads(text: str | bytes, format: str = "yaml") -> UNetGraph:
    """The graph in JSON or YAML ``text`` (``bytes`` are read as UTF-8); see :func:`from_dict`
    for the errors.

    Reading is bounded by the limits above (size, nesting, values, nodes, edges, integer
    digits); YAML aliases and merge keys are refused (an alias can make a 2 KB text expand to
    gigabytes), as are keys repeated in a mapping (JSON and YAML would keep the last silently).

    Raises:
        SpecError: the text is not UTF-8, not valid JSON/YAML, breaks a limit, or the document
            is malformed (see :func:`from_dict`).
    """
    fmt = _format(format)
    text = _decoded(text)
    return from_dict(_parse_json(text) if fmt == "json" else _parse_yaml(text))


def _decoded(text: str | bytes) -> str:
    """``text`` as ``str`` (bytes read as UTF-8), within the size limit."""
    if isinstance(text, (bytes, bytearray)):
        _check_size(len(text), "bytes")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise SpecError(
                f"not UTF-8 text: byte 0x{e.object[e.start]:02x} at offset {e.start} ({e.reason})"
            ) from None
    elif not isinstance(text, str):
        raise SpecError(f"expected the document as text (str or bytes), got {type(text).__name__}")
    _check_size(len(text), "characters")
    return text


def save(g: UNetGraph, path: str | os.PathLike[str], *, format: str | None = None) -> Path:
    """Write ``g`` to ``path`` atomically (the file appears whole or not at all).

    Args:
        format: ``"json"`` or ``"yaml"``; default from the suffix (``.json``, ``.yaml``, ``.yml``).

    Returns:
        The path written.

    Raises:
        FileError: the file cannot be written (no permission, a folder in the way, disk full).
        SpecError: ``g`` is not a graph, or ``path`` not a path.
    """
    _check_path(path)
    return write_atomic(path, dumps(g, format or _suffix(path)))


def _check_path(path: object) -> None:
    if not is_path(path):
        raise SpecError(f"path: expected a file path (str or os.PathLike), got {type(path).__name__}")


def load(path: str | os.PathLike[str], *, format: str | None = None) -> UNetGraph:
    """The graph in the JSON or YAML file ``path``; errors start with the file's name.

    >>> import tempfile, unetgraph as ug
    >>> g = ug.unet(1, 1, widths=(4, 8)).set("enc0", convs=1)
    >>> path = g.save(tempfile.mkdtemp() + "/net.yaml")
    >>> ug.load(path) == g
    True

    Raises:
        FileError: the file is missing, a folder, not a regular file or not readable.
        SpecError, GraphError, ...: as :func:`loads`, the message starting with the file's name.
    """
    _check_path(path)
    fmt = format or _suffix(path)
    name = Path(path).name
    try:
        data = read_regular(path, MAX_DOCUMENT_BYTES)
    except TooLarge as e:
        raise SpecError(f"{name}: the document is {e.size:,} bytes; documents are at most {e.limit:,} bytes") from None
    except OSError as e:
        raise FileError(f"{path}: cannot read: {e.strerror or e}") from e
    except ValueError as e:  # a NUL or an unencodable character in the path
        raise FileError(f"{short_repr(str(path))}: cannot read: {e}") from e
    try:
        return loads(data, fmt)
    except UNetGraphError as e:
        raise type(e)(f"{name}: {e.message}", node=e.node, edge=e.edge) from None


# -- reading text: JSON and YAML parsers that keep to the limits ------------------------------


class _Refused:
    """What a parser puts in place of a value it will not read (a 5000-digit integer), so that
    the error can name the value's path in the document (found by :func:`_scan`)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _Mapping(dict[Any, Any]):
    """A mapping as parsed, remembering keys that appeared more than once."""

    repeated: tuple[Any, ...] = ()


def _int_or_refused(text: str, convert: Any) -> Any:
    digits = sum(c.isdigit() for c in text)
    if digits > MAX_INT_DIGITS:
        return _Refused(f"an integer of {digits:,} digits; documents hold integers of at most {MAX_INT_DIGITS} digits")
    return convert(text)


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = _Mapping(pairs)
    if len(out) < len(pairs):
        seen: set[str] = set()
        out.repeated = tuple(dict.fromkeys(k for k, _ in pairs if k in seen or seen.add(k)))  # type: ignore[func-returns-value]
    return out


def read_json(text: str | bytes) -> Any:
    """JSON text as plain data, within the documents' limits (size, nesting, values, integer
    digits, no repeated keys): for the JSON files beside a document (a saved model's metadata).

    Raises:
        SpecError: the text is not UTF-8, not valid JSON or breaks a limit.
    """
    data = _parse_json(_decoded(text))
    _scan(data)
    return data


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_json_object, parse_int=lambda t: _int_or_refused(t, int))
    except json.JSONDecodeError as e:
        raise SpecError(f"not valid JSON: line {e.lineno}, column {e.colno}: {e.msg}") from None
    except RecursionError:  # json's C parser recurses per level; MAX_DEPTH is far below its limit
        raise SpecError(f"the document nests deeper than {MAX_DEPTH} levels") from None


# libyaml's C parser when PyYAML was built with it
_CParser: type | None = getattr(getattr(yaml, "cyaml", None), "CParser", None)
_PARSER: tuple[type, ...] = (
    (_CParser,) if _CParser is not None else (yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser)
)


class _Loader(Composer, *_PARSER, SafeConstructor, Resolver):  # type: ignore[misc]
    """PyYAML's safe loader (plain data only, never objects) with the document limits: no
    aliases, no merge keys, at most :data:`MAX_DEPTH` levels, long integers and repeated keys
    marked for :func:`_scan`. The events come from libyaml when available; composing them into
    nodes runs in Python, where the aliases and the depth can be refused before anything expands."""

    def __init__(self, stream: str) -> None:
        _PARSER[0].__init__(self, stream)  # type: ignore[misc]
        for cls in _PARSER[1:]:
            cls.__init__(self)  # type: ignore[misc]
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(AliasEvent):
            event = self.get_event()
            raise SpecError(
                f"{_mark(event)}: YAML aliases (*{event.anchor}) are not read (one alias can expand a short "
                "document to gigabytes); write the value out"
            )
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise SpecError(f"{_mark(self.peek_event())}: the document nests deeper than {MAX_DEPTH} levels")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def flatten_mapping(self, node: Any) -> None:
        for key, _ in node.value:
            if key.tag == "tag:yaml.org,2002:merge":
                raise SpecError(f"{_mark(key)}: YAML merge keys (<<) are not read; write the keys out")
        super().flatten_mapping(node)

    def construct_yaml_int(self, node: Any) -> Any:
        return _int_or_refused(node.value, lambda _: SafeConstructor.construct_yaml_int(self, node))

    def construct_yaml_map(self, node: Any) -> Any:
        data = _Mapping()
        yield data
        data.update(self.construct_mapping(node))
        if len(data) < len(node.value):
            keys = [self.construct_object(k) for k, _ in node.value]
            seen: set[Any] = set()
            data.repeated = tuple(dict.fromkeys(k for k in keys if k in seen or seen.add(k)))  # type: ignore[func-returns-value]


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_yaml_map)


def _mark(event_or_node: Any) -> str:
    m = event_or_node.start_mark
    return f"line {m.line + 1}, column {m.column + 1}"


def _parse_yaml(text: str) -> Any:
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise SpecError(f"not valid YAML: {e}".replace("\n", " ")[:500]) from None
    except RecursionError:
        raise SpecError(f"the document nests deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()


class _Dumper(_YAML_DUMPER):  # type: ignore[misc,valid-type]
    """The safe dumper, never writing aliases (the reader refuses them)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _check_size(n: int, unit: str) -> None:
    if n > MAX_DOCUMENT_BYTES:
        raise SpecError(f"the document is {n:,} {unit}; documents are at most {MAX_DOCUMENT_BYTES:,} bytes")


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _children(value: Any) -> Iterable[tuple[Any, Any]] | None:
    if isinstance(value, dict) or isinstance(value, abc.Mapping):
        return value.items()
    if isinstance(value, (list, tuple)):
        return enumerate(value)
    return None


def _scan(data: Any) -> None:
    """Walk the data once, without recursion, and refuse: nesting deeper than :data:`MAX_DEPTH`
    (a loop too), more than :data:`MAX_VALUES` values, keys repeated in a mapping and values a
    parser refused, naming the path of the first.

    A Python document may hold one list in many places (``[[big] * 10] * 10``...): each list or
    mapping is walked once, and the values it would expand to are counted, not visited, so a
    structure of 10**9 values is refused in microseconds."""
    seen: dict[int, tuple[int, int]] = {}  # id -> (height, values), of containers fully walked
    stack: list[tuple[Any, tuple[Any, ...], int, bool]] = [(data, (), 1, False)]
    while stack:
        value, where, depth, done = stack.pop()
        if type(value) in _SCALARS:
            continue
        items = _children(value)
        if items is None:
            if isinstance(value, _Refused):
                raise SpecError(f"{_path(where) or 'document'}: {value.reason}")
            continue
        if done:  # every child walked: this container's height and the values it holds
            height, count = 1, len(value)
            for _, child in items:
                h, n = seen.get(id(child), (0, 0))
                height, count = max(height, h + 1), count + n
            seen[id(value)] = (height, count)
            if count > MAX_VALUES:
                raise SpecError(f"the document holds more than {MAX_VALUES:,} values")
            continue
        if id(value) in seen:  # walked already, through another path
            height, _ = seen[id(value)]
            if depth + height - 1 > MAX_DEPTH:
                raise SpecError(f"{_path(where) or 'document'}: the document nests deeper than {MAX_DEPTH} levels")
            continue
        if depth > MAX_DEPTH:
            raise SpecError(f"{_path(where)}: the document nests deeper than {MAX_DEPTH} levels")
        repeated = getattr(value, "repeated", ())
        if repeated:
            raise SpecError(
                f"{_path(where) or 'document'}: the key {short_repr(repeated[0])} appears more than once "
                "(JSON and YAML readers would keep only the last)"
            )
        stack.append((value, where, depth, True))
        for key, item in items:
            stack.append((item, (where, key), depth + 1, False))


def _path(where: tuple[Any, ...]) -> str:
    parts: list[str] = []
    while where:
        where, key = where
        parts.append(f"[{key}]" if isinstance(key, int) and not isinstance(key, bool) else f".{path_key(key)}")
    return "".join(reversed(parts)).lstrip(".")


# -- checking a document on the way in -----------------------------------------------------


def _format(format: str) -> str:
    if format not in ("json", "yaml"):
        raise SpecError(f"format: expected 'json' or 'yaml', got {short_repr(format)}")
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
        raise SpecError(f"{path}: expected a mapping, got {type(value).__name__} {short_repr(value)}")
    return value


def _keys(value: Mapping[str, Any], path: str, allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    for key in value:
        if key not in allowed:
            hint = difflib.get_close_matches(key[:100], allowed, n=1) if isinstance(key, str) else []
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise SpecError(f"{path}: unknown key {short_repr(key)}{extra}; expected {', '.join(allowed)}")
    missing = [k for k in required if k not in value]
    if missing:
        raise SpecError(f"{path}: missing {', '.join(map(repr, missing))}")


def _known(name: Any, known: Mapping[str, None], path: str) -> str:
    if not isinstance(name, str):
        raise SpecError(f"{path}: expected a node name (a string), got {type(name).__name__} {short_repr(name)}")
    if name not in known:
        hint = difflib.get_close_matches(name[:100], list(known)[:1000], n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise SpecError(f"{path}: no node {short_repr(name)}{extra}")
    return name


def _choice(value: Any, choices: list[str], path: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise SpecError(f"{path}: expected one of {', '.join(map(repr, choices))}, got {short_repr(value)}")
    return value


def _node(name: Any, value: Any, /) -> tuple[str, Any, Role, int | None]:
    if not isinstance(name, str):
        raise SpecError(f"nodes: node names are strings, got {short_repr(name)}")
    path = f"nodes.{path_key(name)}"
    node = _mapping(value, path)
    _keys(node, path, _NODE, required=("role", "block"))
    role = Role(_choice(node["role"], [r.value for r in Role], f"{path}.role"))
    level = node.get("level")
    if level is not None and (not _is_int(level) or level < 0):
        raise SpecError(f"{path}.level: expected a non-negative integer or null, got {short_repr(level)}")
    return name, block_from_dict(_mapping(node["block"], f"{path}.block"), path=f"{path}.block"), role, level


def _edges(value: Any, known: Mapping[str, None]) -> list[tuple[Any, ...]]:
    if not isinstance(value, list):
        raise SpecError(f"edges: expected a list, got {type(value).__name__}")
    if len(value) > MAX_EDGES:
        raise SpecError(f"edges: {len(value):,} edges; a document holds at most {MAX_EDGES:,}")
    out: list[tuple[Any, ...]] = []
    taken: dict[str, set[int]] = {}
    free: dict[str, int] = {}  # per dst, no port below this is free: finding the next free one stays linear
    for i, item in enumerate(value):
        path = f"edges[{i}]"
        e = _mapping(item, path)
        _keys(e, path, _EDGE, required=("src", "dst"))
        src, dst = (_known(e[end], known, f"{path}.{end}") for end in ("src", "dst"))
        kind = EdgeKind(_choice(e.get("kind", "data"), [k.value for k in EdgeKind], f"{path}.kind"))
        ports = taken.setdefault(dst, set())
        if "port" in e:
            port = e["port"]
            if not _is_int(port) or port < 0:
                raise SpecError(f"{path}.port: expected a non-negative integer, got {short_repr(port)}")
        else:
            port = free.get(dst, 0)
            while port in ports:
                port += 1
            free[dst] = port + 1
        if port in ports:
            raise SpecError(f"{path}.port: {dst} has an input at port {port} already")
        ports.add(port)
        src_out = e.get("out", 0)
        if not _is_int(src_out) or src_out < 0:
            raise SpecError(
                f"{path}.out: expected a non-negative integer (an output of {src}), got {short_repr(src_out)}"
            )
        out.append((src, dst, kind, port, src_out) if src_out else (src, dst, kind, port))
    return out


def _edge_path(edge: str | None, edges: list[tuple[Any, ...]]) -> str | None:
    for i, (s, d, *_) in enumerate(edges):
        if edge == f"{s}→{d}":
            return f"edges[{i}]"
    return None
