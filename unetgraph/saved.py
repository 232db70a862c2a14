"""Saved models: one folder with the graph, its weights and how it was lowered, loaded without pickle.

The layout is the one Hugging Face Hub and diffusers users know, so a folder can be shared as is::

    my_unet/
      config.json         the graph document (docs/schema.md), as ``g.save("x.json")`` writes it
      model.safetensors   the weights under their state_dict keys (``enc1.conv0.weight``)
      unetgraph.json      format version, library and torch versions, lowering options, dtype,
                          and the SHA-256 of the two files above

:func:`save_model` writes the folder atomically (into a temporary folder beside it, then one
rename). :func:`load_model` lowers the graph with the recorded options and loads the weights:
JSON and safetensors only (nothing is unpickled or executed), strict keys, and every problem a
:class:`~unetgraph.errors.SavedModelError` that names the file, or the node a tensor belongs to.

>>> import tempfile, torch, unetgraph as ug
>>> gm = ug.unet(1, 2, widths=(8, 16)).lower(pad="auto")
>>> folder = ug.save_model(gm, tempfile.mkdtemp() + "/seg")
>>> sorted(p.name for p in folder.iterdir())
['config.json', 'model.safetensors', 'unetgraph.json']
>>> back = ug.load_model(folder)
>>> x = torch.randn(1, 1, 30, 30)
>>> torch.equal(back.eval()(x), gm.eval()(x)), ug.lowered_record(back).pad
(True, 'auto')
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import typing
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.fx as fx
from torch import nn

from .errors import FileError, SavedModelError, UNetGraphError
from .files import atomic_dir, is_path, open_regular
from .graph import UNetGraph
from .grouping import POLICIES, group_nodes
from .lower import lower
from .record import LoweredRecord, find_record
from .serialize import MAX_DOCUMENT_BYTES, loads, read_json, to_dict
from .util import short_repr

__all__ = ["save_model", "load_model", "CONFIG", "WEIGHTS", "METADATA", "FORMAT_VERSION"]

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
METADATA = "unetgraph.json"
FORMAT = "unetgraph-model"
FORMAT_VERSION = 1
"""The version of the folder layout this release writes and reads."""

_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16)}
_OPTIONS = {"pad": (type(None), str), "pad_mode": (str,), "guard": (bool,), "grouped": (bool,)}


def save_model(
    model: nn.Module | UNetGraph,
    path: str | os.PathLike[str],
    *,
    weights: nn.Module | Mapping[str, torch.Tensor] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a model as a folder: ``config.json``, ``model.safetensors`` and ``unetgraph.json``.

    Args:
        model: a module made by :func:`unetgraph.lower` (also inside ``torch.compile`` or
            ``DistributedDataParallel``), or a graph together with ``weights``.
        path: the folder to write.
        weights: with a graph: a ``state_dict`` or a module holding it (default options of
            :func:`unetgraph.lower` are recorded). With a module: leave it out.
        overwrite: replace an existing folder (in one step on Linux); otherwise an existing
            ``path`` is refused.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        SavedModelError: ``path`` exists (without ``overwrite``); the weights do not fit the graph
            (a module changed by ``ug.optimize``: save the module lower() made and optimize after
            loading) in names, shapes or dtypes; sharded (FSDP) tensors; mixed floating dtypes.
        FileError: the folder cannot be written (no permission, the disk full, a bad name);
            nothing is left behind.
    """
    g, record, state = _what_to_save(model, weights)
    path = _folder(path)
    try:
        if path.exists() and not path.is_dir():
            raise SavedModelError(f"{path}: exists and is not a folder")
        if path.exists() and not overwrite:
            raise SavedModelError(f"{path}: exists; pass overwrite=True to replace it (in one step)")
    except OSError as e:  # a name too long, a folder that cannot be searched
        raise FileError(f"{path}: cannot write: {e.strerror or e}") from None
    tensors = _plain_tensors(state)
    floats = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if len(floats) > 1:
        raise SavedModelError(
            f"the weights mix {', '.join(sorted(map(str, floats)))} (a reduced-precision optimize()): save the "
            "module lower() made and apply optimize(dtype=...) after load_model"
        )
    dtype = next(iter(floats)) if floats else torch.get_default_dtype()
    options = _options(record)
    # what load_model will build and check: the same options and dtype, so a folder that saves loads
    _check_tensors(
        {k: (tuple(t.shape), t.dtype) for k, t in tensors.items()},
        _expected(g, options, dtype),
        "the weights",
        hint="was it changed by ug.optimize? save the module lower() made and optimize after load_model",
        dtypes=True,
    )
    config = (json.dumps(to_dict(g), indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    from safetensors.torch import save as save_safetensors

    blob = save_safetensors(tensors, metadata={"format": "pt"})
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library": {"unetgraph": _version(), "torch": torch.__version__.split("+")[0]},
        "lowering": {
            "pad": record.pad,
            "pad_mode": record.pad_mode,
            "guard": record.guard,
            "grouped": record.grouped,
            "checkpoint": list(record.checkpoint),
            "checkpoint_policy": record.checkpoint_policy,
        },
        "dtype": str(dtype).removeprefix("torch."),
        "files": {CONFIG: _digest(config), WEIGHTS: _digest(blob)},
    }
    try:
        with atomic_dir(path, overwrite=overwrite) as tmp:
            (tmp / CONFIG).write_bytes(config)
            (tmp / WEIGHTS).write_bytes(blob)
            (tmp / METADATA).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    except FileExistsError:
        raise SavedModelError(f"{path}: exists; pass overwrite=True to replace it (in one step)") from None
    except FileError:
        raise
    except OSError as e:  # the disk full, a file too large for the file system
        raise FileError(f"{path}: cannot write: {e.strerror or e}") from None
    return path


def load_model(
    path: str | os.PathLike[str], *, device: torch.device | str = "cpu", verify: bool = True
) -> fx.GraphModule:
    """The lowered module a :func:`save_model` folder holds, with its weights.

    The graph is lowered with the recorded options (``pad``, ``pad_mode``, ``guard``,
    checkpointed nodes) in the recorded dtype, on ``device``; then every tensor is checked
    against it (names, shapes, dtypes) before any is loaded. Nothing is unpickled.

    Args:
        path: the folder.
        device: where the module's tensors go.
        verify: check both files against the SHA-256 recorded in ``unetgraph.json`` (a flipped
            bit or an edited file is refused, naming the file).

    A folder replaced while it loads (``save_model(..., overwrite=True)`` from another thread or
    process) gives the old model or the new one whole: the folder is opened once and its three
    files are read from that opening.

    Raises:
        SavedModelError: a file is missing, too large, not a regular file (a FIFO, a device), not
            valid JSON or safetensors, fails its checksum or holds values this release does not
            read (the message names the file); a tensor is missing, unexpected, or of another
            shape or dtype than the graph needs (``.node`` names its node); ``device`` is not a
            device.
    """
    folder = _folder(path)
    try:
        device = torch.device(device)
        torch.empty(0, device=device)
    except (RuntimeError, TypeError, AssertionError) as e:
        raise SavedModelError(f"device: {short_repr(device)} cannot be used here ({e})") from None
    with _Pinned(folder) as files:
        meta = _metadata(files.read(METADATA, 2**20))
        config_bytes = files.read(CONFIG, MAX_DOCUMENT_BYTES)
        if verify:
            _verify(CONFIG, _digest(config_bytes), meta)
            _verify(WEIGHTS, files.digest(WEIGHTS), meta)
        try:
            g = loads(config_bytes, "json")
        except UNetGraphError as e:
            raise SavedModelError(f"{CONFIG}: {e.message}", node=e.node, edge=e.edge) from None
        lowering, dtype = meta["lowering"], _DTYPES[meta["dtype"]]
        options = {k: lowering[k] for k in ("pad", "pad_mode", "guard")}
        try:
            # the tensors are checked against a module built on the meta device first, so a
            # folder that describes a huge graph costs nothing before it is refused
            expected = _expected(g, options, dtype)
        except UNetGraphError as e:
            raise SavedModelError(
                f"{METADATA}: the graph cannot be lowered as recorded: {e.message}", node=e.node
            ) from None
        with _safetensors(files.path(WEIGHTS), WEIGHTS) as weights:
            header = {k: (tuple(weights.get_slice(k).get_shape()), _weight_dtype(weights, k)) for k in weights.keys()}
            _check_tensors(header, expected, WEIGHTS, dtypes=True)
            gm = lower(g, **options, device=device, dtype=dtype)
            with torch.no_grad():
                gm.load_state_dict({k: weights.get_tensor(k).to(device) for k in header}, strict=True)
    if lowering["grouped"] or lowering["checkpoint"]:
        try:
            gm = group_nodes(gm, checkpoint=lowering["checkpoint"], policy=lowering["checkpoint_policy"])
        except UNetGraphError as e:
            raise SavedModelError(f"{METADATA}: lowering.checkpoint: {e.message}", node=e.node) from None
    return gm


# -- saving --------------------------------------------------------------------------------------


def _what_to_save(
    model: nn.Module | UNetGraph, weights: nn.Module | Mapping[str, torch.Tensor] | None
) -> tuple[UNetGraph, LoweredRecord, Mapping[str, Any]]:
    if isinstance(model, UNetGraph):
        if weights is None:
            raise SavedModelError("save_model: a graph needs its weights: save_model(g, path, weights=state_dict)")
        state = weights.state_dict() if isinstance(weights, nn.Module) else weights
        if not isinstance(state, Mapping):
            raise SavedModelError(f"weights: expected a state_dict or a module, got {type(weights).__name__}")
        return model, LoweredRecord(model, {}), state
    if weights is not None:
        raise SavedModelError("save_model: weights= goes with a graph; a module saves its own")
    module = model
    while True:  # the module inside DistributedDataParallel / DataParallel and torch.compile's wrapper
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        else:
            inner = getattr(module, "_orig_mod", None)
            if not isinstance(inner, nn.Module):
                break
            module = inner
    record = find_record(module)
    if record is None:
        raise SavedModelError(
            f"save_model: expected a module made by unetgraph.lower or a graph, got {type(model).__name__}"
        )
    return record.graph, record, module.state_dict()


def _folder(path: object) -> Path:
    if not is_path(path):
        raise SavedModelError(f"path: expected a folder path (str or os.PathLike), got {type(path).__name__}")
    return Path(path)


def _options(record: LoweredRecord) -> dict[str, Any]:
    """The lowering options a saved folder records and :func:`load_model` lowers with."""
    return {"pad": record.pad, "pad_mode": record.pad_mode, "guard": record.guard}


def _plain_tensors(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    out = {}
    storages: set[tuple[str, int]] = set()
    for key, t in state.items():
        if not isinstance(key, str):
            raise SavedModelError(f"the weights: the key {short_repr(key)} is a {type(key).__name__}, not a name")
        if not isinstance(t, torch.Tensor):
            raise SavedModelError(f"the weights: {key} is a {type(t).__name__}, not a tensor")
        if hasattr(t, "full_tensor"):
            raise SavedModelError(
                f"the weights: {key} is a sharded DTensor (FSDP); gather a full state_dict first: "
                "torch.distributed.checkpoint.state_dict.get_model_state_dict(model, "
                "options=StateDictOptions(full_state_dict=True, cpu_offload=True)), then on rank 0 "
                "save_model(graph, path, weights=that)"
            )
        if t.is_meta:
            raise SavedModelError(f"the weights: {key} is on the meta device (no values to save)")
        t = t.detach().to("cpu").contiguous()
        storage = (str(t.device), t.untyped_storage().data_ptr())
        if storage in storages:  # tied tensors: safetensors stores each under its own name
            t = t.clone()
        storages.add(storage)
        out[key] = t
    return out


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("unetgraph")
    except PackageNotFoundError:
        return "unknown"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- checking --------------------------------------------------------------------------------------


def _expected(
    g: UNetGraph, options: Mapping[str, Any], dtype: torch.dtype
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Key → (shape, dtype) of the module ``g`` lowers to with ``options`` in ``dtype`` (built on the meta device)."""
    gm = lower(g, **options, device="meta", dtype=dtype)
    return {k: (tuple(t.shape), t.dtype) for k, t in gm.state_dict().items()}


def _node(key: str) -> str:
    return key.split(".", 1)[0]


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape)) or "a scalar"


def _check_tensors(
    got: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
    expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
    where: str,
    hint: str = "",
    dtypes: bool = False,
) -> None:
    """Raise for the first missing, unexpected or mis-shaped (or, with ``dtypes``, mis-typed) tensor."""
    extra = f"; {hint}" if hint else ""
    for key in expected:
        if key not in got:
            raise SavedModelError(f"{where}: {key} is missing (node {_node(key)}){extra}", node=_node(key))
    for key in got:
        if key not in expected:
            raise SavedModelError(
                f"{where}: {key} is not a tensor of the graph's module (node {_node(key)}){extra}", node=_node(key)
            )
    for key, (shape, dtype) in got.items():
        want, want_dtype = expected[key]
        if shape != want:
            raise SavedModelError(
                f"{where}: {key} (node {_node(key)}) is {_shape(shape)}, the graph needs {_shape(want)}{extra}",
                node=_node(key),
            )
        if dtypes and dtype != want_dtype:
            raise SavedModelError(
                f"{where}: {key} (node {_node(key)}) is {dtype}, the model is built in {want_dtype}", node=_node(key)
            )


class _Pinned:
    """A saved folder opened once: its files are opened relative to that opening, so a folder
    swapped in meanwhile (an ``overwrite=True`` save) cannot mix its files with the old ones.
    Files are kept open until the end, and must be regular files (a FIFO or a device is refused
    before it could block or never end)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.dir_fd: int | None = None
        self.fds: dict[str, int] = {}

    def __enter__(self) -> _Pinned:
        for attempt in range(5):
            self._open_folder()
            try:
                for name in (METADATA, CONFIG, WEIGHTS):
                    self._fd(name)
                return self
            except SavedModelError:
                # the folder was swapped and its old copy removed between our two opens: again
                swapped = self.dir_fd is not None and self._swapped()
                self.__exit__()
                if not swapped or attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _open_folder(self) -> None:
        pinning = os.open in os.supports_dir_fd and hasattr(os, "O_DIRECTORY")
        try:
            if pinning:
                self.dir_fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
            elif not self.folder.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "not a folder")
        except (FileNotFoundError, NotADirectoryError):
            raise SavedModelError(f"{self.folder}: no such folder{_interrupted(self.folder)}") from None
        except (OSError, ValueError) as e:
            raise SavedModelError(f"{self.folder}: cannot be read ({getattr(e, 'strerror', None) or e})") from None

    def _swapped(self) -> bool:
        try:
            now, opened = os.stat(self.folder), os.fstat(typing.cast(int, self.dir_fd))
        except OSError:
            return False
        return (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino)

    def __exit__(self, *exc: object) -> None:
        for fd in [*self.fds.values(), *([self.dir_fd] if self.dir_fd is not None else [])]:
            os.close(fd)
        self.fds.clear()
        self.dir_fd = None

    def _fd(self, name: str) -> int:
        if name not in self.fds:
            try:
                if self.dir_fd is not None:
                    self.fds[name] = open_regular(name, dir_fd=self.dir_fd)
                else:
                    self.fds[name] = open_regular(self.folder / name)
            except FileNotFoundError:
                raise SavedModelError(f"{name}: missing from {self.folder}") from None
            except IsADirectoryError:
                raise SavedModelError(f"{name}: is a folder, expected a file") from None
            except OSError as e:
                raise SavedModelError(f"{name}: cannot be read ({e.strerror or e})") from None
        return self.fds[name]

    def read(self, name: str, limit: int) -> bytes:
        """The whole file, at most ``limit`` bytes."""
        fd = self._fd(name)
        try:
            size = os.fstat(fd).st_size
            if size > limit:
                raise SavedModelError(f"{name}: {size:,} bytes, more than the {limit:,} this file may hold")
            data = os.pread(fd, size + 1, 0) if hasattr(os, "pread") else os.read(fd, size + 1)
        except OSError as e:
            raise SavedModelError(f"{name}: cannot be read ({e.strerror or e})") from None
        if len(data) > size:  # saved files are written whole, then renamed: never while read
            raise SavedModelError(f"{name}: grew while it was read; a save writes a new folder, not into this one")
        return data

    def digest(self, name: str) -> str:
        """The SHA-256 of the file, read in chunks."""
        fd = self._fd(name)
        h = hashlib.sha256()
        try:
            with os.fdopen(os.dup(fd), "rb") as f:
                for chunk in iter(lambda: f.read(2**24), b""):
                    h.update(chunk)
        except OSError as e:
            raise SavedModelError(f"{name}: cannot be read ({e.strerror or e})") from None
        return h.hexdigest()

    def path(self, name: str) -> str:
        """A name the opened file can be opened again by (for readers that take a name)."""
        fd = self._fd(name)
        proc = f"/proc/self/fd/{fd}"
        return proc if os.path.exists(proc) else str(self.folder / name)


def _metadata(raw: bytes) -> dict[str, Any]:
    try:
        meta = read_json(raw)
    except UNetGraphError as e:
        raise SavedModelError(f"{METADATA}: {e.message}") from None

    def bad(field: str, value: Any, expected: str) -> SavedModelError:
        return SavedModelError(f"{METADATA}: {field}: expected {expected}, got {value!r}"[:400])

    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SavedModelError(f"{METADATA}: not a unetgraph model folder (format is not {FORMAT!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise bad("format_version", version, "a positive integer")
    if version > FORMAT_VERSION:
        raise SavedModelError(
            f"{METADATA}: format_version {version} was written by a newer unetgraph; this one reads {FORMAT_VERSION}"
        )
    lowering = meta.get("lowering")
    if not isinstance(lowering, dict):
        raise bad("lowering", lowering, "a mapping")
    for key, types in _OPTIONS.items():
        if key not in lowering or not isinstance(lowering[key], types):
            raise bad(f"lowering.{key}", lowering.get(key), " or ".join(t.__name__ for t in types))
    checkpoint = lowering.get("checkpoint")
    if not isinstance(checkpoint, list) or not all(isinstance(n, str) for n in checkpoint):
        raise bad("lowering.checkpoint", checkpoint, "a list of node names")
    if lowering.get("checkpoint_policy") not in POLICIES:
        raise bad("lowering.checkpoint_policy", lowering.get("checkpoint_policy"), " or ".join(POLICIES))
    if meta.get("dtype") not in _DTYPES:
        raise bad("dtype", meta.get("dtype"), " or ".join(_DTYPES))
    files = meta.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(files.get(f), str) and len(files[f]) == 64 for f in (CONFIG, WEIGHTS)
    ):
        raise bad("files", files, f"the SHA-256 of {CONFIG} and {WEIGHTS}")
    return meta


def _verify(name: str, digest: str, meta: Mapping[str, Any]) -> None:
    if digest != meta["files"][name]:
        raise SavedModelError(
            f"{name}: its contents changed after it was saved (SHA-256 differs from the one in {METADATA}); "
            "load_model(..., verify=False) skips this check"
        )


@contextlib.contextmanager
def _safetensors(path: str, name: str) -> Iterator[Any]:
    """``safe_open`` of ``path``, its errors as :class:`SavedModelError` naming ``name``."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            yield f
    except UNetGraphError:  # ours, from the work done while the file is open: already in words
        raise
    except SafetensorError as e:
        raise SavedModelError(f"{name}: not a valid safetensors file ({e})") from None
    except (OSError, ValueError, RuntimeError) as e:
        raise SavedModelError(f"{name}: cannot be read ({type(e).__name__}: {e})") from None


def _weight_dtype(f: Any, key: str) -> torch.dtype:
    name = f.get_slice(key).get_dtype()
    if name not in _SAFETENSORS_DTYPES:
        raise SavedModelError(f"{WEIGHTS}: {key} (node {_node(key)}) has dtype {name}, which no unetgraph model holds")
    return _SAFETENSORS_DTYPES[name]


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _interrupted(folder: Path) -> str:
    """A hint when a replacing save was killed between its two renames (non-Linux systems)."""
    if not folder.parent.is_dir():
        return ""
    left = sorted(folder.parent.glob(f".{folder.name}.*.old"))
    return f" (an interrupted save left the previous model in {left[0].name})" if left else ""
