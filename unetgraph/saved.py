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

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.fx as fx
from torch import nn

from .errors import SavedModelError, UNetGraphError
from .files import atomic_dir
from .graph import UNetGraph
from .grouping import POLICIES, group_nodes
from .lower import lower
from .record import LoweredRecord, find_record
from .serialize import from_dict, to_dict

__all__ = ["save_model", "load_model", "CONFIG", "WEIGHTS", "METADATA", "FORMAT_VERSION"]

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
METADATA = "unetgraph.json"
FORMAT = "unetgraph-model"
FORMAT_VERSION = 1
"""The version of the folder layout this release writes and reads."""

_MAX_JSON = 64 * 2**20  # a graph document of 100,000 nodes is ~30 MB
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
            loading); sharded (FSDP) tensors; mixed floating dtypes.
    """
    g, record, state = _what_to_save(model, weights)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SavedModelError(f"{path}: exists and is not a folder")
    if path.exists() and not overwrite:
        raise SavedModelError(f"{path}: exists; pass overwrite=True to replace it (in one step)")
    tensors = _plain_tensors(state)
    expected = _expected(g, record)
    _check_tensors(
        {k: (tuple(t.shape), t.dtype) for k, t in tensors.items()},
        expected,
        "the weights",
        hint="was it changed by ug.optimize? save the module lower() made and optimize after load_model",
    )
    floats = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if len(floats) > 1:
        raise SavedModelError(
            f"the weights mix {', '.join(sorted(map(str, floats)))} (a reduced-precision optimize()): save the "
            "module lower() made and apply optimize(dtype=...) after load_model"
        )
    dtype = next(iter(floats)) if floats else torch.get_default_dtype()
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

    Raises:
        SavedModelError: a file is missing, too large, not valid JSON or safetensors, fails its
            checksum or holds values this release does not read (the message names the file);
            a tensor is missing, unexpected, or of another shape or dtype than the graph needs
            (``.node`` names its node).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise SavedModelError(f"{folder}: no such folder{_interrupted(folder)}")
    meta = _metadata(folder)
    config_bytes = _read(folder / CONFIG, _MAX_JSON)
    if verify:
        _verify(folder / CONFIG, config_bytes, meta)
        _verify_file(folder / WEIGHTS, meta)
    try:
        g = from_dict(json.loads(config_bytes.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise SavedModelError(f"{CONFIG}: not a valid JSON document ({e})") from None
    except UNetGraphError as e:
        raise SavedModelError(f"{CONFIG}: {e.message}", node=e.node, edge=e.edge) from None
    lowering, dtype = meta["lowering"], _DTYPES[meta["dtype"]]
    try:
        gm = lower(
            g, pad=lowering["pad"], pad_mode=lowering["pad_mode"], guard=lowering["guard"], device=device, dtype=dtype
        )
    except UNetGraphError as e:
        raise SavedModelError(
            f"{METADATA}: the graph cannot be lowered as recorded: {e.message}", node=e.node
        ) from None
    tensors = _weights(folder / WEIGHTS, {k: (tuple(t.shape), t.dtype) for k, t in gm.state_dict().items()})
    with torch.no_grad():
        gm.load_state_dict({k: t.to(device) for k, t in tensors.items()}, strict=True)
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


def _plain_tensors(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    out = {}
    for key, t in state.items():
        if not isinstance(key, str) or not isinstance(t, torch.Tensor):
            raise SavedModelError(f"the weights: {key!r} is a {type(t).__name__}, not a tensor")
        if hasattr(t, "full_tensor"):
            raise SavedModelError(
                f"the weights: {key} is a sharded DTensor (FSDP); gather a full state_dict first: "
                "torch.distributed.checkpoint.state_dict.get_model_state_dict(model, "
                "options=StateDictOptions(full_state_dict=True, cpu_offload=True)), then on rank 0 "
                "save_model(graph, path, weights=that)"
            )
        if t.is_meta:
            raise SavedModelError(f"the weights: {key} is on the meta device (no values to save)")
        out[key] = t.detach().to("cpu").contiguous()
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


def _expected(g: UNetGraph, record: LoweredRecord) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Key → (shape, dtype) of the module ``g`` lowers to with ``record``'s options (built on the meta device)."""
    gm = lower(g, pad=record.pad, pad_mode=record.pad_mode, guard=record.guard, device="meta")
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


def _read(path: Path, limit: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise SavedModelError(f"{path.name}: {size:,} bytes, more than the {limit:,} this file may hold")
        return path.read_bytes()
    except FileNotFoundError:
        raise SavedModelError(f"{path.name}: missing from {path.parent}") from None
    except IsADirectoryError:
        raise SavedModelError(f"{path.name}: is a folder, expected a file") from None
    except OSError as e:
        raise SavedModelError(f"{path.name}: cannot be read ({e.strerror})") from None


def _metadata(folder: Path) -> dict[str, Any]:
    raw = _read(folder / METADATA, 2**20)
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise SavedModelError(f"{METADATA}: not valid JSON ({e})") from None

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


def _verify(path: Path, data: bytes, meta: Mapping[str, Any]) -> None:
    if _digest(data) != meta["files"][path.name]:
        raise SavedModelError(
            f"{path.name}: its contents changed after it was saved (SHA-256 differs from the one in {METADATA}); "
            "load_model(..., verify=False) skips this check"
        )


def _verify_file(path: Path, meta: Mapping[str, Any]) -> None:
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(2**24), b""):
                h.update(chunk)
    except FileNotFoundError:
        raise SavedModelError(f"{path.name}: missing from {path.parent}") from None
    except OSError as e:
        raise SavedModelError(f"{path.name}: cannot be read ({e.strerror})") from None
    if h.hexdigest() != meta["files"][path.name]:
        raise SavedModelError(
            f"{path.name}: its contents changed after it was saved (SHA-256 differs from the one in {METADATA}); "
            "load_model(..., verify=False) skips this check"
        )


def _weights(path: Path, expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]]) -> dict[str, torch.Tensor]:
    """The tensors of ``path``, after their names, shapes and dtypes were checked against ``expected``."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise SavedModelError(f"{path.name}: missing from {path.parent}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            got = {}
            for key in f.keys():
                sl = f.get_slice(key)
                got[key] = (tuple(sl.get_shape()), _torch_dtype(sl.get_dtype(), path, key))
            _check_tensors(got, expected, path.name, dtypes=True)
            return {key: f.get_tensor(key) for key in got}
    except SafetensorError as e:
        raise SavedModelError(f"{path.name}: not a valid safetensors file ({e})") from None
    except (OSError, ValueError, RuntimeError) as e:
        raise SavedModelError(f"{path.name}: cannot be read ({type(e).__name__}: {e})") from None


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


def _torch_dtype(name: str, path: Path, key: str) -> torch.dtype:
    if name not in _SAFETENSORS_DTYPES:
        raise SavedModelError(
            f"{path.name}: {key} (node {_node(key)}) has dtype {name}, which no unetgraph model holds"
        )
    return _SAFETENSORS_DTYPES[name]


def _interrupted(folder: Path) -> str:
    """A hint when a replacing save was killed between its two renames (non-Linux systems)."""
    if not folder.parent.is_dir():
        return ""
    left = sorted(folder.parent.glob(f".{folder.name}.*.old"))
    return f" (an interrupted save left the previous model in {left[0].name})" if left else ""
