"""The block contract and the registry that maps block names to spec classes.

A block spec is a small frozen dataclass. It validates its fields when created, infers
its output :class:`~unetgraph.types.TensorType` from its inputs' types, says how it
changes spatial sizes (:mod:`unetgraph.sizes`), counts its parameters without building
anything, and builds its ``nn.Module`` on demand. Graphs store specs, never modules, so a
graph is plain data that serializes by the registry name of each spec.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import MISSING, dataclass, fields, replace
from fractions import Fraction
from typing import Any, ClassVar, Literal, Mapping, Sequence, TypeVar

from torch import nn

from ..errors import RegistryError, ShapeError, SpecError, UNetGraphError
from ..sizes import SizeOp, apply_ops
from ..types import TensorType
from ..util import path_key, short_repr

__all__ = [
    "BlockSpec",
    "register_block",
    "get_block",
    "block_names",
    "unregister_block",
    "create_block",
    "block_from_dict",
    "leaf_module",
    "is_leaf_module",
    "MAX_INT",
    "MAX_AXES",
]

S = TypeVar("S", bound="BlockSpec")
T = TypeVar("T", bound=type)

MAX_INT = 2**20
"""The largest value of a built-in block's integer fields (channels, kernels, strides, factors,
heads, groups, classes...): 1,048,576, far beyond any real network, small enough that no
shape, size or parameter computation on it takes long. ``ConvBlock.convs`` is capped lower."""

MAX_AXES = 3
"""A per-axis field (``kernel=(1, 3, 3)``) has one entry per spatial axis: at most 3."""

_INT64 = 2**63

_REGISTRY: dict[str, type[BlockSpec]] = {}
_LEAF_MODULES: set[type[nn.Module]] = set()


@dataclass(frozen=True)
class BlockSpec:
    """Base class of all block specs.

    Subclasses are frozen dataclasses registered with :func:`register_block`. They override
    :meth:`infer` and :meth:`build`, and, when they change spatial sizes, :meth:`size_ops`.

    Class attributes:
        type_name: the registry name (set by :func:`register_block`).
        min_inputs, max_inputs: how many data/skip inputs the block takes
            (``max_inputs=None``: any number).
        max_cond: how many conditioning (``cond`` edge) inputs it takes, after the data inputs.
    """

    type_name: ClassVar[str] = ""
    min_inputs: ClassVar[int] = 1
    max_inputs: ClassVar[int | None] = 1
    max_cond: ClassVar[int] = 0

    def __post_init__(self) -> None:
        self._check_numbers()
        self.validate()

    # -- to override -------------------------------------------------------------------
    def validate(self) -> None:
        """Check and normalise fields; raise :class:`SpecError` naming the field."""

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        """Output type for ``inputs`` (one per port); ``sources`` name them for messages."""
        raise NotImplementedError(f"{type(self).__name__} must implement infer()")

    def size_ops(self, dims: int, axis: int) -> tuple[SizeOp, ...]:
        """How the block maps a spatial size along ``axis``; empty when it keeps sizes."""
        return ()

    # -- several outputs (a backbone's feature maps); most blocks have one ------------------
    def infer_outputs(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> tuple[TensorType, ...]:
        """The type of each output port, in port order. The default is one output, :meth:`infer`'s.

        A block with several outputs (:class:`~unetgraph.blocks.backbone.Backbone`: a feature map
        per scale) overrides this and :meth:`output_size_ops`; edges then name the output they
        take (``Edge.out``), its :meth:`infer` returns the last output's type, and
        :meth:`build`'s module returns one tensor per output: a tuple, or a value that
        :meth:`output_keys` indexes; a ``torch.fx.GraphModule`` returning a tuple is inlined.
        """
        return (self.infer(inputs, sources),)

    def output_size_ops(self, inputs: Sequence[TensorType], dims: int, axis: int) -> tuple[tuple[SizeOp, ...], ...]:
        """Per output port, how the block maps a spatial size along ``axis`` (default: :meth:`size_ops`)."""
        return (self.size_ops(dims, axis),)

    def output_names(self, inputs: Sequence[TensorType]) -> tuple[str, ...]:
        """Short names of the output ports for drawings and tables (``"layer2"``); default their indices."""
        return tuple(str(i) for i in range(len(self.infer_outputs(inputs))))

    def output_keys(self, inputs: Sequence[TensorType]) -> tuple[int | str, ...]:
        """How lowering picks each output from what the module returns (``out[key]``): positions by default."""
        return tuple(range(len(self.infer_outputs(inputs))))

    def shape_notes(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> list[str]:
        """Check constraints on concrete shapes that size ops cannot express (e.g. a GroupNorm
        needs more than one value per group). Raise :class:`ShapeError` for shapes that can
        never run; return notes for shapes that run only in some modes."""
        return []

    def build(self, inputs: Sequence[TensorType], output: TensorType) -> nn.Module:
        """A fresh ``nn.Module`` whose forward takes the inputs positionally."""
        raise NotImplementedError(f"{type(self).__name__} must implement build()")

    def params(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        """Number of parameters. The default builds the module and counts; override to avoid that."""
        return sum(p.numel() for p in self.build(inputs, output).parameters())

    @property
    def size_policy(self) -> Literal["equal", "crop"]:
        """How several spatial inputs must agree: ``"equal"`` sizes, or ``"crop"``: every input
        but the last is centre-cropped to the last one's size (the original U-Net's merge)."""
        return "equal"

    def flops(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        """Floating-point operations of one forward at these concrete shapes, counted as
        ``torch.utils.flop_counter.FlopCounterMode`` counts them (2 × multiply-accumulates of
        convolutions, matmuls and attention; norms, activations and pooling count 0).

        The default runs the built module on meta tensors under ``FlopCounterMode``: exact
        for any block, no data touched. Built-in blocks override it with formulas.
        """
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        types = self.shape_types(inputs)
        out_type = TensorType.of_shape(output)
        with torch.device("meta"):
            module = self.build(types, out_type)
            args = [torch.empty(s) for s in inputs]
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            module(*args)
        return counter.get_total_flops()

    def shape_types(self, inputs: Sequence[tuple[int, ...]]) -> list[TensorType]:
        """The types of concrete input shapes, the ones past the data inputs read as
        conditioning (for blocks given shapes, e.g. :meth:`flops`)."""
        n = self.data_inputs(len(inputs))
        return [TensorType.of_shape(s, cond=i >= n) for i, s in enumerate(inputs)]

    def data_inputs(self, total: int) -> int:
        """How many of ``total`` inputs are data/skip inputs; the rest arrive on ``cond`` edges."""
        if self.max_cond == 0 or self.max_inputs is None:
            return total
        return min(total, self.max_inputs)

    def label(self) -> str:
        """A few words for tables and drawings."""
        return self.type_name or type(self).__name__

    # -- shared --------------------------------------------------------------------------
    def out_size(self, size: int, dims: int, axis: int) -> tuple[int, bool]:
        """Output size along ``axis`` and whether nothing was rounded away."""
        return apply_ops(self.size_ops(dims, axis), size)

    def with_(self: S, **changes: Any) -> S:
        """A copy with ``changes`` applied (validated like a new spec)."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise SpecError(
                f"{self.type_name} has no field {', '.join(map(repr, unknown))}; fields: {', '.join(sorted(names))}"
            )
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data: ``{"type": name, field: value, ...}``, every field included.

        Tuples become lists, nested specs their own ``to_dict()``, fractions
        ``{"fraction": "1/2"}``; :func:`block_from_dict` turns the result back into an equal spec.

        Raises:
            SpecError: a field holds a value that is not plain data (e.g. a module or a function).
        """
        out: dict[str, Any] = {"type": self.type_name}
        for f in fields(self):
            out[f.name] = _encode(getattr(self, f.name), f"{self.type_name}.{f.name}")
        return out

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    # -- the checks every block gets ---------------------------------------------------
    def _check_numbers(self) -> None:
        """Every block, built-in or registered by a user: numbers in fields are finite. A NaN or
        an infinity (``float("nan")``, JSON's ``NaN``, YAML's ``.inf``) is refused, as is an
        integer outside the int64 range; in tuples (per-axis values) too."""
        who = self.type_name or type(self).__name__
        for f in fields(self):
            value = getattr(self, f.name)
            for v in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(v, float) and not math.isfinite(v):
                    raise SpecError(f"{who}.{f.name}: expected a finite number, got {v!r}")
                if isinstance(v, int) and not -_INT64 <= v < _INT64:
                    raise SpecError(f"{who}.{f.name}: expected an integer within ±2**63, got {short_repr(v)}")

    # -- validation helpers for subclasses --------------------------------------------
    def _require(self, ok: bool, field: str, expected: str) -> None:
        if not ok:
            raise SpecError(f"{self.type_name}.{field}: expected {expected}, got {short_repr(getattr(self, field))}")

    def _positive_int(self, field: str, *, optional: bool = False, zero: bool = False, maximum: int = MAX_INT) -> None:
        """Accept an integer ``>= 1`` (``>= 0`` with ``zero``) and at most ``maximum``."""
        value = getattr(self, field)
        if optional and value is None:
            return
        lo = 0 if zero else 1
        what = "a non-negative integer" if zero else "a positive integer"
        self._require(_is_int(value) and value >= lo, field, what + (" or None" if optional else ""))
        self._require(value <= maximum, field, f"at most {maximum:,}")

    def _choice(self, field: str, choices: Sequence[str], aliases: dict[str, str] | None = None) -> None:
        value = getattr(self, field)
        if not isinstance(value, str):
            raise SpecError(
                f"{self.type_name}.{field}: expected one of {', '.join(map(repr, choices))}, got {short_repr(value)}"
            )
        if aliases and value in aliases:
            self._set(field, aliases[value])
            return
        if value not in choices:
            hint = difflib.get_close_matches(value[:100], choices, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise SpecError(
                f"{self.type_name}.{field}: expected one of {', '.join(map(repr, choices))}, "
                f"got {short_repr(value)}{extra}"
            )

    def _int_or_tuple(self, field: str, *, zero: bool = False, optional: bool = False, maximum: int = MAX_INT) -> None:
        """Accept an int or a per-axis sequence of ints (1 to :data:`MAX_AXES` of them), each
        ``>= 1`` (``>= 0`` with ``zero``) and at most ``maximum``; store sequences as tuples."""
        value = getattr(self, field)
        if optional and value is None:
            return
        lo = 0 if zero else 1
        values = value if isinstance(value, (list, tuple)) else (value,)
        ok = 0 < len(values) <= MAX_AXES and all(_is_int(v) and v >= lo for v in values)
        kind = "non-negative" if zero else "positive"
        self._require(ok, field, f"a {kind} integer or a tuple of them, one per spatial axis")
        self._require(all(v <= maximum for v in values), field, f"values of at most {maximum:,}")
        if isinstance(value, list):
            self._set(field, tuple(value))

    def _per_axis(self, field: str, dims: int, axis: int) -> int:
        """The value of an int-or-tuple field along ``axis`` of a ``dims``-D graph."""
        value = getattr(self, field)
        if isinstance(value, tuple):
            if len(value) != dims:
                raise ShapeError(f"{self.type_name}.{field}={value} has {len(value)} entries but the graph is {dims}D")
            return value[axis]
        return value

    def _check_axes(self, dims: int, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != dims:
                raise ShapeError(f"{self.type_name}.{name}={value} has {len(value)} entries but the graph is {dims}D")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def register_block(cls: T | None = None, *, name: str | None = None, replace: bool = False) -> Any:
    """Register a :class:`BlockSpec` subclass under ``name`` (default: the class name).

    Use as ``@register_block`` or ``@register_block(name="MyBlock")``. A name already taken
    by another class raises :class:`RegistryError` unless ``replace=True``.
    """

    def deco(c: T) -> T:
        if not (isinstance(c, type) and issubclass(c, BlockSpec)):
            raise RegistryError(f"register_block expects a BlockSpec subclass, got {c!r}")
        key = name or c.__name__
        old = _REGISTRY.get(key)
        if (
            old is not None
            and old is not c
            and not replace
            and (old.__module__, old.__qualname__) != (c.__module__, c.__qualname__)
        ):
            raise RegistryError(
                f"block name {key!r} is already registered by {old.__module__}.{old.__qualname__}; "
                "pass replace=True to override it"
            )
        c.type_name = key
        _REGISTRY[key] = c
        return c

    return deco(cls) if cls is not None else deco


def get_block(name: str) -> type[BlockSpec]:
    """The spec class registered under ``name``; an unknown name lists the known ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        hint = difflib.get_close_matches(name[:100], _REGISTRY, n=1) if isinstance(name, str) else []
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise RegistryError(
            f"unknown block {short_repr(name)}{extra}; known blocks: {', '.join(block_names())}"
        ) from None


def unregister_block(name: str) -> None:
    """Remove ``name`` from the registry (e.g. to redefine a block in a notebook)."""
    get_block(name)
    del _REGISTRY[name]


def block_names() -> list[str]:
    """Registered block names, sorted."""
    return sorted(_REGISTRY)


def create_block(spec: str | Mapping[str, Any], **fields_: Any) -> BlockSpec:
    """Create a spec from a registry name plus fields, or from ``to_dict()`` data.

    >>> create_block("Down", mode="avgpool").label()
    'avgpool /2'
    """
    data = {**spec, **fields_} if isinstance(spec, Mapping) else {"type": spec, **fields_}
    return block_from_dict(data)


def block_from_dict(data: Mapping[str, Any], *, path: str | None = None) -> BlockSpec:
    """The spec that ``data`` (a :meth:`BlockSpec.to_dict` result) describes.

    Lists become tuples, ``{"type": ...}`` mappings nested specs, ``{"fraction": "1/2"}``
    fractions. Only registered classes are created, so data never runs code of its own.

    Args:
        data: ``{"type": name, field: value, ...}``; missing fields take their defaults.
        path: where ``data`` sits in a document (``"nodes.enc2.block"``); errors then name
            the path instead of the class (``nodes.enc2.block.convs: expected a positive
            integer, got -3``).

    Raises:
        RegistryError: the type is not registered.
        SpecError: a field is unknown, missing or invalid.
    """
    where = path or "block"
    if not isinstance(data, Mapping) or "type" not in data:
        got = f"keys {short_repr(sorted(map(short_repr, data)))}" if isinstance(data, Mapping) else short_repr(data)
        raise SpecError(f"{where}: block data needs a 'type' key naming a registered block, got {got}")
    name = data["type"]
    try:
        cls = get_block(name)
    except RegistryError as e:
        raise RegistryError(f"{path}.type: {e.message}" if path else e.message) from None
    at = path or name
    known = {f.name: f for f in fields(cls)}
    unknown = sorted((k for k in data if k != "type" and k not in known), key=short_repr)
    if unknown:
        prefix = f"{at}.{path_key(unknown[0])}: " if path else ""
        raise SpecError(
            f"{prefix}{name} has no field {', '.join(map(short_repr, unknown[:5]))}; fields: {', '.join(sorted(known))}"
        )
    missing = [n for n, f in known.items() if f.default is MISSING and f.default_factory is MISSING and n not in data]
    if missing:
        raise SpecError(f"{at + ': ' if path else ''}{name} needs field {', '.join(map(repr, missing))}")
    values = {k: _decode(v, f"{at}.{k}") for k, v in data.items() if k != "type"}
    try:
        return cls(**values)
    except SpecError as e:
        if path is None:
            raise
        # "ConvBlock.convs: expected ..." → "nodes.enc2.block.convs: expected ..."
        own = f"{cls.type_name}."
        message = f"{path}.{e.message[len(own) :]}" if e.message.startswith(own) else f"{path}: {e.message}"
        raise type(e)(message, node=e.node, edge=e.edge) from None
    except UNetGraphError:
        raise
    except Exception as e:  # a user spec's own validation
        raise SpecError(f"{at}: {name}: {type(e).__name__}: {str(e)[:300]}") from e


_PLAIN_DATA = "numbers, strings, booleans, None, fractions, tuples and block specs"


def _encode(value: Any, where: str) -> Any:
    """A field value as JSON/YAML-ready data (see :meth:`BlockSpec.to_dict`)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, BlockSpec):
        return value.to_dict()
    if isinstance(value, Fraction):
        return {"fraction": str(value)}
    if isinstance(value, (tuple, list)):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise SpecError(f"{where}: a {type(value).__name__} cannot be stored as data; fields hold {_PLAIN_DATA}")


def _decode(value: Any, where: str) -> Any:
    """The inverse of :func:`_encode`: lists → tuples, tagged mappings → specs and fractions."""
    if isinstance(value, (list, tuple)):
        return tuple(_decode(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, Mapping):
        if "type" in value:
            return block_from_dict(value, path=where)
        if set(value) == {"fraction"}:
            return _fraction(value["fraction"], f"{where}.fraction")
        raise SpecError(
            f"{where}: expected a block ({{type: ...}}) or a fraction ({{fraction: '1/2'}}), "
            f"got a mapping with keys {short_repr(sorted(map(short_repr, value)))}"
        )
    return value


# what str(Fraction) writes ("-3/7", "2") and plain decimals ("0.25"), with bounded digits:
# Fraction("1e999999999") would compute 10**999999999
_FRACTION = re.compile(r"[+-]?(\d{1,40}(/\d{1,40})?|\d{0,40}\.\d{1,40})")


def _fraction(text: object, where: str) -> Fraction:
    if isinstance(text, int) and not isinstance(text, bool) and abs(text) < 10**40:
        return Fraction(text)
    if isinstance(text, str) and _FRACTION.fullmatch(text.strip()):
        try:
            return Fraction(text.strip())
        except ZeroDivisionError:
            pass
    raise SpecError(
        f"{where}: expected a fraction like '1/2' or '0.25' (at most 40 digits per part, no exponent), "
        f"got {short_repr(text)}"
    )


def leaf_module(cls: T) -> T:
    """Mark an ``nn.Module`` class as atomic: lowering emits it as one ``call_module`` node."""
    _LEAF_MODULES.add(cls)
    return cls


def is_leaf_module(module: nn.Module) -> bool:
    """Whether lowering keeps ``module`` whole (torch.nn layers and :func:`leaf_module` classes)."""
    if isinstance(module, nn.Sequential):
        return False
    return isinstance(module, tuple(_LEAF_MODULES)) or type(module).__module__.startswith("torch.nn")
