"""Reading exported artifacts without running anything in them.

A ``.pt2`` archive is read once, into memory, within size limits. Everything that torch would
evaluate while loading it is checked, and torch is then handed an archive rebuilt from the
checked entries alone, so what it reads is exactly what was checked. One rule closes every
route by which loading could run code from the file:

* the zip: entries must not repeat (also after case folding), names must be plain relative
  paths under one root folder, every entry's CRC-32 must match, and only the entries unetgraph
  writes may be present (torch's legacy layouts, whose loaders unpickle, are unknown entries);
* nothing pickled: weights and constants must be raw tensor bytes that cover the shapes their
  configs claim; example inputs must load with ``torch.load(weights_only=True)``;
* no code in the program (``models/model.json``): every symbolic size (``expr_str``, which
  torch gives to ``sympy.sympify``) and every guard (``guards_code``, which torch turns into
  Python source and runs) must parse under the small arithmetic grammar of :class:`_Expr` (a
  parser of this module that accepts or refuses, and never evaluates); every operator is an ATen
  operator; tree specs hold plain containers only; no custom objects, operator arguments or
  subgraphs.

An ``.onnx`` model is read once, likewise; tensors that point to external files are refused, and
onnxruntime gets the checked bytes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TypeGuard, TypeVar

import torch

from .errors import ArtifactError
from .files import TooLarge, read_regular
from .util import TORCH_LOCK

__all__ = ["MAX_BYTES", "Archive", "read_archive", "checked_program", "checked_native", "read_onnx", "loaded_by"]

T = TypeVar("T")

MAX_BYTES = 8 * 2**30
"""The largest artifact loaded by default (uncompressed, all entries together): 8 GiB."""
MAX_ENTRIES = 100_000
MAX_RATIO = 100  # uncompressed / compressed size: of one entry over 1 MiB, and of all entries to the file
MAX_TEXT = 256 * 2**20  # a JSON entry is parsed in memory, several times its size
MAX_EXPR = 20_000  # characters of one symbolic size or guard
MAX_DEPTH = 64  # nesting of one symbolic size or guard

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_.][A-Za-z0-9_.\-]*)*")
_WRITER_OWN = (".data/version", "byteorder", ".data/serialization_id")  # PyTorchFileWriter writes these itself
_STANDARD = {
    "archive_format": re.compile(r"pt2"),
    "archive_version": re.compile(r"[0-9]{1,6}"),
    ".data/version": re.compile(r"[0-9]{1,6}\n?"),
    "byteorder": re.compile(r"little"),
    ".data/serialization_id": re.compile(r"[0-9A-Za-z]{1,64}"),
}
_WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
_CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
_MODEL = "models/model.json"
_SAMPLE = "data/sample_inputs/model.pt"
_PROGRAM_LAYOUT = re.compile(r"data/weights/weight_[0-9]{1,9}|data/constants/tensor_[0-9]{1,9}")
_NATIVE_LAYOUT = re.compile(
    r"data/aotinductor/(?:model|batch[0-9]{1,9}_[0-9x]{1,60})/[A-Za-z0-9_][A-Za-z0-9_.\-]*|data/weights/weight_[0-9]{1,9}"
    r"|data/constants/custom_obj_[0-9]{1,9}"
)


def _refuse(path: Path | str, what: str, entry: str | None = None) -> ArtifactError:
    where = f"{path}: {entry}: " if entry else f"{path}: "
    return ArtifactError(where + what, path=str(path), entry=entry)


def _read_file(path: Path, max_bytes: int) -> bytes:
    """The whole file, refusing a folder, a missing file, a FIFO or device, or one over ``max_bytes``."""
    try:
        return read_regular(path, max_bytes)
    except TooLarge as e:
        over = f"{e.size:,} bytes is over the limit of {max_bytes:,} (pass max_bytes= to raise it)"
        raise _refuse(path, over) from None
    except IsADirectoryError:
        raise _refuse(path, "not a file") from None
    except OSError as e:
        raise _refuse(path, f"cannot be read ({e.strerror or e})") from None


# -- the zip ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Archive:
    """A ``.pt2`` read once: its entries by name below the root folder, every CRC-32 checked.

    Attributes:
        path: the file it was read from (for messages).
        entries: entry name (``models/model.json``) → bytes, in archive order.
    """

    path: Path
    entries: dict[str, bytes]

    def text(self, name: str) -> str:
        """Entry ``name`` as UTF-8 text (refused when missing, over :data:`MAX_TEXT`, or not UTF-8)."""
        data = self.require(name)
        if len(data) > MAX_TEXT:
            raise _refuse(self.path, f"{len(data):,} bytes is over the limit of {MAX_TEXT:,} for a text entry", name)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _refuse(self.path, f"not UTF-8 text ({e.reason} at byte {e.start})", name) from None

    def json(self, name: str) -> Any:
        """Entry ``name`` parsed as JSON (refused when it does not parse)."""
        try:
            return json.loads(self.text(name))
        except (ValueError, RecursionError) as e:
            raise _refuse(self.path, f"not valid JSON ({type(e).__name__}: {_short(e)})", name) from None

    def require(self, name: str) -> bytes:
        if name not in self.entries:
            raise _refuse(self.path, f"missing entry {name}")
        return self.entries[name]


def _short(e: BaseException | str, n: int = 200) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= n else text[:n] + "…"


def read_archive(path: str | os.PathLike[str], *, max_bytes: int = MAX_BYTES) -> Archive:
    """Read the zip archive at ``path`` once, checking its layout and every entry's CRC-32.

    Args:
        path: the ``.pt2`` file.
        max_bytes: the most bytes the file and its entries (uncompressed, together) may hold.

    Returns:
        The :class:`Archive`, names relative to its single root folder.

    Raises:
        ArtifactError: not a zip, a repeated or odd entry name, entries outside one root folder,
            an encrypted or unsupported entry, a CRC-32 mismatch, or a size over a limit.
    """
    path = Path(path)
    raw = _read_file(path, max_bytes)
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except Exception as e:  # zipfile's parse of a central directory raises several types; all mean "no zip"
        raise _refuse(path, f"not a .pt2 archive (not a zip: {_short(e)})") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ENTRIES:
            raise _refuse(path, f"{len(infos):,} entries is over the limit of {MAX_ENTRIES:,}")
        if not infos:
            raise _refuse(path, "an empty archive")
        root = infos[0].filename.split("/", 1)[0]
        seen: dict[str, str] = {}
        total = 0
        for info in infos:
            name = info.filename
            if not _NAME.fullmatch(name) or any(part in (".", "..") for part in name.split("/")):
                raise _refuse(path, f"odd entry name {name!r} (absolute, '..', a folder, or unusual characters)")
            if not name.startswith(root + "/"):
                raise _refuse(path, f"entry {name!r} lies outside the archive's root folder {root}/")
            key = name.casefold()
            if key in seen:
                same = "repeats" if seen[key] == name else f"repeats {seen[key]!r} (names differ only in case)"
                raise _refuse(path, f"entry {name!r} {same}: an archive with repeated entries is refused")
            seen[key] = name
            entry = name[len(root) + 1 :]
            if info.flag_bits & 0x1:
                raise _refuse(path, "encrypted entry", entry)
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise _refuse(path, f"unsupported compression method {info.compress_type}", entry)
            if info.file_size > 2**20 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                raise _refuse(
                    path,
                    f"compression ratio {info.file_size / max(info.compress_size, 1):,.0f} is over the limit of "
                    f"{MAX_RATIO}",
                    entry,
                )
            total += info.file_size
            if total > MAX_RATIO * len(raw) + 2**20:  # small entries that overlap in the file, say
                raise _refuse(path, f"entries expand to over {MAX_RATIO} times the file's size (the limit)")
            if total > max_bytes:
                raise _refuse(
                    path, f"entries hold over {max_bytes:,} bytes uncompressed (the limit; pass max_bytes= to raise it)"
                )
        entries: dict[str, bytes] = {}
        for info in infos:
            name = info.filename[len(root) + 1 :]
            try:
                with archive.open(info) as f:
                    data = f.read(info.file_size + 1)  # to the end: zipfile checks the CRC-32 there
            except zipfile.BadZipFile as e:
                what = "CRC-32 does not match: the file is corrupted" if "CRC" in str(e) else _short(e)
                raise _refuse(path, what, name) from None
            except (OSError, EOFError, ValueError, RuntimeError, NotImplementedError, zipfile.LargeZipFile) as e:
                raise _refuse(path, f"unreadable ({type(e).__name__}: {_short(e)})", name) from None
            if len(data) != info.file_size:
                raise _refuse(path, f"holds {len(data):,} bytes, its header says {info.file_size:,}", name)
            entries[name] = data
    del raw
    return Archive(path, entries)


def _check_layout(archive: Archive, required: Iterable[str], layout: re.Pattern[str], known: Iterable[str]) -> None:
    for name in (*_STANDARD, *required):  # torch's writer always writes the standard records
        archive.require(name)
    allowed = set(known) | set(_STANDARD)
    for name, data in archive.entries.items():
        if name in _STANDARD:
            if not _STANDARD[name].fullmatch(data.decode("latin-1")):
                raise _refuse(archive.path, f"unexpected content {data[:40]!r}", name)
        elif name not in allowed and not layout.fullmatch(name):
            raise _refuse(archive.path, "an entry unetgraph does not write; refusing the archive", name)
    from torch.export.pt2_archive.constants import ARCHIVE_VERSION_VALUE

    version = archive.entries["archive_version"].decode("ascii")
    if version != ARCHIVE_VERSION_VALUE:
        raise _refuse(
            archive.path,
            f"archive version {version}; this torch ({torch.__version__}) reads version {ARCHIVE_VERSION_VALUE}",
            "archive_version",
        )


def _rebuild(entries: dict[str, bytes]) -> bytes:
    """A fresh archive holding ``entries`` and nothing else (torch's writer adds its own records)."""
    from torch.export.pt2_archive import PT2ArchiveWriter

    buffer = io.BytesIO()
    with PT2ArchiveWriter(buffer) as writer:
        for name, data in entries.items():
            if name not in _WRITER_OWN:
                writer.write_bytes(name, data)
    return buffer.getvalue()


# -- a torch.export program -----------------------------------------------------------------


def checked_program(archive: Archive, *, inputs: Iterable[str], document: str) -> bytes:
    """Check a ``torch.export`` archive; return the archive rebuilt from the checked entries.

    Args:
        archive: what :func:`read_archive` read.
        inputs: the graph's input names: the only names a guard may read.
        document: the name under ``extra/`` of unetgraph's document (the only extra file allowed).

    Raises:
        ArtifactError: an entry outside the layout ``torch.export.save`` writes for one model, a
            pickled or short tensor, example inputs that are not plain tensors, or code in the
            program; the message names the entry and what is wrong.
    """
    required = (_MODEL, _WEIGHTS_CONFIG, _CONSTANTS_CONFIG, _SAMPLE)
    _check_layout(archive, required, _PROGRAM_LAYOUT, (*required, f"extra/{document}"))
    entries = dict(archive.entries)
    for config, folder, prefix in (
        (_WEIGHTS_CONFIG, "data/weights/", "weight_"),
        (_CONSTANTS_CONFIG, "data/constants/", "tensor_"),
    ):
        data = archive.json(config)
        _check_payload(archive, config, data, folder, prefix)
        entries[config] = json.dumps(data).encode()
    program = archive.json(_MODEL)
    _check_program(archive, program, frozenset(inputs))
    entries[_MODEL] = json.dumps(program).encode()
    entries[_SAMPLE] = _checked_sample_inputs(archive)
    return _rebuild(entries)


def checked_native(archive: Archive, *, document: str) -> bytes:
    """Check the layout of an AOTInductor package (compiled code the caller chose to trust);
    return it rebuilt from the checked entries."""
    _check_layout(archive, (), _NATIVE_LAYOUT, (f"extra/{document}",))
    if not any(n.startswith("data/aotinductor/") and n.endswith(".so") for n in archive.entries):
        raise _refuse(archive.path, "no compiled model (data/aotinductor/*/*.so) in this AOTInductor package")
    return _rebuild(dict(archive.entries))


def _check_payload(archive: Archive, config: str, data: Any, folder: str, prefix: str) -> None:
    """Every tensor of a weights or constants config: raw bytes (never a pickle) that hold what
    its shape, strides and offset reach."""
    from torch._export.serde.schema import Layout, ScalarType
    from torch._export.serde.serialize import deserialize_scalar_type

    def refuse(what: str) -> ArtifactError:
        return _refuse(archive.path, what, config)

    if not isinstance(data, dict) or set(data) != {"config"} or not isinstance(data["config"], dict):
        raise refuse('expected {"config": {name: tensor, ...}}')
    for key, meta in data["config"].items():
        if not isinstance(meta, dict):
            raise refuse(f"{key}: expected an object, got {type(meta).__name__}")
        if meta.get("use_pickle") is not False:
            raise refuse(f"stores {key} as a pickled object; refusing to load it")
        name = meta.get("path_name")
        if not isinstance(name, str) or not re.fullmatch(re.escape(prefix) + r"[0-9]{1,9}", name):
            raise refuse(f"{key}: path_name {name!r} is not a raw tensor entry ({prefix}N)")
        record = archive.entries.get(folder + name)
        if record is None:
            raise refuse(f"{key}: no entry {folder}{name}")
        if not isinstance(meta.get("is_param"), bool):
            raise refuse(f"{key}: is_param must be true or false")
        tm = meta.get("tensor_meta")
        if not isinstance(tm, dict):
            raise refuse(f"{key}: tensor_meta must be an object")
        try:
            code = tm.get("dtype")
            if not _is_int(code):
                raise KeyError
            dtype = deserialize_scalar_type(ScalarType(code))
        except (KeyError, TypeError, ValueError):
            raise refuse(f"{key}: unknown dtype {tm.get('dtype')!r}") from None
        if tm.get("layout") != Layout.Strided or not isinstance(tm.get("requires_grad"), bool):
            raise refuse(f"{key}: only strided tensors (layout {int(Layout.Strided)}) with a boolean requires_grad")
        device = tm.get("device")
        if not (
            isinstance(device, dict)
            and device.get("type") in ("cpu", "cuda")
            and (device.get("index") is None or _is_int(device.get("index")))
        ):
            raise refuse(f"{key}: device must be cpu or cuda, got {device!r}")
        sizes, strides = _ints(tm.get("sizes")), _ints(tm.get("strides"))
        offset = _ints([tm.get("storage_offset")])
        if sizes is None or strides is None or offset is None or len(sizes) != len(strides):
            raise refuse(f"{key}: sizes, strides and storage_offset must be non-negative integers (as_int)")
        size = dtype.itemsize
        if len(record) % size:
            raise refuse(f"{key}: entry {folder}{name} holds {len(record)} bytes, not a whole number of {dtype}")
        reach = 0 if 0 in sizes else offset[0] + 1 + sum((n - 1) * s for n, s in zip(sizes, strides))
        if reach > len(record) // size:
            raise refuse(f"{key}: its shape reaches element {reach:,} but {folder}{name} holds {len(record) // size:,}")


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _ints(value: Any) -> list[int] | None:
    """``[{"as_int": n}, ...]`` as a list of non-negative ints, else None."""
    if not isinstance(value, list):
        return None
    out = []
    for item in value:
        if not (isinstance(item, dict) and set(item) == {"as_int"} and _is_int(item["as_int"])):
            return None
        out.append(item["as_int"])
    return out


def _checked_sample_inputs(archive: Archive) -> bytes:
    """The example inputs, loaded by the safe unpickler and saved again from the plain tensors."""
    try:
        value = torch.load(io.BytesIO(archive.require(_SAMPLE)), weights_only=True)
    except Exception as e:  # whatever torch's safe loader says, the entry is refused
        raise _refuse(archive.path, f"example inputs are not plain tensors ({_short(e)}); refusing", _SAMPLE) from None
    ok = (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], tuple)
        and isinstance(value[1], dict)
        and all(isinstance(x, torch.Tensor) for x in (*value[0], *value[1].values()))
    )
    if not ok:
        raise _refuse(archive.path, "example inputs must be (tuple of tensors, dict of tensors)", _SAMPLE)
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


_FORBIDDEN = {
    "as_operator": "an operator passed as an argument",
    "as_custom_obj": "a custom object",
    "as_graph": "a subgraph",
}
_SPEC_TYPES = {
    None,
    "builtins.tuple",
    "builtins.list",
    "builtins.dict",
    "collections.OrderedDict",
    "torch.fx.immutable_collections.immutable_dict",
    "torch.fx.immutable_collections.immutable_list",
}
_ATEN = re.compile(r"torch\.ops\.aten\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*")
_SYM_OPS = {  # what torch writes for arithmetic on symbolic sizes
    *(f"_operator.{op}" for op in ("getitem", "add", "sub", "mul", "floordiv", "mod", "neg", "truediv", "pow")),
    *(f"_operator.{op}" for op in ("eq", "ne", "lt", "le", "gt", "ge", "and_", "or_")),
    *(f"torch.{op}" for op in ("sym_max", "sym_min", "sym_not", "sym_float", "sym_int", "sym_ite", "sym_sqrt")),
    "math.ceil",
    "math.floor",
    "math.trunc",
}


def _check_program(archive: Archive, program: Any, inputs: frozenset[str]) -> None:
    """Walk the whole program document (iteratively: no recursion on hostile nesting)."""
    if not isinstance(program, dict):
        raise _refuse(archive.path, f"expected a JSON object, got {type(program).__name__}", _MODEL)
    guards = program.get("guards_code", [])
    if not isinstance(guards, list):
        raise _refuse(archive.path, "guards_code must be a list of strings", _MODEL)
    for guard in guards:
        _Expr.check(guard, inputs, archive.path, "guards_code")
    stack: list[Any] = [program]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            if key in _FORBIDDEN:
                raise _refuse(archive.path, f"holds {_FORBIDDEN[key]} ({key}); a unetgraph export never does", _MODEL)
            if key == "target" and not (isinstance(value, str) and (_ATEN.fullmatch(value) or value in _SYM_OPS)):
                raise _refuse(archive.path, f"operator {_short(repr(value), 80)} is not an ATen operator", _MODEL)
            if key == "expr_str":
                _Expr.check(value, None, archive.path, "expr_str")
            if key in ("in_spec", "out_spec"):
                _check_treespec(archive, key, value)
            if key in ("custom", "from_node") and isinstance(value, str):  # node metadata torch parses as JSON
                try:
                    json.loads(value)
                except (ValueError, RecursionError) as e:
                    raise _refuse(archive.path, f"{key} metadata is not valid JSON ({_short(e)})", _MODEL) from None
            stack.append(value)


def _check_treespec(archive: Archive, key: str, text: Any) -> None:
    """A pytree spec of plain containers: torch resolves other type names (a defaultdict's
    factory, an enum) by importing modules the spec names."""

    def refuse(what: str) -> ArtifactError:
        return _refuse(archive.path, f"{key}: {what}", _MODEL)

    try:
        data = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError):
        data = None
    if not (isinstance(data, list) and len(data) == 2 and data[0] == 1):
        raise refuse("not a tree spec of protocol 1")
    stack = [data[1]]
    while stack:
        spec = stack.pop()
        if not (isinstance(spec, dict) and set(spec) == {"type", "context", "children_spec"}):
            raise refuse("a tree spec node must be {type, context, children_spec}")
        if spec["type"] not in _SPEC_TYPES:
            raise refuse(f"container type {_short(repr(spec['type']), 80)} is not a plain tuple, list or dict")
        context = spec["context"]
        if context is not None:
            try:
                value = json.loads(context) if isinstance(context, str) else ...
            except (ValueError, RecursionError):
                value = ...
            if value is not None and not (
                isinstance(value, list) and all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in value)
            ):
                raise refuse("a tree spec context must be null or a list of keys")
        if not isinstance(spec["children_spec"], list):
            raise refuse("children_spec must be a list")
        stack.extend(spec["children_spec"])


# -- the expression grammar -----------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:([0-9]+)|([A-Za-z_][A-Za-z0-9_]*)|('[A-Za-z0-9_]*')|(//|==|!=|<=|>=|[-+*%<>()\[\],.=]))")
_SYMBOL = re.compile(r"(?:s|u|zf|zuf)[0-9]{1,9}")  # torch's size symbols (torch.utils._sympy.symbol)
_SIZE_FUNCS = {"Add", "Mul", "Max", "Min", "FloorDiv", "CeilDiv", "CleanDiv", "Mod", "PythonMod"}
_RELATIONS = {"Eq", "Ne", "Lt", "Le", "Gt", "Ge"}
_ASSUMPTIONS = {"positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "nonzero"}
_COMPARE = {"==", "!=", "<", "<=", ">", ">="}


class _Refused(Exception):
    pass


class _Expr:
    """A recursive-descent recogniser for the two expression forms torch writes into a program:

    * a symbolic size, as sympy's ``srepr`` (``Mul(Integer(2), Symbol('s57', positive=True,
      integer=True))``) or infix (``2*s57 + 1``): integers, torch's size symbols, ``+ - * // %``,
      and the size functions ``Add Mul Max Min FloorDiv CeilDiv CleanDiv Mod PythonMod``
      (relations ``Eq Ne Lt Le Gt Ge`` for symbolic booleans);
    * a guard, Python over the inputs' sizes: ``(2*(L['x'].size()[2] // 2)) == L['x'].size()[2]``,
      ``torch.sym_max(1, ...)``, comparisons joined by ``and``, ``or``, ``not``; ``L['name']``
      only for the graph's inputs.

    It accepts or refuses text; nothing in it is ever evaluated. Integers have at most 30 digits,
    nesting is at most :data:`MAX_DEPTH` deep, so what torch later evaluates is small.
    """

    def __init__(self, text: str, inputs: frozenset[str] | None) -> None:
        self.inputs = inputs
        self.tokens: list[str] = []
        self.kinds: list[str] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                if text[pos:].strip():
                    raise _Refused(f"unexpected {text[pos:].lstrip()[:12]!r}")
                break
            group = m.lastindex or 0
            kind = ("", "int", "name", "str", "op")[group]
            self.tokens.append(m.group(group))
            self.kinds.append(kind)
            pos = m.end()
        self.i = 0
        self.depth = 0

    @classmethod
    def check(cls, text: Any, inputs: frozenset[str] | None, path: Path, field: str) -> None:
        """Refuse ``text`` unless it is a symbolic size (``inputs is None``) or a guard over ``inputs``."""
        what = "a guard over the inputs' sizes" if inputs is not None else "a symbolic size"
        if not isinstance(text, str):
            raise _refuse(path, f"{field} must be a string, got {type(text).__name__}", _MODEL)
        if len(text) > MAX_EXPR:
            raise _refuse(path, f"{field} of {len(text):,} characters is over the limit of {MAX_EXPR:,}", _MODEL)
        try:
            parser = cls(text, inputs)
            parser.condition() if inputs is not None else parser.sum()
            if parser.i != len(parser.tokens):
                raise _Refused(f"unexpected {parser.tokens[parser.i]!r}")
        except _Refused as e:
            raise _refuse(path, f"{field} {_short(repr(text), 120)} is not {what}: {e}", _MODEL) from None

    # tokens
    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, kind: str | None = None, *texts: str) -> str:
        if self.i >= len(self.tokens):
            raise _Refused("it ends too early")
        token, k = self.tokens[self.i], self.kinds[self.i]
        if (kind and k != kind) or (texts and token not in texts):
            raise _Refused(f"unexpected {token!r}")
        self.i += 1
        return token

    def integer(self) -> None:
        if len(self.take("int")) > 30:
            raise _Refused("an integer of over 30 digits")

    def nested(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Refused(f"nested over {MAX_DEPTH} deep")

    # a guard is a condition: comparisons joined by and, or, not
    def condition(self) -> None:
        self.conjunction()
        while self.peek() == "or":
            self.take("name")
            self.conjunction()

    def conjunction(self) -> None:
        self.negation()
        while self.peek() == "and":
            self.take("name")
            self.negation()

    def negation(self) -> None:
        self.nested()
        if self.peek() == "not":
            self.take("name")
            self.negation()
        else:
            self.compare()
        self.depth -= 1

    # grammar shared by both forms
    def compare(self) -> None:
        self.sum()
        while self.peek() in _COMPARE:
            self.take("op")
            self.sum()

    def sum(self) -> None:
        self.product()
        while self.peek() in ("+", "-"):
            self.take("op")
            self.product()

    def product(self) -> None:
        self.unary()
        while self.peek() in ("*", "//", "%"):
            self.take("op")
            self.unary()

    def unary(self) -> None:
        self.nested()
        kind = self.kinds[self.i] if self.i < len(self.kinds) else None
        if self.peek() == "-":
            self.take("op")
            self.unary()
        elif kind == "int":
            self.integer()
        elif self.peek() == "(":
            self.take("op", "(")
            if self.inputs is None:
                self.sum()
            else:
                self.condition()
            self.take("op", ")")
        elif self.inputs is None:
            self.size_name(self.take("name"))
        else:
            self.guard_name(self.take("name"))
        self.depth -= 1

    # a symbolic size
    def size_name(self, name: str) -> None:
        if self.peek() != "(":
            if name in ("True", "False") or _SYMBOL.fullmatch(name):
                return
            raise _Refused(f"{name!r} is not a size symbol")
        self.take("op", "(")
        if name == "Integer":
            if self.peek() == "-":
                self.take("op")
            self.integer()
        elif name == "Symbol":
            symbol = self.take("str")[1:-1]
            if not _SYMBOL.fullmatch(symbol):
                raise _Refused(f"{symbol!r} is not a size symbol")
            while self.peek() == ",":
                self.take("op")
                if self.take("name") not in _ASSUMPTIONS:
                    raise _Refused(f"{self.tokens[self.i - 1]!r} is not a symbol assumption")
                self.take("op", "=")
                self.take("name", "True", "False")
        elif name in _SIZE_FUNCS or name in _RELATIONS:
            self.sum()
            while self.peek() == ",":
                self.take("op")
                self.sum()
        else:
            raise _Refused(f"{name}(…) is not a size function")
        self.take("op", ")")

    # a guard
    def guard_name(self, name: str) -> None:
        if name == "L":
            self.take("op", "[")
            source = self.take("str")[1:-1]
            if source not in (self.inputs or ()):
                raise _Refused(f"{source!r} is not an input of the graph")
            for token in ("]", ".", "size", "(", ")", "["):
                self.take(None, token)
            self.integer()
            self.take("op", "]")
        elif name == "torch":
            self.take("op", ".")
            self.take("name", "sym_max", "sym_min")
            self.take("op", "(")
            self.sum()
            self.take("op", ",")
            self.sum()
            self.take("op", ")")
        else:
            raise _Refused(f"{name!r} is not an input size, an integer or torch.sym_max/sym_min")


def loaded_by(loader: str, path: Path, step: Callable[[], T]) -> T:
    """Run one step of ``loader`` (torch, onnxruntime) on checked bytes. Such loaders raise a dozen
    error types for a malformed file; each becomes one :class:`ArtifactError` naming the file."""
    try:
        with TORCH_LOCK if loader == "torch" else contextlib.nullcontext():  # torch's loading is not thread-safe
            return step()
    except Exception as e:  # the loader's own error types, one per failure: the artifact is at fault
        raise _refuse(path, f"{loader} cannot load it ({type(e).__name__}: {_short(e, 300)})") from e


# -- ONNX -----------------------------------------------------------------------------------


def read_onnx(path: str | os.PathLike[str], *, max_bytes: int = MAX_BYTES) -> tuple[Any, bytes]:
    """Read an ``.onnx`` model once; refuse it when it does not parse or any tensor lives in an
    external file (a path the model names, read by onnxruntime).

    Returns:
        ``(model, data)``: the parsed ``onnx.ModelProto`` and the bytes it was parsed from, for
        onnxruntime.

    Raises:
        ArtifactError: unreadable, over ``max_bytes``, not an ONNX model, or external data.
    """
    import onnx
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

    path = Path(path)
    data = _read_file(path, max_bytes)
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError, RecursionError) as e:
        raise _refuse(path, f"not an ONNX model ({type(e).__name__}: {_short(e)})") from None
    graphs = [model.graph, *(f for f in model.functions)]
    while graphs:
        graph = graphs.pop()
        tensors = list(getattr(graph, "initializer", ()))
        for sparse in getattr(graph, "sparse_initializer", ()):
            tensors += [sparse.values, sparse.indices]
        for node in graph.node:
            for attr in node.attribute:
                tensors += [attr.t, *attr.tensors]
                tensors += [t for s in (attr.sparse_tensor, *attr.sparse_tensors) for t in (s.values, s.indices)]
                graphs += [attr.g, *attr.graphs]
        for tensor in tensors:
            if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
                raise _refuse(path, f"tensor {tensor.name!r} points to external data; refusing to read other files")
    return model, data
